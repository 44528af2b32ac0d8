package serve

import (
	"context"
	"fmt"

	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/schema"
)

// A period's candles in a time zone (Binance's timeZone): the zone's
// candle of p opening at o covers [o, next) where o+off is a boundary of p
// in UTC terms: zoneOpen(t) = p.Open(t+off) − off. Where those instants
// are not UTC's, klagg combines the candles of the coarsest held period f
// that divides both the offset and p (every day, week and month boundary
// in the zone is then one of f's): open is the first traded candle's open,
// close the last's close, high and low over the traded candles, sums and
// counts added, final when every part is final and the last part ends the
// zone's candle. Prices, volumes and counts are exact; the quote volumes
// are the sums of the parts' quote volumes, each rounded to eight decimals
// when its record was written, so they equal the rounded exact sum when
// every price × quantity has at most eight decimals (Binance's USDT
// markets: two-decimal prices, quantities of at most six) and may differ
// from it by half a unit of 10^-8 per part otherwise.

// maxZoneParts bounds the finer candles read for one answer: a limit of
// 1,000 monthly candles at +05:45 would need three million 15m ones; the
// answer then holds fewer candles than asked, as when history runs out,
// and a client pages on from the last one.
const maxZoneParts = 100_000

// zoneError is a timeZone that klagg cannot answer for p: no held period
// divides both.
type zoneError struct {
	p    period.Period
	off  int64
	held []string
}

func (e *zoneError) Error() string {
	return fmt.Sprintf("Data sent for parameter 'timeZone' is not valid: klagg builds %s candles at UTC%s from a finer interval "+
		"whose candles open at the same instants there, and of those it holds (%v) none does.", e.p, formatOffset(e.off), e.held)
}

func formatOffset(off int64) string {
	sign := "+"
	if off < 0 {
		sign, off = "-", -off
	}
	return fmt.Sprintf("%s%02d:%02d", sign, off/3600_000, off%3600_000/60_000)
}

func zoneOpen(p period.Period, off, t int64) int64 { return p.Open(t+off) - off }
func zoneNext(p period.Period, off, o int64) int64 { return p.Next(o+off) - off }

// length is a fixed-length period's length in ms; weeks count, months
// do not (0).
func length(p period.Period) int64 {
	if p == period.P1M {
		return 0
	}
	o := p.Open(0)
	return p.Next(o) - o
}

// partPeriod is the coarsest held period whose candles tile p's in the
// zone: its length divides the offset and p's length (a day for weeks
// and months).
func partPeriod(p period.Period, off int64, held []string) (period.Period, bool) {
	span := length(p)
	if span == 0 || p == period.P1w || p == period.P3d {
		span = 24 * 3600_000
	}
	best, found := period.Period(0), false
	for _, name := range held {
		f, err := period.Parse(name)
		lf := length(f)
		if err != nil || lf == 0 || lf >= length(p) && p != period.P1M || off%lf != 0 || span%lf != 0 {
			continue
		}
		if !found || lf > length(best) {
			best, found = f, true
		}
	}
	return best, found
}

// inZone answers q (q.zone set) by combining a finer period's candles.
func (s *Server) inZone(ctx context.Context, q query) (answer, error) {
	meta, err := s.ask(ctx, query{})
	if err != nil {
		return answer{}, err
	}
	f, ok := partPeriod(q.period, q.zone, meta.intervals)
	if !ok {
		return answer{}, &zoneError{p: q.period, off: q.zone, held: meta.intervals}
	}
	p, off := q.period, q.zone
	from := int64(-1)
	if q.start >= 0 {
		from = zoneOpen(p, off, q.start)
		if from < q.start {
			from = zoneNext(p, off, from)
		}
	} else {
		// The newest: from the zone candle of the newest part, back
		// limit−1 candles.
		last, err := s.ask(ctx, query{symbol: q.symbol, period: f, start: -1, end: q.end, limit: 1})
		if err != nil || last.err != nil || !last.known || len(last.klines) == 0 {
			return last, err
		}
		from = zoneOpen(p, off, last.klines[0].OpenTime)
		for range q.limit - 1 {
			from = zoneOpen(p, off, from-1)
		}
	}
	to := q.end // the last zone candle's open, inclusive
	if to >= 0 {
		to = zoneOpen(p, off, to)
	}
	parts, err := s.ask(ctx, query{symbol: q.symbol, period: f, start: from, end: -1, limit: maxZoneParts})
	if err != nil || parts.err != nil || !parts.known {
		return parts, err
	}
	out := make([]schema.Kline, 0, min(q.limit, 1000))
	for i := 0; i < len(parts.klines) && len(out) < q.limit; {
		o := zoneOpen(p, off, parts.klines[i].OpenTime)
		if to >= 0 && o > to {
			break
		}
		j := i
		for j < len(parts.klines) && zoneOpen(p, off, parts.klines[j].OpenTime) == o {
			j++
		}
		if j == len(parts.klines) && len(parts.klines) == maxZoneParts {
			break // possibly cut short: answer it with the next page
		}
		out = append(out, combine(parts.klines[i:j], p, o, zoneNext(p, off, o)))
		i = j
	}
	return answer{klines: out, known: true}, nil
}

// combine is the zone candle [open, next) of the parts of it held.
func combine(parts []schema.Kline, p period.Period, open, next int64) schema.Kline {
	k := schema.Kline{Symbol: parts[0].Symbol, Period: p.String(), OpenTime: open, CloseTime: next - 1,
		FirstTradeID: -1, LastTradeID: -1, IsFinal: parts[len(parts)-1].CloseTime == next-1}
	first := parts[0].Open // flat at the previous close, unless a part traded
	k.Open, k.High, k.Low, k.Close = first, first, first, first
	traded := false
	for i := range parts {
		c := &parts[i]
		k.IsFinal = k.IsFinal && c.IsFinal
		k.Version = max(k.Version, c.Version)
		k.Volume, k.QuoteVolume = k.Volume.Add(c.Volume), k.QuoteVolume.Add(c.QuoteVolume)
		k.TakerBuyVolume, k.TakerBuyQuoteVolume = k.TakerBuyVolume.Add(c.TakerBuyVolume), k.TakerBuyQuoteVolume.Add(c.TakerBuyQuoteVolume)
		k.TradeCount += c.TradeCount
		if c.TradeCount == 0 {
			continue
		}
		if !traded {
			k.Open, k.High, k.Low, k.FirstTradeID = c.Open, c.High, c.Low, c.FirstTradeID
			traded = true
		}
		k.High, k.Low = max(k.High, c.High), min(k.Low, c.Low)
		k.Close, k.LastTradeID = c.Close, c.LastTradeID
	}
	if !traded {
		k.Close = first
	}
	return k
}
