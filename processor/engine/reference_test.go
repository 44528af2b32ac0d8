package engine_test

import (
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/internal/oracle"
	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/processor/engine"
	"github.com/klagg/klagg/schema"
)

// The engine must agree with the reference model (internal/oracle) on every
// trade's outcome, every watermark and every candle.

// A stream of events: trades (with their offset) and wall-clock ticks.
type event struct {
	trade    oracle.Trade
	isTrade  bool
	now      int64
	caughtUp bool
}

type streamSpec struct {
	seed    uint64
	start   string
	symbols int
	trades  int
	live    bool
	// shortGaps keeps gaps under ten minutes, so the 1s period can run.
	shortGaps bool
	// periods, when set, replaces all periods (or all but 1s).
	periods string
	// maxPending, when set, bounds the engine's queue of final candles,
	// and the feeder drains whenever the engine says it is backlogged,
	// as a shard does.
	maxPending int
	noFlat     bool
	// wide draws prices and quantities of up to eight decimals with
	// magnitudes from 10^-8 to 10^10 (their product below 10^14), so that
	// volumes pass the 64-bit range and quote sums need rounding: the
	// oracle's math/big sums must equal the engine's digit for digit.
	wide bool
}

// genStream makes a random market: skewed activity, sub-second steps, gaps
// of minutes to days, per-symbol clock jitter (so a symbol's trade times can
// go backwards within a candle), 2% resent (duplicate) trades, 2% trades
// from the past (mostly late), and in live mode wall-clock ticks through
// quiet spells.
func genStream(spec streamSpec) []event {
	rng := rand.New(rand.NewPCG(spec.seed, spec.seed*7+1))
	mt := ms(spec.start)
	type symState struct {
		agg, raw int64
		price    int64 // in cents
		mag      int   // wide: the symbol's price magnitude, 10^mag
		last     oracle.Trade
	}
	syms := make([]symState, spec.symbols)
	for i := range syms {
		syms[i].price = int64(100+rng.IntN(50000)) * 100
		syms[i].mag = rng.IntN(19) - 8
		syms[i].agg = int64(rng.IntN(1000))
	}
	backfillNow := ms("2026-11-27T00:00:00Z")
	var evs []event
	now := func() int64 {
		if spec.live {
			return mt + int64(rng.IntN(300))
		}
		return backfillNow
	}
	for len(evs) < spec.trades {
		// Advance the market clock: mostly small steps, sometimes gaps.
		switch x := rng.Float64(); {
		case x < 0.95:
			mt += int64(rng.IntN(800))
		case x < 0.995:
			mt += int64(rng.IntN(10 * 60 * 1000))
		case spec.shortGaps:
			mt += int64(rng.IntN(10 * 60 * 1000))
		case x < 0.9985:
			mt += int64(rng.IntN(6 * 3600 * 1000))
		case x < 0.9995:
			mt += int64(rng.IntN(24 * 3600 * 1000))
		default:
			mt += int64(rng.IntN(3 * 24 * 3600 * 1000))
		}
		if rng.IntN(5) == 0 {
			// A wall-clock tick during a quiet spell, sometimes while lagging.
			// A backfill ticks too: it must never move the watermark.
			tick := backfillNow
			if spec.live {
				tick = mt + int64(rng.IntN(5000))
			}
			evs = append(evs, event{now: tick, caughtUp: rng.IntN(4) != 0})
		}
		// Skewed: low-numbered symbols trade much more.
		i := int(float64(spec.symbols) * math.Pow(rng.Float64(), 2.5))
		s := &syms[i]
		var t oracle.Trade
		switch x := rng.Float64(); {
		case x < 0.02 && s.last.Symbol != "":
			t = s.last // resent by a websocket bridge
		default:
			s.agg += 1 + int64(rng.IntN(2))
			n := int64(1 + rng.IntN(4))
			tick := int64(1 + rng.IntN(100))
			if rng.IntN(2) == 0 {
				tick = -tick
			}
			s.price = max(1, s.price+tick)
			tm := mt - int64(rng.IntN(2000)) // cross-symbol jitter
			if x < 0.04 {
				tm = mt - int64(60_000+rng.IntN(2*3600*1000)) // from the past
			}
			price, qty := decimal.Fixed(s.price*1_000_000), decimal.Fixed(1+rng.IntN(5000))*100_000
			if spec.wide {
				price, qty = wideDecimal(rng, s.mag), wideDecimal(rng, rng.IntN(min(10, 12-s.mag)+9)-8)
			}
			t = oracle.Trade{Symbol: fmt.Sprintf("S%03d", i), AggID: s.agg, First: s.raw + 1, Last: s.raw + n, Time: tm,
				Price: price, Qty: qty, BuyerMaker: rng.IntN(2) == 0}
			s.raw += n
			s.last = t
		}
		evs = append(evs, event{trade: t, isTrade: true, now: now()})
	}
	return evs
}

// wideDecimal draws a value in [10^mag, 10^(mag+1)) with up to eight
// decimals; mag runs from -8 to 10.
func wideDecimal(rng *rand.Rand, mag int) decimal.Fixed {
	lo := int64(math.Pow10(mag + 8))
	return decimal.Fixed(lo + rng.Int64N(min(9*lo, math.MaxInt64-lo)))
}

func toTrade(t oracle.Trade) schema.Trade {
	return schema.Trade{Symbol: []byte(t.Symbol), AggID: t.AggID, Price: t.Price, Quantity: t.Qty,
		FirstID: t.First, LastID: t.Last, Time: t.Time, BuyerMaker: t.BuyerMaker}
}

// emitted gathers what the engine publishes, checking versions as it goes.
type emitted struct {
	t        *testing.T
	final    map[oracle.Key]schema.Kline
	open     map[oracle.Key]schema.Kline
	versions map[oracle.Key]int64
	states   map[string]schema.SymbolState // a compacted state topic
	records  int
}

func newEmitted(t *testing.T) *emitted {
	return &emitted{t: t, final: map[oracle.Key]schema.Kline{}, open: map[oracle.Key]schema.Kline{},
		versions: map[oracle.Key]int64{}, states: map[string]schema.SymbolState{}}
}

func (e *emitted) take(b *engine.Batch) {
	e.t.Helper()
	for _, k := range b.Klines {
		e.records++
		key := oracle.KeyOf(&k)
		if v, ok := e.versions[key]; ok && k.Version <= v {
			e.t.Fatalf("%v: version %d after %d", key, k.Version, v)
		}
		e.versions[key] = k.Version
		if k.TradeCount == 0 && !k.IsFinal {
			e.t.Fatalf("%v: open flat candle emitted", key)
		}
		k.Version = 0
		if k.IsFinal {
			if prev, ok := e.final[key]; ok && !oracle.Equal(prev, k) {
				e.t.Fatalf("%v: final twice with different content:\n%+v\n%+v", key, prev, k)
			}
			e.final[key] = k
			delete(e.open, key)
		} else {
			if _, ok := e.final[key]; ok {
				e.t.Fatalf("%v: open record after the final one", key)
			}
			e.open[key] = k
		}
	}
	for _, st := range b.States {
		st.Candles = append([]schema.CandleState(nil), st.Candles...)
		e.states[st.Symbol] = st
	}
}

func compareCandles(t *testing.T, what string, got, want map[oracle.Key]schema.Kline) {
	t.Helper()
	var missing, extra, diff []string
	for k, w := range want {
		g, ok := got[k]
		switch {
		case !ok:
			missing = append(missing, fmt.Sprintf("%v %+v", k, w))
		case !oracle.Equal(g, w): // every field exact, versions aside
			diff = append(diff, fmt.Sprintf("%v\n got %+v\nwant %+v", k, g, w))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			extra = append(extra, fmt.Sprintf("%v %+v", k, got[k]))
		}
	}
	for _, l := range [][]string{missing, extra, diff} {
		sort.Strings(l)
	}
	if len(missing)+len(extra)+len(diff) > 0 {
		t.Errorf("%s candles: %d want, %d got; %d missing, %d extra, %d differ", what, len(want), len(got), len(missing), len(extra), len(diff))
		for _, l := range []struct {
			name string
			l    []string
		}{{"missing", missing}, {"extra", extra}, {"differ", diff}} {
			for i, s := range l.l {
				if i == 3 {
					break
				}
				t.Logf("%s: %s", l.name, s)
			}
		}
	}
}

func TestEngineMatchesReference(t *testing.T) {
	specs := []streamSpec{
		{start: "2024-02-28T21:00:00Z", symbols: 12, trades: 10000},           // leap day, month end
		{start: "2023-12-31T18:00:00Z", symbols: 30, trades: 10000},           // year end, Monday 2024-01-01
		{start: "2024-03-31T22:30:00Z", symbols: 5, trades: 8000, live: true}, // live with wall-clock ticks
		{start: "2025-06-29T23:00:00Z", symbols: 20, trades: 10000, live: true},
		{start: "2026-02-27T12:00:00Z", symbols: 3, trades: 3000},
		{start: "2024-02-29T23:50:00Z", symbols: 8, trades: 4000, live: true, shortGaps: true},
		{start: "2024-01-07T23:55:00Z", symbols: 8, trades: 4000, shortGaps: true},
		// 5m does not nest in 3m, so the engine updates both per trade and
		// 1h, 1w, 1M through 3m.
		{start: "2024-02-28T21:00:00Z", symbols: 10, trades: 8000, periods: "3m,5m,1h,1w,1M"},
		{start: "2024-03-31T22:30:00Z", symbols: 6, trades: 6000, live: true, periods: "3m,5m,1h,1w,1M"},
		// A small bound: the watermark closes candles in bounded steps
		// between drains, and the candles are the same.
		{start: "2024-02-28T21:00:00Z", symbols: 30, trades: 10000, maxPending: 500},
		{start: "2024-03-31T22:30:00Z", symbols: 20, trades: 8000, live: true, maxPending: 300},
		{start: "2024-02-29T23:50:00Z", symbols: 8, trades: 4000, live: true, shortGaps: true, maxPending: 100},
		// No flat candles: only candles with trades are emitted.
		{start: "2023-12-31T18:00:00Z", symbols: 30, trades: 10000, noFlat: true},
		{start: "2024-03-31T22:30:00Z", symbols: 5, trades: 8000, live: true, noFlat: true, maxPending: 50},
		{start: "2024-02-28T21:00:00Z", symbols: 10, trades: 8000, periods: "3m,5m,1h,1w,1M", noFlat: true},
		// Exact decimals at every magnitude, into every period up to 1M.
		{start: "2024-02-28T21:00:00Z", symbols: 4, trades: 10000, wide: true},
		{start: "2024-03-31T22:30:00Z", symbols: 6, trades: 8000, live: true, wide: true, maxPending: 100},
	}
	seeds := 3
	if testing.Short() {
		seeds = 1
	}
	for i := range seeds {
		for _, base := range specs {
			spec := base
			spec.seed = uint64(i*100 + len(base.start) + base.symbols)
			name := fmt.Sprintf("%s/live=%v/seed=%d", spec.start, spec.live, spec.seed)
			if spec.maxPending > 0 {
				name += fmt.Sprintf("/max-pending=%d", spec.maxPending)
			}
			if spec.noFlat {
				name += "/no-flat"
			}
			if spec.wide {
				name += "/wide"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				runReference(t, spec)
			})
		}
	}
}

// runReference feeds one stream to the reference and to the engine; midway
// it snapshots the engine through its state records, builds a new engine
// from them and replays from an earlier offset, as after a crash.
func runReference(t *testing.T, spec streamSpec) {
	rng := rand.New(rand.NewPCG(spec.seed, 99))
	evs := genStream(spec)
	cfg := engine.DefaultConfig()
	cfg.Periods = period.All()
	if !spec.shortGaps {
		// 1s across gaps of days makes millions of flat candles.
		cfg.Periods = cfg.Periods[1:]
	}
	if spec.periods != "" {
		ps, err := period.ParseList(spec.periods)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Periods = ps
	}
	if spec.maxPending > 0 {
		cfg.MaxPending = spec.maxPending
	}
	ref := oracle.New(cfg.Periods, cfg.Grace, cfg.LiveWindow)
	if spec.noFlat {
		cfg.Flat = engine.FlatNone
		ref.NoFlat = true
	}
	eng, err := engine.NewAggregator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	out := newEmitted(t)
	var batch engine.Batch
	wall := ms("2026-11-27T00:00:00Z") // drives versions only
	drain := func() {
		wall += int64(rng.IntN(3))
		if spec.maxPending == 0 {
			eng.Drain(&batch, wall)
			out.take(&batch)
			return
		}
		// In pieces, as a shard at its memory bound drains.
		for !eng.DrainSome(&batch, wall, spec.maxPending) {
			if len(batch.Klines)+len(batch.States)*len(cfg.Periods) > spec.maxPending || batch.Position != -1 {
				t.Fatalf("a piece of %d klines and %d states, position %d", len(batch.Klines), len(batch.States), batch.Position)
			}
			out.take(&batch)
		}
		out.take(&batch)
	}
	restoreAt := len(evs)/3 + rng.IntN(len(evs)/3)
	var committed int // offset after the last drain: where a restarted member resumes
	var counts [engine.OutOfRange + 1]int
	// The bound: MaxPending, plus the candles one trade's own symbol rolls
	// through to reach its time (a gap of up to three days: at most 7,200
	// over these periods).
	backlogs, maxSeen := 0, 0
	settle := func(i int) {
		if spec.maxPending == 0 {
			return
		}
		for eng.Backlogged() {
			backlogs++
			maxSeen = max(maxSeen, eng.Pending())
			if bound := spec.maxPending + 7200; eng.Pending() > bound {
				t.Fatalf("event %d: %d final candles queued, bound %d", i, eng.Pending(), bound)
			}
			drain()
			committed = i + 1
			eng.Settle()
		}
	}
	for i := 0; i < len(evs); i++ {
		ev := evs[i]
		if i == restoreAt {
			drain()
			states := make([]schema.SymbolState, 0, len(out.states))
			for _, st := range out.states {
				states = append(states, st)
			}
			eng, err = engine.NewAggregator(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := eng.Restore(states, evs[i].now); err != nil {
				t.Fatal(err)
			}
			settle(i - 1)
			// Replay from an older commit: everything from there to here
			// must be recognised as already counted.
			back := committed - rng.IntN(200)
			for j := max(back, 0); j < i; j++ {
				if evs[j].isTrade {
					tr := toTrade(evs[j].trade)
					if o := eng.Fold(&tr, int64(j), evs[j].now); o == engine.Folded {
						t.Fatalf("replayed offset %d folded again", j)
					}
				} else {
					eng.AdvanceClock(evs[j].now, evs[j].caughtUp)
				}
			}
		}
		if ev.isTrade {
			tr := toTrade(ev.trade)
			got := eng.Fold(&tr, int64(i), ev.now)
			want := ref.Trade(ev.trade, ev.now)
			if got != want {
				t.Fatalf("event %d %+v: engine %v, reference %v (W %d)", i, ev.trade, got, want, eng.Watermark())
			}
			counts[got]++
		} else {
			eng.AdvanceClock(ev.now, ev.caughtUp)
			ref.Clock(ev.now, ev.caughtUp)
		}
		settle(i)
		if eng.Watermark() != ref.W {
			t.Fatalf("event %d: watermark %d, reference %d", i, eng.Watermark(), ref.W)
		}
		if rng.IntN(40) == 0 {
			drain()
			committed = i + 1
		}
	}
	drain()
	final, open := ref.Candles()
	compareCandles(t, "final", out.final, final)
	compareCandles(t, "open", out.open, open)
	if counts[engine.Duplicate] == 0 || counts[engine.Late] == 0 || len(final) == 0 {
		t.Fatalf("stream exercised too little: outcomes %v, %d final candles", counts, len(final))
	}
	if spec.wide {
		// The stream reached what floats and 64 bits cannot hold.
		var past64, rounded bool
		for _, k := range final {
			past64 = past64 || k.Volume.Big().BitLen() > 63
		}
		for _, ev := range evs {
			p := new(big.Int).Mul(big.NewInt(int64(ev.trade.Price)), big.NewInt(int64(ev.trade.Qty)))
			rounded = rounded || new(big.Int).Rem(p, big.NewInt(100_000_000)).Sign() != 0
		}
		if !past64 || !rounded {
			t.Fatalf("wide stream: a volume past 64 bits %v, a product needing rounding %v", past64, rounded)
		}
	}
	if spec.maxPending > 0 && backlogs == 0 {
		t.Fatal("the engine was never backlogged: the bound was not exercised")
	}
	t.Logf("%d events: folded %d, duplicate %d, late %d; %d final candles, %d records; backlogged %d times, at most %d queued",
		len(evs), counts[engine.Folded], counts[engine.Duplicate], counts[engine.Late], len(final), out.records, backlogs, maxSeen)
}
