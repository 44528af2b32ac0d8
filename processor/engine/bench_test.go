package engine_test

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/processor/engine"
	"github.com/klagg/klagg/schema"
)

// BenchmarkAggregatorFold: one trade folded into the 15 default periods.
// "same-candle" is the floor (one symbol, no candle ends); "2000-symbols"
// rotates through 2,000 symbols while trade time advances 1 ms per trade,
// so candles roll and the watermark closes quiet ones; the batch is drained
// every 10,000 trades outside the timer.
func BenchmarkAggregatorFold(b *testing.B) {
	for _, nSym := range []int{1, 2000} {
		name := "same-candle"
		if nSym > 1 {
			name = fmt.Sprintf("%d-symbols", nSym)
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			a := newAgg(b, period.DefaultList)
			syms := make([][]byte, nSym)
			for i := range syms {
				syms[i] = fmt.Appendf(nil, "SYM%04dUSDT", i)
			}
			t0 := ms("2024-05-01T10:00:00Z")
			tr := schema.Trade{Price: 2816547000000, Quantity: 50_000_000, FirstID: 1, LastID: 3, Time: t0}
			var batch engine.Batch
			var n int64
			fold := func() {
				n++
				tr.Symbol = syms[int(n)%nSym]
				tr.AggID = n
				tr.Price = decimal.Fixed(2816547000000 + 1_000_000*(n%17)) // 28165.47 + cents
				if nSym > 1 {
					tr.Time = t0 + n
				}
				a.Fold(&tr, n, t0)
				if n%10_000 == 0 {
					b.StopTimer() // BenchmarkAggregatorDrain measures drains
					a.Drain(&batch, t0)
					b.StartTimer()
				}
			}
			for range 3 * nSym * 10 {
				fold() // warm up: every symbol present, arrays grown
			}
			for b.Loop() {
				fold()
			}
		})
	}
}

// BenchmarkAggregatorMemory reports the heap bytes per (symbol, period) slot
// of a shard of 1,000,000 slots, everything counted: candles, dirty set,
// symbol table and per-symbol state.
func BenchmarkAggregatorMemory(b *testing.B) {
	const slots = 1_000_000
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		cfg := engine.DefaultConfig()
		cfg.SymbolsHint = 0 // let the arrays grow as in production
		a, err := engine.NewAggregator(cfg)
		if err != nil {
			b.Fatal(err)
		}
		nSym := slots / len(cfg.Periods)
		tr := schema.Trade{Price: 1, Quantity: 1, FirstID: 1, LastID: 1, Time: ms("2024-05-01T10:00:00Z")}
		for i := range nSym {
			tr.Symbol = fmt.Appendf(tr.Symbol[:0], "SYM%06dUSDT", i)
			tr.AggID = int64(i)
			a.Fold(&tr, int64(i), tr.Time)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(nSym*len(cfg.Periods)), "B/slot")
		runtime.KeepAlive(a)
	}
}
