package processor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
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

// atLeastOnce is a member under the at-least-once guarantee. Who owns
// what, besides the core:
//   - the poll goroutine polls, dispatches, and rebuilds broken shards
//     (restarts);
//   - the flusher goroutine drains, delivers and commits;
//   - flushMu serializes flushes (the periodic one, a revoke's, the final
//     one), the loss of partitions and shard rebuilds, and guards
//     committed; the rebalance callbacks (on the poll goroutine, between
//     polls) change the registry only while holding it, so no flush sees a
//     half-made change.
type atLeastOnce struct {
	*core
	flushMu sync.Mutex
	// committed is the next offset committed per partition, absent before
	// this process's first commit of it.
	committed map[int32]int64
	// restarts holds the partitions whose shard must be rebuilt; the
	// flusher adds, the poll loop takes. A set: it can neither block the
	// flusher nor lose a request.
	restartMu sync.Mutex
	restarts  map[int32]bool
	// kick asks the flusher to flush now instead of at its next tick (a
	// shard is backlogged, or the poll loop just caught up).
	kick chan struct{}
	// progress is signalled by a shard that folded held records or became
	// backlogged: a poll loop waiting for room looks again.
	progress chan struct{}
}

func newAtLeastOnce(c *core) *atLeastOnce {
	a := &atLeastOnce{core: c, committed: map[int32]int64{}, restarts: map[int32]bool{},
		kick: make(chan struct{}, 1), progress: make(chan struct{}, 1)}
	c.notify = func(backlogged bool) {
		if backlogged {
			signal(a.kick) // drain it at once
		}
		signal(a.progress)
	}
	return a
}

// run polls in this goroutine and flushes in another until ctx ends, then
// flushes everything once more, leaves the group and stops its shards.
func (a *atLeastOnce) run(ctx context.Context, memberOpts []kgo.Opt) error {
	cl, err := kgo.NewClient(append(memberOpts,
		kgo.OnPartitionsAssigned(a.onAssigned),
		kgo.OnPartitionsRevoked(a.onRevoked),
		kgo.OnPartitionsLost(a.onLost))...)
	if err != nil {
		return fmt.Errorf("processor: kafka client: %w", err)
	}
	a.cl = cl
	flushDone := make(chan struct{})
	flushCtx, stopFlusher := context.WithCancel(context.Background())
	go func() {
		defer close(flushDone)
		a.flushLoop(flushCtx)
	}()

	pollErr := a.pollLoop(ctx)

	stopFlusher()
	<-flushDone
	// Final flush of everything, then leave: Close revokes (our callback
	// flushes again, finding nothing) and leaves the group.
	shutdownCtx, cancel := context.WithTimeout(context.Background(), a.cfg.DeliveryTimeout)
	defer cancel()
	a.flush(shutdownCtx, cl, nil, true)
	cl.Close()
	a.stopAll()
	a.log.Info("member stopped")
	return pollErr
}

// signal sends on a channel of capacity one without blocking: a signal
// already pending says the same.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// pollLoop fetches trades and hands each partition's records to its shard.
// It is the only goroutine that polls; with BlockRebalanceOnPoll the
// rebalance callbacks run only between its iterations.
func (a *atLeastOnce) pollLoop(ctx context.Context) error {
	behind := false
	for {
		if ctx.Err() != nil {
			return nil
		}
		if err := a.fatal.Load(); err != nil {
			return *err
		}
		a.handleRestarts(ctx)
		// Back-pressure: while the shards hold MaxQueued records they have
		// not folded (their engines wait for the flusher to take their
		// final candles, the flusher for the broker), read no further.
		// Bounded, so that restarts are handled meanwhile.
		if queued, _ := a.backlog(); queued >= int64(a.cfg.MaxQueued) {
			select {
			case <-ctx.Done():
				return nil
			case <-a.progress:
			case <-time.After(500 * time.Millisecond):
			}
			continue
		}
		// Bounded, so that a restart requested by the flusher is handled
		// even when no trades arrive.
		pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		fetches := a.cl.PollRecords(pctx, 10_000)
		cancel()
		if fetches.IsClientClosed() {
			return nil
		}
		if err := a.fetchErrors(fetches); err != nil {
			a.cl.AllowRebalance()
			return err
		}
		wasBehind := behind
		behind = false
		fetches.EachPartition(func(ftp kgo.FetchTopicPartition) {
			if a.dispatch(ftp) {
				behind = true
			}
		})
		a.cl.AllowRebalance()
		if wasBehind && !behind && len(fetches.Records()) > 0 {
			// Just caught up (the end of a replay or of a backlog): deliver
			// and commit now rather than at the next tick. A live stream
			// stays caught up, so its flushes keep to the interval.
			signal(a.kick)
		}
	}
}

func (a *atLeastOnce) flushLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.kick:
		}
		// A flush runs to its end under its own deadline: cancelling it
		// half-way would fail deliveries that were about to succeed.
		fctx, cancel := context.WithTimeout(context.Background(), a.cfg.DeliveryTimeout)
		a.flush(fctx, a.cl, nil, false)
		cancel()
	}
}

// flush drains the given shards (all when only is nil), delivers their
// klines and dead letters, then their state records, and commits each
// shard's position once all of its records are acknowledged. all asks for
// full drains even of shards that are catching up (see shard.drain).
func (a *atLeastOnce) flush(ctx context.Context, cl *kgo.Client, only []int32, all bool) {
	a.flushMu.Lock()
	defer a.flushMu.Unlock()
	a.flushLocked(ctx, cl, only, all)
}

func (a *atLeastOnce) flushLocked(ctx context.Context, cl *kgo.Client, only []int32, all bool) {
	flushStart := a.clock()
	dirty := 0
	defer func() { a.obs.Flushed(a.clock().Sub(flushStart), dirty) }()
	targets := a.allShards()
	if only != nil {
		targets = slices.DeleteFunc(targets, func(s *shard) bool { return !slices.Contains(only, s.partition) })
	}
	// A shard whose delivery failed must not drain or commit again: its lost
	// records would be skipped. It waits, untouched, for its restart.
	targets = slices.DeleteFunc(targets, func(s *shard) bool { return s.State() == shardBroken })
	if len(targets) == 0 {
		return
	}
	// Nothing is written unless the group still counts us in: a member
	// that was frozen past its session timeout wakes up here with
	// partitions that have moved on.
	if err := a.proveMembership(ctx, cl); err != nil {
		a.stats.FlushesSkipped.Add(1)
		a.log.Warn("not flushing: cannot prove this member is still in the group", "err", err)
		return
	}

	kind := drainTick
	if all {
		kind = drainAll
	}
	results := a.deliverPieces(ctx, cl, targets, kind)
	offsets := map[int32]kgo.EpochOffset{}
	for i := range results {
		d := &results[i]
		dirty += d.dirty
		a.obs.Lag(d.partition, d.lag)
		if d.err != nil {
			a.log.Error("delivery failed; restarting the shard from its last commit", "partition", d.partition, "err", d.err)
			d.shard.markBroken()
			a.restartMu.Lock()
			a.restarts[d.partition] = true
			a.restartMu.Unlock()
			continue
		}
		if done, ok := a.committed[d.partition]; d.position >= 0 && (!ok || d.position+1 > done) {
			offsets[d.partition] = kgo.EpochOffset{Epoch: -1, Offset: d.position + 1}
		}
	}
	if len(offsets) == 0 {
		return
	}
	if a.commit(ctx, cl, offsets) {
		for p, off := range offsets {
			a.committed[p] = off.Offset
		}
	}
}

// commit commits offsets of the trades topic and reports whether the
// group took them all.
func (a *atLeastOnce) commit(ctx context.Context, cl *kgo.Client, offsets map[int32]kgo.EpochOffset) bool {
	commitStart := a.clock()
	var commitErr error
	cl.CommitOffsetsSync(ctx, map[string]map[int32]kgo.EpochOffset{a.cfg.TradesTopic: offsets},
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
		a.log.Warn("commit failed", "err", commitErr)
		return false
	}
	a.obs.Committed(a.clock().Sub(commitStart))
	return true
}

// deliverPieces drains targets, delivers each answer's klines and dead
// letters and then its state, and asks again the shards that answered in
// part (a full drain comes in pieces of at most MaxPending records), until
// each has answered whole. It returns one result per shard, without its
// records: the last piece's position, the first delivery error, the dirty
// counts summed.
func (a *atLeastOnce) deliverPieces(ctx context.Context, cl *kgo.Client, targets []*shard, kind drainKind) []drained {
	var out []drained
	at := map[*shard]int{}
	for len(targets) > 0 {
		results := drainShards(targets, kind)
		produceAll(ctx, cl, results, pickFirst)
		// State only after its klines: a crash in between replays (klines
		// twice), it never skips a candle.
		produceAll(ctx, cl, results, pickStates)
		a.countDelivered(results, pickAll)
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
func (a *atLeastOnce) proveMembership(ctx context.Context, cl *kgo.Client) error {
	member, gen := cl.GroupMetadata()
	if member == "" || gen < 0 {
		return errors.New("not joined")
	}
	req := kmsg.NewPtrHeartbeatRequest()
	req.Group, req.MemberID, req.Generation = a.cfg.Group, member, gen
	if a.cfg.InstanceID != "" {
		req.InstanceID = &a.cfg.InstanceID
	}
	hctx, cancel := context.WithTimeout(ctx, a.cfg.SessionTimeout/2)
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

func (a *atLeastOnce) onAssigned(ctx context.Context, cl *kgo.Client, assigned map[string][]int32) {
	ps := assigned[a.cfg.TradesTopic]
	if len(ps) == 0 {
		return
	}
	a.flushMu.Lock()
	defer a.flushMu.Unlock()
	a.stats.Rebalances.Add(1)
	start := a.clock()
	// cl, not a.cl: the group may assign before Run has stored the client.
	shards, err := a.restoreRetrying(ctx, cl, ps)
	if err != nil {
		// Without its state a shard would count trades twice: stop the
		// member, so that another one (or a restart) takes over.
		a.fail(err)
		return
	}
	a.addShards(shards)
	a.log.Info("partitions assigned", "partitions", ps, "restore", a.clock().Sub(start).Round(time.Millisecond))
}

func (a *atLeastOnce) onRevoked(ctx context.Context, cl *kgo.Client, revoked map[string][]int32) {
	ps := revoked[a.cfg.TradesTopic]
	if len(ps) == 0 {
		return
	}
	a.flushMu.Lock()
	defer a.flushMu.Unlock()
	a.stats.Rebalances.Add(1)
	a.flushLocked(ctx, cl, ps, true)
	a.drop(ps)
	for _, p := range ps {
		delete(a.committed, p)
	}
	a.log.Info("partitions revoked", "partitions", ps)
}

// onLost waits for a flush in flight (flushMu), so that a lost shard is
// neither drained nor committed after the loss.
func (a *atLeastOnce) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	ps := lost[a.cfg.TradesTopic]
	a.flushMu.Lock()
	defer a.flushMu.Unlock()
	a.stats.Rebalances.Add(1)
	a.drop(ps)
	for _, p := range ps {
		delete(a.committed, p)
	}
	a.log.Warn("partitions lost; dropped without committing", "partitions", ps)
}

// handleRestarts rebuilds shards whose delivery failed: drop the shard,
// restore it from the state topic and rewind its trades to the last commit.
// It runs on the poll goroutine, under flushMu, so that no flush and no
// rebalance callback sees a shard half-restarted.
func (a *atLeastOnce) handleRestarts(ctx context.Context) {
	a.restartMu.Lock()
	pending := a.restarts
	a.restarts = map[int32]bool{}
	a.restartMu.Unlock()
	if len(pending) == 0 {
		return
	}
	a.flushMu.Lock()
	defer a.flushMu.Unlock()
	for p := range pending {
		if a.shard(p) == nil {
			continue // revoked or lost meanwhile
		}
		committed, ok := a.committed[p]
		if !ok {
			// Nothing committed by this process yet: resume from the
			// group's commit, made by an earlier owner, if there is one.
			if offs, err := kadm.NewClient(a.cl).FetchOffsets(ctx, a.cfg.Group); err == nil {
				if o, ok := offs.Lookup(a.cfg.TradesTopic, p); ok && o.Err == nil {
					committed = o.At
					a.committed[p] = committed
				}
			}
		}
		a.drop([]int32{p})
		shards, err := a.restoreRetrying(ctx, a.cl, []int32{p})
		if err != nil {
			a.fail(err)
			return
		}
		a.cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{a.cfg.TradesTopic: {p: {Epoch: -1, Offset: max(committed, 0)}}})
		a.addShards(shards)
		a.stats.Restarts.Add(1)
		a.log.Warn("shard restarted from its last commit", "partition", p, "offset", committed)
	}
}
