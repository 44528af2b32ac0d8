package processor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sr"

	"github.com/klagg/klagg/schema"
)

// Run runs one member of the klagg consumer group until ctx is done, then
// flushes, commits, leaves the group and returns nil. It returns an error
// only when the member cannot start (bad configuration, unreachable
// brokers, mismatched partition counts, a registry that refuses the
// schema), when a shard it is given cannot be restored (see
// BadStatePolicy), or when the group or the transactional producer fails
// for good (another process with the same instance id, say).
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
	r := &runtime{cfg: cfg, log: o.log, clock: o.clock, stats: o.stats, obs: o.observer, srOpt: o.srOpts,
		shards: map[int32]*shard{}, restarts: map[int32]bool{}, kick: make(chan struct{}, 1),
		progress: make(chan struct{}, 1)}

	base := append([]kgo.Opt{kgo.SeedBrokers(cfg.Brokers...)}, o.kgoOpts...)
	admCl, err := kgo.NewClient(base...)
	if err != nil {
		return fmt.Errorf("processor: kafka client: %w", err)
	}
	defer admCl.Close()
	adm := kadm.NewClient(admCl)
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

	memberOpts, err := r.memberOpts(o.memberOpts)
	if err != nil {
		return err
	}
	r.writer = r.txnID
	if r.writer == "" {
		host, _ := os.Hostname()
		r.writer = fmt.Sprintf("%s/%s/%s/%d", cfg.Group, cfg.InstanceID, host, os.Getpid())
	}
	r.log.Info("member starting", "group", cfg.Group, "trades", cfg.TradesTopic, "partitions", partitions,
		"periods", len(cfg.Engine.Periods), "flush_interval", cfg.FlushInterval, "guarantee", cfg.Guarantee,
		"instance_id", cfg.InstanceID, "transactional_id", r.txnID)

	if cfg.Guarantee == ExactlyOnce {
		if cfg.InstanceID != "" {
			// A restarted member's previous incarnation may have died
			// with a transaction open; readers of its partitions (our
			// own restore among them) would wait for it to time out.
			// Initialising the same transactional id aborts it now.
			if err := fencePredecessor(ctx, admCl, r.txnID, cfg.TransactionTimeout); err != nil {
				return err
			}
		}
		return r.transactSessions(ctx, memberOpts)
	}

	cl, err := kgo.NewClient(memberOpts...)
	if err != nil {
		return fmt.Errorf("processor: kafka client: %w", err)
	}
	r.cl = cl
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

// transactSessions runs exactly-once sessions until ctx ends or one fails
// for good. A session whose producer was fenced (the broker aborted a
// transaction this member left open past the transaction timeout, say
// while frozen) ends; a new one rejoins the group with the same
// transactional id. With an instance id, three such ends within ten
// minutes mean another process holds the id, and Run stops.
func (r *runtime) transactSessions(ctx context.Context, memberOpts []kgo.Opt) error {
	var recent []time.Time
	for {
		r.eventsMu.Lock()
		r.events = nil // the previous session's; its callbacks are done
		r.eventsMu.Unlock()
		sess, err := kgo.NewGroupTransactSession(memberOpts...)
		if err != nil {
			return fmt.Errorf("processor: kafka client: %w", err)
		}
		r.sess, r.cl = sess, sess.Client()
		loopErr := r.transactLoop(ctx)
		sess.Close()
		r.stopAll()
		var pe *producerError
		if !errors.As(loopErr, &pe) || ctx.Err() != nil {
			r.log.Info("member stopped")
			return loopErr
		}
		now := r.clock()
		recent = append(slices.DeleteFunc(recent, func(t time.Time) bool { return now.Sub(t) > 10*time.Minute }), now)
		if r.cfg.InstanceID != "" && len(recent) >= 3 {
			return fmt.Errorf("%w (fenced %d times in 10 minutes: is another process running with --instance-id %q?)", loopErr, len(recent), r.cfg.InstanceID)
		}
		r.log.Warn("transactional producer fenced; rejoining with a fresh session", "err", pe.err)
	}
}

// memberOpts are the group member's client options for cfg's guarantee.
func (r *runtime) memberOpts(extra []kgo.Opt) ([]kgo.Opt, error) {
	cfg := r.cfg
	codec, err := compressionCodec(cfg.Compression)
	if err != nil {
		return nil, err
	}
	opts := []kgo.Opt{
		kgo.ProducerBatchCompression(codec),
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.TradesTopic),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.SessionTimeout(cfg.SessionTimeout),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.RecordDeliveryTimeout(cfg.DeliveryTimeout),
		kgo.MaxBufferedRecords(100_000),
		kgo.ProducerLinger(5 * time.Millisecond),
		// Trades written by a transactional producer count once
		// committed, never when aborted.
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		// Their transaction markers take offsets too: seeing them (dispatch
		// drops them) lets a member tell it has read a partition to its
		// end, and commit past the last marker.
		kgo.KeepControlRecords(),
	}
	if cfg.InstanceID != "" {
		opts = append(opts, kgo.InstanceID(cfg.InstanceID))
	}
	if cfg.Guarantee == ExactlyOnce {
		r.txnID = transactionalID(cfg)
		opts = append(opts,
			kgo.TransactionalID(r.txnID),
			kgo.TransactionTimeout(cfg.TransactionTimeout),
			kgo.OnPartitionsAssigned(r.queueAssigned),
			kgo.OnPartitionsRevoked(r.queueRevoked),
			kgo.OnPartitionsLost(r.queueLost),
		)
	} else {
		opts = append(opts,
			kgo.OnPartitionsAssigned(r.onAssigned),
			kgo.OnPartitionsRevoked(r.onRevoked),
			kgo.OnPartitionsLost(r.onLost),
		)
	}
	return slices.Concat(r.base, opts, extra), nil
}

// transactionalID is stable for a member with an instance id (so that a
// restart fences its predecessor at once) and unique per process without
// one; both are scoped by the group, so two groups never collide.
func transactionalID(cfg Config) string {
	if cfg.InstanceID != "" {
		return "klagg-" + cfg.Group + "-" + cfg.InstanceID
	}
	host, _ := os.Hostname()
	var b [6]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("klagg-%s-%s-%d-%s", cfg.Group, host, os.Getpid(), hex.EncodeToString(b[:]))
}

// fencePredecessor initialises txnID once, which bumps its producer epoch:
// the broker aborts a transaction the previous holder of the id left open
// and refuses that holder from now on.
func fencePredecessor(ctx context.Context, cl *kgo.Client, txnID string, timeout time.Duration) error {
	req := kmsg.NewPtrInitProducerIDRequest()
	req.TransactionalID = &txnID
	req.TransactionTimeoutMillis = int32(timeout.Milliseconds())
	req.ProducerID, req.ProducerEpoch = -1, -1
	for {
		resp, err := req.RequestWith(ctx, cl)
		if err == nil {
			err = kerr.ErrorForCode(resp.ErrorCode)
		}
		// The abort of the open transaction takes a moment; the broker
		// says so with a retriable error.
		if errors.Is(err, kerr.ConcurrentTransactions) || errors.Is(err, kerr.CoordinatorLoadInProgress) {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("processor: fence transactional id %q: %w", txnID, err)
		}
		return nil
	}
}

// runtime is one member. Who owns what:
//   - shards (the registry) is guarded by shardsMu. Under exactly-once only
//     the poll goroutine changes it; under at-least-once the poll goroutine
//     (restarts) and the rebalance callbacks change it while holding
//     flushMu, so no flush sees a half-made change.
//   - a shard's Aggregator belongs to the shard's goroutine alone.
//   - shard.ledger (what was committed, whether delivery failed) is the
//     at-least-once flusher's, guarded by flushMu.
type runtime struct {
	cfg   Config
	log   *slog.Logger
	clock func() time.Time
	stats *Stats
	obs   Observer
	base  []kgo.Opt
	srOpt []sr.ClientOpt
	cl    *kgo.Client
	txnID string
	// writer names this member in the state records it writes, so that an
	// operator can tell whose record won.
	writer string

	klineEnc   *schema.KlineEncoder
	stateCodec *schema.StateCodec
	tradeV1IDs map[int]bool // registry ids of trade schema 1, for Confluent-framed Avro trades

	shardsMu sync.Mutex
	shards   map[int32]*shard

	// fatal is set when the member cannot go on (a shard it owns cannot be
	// restored); the poll loop returns it and Run stops with it.
	fatal atomic.Pointer[error]

	// progress is signalled (without blocking) by a shard that folded
	// held records or became backlogged: a poll loop waiting for room
	// looks again.
	progress chan struct{}

	// At-least-once only.

	// flushMu serializes flushes (the periodic one, a revoke's, the final
	// one), the loss of partitions and shard restarts.
	flushMu sync.Mutex
	// restarts holds the partitions whose shard must be rebuilt; the
	// flusher adds, the poll loop takes. A set: it can neither block the
	// flusher nor lose a request.
	restartMu sync.Mutex
	restarts  map[int32]bool
	// kick asks the flusher to flush now instead of at its next tick (a
	// shard is backlogged, or the poll loop just caught up).
	kick chan struct{}

	// Exactly-once only.
	sess     *kgo.GroupTransactSession
	eventsMu sync.Mutex
	events   []groupEvent // rebalance callbacks queue, the poll goroutine applies
	owned    map[int32]bool
}

func (r *runtime) fail(err error) {
	r.fatal.CompareAndSwap(nil, &err)
}

func (r *runtime) shard(p int32) *shard {
	r.shardsMu.Lock()
	defer r.shardsMu.Unlock()
	return r.shards[p]
}

func (r *runtime) addShards(shards []*shard) {
	r.shardsMu.Lock()
	for _, s := range shards {
		r.shards[s.partition] = s
		go s.run()
	}
	r.stats.Assigned.Store(int64(len(r.shards)))
	r.shardsMu.Unlock()
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
	r.drop(r.partitions())
}

// partitions lists the partitions that have a shard, in order.
func (r *runtime) partitions() []int32 {
	r.shardsMu.Lock()
	defer r.shardsMu.Unlock()
	ps := make([]int32, 0, len(r.shards))
	for p := range r.shards {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	return ps
}

// dispatch hands the records of one fetched partition to its shard, and
// reports whether the partition has more records waiting. The fetch's
// last record may be a transaction marker: the shard gets the trades, and
// the marker's offset as how far the partition was read.
func (r *runtime) dispatch(ftp kgo.FetchTopicPartition) (behind bool) {
	if len(ftp.Records) == 0 {
		return false
	}
	end := ftp.Records[len(ftp.Records)-1].Offset
	behind = end+1 < ftp.HighWatermark
	s := r.shard(ftp.Partition)
	if s == nil {
		return behind // not ours any more; the new owner reads them
	}
	recs := ftp.Records
	if slices.ContainsFunc(recs, isControl) { // a copy: the fetch is the client's to read too
		recs = slices.DeleteFunc(slices.Clone(recs), isControl)
	}
	s.queued.Add(int64(len(recs)))
	select {
	case s.in <- shardMsg{recs: recs, hw: ftp.HighWatermark, end: end}:
	case <-s.done:
	}
	return behind
}

func isControl(r *kgo.Record) bool { return r.Attrs.IsControl() }

// wake tells the at-least-once flusher to flush now (a shard is
// backlogged) and a poll loop waiting for room to look again.
func (r *runtime) wake() {
	r.signal(r.kick)
	r.signal(r.progress)
}

// signal sends on a channel of capacity one without blocking: a signal
// already pending says the same.
func (r *runtime) signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// backlog reports the records handed to shards and not yet folded, and
// whether any shard's engine waits for a drain.
func (r *runtime) backlog() (queued int64, backlogged bool) {
	r.shardsMu.Lock()
	defer r.shardsMu.Unlock()
	for _, s := range r.shards {
		queued += s.queued.Load()
		backlogged = backlogged || s.backlogged.Load()
	}
	return queued, backlogged
}

// fetchErrors logs fetch errors and returns the first that ends the
// member: the group refused us for good.
func (r *runtime) fetchErrors(fetches kgo.Fetches) error {
	var fatal error
	fetches.EachError(func(topic string, p int32, err error) {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return
		}
		r.log.Warn("fetch error", "topic", topic, "partition", p, "err", err)
		switch {
		case errors.Is(err, kerr.GroupAuthorizationFailed):
			fatal = fmt.Errorf("processor: consumer group %q: %w", r.cfg.Group, err)
		case errors.Is(err, kerr.FencedInstanceID):
			fatal = fmt.Errorf("processor: another member of group %q runs with instance id %q: %w (give each process its own --instance-id)",
				r.cfg.Group, r.cfg.InstanceID, err)
		}
	})
	return fatal
}
