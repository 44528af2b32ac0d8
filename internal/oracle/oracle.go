// Package oracle recomputes candles from trades offline, the way DESIGN.md
// §2 defines them, for tests to hold the engine and the whole pipeline
// against. It is written to be obvious rather than fast, and shares no code
// with the engine's slots: a trade is late when the candle it falls in ends
// at or before max(W, the symbol's latest trade time); candles are grouped
// from the accepted trades at the end, with flat candles filling the gaps.
package oracle

import (
	"fmt"
	"math"
	"math/big"
	"time"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/processor/engine"
	"github.com/klagg/klagg/schema"
)

// Trade is one aggregate trade as the oracle sees it.
type Trade struct {
	Symbol             string
	AggID, First, Last int64
	Time               int64
	Price, Qty         decimal.Fixed
	BuyerMaker         bool
	Unordered          bool // no ordered id: never a duplicate
}

type symbolState struct {
	lastAgg, maxT int64
	trades        []Trade
}

// Reference is the model of one shard (one trades partition).
type Reference struct {
	periods               []period.Period
	grace, liveWindow     int64
	W                     int64 // the watermark
	acceptedAt, acceptedT int64
	live                  bool
	symbols               map[string]*symbolState
	// NoFlat leaves out the final candles of periods without trades
	// (engine.FlatNone).
	NoFlat bool
}

// New returns an empty shard model.
func New(periods []period.Period, grace, live time.Duration) *Reference {
	return &Reference{periods: periods, grace: grace.Milliseconds(), liveWindow: live.Milliseconds(),
		W: math.MinInt64, symbols: map[string]*symbolState{}}
}

// Trade applies one trade read at wall clock now and returns its outcome.
func (r *Reference) Trade(t Trade, now int64) engine.Outcome {
	s := r.symbols[t.Symbol]
	bound := r.W
	if s != nil {
		if !t.Unordered && t.AggID <= s.lastAgg {
			return engine.Duplicate
		}
		bound = max(bound, s.maxT)
	}
	for _, p := range r.periods {
		if p.Next(p.Open(t.Time)) <= bound {
			return engine.Late
		}
	}
	if s == nil {
		s = &symbolState{maxT: math.MinInt64}
		r.symbols[t.Symbol] = s
	}
	if !t.Unordered {
		s.lastAgg = t.AggID
	}
	s.maxT = max(s.maxT, t.Time)
	s.trades = append(s.trades, t)
	r.W = max(r.W, t.Time-r.grace)
	r.acceptedAt, r.acceptedT = now, t.Time
	r.live = now-t.Time <= r.liveWindow
	return engine.Folded
}

// Clock is a wall-clock tick: caughtUp as the runtime reports it.
func (r *Reference) Clock(now int64, caughtUp bool) {
	if caughtUp && r.live && now-r.acceptedAt >= r.grace {
		r.W = max(r.W, now-r.grace)
	}
}

// Key identifies a candle.
type Key struct {
	Symbol, Period string
	Open           int64
}

// Candles returns the final candles and the open candles that have trades.
func (r *Reference) Candles() (final, open map[Key]schema.Kline) {
	final, open = map[Key]schema.Kline{}, map[Key]schema.Kline{}
	r.EachCandle(func(k *schema.Kline) {
		if k.IsFinal {
			final[KeyOf(k)] = *k
		} else {
			open[KeyOf(k)] = *k
		}
	})
	return final, open
}

// EachCandle calls fn with every final candle and every open candle that
// has trades, symbol by symbol, each (symbol, period) in open-time order,
// without holding them all.
func (r *Reference) EachCandle(fn func(*schema.Kline)) {
	for name, s := range r.symbols {
		bound := max(r.W, s.maxT)
		for _, p := range r.periods {
			byOpen := map[int64][]Trade{}
			first := int64(math.MaxInt64)
			for _, t := range s.trades {
				o := p.Open(t.Time)
				byOpen[o] = append(byOpen[o], t)
				first = min(first, o)
			}
			var prevClose decimal.Fixed
			for o := first; ; o = p.Next(o) {
				k := schema.Kline{Symbol: name, Period: p.String(), OpenTime: o, CloseTime: p.Next(o) - 1,
					FirstTradeID: -1, LastTradeID: -1}
				ts := byOpen[o]
				if len(ts) == 0 {
					k.Open, k.High, k.Low, k.Close = prevClose, prevClose, prevClose, prevClose
				} else {
					fill(&k, ts)
				}
				prevClose = k.Close
				if p.Next(o) <= bound {
					k.IsFinal = true
					if len(ts) > 0 || !r.NoFlat {
						fn(&k)
					}
					continue
				}
				if len(ts) > 0 {
					fn(&k)
				}
				break
			}
		}
	}
}

// fill sets k's prices, volumes, count and ids from its trades. The sums
// are math/big integers, apart from the engine's 128-bit arithmetic, and
// the quote sums are rounded here, half to even, written from the rule.
func fill(k *schema.Kline, ts []Trade) {
	first, last := ts[0], ts[0]
	k.High, k.Low = ts[0].Price, ts[0].Price
	vol, quote, takerVol, takerQuote := new(big.Int), new(big.Int), new(big.Int), new(big.Int)
	for _, t := range ts {
		if t.Time < first.Time || (t.Time == first.Time && t.AggID < first.AggID) {
			first = t
		}
		if t.Time > last.Time || (t.Time == last.Time && t.AggID > last.AggID) {
			last = t
		}
		k.High, k.Low = max(k.High, t.Price), min(k.Low, t.Price)
		q := big.NewInt(int64(t.Qty))
		pq := new(big.Int).Mul(big.NewInt(int64(t.Price)), q)
		vol.Add(vol, q)
		quote.Add(quote, pq)
		if !t.BuyerMaker {
			takerVol.Add(takerVol, q)
			takerQuote.Add(takerQuote, pq)
		}
		k.TradeCount += t.Last - t.First + 1
	}
	k.Volume, k.QuoteVolume = mustWide(vol), mustWide(roundHalfEven(quote))
	k.TakerBuyVolume, k.TakerBuyQuoteVolume = mustWide(takerVol), mustWide(roundHalfEven(takerQuote))
	k.Open, k.Close = first.Price, last.Price
	k.FirstTradeID, k.LastTradeID = first.First, last.Last
}

var e8 = big.NewInt(100_000_000)

// roundHalfEven takes a sum of products (16 fractional digits) to eight,
// ties to the even neighbour.
func roundHalfEven(n *big.Int) *big.Int {
	q, r := new(big.Int).QuoRem(n, e8, new(big.Int))
	switch c := new(big.Int).Mul(r, big.NewInt(2)).Cmp(e8); {
	case c > 0, c == 0 && q.Bit(0) == 1:
		q.Add(q, big.NewInt(1))
	}
	return q
}

func mustWide(n *big.Int) decimal.Wide {
	w, err := decimal.WideFromBig(n)
	if err != nil {
		panic(fmt.Sprintf("oracle: a sum out of the record's range: %v", err)) // test data only
	}
	return w
}

// KeyOf returns the key of k.
func KeyOf(k *schema.Kline) Key { return Key{Symbol: k.Symbol, Period: k.Period, Open: k.OpenTime} }
