package main

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"

	"github.com/klagg/klagg/processor"
	"github.com/klagg/klagg/processor/engine"
	"github.com/klagg/klagg/schema"
)

// metrics is the process's registry: klagg's own series, read from the
// runtime's counters when scraped (nothing is added per trade), the
// runtime's timings through its Observer, Go and process collectors, and
// franz-go's client metrics (kprom) for the member's client. No label
// carries a symbol: cardinality is bounded by the reasons, the outcomes and
// the partition count.
type metrics struct {
	reg     *prometheus.Registry
	kprom   *kprom.Metrics
	flush   prometheus.Histogram
	dirty   prometheus.Histogram
	commit  prometheus.Histogram
	restore prometheus.Histogram
	lag     *prometheus.GaugeVec
}

func newMetrics(stats *processor.Stats) *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{reg: reg}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	counter := func(name, help string, labels prometheus.Labels, v func() int64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(v()) }))
	}
	for _, o := range []struct {
		result  string
		outcome engine.Outcome
	}{{"folded", engine.Folded}, {"replayed", engine.Replayed}, {"duplicate", engine.Duplicate}, {"late", engine.Late},
		{"out_of_range", engine.OutOfRange}} {
		counter("klagg_trades_total", "Trades handled, by result; refused ones go to the dead-letter topic.",
			prometheus.Labels{"result": o.result}, stats.Trades[o.outcome].Load)
	}
	for _, r := range schema.Reasons() {
		if r == schema.ReasonDuplicate || r == schema.ReasonLate {
			continue // engine decisions, counted in klagg_trades_total
		}
		counter("klagg_trades_invalid_total", "Trade records refused by decoding or validation, by reason.",
			prometheus.Labels{"reason": r.String()}, stats.Invalid[r].Load)
	}
	counter("klagg_klines_emitted_total", "Kline records delivered.", nil, stats.Klines.Load)
	counter("klagg_state_records_total", "State records delivered.", nil, stats.StateRecords.Load)
	counter("klagg_dead_letters_total", "Dead-letter records delivered.", nil, stats.DeadLetters.Load)
	counter("klagg_flushes_total", "Flushes that drained changed candles.", nil, stats.Flushes.Load)
	counter("klagg_commits_total", "Successful offset commits.", nil, stats.Commits.Load)
	counter("klagg_rebalances_total", "Partition assignments, revocations and losses seen.", nil, stats.Rebalances.Load)
	counter("klagg_restores_total", "Shards restored from the state topic.", nil, stats.Restores.Load)
	counter("klagg_shard_restarts_total", "Shards rebuilt from the last commit: after a failed delivery, or an aborted transaction.", nil, stats.Restarts.Load)
	counter("klagg_shard_backlogs_total", "Times a shard held --max-pending-candles final candles and stopped folding until a flush took them (a catch-up at its memory bound).", nil, stats.Backlogs.Load)
	counter("klagg_transactions_aborted_total", "Flush transactions aborted (exactly-once): a rebalance, a lost membership or a failed delivery.", nil, stats.Aborts.Load)
	counter("klagg_flushes_skipped_total", "At-least-once flushes not made: the member could not prove it was still in the group.", nil, stats.FlushesSkipped.Load)
	counter("klagg_state_records_stale_total", "State records passed over at restore: they reflect fewer trades than one already read.", nil, stats.StaleStates.Load)
	counter("klagg_fetch_rewinds_total", "Fetches that began past the offset a shard's state reflects; the member set the position back rather than skip trades.", nil, stats.Rewinds.Load)
	counter("klagg_state_records_rebuilt_total", "Unreadable state records whose symbol was rebuilt from the retained trades.", nil, stats.RebuiltStates.Load)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "klagg_partitions_assigned", Help: "Trades partitions this member owns."},
		func() float64 { return float64(stats.Assigned.Load()) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "klagg_last_commit_timestamp_seconds", Help: "When offsets were last committed."},
		func() float64 { return float64(stats.LastCommit.Load()) / 1000 }))

	hist := func(name, help string, buckets []float64) prometheus.Histogram {
		h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
		reg.MustRegister(h)
		return h
	}
	seconds := prometheus.ExponentialBuckets(0.0005, 2, 16) // 0.5 ms to 16 s
	m.flush = hist("klagg_flush_duration_seconds", "Drain, deliver and commit of one flush.", seconds)
	m.dirty = hist("klagg_flush_dirty_candles", "Dirty candles drained per flush.", prometheus.ExponentialBuckets(1, 4, 12))
	m.commit = hist("klagg_commit_duration_seconds", "Offset commit latency.", seconds)
	m.restore = hist("klagg_restore_duration_seconds", "Restore of newly assigned partitions from the state topic.", seconds)
	m.lag = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "klagg_consumer_lag_records", Help: "Trades records not yet read, per owned partition, at the last flush."}, []string{"partition"})
	reg.MustRegister(m.lag)
	m.kprom = kprom.NewMetrics("klagg_kafka", kprom.Registry(reg))
	return m
}

// memberOpts hooks franz-go's client metrics into the member's client.
func (m *metrics) memberOpts() []kgo.Opt { return []kgo.Opt{kgo.WithHooks(m.kprom)} }

func (m *metrics) Flushed(took time.Duration, dirty int) {
	if dirty == 0 {
		return // a cycle that found nothing: not a flush to time
	}
	m.flush.Observe(took.Seconds())
	m.dirty.Observe(float64(dirty))
}
func (m *metrics) Committed(took time.Duration)       { m.commit.Observe(took.Seconds()) }
func (m *metrics) Restored(took time.Duration, _ int) { m.restore.Observe(took.Seconds()) }
func (m *metrics) Lag(p int32, records int64) {
	m.lag.WithLabelValues(strconv.Itoa(int(p))).Set(float64(records))
}
func (m *metrics) Forget(p int32) { m.lag.DeleteLabelValues(strconv.Itoa(int(p))) }
