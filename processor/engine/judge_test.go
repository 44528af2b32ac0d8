package engine_test

import (
	"math/rand/v2"
	"testing"

	"github.com/klagg/klagg/processor/engine"
	"github.com/klagg/klagg/schema"
)

func TestJudgeSays(t *testing.T) {
	minute := ms("2024-05-01T10:00:00Z")
	j := engine.NewJudge(map[string]schema.SymbolState{"BTC": {LastAggID: 100, Watermark: minute,
		Candles: []schema.CandleState{{Period: "1h", OpenTime: minute}, {Period: "1m", OpenTime: minute}}}})
	for _, tc := range []struct {
		sym         string
		aggID, time int64
		want        engine.Outcome
		why         string
	}{
		{"BTC", 100, minute + 1000, engine.Duplicate, "duplicate, trade id 100 is not above its last, 100"},
		{"BTC", 101, minute - 1, engine.Late, "late, 2024-05-01 09:59:59 is before its open candle of 2024-05-01 10:00:00"},
		{"BTC", 101, minute, engine.Folded, ""},
		{"ETH", 1, minute - 61_000, engine.Late, "late, its 1m candle of 2024-05-01 09:58:00 closed before the watermark of every shard, 2024-05-01 10:00:00"},
		{"ETH", 1, minute - 1, engine.Late, "late, its 1m candle of 2024-05-01 09:59:00 closed before the watermark of every shard, 2024-05-01 10:00:00"},
		{"ETH", 1, minute, engine.Folded, ""}, // its 1m candle ends after the watermark
	} {
		got, why := j.Trade(&schema.Trade{Symbol: []byte(tc.sym), AggID: tc.aggID, Time: tc.time})
		if got != tc.want || why != tc.why {
			t.Errorf("%s %d at %d: %v %q, want %v %q", tc.sym, tc.aggID, tc.time, got, why, tc.want, tc.why)
		}
	}
}

// TestJudgeAgreesWithFold: after random trades of a few symbols, the
// state an aggregator drains, judged, refuses exactly the next trades an
// aggregator restored from it refuses, for known and new symbols.
func TestJudgeAgreesWithFold(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 13))
	start := ms("2024-05-01T10:00:00Z")
	for round := range 200 {
		a := newAgg(t, "1m,5m,1h")
		ids := map[string]int64{}
		at := start
		for offset := range int64(1 + rng.IntN(30)) {
			at += rng.Int64N(90_000)
			sym := []string{"A", "B", "C"}[rng.IntN(3)]
			ids[sym] += 1 + rng.Int64N(3)
			a.Fold(&schema.Trade{Symbol: []byte(sym), AggID: ids[sym], Price: fixedOf(1), Quantity: fixedOf(1),
				FirstID: ids[sym], LastID: ids[sym], Time: at}, offset, backfillNow)
		}
		var b engine.Batch
		a.Drain(&b, backfillNow)
		states := map[string]schema.SymbolState{}
		for _, st := range b.States {
			states[st.Symbol] = st
		}
		j := engine.NewJudge(states)
		for range 20 {
			r := newAgg(t, "1m,5m,1h")
			if err := r.Restore(b.States, backfillNow); err != nil {
				t.Fatal(err)
			}
			sym := []string{"A", "B", "C", "D"}[rng.IntN(4)]
			tr := schema.Trade{Symbol: []byte(sym), AggID: rng.Int64N(40), Price: fixedOf(1), Quantity: fixedOf(1),
				Time: at + rng.Int64N(2*3_600_000) - 3_600_000}
			want := r.Fold(&tr, 1<<40, backfillNow)
			got, why := j.Trade(&tr)
			if got != want || (got == engine.Folded) != (why == "") {
				t.Fatalf("round %d, %s id %d at %d: judged %v (%q), Fold says %v", round, sym, tr.AggID, tr.Time, got, why, want)
			}
		}
	}
}
