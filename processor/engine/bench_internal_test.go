package engine

import (
	"fmt"
	"testing"
	"time"

	"github.com/klagg/klagg/schema"
)

// drainByScan is the design the sparse set replaces: find the changed slots
// by looking at every flag. It does the same work per dirty slot as Drain,
// so BenchmarkAggregatorDrain compares only how the slots are found.
func (a *Aggregator) drainByScan(b *Batch, nowMs int64) {
	b.Klines, b.States = b.Klines[:0], b.States[:0]
	for idx, dirty := range a.dirtyFlags {
		if dirty {
			a.emitOpen(b, idx, nowMs*1000)
		}
	}
	a.dirtyIndices = a.dirtyIndices[:0]
	a.appendStates(b, len(a.dirtySyms))
}

// drainFullScan is what a store without change tracking does: snapshot
// every open candle at every flush.
func (a *Aggregator) drainFullScan(b *Batch, nowMs int64) {
	b.Klines, b.States = b.Klines[:0], b.States[:0]
	for idx := range a.candles {
		a.emitOpen(b, idx, nowMs*1000)
	}
	a.dirtyIndices = a.dirtyIndices[:0]
	a.appendStates(b, len(a.dirtySyms))
}

// emitOpen is Drain's work for one slot.
func (a *Aggregator) emitOpen(b *Batch, idx int, vnow int64) {
	a.dirtyFlags[idx] = false
	sym := int32(idx / a.nP)
	if !a.symMark[sym] {
		a.symMark[sym] = true
		a.dirtySyms = append(a.dirtySyms, sym)
		if a.lazy != nil {
			a.propagate(sym)
		}
	}
	c := &a.candles[idx]
	if c.firstID < 0 {
		return
	}
	c.version = max(c.version+1, vnow)
	b.Klines = append(b.Klines, a.kline(sym, idx-int(sym)*a.nP, c, false))
}

const benchSlots = 1_000_000

// benchShard returns a shard of 1,000,000 slots (66,667 symbols × 15
// periods), every candle open, nothing dirty.
func benchShard(tb testing.TB) (*Aggregator, []schema.Trade) {
	cfg := DefaultConfig()
	nSym := benchSlots / len(cfg.Periods)
	cfg.SymbolsHint = nSym
	a, err := NewAggregator(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	trades := make([]schema.Trade, nSym)
	base := int64(1_714_557_600_000) // 2024-05-01T10:00:00Z
	for i := range trades {
		trades[i] = schema.Trade{Symbol: fmt.Appendf(nil, "S%06d", i), AggID: 1, Price: 100, Quantity: 1,
			FirstID: 1, LastID: 1, Time: base}
		a.Fold(&trades[i], int64(i), base)
	}
	var b Batch
	a.Drain(&b, base)
	return a, trades
}

// BenchmarkAggregatorDrain: the cost of one drain at 0%, 0.1%, 1% and 10%
// of 1,000,000 slots dirty. "sparse" is Drain; "flag-scan" finds the same
// slots by reading every dirty flag and then does the same work; "full-scan"
// has no change tracking and snapshots every candle. Each emits klines and
// state records.
func BenchmarkAggregatorDrain(b *testing.B) {
	a, trades := benchShard(b)
	nP := len(a.periods)
	agg := int64(1) // aggregate ids only grow, across sub-benchmarks too
	for _, pct := range []float64{0, 0.1, 1, 10} {
		dirtySyms := int(benchSlots * pct / 100 / float64(nP))
		for _, how := range []string{"sparse", "flag-scan", "full-scan"} {
			b.Run(fmt.Sprintf("dirty=%g%%/%s", pct, how), func(b *testing.B) {
				b.ReportAllocs()
				var batch Batch
				mark := func() {
					agg++
					for i := range dirtySyms {
						t := &trades[(i*7919)%len(trades)] // spread over the arrays
						t.AggID = agg
						a.Fold(t, int64(agg), t.Time)
					}
				}
				mark()
				a.Drain(&batch, 1) // grow the batch once
				// Each iteration dirties the slots and drains them; only the
				// drain is timed (drain-ns/op), since StopTimer per iteration
				// would dwarf a drain that finds nothing.
				var spent time.Duration
				for b.Loop() {
					mark()
					start := time.Now()
					switch how {
					case "sparse":
						a.Drain(&batch, 1)
					case "flag-scan":
						a.drainByScan(&batch, 1)
					default:
						a.drainFullScan(&batch, 1)
					}
					spent += time.Since(start)
				}
				b.ReportMetric(float64(spent.Nanoseconds())/float64(b.N), "drain-ns/op")
				b.ReportMetric(float64(len(batch.Klines)), "klines/drain")
			})
		}
	}
}
