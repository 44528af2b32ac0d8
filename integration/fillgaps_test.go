package integration_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/oracle"
	"github.com/klagg/klagg/processor/engine"
	"github.com/klagg/klagg/schema"
)

// TestFillGaps: the README's way back from --flat-candles none to
// Binance's flat candles, deploy/clickhouse/queries/fill-gaps.sql, run by
// ClickHouse (chdb) on the engine's output without flat candles, gives the
// engine's output with them, candle for candle, for series with quiet
// periods.
func TestFillGaps(t *testing.T) {
	python := os.Getenv("KLAGG_TEST_PYTHON")
	if python == "" {
		t.Skip("KLAGG_TEST_PYTHON (a Python with chdb; scripts/test.sh installs it) is unset")
	}
	recs := oracle.Market(oracle.MarketSpec{Seed: 41, Symbols: 6, Trades: 3_000, Partitions: 1,
		Start: time.Date(2024, 5, 31, 20, 0, 0, 0, time.UTC), StepMs: 20_000}) // quiet minutes for most symbols
	finals := func(flat engine.FlatPolicy) []schema.Kline {
		cfg := engine.DefaultConfig()
		cfg.Flat = flat
		a, err := engine.NewAggregator(cfg)
		if err != nil {
			t.Fatal(err)
		}
		var out []schema.Kline
		var b engine.Batch
		for i, r := range recs {
			tr := schema.Trade{Symbol: []byte(r.Trade.Symbol), AggID: r.Trade.AggID, Price: r.Trade.Price,
				Quantity: r.Trade.Qty, FirstID: r.Trade.First, LastID: r.Trade.Last, Time: r.Trade.Time, BuyerMaker: r.Trade.BuyerMaker}
			a.Fold(&tr, int64(i), time.Now().UnixMilli())
			if a.Backlogged() || i == len(recs)-1 {
				a.Drain(&b, 1)
				for _, k := range b.Klines {
					if k.IsFinal {
						out = append(out, k)
					}
				}
				a.Settle()
			}
		}
		return out
	}
	none, all := finals(engine.FlatNone), finals(engine.FlatAll)
	var rows bytes.Buffer
	enc := json.NewEncoder(&rows)
	ts := func(ms int64) string { return time.UnixMilli(ms).UTC().Format("2006-01-02 15:04:05.000") }
	for _, k := range none {
		enc.Encode(map[string]any{"symbol": k.Symbol, "period": k.Period, "open_time": ts(k.OpenTime), "close_time": ts(k.CloseTime),
			"open": k.Open, "high": k.High, "low": k.Low, "close": k.Close, "volume": k.Volume, "quote_volume": k.QuoteVolume,
			"trade_count": k.TradeCount, "taker_buy_volume": k.TakerBuyVolume, "taker_buy_quote_volume": k.TakerBuyQuoteVolume,
			"first_trade_id": k.FirstTradeID, "last_trade_id": k.LastTradeID, "is_final": true, "version": k.Version})
	}
	flats := 0
	for _, series := range []struct {
		symbol, period string
		step           int
	}{{"SYM003USDT", "1m", 60}, {"SYM005USDT", "1m", 60}, {"SYM004USDT", "5m", 300}, {"SYM000USDT", "1h", 3600}} {
		cmd := exec.Command(python, "testdata/fill_gaps.py", "../deploy/clickhouse", "../deploy/clickhouse/queries/fill-gaps.sql",
			series.symbol, series.period, fmt.Sprint(series.step))
		cmd.Stdin = bytes.NewReader(rows.Bytes())
		out, err := cmd.Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Fatalf("fill-gaps.sql for %+v: %v\n%s", series, err, stderr)
		}
		var got []string
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("%v: %s", err, line)
			}
			got = append(got, fmt.Sprintf("%v o=%v h=%v l=%v c=%v v=%v q=%v n=%v V=%v Q=%v", m["open_time"], m["open"], m["high"], m["low"],
				m["close"], m["volume"], m["quote_volume"], m["trade_count"], m["taker_buy_volume"], m["taker_buy_quote_volume"]))
		}
		var want []string
		last := int64(0)
		for _, k := range none {
			if k.Symbol == series.symbol && k.Period == series.period {
				last = k.OpenTime
			}
		}
		for _, k := range all {
			if k.Symbol != series.symbol || k.Period != series.period || k.OpenTime > last {
				continue
			}
			if k.TradeCount == 0 {
				flats++
			}
			want = append(want, fmt.Sprintf("%s o=%v h=%v l=%v c=%v v=%v q=%v n=%d V=%v Q=%v", ts(k.OpenTime), k.Open, k.High, k.Low,
				k.Close, k.Volume, k.QuoteVolume, k.TradeCount, k.TakerBuyVolume, k.TakerBuyQuoteVolume))
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("%s %s: fill-gaps.sql gave %d rows, --flat-candles all %d; first difference: %s",
				series.symbol, series.period, len(got), len(want), firstDifference(got, want))
		}
	}
	if flats < 20 {
		t.Fatalf("only %d flat candles filled: the market is too busy to test gaps", flats)
	}
	t.Logf("fill-gaps.sql over --flat-candles none equals --flat-candles all, %d flat candles filled", flats)
}

func firstDifference(a, b []string) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return fmt.Sprintf("row %d\n got %s\nwant %s", i, a[i], b[i])
		}
	}
	return "one ends first"
}
