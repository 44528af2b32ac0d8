package serve

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/schema"
)

// BenchmarkStore fills an on-disk store with KLAGG_STORE_CANDLES candles
// (default 5,000,000; the README's figure is 50,000,000) in fetch-sized
// batches, as serve ingests the klines topic, then asks it for 1,000
// candles of a random (symbol, 1m) series at a random start, as ccxt pages
// through history. It reports the ingest rate, the query time's median and
// p99, and the process's peak RSS. KLAGG_STORE_DIR keeps the store for a
// second run (the fill is skipped when it already holds the candles).
func BenchmarkStore(b *testing.B) {
	n := 5_000_000
	if v := os.Getenv("KLAGG_STORE_CANDLES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			b.Fatal(err)
		}
	}
	dir := os.Getenv("KLAGG_STORE_DIR")
	if dir == "" {
		dir = b.TempDir()
	}
	st, err := openDiskStore(dir, DefaultConfig().CacheMB, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer st.close()
	const symbols = 100 // 1m candles of 100 symbols: n/100 minutes each
	minutes := n / symbols
	t0 := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	ingest := 0.0
	names := make([]string, symbols)
	for s := range names {
		names[s] = fmt.Sprintf("S%03dUSDT", s)
	}
	if len(st.symbolList()) < symbols {
		start := time.Now()
		batch := make([]schema.Kline, 0, 10_000)
		changed := make([]bool, 10_000)
		next := map[int32]int64{}
		written := 0
		for m := range minutes {
			for s := range symbols {
				open := t0 + int64(m)*60_000
				price := int64(2_000_000_000_000 + (m*7+s)%100_000)
				batch = append(batch, schema.Kline{Symbol: names[s], Period: "1m", OpenTime: open,
					CloseTime: open + 59_999, Open: decimal.Fixed(price), High: decimal.Fixed(price + 5), Low: decimal.Fixed(price - 5), Close: decimal.Fixed(price),
					TradeCount: 10, FirstTradeID: int64(m), LastTradeID: int64(m + 9), IsFinal: true, Version: 1})
				if len(batch) == cap(batch) {
					written += len(batch)
					next[0] = int64(written)
					if err := st.apply(batch, next, changed); err != nil {
						b.Fatal(err)
					}
					batch = batch[:0]
				}
			}
		}
		if err := st.apply(batch, next, changed[:len(batch)]); err != nil {
			b.Fatal(err)
		}
		written += len(batch)
		ingest = float64(written) / time.Since(start).Seconds()
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var took []time.Duration
	b.ResetTimer()
	for b.Loop() {
		q := query{symbol: names[rng.IntN(symbols)], period: period.P1m,
			start: t0 + int64(rng.IntN(max(1, minutes-1000)))*60_000, end: -1, limit: 1000}
		start := time.Now()
		ks, known, err := st.klines(q)
		took = append(took, time.Since(start))
		if err != nil || !known || len(ks) != min(1000, minutes) {
			b.Fatalf("%d candles, known %v, %v", len(ks), known, err)
		}
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "median-ms")
	b.ReportMetric(float64(took[len(took)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(n), "candles")
	if ingest > 0 {
		b.ReportMetric(ingest, "ingest-candles/s") // after ResetTimer, which drops reported metrics
	}
	if status, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(status), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
				kb, _ := strconv.Atoi(f[1])
				b.ReportMetric(float64(kb)/1024, "peak-RSS-MiB")
			}
		}
	}
}
