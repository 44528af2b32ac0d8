package processor

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/processor/engine"
	"github.com/klagg/klagg/schema"
)

// testShard is a shard of partition 0, given only what a shard is given,
// driven on the test's goroutine (its own is not started).
func testShard(t *testing.T, cfg Config, clock func() time.Time) *shard {
	t.Helper()
	enc, err := schema.NewKlineEncoder(schema.FramingSingleObject, 0)
	if err != nil {
		t.Fatal(err)
	}
	codec, err := schema.NewStateCodec()
	if err != nil {
		t.Fatal(err)
	}
	agg, err := engine.NewAggregator(cfg.Engine)
	if err != nil {
		t.Fatal(err)
	}
	s := newShard(0, agg, shardEnv{clock: clock, log: slog.New(slog.DiscardHandler), stats: &Stats{},
		klineEnc: enc, stateCodec: codec, decoder: schema.TradeDecoder{Format: cfg.InputFormat},
		klinesTopic: cfg.KlinesTopic, stateTopic: cfg.StateTopic, dlqTopic: cfg.DLQTopic, maxPending: cfg.Engine.MaxPending,
		liveWindow: cfg.Engine.LiveWindow.Milliseconds()})
	s.begin()
	return s
}

// TestShardLifecycle walks a shard through its states: restoring until
// started, running, broken when marked (only from running), stopped by
// stop, which also ends its goroutine and may be called again.
func TestShardLifecycle(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	cfg := DefaultConfig()
	agg, err := engine.NewAggregator(cfg.Engine)
	if err != nil {
		t.Fatal(err)
	}
	s := newShard(3, agg, shardEnv{clock: func() time.Time { return now }, stats: &Stats{}})
	if s.State() != shardRestoring {
		t.Fatalf("a new shard is %s", s.State())
	}
	s.markBroken()
	if s.State() != shardRestoring {
		t.Fatalf("a restoring shard marked broken is %s", s.State())
	}
	s.start()
	if s.State() != shardRunning {
		t.Fatalf("a started shard is %s", s.State())
	}
	s.markBroken()
	if s.State() != shardBroken {
		t.Fatalf("a running shard marked broken is %s", s.State())
	}
	s.stop()
	select {
	case <-s.done:
	default:
		t.Fatal("stop returned with the shard's goroutine running")
	}
	s.stop()
	if s.State() != shardStopped || s.State().String() != "stopped" {
		t.Fatalf("a stopped shard is %s", s.State())
	}
	never := newShard(4, agg, shardEnv{})
	never.stop() // never started: nothing to wait for
	if never.State() != shardStopped {
		t.Fatalf("a shard stopped while restoring is %s", never.State())
	}
}

// give hands a fetch to s as the poll loop does, on the test's goroutine.
func give(s *shard, recs []*kgo.Record, hw, end int64) {
	s.queued.Add(int64(len(recs)))
	s.held = append(s.held, shardMsg{recs: recs, hw: hw, end: end})
	s.work()
}

// TestShardCatchUpFlush drives one shard's drain decisions with a fake
// clock: while more records wait than it folded since its last drain, it
// hands over only final candles and nothing to commit; it delivers
// everything, and a position to commit, once caught up, once catchUpHold
// has passed, and whenever a full drain is asked for.
func TestShardCatchUpFlush(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	cfg := DefaultConfig()
	s := testShard(t, cfg, clock)

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

	give(s, batch(10), 10_000, -1) // far behind: 10,000 records in the partition
	d := s.drain(drainTick)
	if d.position != -1 || len(d.states) != 0 || !finalsOnly(d) || len(d.first) == 0 {
		t.Fatalf("behind: position %d, %d states, %d klines (finals only: %v); want finals only, nothing to commit",
			d.position, len(d.states), len(d.first), finalsOnly(d))
	}

	now = now.Add(catchUpHold)
	give(s, batch(10), 10_000, -1)
	d = s.drain(drainTick)
	if d.position != offset-1 || len(d.states) != 2 || finalsOnly(d) {
		t.Fatalf("after catchUpHold: position %d, %d states; want a full drain at %d", d.position, len(d.states), offset-1)
	}

	give(s, batch(10), 10_000, -1)
	if d = s.drain(drainAll); d.position != offset-1 || len(d.states) != 2 {
		t.Fatalf("asked for all: position %d, %d states", d.position, len(d.states))
	}

	give(s, batch(10), 10_000, -1)
	if d = s.drain(drainTick); d.position != -1 {
		t.Fatalf("behind again: position %d", d.position)
	}
	give(s, batch(10), offset, -1) // caught up: the last record read is the partition's last
	if d = s.drain(drainTick); d.position != offset-1 || len(d.states) != 2 || finalsOnly(d) {
		t.Fatalf("caught up: position %d, %d states", d.position, len(d.states))
	}

	// A shard that is behind by less than it folded since its last drain
	// (a live stream between two fetches) delivers everything.
	give(s, batch(50), offset+10, -1)
	if d = s.drain(drainTick); d.position != offset-1 {
		t.Fatalf("slightly behind: position %d, want a full drain", d.position)
	}
	// Read to a transaction marker after the last trade: caught up (lag 0),
	// and the position to commit is past the marker.
	recs := batch(5)
	marker := offset
	offset++
	give(s, recs, marker+1, marker)
	if d = s.drain(drainTick); d.lag != 0 || d.position != marker {
		t.Fatalf("read up to a marker: lag %d, position %d; want 0 and %d", d.lag, d.position, marker)
	}
	// A fetch of nothing but a marker moves the position too.
	give(s, nil, offset+1, offset)
	if d = s.drain(drainTick); d.lag != 0 || d.position != offset {
		t.Fatalf("a marker alone: lag %d, position %d; want 0 and %d", d.lag, d.position, offset)
	}
}

// TestShardBacklog: a fetch whose trades sweep the watermark over hours of
// many quiet symbols fills the engine's queue of final candles; the shard
// stops folding and holds the rest. Exactly-once drains answer partial with
// final candles only until every record is folded, and never hand over
// more than the bound; the last drain is full, at the fetch's last offset.
func TestShardBacklog(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	cfg := DefaultConfig()
	cfg.Engine.Periods, _ = period.ParseList("1m,5m")
	cfg.Engine.MaxPending = 500
	s := testShard(t, cfg, func() time.Time { return now })
	// 200 symbols trade once at the start, then one trade a minute for
	// two hours: each minute closes 200 candles.
	start := now.Add(-24 * time.Hour).UnixMilli()
	var recs []*kgo.Record
	add := func(sym string, at int64) {
		off := int64(len(recs))
		tr := schema.Trade{Symbol: []byte(sym), AggID: off + 1, Price: 100, Quantity: 1, FirstID: off, LastID: off, Time: at}
		recs = append(recs, &kgo.Record{Key: tr.Symbol, Value: schema.AppendBinanceJSON(nil, &tr), Offset: off})
	}
	for i := range 200 {
		add(fmt.Sprintf("S%03dUSDT", i), start)
	}
	for m := 1; m <= 120; m++ {
		add("S000USDT", start+int64(m)*60_000)
	}
	last := recs[len(recs)-1].Offset
	give(s, recs, last+1, last)
	if !s.backlogged.Load() || s.queued.Load() == 0 {
		t.Fatalf("backlogged %v, %d queued: the sweep should have filled the engine", s.backlogged.Load(), s.queued.Load())
	}
	bound := cfg.Engine.MaxPending + 2 // plus S000USDT's own roll
	finals, pieces := 0, 0
	for round := 0; ; round++ {
		if round > 1000 {
			t.Fatal("no end to partial drains")
		}
		d := s.drain(drainTxn)
		if len(d.first) > bound {
			t.Fatalf("round %d: %d records in one drain, bound %d", round, len(d.first), bound)
		}
		finals += len(d.first)
		if !d.partial {
			if s.queued.Load() != 0 || d.position != last || len(d.states)+pieces == 0 {
				t.Fatalf("full drain with %d queued, position %d (want %d), %d states", s.queued.Load(), d.position, last, len(d.states))
			}
			if round < 3 {
				t.Fatalf("only %d partial drains", round)
			}
			break
		}
		if d.position != -1 || (len(d.states) != 0 && !s.draining) {
			t.Fatalf("a partial drain carries a position (%d), or state (%d) outside a full drain in pieces", d.position, len(d.states))
		}
		pieces += len(d.states)
		if s.draining {
			continue // the rest of one snapshot: the shard changes nothing meanwhile
		}
		if s.wantFull && len(s.held) == 0 {
			s.agg.SettleStep()
		} else {
			s.agg.Settle()
		}
		s.work()
	}
	// W = the last trade's time - 1s closes 119 minutes and 23 five
	// minutes of each of the 200 symbols; S000USDT's own last trade closes
	// one more of each, and its two open candles are emitted.
	if want := 200*(119+23) + 2 + 2; finals != want {
		t.Fatalf("%d records drained, want %d", finals, want)
	}
}

// TestShardDrainInPieces: while a full drain is handed over in pieces, the
// shard changes nothing: the wall clock does not move its watermark, and a
// finals-only request gets nothing rather than a piece without its state.
func TestShardDrainInPieces(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	cfg := DefaultConfig()
	cfg.Engine.Periods, _ = period.ParseList("1m")
	cfg.Engine.MaxPending = 10
	s := testShard(t, cfg, func() time.Time { return now })
	// 50 symbols trading now, live: the wall clock would close their
	// candles a minute later.
	var recs []*kgo.Record
	for i := range 50 {
		tr := schema.Trade{Symbol: fmt.Appendf(nil, "S%02dUSDT", i), AggID: 1, Price: 100, Quantity: 1, Time: now.Add(-time.Second).UnixMilli()}
		recs = append(recs, &kgo.Record{Key: tr.Symbol, Value: schema.AppendBinanceJSON(nil, &tr), Offset: int64(i)})
	}
	give(s, recs, 50, 49)
	d := s.drain(drainTxn)
	if !d.partial || !s.draining || len(d.first) > 10 {
		t.Fatalf("first piece: partial %v, draining %v, %d records", d.partial, s.draining, len(d.first))
	}
	now = now.Add(2 * time.Minute) // the clock would close every candle
	if f := s.drain(drainFinals); len(f.first)+len(f.states) != 0 {
		t.Fatalf("a finals-only request during pieces got %d klines, %d states", len(f.first), len(f.states))
	}
	opens, states := len(d.first), 0
	for d.partial {
		d = s.drain(drainTxn)
		for _, rec := range d.first {
			var k schema.Kline
			if err := schema.DecodeKline(rec.Value, &k); err != nil {
				t.Fatal(err)
			}
			if k.IsFinal {
				t.Fatalf("a final candle between the pieces of one snapshot: %+v", k)
			}
		}
		opens += len(d.first)
		states += len(d.states)
	}
	if opens != 50 || states != 50 || d.position != 49 {
		t.Fatalf("the snapshot: %d open candles, %d states, position %d; want 50, 50, 49", opens, states, d.position)
	}
}

// TestShardClockSkew: a member whose wall clock is 30 s ahead of the
// brokers' (their record timestamps), and one 30 s behind, in a live shard
// that goes quiet near a minute's end. Ahead, the open candle is not closed
// before its last trade could arrive, and that trade is folded, not
// refused as late; behind, a current trade is not refused as from the
// future, and the candle closes late, never early. Both close it once the
// brokers' clock has passed its end by the grace.
func TestShardClockSkew(t *testing.T) {
	for _, skew := range []time.Duration{30 * time.Second, -30 * time.Second} {
		t.Run(skew.String(), func(t *testing.T) {
			truth := time.Date(2026, 12, 2, 12, 0, 50, 0, time.UTC) // the brokers' clock
			clock := func() time.Time { return truth.Add(skew) }
			s := testShard(t, DefaultConfig(), clock)
			offset := int64(0)
			trade := func() {
				tr := schema.Trade{Symbol: []byte("BTCUSDT"), AggID: offset + 1, Price: 100, Quantity: 1,
					FirstID: offset, LastID: offset, Time: truth.UnixMilli()}
				give(s, []*kgo.Record{{Key: tr.Symbol, Value: schema.AppendBinanceJSON(nil, &tr), Offset: offset, Timestamp: truth}}, offset+1, -1)
				offset++
			}
			final := func() bool {
				d := s.drain(drainTick)
				for _, rec := range d.first {
					var k schema.Kline
					if rec.Topic != s.env.klinesTopic {
						continue // a dead letter
					}
					if err := schema.DecodeKline(rec.Value, &k); err != nil {
						t.Fatal(err)
					}
					if k.Period == "1m" && k.OpenTime == time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC).UnixMilli() && k.IsFinal {
						return true
					}
				}
				return false
			}
			trade() // 12:00:50, live
			truth = truth.Add(3 * time.Second)
			if final() {
				t.Fatal("the 12:00 candle closed at 12:00:53 by the brokers' clock")
			}
			trade() // 12:00:53: valid, within its candle
			if n := s.env.stats.Trades[engine.Folded].Load(); n != 2 {
				t.Fatalf("%d trades folded, want 2 (late %d, future %d)", n, s.env.stats.Trades[engine.Late].Load(),
					s.env.stats.Invalid[schema.ReasonFutureTime].Load())
			}
			truth = truth.Add(5 * time.Second) // 12:00:58
			if final() {
				t.Fatal("the 12:00 candle closed at 12:00:58 by the brokers' clock")
			}
			// Past its end by the grace (1 s), by the brokers' clock, and by
			// the member's own when it runs behind.
			truth = time.Date(2026, 12, 2, 12, 1, 2, 0, time.UTC)
			if skew < 0 {
				truth = truth.Add(-skew)
			}
			if !final() {
				t.Fatalf("the 12:00 candle still open at %s by the brokers' clock", truth.Format(time.TimeOnly))
			}
		})
	}
}

func TestBrokerClockBounds(t *testing.T) {
	for _, tc := range []struct {
		name            string
		ts, seenAt, now int64
		early, late     int64
	}{
		{"no record yet", 0, 0, 100_000, 100_000, 100_000},
		{"wall ahead by 30 s", 1_000_000, 1_030_000, 1_035_000, 1_005_000, 1_035_000},
		{"wall behind by 30 s", 1_000_000, 970_000, 975_000, 975_000, 1_005_000},
		{"record timestamps an hour old: not counted", 1_000_000, 4_600_000, 4_605_000, 4_605_000, 4_605_000},
	} {
		c := brokerClock{window: 60_000}
		c.see(tc.ts, tc.seenAt)
		if early, late := c.bounds(tc.now); early != tc.early || late != tc.late {
			t.Errorf("%s: bounds %d, %d; want %d, %d", tc.name, early, late, tc.early, tc.late)
		}
	}
}
