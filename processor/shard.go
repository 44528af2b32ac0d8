package processor

import (
	"slices"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/partition"
	"github.com/klagg/klagg/processor/engine"
	"github.com/klagg/klagg/schema"
)

// shard is one assigned trades partition: its goroutine owns agg.
type shard struct {
	partition int32
	agg       *engine.Aggregator
	r         *runtime
	in        chan shardMsg
	quit      chan struct{}
	done      chan struct{}
	// ledger is the at-least-once flusher's record of this shard, never
	// touched by the shard's goroutine; guarded by runtime.flushMu.
	ledger struct {
		committed int64 // next offset committed, -1 before the first commit
		broken    bool  // a delivery failed: no drain, no commit until restarted
	}

	dec   schema.TradeDecoder
	trade schema.Trade
	batch engine.Batch
	// Reused by drain for the klines it hands the flusher; see drain.
	slab []kgo.Record
	ptrs []*kgo.Record
	buf  []byte
	dlq  []*kgo.Record
	hw   int64
	last int64

	foldedSinceDrain int64     // records handled since the last drain
	fullDrainAt      time.Time // the last drain that delivered everything
}

type shardMsg struct {
	recs  []*kgo.Record
	hw    int64
	end   int64 // the fetch's last offset, a transaction marker's too
	drain chan<- drained
	all   bool // with drain: a full drain, even while catching up
}

func (r *runtime) newShard(p int32, agg *engine.Aggregator) *shard {
	s := &shard{
		partition: p, agg: agg, r: r,
		in: make(chan shardMsg, 8), quit: make(chan struct{}), done: make(chan struct{}),
		dec:  schema.TradeDecoder{Format: r.cfg.InputFormat, Validate: schema.ValidateConfig{MaxSkew: r.cfg.MaxSkew}},
		last: agg.Position(),
		// A shard catching up from its start may hold back its open
		// candles for a first catchUpHold.
		fullDrainAt: r.clock(),
	}
	s.ledger.committed = -1
	return s
}

func (s *shard) run() {
	defer close(s.done)
	for {
		select {
		case <-s.quit:
			return
		case m := <-s.in:
			if m.drain != nil {
				m.drain <- s.drain(m.all)
				continue
			}
			s.fold(m.recs, m.hw, m.end)
		}
	}
}

func (s *shard) fold(recs []*kgo.Record, hw, end int64) {
	now := s.r.clock().UnixMilli()
	// Counted here and added once per batch: shards share the Stats, and
	// an atomic add per trade would bounce its cache line between cores.
	var outcomes [numOutcomes]int64
	for _, rec := range recs {
		s.last = rec.Offset
		if err := s.dec.Decode(rec.Key, rec.Value, now, &s.trade); err != nil {
			reason := schema.ReasonOf(err)
			s.r.stats.Invalid[reason].Add(1)
			s.agg.MarkOffset(rec.Offset)
			s.deadLetter(rec, reason, err)
			continue
		}
		out := s.agg.Fold(&s.trade, rec.Offset, now)
		outcomes[out]++
		if reason := out.Reason(); reason != schema.ReasonNone {
			s.deadLetter(rec, reason, nil)
		}
	}
	for i, n := range outcomes {
		if n > 0 {
			s.r.stats.Trades[i].Add(n)
		}
	}
	// Read up to end: a transaction marker after the last trade is
	// consumed too (the commit goes past it; the lag counts it as read).
	if end > s.last {
		s.last = end
		s.agg.MarkOffset(end)
	}
	s.hw = hw
	s.foldedSinceDrain += int64(len(recs))
}

func (s *shard) deadLetter(rec *kgo.Record, reason schema.Reason, err error) {
	headers := []kgo.RecordHeader{
		{Key: HeaderReason, Value: []byte(reason.String())},
		{Key: HeaderSource, Value: []byte(rec.Topic + "/" + strconv.Itoa(int(rec.Partition)) + "/" + strconv.FormatInt(rec.Offset, 10))},
	}
	if err != nil {
		headers = append(headers, kgo.RecordHeader{Key: HeaderError, Value: []byte(err.Error())})
	}
	s.dlq = append(s.dlq, &kgo.Record{Topic: s.r.cfg.DLQTopic, Partition: partition.Target(s.partition),
		Key: rec.Key, Value: rec.Value, Headers: headers})
}

// catchUpHold bounds how long a shard that is catching up may flush only
// its final candles (see drain) before it delivers its open candles and
// state and commits again.
const catchUpHold = 5 * time.Second

// drain hands the flusher what changed. A shard that is catching up (more
// records wait to be read than it folded since its last drain) only
// delivers the candles that became final, for up to catchUpHold: during a
// replay the intermediate updates of open candles are superseded within
// moments, and not producing them makes the replay faster. Such a flush
// commits nothing; the next full one, at the latest when caught up or when
// catchUpHold ends, delivers the open candles and state and commits. all
// forces a full drain (revoke, shutdown).
func (s *shard) drain(all bool) drained {
	now := s.r.clock()
	nowMs := now.UnixMilli()
	lag := max(0, s.hw-(s.last+1))
	s.agg.AdvanceClock(nowMs, lag == 0)
	dirty := s.agg.DirtyLen()
	if !all && lag > s.foldedSinceDrain && now.Sub(s.fullDrainAt) < catchUpHold {
		s.agg.DrainFinals(&s.batch, nowMs)
		dirty = len(s.batch.Klines)
	} else {
		s.agg.Drain(&s.batch, nowMs)
		s.fullDrainAt = now
	}
	s.foldedSinceDrain = 0
	d := drained{partition: s.partition, position: s.batch.Position, dirty: dirty, lag: lag}
	p := partition.Target(s.partition)
	// One slab of records and one buffer of keys and values, reused by
	// every drain: the flusher is done with the previous drain's records
	// (all acknowledged or failed) before it asks for the next. At replay
	// speed, a fresh slab per flush made the garbage collector a tenth of
	// the CPU.
	n := len(s.batch.Klines)
	s.slab = slices.Grow(s.slab[:0], n)[:n]
	s.ptrs = slices.Grow(s.ptrs[:0], n+len(s.dlq))[:0]
	buf := s.buf[:0]
	for i := range s.batch.Klines {
		k := &s.batch.Klines[i]
		start := len(buf)
		buf = append(buf, k.Symbol...)
		mid := len(buf)
		buf = s.r.klineEnc.Append(buf, k)
		// If append moved buf, the earlier records keep the old array,
		// which stays valid until this drain's records are all delivered.
		s.slab[i] = kgo.Record{Topic: s.r.cfg.KlinesTopic, Partition: p,
			Key: buf[start:mid:mid], Value: buf[mid:len(buf):len(buf)]}
		s.ptrs = append(s.ptrs, &s.slab[i])
	}
	s.buf = buf
	s.ptrs = append(s.ptrs, s.dlq...)
	d.first = s.ptrs
	s.dlq = nil
	for i := range s.batch.States {
		st := &s.batch.States[i]
		st.Writer, st.WrittenAt = s.r.writer, nowMs
		v, err := s.r.stateCodec.Encode(st)
		if err != nil {
			// Our own struct: cannot fail unless the schema and the struct
			// disagree, which the tests rule out.
			s.r.log.Error("encode state", "symbol", st.Symbol, "err", err)
			continue
		}
		d.states = append(d.states, &kgo.Record{Topic: s.r.cfg.StateTopic, Partition: p, Key: []byte(st.Symbol), Value: v})
	}
	return d
}
