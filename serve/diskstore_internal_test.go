package serve

import (
	"log/slog"
	"testing"
	"time"

	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/schema"
)

// TestExpire: a period's retention removes its candles that opened before
// now − retention, and nothing of other periods.
func TestExpire(t *testing.T) {
	st, err := openDiskStore(t.TempDir(), 8, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	day := int64(24 * 3600_000)
	now := time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	var batch []schema.Kline
	for d := range int64(10) {
		for _, p := range []string{"1m", "1h"} {
			open := now - (10-d)*day
			batch = append(batch, schema.Kline{Symbol: "BTCUSDT", Period: p, OpenTime: open, CloseTime: open + 59_999,
				Open: 1, High: 1, Low: 1, Close: 1, FirstTradeID: -1, LastTradeID: -1, Version: 1})
		}
	}
	if err := st.apply(batch, map[int32]int64{0: 20}, make([]bool, len(batch))); err != nil {
		t.Fatal(err)
	}
	if err := st.expire(map[period.Period]time.Duration{period.P1m: 3 * 24 * time.Hour}, now); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		p    period.Period
		want int
	}{{period.P1m, 3}, {period.P1h, 10}} {
		ks, _, err := st.klines(query{symbol: "BTCUSDT", period: tc.p, start: 0, end: -1, limit: 100})
		if err != nil || len(ks) != tc.want {
			t.Fatalf("%s: %d candles, %v; want %d", tc.p, len(ks), err, tc.want)
		}
		if tc.p == period.P1m && ks[0].OpenTime != now-3*day {
			t.Fatalf("the oldest 1m candle kept opens at %d, want %d", ks[0].OpenTime, now-3*day)
		}
	}
}
