package processor

import (
	"log/slog"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/partition"
	"github.com/klagg/klagg/processor/engine"
	"github.com/klagg/klagg/schema"
)

// shard is one assigned trades partition: its goroutine owns agg. What it
// needs from its member comes in env; it holds no pointer back.
type shard struct {
	partition int32
	agg       *engine.Aggregator
	env       shardEnv
	state     atomic.Uint32 // a shardState
	in        chan shardMsg
	quit      chan struct{}
	done      chan struct{}

	dec    schema.TradeDecoder
	trades schema.Batch // the trades of the record being folded
	batch  engine.Batch
	// Reused by drain for the klines it hands the flusher; see drain.
	slab []kgo.Record
	ptrs []*kgo.Record
	buf  []byte
	dlq  []*kgo.Record
	hw   int64
	last int64

	// next is the trades offset the poll goroutine expects to hand over
	// next (-1: not known), and gapAt the first offset of a fetch it set
	// the client's position back from; both are the poll goroutine's.
	next, gapAt int64

	clock brokerClock // the member's clock bounded by the brokers'

	foldedSinceDrain int64     // records handled since the last drain
	fullDrainAt      time.Time // the last drain that delivered everything

	// held are the fetches handed over and not yet folded, in order: while
	// the engine is backlogged (its queue of final candles is full, or the
	// watermark has yet to close more), the shard folds nothing and only
	// answers drains, each of which makes room.
	held []shardMsg
	// queued counts the records of held, for the poll loop's back-pressure
	// (written by the shard, read by the poll goroutine).
	queued atomic.Int64
	// backlogged is set while the engine waits for a drain: the flush
	// paths drain such a shard at once rather than at their next tick.
	backlogged atomic.Bool
	// wantFull: a drain that should have been full was not, because a
	// watermark step was half done; until the next full one, the shard
	// finishes steps rather than starting new ones.
	wantFull bool
	// draining: a full drain was handed over in part (DrainSome); until
	// its last piece nothing is folded or settled, since the pieces are
	// one snapshot.
	draining bool
}

type shardMsg struct {
	recs  []*kgo.Record
	hw    int64
	end   int64 // the fetch's last offset, a transaction marker's too
	drain chan<- drained
	kind  drainKind
}

// drainKind is what a drain request asks for.
type drainKind uint8

const (
	// drainTick (at-least-once, every interval): a full drain, or only
	// the final candles while catching up (see drain).
	drainTick drainKind = iota
	// drainAll (at-least-once revoke and shutdown): a full drain of what
	// was folded; records still held are not committed and come again.
	drainAll
	// drainTxn (exactly-once, ending a transaction): a full drain once
	// every record handed over is folded; until then only the final
	// candles, and the reply says partial so that the caller asks again.
	drainTxn
	// drainFinals (exactly-once, inside a transaction): the final candles
	// only, to make room in a backlogged engine.
	drainFinals
)

// shardEnv is what a shard is given by its member.
type shardEnv struct {
	clock      func() time.Time
	log        *slog.Logger
	stats      *Stats
	klineEnc   *schema.KlineEncoder
	stateCodec *schema.StateCodec
	decoder    schema.TradeDecoder // copied into each shard
	// writer names the member in the state records.
	writer                            string
	klinesTopic, stateTopic, dlqTopic string
	maxPending                        int   // a full drain's pieces, as the engine's own bound
	liveWindow                        int64 // ms: how far the brokers' clock may be from the wall clock and count
	// notify, when set, is called by the shard's goroutine when its engine
	// becomes backlogged (true) or it folded held records (false).
	notify func(backlogged bool)
}

// shardState is where a shard is in its life. Every shard goes
// restoring → running → stopped; at-least-once may mark a running shard
// broken, and then replaces it by a new one.
type shardState uint32

const (
	// shardRestoring: built on its restored engine (restore makes it once
	// the state topic is read); no goroutine yet.
	shardRestoring shardState = iota
	// shardRunning: its goroutine folds what it is given and answers drains.
	shardRunning
	// shardBroken (at-least-once): a delivery of its records failed, so
	// it is neither drained nor committed again; it waits to be rebuilt
	// from its last commit.
	shardBroken
	// shardStopped: quit closed and its goroutine done.
	shardStopped
)

var shardStateNames = [...]string{"restoring", "running", "broken", "stopped"}

func (st shardState) String() string { return shardStateNames[st] }

func newShard(p int32, agg *engine.Aggregator, env shardEnv) *shard {
	return &shard{
		partition: p, agg: agg, env: env, dec: env.decoder, clock: brokerClock{window: env.liveWindow},
		in: make(chan shardMsg, 8), quit: make(chan struct{}), done: make(chan struct{}),
		next: -1, gapAt: -1,
	}
}

// State is where the shard is in its life.
func (s *shard) State() shardState { return shardState(s.state.Load()) }

// start runs the shard's goroutine on its restored engine.
func (s *shard) start() {
	s.begin()
	go s.run()
}

// begin makes a restored shard running; its goroutine (or a test) drives it.
func (s *shard) begin() {
	s.last = s.agg.Position()
	// A shard catching up from its start may hold back its open candles
	// for a first catchUpHold.
	s.fullDrainAt = s.env.clock()
	s.state.Store(uint32(shardRunning))
}

// markBroken takes a running shard out of flushes until it is replaced.
func (s *shard) markBroken() {
	s.state.CompareAndSwap(uint32(shardRunning), uint32(shardBroken))
}

// stop closes quit and waits on done.
func (s *shard) stop() {
	if s.State() == shardStopped {
		return
	}
	if s.State() != shardRestoring {
		close(s.quit)
		<-s.done
	}
	s.state.Store(uint32(shardStopped))
}

func (s *shard) run() {
	defer close(s.done)
	s.work() // a restore may leave the engine backlogged
	for {
		select {
		case <-s.quit:
			return
		case m := <-s.in:
			if m.drain == nil {
				s.held = append(s.held, m)
				s.work()
				continue
			}
			m.drain <- s.drain(m.kind)
			if s.draining {
				continue
			}
			if s.wantFull && len(s.held) == 0 {
				s.agg.SettleStep()
			} else {
				s.agg.Settle()
			}
			s.work()
		}
	}
}

// work folds the held fetches until they are done or the engine is
// backlogged.
func (s *shard) work() {
	folded := false
	for len(s.held) > 0 && !s.draining && !s.agg.Backlogged() {
		m := &s.held[0]
		n := s.fold(m.recs)
		m.recs = m.recs[n:]
		s.queued.Add(-int64(n))
		folded = folded || n > 0
		if len(m.recs) > 0 {
			break // backlogged
		}
		// Read up to end: a transaction marker after the last trade is
		// consumed too (the commit goes past it; the lag counts it as read).
		if m.end > s.last {
			s.last = m.end
			s.agg.MarkOffset(m.end)
		}
		s.hw = m.hw
		s.held[0] = shardMsg{}
		s.held = s.held[1:]
	}
	if len(s.held) == 0 {
		s.held = s.held[:0:0] // let go of the array and the fetches it pinned
	}
	b := s.agg.Backlogged()
	if b && !s.backlogged.Load() {
		s.env.stats.Backlogs.Add(1)
	}
	s.backlogged.Store(b)
	if s.env.notify != nil && (b || folded) {
		s.env.notify(b)
	}
}

// fold folds recs in order until the engine is backlogged, and returns how
// many it took.
func (s *shard) fold(recs []*kgo.Record) int {
	wall := s.env.clock().UnixMilli()
	if len(recs) > 0 {
		s.clock.see(recs[len(recs)-1].Timestamp.UnixMilli(), wall)
	}
	// See brokerClock: liveness by the earlier clock, skew by the later.
	now, skewNow := s.clock.bounds(wall)
	// Counted here and added once per batch: shards share the Stats, and
	// an atomic add per trade would bounce its cache line between cores.
	var outcomes [numOutcomes]int64
	n := 0
	for _, rec := range recs {
		if s.agg.Backlogged() {
			break
		}
		n++
		s.last = rec.Offset
		if err := s.dec.DecodeBatch(rec.Key, rec.Value, skewNow, &s.trades); err != nil {
			s.refuse(rec, -1, err)
			continue
		}
		if len(s.trades.Trades) == 0 {
			s.agg.MarkOffset(rec.Offset) // a message without trades (an empty snapshot)
		}
		// A record's trades are folded together: a drain comes between
		// records only, so a state's offset covers all of a record.
		for i := range s.trades.Trades {
			if err := s.trades.Errs[i]; err != nil {
				s.refuse(rec, s.index(i), err)
				continue
			}
			out := s.agg.Fold(&s.trades.Trades[i], rec.Offset, now)
			outcomes[out]++
			if reason := out.Reason(); reason != schema.ReasonNone {
				s.deadLetter(rec, s.index(i), reason, nil)
			}
		}
	}
	for i, c := range outcomes {
		if c > 0 {
			s.env.stats.Trades[i].Add(c)
		}
	}
	s.foldedSinceDrain += int64(n)
	return n
}

// index is the dead-letter index of the i-th trade of the record being
// folded: -1 (none) when the record holds one trade.
func (s *shard) index(i int) int {
	if len(s.trades.Trades) == 1 {
		return -1
	}
	return i
}

// refuse counts and dead-letters a record (trade -1) or one of its trades.
func (s *shard) refuse(rec *kgo.Record, trade int, err error) {
	reason := schema.ReasonOf(err)
	s.env.stats.Invalid[reason].Add(1)
	s.agg.MarkOffset(rec.Offset)
	s.deadLetter(rec, trade, reason, err)
}

// deadLetter queues rec for the dead-letter topic; trade >= 0 names which
// trade of a record of several was refused (header klagg.trade).
func (s *shard) deadLetter(rec *kgo.Record, trade int, reason schema.Reason, err error) {
	headers := []kgo.RecordHeader{
		{Key: HeaderReason, Value: []byte(reason.String())},
		{Key: HeaderSource, Value: []byte(rec.Topic + "/" + strconv.Itoa(int(rec.Partition)) + "/" + strconv.FormatInt(rec.Offset, 10))},
	}
	if trade >= 0 {
		headers = append(headers, kgo.RecordHeader{Key: HeaderTrade, Value: strconv.AppendInt(nil, int64(trade), 10)})
	}
	if err != nil {
		headers = append(headers, kgo.RecordHeader{Key: HeaderError, Value: []byte(err.Error())})
	}
	s.dlq = append(s.dlq, &kgo.Record{Topic: s.env.dlqTopic, Partition: partition.Target(s.partition),
		Key: rec.Key, Value: rec.Value, Headers: headers})
}

// catchUpHold bounds how long a shard that is catching up may flush only
// its final candles (see drain) before it delivers its open candles and
// state and commits again.
const catchUpHold = 5 * time.Second

// finalsOnly decides whether a drain of kind hands over only the final
// candles, and keeps wantFull: whether a full drain is owed once the
// watermark step in progress is done.
func (s *shard) finalsOnly(kind drainKind, lag int64, now time.Time) bool {
	if s.draining {
		return false // the rest of a full drain
	}
	only := false
	switch kind {
	case drainTick:
		only = lag > s.foldedSinceDrain && now.Sub(s.fullDrainAt) < catchUpHold
	case drainTxn, drainFinals:
		only = kind == drainFinals || len(s.held) > 0
	}
	if !only && kind != drainAll && !s.agg.Consistent() {
		// State only at whole watermark steps; drainAll (revoke,
		// shutdown) lets Drain finish the step instead.
		only, s.wantFull = true, true
	}
	if !only {
		s.wantFull = false
	}
	return only
}

// drain hands the flusher what changed. At a tick, a shard that is
// catching up (more records wait to be read than it folded since its last
// drain) only delivers the candles that became final, for up to
// catchUpHold: during a replay the intermediate updates of open candles are
// superseded within moments, and not producing them makes the replay
// faster. Such a flush commits nothing; the next full one, at the latest
// when caught up or when catchUpHold ends, delivers the open candles and
// state and commits. See drainKind for the others.
func (s *shard) drain(kind drainKind) drained {
	now := s.env.clock()
	nowMs := now.UnixMilli()
	lag := max(0, s.hw-(s.last+1)) + s.queued.Load()
	if s.draining && kind == drainFinals {
		// The pieces of a full drain belong together, state included,
		// and a finals-only delivery would drop their state: nothing now.
		return drained{partition: s.partition, position: -1, lag: lag}
	}
	if !s.draining { // nothing may move between the pieces of one snapshot
		early, _ := s.clock.bounds(nowMs) // see brokerClock
		s.agg.AdvanceClock(early, lag == 0)
	}
	finalsOnly := s.finalsOnly(kind, lag, now)
	dirty := s.agg.DirtyLen()
	partial := finalsOnly && kind == drainTxn
	if finalsOnly {
		s.agg.DrainFinals(&s.batch, nowMs)
		dirty = len(s.batch.Klines)
	} else {
		// In pieces of the engine's own bound: during a catch-up nearly
		// every slot changed between two full drains.
		done := s.agg.DrainSome(&s.batch, nowMs, s.env.maxPending)
		s.draining, partial = !done, !done
		if done {
			s.fullDrainAt = now
		}
	}
	s.foldedSinceDrain = 0
	d := drained{partition: s.partition, position: s.batch.Position, dirty: dirty, lag: lag, partial: partial}
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
		buf = s.env.klineEnc.Append(buf, k)
		// If append moved buf, the earlier records keep the old array,
		// which stays valid until this drain's records are all delivered.
		s.slab[i] = kgo.Record{Topic: s.env.klinesTopic, Partition: p,
			Key: buf[start:mid:mid], Value: buf[mid:len(buf):len(buf)]}
		s.ptrs = append(s.ptrs, &s.slab[i])
	}
	s.buf = buf
	s.ptrs = append(s.ptrs, s.dlq...)
	d.first = s.ptrs
	s.dlq = nil
	for i := range s.batch.States {
		st := &s.batch.States[i]
		st.Writer, st.WrittenAt = s.env.writer, nowMs
		v, err := s.env.stateCodec.Encode(st)
		if err != nil {
			// Our own struct: cannot fail unless the schema and the struct
			// disagree, which the tests rule out.
			s.env.log.Error("encode state", "symbol", st.Symbol, "err", err)
			continue
		}
		d.states = append(d.states, &kgo.Record{Topic: s.env.stateTopic, Partition: p, Key: []byte(st.Symbol), Value: v})
	}
	return d
}
