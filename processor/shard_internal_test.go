package processor

import (
	"log/slog"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/processor/engine"
	"github.com/klagg/klagg/schema"
)

// TestShardCatchUpFlush drives one shard's drain decisions with a fake
// clock: while more records wait than it folded since its last drain, it
// hands over only final candles and nothing to commit; it delivers
// everything, and a position to commit, once caught up, once catchUpHold
// has passed, and whenever a full drain is asked for.
func TestShardCatchUpFlush(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	cfg := DefaultConfig()
	enc, err := schema.NewKlineEncoder(schema.FramingSingleObject, 0)
	if err != nil {
		t.Fatal(err)
	}
	codec, err := schema.NewStateCodec()
	if err != nil {
		t.Fatal(err)
	}
	r := &runtime{cfg: cfg, log: slog.New(slog.DiscardHandler), clock: clock, stats: &Stats{}, obs: nopObserver{},
		klineEnc: enc, stateCodec: codec}
	agg, err := engine.NewAggregator(cfg.Engine)
	if err != nil {
		t.Fatal(err)
	}
	s := r.newShard(0, agg)

	// Two symbols' trades, one a minute, an hour ago in trade time.
	start := now.Add(-time.Hour).UnixMilli()
	offset := int64(0)
	batch := func(n int) []*kgo.Record {
		var recs []*kgo.Record
		for range n {
			for _, sym := range []string{"BTCUSDT", "ETHUSDT"} {
				tr := schema.Trade{Symbol: []byte(sym), AggID: offset + 1, Price: 100, Quantity: 1,
					FirstID: offset, LastID: offset, Time: start + offset*30_000}
				recs = append(recs, &kgo.Record{Key: tr.Symbol, Value: schema.AppendBinanceJSON(nil, &tr), Offset: offset})
				offset++
			}
		}
		return recs
	}
	finalsOnly := func(d drained) bool {
		for _, rec := range d.first {
			var k schema.Kline
			if err := schema.DecodeKline(rec.Value, &k); err != nil {
				t.Fatal(err)
			}
			if !k.IsFinal {
				return false
			}
		}
		return true
	}

	s.fold(batch(10), 10_000, -1) // far behind: 10,000 records in the partition
	d := s.drain(false)
	if d.position != -1 || len(d.states) != 0 || !finalsOnly(d) || len(d.first) == 0 {
		t.Fatalf("behind: position %d, %d states, %d klines (finals only: %v); want finals only, nothing to commit",
			d.position, len(d.states), len(d.first), finalsOnly(d))
	}

	now = now.Add(catchUpHold)
	s.fold(batch(10), 10_000, -1)
	d = s.drain(false)
	if d.position != offset-1 || len(d.states) != 2 || finalsOnly(d) {
		t.Fatalf("after catchUpHold: position %d, %d states; want a full drain at %d", d.position, len(d.states), offset-1)
	}

	s.fold(batch(10), 10_000, -1)
	if d = s.drain(true); d.position != offset-1 || len(d.states) != 2 {
		t.Fatalf("asked for all: position %d, %d states", d.position, len(d.states))
	}

	s.fold(batch(10), 10_000, -1)
	if d = s.drain(false); d.position != -1 {
		t.Fatalf("behind again: position %d", d.position)
	}
	s.fold(batch(10), offset, -1) // caught up: the last record read is the partition's last
	if d = s.drain(false); d.position != offset-1 || len(d.states) != 2 || finalsOnly(d) {
		t.Fatalf("caught up: position %d, %d states", d.position, len(d.states))
	}

	// A shard that is behind by less than it folded since its last drain
	// (a live stream between two fetches) delivers everything.
	s.fold(batch(50), offset+10, -1)
	if d = s.drain(false); d.position != offset-1 {
		t.Fatalf("slightly behind: position %d, want a full drain", d.position)
	}
	// Read to a transaction marker after the last trade: caught up (lag 0),
	// and the position to commit is past the marker.
	recs := batch(5)
	marker := offset
	offset++
	s.fold(recs, marker+1, marker)
	if d = s.drain(false); d.lag != 0 || d.position != marker {
		t.Fatalf("read up to a marker: lag %d, position %d; want 0 and %d", d.lag, d.position, marker)
	}
	// A fetch of nothing but a marker moves the position too.
	s.fold(nil, offset+1, offset)
	if d = s.drain(false); d.lag != 0 || d.position != offset {
		t.Fatalf("a marker alone: lag %d, position %d; want 0 and %d", d.lag, d.position, offset)
	}
}
