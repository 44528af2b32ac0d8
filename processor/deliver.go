package processor

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/twmb/franz-go/pkg/kgo"
)

// drained is a shard's answer to a drain: records to deliver and the trades
// offset they reflect.
type drained struct {
	partition int32
	first     []*kgo.Record // klines and dead letters
	states    []*kgo.Record
	position  int64
	dirty     int
	lag       int64 // records of the partition not yet read or not yet folded
	// partial: ask again. A drainTxn answered with final candles only
	// (records handed over are not folded yet, or a watermark step is half
	// done), or a full drain came in part (DrainSome).
	partial bool
	shard   *shard
	// err is the first delivery failure of these records. Written by
	// produce promises under produceAll's mutex, read after they all fired.
	err error
}

// drainShards asks each of targets to drain, on its own goroutine, and
// collects the answers. A drain request travels behind the records
// dispatched before it, so each answer reflects all of them.
func drainShards(targets []*shard, kind drainKind) []drained {
	// Asked all at once, so that they drain in parallel.
	replies := make([]chan drained, len(targets))
	for i, s := range targets {
		replies[i] = make(chan drained, 1)
		select {
		case s.in <- shardMsg{drain: replies[i], kind: kind}:
		case <-s.done:
			replies[i] = nil
		}
	}
	var results []drained
	for i, s := range targets {
		if replies[i] == nil {
			continue
		}
		select {
		case d := <-replies[i]:
			d.shard = s
			results = append(results, d)
		case <-s.done:
		}
	}
	return results
}

// produceAll produces pick(d) of every result that has not failed yet and
// waits for every acknowledgement; a failure is kept in the result's err.
func produceAll(ctx context.Context, cl *kgo.Client, results []drained, pick func(*drained) [][]*kgo.Record) {
	<-produce(ctx, cl, results, pick).done
}

// delivery is a produce in progress. Until done is closed, its results'
// err may still be written, and the shards that drained them must not
// drain again: a drain reuses the memory of its previous records.
type delivery struct {
	results []drained
	done    chan struct{}
}

// produce hands pick(d) of every result that has not failed yet to the
// client and returns at once; done closes when every record is
// acknowledged or failed, and each failure is kept in its result's err.
func produce(ctx context.Context, cl *kgo.Client, results []drained, pick func(*drained) [][]*kgo.Record) *delivery {
	dl := &delivery{results: results, done: make(chan struct{})}
	var mu sync.Mutex
	var pending atomic.Int64
	skip := make([]bool, len(results)) // decided before any promise can write err
	for i := range results {
		if skip[i] = results[i].err != nil; !skip[i] {
			for _, recs := range pick(&results[i]) {
				pending.Add(int64(len(recs)))
			}
		}
	}
	if pending.Load() == 0 {
		close(dl.done)
		return dl
	}
	for i := range results {
		if skip[i] {
			continue
		}
		d := &results[i]
		// One promise per shard, not a closure per record.
		promise := func(_ *kgo.Record, err error) {
			if err != nil {
				mu.Lock()
				if d.err == nil {
					d.err = err
				}
				mu.Unlock()
			}
			if pending.Add(-1) == 0 {
				close(dl.done)
			}
		}
		for _, recs := range pick(d) {
			for _, rec := range recs {
				cl.Produce(ctx, rec, promise)
			}
		}
	}
	return dl
}

func pickFirst(d *drained) [][]*kgo.Record  { return [][]*kgo.Record{d.first} }
func pickStates(d *drained) [][]*kgo.Record { return [][]*kgo.Record{d.states} }
func pickAll(d *drained) [][]*kgo.Record    { return [][]*kgo.Record{d.first, d.states} }

// tally counts delivered records by topic.
type tally struct{ klines, states, deadLetters int64 }

// add counts pick(d) unless its delivery failed.
func (t *tally) add(cfg *Config, d *drained, pick func(*drained) [][]*kgo.Record) {
	if d.err != nil {
		return
	}
	for _, recs := range pick(d) {
		for _, rec := range recs {
			switch rec.Topic {
			case cfg.KlinesTopic:
				t.klines++
			case cfg.StateTopic:
				t.states++
			case cfg.DLQTopic:
				t.deadLetters++
			}
		}
	}
}

func (t *tally) count(s *Stats) {
	s.Klines.Add(t.klines)
	s.StateRecords.Add(t.states)
	s.DeadLetters.Add(t.deadLetters)
}

// countDelivered adds the records of every result that did not fail to the
// stats, by topic.
func (c *core) countDelivered(results []drained, pick func(*drained) [][]*kgo.Record) {
	var t tally
	for i := range results {
		t.add(&c.cfg, &results[i], pick)
	}
	t.count(c.stats)
}
