package processor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Exactly-once: one goroutine polls, hands records to the shards, drains
// them and ends each flush's transaction, so that what the transaction
// commits (the offsets polled so far, see GroupTransactSession.End) is
// exactly what the drained klines and state reflect. Rebalance callbacks
// only queue what happened; the poll goroutine applies it between polls.

// catchUpInterval is how often a member that is behind (more records wait
// than it has read) ends a transaction: each one writes every changed
// open candle and state record, so fewer, larger ones replay faster.
const catchUpInterval = time.Second

type groupEventKind uint8

const (
	eventAssigned groupEventKind = iota
	eventRevoked
	eventLost
)

type groupEvent struct {
	kind groupEventKind
	ps   []int32
}

func (r *runtime) queue(kind groupEventKind, m map[string][]int32) {
	ps := m[r.cfg.TradesTopic]
	if len(ps) == 0 {
		return
	}
	r.stats.Rebalances.Add(1)
	r.eventsMu.Lock()
	r.events = append(r.events, groupEvent{kind: kind, ps: slices.Clone(ps)})
	r.eventsMu.Unlock()
}

func (r *runtime) queueAssigned(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	r.queue(eventAssigned, m)
}

func (r *runtime) queueRevoked(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	r.queue(eventRevoked, m)
}

func (r *runtime) queueLost(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	r.queue(eventLost, m)
}

// txnState is the poll goroutine's view of the transaction.
type txnState struct {
	open bool
	// folded is set when records were handed to shards since the last
	// commit: an abort then leaves the shards ahead of the committed state.
	folded bool
	// records produced into the open transaction so far.
	records int
	// failed: a delivery into the open transaction failed; it must abort.
	failed bool
	// delivered counts the transaction's records by topic, for the stats
	// once it commits.
	delivered tally
}

func (r *runtime) transactLoop(ctx context.Context) error {
	r.owned = map[int32]bool{}
	var tx txnState
	lastEnd := r.clock()
	behind := false
	var loopErr error
	for {
		if err := r.fatal.Load(); err != nil {
			loopErr = *err
			break
		}
		if ctx.Err() != nil {
			break
		}
		r.applyEvents(ctx, &tx)
		if !tx.open {
			if err := r.sess.Begin(); err != nil {
				// The producer cannot go on (the broker timed out a
				// transaction this member left open while frozen, and
				// fenced its epoch): Run starts a fresh session.
				loopErr = &producerError{err: err}
				break
			}
			tx.open = true
		}
		interval := r.cfg.FlushInterval
		if behind {
			interval = max(interval, catchUpInterval)
		}
		roomy := r.makeRoom(&tx)
		due := r.clock().Sub(lastEnd) >= interval || tx.records >= r.cfg.MaxTransactionRecords || tx.failed
		if wait := interval - r.clock().Sub(lastEnd); wait > 0 && !due && roomy {
			pctx, cancel := context.WithTimeout(ctx, wait)
			fetches := r.sess.PollRecords(pctx, 10_000)
			cancel()
			if fetches.IsClientClosed() {
				break
			}
			if err := r.fetchErrors(fetches); err != nil {
				loopErr = err
				break
			}
			// Assignments the poll waited for come before their records;
			// an abort here rewound the fetch positions, so these records
			// will come again and must not be folded now.
			if !r.applyEvents(ctx, &tx) {
				wasBehind := behind
				behind = false
				fetches.EachPartition(func(ftp kgo.FetchTopicPartition) {
					if len(ftp.Records) > 0 && r.shard(ftp.Partition) != nil {
						tx.folded = true
					}
					if r.dispatch(ftp) {
						behind = true
					}
				})
				// Just caught up: deliver and commit now, not at the tick.
				due = due || (wasBehind && !behind && fetches.NumRecords() > 0) || r.clock().Sub(lastEnd) >= interval
			}
		}
		if due && tx.open {
			r.commitTxn(ctx, r.cfg.DeliveryTimeout, &tx)
			lastEnd = r.clock()
		}
		r.sess.AllowRebalance()
	}
	if tx.open {
		if loopErr == nil {
			// SIGTERM: what was folded is delivered and committed, within
			// a bound: a member the group no longer counts in cannot
			// commit, and waiting for it would only delay the exit.
			r.commitTxn(ctx, min(r.cfg.DeliveryTimeout, shutdownBound), &tx)
		} else {
			ectx, cancel := context.WithTimeout(context.Background(), r.cfg.DeliveryTimeout)
			_, _ = r.sess.End(ectx, kgo.TryAbort)
			cancel()
		}
	}
	return loopErr
}

// applyEvents applies the queued rebalance events and reports whether it
// aborted the open transaction. A revoke or loss aborts: the session would
// abort the transaction at its end anyway (GroupTransactSession aborts
// after any revoke since Begin, kept partitions included), so it ends now,
// and every shard that folded records since the last commit is rebuilt
// from the committed state, because the rewound records come again.
func (r *runtime) applyEvents(ctx context.Context, tx *txnState) (aborted bool) {
	r.eventsMu.Lock()
	evs := r.events
	r.events = nil
	r.eventsMu.Unlock()
	if len(evs) == 0 {
		return false
	}
	var gone, added []int32
	for _, ev := range evs {
		for _, p := range ev.ps {
			switch ev.kind {
			case eventAssigned:
				r.owned[p] = true
				added = append(added, p)
			case eventRevoked, eventLost:
				delete(r.owned, p)
				gone = append(gone, p)
				added = slices.DeleteFunc(added, func(q int32) bool { return q == p })
			}
		}
	}
	if len(gone) > 0 {
		r.drop(gone)
		r.log.Info("partitions revoked or lost", "partitions", gone, "aborting_open_transaction", tx.open)
		if tx.open {
			ectx, cancel := context.WithTimeout(context.Background(), r.cfg.DeliveryTimeout)
			r.endTxn(ectx, kgo.TryAbort, tx)
			cancel()
			aborted = true
		}
	}
	if aborted && tx.folded {
		r.rebuild(ctx)
		tx.folded = false
		return true
	}
	if len(added) > 0 {
		start := r.clock()
		shards, err := r.restoreRetrying(ctx, r.cl, added)
		if err != nil {
			r.fail(err)
			return aborted
		}
		r.addShards(shards)
		r.log.Info("partitions assigned", "partitions", added, "restore", r.clock().Sub(start).Round(time.Millisecond))
	}
	return aborted
}

// rebuild replaces every shard by one restored from the committed state.
func (r *runtime) rebuild(ctx context.Context) {
	r.stopAll()
	ps := make([]int32, 0, len(r.owned))
	for p := range r.owned {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	if len(ps) == 0 {
		return
	}
	shards, err := r.restoreRetrying(ctx, r.cl, ps)
	if err != nil {
		r.fail(err)
		return
	}
	r.addShards(shards)
	r.stats.Restarts.Add(int64(len(shards)))
	r.log.Info("shards rebuilt from the committed state", "partitions", ps)
}

// shutdownBound bounds the last transaction of a member told to stop.
const shutdownBound = 30 * time.Second

// makeRoom is exactly-once's back-pressure, and reports whether the shards
// have room to be given more. A backlogged shard folds nothing until its
// final candles are taken: they go into the open transaction now, and
// nothing more is read until the shards have room. The transaction grows
// (up to MaxTransactionRecords), the member's memory does not.
func (r *runtime) makeRoom(tx *txnState) bool {
	if queued, backlogged := r.backlog(); backlogged || queued >= int64(r.cfg.MaxQueued) {
		r.produceFinals(tx)
		return false
	}
	return true
}

// produceFinals drains the final candles of every shard into the open
// transaction and waits for the broker to acknowledge them, which makes
// room in backlogged engines.
func (r *runtime) produceFinals(tx *txnState) {
	results := r.drainShards(r.allShards(), drainFinals)
	ectx, cancel := context.WithTimeout(context.Background(), r.cfg.DeliveryTimeout)
	defer cancel()
	r.produceAll(ectx, r.cl, results, pickFirst)
	r.account(tx, results, pickFirst)
}

// account adds a drain's delivered records to the open transaction's.
func (r *runtime) account(tx *txnState, results []drained, pick func(*drained) [][]*kgo.Record) {
	for i := range results {
		d := &results[i]
		if d.err != nil {
			r.log.Error("delivery failed; aborting the transaction", "partition", d.partition, "err", d.err)
			tx.failed = true
		}
		// Drained records changed the shards (finals taken, versions):
		// an abort must rebuild them.
		tx.folded = tx.folded || len(d.first)+len(d.states) > 0
		tx.records += len(d.first) + len(d.states)
		tx.delivered.add(r, d, pick)
	}
}

// commitTxn drains every shard into the open transaction and ends it with
// a commit, within timeout; when it aborts instead, the shards are rebuilt
// (unless ctx, the member's, is done). End commits the offsets as polled,
// so every record handed to a shard must be folded first: a shard still
// holding some answers with its final candles only (partial) and is asked
// again once they are delivered, which makes room for it to fold more.
func (r *runtime) commitTxn(ctx context.Context, timeout time.Duration, tx *txnState) {
	start := r.clock()
	defer func() { r.stats.LastFlush.Store(r.clock().UnixMilli()) }()
	ectx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	dirty := 0
	targets := r.allShards()
	if len(targets) > 0 {
		r.stats.Flushes.Add(1)
	}
	for len(targets) > 0 && !tx.failed {
		results := r.drainShards(targets, drainTxn)
		r.produceAll(ectx, r.cl, results, pickAll)
		r.account(tx, results, pickAll)
		targets = targets[:0]
		for i := range results {
			d := &results[i]
			dirty += d.dirty
			r.stats.DirtyFlushed.Add(int64(d.dirty))
			if d.partial {
				targets = append(targets, d.shard)
			} else {
				r.obs.Lag(d.partition, d.lag)
			}
		}
	}
	how := kgo.TryCommit
	if tx.failed {
		how = kgo.TryAbort
	}
	r.obs.Flushed(r.clock().Sub(start), dirty)
	commitStart := r.clock()
	// End waits for a heartbeat of the current group session. When that
	// session has ended (a broker restart, an expulsion), the group can
	// only move on through the revoke or lost callback, which
	// BlockRebalanceOnPoll holds until AllowRebalance: without this, End
	// and the callback would wait for each other until End's deadline.
	// Nothing is polled before End, and the callbacks only queue events;
	// a revoke or loss now makes End abort, as it should.
	r.sess.AllowRebalance()
	committed := r.endTxn(ectx, how, tx)
	if committed {
		tx.delivered.count(r.stats)
		r.stats.Commits.Add(1)
		r.stats.LastCommit.Store(r.clock().UnixMilli())
		r.obs.Committed(r.clock().Sub(commitStart))
	} else if tx.folded && ctx.Err() == nil {
		// The drains changed the shards (finals, versions, dirty sets) and
		// the transaction that carried those changes is gone.
		r.rebuild(ctx)
	}
	tx.folded, tx.failed, tx.records, tx.delivered = false, false, 0, tally{}
}

// endTxn ends the open transaction and reports whether it committed. An
// error from End that fences this member (another process took its
// transactional id) ends the member; any other leaves the transaction
// aborted, the fetch positions rewound, and the member going on.
func (r *runtime) endTxn(ctx context.Context, how kgo.TransactionEndTry, tx *txnState) bool {
	committed, err := r.sess.End(ctx, how)
	tx.open = false
	switch {
	case errors.Is(err, kerr.FencedInstanceID), errors.Is(err, kerr.TransactionalIDAuthorizationFailed):
		r.fail(fmt.Errorf("processor: transactional id %q: %w (is another process running with the same --instance-id?)", r.txnID, err))
		return false
	case err != nil:
		// A fenced or timed-out producer shows at the next Begin.
		r.log.Error("transaction failed; rebuilding from the last commit", "err", err)
	case !committed && how == kgo.TryCommit:
		// Expected at every rebalance; a failure is logged above.
		r.log.Info("transaction aborted: the group rebalanced or this member lost its place; rebuilding from the last commit")
	}
	if !committed {
		r.stats.Aborts.Add(1)
	}
	return committed && err == nil
}

// producerError is a transactional producer that cannot begin again.
type producerError struct{ err error }

func (e *producerError) Error() string {
	return "processor: transactional producer: " + e.err.Error()
}
func (e *producerError) Unwrap() error { return e.err }

func (r *runtime) allShards() []*shard {
	r.shardsMu.Lock()
	defer r.shardsMu.Unlock()
	out := make([]*shard, 0, len(r.shards))
	for _, s := range r.shards {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b *shard) int { return int(a.partition - b.partition) })
	return out
}
