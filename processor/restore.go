package processor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/partition"
	"github.com/klagg/klagg/processor/engine"
	"github.com/klagg/klagg/schema"
)

// BadStateError is returned by Run (under BadStateStop) when a state record
// cannot be read: it names the record and says what the operator can do.
type BadStateError struct {
	Topic     string
	Partition int32
	Offset    int64
	Symbol    string // the record's key
	Err       error
}

func (e *BadStateError) Error() string {
	return fmt.Sprintf("processor: state record %s/%d@%d (symbol %q) cannot be read: %v; "+
		"to rebuild that symbol from the trades the trades topic still holds, run with --bad-state rebuild",
		e.Topic, e.Partition, e.Offset, e.Symbol, e.Err)
}

func (e *BadStateError) Unwrap() error { return e.Err }

// restoreRetrying is restore, tried again while the brokers cannot be
// reached (a broker restart lands on a rebalance or an abort, whose
// restore then finds nobody to answer). A record it cannot use, or ctx
// ending, stops it: those are not transient.
func (r *runtime) restoreRetrying(ctx context.Context, cl *kgo.Client, ps []int32) ([]*shard, error) {
	for {
		shards, err := r.restore(ctx, cl, ps)
		var bad *BadStateError
		if err == nil || errors.As(err, &bad) || errors.Is(err, engine.ErrBadState) || ctx.Err() != nil {
			return shards, err
		}
		r.log.Warn("restore failed; trying again", "partitions", ps, "err", err)
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
	bad := map[int32]map[string]*BadStateError{}
	want := map[int32]int64{} // partition -> end offset still to reach
	consume := map[int32]kgo.Offset{}
	for _, p := range ps {
		latest[p] = map[string]schema.SymbolState{}
		bad[p] = map[string]*BadStateError{}
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
			// Transaction markers are records too: without them, a
			// partition whose last records were aborted never shows a
			// record at its end offset.
			kgo.KeepControlRecords(),
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
				if rec.Offset+1 >= want[rec.Partition] {
					delete(want, rec.Partition)
				}
				m := latest[rec.Partition]
				if m == nil || rec.Attrs.IsControl() {
					return
				}
				key := string(rec.Key)
				if rec.Value == nil {
					delete(m, key)
					delete(bad[rec.Partition], key)
					return
				}
				var st schema.SymbolState
				if err := r.stateCodec.Decode(rec.Value, &st); err != nil {
					// It may hold more trades than any record before it:
					// those older ones cannot stand in for it.
					delete(m, key)
					bad[rec.Partition][key] = &BadStateError{Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset, Symbol: key, Err: err}
					return
				}
				if prev, ok := m[st.Symbol]; ok && prev.SourceOffset > st.SourceOffset {
					r.stats.StaleStates.Add(1)
					return
				}
				m[st.Symbol] = st
				// A good record written after a bad one supersedes it.
				delete(bad[rec.Partition], key)
			})
		}
	}
	var out []*shard
	now := r.clock().UnixMilli()
	symbols := 0
	for _, p := range ps {
		states := make([]schema.SymbolState, 0, len(latest[p]))
		for _, st := range latest[p] {
			states = append(states, st)
		}
		if len(bad[p]) > 0 {
			rebuilt, err := r.rebuildSymbols(ctx, cl, p, bad[p], now)
			if err != nil {
				return nil, err
			}
			states = append(states, rebuilt...)
		}
		agg, err := engine.NewAggregator(r.cfg.Engine, engine.WithLogger(r.log))
		if err != nil {
			return nil, err
		}
		if err := agg.Restore(states, now); err != nil {
			return nil, fmt.Errorf("processor: restore partition %d: %w", p, err)
		}
		symbols += len(states)
		out = append(out, r.newShard(p, agg))
		r.log.Debug("shard restored", "partition", p, "symbols", len(states), "position", agg.Position())
	}
	r.stats.Restores.Add(int64(len(ps)))
	r.stats.RestoreNanos.Store(int64(r.clock().Sub(start)))
	r.obs.Restored(r.clock().Sub(start), len(ps))
	r.log.Info("restored", "partitions", ps, "symbols", symbols, "took", r.clock().Sub(start).Round(time.Millisecond))
	return out, nil
}

// rebuildSymbols applies the BadStatePolicy to the unreadable records of
// trades partition p. Under BadStateRebuild each symbol's state is
// recomputed from its trades that the trades topic still holds, up to the
// group's committed offset (what the unreadable record reflected at most);
// the consumer resumes from that offset as usual.
func (r *runtime) rebuildSymbols(ctx context.Context, cl *kgo.Client, p int32, bad map[string]*BadStateError, nowMs int64) ([]schema.SymbolState, error) {
	if r.cfg.BadState != BadStateRebuild {
		var first *BadStateError
		for _, b := range bad {
			if first == nil || b.Offset < first.Offset {
				first = b
			}
		}
		return nil, first
	}
	adm := kadm.NewClient(cl)
	commits, err := adm.FetchOffsets(ctx, r.cfg.Group)
	if err != nil {
		return nil, fmt.Errorf("processor: rebuild partition %d: committed offsets of group %q: %w", p, r.cfg.Group, err)
	}
	until := int64(0)
	if c, ok := commits.Lookup(r.cfg.TradesTopic, p); ok && c.Err == nil {
		until = c.At
	}
	starts, err := adm.ListStartOffsets(ctx, r.cfg.TradesTopic)
	if err != nil {
		return nil, fmt.Errorf("processor: rebuild partition %d: start offsets of %q: %w", p, r.cfg.TradesTopic, err)
	}
	from := int64(0)
	if s, ok := starts.Lookup(r.cfg.TradesTopic, p); ok && s.Err == nil {
		from = s.Offset
	}
	aggs := map[string]*engine.Aggregator{}
	for sym, b := range bad {
		agg, err := engine.NewAggregator(r.cfg.Engine, engine.WithLogger(r.log))
		if err != nil {
			return nil, err
		}
		aggs[sym] = agg
		r.stats.RebuiltStates.Add(1)
		r.log.Warn("state record unreadable; rebuilding the symbol from the retained trades",
			"record", fmt.Sprintf("%s/%d@%d", b.Topic, b.Partition, b.Offset), "symbol", sym, "err", b.Err,
			"trades_from", from, "trades_until", until)
		if from > 0 {
			r.log.Warn("the trades topic no longer holds its first records: the rebuilt symbol's longer candles may lack their earliest trades",
				"symbol", sym, "partition", p, "first_retained_offset", from)
		}
	}
	if until > from {
		rc, err := kgo.NewClient(append(r.base,
			kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{r.cfg.TradesTopic: {p: kgo.NewOffset().At(from)}}),
			kgo.FetchIsolationLevel(kgo.ReadCommitted()),
			kgo.KeepControlRecords(),
		)...)
		if err != nil {
			return nil, fmt.Errorf("processor: rebuild client: %w", err)
		}
		defer rc.Close()
		dec := schema.TradeDecoder{Format: r.cfg.InputFormat, Validate: schema.ValidateConfig{MaxSkew: r.cfg.MaxSkew}}
		var t schema.Trade
		for done := false; !done; {
			fetches := rc.PollFetches(ctx)
			if ctx.Err() != nil {
				return nil, fmt.Errorf("processor: rebuild partition %d: %w", p, ctx.Err())
			}
			var ferr error
			fetches.EachError(func(_ string, _ int32, err error) { ferr = err })
			if ferr != nil {
				return nil, fmt.Errorf("processor: rebuild partition %d: fetch %q: %w", p, r.cfg.TradesTopic, ferr)
			}
			fetches.EachRecord(func(rec *kgo.Record) {
				if done || rec.Offset >= until {
					done = true
					return
				}
				if rec.Offset+1 >= until {
					done = true
				}
				if rec.Attrs.IsControl() || dec.Decode(rec.Key, rec.Value, nowMs, &t) != nil {
					return
				}
				if agg := aggs[string(t.Symbol)]; agg != nil {
					agg.Fold(&t, rec.Offset, nowMs)
				}
			})
		}
	}
	var out []schema.SymbolState
	for sym, agg := range aggs {
		var b engine.Batch // its own: the states' candles live in it
		agg.Drain(&b, nowMs)
		if len(b.States) == 0 {
			r.log.Warn("no retained trade of the symbol: it starts afresh at its next trade", "symbol", sym, "partition", p)
			continue
		}
		out = append(out, b.States...)
	}
	return out, nil
}

// ErrBadStatePolicy is wrapped by Config.Validate for an unknown policy.
var ErrBadStatePolicy = errors.New("unknown bad-state policy")
