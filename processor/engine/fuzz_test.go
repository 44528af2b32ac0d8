package engine_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/processor/engine"
	"github.com/klagg/klagg/schema"
)

// FuzzRestore: a state record off the wire, decoded and restored, either is
// refused with an error or gives a shard that then folds and drains without
// panicking, and whose next state record restores again.
func FuzzRestore(f *testing.F) {
	if b, err := os.ReadFile(filepath.Join("..", "schema", "testdata", "state.bin")); err == nil {
		f.Add(b)
	}
	{
		a := newAgg(f, period.DefaultList)
		fd := feed(f, a)
		fd.trade("BTCUSDT", "2024-05-01T10:00:10Z", 5, 1, backfillNow)
		fd.trade("BTCUSDT", "2024-05-01T10:07:10Z", 6, 2, backfillNow)
		var b engine.Batch
		a.Drain(&b, 1)
		codec, _ := schema.NewStateCodec()
		v, err := codec.Encode(&b.States[0])
		if err != nil {
			f.Fatal(err)
		}
		f.Add(v)
	}
	codec, err := schema.NewStateCodec()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		var st schema.SymbolState
		if err := codec.Decode(value, &st); err != nil {
			return
		}
		a := newAgg(t, period.DefaultList)
		if err := a.Restore([]schema.SymbolState{st}, backfillNow); err != nil {
			return
		}
		tr := schema.Trade{Symbol: []byte(st.Symbol), AggID: st.LastAggID + 1, Price: 1, Quantity: 1,
			FirstID: 1, LastID: 1, Time: max(st.LastTradeTime, st.Watermark) + 90_000}
		a.Fold(&tr, st.SourceOffset+1, backfillNow)
		var b engine.Batch
		a.Drain(&b, backfillNow)
		if len(b.States) != 1 {
			t.Fatalf("%d state records after one symbol's trade", len(b.States))
		}
		if err := newAgg(t, period.DefaultList).Restore(b.States, backfillNow); err != nil {
			t.Fatalf("the engine's own state does not restore: %v", err)
		}
	})
}
