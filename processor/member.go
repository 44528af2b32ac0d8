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

	"github.com/klagg/klagg/hint"
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
	o := runOptions{log: slog.New(slog.DiscardHandler), clock: time.Now, stats: &Stats{}}
	for _, fn := range opts {
		fn(&o)
	}
	obs := Observer(o.stats)
	if o.observer != nil {
		obs = observers{o.stats, o.observer}
	}
	c := &core{cfg: cfg, log: o.log, clock: o.clock, stats: o.stats, obs: obs, srOpt: o.srOpts,
		shards: map[int32]*shard{}}

	base := append([]kgo.Opt{kgo.SeedBrokers(cfg.Brokers...)}, o.kgoOpts...)
	admCl, err := kgo.NewClient(base...)
	if err != nil {
		return fmt.Errorf("processor: kafka client: %w", err)
	}
	defer admCl.Close()
	adm := kadm.NewClient(admCl)
	// The registry first: when it refuses, klagg has created nothing.
	if err := c.setupEncoders(ctx); err != nil {
		return err
	}
	partitions, err := c.ensureTopics(ctx, adm)
	if err != nil {
		return err
	}
	// Clipped, so that appending to it (restore clients) always copies and
	// never writes into an array another goroutine is appending to.
	c.base = slices.Clip(base)
	memberOpts, err := c.memberOpts(o.memberOpts)
	if err != nil {
		return err
	}
	txnID := ""
	if cfg.Guarantee == ExactlyOnce {
		txnID = transactionalID(cfg)
	}
	c.writer = txnID
	if c.writer == "" {
		host, _ := os.Hostname()
		c.writer = fmt.Sprintf("%s/%s/%s/%d", cfg.Group, cfg.InstanceID, host, os.Getpid())
	}
	c.log.Info("member starting", "group", cfg.Group, "trades", cfg.TradesTopic, "partitions", partitions,
		"periods", len(cfg.Engine.Periods), "flush_interval", cfg.FlushInterval, "guarantee", cfg.Guarantee,
		"instance_id", cfg.InstanceID, "transactional_id", txnID)

	if cfg.Guarantee == ExactlyOnce {
		if cfg.InstanceID != "" {
			// A restarted member's previous incarnation may have died
			// with a transaction open; readers of its partitions (our
			// own restore among them) would wait for it to time out.
			// Initialising the same transactional id aborts it now.
			if err := fencePredecessor(ctx, admCl, c.log, txnID, cfg.TransactionTimeout); err != nil {
				return err
			}
		}
		return newExactlyOnce(c, txnID).run(ctx, memberOpts)
	}
	return newAtLeastOnce(c).run(ctx, memberOpts)
}

// memberOpts are the group member's client options that both guarantees
// share; each member adds its own (rebalance callbacks, a transactional id).
func (c *core) memberOpts(extra []kgo.Opt) ([]kgo.Opt, error) {
	cfg := c.cfg
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
	return slices.Concat(c.base, opts, extra), nil
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
// and refuses that holder from now on. While the transaction coordinator
// is not there yet (a cluster starting, a coordinator moving, the abort
// still under way) it waits with back-off, and says so, while ctx lives.
func fencePredecessor(ctx context.Context, cl *kgo.Client, log *slog.Logger, txnID string, timeout time.Duration) error {
	req := kmsg.NewPtrInitProducerIDRequest()
	req.TransactionalID = &txnID
	req.TransactionTimeoutMillis = int32(timeout.Milliseconds())
	req.ProducerID, req.ProducerEpoch = -1, -1
	var b backoff
	for {
		resp, err := req.RequestWith(ctx, cl)
		if err == nil {
			err = kerr.ErrorForCode(resp.ErrorCode)
		}
		if err == nil {
			return nil
		}
		err = fmt.Errorf("processor: fence transactional id %q: %w", txnID, err)
		// Worth waiting for: the coordinator is loading or moving, the
		// abort is still under way (CONCURRENT_TRANSACTIONS, which kerr
		// does not count retriable), or the brokers cannot be reached.
		var ke *kerr.Error
		if ctx.Err() != nil || errors.As(err, &ke) && !ke.Retriable && !errors.Is(err, kerr.ConcurrentTransactions) {
			return err
		}
		if b.waited >= time.Second {
			log.Warn("waiting for the transaction coordinator", "err", err, "waited", b.waited.Round(100*time.Millisecond))
		}
		if !b.wait(ctx) {
			return err
		}
	}
}

// core is what both guarantees' members share: the configuration, the
// encoders, the client, and the registry of shards. Who owns what:
//   - shards (the registry) is guarded by shardsMu; the member's own rules
//     (exactlyOnce, atLeastOnce) say which goroutines change it.
//   - a shard's Aggregator belongs to the shard's goroutine alone.
//
// A member of each guarantee embeds a core and adds the fields that only
// it uses: see exactlyOnce and atLeastOnce.
type core struct {
	cfg   Config
	log   *slog.Logger
	clock func() time.Time
	stats *Stats
	obs   Observer
	base  []kgo.Opt
	srOpt []sr.ClientOpt
	cl    *kgo.Client
	// writer names this member in the state records it writes, so that an
	// operator can tell whose record won.
	writer string

	klineEnc    *schema.KlineEncoder
	stateCodec  *schema.StateCodec
	tradeV1IDs  map[int]bool        // registry ids of trade schema 1, for Confluent-framed Avro trades
	mapping     *schema.Mapping     // InputJSON's
	avroMapping *schema.AvroMapping // InputAvro's, with a mapping

	// notify is what a shard calls when its engine becomes backlogged
	// (backlogged true) or it folded held records: the member's own
	// reaction (at-least-once flushes at once and polls again).
	notify func(backlogged bool)

	shardsMu sync.Mutex
	shards   map[int32]*shard

	// fatal is set when the member cannot go on (a shard it owns cannot be
	// restored); the poll loop returns it and Run stops with it.
	fatal atomic.Pointer[error]
}

// shardEnv is what this member's shards are given.
func (c *core) shardEnv() shardEnv {
	return shardEnv{
		clock:      c.clock,
		log:        c.log,
		stats:      c.stats,
		klineEnc:   c.klineEnc,
		stateCodec: c.stateCodec,
		decoder: schema.TradeDecoder{Format: c.cfg.InputFormat, V1IDs: c.tradeV1IDs, Mapping: c.mapping, Avro: c.avroMapping,
			SymbolPrefix: []byte(c.cfg.SymbolPrefix), Validate: schema.ValidateConfig{MaxSkew: c.cfg.MaxSkew}},
		writer:      c.writer,
		klinesTopic: c.cfg.KlinesTopic,
		stateTopic:  c.cfg.StateTopic,
		dlqTopic:    c.cfg.DLQTopic,
		maxPending:  c.cfg.Engine.MaxPending,
		liveWindow:  c.cfg.Engine.LiveWindow.Milliseconds(),
		notify:      c.notify,
	}
}

// allShards lists the running shards and those marked broken, by partition.
func (c *core) allShards() []*shard {
	c.shardsMu.Lock()
	defer c.shardsMu.Unlock()
	out := make([]*shard, 0, len(c.shards))
	for _, s := range c.shards {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b *shard) int { return int(a.partition - b.partition) })
	return out
}

func (c *core) fail(err error) {
	c.fatal.CompareAndSwap(nil, &err)
}

func (c *core) shard(p int32) *shard {
	c.shardsMu.Lock()
	defer c.shardsMu.Unlock()
	return c.shards[p]
}

func (c *core) addShards(shards []*shard) {
	c.shardsMu.Lock()
	for _, s := range shards {
		c.shards[s.partition] = s
		s.start()
	}
	c.stats.Assigned.Store(int64(len(c.shards)))
	c.shardsMu.Unlock()
}

// drop stops the shards of ps: close quit, wait on done.
func (c *core) drop(ps []int32) {
	c.shardsMu.Lock()
	var stopping []*shard
	for _, p := range ps {
		if s := c.shards[p]; s != nil {
			stopping = append(stopping, s)
			delete(c.shards, p)
		}
	}
	c.stats.Assigned.Store(int64(len(c.shards)))
	c.shardsMu.Unlock()
	for _, s := range stopping {
		s.stop()
		c.obs.Forget(s.partition)
	}
}

func (c *core) stopAll() {
	c.drop(c.partitions())
}

// partitions lists the partitions that have a shard, in order.
func (c *core) partitions() []int32 {
	c.shardsMu.Lock()
	defer c.shardsMu.Unlock()
	ps := make([]int32, 0, len(c.shards))
	for p := range c.shards {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	return ps
}

// dispatch hands the records of one fetched partition to its shard, and
// reports whether the partition has more records waiting. The fetch's
// last record may be a transaction marker: the shard gets the trades, and
// the marker's offset as how far the partition was read.
func (c *core) dispatch(ftp kgo.FetchTopicPartition) (behind bool) {
	if len(ftp.Records) == 0 {
		return false
	}
	end := ftp.Records[len(ftp.Records)-1].Offset
	behind = end+1 < ftp.HighWatermark
	s := c.shard(ftp.Partition)
	if s == nil {
		return behind // not ours any more; the new owner reads them
	}
	if c.skipped(s, ftp.Records[0].Offset) {
		return behind
	}
	s.next = end + 1
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

// skipped reports whether a fetch of s's partition starting at first
// passed over records s expects (its restored state reflects the trades
// before s.next, so a fetch that starts later would leave the ones in
// between out of every candle for good). The fetch is then dropped and
// the client's position set back to s.next. Control records are kept, so
// offsets only jump where records were aborted or deleted: if the fetch
// from s.next starts at first again, those are what lies between, and it
// is taken.
func (c *core) skipped(s *shard, first int64) bool {
	if s.next < 0 || first <= s.next || first == s.gapAt {
		s.gapAt = -1
		return false
	}
	c.log.Warn("a fetch began past the next trades offset; setting the position back",
		"partition", s.partition, "expected", s.next, "fetched_from", first)
	c.stats.Rewinds.Add(1)
	s.gapAt = first
	c.cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{c.cfg.TradesTopic: {s.partition: {Epoch: -1, Offset: s.next}}})
	return true
}

// backlog reports the records handed to shards and not yet folded, and
// whether any shard's engine waits for a drain.
func (c *core) backlog() (queued int64, backlogged bool) {
	c.shardsMu.Lock()
	defer c.shardsMu.Unlock()
	for _, s := range c.shards {
		queued += s.queued.Load()
		backlogged = backlogged || s.backlogged.Load()
	}
	return queued, backlogged
}

// fetchErrors logs fetch errors and returns the first that ends the
// member: the group refused us for good.
func (c *core) fetchErrors(fetches kgo.Fetches) error {
	var fatal error
	fetches.EachError(func(topic string, p int32, err error) {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return
		}
		c.log.Warn("fetch error", "topic", topic, "partition", p, "err", err)
		switch {
		case errors.Is(err, kerr.GroupAuthorizationFailed):
			fatal = fmt.Errorf("processor: consumer group %q: %w", c.cfg.Group, err)
		case errors.Is(err, kerr.FencedInstanceID):
			fatal = &hint.Error{Err: fmt.Errorf("processor: another member of group %q runs with instance id %q: %w",
				c.cfg.Group, c.cfg.InstanceID, err), Setting: "InstanceID", Fix: "give each process its own %s"}
		}
	})
	return fatal
}
