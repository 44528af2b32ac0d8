package processor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// At-least-once: the poll goroutine hands records to the shards while a
// flusher goroutine drains them on its own clock, delivers, and commits
// only what was acknowledged. Without transactions nothing can retract a
// record once written, so the flusher proves the member is still in the
// group before each flush (see proveMembership), and restore prefers, per
// symbol, the state record that reflects the most trades.

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
		// Back-pressure: while the shards hold MaxQueued records they have
		// not folded (their engines wait for the flusher to take their
		// final candles, the flusher for the broker), read no further.
		// Bounded, so that restarts are handled meanwhile.
		if queued, _ := r.backlog(); queued >= int64(r.cfg.MaxQueued) {
			select {
			case <-ctx.Done():
				return nil
			case <-r.progress:
			case <-time.After(500 * time.Millisecond):
			}
			continue
		}
		// Bounded, so that a restart requested by the flusher is handled
		// even when no trades arrive.
		pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		fetches := r.cl.PollRecords(pctx, 10_000)
		cancel()
		if fetches.IsClientClosed() {
			return nil
		}
		if err := r.fetchErrors(fetches); err != nil {
			r.cl.AllowRebalance()
			return err
		}
		wasBehind := behind
		behind = false
		fetches.EachPartition(func(ftp kgo.FetchTopicPartition) {
			if r.dispatch(ftp) {
				behind = true
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

// flush drains the given shards (all when only is nil), delivers their
// klines and dead letters, then their state records, and commits each
// shard's position once all of its records are acknowledged. all asks for
// full drains even of shards that are catching up (see shard.drain).
func (r *runtime) flush(ctx context.Context, cl *kgo.Client, only []int32, all bool) {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	r.flushLocked(ctx, cl, only, all)
}

func (r *runtime) flushLocked(ctx context.Context, cl *kgo.Client, only []int32, all bool) {
	flushStart := r.clock()
	defer func() { r.stats.LastFlush.Store(r.clock().UnixMilli()) }()
	targets := r.allShards()
	if only != nil {
		targets = slices.DeleteFunc(targets, func(s *shard) bool { return !slices.Contains(only, s.partition) })
	}
	// A shard whose delivery failed must not drain or commit again: its lost
	// records would be skipped. It waits, untouched, for its restart.
	targets = slices.DeleteFunc(targets, func(s *shard) bool { return s.ledger.broken })
	if len(targets) == 0 {
		return
	}
	// Nothing is written unless the group still counts us in: a member
	// that was frozen past its session timeout wakes up here with
	// partitions that have moved on.
	if err := r.proveMembership(ctx, cl); err != nil {
		r.stats.FlushesSkipped.Add(1)
		r.log.Warn("not flushing: cannot prove this member is still in the group", "err", err)
		return
	}

	kind := drainTick
	if all {
		kind = drainAll
	}
	results := r.deliverPieces(ctx, cl, targets, kind)
	if len(results) == 0 {
		return
	}
	r.stats.Flushes.Add(1)

	offsets := map[int32]kgo.EpochOffset{}
	dirty := 0
	for i := range results {
		d := &results[i]
		dirty += d.dirty
		r.stats.DirtyFlushed.Add(int64(d.dirty))
		r.obs.Lag(d.partition, d.lag)
		if d.err != nil {
			r.log.Error("delivery failed; restarting the shard from its last commit", "partition", d.partition, "err", d.err)
			d.shard.ledger.broken = true
			r.restartMu.Lock()
			r.restarts[d.partition] = true
			r.restartMu.Unlock()
			continue
		}
		if d.position >= 0 && d.position+1 > d.shard.ledger.committed {
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
			results[i].shard.ledger.committed = off.Offset
		}
	}
	r.stats.Commits.Add(1)
	r.stats.LastCommit.Store(r.clock().UnixMilli())
	r.obs.Committed(r.clock().Sub(commitStart))
}

// deliverPieces drains targets, delivers each answer's klines and dead
// letters and then its state, and asks again the shards that answered in
// part (a full drain comes in pieces of at most MaxPending records), until
// each has answered whole. It returns one result per shard, without its
// records: the last piece's position, the first delivery error, the dirty
// counts summed.
func (r *runtime) deliverPieces(ctx context.Context, cl *kgo.Client, targets []*shard, kind drainKind) []drained {
	var out []drained
	at := map[*shard]int{}
	for len(targets) > 0 {
		results := r.drainShards(targets, kind)
		r.produceAll(ctx, cl, results, pickFirst)
		// State only after its klines: a crash in between replays (klines
		// twice), it never skips a candle.
		r.produceAll(ctx, cl, results, pickStates)
		r.countDelivered(results, pickAll)
		targets = nil
		for _, d := range results {
			i, ok := at[d.shard]
			if !ok {
				i = len(out)
				at[d.shard] = i
				out = append(out, drained{partition: d.partition, shard: d.shard})
			}
			m := &out[i]
			m.position, m.lag = d.position, d.lag
			m.dirty += d.dirty
			if m.err == nil {
				m.err = d.err
			}
			if d.partial && d.err == nil {
				targets = append(targets, d.shard)
			}
		}
	}
	return out
}

// proveMembership sends the group coordinator a heartbeat with this
// member's id and generation: an answer without error (or "rebalance in
// progress", which still counts the member in; its revoke comes through
// the callbacks) shows that the group has not given our partitions to
// another member. The member's own heartbeats carry on meanwhile; when the
// group has expelled us they lead kgo to call onLost and rejoin.
func (r *runtime) proveMembership(ctx context.Context, cl *kgo.Client) error {
	member, gen := cl.GroupMetadata()
	if member == "" || gen < 0 {
		return errors.New("not joined")
	}
	req := kmsg.NewPtrHeartbeatRequest()
	req.Group, req.MemberID, req.Generation = r.cfg.Group, member, gen
	if r.cfg.InstanceID != "" {
		req.InstanceID = &r.cfg.InstanceID
	}
	hctx, cancel := context.WithTimeout(ctx, r.cfg.SessionTimeout/2)
	defer cancel()
	resp, err := req.RequestWith(hctx, cl)
	if err != nil {
		return err
	}
	if err := kerr.ErrorForCode(resp.ErrorCode); err != nil && !errors.Is(err, kerr.RebalanceInProgress) {
		return err
	}
	return nil
}

func (r *runtime) onAssigned(ctx context.Context, cl *kgo.Client, assigned map[string][]int32) {
	ps := assigned[r.cfg.TradesTopic]
	if len(ps) == 0 {
		return
	}
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	r.stats.Rebalances.Add(1)
	start := r.clock()
	// cl, not r.cl: the group may assign before Run has stored the client.
	shards, err := r.restoreRetrying(ctx, cl, ps)
	if err != nil {
		// Without its state a shard would count trades twice: stop the
		// member, so that another one (or a restart) takes over.
		r.fail(err)
		return
	}
	r.addShards(shards)
	r.log.Info("partitions assigned", "partitions", ps, "restore", r.clock().Sub(start).Round(time.Millisecond))
}

func (r *runtime) onRevoked(ctx context.Context, cl *kgo.Client, revoked map[string][]int32) {
	ps := revoked[r.cfg.TradesTopic]
	if len(ps) == 0 {
		return
	}
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	r.stats.Rebalances.Add(1)
	r.flushLocked(ctx, cl, ps, true)
	r.drop(ps)
	r.log.Info("partitions revoked", "partitions", ps)
}

// onLost waits for a flush in flight (flushMu), so that a lost shard is
// neither drained nor committed after the loss.
func (r *runtime) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	ps := lost[r.cfg.TradesTopic]
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	r.stats.Rebalances.Add(1)
	r.drop(ps)
	r.log.Warn("partitions lost; dropped without committing", "partitions", ps)
}

// handleRestarts rebuilds shards whose delivery failed: drop the shard,
// restore it from the state topic and rewind its trades to the last commit.
// It runs on the poll goroutine, under flushMu, so that no flush and no
// rebalance callback sees a shard half-restarted.
func (r *runtime) handleRestarts(ctx context.Context) {
	r.restartMu.Lock()
	pending := r.restarts
	r.restarts = map[int32]bool{}
	r.restartMu.Unlock()
	if len(pending) == 0 {
		return
	}
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	for p := range pending {
		old := r.shard(p)
		if old == nil {
			continue // revoked or lost meanwhile
		}
		committed := old.ledger.committed
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
		shards, err := r.restoreRetrying(ctx, r.cl, []int32{p})
		if err != nil {
			r.fail(err)
			return
		}
		s := shards[0]
		s.ledger.committed = committed
		r.cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{r.cfg.TradesTopic: {p: {Epoch: -1, Offset: max(committed, 0)}}})
		r.addShards(shards)
		r.stats.Restarts.Add(1)
		r.log.Warn("shard restarted from its last commit", "partition", p, "offset", committed)
	}
}
