package period

import (
	"errors"
	"fmt"
	"strings"
)

// Period is one of Binance's sixteen kline intervals. Its zero value is 1s.
type Period uint8

// The periods, shortest first. The order is the canonical order klagg uses
// for the slots of a symbol.
const (
	P1s Period = iota
	P1m
	P3m
	P5m
	P15m
	P30m
	P1h
	P2h
	P4h
	P6h
	P8h
	P12h
	P1d
	P3d
	P1w
	P1M
	// Count is the number of periods.
	Count
)

const (
	msSecond = int64(1000)
	msMinute = 60 * msSecond
	msHour   = 60 * msMinute
	msDay    = 24 * msHour
	msWeek   = 7 * msDay
	// The Unix epoch was a Thursday; Monday 1970-01-05 is four days later.
	msMondayOffset = 4 * msDay
)

var periodNames = [Count]string{
	"1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M",
}

// Fixed lengths; 0 for the calendar month, which has none.
var periodLengths = [Count]int64{
	msSecond, msMinute, 3 * msMinute, 5 * msMinute, 15 * msMinute, 30 * msMinute,
	msHour, 2 * msHour, 4 * msHour, 6 * msHour, 8 * msHour, 12 * msHour,
	msDay, 3 * msDay, msWeek, 0,
}

// DefaultList is DESIGN.md's default list: every period but 1s.
const DefaultList = "1m,3m,5m,15m,30m,1h,2h,4h,6h,8h,12h,1d,3d,1w,1M"

// ErrUnknown is wrapped by Parse and ParseList for a name
// that is not one of the sixteen Binance intervals.
var ErrUnknown = errors.New("unknown period")

// String returns the Binance name of p ("1m", "1M", ...).
func (p Period) String() string {
	if p >= Count {
		return fmt.Sprintf("Period(%d)", uint8(p))
	}
	return periodNames[p]
}

// Parse parses one Binance interval name. Names are case-sensitive:
// "1m" is a minute and "1M" a month, as on Binance.
func Parse(s string) (Period, error) {
	for i, n := range periodNames {
		if n == s {
			return Period(i), nil
		}
	}
	return 0, fmt.Errorf("period: %q: %w (want one of %s)", s, ErrUnknown, strings.Join(periodNames[:], " "))
}

// ParseList parses a comma-separated list and returns it in canonical
// order (shortest first). Every bad or repeated name is reported.
func ParseList(list string) ([]Period, error) {
	var seen [Count]bool
	var errs []error
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		p, err := Parse(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if seen[p] {
			errs = append(errs, fmt.Errorf("period: %q listed twice", name))
		}
		seen[p] = true
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	out := make([]Period, 0, Count)
	for p := range Count {
		if seen[p] {
			out = append(out, p)
		}
	}
	return out, nil
}

// All returns the sixteen periods in canonical order.
func All() []Period {
	out := make([]Period, Count)
	for i := range out {
		out[i] = Period(i)
	}
	return out
}

// Open returns the open time (Unix ms, UTC) of the candle of period p that
// contains t.
func (p Period) Open(t int64) int64 {
	switch p {
	case P1w:
		return floorDiv(t-msMondayOffset, msWeek)*msWeek + msMondayOffset
	case P1M:
		y, m, _ := civilFromDays(floorDiv(t, msDay))
		return daysFromCivil(y, m, 1) * msDay
	default:
		d := periodLengths[p]
		return floorDiv(t, d) * d
	}
}

// Next returns the open time of the candle after the one that opens at open.
// open must be a value returned by Open.
func (p Period) Next(open int64) int64 {
	if p == P1M {
		y, m, _ := civilFromDays(floorDiv(open, msDay))
		m++
		if m > 12 {
			y, m = y+1, 1
		}
		return daysFromCivil(y, m, 1) * msDay
	}
	return open + periodLengths[p]
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

// civilFromDays and daysFromCivil convert between days since 1970-01-01 and
// the proleptic Gregorian calendar without time.Time, so the month period
// costs a few integer operations (H. Hinnant's public-domain algorithms).
func civilFromDays(z int64) (y int64, m int64, d int64) {
	z += 719468
	era := floorDiv(z, 146097)
	doe := z - era*146097
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	y = yoe + era*400
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	d = doy - (153*mp+2)/5 + 1
	if mp < 10 {
		m = mp + 3
	} else {
		m = mp - 9
	}
	if m <= 2 {
		y++
	}
	return y, m, d
}

func daysFromCivil(y, m, d int64) int64 {
	if m <= 2 {
		y--
	}
	era := floorDiv(y, 400)
	yoe := y - era*400
	var mp int64
	if m > 2 {
		mp = m - 3
	} else {
		mp = m + 9
	}
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}

// NestsIn reports whether every boundary of p is one of fine's: then a
// candle of p is exactly the candles of fine it spans, which the engine
// relies on to update p from fine's trades in bulk.
func (p Period) NestsIn(fine Period) bool {
	fl := periodLengths[fine]
	switch {
	case fine == P1M || fine == P1w && p == P1M:
		return false
	case p == P1M:
		return msDay%fl == 0 // months start at midnight
	}
	offset := func(q Period) int64 {
		if q == P1w {
			return msMondayOffset
		}
		return 0
	}
	return periodLengths[p]%fl == 0 && (offset(p)-offset(fine))%fl == 0
}
