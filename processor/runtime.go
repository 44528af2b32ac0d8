package processor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sr"

	"github.com/klagg/klagg/partition"
	"github.com/klagg/klagg/processor/engine"
	"github.com/klagg/klagg/schema"
)

// Dead-letter record headers.
const (
	HeaderReason = "klagg.reason" // schema.Reason.String()
	HeaderError  = "klagg.error"  // the decoder's message, when there is one
	HeaderSource = "klagg.source" // topic/partition/offset of the refused record
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

// Observer receives the runtime's timings and per-partition lag, for
// metrics. Its methods are called from the flusher and the rebalance
// callbacks, never per trade, and must not block.
type Observer interface {
	Flushed(took time.Duration, dirty int)
	Committed(took time.Duration)
	Restored(took time.Duration, partitions int)
	// Lag is the records of partition p not yet read, at a flush; Forget
	// says p is no longer owned.
	Lag(p int32, records int64)
	Forget(p int32)
}

// WithObserver sets the Observer; the default ignores everything.
func WithObserver(obs Observer) RunOption { return func(o *runOptions) { o.observer = obs } }

type nopObserver struct{}

func (nopObserver) Flushed(time.Duration, int)  {}
func (nopObserver) Committed(time.Duration)     {}
func (nopObserver) Restored(time.Duration, int) {}
func (nopObserver) Lag(int32, int64)            {}
func (nopObserver) Forget(int32)                {}

// WithStats makes Run count into s, which the caller may read at any time.
func WithStats(s *Stats) RunOption { return func(o *runOptions) { o.stats = s } }

// Stats are the runtime's counters. All fields are safe to read concurrently.
type Stats struct {
	Trades       [numOutcomes]atomic.Int64 // by Outcome
	Invalid      [32]atomic.Int64          // by schema.Reason of decode/validation refusals
	Klines       atomic.Int64
	StateRecords atomic.Int64
	DeadLetters  atomic.Int64
	Flushes      atomic.Int64
	DirtyFlushed atomic.Int64 // dirty candles drained, summed over flushes
	Commits      atomic.Int64
	Rebalances   atomic.Int64
	Restores     atomic.Int64
	RestoreNanos atomic.Int64 // duration of the last restore
	Restarts     atomic.Int64 // shards restarted after a failed delivery
	LastCommit   atomic.Int64 // Unix ms of the last successful commit
	LastFlush    atomic.Int64 // Unix ms when the last flush cycle ended, whatever it found
	Assigned     atomic.Int64 // partitions currently owned
}

const numOutcomes = int(engine.Late) + 1

// ErrTopicMissing is returned by Run when the trades topic does not exist.
var ErrTopicMissing = errors.New("trades topic does not exist")

// Run runs one member of the klagg consumer group until ctx is done, then
// flushes, commits, leaves the group and returns nil. It returns an error
// only when the member cannot start (bad configuration, unreachable
// brokers, mismatched partition counts, a registry that refuses the
// schema) or the group fails for good.
func Run(ctx context.Context, cfg Config, opts ...RunOption) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	err := run(ctx, cfg, opts...)
	if err != nil && ctx.Err() != nil {
		// Told to stop while starting: that is a clean stop, not a failure.
		return nil
	}
	return err
}

func run(ctx context.Context, cfg Config, opts ...RunOption) error {
	o := runOptions{log: slog.New(slog.DiscardHandler), clock: time.Now, stats: &Stats{}, observer: nopObserver{}}
	for _, fn := range opts {
		fn(&o)
	}
	r := &runtime{cfg: cfg, log: o.log, clock: o.clock, stats: o.stats, obs: o.observer, srOpt: o.srOpts, shards: map[int32]*shard{}}
	r.kick = make(chan struct{}, 1)
	r.restarts = map[int32]bool{}

	base := append([]kgo.Opt{kgo.SeedBrokers(cfg.Brokers...)}, o.kgoOpts...)
	admCl, err := kgo.NewClient(base...)
	if err != nil {
		return fmt.Errorf("processor: kafka client: %w", err)
	}
	adm := kadm.NewClient(admCl)
	defer adm.Close()
	// The registry first: when it refuses, klagg has created nothing.
	if err := r.setupEncoders(ctx); err != nil {
		return err
	}
	partitions, err := r.ensureTopics(ctx, adm)
	if err != nil {
		return err
	}
	// Clipped, so that appending to it (restore clients) always copies and
	// never writes into an array another goroutine is appending to.
	r.base = slices.Clip(base)

	codec, err := compressionCodec(cfg.Compression)
	if err != nil {
		return err
	}
	cl, err := kgo.NewClient(slices.Concat(base, []kgo.Opt{
		kgo.ProducerBatchCompression(codec),
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.TradesTopic),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.SessionTimeout(cfg.SessionTimeout),
		kgo.OnPartitionsAssigned(r.onAssigned),
		kgo.OnPartitionsRevoked(r.onRevoked),
		kgo.OnPartitionsLost(r.onLost),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.RecordDeliveryTimeout(cfg.DeliveryTimeout),
		kgo.MaxBufferedRecords(100_000),
		kgo.ProducerLinger(5 * time.Millisecond),
	}, o.memberOpts)...)
	if err != nil {
		return fmt.Errorf("processor: kafka client: %w", err)
	}
	r.cl = cl
	r.log.Info("member starting", "group", cfg.Group, "trades", cfg.TradesTopic, "partitions", partitions,
		"periods", len(cfg.Engine.Periods), "flush_interval", cfg.FlushInterval)

	flushDone := make(chan struct{})
	flushCtx, stopFlusher := context.WithCancel(context.Background())
	go func() {
		defer close(flushDone)
		r.flushLoop(flushCtx)
	}()

	pollErr := r.pollLoop(ctx)

	stopFlusher()
	<-flushDone
	// Final flush of everything, then leave: Close revokes (our callback
	// flushes again, finding nothing) and leaves the group.
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.DeliveryTimeout)
	defer cancel()
	r.flush(shutdownCtx, cl, nil, true)
	cl.Close()
	r.stopAll()
	r.log.Info("member stopped")
	return pollErr
}

type runtime struct {
	cfg   Config
	log   *slog.Logger
	clock func() time.Time
	stats *Stats
	obs   Observer
	base  []kgo.Opt
	srOpt []sr.ClientOpt
	cl    *kgo.Client

	klineEnc   *schema.KlineEncoder
	stateCodec *schema.StateCodec

	// shardsMu guards the registry (not the shards' state, which only their
	// goroutines touch). The poll loop and the rebalance callbacks change it;
	// the flusher reads it.
	shardsMu sync.Mutex
	shards   map[int32]*shard

	// flushMu serializes flushes: the periodic one, the one a revoke needs,
	// and the final one.
	flushMu sync.Mutex

	unflushed atomic.Int64 // trades dispatched since the last completed flush
	flushed   chan struct{}
	flushedMu sync.Mutex

	// restarts holds the partitions whose shard must be rebuilt; the
	// flusher adds, the poll loop takes. A set: it can neither block the
	// flusher nor lose a request.
	restartMu sync.Mutex
	restarts  map[int32]bool
	// kick asks the flusher to flush now instead of at its next tick.
	kick chan struct{}

	// fatal is set when the member cannot go on (a shard it owns cannot be
	// restored); the poll loop returns it and Run stops with it.
	fatal atomic.Pointer[error]
}

func (r *runtime) fail(err error) {
	r.fatal.CompareAndSwap(nil, &err)
}

// ensureTopics checks the trades topic and creates the others with its
// partition count; a count that differs is an error naming both.
func (r *runtime) ensureTopics(ctx context.Context, adm *kadm.Client) (int32, error) {
	c := r.cfg
	details, err := adm.ListTopics(ctx, c.TradesTopic, c.KlinesTopic, c.StateTopic, c.DLQTopic)
	if err != nil {
		return 0, fmt.Errorf("processor: list topics on %v: %w (are the brokers reachable?)", c.Brokers, err)
	}
	trades, ok := details[c.TradesTopic]
	if !ok || errors.Is(trades.Err, kerr.UnknownTopicOrPartition) {
		return 0, fmt.Errorf("processor: %w: %q (create it, keyed by symbol, or point --trades-topic at yours)", ErrTopicMissing, c.TradesTopic)
	}
	if trades.Err != nil {
		return 0, fmt.Errorf("processor: describe %q: %w", c.TradesTopic, trades.Err)
	}
	n := int32(len(trades.Partitions))
	counts := map[string]int32{}
	for _, spec := range []struct {
		topic   string
		configs map[string]*string
	}{
		{c.KlinesTopic, nil},
		{c.StateTopic, map[string]*string{"cleanup.policy": kadm.StringPtr("compact")}},
		{c.DLQTopic, nil},
	} {
		if d, ok := details[spec.topic]; ok && d.Err == nil {
			counts[spec.topic] = int32(len(d.Partitions)) // 0 while another member creates it
			continue
		}
		resp, err := adm.CreateTopic(ctx, n, c.ReplicationFactor, spec.configs, spec.topic)
		if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			return 0, fmt.Errorf("processor: create topic %q: %w", spec.topic, err)
		}
		if err == nil {
			r.log.Info("created topic", "topic", spec.topic, "partitions", n, "compacted", spec.configs != nil)
			counts[spec.topic] = resp.NumPartitions
			if resp.NumPartitions <= 0 {
				counts[spec.topic] = n
			}
			continue
		}
		counts[spec.topic] = 0 // created concurrently by another member: described below
	}
	// A topic another member has just created may be listed before its
	// partitions are: wait for the metadata to settle before comparing.
	for deadline := time.Now().Add(15 * time.Second); ; {
		var pending []string
		for topic, got := range counts {
			if got == 0 {
				pending = append(pending, topic)
			}
		}
		if len(pending) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("processor: topics %v still show no partitions after 15s", pending)
		}
		d, err := adm.ListTopics(ctx, pending...)
		if err != nil {
			// Transient until the deadline: the broker may be restarting.
			r.log.Warn("describe topics", "topics", pending, "err", err)
		}
		for _, topic := range pending {
			counts[topic] = int32(len(d[topic].Partitions))
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := partition.CheckPartitionCounts(c.TradesTopic, n, counts); err != nil {
		return 0, fmt.Errorf("processor: %w", err)
	}
	return n, nil
}

func (r *runtime) setupEncoders(ctx context.Context) error {
	var err error
	if r.stateCodec, err = schema.NewStateCodec(); err != nil {
		return err
	}
	if r.cfg.SchemaRegistry == "" {
		r.klineEnc, err = schema.NewKlineEncoder(schema.FramingSingleObject, 0)
		return err
	}
	rcl, err := sr.NewClient(append([]sr.ClientOpt{sr.URLs(r.cfg.SchemaRegistry)}, r.srOpt...)...)
	if err != nil {
		return fmt.Errorf("processor: schema registry %s: %w", r.cfg.SchemaRegistry, err)
	}
	subject := r.cfg.KlinesTopic + "-value"
	ss, err := rcl.CreateSchema(ctx, subject, sr.Schema{Schema: schema.KlineSchemaText, Type: sr.TypeAvro})
	if err != nil {
		return fmt.Errorf("processor: register the kline schema under %q at %s: %w", subject, r.cfg.SchemaRegistry, err)
	}
	r.log.Info("kline schema registered", "subject", subject, "id", ss.ID)
	r.klineEnc, err = schema.NewKlineEncoder(schema.FramingConfluent, ss.ID)
	return err
}

// pollLoop fetches trades and hands each partition's records to its shard.
// It is the only goroutine that polls; with BlockRebalanceOnPoll the
// rebalance callbacks run only between its iterations.
func (r *runtime) pollLoop(ctx context.Context) error {
	behind := false
	for {
		if ctx.Err() != nil {
			return nil
		}
		if err := r.fatal.Load(); err != nil {
			return *err
		}
		r.handleRestarts(ctx)
		// Back-pressure: wait for a flush rather than read further ahead.
		for r.unflushed.Load() >= int64(r.cfg.MaxUnflushed) {
			select {
			case <-ctx.Done():
				return nil
			case <-r.nextFlush():
			}
		}
		// Bounded, so that a restart requested by the flusher is handled
		// even when no trades arrive.
		pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		fetches := r.cl.PollRecords(pctx, 10_000)
		cancel()
		if fetches.IsClientClosed() {
			return nil
		}
		var fatal error
		fetches.EachError(func(topic string, p int32, err error) {
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return
			}
			r.log.Warn("fetch error", "topic", topic, "partition", p, "err", err)
			if errors.Is(err, kerr.GroupAuthorizationFailed) {
				fatal = err
			}
		})
		if fatal != nil {
			r.cl.AllowRebalance()
			return fmt.Errorf("processor: consumer group: %w", fatal)
		}
		wasBehind := behind
		behind = false
		fetches.EachPartition(func(ftp kgo.FetchTopicPartition) {
			if len(ftp.Records) == 0 {
				return
			}
			if ftp.Records[len(ftp.Records)-1].Offset+1 < ftp.HighWatermark {
				behind = true
			}
			r.shardsMu.Lock()
			s := r.shards[ftp.Partition]
			r.shardsMu.Unlock()
			if s == nil {
				return // not ours any more; the new owner reads them
			}
			r.unflushed.Add(int64(len(ftp.Records)))
			select {
			case s.in <- shardMsg{recs: ftp.Records, hw: ftp.HighWatermark}:
			case <-s.done:
			}
		})
		r.cl.AllowRebalance()
		if wasBehind && !behind && len(fetches.Records()) > 0 {
			// Just caught up (the end of a replay or of a backlog): deliver
			// and commit now rather than at the next tick. A live stream
			// stays caught up, so its flushes keep to the interval.
			select {
			case r.kick <- struct{}{}:
			default:
			}
		}
	}
}

func (r *runtime) nextFlush() <-chan struct{} {
	r.flushedMu.Lock()
	defer r.flushedMu.Unlock()
	if r.flushed == nil {
		r.flushed = make(chan struct{})
	}
	return r.flushed
}

func (r *runtime) signalFlushed() {
	r.flushedMu.Lock()
	defer r.flushedMu.Unlock()
	if r.flushed != nil {
		close(r.flushed)
		r.flushed = nil
	}
}

func (r *runtime) flushLoop(ctx context.Context) {
	t := time.NewTicker(r.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.kick:
		}
		// A flush runs to its end under its own deadline: cancelling it
		// half-way would fail deliveries that were about to succeed.
		fctx, cancel := context.WithTimeout(context.Background(), r.cfg.DeliveryTimeout)
		r.flush(fctx, r.cl, nil, false)
		cancel()
	}
}

// drained is a shard's answer to a drain: records to deliver and the trades
// offset they reflect.
type drained struct {
	partition int32
	first     []*kgo.Record // klines and dead letters
	states    []*kgo.Record
	position  int64
	dirty     int
	lag       int64 // records of the partition not yet read
	shard     *shard
}

// flush drains the given shards (all when only is nil), delivers their
// klines and dead letters, then their state records, and commits each
// shard's position once all of its records are acknowledged. all asks for
// full drains even of shards that are catching up (see shard.drain).
func (r *runtime) flush(ctx context.Context, cl *kgo.Client, only []int32, all bool) {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	flushStart := r.clock()
	defer func() { r.stats.LastFlush.Store(r.clock().UnixMilli()) }()
	r.shardsMu.Lock()
	var targets []*shard
	if only == nil {
		for _, s := range r.shards {
			targets = append(targets, s)
		}
	} else {
		for _, p := range only {
			if s := r.shards[p]; s != nil {
				targets = append(targets, s)
			}
		}
	}
	r.shardsMu.Unlock()
	sort.Slice(targets, func(i, j int) bool { return targets[i].partition < targets[j].partition })
	// A shard whose delivery failed must not drain or commit again: its lost
	// records would be skipped. It waits, untouched, for its restart.
	targets = slices.DeleteFunc(targets, func(s *shard) bool { return s.broken })

	var results []drained
	for _, s := range targets {
		reply := make(chan drained, 1)
		select {
		case s.in <- shardMsg{drain: reply, all: all}:
		case <-s.done:
			continue
		}
		select {
		case d := <-reply:
			d.shard = s
			results = append(results, d)
		case <-s.done:
		}
	}
	if only == nil {
		// Every shard drained: the poll loop may read ahead again.
		r.unflushed.Store(0)
		r.signalFlushed()
	}
	if len(results) == 0 {
		return
	}
	r.stats.Flushes.Add(1)

	failed := map[int32]error{}
	r.produceAll(ctx, cl, results, func(d *drained) []*kgo.Record { return d.first }, failed)
	r.produceAll(ctx, cl, results, func(d *drained) []*kgo.Record { return d.states }, failed)

	offsets := map[int32]kgo.EpochOffset{}
	dirty := 0
	for i := range results {
		d := &results[i]
		dirty += d.dirty
		r.stats.DirtyFlushed.Add(int64(d.dirty))
		r.obs.Lag(d.partition, d.lag)
		if err, bad := failed[d.partition]; bad {
			r.log.Error("delivery failed; restarting the shard from its last commit", "partition", d.partition, "err", err)
			d.shard.broken = true
			r.restartMu.Lock()
			r.restarts[d.partition] = true
			r.restartMu.Unlock()
			continue
		}
		if d.position >= 0 && d.position+1 > d.shard.committed {
			offsets[d.partition] = kgo.EpochOffset{Epoch: -1, Offset: d.position + 1}
		}
	}
	r.obs.Flushed(r.clock().Sub(flushStart), dirty)
	if len(offsets) == 0 {
		return
	}
	commitStart := r.clock()
	var commitErr error
	cl.CommitOffsetsSync(ctx, map[string]map[int32]kgo.EpochOffset{r.cfg.TradesTopic: offsets},
		func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
			if err != nil {
				commitErr = err
				return
			}
			for _, t := range resp.Topics {
				for _, p := range t.Partitions {
					if perr := kerr.ErrorForCode(p.ErrorCode); perr != nil {
						commitErr = fmt.Errorf("partition %d: %w", p.Partition, perr)
					}
				}
			}
		})
	if commitErr != nil {
		// The group moved on (rebalance, fencing): the next owner replays
		// from the previous commit and its restored state skips what was
		// already counted.
		r.log.Warn("commit failed", "err", commitErr)
		return
	}
	for i := range results {
		if off, ok := offsets[results[i].partition]; ok {
			results[i].shard.committed = off.Offset
		}
	}
	r.stats.Commits.Add(1)
	r.stats.LastCommit.Store(r.clock().UnixMilli())
	r.obs.Committed(r.clock().Sub(commitStart))
}

// produceAll produces pick(d) of every result not yet failed and waits for
// every acknowledgement, recording failures by partition.
func (r *runtime) produceAll(ctx context.Context, cl *kgo.Client, results []drained, pick func(*drained) []*kgo.Record, failed map[int32]error) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := range results {
		d := &results[i]
		if failed[d.partition] != nil {
			continue
		}
		// One promise per shard, not a closure per record.
		promise := func(_ *kgo.Record, err error) {
			defer wg.Done()
			if err != nil {
				mu.Lock()
				if failed[d.partition] == nil {
					failed[d.partition] = err
				}
				mu.Unlock()
			}
		}
		for _, rec := range pick(d) {
			wg.Add(1)
			cl.Produce(ctx, rec, promise)
		}
	}
	wg.Wait()
	for i := range results {
		d := &results[i]
		if failed[d.partition] != nil {
			continue
		}
		for _, rec := range pick(d) {
			switch rec.Topic {
			case r.cfg.KlinesTopic:
				r.stats.Klines.Add(1)
			case r.cfg.StateTopic:
				r.stats.StateRecords.Add(1)
			case r.cfg.DLQTopic:
				r.stats.DeadLetters.Add(1)
			}
		}
	}
}

func (r *runtime) onAssigned(ctx context.Context, cl *kgo.Client, assigned map[string][]int32) {
	ps := assigned[r.cfg.TradesTopic]
	if len(ps) == 0 {
		return
	}
	r.stats.Rebalances.Add(1)
	start := r.clock()
	// cl, not r.cl: the group may assign before Run has stored the client.
	shards, err := r.restore(ctx, cl, ps)
	if err != nil {
		// Without its state a shard would count trades twice: stop the
		// member, so that another one (or a restart) takes over.
		r.fail(err)
		return
	}
	r.shardsMu.Lock()
	for _, s := range shards {
		r.shards[s.partition] = s
		go s.run()
	}
	r.stats.Assigned.Store(int64(len(r.shards)))
	r.shardsMu.Unlock()
	r.log.Info("partitions assigned", "partitions", ps, "restore", r.clock().Sub(start).Round(time.Millisecond))
}

func (r *runtime) onRevoked(ctx context.Context, cl *kgo.Client, revoked map[string][]int32) {
	ps := revoked[r.cfg.TradesTopic]
	if len(ps) == 0 {
		return
	}
	r.stats.Rebalances.Add(1)
	r.flush(ctx, cl, ps, true)
	r.drop(ps)
	r.log.Info("partitions revoked", "partitions", ps)
}

func (r *runtime) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	ps := lost[r.cfg.TradesTopic]
	r.stats.Rebalances.Add(1)
	r.drop(ps)
	r.log.Warn("partitions lost; dropped without committing", "partitions", ps)
}

// drop stops the shards of ps: close quit, wait on done.
func (r *runtime) drop(ps []int32) {
	r.shardsMu.Lock()
	var stopping []*shard
	for _, p := range ps {
		if s := r.shards[p]; s != nil {
			stopping = append(stopping, s)
			delete(r.shards, p)
		}
	}
	r.stats.Assigned.Store(int64(len(r.shards)))
	r.shardsMu.Unlock()
	for _, s := range stopping {
		close(s.quit)
		<-s.done
		r.obs.Forget(s.partition)
	}
}

func (r *runtime) stopAll() {
	r.shardsMu.Lock()
	var ps []int32
	for p := range r.shards {
		ps = append(ps, p)
	}
	r.shardsMu.Unlock()
	r.drop(ps)
}

// handleRestarts rebuilds shards whose delivery failed: drop the shard,
// restore it from the state topic and rewind its trades to the last commit.
// It runs on the poll goroutine, outside any rebalance.
func (r *runtime) handleRestarts(ctx context.Context) {
	r.restartMu.Lock()
	pending := r.restarts
	r.restarts = map[int32]bool{}
	r.restartMu.Unlock()
	for p := range pending {
		r.shardsMu.Lock()
		old := r.shards[p]
		r.shardsMu.Unlock()
		if old == nil {
			continue
		}
		committed := old.committed
		if committed < 0 {
			// Nothing committed by this process yet: resume from the
			// group's commit, made by an earlier owner, if there is one.
			if offs, err := kadm.NewClient(r.cl).FetchOffsets(ctx, r.cfg.Group); err == nil {
				if o, ok := offs.Lookup(r.cfg.TradesTopic, p); ok && o.Err == nil {
					committed = o.At
				}
			}
		}
		r.drop([]int32{p})
		shards, err := r.restore(ctx, r.cl, []int32{p})
		if err != nil {
			r.fail(err)
			return
		}
		s := shards[0]
		s.committed = committed
		r.cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{r.cfg.TradesTopic: {p: {Epoch: -1, Offset: max(committed, 0)}}})
		r.shardsMu.Lock()
		r.shards[p] = s
		r.shardsMu.Unlock()
		go s.run()
		r.stats.Restarts.Add(1)
		r.log.Warn("shard restarted from its last commit", "partition", p, "offset", committed)
	}
}

// restore rebuilds the shards of ps from the state topic: every record from
// the start to the end of partition p, the newest per symbol.
func (r *runtime) restore(ctx context.Context, cl *kgo.Client, ps []int32) ([]*shard, error) {
	start := r.clock()
	adm := kadm.NewClient(cl)
	ends, err := adm.ListEndOffsets(ctx, r.cfg.StateTopic)
	if err != nil {
		return nil, fmt.Errorf("processor: restore: end offsets of %q: %w", r.cfg.StateTopic, err)
	}
	starts, err := adm.ListStartOffsets(ctx, r.cfg.StateTopic)
	if err != nil {
		return nil, fmt.Errorf("processor: restore: start offsets of %q: %w", r.cfg.StateTopic, err)
	}
	latest := map[int32]map[string]schema.SymbolState{}
	want := map[int32]int64{} // partition -> end offset still to reach
	consume := map[int32]kgo.Offset{}
	for _, p := range ps {
		latest[p] = map[string]schema.SymbolState{}
		end, ok := ends.Lookup(r.cfg.StateTopic, partition.Target(p))
		if !ok || end.Err != nil {
			return nil, fmt.Errorf("processor: restore: no end offset for %s/%d", r.cfg.StateTopic, p)
		}
		st, _ := starts.Lookup(r.cfg.StateTopic, partition.Target(p))
		if end.Offset > st.Offset {
			want[partition.Target(p)] = end.Offset
			consume[partition.Target(p)] = kgo.NewOffset().AtStart()
		}
	}
	if len(want) > 0 {
		rc, err := kgo.NewClient(append(r.base,
			kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{r.cfg.StateTopic: consume}),
			kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		)...)
		if err != nil {
			return nil, fmt.Errorf("processor: restore client: %w", err)
		}
		defer rc.Close()
		for len(want) > 0 {
			fetches := rc.PollFetches(ctx)
			if ctx.Err() != nil {
				return nil, fmt.Errorf("processor: restore: %w", ctx.Err())
			}
			var ferr error
			fetches.EachError(func(_ string, p int32, err error) { ferr = fmt.Errorf("partition %d: %w", p, err) })
			if ferr != nil {
				return nil, fmt.Errorf("processor: restore: fetch %q: %w", r.cfg.StateTopic, ferr)
			}
			fetches.EachRecord(func(rec *kgo.Record) {
				m := latest[rec.Partition]
				if m == nil {
					return
				}
				if rec.Value == nil {
					delete(m, string(rec.Key))
				} else {
					var st schema.SymbolState
					if err := r.stateCodec.Decode(rec.Value, &st); err != nil {
						ferr = fmt.Errorf("state record %s/%d@%d: %w", rec.Topic, rec.Partition, rec.Offset, err)
						return
					}
					m[st.Symbol] = st
				}
				if rec.Offset+1 >= want[rec.Partition] {
					delete(want, rec.Partition)
				}
			})
			if ferr != nil {
				return nil, fmt.Errorf("processor: restore: %w", ferr)
			}
		}
	}
	var out []*shard
	now := r.clock().UnixMilli()
	for _, p := range ps {
		agg, err := engine.NewAggregator(r.cfg.Engine, engine.WithLogger(r.log))
		if err != nil {
			return nil, err
		}
		states := make([]schema.SymbolState, 0, len(latest[p]))
		for _, st := range latest[p] {
			states = append(states, st)
		}
		if err := agg.Restore(states, now); err != nil {
			return nil, fmt.Errorf("processor: restore partition %d: %w", p, err)
		}
		out = append(out, r.newShard(p, agg))
		r.log.Debug("shard restored", "partition", p, "symbols", len(states), "position", agg.Position())
	}
	r.stats.Restores.Add(int64(len(ps)))
	r.stats.RestoreNanos.Store(int64(r.clock().Sub(start)))
	r.obs.Restored(r.clock().Sub(start), len(ps))
	symbols := 0
	for _, m := range latest {
		symbols += len(m)
	}
	r.log.Info("restored", "partitions", ps, "symbols", symbols, "took", r.clock().Sub(start).Round(time.Millisecond))
	return out, nil
}

// shard is one assigned trades partition: its goroutine owns agg.
type shard struct {
	partition int32
	agg       *engine.Aggregator
	r         *runtime
	in        chan shardMsg
	quit      chan struct{}
	done      chan struct{}
	committed int64 // next offset committed; touched only under flushMu or before run
	broken    bool  // a delivery failed; touched only under flushMu

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
	drain chan<- drained
	all   bool // with drain: a full drain, even while catching up
}

func (r *runtime) newShard(p int32, agg *engine.Aggregator) *shard {
	return &shard{
		partition: p, agg: agg, r: r,
		in: make(chan shardMsg, 8), quit: make(chan struct{}), done: make(chan struct{}),
		committed: -1,
		dec:       schema.TradeDecoder{Format: r.cfg.InputFormat, Validate: schema.ValidateConfig{MaxSkew: r.cfg.MaxSkew}},
		last:      agg.Position(),
		// A shard catching up from its start may hold back its open
		// candles for a first catchUpHold.
		fullDrainAt: r.clock(),
	}
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
			s.fold(m.recs, m.hw)
		}
	}
}

func (s *shard) fold(recs []*kgo.Record, hw int64) {
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
