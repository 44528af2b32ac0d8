package period_test

import (
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/klagg/klagg/period"
)

func ms(s string) int64 {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t.UnixMilli()
}

func TestPeriodAlignment(t *testing.T) {
	tests := []struct {
		period   string
		at       string
		open     string
		nextOpen string
	}{
		{"1s", "2024-02-29T23:59:59.999Z", "2024-02-29T23:59:59Z", "2024-03-01T00:00:00Z"},
		{"1m", "2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z", "2024-01-01T00:01:00Z"},
		{"3m", "2024-01-01T00:04:59Z", "2024-01-01T00:03:00Z", "2024-01-01T00:06:00Z"},
		{"15m", "2023-12-31T23:59:00Z", "2023-12-31T23:45:00Z", "2024-01-01T00:00:00Z"},
		{"4h", "2024-03-10T03:00:00Z", "2024-03-10T00:00:00Z", "2024-03-10T04:00:00Z"},
		{"12h", "2024-03-10T13:00:00Z", "2024-03-10T12:00:00Z", "2024-03-11T00:00:00Z"},
		{"1d", "2024-02-29T12:00:00Z", "2024-02-29T00:00:00Z", "2024-03-01T00:00:00Z"},
		// 3d counts from the epoch: 1970-01-01, -04, ... 2024-01-01 is day 19723 = 3*6574+1.
		{"3d", "2024-01-01T05:00:00Z", "2023-12-31T00:00:00Z", "2024-01-03T00:00:00Z"},
		// 1w opens on Monday even though the epoch was a Thursday.
		{"1w", "1970-01-01T00:00:00Z", "1969-12-29T00:00:00Z", "1970-01-05T00:00:00Z"},
		{"1w", "2024-01-07T23:59:59.999Z", "2024-01-01T00:00:00Z", "2024-01-08T00:00:00Z"},
		{"1w", "2024-01-08T00:00:00Z", "2024-01-08T00:00:00Z", "2024-01-15T00:00:00Z"},
		{"1w", "2026-11-27T10:00:00Z", "2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"},
		// 1M is the calendar month, across year ends and leap Februaries.
		{"1M", "2023-12-31T23:59:59.999Z", "2023-12-01T00:00:00Z", "2024-01-01T00:00:00Z"},
		{"1M", "2024-02-29T23:59:59Z", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"},
		{"1M", "2023-02-15T00:00:00Z", "2023-02-01T00:00:00Z", "2023-03-01T00:00:00Z"},
		{"1M", "2100-02-28T00:00:00Z", "2100-02-01T00:00:00Z", "2100-03-01T00:00:00Z"},
		{"1M", "2000-02-29T00:00:00Z", "2000-02-01T00:00:00Z", "2000-03-01T00:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.period+"@"+tt.at, func(t *testing.T) {
			p, err := period.Parse(tt.period)
			if err != nil {
				t.Fatal(err)
			}
			open := p.Open(ms(tt.at))
			if want := ms(tt.open); open != want {
				t.Errorf("Open = %s, want %s", time.UnixMilli(open).UTC(), tt.open)
			}
			if next, want := p.Next(open), ms(tt.nextOpen); next != want {
				t.Errorf("Next = %s, want %s", time.UnixMilli(next).UTC(), tt.nextOpen)
			}
		})
	}
}

// TestPeriodAgainstTimePackage checks Open/Next for random instants against
// the standard library's calendar, an implementation independent of ours.
func TestPeriodAgainstTimePackage(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	lo, hi := ms("2009-01-01T00:00:00Z"), ms("2101-01-01T00:00:00Z")
	for range 20000 {
		at := lo + rng.Int64N(hi-lo)
		tm := time.UnixMilli(at).UTC()
		for _, p := range period.All() {
			var want, wantNext time.Time
			switch p {
			case period.P1M:
				want = time.Date(tm.Year(), tm.Month(), 1, 0, 0, 0, 0, time.UTC)
				wantNext = want.AddDate(0, 1, 0)
			case period.P1w:
				back := (int(tm.Weekday()) + 6) % 7 // days since Monday
				want = time.Date(tm.Year(), tm.Month(), tm.Day()-back, 0, 0, 0, 0, time.UTC)
				wantNext = want.AddDate(0, 0, 7)
			default:
				d := map[period.Period]time.Duration{
					period.P1s: time.Second, period.P1m: time.Minute,
					period.P3m: 3 * time.Minute, period.P5m: 5 * time.Minute,
					period.P15m: 15 * time.Minute, period.P30m: 30 * time.Minute,
					period.P1h: time.Hour, period.P2h: 2 * time.Hour,
					period.P4h: 4 * time.Hour, period.P6h: 6 * time.Hour,
					period.P8h: 8 * time.Hour, period.P12h: 12 * time.Hour,
					period.P1d: 24 * time.Hour, period.P3d: 72 * time.Hour,
				}[p]
				want = tm.Truncate(d) // Truncate counts from the zero time; for these lengths it equals epoch alignment
				if p == period.P3d {
					days := at / 86400000
					want = time.UnixMilli(days / 3 * 3 * 86400000).UTC()
				}
				wantNext = want.Add(d)
			}
			open := p.Open(at)
			if open != want.UnixMilli() || p.Next(open) != wantNext.UnixMilli() {
				t.Fatalf("%s at %s: open %s next %s, want %s %s", p, tm,
					time.UnixMilli(open).UTC(), time.UnixMilli(p.Next(open)).UTC(), want, wantNext)
			}
		}
	}
}

func TestParsePeriods(t *testing.T) {
	got, err := period.ParseList("1M, 1m,1w")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0] != period.P1m || got[1] != period.P1w || got[2] != period.P1M {
		t.Fatalf("got %v", got)
	}
	def, err := period.ParseList(period.DefaultList)
	if err != nil || len(def) != 15 {
		t.Fatalf("default periods: %v, %v", def, err)
	}
	_, err = period.ParseList("1m,7m,1m,2d")
	if !errors.Is(err, period.ErrUnknown) {
		t.Fatalf("want ErrUnknownPeriod, got %v", err)
	}
	for _, want := range []string{`"7m"`, `"2d"`, `"1m" listed twice`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}
