package processor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/klagg/klagg/hint"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Exactly-once: one goroutine polls, hands records to the shards, drains
// them and ends each flush's transaction, so that what the transaction
// commits (the offsets polled so far, see GroupTransactSession.End) is
// exactly what the drained klines and state reflect. Rebalance callbacks
// only queue what happened; the poll goroutine applies it between polls.

// exactlyOnce is a member under the exactly-once guarantee. Its one
// goroutine polls, applies rebalance events, dispatches, drains and ends
// transactions; the shards' goroutines fold. The rebalance callbacks run
// on the client's goroutines and only queue events (eventsMu).
type exactlyOnce struct {
	*core
	txnID    string
	sess     *kgo.GroupTransactSession
	eventsMu sync.Mutex
	events   []groupEvent // rebalance callbacks queue, the poll goroutine applies
	// owned is what the group gave this member, for a rebuild after an
	// abort; the poll goroutine's alone.
	owned map[int32]bool
	// progress is signalled by a shard that folded held records or became
	// backlogged: a poll loop waiting for room looks again.
	progress chan struct{}
}

func newExactlyOnce(c *core, txnID string) *exactlyOnce {
	e := &exactlyOnce{core: c, txnID: txnID, progress: make(chan struct{}, 1)}
	c.notify = func(bool) { signal(e.progress) }
	return e
}

// run runs exactly-once sessions until ctx ends or one fails for good. A
// session whose producer was fenced (the broker aborted a transaction this
// member left open past the transaction timeout, say while frozen) ends; a
// new one rejoins the group with the same transactional id. With an
// instance id, three such ends within ten minutes mean another process
// holds the id, and Run stops.
func (e *exactlyOnce) run(ctx context.Context, memberOpts []kgo.Opt) error {
	memberOpts = append(memberOpts,
		kgo.TransactionalID(e.txnID),
		kgo.TransactionTimeout(e.cfg.TransactionTimeout),
		kgo.OnPartitionsAssigned(e.queueAssigned),
		kgo.OnPartitionsRevoked(e.queueRevoked),
		kgo.OnPartitionsLost(e.queueLost),
	)
	var recent []time.Time
	for {
		e.eventsMu.Lock()
		e.events = nil // the previous session's; its callbacks are done
		e.eventsMu.Unlock()
		sess, err := kgo.NewGroupTransactSession(memberOpts...)
		if err != nil {
			return fmt.Errorf("processor: kafka client: %w", err)
		}
		e.sess, e.cl = sess, sess.Client()
		loopErr := e.transactLoop(ctx)
		sess.Close()
		e.stopAll()
		var pe *producerError
		if !errors.As(loopErr, &pe) || ctx.Err() != nil {
			e.log.Info("member stopped")
			return loopErr
		}
		now := e.clock()
		recent = append(slices.DeleteFunc(recent, func(t time.Time) bool { return now.Sub(t) > 10*time.Minute }), now)
		if e.cfg.InstanceID != "" && len(recent) >= 3 {
			return &hint.Error{Err: fmt.Errorf("%w (fenced %d times in 10 minutes with instance id %q)", loopErr, len(recent), e.cfg.InstanceID),
				Setting: "InstanceID", Fix: "is another process running with the same %s?"}
		}
		e.log.Warn("transactional producer fenced; rejoining with a fresh session", "err", pe.err)
	}
}

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

func (e *exactlyOnce) queue(kind groupEventKind, m map[string][]int32) {
	ps := m[e.cfg.TradesTopic]
	if len(ps) == 0 {
		return
	}
	e.stats.Rebalances.Add(1)
	e.eventsMu.Lock()
	e.events = append(e.events, groupEvent{kind: kind, ps: slices.Clone(ps)})
	e.eventsMu.Unlock()
}

func (e *exactlyOnce) queueAssigned(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	e.queue(eventAssigned, m)
}

func (e *exactlyOnce) queueRevoked(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	e.queue(eventRevoked, m)
}

func (e *exactlyOnce) queueLost(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	e.queue(eventLost, m)
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
	// finals are final candles produced into the transaction whose
	// acknowledgements are not all in: the shards fold on meanwhile, and
	// the next drain or End waits for them first (settleFinals).
	finals *delivery
	// commitBy is when the transaction must have committed, if at all
	// (see commitDeadline).
	commitBy time.Time
}

// commitDeadline is how long after Begin a transaction may still try to
// commit: well inside the transaction timeout, after which the
// coordinator aborts it on its own. Between its offset commit and its end
// marker the transaction's offsets are pending on the group, and members
// taking up those partitions wait (RequireStable); End waits in that window
// for a heartbeat, up to its context. A transaction past the deadline
// aborts instead.
func commitDeadline(timeout time.Duration) time.Duration { return timeout * 4 / 5 }

// deadline is timeout from now, or the transaction's commit deadline if
// that comes first.
func (tx *txnState) deadline(timeout time.Duration) time.Time {
	if d := time.Now().Add(timeout); d.Before(tx.commitBy) {
		return d
	}
	return tx.commitBy
}

func (e *exactlyOnce) transactLoop(ctx context.Context) error {
	e.owned = map[int32]bool{}
	var tx txnState
	lastFlush := e.clock()
	behind := false
	var loopErr error
	for {
		if err := e.fatal.Load(); err != nil {
			loopErr = *err
			break
		}
		if ctx.Err() != nil {
			break
		}
		e.applyEvents(ctx, &tx)
		if !tx.open {
			if err := e.sess.Begin(); err != nil {
				// The producer cannot go on (the broker timed out a
				// transaction this member left open while frozen, and
				// fenced its epoch): Run starts a fresh session.
				loopErr = &producerError{err: err}
				break
			}
			tx.open = true
			tx.commitBy = time.Now().Add(commitDeadline(e.cfg.TransactionTimeout))
		}
		interval := e.cfg.FlushInterval
		if behind {
			interval = max(interval, min(catchUpInterval, e.cfg.TransactionTimeout/4))
		}
		roomy := e.makeRoom(ctx, &tx, lastFlush.Add(interval))
		due := e.clock().Sub(lastFlush) >= interval || tx.records >= e.cfg.MaxTransactionRecords || tx.failed
		if wait := interval - e.clock().Sub(lastFlush); wait > 0 && !due && roomy {
			caughtUp, stop, err := e.pollOnce(ctx, &tx, wait, &behind)
			if stop {
				loopErr = err
				break
			}
			// Just caught up: deliver and commit now, not at the tick.
			due = caughtUp || e.clock().Sub(lastFlush) >= interval
		}
		if due && tx.open {
			start := e.clock()
			e.commitTxn(ctx, e.cfg.DeliveryTimeout, &tx)
			lastFlush = e.flushedAt(start, interval)
		}
		e.sess.AllowRebalance()
	}
	e.finish(ctx, &tx, loopErr)
	return loopErr
}

// pollOnce polls for at most wait, applies the rebalance events the poll
// waited for, and hands the records to the shards. It reports whether the
// member just caught up, and stop (with the error that ends the member, or
// nil for a closed client) when the loop must end.
func (e *exactlyOnce) pollOnce(ctx context.Context, tx *txnState, wait time.Duration, behind *bool) (caughtUp, stop bool, err error) {
	pctx, cancel := context.WithTimeout(ctx, wait)
	fetches := e.sess.PollRecords(pctx, 10_000)
	cancel()
	if fetches.IsClientClosed() {
		return false, true, nil
	}
	if err := e.fetchErrors(fetches); err != nil {
		return false, true, err
	}
	// Assignments the poll waited for come before their records; an abort
	// here rewound the fetch positions, so these records will come again
	// and must not be folded now.
	if e.applyEvents(ctx, tx) {
		return false, false, nil
	}
	wasBehind := *behind
	*behind = false
	fetches.EachPartition(func(ftp kgo.FetchTopicPartition) {
		if len(ftp.Records) > 0 && e.shard(ftp.Partition) != nil {
			tx.folded = true
		}
		if e.dispatch(ftp) {
			*behind = true
		}
	})
	return wasBehind && !*behind && fetches.NumRecords() > 0, false, nil
}

// flushedAt is when the flush that started at start counts as made, for
// timing the next. Flushes start an interval apart, as at-least-once's
// ticker does (timed from the end of the last, a trade that arrived just
// after a drain would wait for that commit too), but leave at least half
// an interval to poll: a commit as long as the interval (one that waits
// for the group) must not starve the poll that lets the group move on.
func (e *exactlyOnce) flushedAt(start time.Time, interval time.Duration) time.Time {
	if least := e.clock().Add(-interval / 2); least.After(start) {
		return least
	}
	return start
}

// finish ends the transaction still open when the loop ends: committed on
// SIGTERM (what was folded is delivered, within a bound: a member the
// group no longer counts in cannot commit, and waiting for it would only
// delay the exit), aborted when the member failed.
func (e *exactlyOnce) finish(ctx context.Context, tx *txnState, loopErr error) {
	if !tx.open {
		return
	}
	if loopErr == nil {
		e.commitTxn(ctx, min(e.cfg.DeliveryTimeout, shutdownBound), tx)
		return
	}
	e.settleFinals(tx)
	ectx, cancel := context.WithTimeout(context.Background(), e.cfg.DeliveryTimeout)
	_, _ = e.sess.End(ectx, kgo.TryAbort)
	cancel()
}

// applyEvents applies the queued rebalance events and reports whether it
// aborted the open transaction. A revoke or loss aborts: the session would
// abort the transaction at its end anyway (GroupTransactSession aborts
// after any revoke since Begin, kept partitions included), so it ends now,
// and every shard that folded records since the last commit is rebuilt
// from the committed state, because the rewound records come again.
func (e *exactlyOnce) applyEvents(ctx context.Context, tx *txnState) (aborted bool) {
	e.eventsMu.Lock()
	evs := e.events
	e.events = nil
	e.eventsMu.Unlock()
	if len(evs) == 0 {
		return false
	}
	var gone, added []int32
	for _, ev := range evs {
		for _, p := range ev.ps {
			switch ev.kind {
			case eventAssigned:
				e.owned[p] = true
				added = append(added, p)
			case eventRevoked, eventLost:
				delete(e.owned, p)
				gone = append(gone, p)
				added = slices.DeleteFunc(added, func(q int32) bool { return q == p })
			}
		}
	}
	if len(gone) > 0 {
		e.drop(gone)
		e.log.Info("partitions revoked or lost", "partitions", gone, "aborting_open_transaction", tx.open)
		if tx.open {
			ectx, cancel := context.WithTimeout(context.Background(), e.cfg.DeliveryTimeout)
			e.endTxn(ectx, kgo.TryAbort, tx)
			cancel()
			aborted = true
		}
	}
	if aborted && tx.folded {
		e.rebuild(ctx)
		tx.folded = false
		return true
	}
	if len(added) > 0 {
		start := e.clock()
		shards, err := e.restoreRetrying(ctx, e.cl, added)
		if err != nil {
			e.fail(err)
			return aborted
		}
		e.addShards(shards)
		e.log.Info("partitions assigned", "partitions", added, "restore", e.clock().Sub(start).Round(time.Millisecond))
	}
	return aborted
}

// rebuild replaces every shard by one restored from the committed state.
func (e *exactlyOnce) rebuild(ctx context.Context) {
	e.stopAll()
	ps := make([]int32, 0, len(e.owned))
	for p := range e.owned {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	if len(ps) == 0 {
		return
	}
	shards, err := e.restoreRetrying(ctx, e.cl, ps)
	if err != nil {
		e.fail(err)
		return
	}
	e.addShards(shards)
	e.stats.Restarts.Add(int64(len(shards)))
	e.log.Info("shards rebuilt from the committed state", "partitions", ps)
}

// shutdownBound bounds the last transaction of a member told to stop.
const shutdownBound = 30 * time.Second

// makeRoom is exactly-once's back-pressure, and reports whether the shards
// have room to be given more. A backlogged shard folds nothing until its
// final candles are taken: they are drained into the open transaction and
// produced, and while the broker acknowledges them the shards fold what
// they hold and the loop polls on. Until those acknowledgements are in, a
// shard backlogged again waits (a drain reuses the memory of the records
// it drained before), and so does the loop, until until at the latest,
// when it must end the transaction. The transaction grows (up to
// MaxTransactionRecords), the member's memory does not.
func (e *exactlyOnce) makeRoom(ctx context.Context, tx *txnState, until time.Time) bool {
	queued, backlogged := e.backlog()
	if backlogged && tx.finalsSettled() {
		e.produceFinals(tx)
		backlogged = false
	}
	if !backlogged && queued < int64(e.cfg.MaxQueued) {
		return true
	}
	// A backlogged shard waits for the acknowledgements, nothing else; a
	// full queue for the shards to fold.
	wake := e.progress
	if backlogged {
		wake = tx.finals.done
	}
	if wait := until.Sub(e.clock()); wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-wake:
		case <-t.C:
		}
	}
	return false
}

// finalsSettled reports whether no final candles of the transaction wait
// for acknowledgements.
func (tx *txnState) finalsSettled() bool {
	if tx.finals == nil {
		return true
	}
	select {
	case <-tx.finals.done:
		return true
	default:
		return false
	}
}

// produceFinals drains the final candles of every shard into the open
// transaction and hands them to the client without waiting, which makes
// room in backlogged engines. The finals produced before are settled first.
func (e *exactlyOnce) produceFinals(tx *txnState) {
	e.settleFinals(tx)
	results := drainShards(e.allShards(), drainFinals)
	// Its own deadline, not the loop's context: a cancelled produce would
	// fail records about to be acknowledged; End or an abort settles them.
	// Past the transaction's commit deadline they are of no use.
	ctx, cancel := context.WithDeadline(context.Background(), tx.deadline(e.cfg.DeliveryTimeout))
	tx.finals = produce(ctx, e.cl, results, pickFirst)
	go func(done <-chan struct{}) { <-done; cancel() }(tx.finals.done)
}

// settleFinals waits for the acknowledgements of the final candles in
// flight, if any, and adds them to the transaction's.
func (e *exactlyOnce) settleFinals(tx *txnState) {
	if tx.finals == nil {
		return
	}
	<-tx.finals.done
	e.account(tx, tx.finals.results, pickFirst)
	tx.finals = nil
}

// account adds a drain's delivered records to the open transaction's.
func (e *exactlyOnce) account(tx *txnState, results []drained, pick func(*drained) [][]*kgo.Record) {
	for i := range results {
		d := &results[i]
		if d.err != nil {
			e.log.Error("delivery failed; aborting the transaction", "partition", d.partition, "err", d.err)
			tx.failed = true
		}
		// Drained records changed the shards (finals taken, versions):
		// an abort must rebuild them.
		tx.folded = tx.folded || len(d.first)+len(d.states) > 0
		tx.records += len(d.first) + len(d.states)
		tx.delivered.add(&e.cfg, d, pick)
	}
}

// commitTxn drains every shard into the open transaction and ends it with
// a commit, within timeout; when it aborts instead, the shards are rebuilt
// (unless ctx, the member's, is done); when it holds nothing, it stays
// open (keepOpen). End commits the offsets as polled, so every record
// handed to a shard must be folded first: a shard still holding some
// answers with its final candles only (partial) and is asked again once
// they are delivered, which makes room for it to fold more.
func (e *exactlyOnce) commitTxn(ctx context.Context, timeout time.Duration, tx *txnState) {
	start := e.clock()
	e.settleFinals(tx)
	ectx, cancel := context.WithDeadline(context.Background(), tx.deadline(timeout))
	defer cancel()
	dirty := 0
	targets := e.allShards()
	for len(targets) > 0 && !tx.failed {
		results := drainShards(targets, drainTxn)
		produceAll(ectx, e.cl, results, pickAll)
		e.account(tx, results, pickAll)
		targets = targets[:0]
		for i := range results {
			d := &results[i]
			dirty += d.dirty
			if d.partial {
				targets = append(targets, d.shard)
			} else {
				e.obs.Lag(d.partition, d.lag)
			}
		}
	}
	how := kgo.TryCommit
	if tx.failed || ectx.Err() != nil {
		// Aborting sends no offsets: it may take the whole timeout.
		how = kgo.TryAbort
		cancel()
		ectx, cancel = context.WithTimeout(context.Background(), timeout)
		defer cancel()
	}
	e.obs.Flushed(e.clock().Sub(start), dirty)
	if how == kgo.TryCommit && tx.records == 0 && len(e.sess.Client().UncommittedOffsets()) == 0 {
		tx.keepOpen(e.cfg.TransactionTimeout)
		return
	}
	commitStart := e.clock()
	// End waits for a heartbeat of the current group session. When that
	// session has ended (a broker restart, an expulsion), the group can
	// only move on through the revoke or lost callback, which
	// BlockRebalanceOnPoll holds until AllowRebalance: without this, End
	// and the callback would wait for each other until End's deadline.
	// Nothing is polled before End, and the callbacks only queue events;
	// a revoke or loss now makes End abort, as it should.
	e.sess.AllowRebalance()
	committed := e.endTxn(ectx, how, tx)
	if committed {
		e.obs.Committed(e.clock().Sub(commitStart))
	} else if tx.folded && ctx.Err() == nil {
		// The drains changed the shards (finals, versions, dirty sets) and
		// the transaction that carried those changes is gone.
		e.rebuild(ctx)
	}
	tx.folded = false
}

// keepOpen leaves open a transaction with nothing in it (no record
// produced, no offset polled since the last commit) rather than ending it:
// there is nothing to commit, and franz-go's End, after a commit that
// carried no offsets, holds the session for 500 ms (its wait for brokers
// older than KIP-447, which it assumes when no offset commit told it the
// broker's version): an idle member would pay that at every flush and at
// its stop. The broker learns of a transaction at its first record, so
// the commit deadline starts again from now.
func (tx *txnState) keepOpen(timeout time.Duration) {
	tx.commitBy = time.Now().Add(commitDeadline(timeout))
}

// endTxn ends the open transaction and reports whether it committed. An
// error from End that fences this member (another process took its
// transactional id) ends the member; any other leaves the transaction
// aborted, the fetch positions rewound, and the member going on.
func (e *exactlyOnce) endTxn(ctx context.Context, how kgo.TransactionEndTry, tx *txnState) bool {
	e.settleFinals(tx)
	committed, err := e.sess.End(ctx, how)
	if committed && err == nil {
		tx.delivered.count(e.stats)
	}
	tx.open, tx.failed, tx.records, tx.delivered = false, false, 0, tally{}
	switch {
	case errors.Is(err, kerr.FencedInstanceID), errors.Is(err, kerr.TransactionalIDAuthorizationFailed):
		e.fail(&hint.Error{Err: fmt.Errorf("processor: transactional id %q: %w", e.txnID, err),
			Setting: "InstanceID", Fix: "is another process running with the same %s?"})
		return false
	case err != nil:
		// A fenced or timed-out producer shows at the next Begin.
		e.log.Error("transaction failed; rebuilding from the last commit", "err", err)
	case !committed && how == kgo.TryCommit:
		// Expected at every rebalance; a failure is logged above.
		e.log.Info("transaction aborted: the group rebalanced or this member lost its place; rebuilding from the last commit")
	}
	if !committed {
		e.stats.Aborts.Add(1)
	}
	return committed && err == nil
}

// producerError is a transactional producer that cannot begin again.
type producerError struct{ err error }

func (e *producerError) Error() string {
	return "processor: transactional producer: " + e.err.Error()
}
func (e *producerError) Unwrap() error { return e.err }
