package engine_test

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"testing"
	"time"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/processor/engine"
	"github.com/klagg/klagg/schema"
)

func newAgg(t testing.TB, periods string) *engine.Aggregator {
	t.Helper()
	cfg := engine.DefaultConfig()
	ps, err := period.ParseList(periods)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Periods = ps
	a, err := engine.NewAggregator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

type feeder struct {
	t      testing.TB
	a      *engine.Aggregator
	offset int64
	agg    map[string]int64
}

func feed(t testing.TB, a *engine.Aggregator) *feeder {
	return &feeder{t: t, a: a, agg: map[string]int64{}}
}

// trade folds a trade of one raw trade; now is the wall clock.
func (f *feeder) trade(sym, at string, price, qty float64, now int64) engine.Outcome {
	f.agg[sym]++
	tr := schema.Trade{Symbol: []byte(sym), AggID: f.agg[sym], Price: fixedOf(price), Quantity: fixedOf(qty),
		FirstID: f.agg[sym] * 10, LastID: f.agg[sym] * 10, Time: ms(at)}
	f.offset++
	return f.a.Fold(&tr, f.offset, now)
}

// fixedOf is a test's whole or simple price as a decimal.
func fixedOf(f float64) decimal.Fixed { return decimal.Fixed(math.Round(f * 1e8)) }

func drain(a *engine.Aggregator, now int64) []schema.Kline {
	var b engine.Batch
	a.Drain(&b, now)
	return b.Klines
}

func describe(ks []schema.Kline) []string {
	var out []string
	for _, k := range ks {
		out = append(out, fmt.Sprintf("%s %s %s o=%g c=%g n=%d final=%v", k.Symbol, k.Period,
			time.UnixMilli(k.OpenTime).UTC().Format("15:04"), k.Open.Float64(), k.Close.Float64(), k.TradeCount, k.IsFinal))
	}
	return out
}

func expectKlines(t *testing.T, got []schema.Kline, want ...string) {
	t.Helper()
	g := describe(got)
	if fmt.Sprint(g) != fmt.Sprint(want) {
		t.Fatalf("klines:\n got %q\nwant %q", g, want)
	}
}

var backfillNow = ms("2026-11-27T00:00:00Z")

func TestRollMakesFlatCandles(t *testing.T) {
	a := newAgg(t, "1m")
	f := feed(t, a)
	f.trade("BTC", "2024-05-01T10:00:30Z", 100, 1, backfillNow)
	expectKlines(t, drain(a, 1), "BTC 1m 10:00 o=100 c=100 n=1 final=false")
	f.trade("BTC", "2024-05-01T10:03:10Z", 103, 1, backfillNow)
	expectKlines(t, drain(a, 2),
		"BTC 1m 10:00 o=100 c=100 n=1 final=true",
		"BTC 1m 10:01 o=100 c=100 n=0 final=true", // flat at the previous close
		"BTC 1m 10:02 o=100 c=100 n=0 final=true",
		"BTC 1m 10:03 o=103 c=103 n=1 final=false")
	expectKlines(t, drain(a, 3)) // nothing changed: nothing emitted
}

func TestLateTradeRefusedForEveryPeriod(t *testing.T) {
	a := newAgg(t, "1m,1h")
	f := feed(t, a)
	f.trade("BTC", "2024-05-01T10:05:00Z", 100, 1, backfillNow)
	f.trade("BTC", "2024-05-01T10:06:00Z", 101, 1, backfillNow)
	drain(a, 1)
	// In the open 1h candle but in the final 10:05 1m candle: refused for
	// both, so the 1h candle still equals its 1m candles.
	if o := f.trade("BTC", "2024-05-01T10:05:30Z", 999, 1, backfillNow); o != engine.Late {
		t.Fatalf("outcome %v, want Late", o)
	}
	expectKlines(t, drain(a, 2))
}

func TestDuplicateAggregateID(t *testing.T) {
	a := newAgg(t, "1m")
	tr := schema.Trade{Symbol: []byte("BTC"), AggID: 7, Price: 1, Quantity: 1, FirstID: 1, LastID: 1, Time: ms("2024-05-01T10:00:00Z")}
	if o := a.Fold(&tr, 0, backfillNow); o != engine.Folded {
		t.Fatal(o)
	}
	tr.Time += 1000
	for _, id := range []int64{7, 6} {
		tr.AggID = id
		if o := a.Fold(&tr, 1, backfillNow); o != engine.Duplicate || o.Reason() != schema.ReasonDuplicate {
			t.Fatalf("agg id %d: %v", id, o)
		}
	}
}

func TestWatermarkClosesQuietSymbols(t *testing.T) {
	a := newAgg(t, "1m")
	f := feed(t, a)
	f.trade("QUIET", "2024-05-01T10:00:10Z", 5, 1, backfillNow)
	f.trade("BUSY", "2024-05-01T10:00:20Z", 7, 1, backfillNow)
	drain(a, 1)
	// BUSY at 10:02:00.5 puts W at 10:01:59.5: QUIET's 10:00 candle ends
	// before it and is final; 10:01 ends after W and stays open (flat).
	f.trade("BUSY", "2024-05-01T10:02:00.500Z", 8, 1, backfillNow)
	expectKlines(t, drain(a, 2),
		"QUIET 1m 10:00 o=5 c=5 n=1 final=true",
		"BUSY 1m 10:00 o=7 c=7 n=1 final=true",
		"BUSY 1m 10:01 o=7 c=7 n=0 final=true",
		"BUSY 1m 10:02 o=8 c=8 n=1 final=false")
	// One more second closes QUIET's flat 10:01 candle.
	f.trade("BUSY", "2024-05-01T10:02:01.500Z", 8, 1, backfillNow)
	expectKlines(t, drain(a, 3),
		"QUIET 1m 10:01 o=5 c=5 n=0 final=true",
		"BUSY 1m 10:02 o=8 c=8 n=2 final=false")
	// The next QUIET trade opens its candle like any first trade.
	f.trade("QUIET", "2024-05-01T10:02:30Z", 6, 1, backfillNow)
	expectKlines(t, drain(a, 4), "QUIET 1m 10:02 o=6 c=6 n=1 final=false")
}

func TestBackfillNeverUsesWallClock(t *testing.T) {
	a := newAgg(t, "1m,1d")
	f := feed(t, a)
	f.trade("BTC", "2024-05-01T10:00:10Z", 5, 1, backfillNow)
	w := a.Watermark()
	a.AdvanceClock(backfillNow+time.Hour.Milliseconds(), true)
	if a.Watermark() != w {
		t.Fatalf("a backfill moved the watermark to %s", time.UnixMilli(a.Watermark()).UTC())
	}
	expectKlines(t, drain(a, 1), "BTC 1m 10:00 o=5 c=5 n=1 final=false", "BTC 1d 00:00 o=5 c=5 n=1 final=false")
}

func TestLiveWatermarkFollowsWallClock(t *testing.T) {
	a := newAgg(t, "1m")
	f := feed(t, a)
	at := ms("2024-05-01T10:00:58Z")
	f.trade("BTC", "2024-05-01T10:00:58Z", 5, 1, at+200) // accepted 200 ms after it happened: live
	drain(a, 1)
	cases := []struct {
		now      int64
		caughtUp bool
		final    bool
	}{
		{at + 2500, false, false}, // lagging: the wall clock must not close candles
		{at + 2900, true, false},  // W = 10:00:59.9, the candle ends at 10:00:59.999
		{at + 3000, true, true},   // W = 10:01:00.0: final
	}
	for _, c := range cases {
		a.AdvanceClock(c.now, c.caughtUp)
		ks := drain(a, c.now)
		if got := len(ks) == 1 && ks[0].IsFinal; got != c.final {
			t.Fatalf("now +%dms caughtUp=%v: %q", c.now-at, c.caughtUp, describe(ks))
		}
	}
}

func TestVersionsIncrease(t *testing.T) {
	a := newAgg(t, "1m")
	f := feed(t, a)
	f.trade("BTC", "2024-05-01T10:00:10Z", 5, 1, backfillNow)
	k1 := drain(a, 1000)[0]
	f.trade("BTC", "2024-05-01T10:00:20Z", 6, 1, backfillNow)
	k2 := drain(a, 1000)[0] // same wall-clock millisecond
	f.trade("BTC", "2024-05-01T10:01:20Z", 6, 1, backfillNow)
	k3 := drain(a, 999)[0] // the wall clock went back
	if !(k1.Version == 1_000_000 && k2.Version == k1.Version+1 && k3.Version == k2.Version+1 && k3.IsFinal) {
		t.Fatalf("versions %d %d %d (final %v)", k1.Version, k2.Version, k3.Version, k3.IsFinal)
	}
}

func TestRestoreAddsAndDropsPeriods(t *testing.T) {
	a := newAgg(t, "1m,1h")
	f := feed(t, a)
	f.trade("BTC", "2024-05-01T10:00:10Z", 5, 1, backfillNow)
	var b engine.Batch
	a.Drain(&b, 1)
	// Restart with 1h dropped and 5m added.
	r := newAgg(t, "1m,5m")
	if err := r.Restore(b.States, backfillNow); err != nil {
		t.Fatal(err)
	}
	f.a = r
	f.trade("BTC", "2024-05-01T10:06:10Z", 6, 1, backfillNow)
	expectKlines(t, drain(r, 2),
		"BTC 1m 10:00 o=5 c=5 n=1 final=true",
		"BTC 1m 10:01 o=5 c=5 n=0 final=true",
		"BTC 1m 10:02 o=5 c=5 n=0 final=true",
		"BTC 1m 10:03 o=5 c=5 n=0 final=true",
		"BTC 1m 10:04 o=5 c=5 n=0 final=true",
		"BTC 1m 10:05 o=5 c=5 n=0 final=true",
		"BTC 1m 10:06 o=6 c=6 n=1 final=false",
		"BTC 5m 10:05 o=6 c=6 n=1 final=false") // starts at the next trade
}

func TestRestoreRefusesBadState(t *testing.T) {
	a := newAgg(t, "1m")
	f := feed(t, a)
	f.trade("BTC", "2024-05-01T10:00:10Z", 5, 1, backfillNow)
	var b engine.Batch
	a.Drain(&b, 1)
	good := b.States[0]
	for name, mutate := range map[string]func(*schema.SymbolState){
		"unknown period":          func(s *schema.SymbolState) { s.Candles[0].Period = "7m" },
		"misaligned open":         func(s *schema.SymbolState) { s.Candles[0].OpenTime += 1000 },
		"before 2010":             func(s *schema.SymbolState) { s.Candles[0].OpenTime = 0 },
		"open trade outside":      func(s *schema.SymbolState) { s.Candles[0].OpenTradeTime += 3_600_000 },
		"period twice":            func(s *schema.SymbolState) { s.Candles = append(s.Candles, s.Candles[0]) },
		"bad symbol":              func(s *schema.SymbolState) { s.Symbol = "" },
		"far-future watermark":    func(s *schema.SymbolState) { s.Watermark = backfillNow + 48*3_600_000 },
		"closed by own watermark": func(s *schema.SymbolState) { s.Watermark = s.Candles[0].OpenTime + 60_000 },
	} {
		t.Run(name, func(t *testing.T) {
			st := good
			st.Candles = append([]schema.CandleState(nil), good.Candles...)
			mutate(&st)
			r := newAgg(t, "1m")
			if err := r.Restore([]schema.SymbolState{st}, backfillNow); !errors.Is(err, engine.ErrBadState) {
				t.Fatalf("want ErrBadState, got %v", err)
			}
			if r.Symbols() != 0 {
				t.Fatal("a refused restore changed the shard")
			}
		})
	}
}

// TestSteadyStateAllocatesNothing: once the arrays and the batch have grown,
// folding and draining allocate nothing.
func TestSteadyStateAllocatesNothing(t *testing.T) {
	a := newAgg(t, period.DefaultList)
	syms := [][]byte{[]byte("AAA"), []byte("BBB"), []byte("CCC")}
	tr := schema.Trade{Price: 1, Quantity: 1, FirstID: 1, LastID: 1, Time: ms("2024-05-01T10:00:00Z")}
	var b engine.Batch
	var off int64
	step := func() {
		for _, s := range syms {
			off++
			tr.Symbol, tr.AggID, tr.Time = s, off, tr.Time+7
			a.Fold(&tr, off, backfillNow)
		}
		a.Drain(&b, backfillNow)
	}
	for range 100 {
		step()
	}
	if n := testing.AllocsPerRun(200, step); n != 0 {
		t.Fatalf("%v allocations per fold+drain", n)
	}
}

// TestDrainFinalsHoldsOpenCandles: a catching-up flush delivers only what
// became final; the open candles' updates wait, unversioned, for the next
// Drain, which delivers them with the state, and nothing is lost or doubled.
func TestDrainFinalsHoldsOpenCandles(t *testing.T) {
	a := newAgg(t, "1m")
	f := feed(t, a)
	f.trade("BTC", "2024-05-01T10:00:30Z", 100, 1, backfillNow)
	f.trade("ETH", "2024-05-01T10:00:40Z", 50, 1, backfillNow)
	f.trade("BTC", "2024-05-01T10:02:10Z", 102, 1, backfillNow) // the watermark closes 10:00 and a flat 10:01
	var b engine.Batch
	a.DrainFinals(&b, 1)
	// The watermark closes one boundary at a time, every symbol's candle
	// at it before the next.
	expectKlines(t, b.Klines, "BTC 1m 10:00 o=100 c=100 n=1 final=true", "ETH 1m 10:00 o=50 c=50 n=1 final=true",
		"BTC 1m 10:01 o=100 c=100 n=0 final=true", "ETH 1m 10:01 o=50 c=50 n=0 final=true")
	if b.Position != -1 || len(b.States) != 0 {
		t.Fatalf("a finals-only drain must not be committable: position %d, %d states", b.Position, len(b.States))
	}
	if a.DirtyLen() == 0 {
		t.Fatal("the open candles are no longer dirty")
	}
	f.trade("BTC", "2024-05-01T10:02:20Z", 104, 1, backfillNow)
	a.Drain(&b, 2)
	// BTC's open candle once, with both trades; ETH's is flat, so only
	// its state changed.
	expectKlines(t, b.Klines, "BTC 1m 10:02 o=102 c=104 n=2 final=false")
	if b.Position != 4 || len(b.States) != 2 {
		t.Fatalf("position %d, %d states; want 4 and both symbols", b.Position, len(b.States))
	}
	if a.DrainFinals(&b, 3); len(b.Klines) != 0 || a.DirtyLen() != 0 {
		t.Fatalf("after a full drain: %v, %d dirty", describe(b.Klines), a.DirtyLen())
	}
}

// TestWatermarkSweepIsBounded: one trade six hours after 1,000 quiet
// symbols' last ones closes 360 minutes of candles for each of them, but
// never queues more than MaxPending plus the trade's own symbol's 438;
// drains and Settle bring out every one of them, each once. Full drains
// (with state) come only at whole watermark steps.
func TestWatermarkSweepIsBounded(t *testing.T) {
	cfg := engine.DefaultConfig()
	cfg.Periods, _ = period.ParseList("1m,5m,1h")
	cfg.MaxPending = 2000
	a, err := engine.NewAggregator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := feed(t, a)
	const symbols = 1000
	for i := range symbols {
		f.trade(fmt.Sprintf("S%04d", i), "2024-05-01T10:00:10Z", 100, 1, backfillNow)
	}
	f.trade("S0000", "2024-05-01T16:00:30Z", 101, 1, backfillNow) // W moves six hours at once
	bound := cfg.MaxPending + 360 + 72 + 6
	finals := map[string]int{}
	var b engine.Batch
	drains, full := 0, 0
	for {
		if p := a.Pending(); p > bound {
			t.Fatalf("%d final candles queued; bound %d", p, bound)
		}
		if a.Consistent() {
			a.Drain(&b, backfillNow)
			full++
		} else {
			a.DrainFinals(&b, backfillNow)
		}
		drains++
		for _, k := range b.Klines {
			if k.IsFinal {
				finals[fmt.Sprintf("%s %s %d", k.Symbol, k.Period, k.OpenTime)]++
			}
		}
		if a.Settle() && !a.Backlogged() && a.Pending() == 0 {
			break
		}
	}
	// Per symbol: 360 1m, 72 5m, 6 1h candles from 10:00 to 16:00.
	if want := symbols * (360 + 72 + 6); len(finals) != want {
		t.Fatalf("%d distinct final candles, want %d", len(finals), want)
	}
	for k, n := range finals {
		if n != 1 {
			t.Fatalf("%s final %d times", k, n)
		}
	}
	if drains < 100 || full == 0 || full == drains {
		t.Fatalf("%d drains, %d full: the sweep was not split, or never stopped half way", drains, full)
	}
}

// TestFlatNoneLeavesGaps: with FlatNone a quiet period yields no candle; the
// next trade's candle opens at its own price, and the watermark still closes
// candles with trades.
func TestFlatNoneLeavesGaps(t *testing.T) {
	cfg := engine.DefaultConfig()
	cfg.Periods, _ = period.ParseList("1m")
	cfg.Flat = engine.FlatNone
	a, err := engine.NewAggregator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := feed(t, a)
	f.trade("BTC", "2024-05-01T10:00:30Z", 100, 1, backfillNow)
	f.trade("ETH", "2024-05-01T10:00:40Z", 50, 1, backfillNow)
	f.trade("BTC", "2024-05-01T10:05:10Z", 102, 1, backfillNow)
	expectKlines(t, drain(a, 1), "BTC 1m 10:00 o=100 c=100 n=1 final=true", "ETH 1m 10:00 o=50 c=50 n=1 final=true",
		"BTC 1m 10:05 o=102 c=102 n=1 final=false")
	f.trade("ETH", "2024-05-01T10:09:00Z", 51, 1, backfillNow)
	expectKlines(t, drain(a, 2), "BTC 1m 10:05 o=102 c=102 n=1 final=true", "ETH 1m 10:09 o=51 c=51 n=1 final=false")
}

// TestDrainSomeInPieces: a full drain in pieces of at most limit records
// (a state record weighing one per period) gives what one Drain gives, and
// only the last piece carries the position; a limit below a state record's
// weight still moves one state per piece.
func TestDrainSomeInPieces(t *testing.T) {
	for _, limit := range []int{1, 3, 7, 1000} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			whole, pieces := newAgg(t, "1m,5m,1h"), newAgg(t, "1m,5m,1h")
			for _, a := range []*engine.Aggregator{whole, pieces} {
				f := feed(t, a)
				for i := range 20 {
					f.trade(fmt.Sprintf("S%02d", i), "2024-05-01T10:00:10Z", 100, 1, backfillNow)
					f.trade(fmt.Sprintf("S%02d", i), "2024-05-01T10:07:10Z", 101, 1, backfillNow)
				}
			}
			var b engine.Batch
			whole.Drain(&b, 1)
			want := fmt.Sprint(describe(b.Klines), len(b.States), b.Position)
			var klines []schema.Kline
			states, n := 0, 0
			for done := false; !done; n++ {
				if n > 1000 {
					t.Fatal("no last piece")
				}
				done = pieces.DrainSome(&b, 1, limit)
				if w := len(b.Klines) + 3*len(b.States); w > max(limit, 3) {
					t.Fatalf("a piece weighs %d, limit %d", w, limit)
				}
				if !done && b.Position != -1 {
					t.Fatalf("piece %d carries position %d", n, b.Position)
				}
				klines = append(klines, b.Klines...)
				states += len(b.States)
			}
			if got := fmt.Sprint(describe(klines), states, b.Position); got != want {
				t.Fatalf("in pieces:\n got %s\nwant %s", got, want)
			}
		})
	}
}

func ms(s string) int64 {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t.UnixMilli()
}

// TestSumsNeverOverflow: trades of the largest price and quantity a Fixed
// holds are folded until the symbol's sums reach 2^125; the next trade is
// refused as out of range, and the candle keeps the exact sums of those
// before it (with lazy periods, through the accumulated coarse sums too).
func TestSumsNeverOverflow(t *testing.T) {
	for _, periods := range []string{"1m", "1m,5m,1h,1d,1w,1M"} {
		a := newAgg(t, periods)
		tr := schema.Trade{Symbol: []byte("MAX"), Price: decimal.MaxFixed, Quantity: decimal.MaxFixed,
			Time: ms("2024-05-01T10:00:00Z")}
		want := new(big.Int)
		var folded int
		for i := range 10 {
			tr.AggID, tr.FirstID, tr.LastID = int64(i+1), int64(i), int64(i)
			out := a.Fold(&tr, int64(i), backfillNow)
			if out == engine.OutOfRange {
				if out.Reason() != schema.ReasonOutOfRange {
					t.Fatalf("reason %s", out.Reason())
				}
				break
			}
			if out != engine.Folded {
				t.Fatalf("trade %d: %v", i, out)
			}
			folded++
			want.Add(want, new(big.Int).Mul(big.NewInt(int64(tr.Price)), big.NewInt(int64(tr.Quantity))))
		}
		if folded == 0 || folded == 10 {
			t.Fatalf("%s: %d trades folded before the bound", periods, folded)
		}
		rounded := new(big.Int).Quo(new(big.Int).Add(want, big.NewInt(50_000_000)), big.NewInt(100_000_000))
		for _, k := range drain(a, backfillNow) {
			if k.TradeCount != int64(folded) || k.QuoteVolume.Big().Cmp(rounded) != 0 {
				t.Fatalf("%s %s: %d trades, quote %s; want %d, %s", periods, k.Period, k.TradeCount, k.QuoteVolume.Big(), folded, rounded)
			}
		}
	}
}
