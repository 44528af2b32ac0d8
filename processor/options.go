package processor

import (
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr"

	"github.com/klagg/klagg/processor/engine"
)

// Dead-letter record headers.
const (
	HeaderReason = "klagg.reason" // schema.Reason.String()
	HeaderError  = "klagg.error"  // the decoder's message, when there is one
	HeaderSource = "klagg.source" // topic/partition/offset of the refused record
	HeaderTrade  = "klagg.trade"  // which trade (from 0) of a record of several was refused
)

// RunOption injects a dependency into Run.
type RunOption func(*runOptions)

type runOptions struct {
	log        *slog.Logger
	clock      func() time.Time
	kgoOpts    []kgo.Opt
	memberOpts []kgo.Opt
	srOpts     []sr.ClientOpt
	stats      *Stats
	observer   Observer
}

// WithRunLogger sets Run's logger; the default discards.
func WithRunLogger(l *slog.Logger) RunOption { return func(o *runOptions) { o.log = l } }

// WithClock replaces the wall clock (tests).
func WithClock(now func() time.Time) RunOption { return func(o *runOptions) { o.clock = now } }

// WithKgoOpts adds options to every Kafka client Run makes (TLS, SASL,
// dialers, metrics hooks).
func WithKgoOpts(opts ...kgo.Opt) RunOption {
	return func(o *runOptions) { o.kgoOpts = append(o.kgoOpts, opts...) }
}

// WithMemberKgoOpts adds options to the group member's own client only,
// such as metrics hooks that must not be registered twice.
func WithMemberKgoOpts(opts ...kgo.Opt) RunOption {
	return func(o *runOptions) { o.memberOpts = append(o.memberOpts, opts...) }
}

// WithRegistryOpts adds options to the schema registry client (basic
// auth, TLS).
func WithRegistryOpts(opts ...sr.ClientOpt) RunOption {
	return func(o *runOptions) { o.srOpts = append(o.srOpts, opts...) }
}

// Observer receives a member's events: the one way to observe it. Each is
// reported once, where it happens (the at-least-once flusher, the
// exactly-once loop, a restore, a shard's end), never per trade; methods
// must not block. Stats is an Observer that counts them, always attached;
// WithObserver adds another (metrics with timings, say).
type Observer interface {
	// Flushed ends a flush cycle, with the changed candles it drained
	// (0 for a cycle that found nothing to drain: it still shows the
	// member is alive).
	Flushed(took time.Duration, dirty int)
	Committed(took time.Duration)
	Restored(took time.Duration, partitions int)
	// Lag is the records of partition p not yet read, at a flush; Forget
	// says p is no longer owned.
	Lag(p int32, records int64)
	Forget(p int32)
}

// WithObserver adds an Observer beside the Stats.
func WithObserver(obs Observer) RunOption { return func(o *runOptions) { o.observer = obs } }

// observers reports each event to every one of them, in order.
type observers []Observer

func (os observers) Flushed(took time.Duration, dirty int) {
	for _, o := range os {
		o.Flushed(took, dirty)
	}
}

func (os observers) Committed(took time.Duration) {
	for _, o := range os {
		o.Committed(took)
	}
}

func (os observers) Restored(took time.Duration, partitions int) {
	for _, o := range os {
		o.Restored(took, partitions)
	}
}

func (os observers) Lag(p int32, records int64) {
	for _, o := range os {
		o.Lag(p, records)
	}
}

func (os observers) Forget(p int32) {
	for _, o := range os {
		o.Forget(p)
	}
}

// Flushed counts a flush cycle: LastFlush always (readiness), Flushes and
// DirtyFlushed when it drained changed candles.
func (s *Stats) Flushed(_ time.Duration, dirty int) {
	s.LastFlush.Store(time.Now().UnixMilli())
	if dirty > 0 {
		s.Flushes.Add(1)
		s.DirtyFlushed.Add(int64(dirty))
	}
}

// Committed counts a commit (a committed transaction, under exactly-once).
func (s *Stats) Committed(time.Duration) {
	s.Commits.Add(1)
	s.LastCommit.Store(time.Now().UnixMilli())
}

// Restored counts the partitions restored and keeps the restore's time.
func (s *Stats) Restored(took time.Duration, partitions int) {
	s.Restores.Add(int64(partitions))
	s.RestoreNanos.Store(int64(took))
}

// Lag is not counted: metrics keep it per partition.
func (s *Stats) Lag(int32, int64) {}

// Forget has nothing to forget.
func (s *Stats) Forget(int32) {}

// WithStats makes Run count into s, which the caller may read at any time.
func WithStats(s *Stats) RunOption { return func(o *runOptions) { o.stats = s } }

// Stats are the runtime's counters. All fields are safe to read concurrently.
type Stats struct {
	Trades       [numOutcomes]atomic.Int64 // by Outcome
	Invalid      [32]atomic.Int64          // by schema.Reason of decode/validation refusals
	Klines       atomic.Int64
	StateRecords atomic.Int64
	DeadLetters  atomic.Int64
	Flushes      atomic.Int64 // flush cycles that drained changed candles
	DirtyFlushed atomic.Int64 // dirty candles drained, summed over flushes
	Commits      atomic.Int64
	Rebalances   atomic.Int64
	Restores     atomic.Int64
	RestoreNanos atomic.Int64 // duration of the last restore
	Restarts     atomic.Int64 // shards restarted after a failed delivery, or rebuilt after an abort
	Aborts       atomic.Int64 // transactions aborted (exactly-once)
	// Backlogs counts the times a shard's engine filled its queue of
	// final candles (MaxPending) and stopped folding until drained: the
	// memory bound at work, as in a catch-up.
	Backlogs atomic.Int64
	// FlushesSkipped counts at-least-once flushes not made because the
	// member could not prove it was still in the group.
	FlushesSkipped atomic.Int64
	StaleStates    atomic.Int64 // state records passed over at restore: an older source offset than one already read
	RebuiltStates  atomic.Int64 // unreadable state records whose symbol was rebuilt from the trades
	LastCommit     atomic.Int64 // Unix ms (wall clock) of the last successful commit
	LastFlush      atomic.Int64 // Unix ms (wall clock) when the last flush cycle ended, whatever it found
	Assigned       atomic.Int64 // partitions currently owned
	// Rewinds counts fetches that began past the next trades offset a
	// shard expected (where it was restored, or after its last record):
	// the member set the fetch position back rather than skip records.
	Rewinds atomic.Int64
}

const numOutcomes = int(engine.OutOfRange) + 1
