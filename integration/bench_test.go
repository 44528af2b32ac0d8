package integration_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/internal/oracle"
	"github.com/klagg/klagg/internal/testkit"
	"github.com/klagg/klagg/processor"
	"github.com/klagg/klagg/schema"
)

const (
	replaySymbols = 2000
	replayTrades  = 2_000_000
)

var replayTopic string

// replayFixture fills one single-partition trades topic once per process:
// 2,000,000 trades of 2,000 symbols over about two hours of trade time.
func replayFixture(b *testing.B) string {
	if brokers == nil {
		b.Skip("KLAGG_TEST_BROKERS is unset")
	}
	if replayTopic != "" {
		return replayTopic
	}
	ctx := context.Background()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerBatchMaxBytes(1<<20))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	// KLAGG_BENCH_REPLAY_TOPIC names a topic that later processes reuse, so
	// that rounds can run in separate processes, interleaved, without each
	// filling a topic of its own just before the bare consumer reads it.
	topic := os.Getenv("KLAGG_BENCH_REPLAY_TOPIC")
	if topic == "" {
		topic = fmt.Sprintf("bench-replay-%d", time.Now().UnixNano())
	}
	adm := kadm.NewClient(cl)
	if ends, err := adm.ListEndOffsets(ctx, topic); err == nil && ends.Error() == nil {
		if o, ok := ends.Lookup(topic, 0); ok && o.Offset == replayTrades {
			replayTopic = topic
			return topic
		}
	}
	if _, err := adm.CreateTopic(ctx, 1, 1, nil, topic); err != nil {
		b.Fatal(err)
	}
	recs := oracle.Market(oracle.MarketSpec{Seed: 42, Symbols: replaySymbols, Trades: replayTrades, Partitions: 1,
		Start: time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC), StepMs: 4})
	if err := oracle.Produce(ctx, cl, topic, recs); err != nil {
		b.Fatal(err)
	}
	replayTopic = topic
	return topic
}

// BenchmarkReplay replays the same pre-filled topic two ways, side by side:
// "bare-consumer" is franz-go reading every record and decoding it with
// klagg's decoder; "klagg" is one member joining its group, folding the
// trades into 15 periods, delivering every kline and state record and
// committing to the end (its output topics exist beforehand, as in a
// deployment). Run with -benchtime 1x -count N and compare the medians.
func BenchmarkReplay(b *testing.B) {
	topic := replayFixture(b)
	b.Run("bare-consumer", func(b *testing.B) {
		for b.Loop() {
			start, cpu := time.Now(), cpuTime()
			cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
				kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
			if err != nil {
				b.Fatal(err)
			}
			var tr schema.Trade
			n := 0
			for n < replayTrades {
				cl.PollRecords(context.Background(), 10_000).EachRecord(func(r *kgo.Record) {
					if err := schema.DecodeBinanceJSON(r.Value, r.Key, &tr); err != nil {
						b.Fatal(err)
					}
					n++
				})
			}
			cl.Close()
			b.ReportMetric(float64(replayTrades)/time.Since(start).Seconds(), "trades/s")
			b.ReportMetric(float64(cpuTime()-cpu)/1e6, "cpu-ms")
		}
	})
	var group string
	for _, g := range []processor.Guarantee{processor.ExactlyOnce, processor.AtLeastOnce} {
		b.Run("klagg/"+string(g), func(b *testing.B) { replayKlagg(b, topic, g, &group) })
	}

	// The state the last klagg run left: a new member of the same group
	// restores the partition's 2,000 symbols × 15 periods.
	b.Run("restore", func(b *testing.B) {
		if group == "" {
			b.Skip("needs the klagg sub-benchmark")
		}
		for b.Loop() {
			stats := &processor.Stats{}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- processor.Run(ctx, benchConfig(topic, group), processor.WithStats(stats)) }()
			for stats.Restores.Load() == 0 {
				time.Sleep(5 * time.Millisecond)
			}
			cancel()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(stats.RestoreNanos.Load())/1e6, "restore-ms")
		}
	})
}

func createOutputs(b *testing.B, cfg processor.Config) {
	b.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	for _, t := range []struct {
		name    string
		configs map[string]*string
	}{{cfg.KlinesTopic, nil}, {cfg.StateTopic, map[string]*string{"cleanup.policy": kadm.StringPtr("compact")}}, {cfg.DLQTopic, nil}} {
		if _, err := adm.CreateTopic(context.Background(), 1, 1, t.configs, t.name); err != nil {
			b.Fatal(err)
		}
	}
}

func benchConfig(topic, group string) processor.Config {
	cfg := processor.DefaultConfig()
	cfg.Brokers = brokers
	cfg.Group = group
	cfg.TradesTopic = topic
	cfg.KlinesTopic = group + "-klines"
	cfg.StateTopic = group + "-state"
	cfg.DLQTopic = group + "-dlq"
	cfg.Engine.SymbolsHint = replaySymbols
	return cfg
}

// runUntilCommitted runs a member until it has committed the whole trades
// topic, and returns how long that took: the replay is done once every
// candle is delivered and committed; the member's shutdown is not timed.
func runUntilCommitted(b *testing.B, cfg processor.Config) (*processor.Stats, time.Duration) {
	b.Helper()
	stats := &processor.Stats{}
	start := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- processor.Run(ctx, cfg, processor.WithStats(stats)) }()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	// The group's offsets are checked after each of the member's commits
	// (and every 100 ms besides), not every few milliseconds: on two cores
	// shared with the broker, a check's two requests are load on the
	// replay being timed.
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	seen, checked := int64(0), time.Now()
	for {
		if n := stats.Commits.Load(); n != seen || time.Since(checked) >= 100*time.Millisecond {
			seen, checked = n, time.Now()
			ok, err := oracle.Committed(context.Background(), adm, cfg.Group, cfg.TradesTopic)
			if err == nil && ok {
				took := time.Since(start)
				cancel()
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				return stats, took
			}
		}
		select {
		case err := <-done:
			b.Fatalf("member stopped: %v", err)
		case <-tick.C:
		}
	}
}

// cpuTime is the CPU time this process has used (user and system), in ns:
// on a machine whose broker shares the cores, what klagg costs beyond a
// bare consumer shows here as much as in the time.
func cpuTime() int64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// replayKlagg is one klagg member replaying topic under guarantee g.
func replayKlagg(b *testing.B, topic string, g processor.Guarantee, group *string) {
	for b.Loop() {
		*group = fmt.Sprintf("bench-%d", time.Now().UnixNano())
		cfg := benchConfig(topic, *group)
		cfg.Guarantee = g
		if c := os.Getenv("KLAGG_BENCH_COMPRESSION"); c != "" {
			cfg.Compression = c // compare codecs: none, lz4, ...
		}
		createOutputs(b, cfg) // a deployment's one-time step, not replay time
		cpu := cpuTime()
		var stats *processor.Stats
		var took time.Duration
		// Labelled, so that a profile can be narrowed to the member
		// (-cpuprofile, then pprof -tagfocus phase=replay): the fixture's
		// 2,000,000 produced trades would drown it.
		pprof.Do(context.Background(), pprof.Labels("phase", "replay"), func(context.Context) { stats, took = runUntilCommitted(b, cfg) })
		b.ReportMetric(float64(cpuTime()-cpu)/1e6, "cpu-ms")
		b.ReportMetric(float64(replayTrades)/took.Seconds(), "trades/s")
		b.ReportMetric(took.Seconds()*1000, "replay-ms")
		b.ReportMetric(float64(stats.Klines.Load())/float64(replayTrades), "klines/trade")
	}
}

// BenchmarkLive produces 20,000 and 100,000 trades/s of 2,000 symbols,
// stamped with the wall clock, to a member running as its own process, and
// measures for each trade the time from its produce to the first kline
// record on the klines topic that reflects it (seen by a read_committed
// consumer), and the member's peak resident memory; under each guarantee,
// side by side.
func BenchmarkLive(b *testing.B) {
	for _, rate := range []int{20_000, 100_000} {
		for _, g := range []processor.Guarantee{processor.ExactlyOnce, processor.AtLeastOnce} {
			b.Run(fmt.Sprintf("%d/%s", rate, g), func(b *testing.B) { live(b, g, rate) })
		}
	}
}

func live(b *testing.B, g processor.Guarantee, rate int) {
	if brokers == nil {
		b.Skip("KLAGG_TEST_BROKERS is unset")
	}
	const (
		symbols  = 2000
		duration = 20 * time.Second
		warmup   = 3 * time.Second
	)
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		name := fmt.Sprintf("bench-live-%d", time.Now().UnixNano())
		cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ProducerLinger(time.Millisecond))
		if err != nil {
			b.Fatal(err)
		}
		adm := kadm.NewClient(cl)
		if _, err := adm.CreateTopic(ctx, 4, 1, nil, name+"-trades"); err != nil {
			b.Fatal(err)
		}
		member := exec.Command(benchBinary(b), "run", "--brokers", strings.Join(brokers, ","), "--group", name,
			"--trades-topic", name+"-trades", "--klines-topic", name+"-klines", "--state-topic", name+"-state",
			"--dlq-topic", name+"-dlq", "--metrics-addr", "", "--log-format", "text", "--guarantee", string(g))
		var memberLog testkit.Buffer
		member.Stdout, member.Stderr = &memberLog, &memberLog
		if err := member.Start(); err != nil {
			b.Fatal(err)
		}
		// Wait for the member's topics, then follow the klines.
		for {
			d, err := adm.ListTopics(ctx, name+"-klines")
			if err == nil && len(d[name+"-klines"].Partitions) == 4 {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		follower, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(name+"-klines"),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(50*time.Millisecond), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
		if err != nil {
			b.Fatal(err)
		}

		type pending struct {
			lastID int64
			at     time.Time
		}
		var mu sync.Mutex
		waiting := map[string][]pending{}
		var latencies []time.Duration
		start := time.Now()
		go func() {
			for ctx.Err() == nil {
				fs := follower.PollFetches(ctx)
				now := time.Now()
				mu.Lock()
				fs.EachRecord(func(r *kgo.Record) {
					var k schema.Kline
					if schema.DecodeKline(r.Value, &k) != nil || k.Period != "1m" {
						return
					}
					q := waiting[k.Symbol]
					n := 0
					for n < len(q) && q[n].lastID <= k.LastTradeID {
						if q[n].at.Sub(start) > warmup {
							latencies = append(latencies, now.Sub(q[n].at))
						}
						n++
					}
					waiting[k.Symbol] = q[n:]
				})
				mu.Unlock()
			}
		}()

		// Produce at the rate, in 10 ms steps, trade time = wall clock.
		var agg, raw int64
		tick := time.NewTicker(10 * time.Millisecond)
		for time.Since(start) < duration {
			<-tick.C
			now := time.Now()
			for range rate / 100 {
				agg++
				raw++
				sym := fmt.Sprintf("LIVE%04d", agg%symbols)
				tr := schema.Trade{Symbol: []byte(sym), AggID: agg, Price: decimal.Fixed(100+agg%7) * 100_000_000, Quantity: 100_000_000,
					FirstID: raw, LastID: raw, Time: now.UnixMilli()}
				mu.Lock()
				waiting[sym] = append(waiting[sym], pending{raw, now})
				mu.Unlock()
				cl.Produce(ctx, &kgo.Record{Topic: name + "-trades", Partition: int32(agg % 4), Key: []byte(sym),
					Value: schema.AppendBinanceJSON(nil, &tr)}, nil)
			}
		}
		tick.Stop()
		time.Sleep(2 * time.Second) // let the last flushes land
		hwm := peakRSS(member.Process.Pid)
		member.Process.Signal(syscall.SIGTERM)
		member.Wait()
		cancel()
		follower.Close()
		cl.Close()

		mu.Lock()
		sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
		if len(latencies) < rate {
			b.Fatalf("only %d latencies measured; member log:\n%s", len(latencies), tail(memberLog.String()))
		}
		pct := func(p float64) float64 {
			return float64(latencies[int(p*float64(len(latencies)-1))].Microseconds()) / 1000
		}
		b.ReportMetric(pct(0.50), "p50-ms")
		b.ReportMetric(pct(0.99), "p99-ms")
		b.ReportMetric(float64(hwm)/1024, "peak-RSS-MiB")
		b.ReportMetric(float64(len(latencies)), "trades-measured")
		mu.Unlock()
	}
}

// peakRSS returns VmHWM of pid in KiB, or 0.
func peakRSS(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "VmHWM:")), "%d", &kb)
			return kb
		}
	}
	return 0
}

var benchBin string

// benchBinary builds klagg without the race detector (the tests' binary has
// it), so that latency and memory are the release build's.
func benchBinary(b testing.TB) string {
	if benchBin != "" {
		return benchBin
	}
	dir, err := os.MkdirTemp("", "klagg-bench") // lives as long as the process: -count reuses it
	if err != nil {
		b.Fatal(err)
	}
	bin := dir + "/klagg"
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/klagg").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	benchBin = bin
	return bin
}
