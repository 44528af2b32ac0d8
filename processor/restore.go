package processor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/hint"
	"github.com/klagg/klagg/partition"
	"github.com/klagg/klagg/processor/engine"
	"github.com/klagg/klagg/schema"
)

// BadStateError is returned by Run (under BadStateStop), inside a
// *hint.Error naming BadState, when a state record cannot be read: it
// names the record.
type BadStateError struct {
	Topic     string
	Partition int32
	Offset    int64
	Symbol    string // the record's key
	Err       error
}

func (e *BadStateError) Error() string {
	return fmt.Sprintf("processor: state record %s/%d@%d (symbol %q) cannot be read: %v",
		e.Topic, e.Partition, e.Offset, e.Symbol, e.Err)
}

func (e *BadStateError) Unwrap() error { return e.Err }

// restoreRetrying is restore, tried again while the brokers cannot be
// reached (a broker restart lands on a rebalance or an abort, whose
// restore then finds nobody to answer). A record it cannot use, or ctx
// ending, stops it: those are not transient.
func (c *core) restoreRetrying(ctx context.Context, cl *kgo.Client, ps []int32) ([]*shard, error) {
	for {
		shards, err := c.restore(ctx, cl, ps)
		var bad *BadStateError
		if err == nil || errors.As(err, &bad) || errors.Is(err, engine.ErrBadState) || ctx.Err() != nil {
			return shards, err
		}
		c.log.Warn("restore failed; trying again", "partitions", ps, "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// restore rebuilds the shards of ps from the state topic: every committed
// record from the start to the end of partition p; per symbol, the one
// that reflects the most trades (the highest source offset; of equals, the
// later). Under at-least-once a member that was expelled while frozen may
// have written records after the new owner's, which this keeps from
// winning. It reads with read_committed up to the end offset as it stands,
// so it waits for a transaction open on the partition to end: a member
// that died with one open holds it up to the transaction timeout.
func (c *core) restore(ctx context.Context, cl *kgo.Client, ps []int32) ([]*shard, error) {
	start := c.clock()
	// First, so that the state read below reaches at least as far as
	// whatever transaction committed these offsets.
	resume, err := c.resumeOffsets(ctx, cl, ps)
	if err != nil {
		return nil, fmt.Errorf("processor: restore: %w", err)
	}
	latest, bad, err := c.readStates(ctx, cl, ps)
	if err != nil {
		return nil, fmt.Errorf("processor: restore: %w", err)
	}
	var out []*shard
	now := c.clock().UnixMilli()
	symbols := 0
	var legacy, rounded int // records of state schemas 1 and 2 (doubles), and the values they rounded
	for _, p := range ps {
		states := make([]schema.SymbolState, 0, len(latest[partition.Target(p)]))
		for _, st := range latest[partition.Target(p)] {
			states = append(states, st)
			if st.FromSchema < 3 {
				legacy++
				rounded += st.Rounded
			}
		}
		if b := bad[partition.Target(p)]; len(b) > 0 {
			rebuilt, err := c.rebuildSymbols(ctx, cl, p, b, now, resume[p])
			if err != nil {
				return nil, err
			}
			states = append(states, rebuilt...)
		}
		agg, err := engine.NewAggregator(c.cfg.Engine, engine.WithLogger(c.log))
		if err != nil {
			return nil, err
		}
		if err := agg.Restore(states, now); err != nil {
			return nil, fmt.Errorf("processor: restore partition %d: %w", p, err)
		}
		symbols += len(states)
		sh := newShard(p, agg, c.shardEnv())
		sh.next = resume[p]
		out = append(out, sh)
		c.log.Debug("shard restored", "partition", p, "symbols", len(states), "position", agg.Position())
	}
	c.obs.Restored(c.clock().Sub(start), len(ps))
	c.log.Info("restored", "partitions", ps, "symbols", symbols, "took", c.clock().Sub(start).Round(time.Millisecond))
	if legacy > 0 {
		// The one inexact step (DESIGN.md, "State records and their
		// schemas"): say what it did.
		c.log.Warn("restored state written with doubles by an older klagg: each value taken as its shortest decimal",
			"records", legacy, "values_rounded_to_scale", rounded)
	}
	return out, nil
}

// readStates reads the state records of ps's state partitions: per
// symbol, the one that reflects the most trades, and the ones that cannot
// be read.
func (c *core) readStates(ctx context.Context, cl *kgo.Client, ps []int32) (map[int32]map[string]schema.SymbolState, map[int32]map[string]*BadStateError, error) {
	latest := map[int32]map[string]schema.SymbolState{}
	bad := map[int32]map[string]*BadStateError{}
	targets := make([]int32, 0, len(ps))
	for _, p := range ps {
		latest[partition.Target(p)] = map[string]schema.SymbolState{}
		bad[partition.Target(p)] = map[string]*BadStateError{}
		targets = append(targets, partition.Target(p))
	}
	err := scanState(ctx, cl, c.base, c.cfg.StateTopic, targets, func(rec *kgo.Record) {
		m := latest[rec.Partition]
		key := string(rec.Key)
		if rec.Value == nil {
			delete(m, key)
			delete(bad[rec.Partition], key)
			return
		}
		var st schema.SymbolState
		if err := c.stateCodec.Decode(rec.Value, &st); err != nil {
			// It may hold more trades than any record before it: those
			// older ones cannot stand in for it.
			delete(m, key)
			bad[rec.Partition][key] = &BadStateError{Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset, Symbol: key, Err: err}
			return
		}
		if prev, ok := m[st.Symbol]; ok && prev.SourceOffset > st.SourceOffset {
			c.stats.StaleStates.Add(1)
			return
		}
		m[st.Symbol] = st
		// A good record written after a bad one supersedes it.
		delete(bad[rec.Partition], key)
	})
	return latest, bad, err
}

// resumeOffsets are the trades offsets the restored shards of ps take up
// from, which their state reflects: the group's committed offsets, read
// once stable (a transaction that commits offsets for them is waited
// for), or the first retained offset where the group has none.
func (c *core) resumeOffsets(ctx context.Context, cl *kgo.Client, ps []int32) (map[int32]int64, error) {
	adm := kadm.NewClient(cl)
	out := make(map[int32]int64, len(ps))
	for {
		commits, err := adm.FetchOffsets(kadm.RequireStable(ctx), c.cfg.Group)
		unstable := errors.Is(err, kerr.UnstableOffsetCommit)
		if err != nil && !unstable {
			return nil, fmt.Errorf("committed offsets of group %q: %w", c.cfg.Group, err)
		}
		for _, p := range ps {
			o, ok := commits.Lookup(c.cfg.TradesTopic, p)
			switch {
			case ok && errors.Is(o.Err, kerr.UnstableOffsetCommit):
				unstable = true
			case ok && o.Err == nil && o.At >= 0:
				out[p] = o.At
			}
		}
		if !unstable {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if len(out) == len(ps) {
		return out, nil
	}
	starts, err := adm.ListStartOffsets(ctx, c.cfg.TradesTopic)
	if err != nil {
		return nil, fmt.Errorf("start offsets of %q: %w", c.cfg.TradesTopic, err)
	}
	for _, p := range ps {
		if _, ok := out[p]; ok {
			continue
		}
		out[p] = -1
		if s, ok := starts.Lookup(c.cfg.TradesTopic, p); ok && s.Err == nil {
			out[p] = s.Offset
		}
	}
	return out, nil
}

// rebuildSymbols applies the BadStatePolicy to the unreadable records of
// trades partition p. Under BadStateRebuild each symbol's state is
// recomputed from its trades that the trades topic still holds, up to the
// group's committed offset (what the unreadable record reflected at most);
// the consumer resumes from that offset (until) as usual.
func (c *core) rebuildSymbols(ctx context.Context, cl *kgo.Client, p int32, bad map[string]*BadStateError, nowMs, until int64) ([]schema.SymbolState, error) {
	if c.cfg.BadState != BadStateRebuild {
		var first *BadStateError
		for _, b := range bad {
			if first == nil || b.Offset < first.Offset {
				first = b
			}
		}
		return nil, &hint.Error{Err: first, Setting: "BadState",
			Fix: "to rebuild that symbol from the trades the trades topic still holds, set %s to rebuild"}
	}
	adm := kadm.NewClient(cl)
	starts, err := adm.ListStartOffsets(ctx, c.cfg.TradesTopic)
	if err != nil {
		return nil, fmt.Errorf("processor: rebuild partition %d: start offsets of %q: %w", p, c.cfg.TradesTopic, err)
	}
	from := int64(0)
	if s, ok := starts.Lookup(c.cfg.TradesTopic, p); ok && s.Err == nil {
		from = s.Offset
	}
	aggs := map[string]*engine.Aggregator{}
	for sym, b := range bad {
		agg, err := engine.NewAggregator(c.cfg.Engine, engine.WithLogger(c.log))
		if err != nil {
			return nil, err
		}
		aggs[sym] = agg
		c.stats.RebuiltStates.Add(1)
		c.log.Warn("state record unreadable; rebuilding the symbol from the retained trades",
			"record", fmt.Sprintf("%s/%d@%d", b.Topic, b.Partition, b.Offset), "symbol", sym, "err", b.Err,
			"trades_from", from, "trades_until", until)
		if from > 0 {
			c.log.Warn("the trades topic no longer holds its first records: the rebuilt symbol's longer candles may lack their earliest trades",
				"symbol", sym, "partition", p, "first_retained_offset", from)
		}
	}
	if until > from {
		if err := c.refold(ctx, p, from, until, aggs, nowMs); err != nil {
			return nil, err
		}
	}
	var out []schema.SymbolState
	for sym, agg := range aggs {
		var b engine.Batch // its own: the states' candles live in it
		agg.Drain(&b, nowMs)
		if len(b.States) == 0 {
			c.log.Warn("no retained trade of the symbol: it starts afresh at its next trade", "symbol", sym, "partition", p)
			continue
		}
		out = append(out, b.States...)
	}
	return out, nil
}

// refold folds the trades of partition p from offset from up to until into
// the aggregators of their symbols (aggs, by symbol; others are skipped).
func (c *core) refold(ctx context.Context, p int32, from, until int64, aggs map[string]*engine.Aggregator, nowMs int64) error {
	rc, err := kgo.NewClient(append(c.base,
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{c.cfg.TradesTopic: {p: kgo.NewOffset().At(from)}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords(),
	)...)
	if err != nil {
		return fmt.Errorf("processor: rebuild client: %w", err)
	}
	defer rc.Close()
	dec := c.shardEnv().decoder
	var b schema.Batch
	for done := false; !done; {
		fetches := rc.PollFetches(ctx)
		if ctx.Err() != nil {
			return fmt.Errorf("processor: rebuild partition %d: %w", p, ctx.Err())
		}
		var ferr error
		fetches.EachError(func(_ string, _ int32, err error) { ferr = err })
		if ferr != nil {
			return fmt.Errorf("processor: rebuild partition %d: fetch %q: %w", p, c.cfg.TradesTopic, ferr)
		}
		fetches.EachRecord(func(rec *kgo.Record) {
			if done || rec.Offset >= until {
				done = true
				return
			}
			if rec.Offset+1 >= until {
				done = true
			}
			if rec.Attrs.IsControl() || dec.DecodeBatch(rec.Key, rec.Value, nowMs, &b) != nil {
				return
			}
			for i := range b.Trades {
				if agg := aggs[string(b.Trades[i].Symbol)]; agg != nil && b.Errs[i] == nil {
					agg.Fold(&b.Trades[i], rec.Offset, nowMs)
				}
			}
		})
	}
	return nil
}

// ErrBadStatePolicy is wrapped by Config.Validate for an unknown policy.
var ErrBadStatePolicy = errors.New("unknown bad-state policy")

// scanState calls fn with every committed data record of partitions ps (nil:
// all) of the state topic, from the start to the end offset as it stands, in
// offset order per partition. It reads with read_committed, so it waits
// for a transaction open on a partition to end.
func scanState(ctx context.Context, cl *kgo.Client, base []kgo.Opt, topic string, ps []int32, fn func(*kgo.Record)) error {
	adm := kadm.NewClient(cl)
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return fmt.Errorf("end offsets of %q: %w", topic, err)
	}
	starts, err := adm.ListStartOffsets(ctx, topic)
	if err != nil {
		return fmt.Errorf("start offsets of %q: %w", topic, err)
	}
	if ps == nil {
		ends.Each(func(o kadm.ListedOffset) {
			if o.Err == nil {
				ps = append(ps, o.Partition)
			}
		})
	}
	want := map[int32]int64{} // partition -> end offset still to reach
	consume := map[int32]kgo.Offset{}
	for _, p := range ps {
		end, ok := ends.Lookup(topic, p)
		if !ok || end.Err != nil {
			return fmt.Errorf("no end offset for %s/%d", topic, p)
		}
		st, _ := starts.Lookup(topic, p)
		if end.Offset > st.Offset {
			want[p] = end.Offset
			consume[p] = kgo.NewOffset().AtStart()
		}
	}
	if len(want) == 0 {
		return nil
	}
	rc, err := kgo.NewClient(append(base,
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: consume}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		// Transaction markers are records too: without them, a partition
		// whose last records were aborted never shows a record at its end
		// offset.
		kgo.KeepControlRecords(),
	)...)
	if err != nil {
		return fmt.Errorf("state client: %w", err)
	}
	defer rc.Close()
	for len(want) > 0 {
		fetches := rc.PollFetches(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var ferr error
		fetches.EachError(func(_ string, p int32, err error) { ferr = fmt.Errorf("partition %d: %w", p, err) })
		if ferr != nil {
			return fmt.Errorf("fetch %q: %w", topic, ferr)
		}
		fetches.EachRecord(func(rec *kgo.Record) {
			if end, ok := want[rec.Partition]; ok && rec.Offset+1 >= end {
				delete(want, rec.Partition)
			}
			if !rec.Attrs.IsControl() {
				fn(rec) // a record past the end too, in a fetch that had it: it is newer still
			}
		})
	}
	return nil
}

// LatestStates reads a state topic as members restoring all of its
// partitions would, and returns per symbol the state they would start
// from: in its partition, the record reflecting the most trades; of a
// symbol in several partitions (the trades topic was repartitioned), the
// one with the highest aggregate trade id. It returns how many records it
// could not read beside. cl reaches the brokers; opts are the options of
// the client it reads with (brokers, TLS, SASL).
func LatestStates(ctx context.Context, cl *kgo.Client, topic string, opts ...kgo.Opt) (map[string]schema.SymbolState, int, error) {
	codec, err := schema.NewStateCodec()
	if err != nil {
		return nil, 0, err
	}
	type entry struct {
		partition int32
		st        schema.SymbolState
	}
	latest := map[string]entry{}
	unreadable := 0
	err = scanState(ctx, cl, opts, topic, nil, func(rec *kgo.Record) {
		var st schema.SymbolState
		if rec.Value == nil { // a tombstone
			if prev, ok := latest[string(rec.Key)]; ok && prev.partition == rec.Partition {
				delete(latest, string(rec.Key))
			}
			return
		}
		if err := codec.Decode(rec.Value, &st); err != nil {
			unreadable++
			return
		}
		prev, ok := latest[st.Symbol]
		switch {
		case !ok,
			prev.partition == rec.Partition && st.SourceOffset >= prev.st.SourceOffset,
			prev.partition != rec.Partition && st.LastAggID > prev.st.LastAggID:
			latest[st.Symbol] = entry{rec.Partition, st}
		}
	})
	if err != nil {
		return nil, 0, fmt.Errorf("processor: read state %q: %w", topic, err)
	}
	out := make(map[string]schema.SymbolState, len(latest))
	for sym, e := range latest {
		out[sym] = e.st
	}
	return out, unreadable, nil
}
