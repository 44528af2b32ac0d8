package integration_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"hash/crc32"

	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/internal/oracle"
	"github.com/klagg/klagg/internal/testkit"
	"github.com/klagg/klagg/processor"
)

// A backlog: trades of many symbols spread over the six hours before now,
// pre-filled, as a first deployment on a topic that keeps a week finds it.
type backlogSpec struct {
	symbols, trades int
	partitions      int32
	span            time.Duration // of trade time, ending five minutes ago
}

// records are spec's trades. They end five minutes before now: history,
// not a live market, so the watermark never follows the wall clock and the
// oracle's candles are the member's, however long it runs.
func (s backlogSpec) records(now time.Time) []oracle.Record {
	return oracle.Market(oracle.MarketSpec{Seed: uint64(s.symbols), Symbols: s.symbols, Trades: s.trades,
		Partitions: s.partitions, Start: now.Add(-s.span - 5*time.Minute), StepMs: int(s.span.Milliseconds() / int64(s.trades))})
}

// fillBacklog creates a trades topic and produces spec's records into it.
func fillBacklog(tb testing.TB, spec backlogSpec) (string, []oracle.Record) {
	tb.Helper()
	ctx := context.Background()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerBatchMaxBytes(1<<20))
	if err != nil {
		tb.Fatal(err)
	}
	defer cl.Close()
	topic := fmt.Sprintf("backlog-%d-%d", spec.symbols, time.Now().UnixNano())
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, spec.partitions, 1, nil, topic); err != nil {
		tb.Fatal(err)
	}
	recs := spec.records(time.Now())
	if err := oracle.Produce(ctx, cl, topic, recs); err != nil {
		tb.Fatal(err)
	}
	return topic, recs
}

// catchUp is one klagg member, its own process, catching up a backlog.
type catchUp struct {
	took    time.Duration
	klines  float64 // kline records delivered, from the member's metrics
	peakKiB int64   // VmHWM: the process's peak resident memory
	cmd     *exec.Cmd
	log     *testkit.Buffer
	metrics string
	done    chan struct{} // closed once the process has exited and been reaped
	err     error         // its exit status, once done
}

// startMember runs bin as a member of group over topic; its outputs are
// named after the group.
func startMember(tb testing.TB, bin, topic, group string, flags ...string) *catchUp {
	tb.Helper()
	c := &catchUp{log: &testkit.Buffer{}, metrics: testkit.FreeAddr(tb), done: make(chan struct{})}
	args := append([]string{"run", "--brokers", strings.Join(brokers, ","), "--group", group,
		"--trades-topic", topic, "--klines-topic", group + "-klines", "--state-topic", group + "-state",
		"--dlq-topic", group + "-dlq", "--metrics-addr", c.metrics, "--log-format", "json"}, flags...)
	c.cmd = exec.Command(bin, args...)
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	if err := c.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() {
		c.err = c.cmd.Wait()
		close(c.done)
	}()
	tb.Cleanup(func() {
		c.cmd.Process.Kill()
		<-c.done
	})
	return c
}

// waitCommitted waits until group has committed the whole topic, checking
// that the member is alive.
func (c *catchUp) waitCommitted(tb testing.TB, topic, group string, limit time.Duration) {
	tb.Helper()
	start := time.Now()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		tb.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	for {
		if ok, err := oracle.Committed(context.Background(), adm, group, topic); err == nil && ok {
			return
		}
		select {
		case <-c.done:
			tb.Fatalf("member exited (%v); its log:\n%s", c.err, tail(c.log.String()))
		default:
		}
		if time.Since(start) > limit {
			tb.Fatalf("not caught up after %s; log:\n%s", limit, tail(c.log.String()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// counter reads one counter from the member's /metrics.
func (c *catchUp) counter(tb testing.TB, name string) float64 {
	tb.Helper()
	resp, err := http.Get("http://" + c.metrics + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	tb.Fatalf("no %s in /metrics", name)
	return 0
}

// stop sends SIGTERM and waits for a clean exit.
func (c *catchUp) stop(tb testing.TB) {
	tb.Helper()
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		if c.err != nil {
			tb.Fatalf("member exited with %v; log:\n%s", c.err, tail(c.log.String()))
		}
	case <-time.After(2 * time.Minute):
		tb.Fatalf("member did not stop; log:\n%s", tail(c.log.String()))
	}
}

// catchUpBacklog runs one member over topic until it has committed all of
// it, and measures it.
func catchUpBacklog(tb testing.TB, bin, topic, group string, limit time.Duration, flags ...string) *catchUp {
	tb.Helper()
	start := time.Now()
	c := startMember(tb, bin, topic, group, flags...)
	c.waitCommitted(tb, topic, group, limit)
	c.took = time.Since(start)
	c.peakKiB = peakRSS(c.cmd.Process.Pid)
	c.klines = c.counter(tb, "klagg_klines_emitted_total")
	c.stop(tb)
	return c
}

// restoreTime starts another member of group and reads how long the
// restore of its partitions took from its log.
func restoreTime(tb testing.TB, bin, topic, group string) time.Duration {
	tb.Helper()
	c := startMember(tb, bin, topic, group)
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(c.log.String(), "\n") {
			var l struct {
				Msg     string `json:"msg"`
				Restore int64  `json:"restore"`
			}
			if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "partitions assigned" {
				c.stop(tb)
				return time.Duration(l.Restore)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	tb.Fatalf("no restore within 3m; log:\n%s", tail(c.log.String()))
	return 0
}

// BenchmarkScale: one member catches up a pre-filled backlog (6
// partitions, trades over the six hours before now, 15 periods, flat
// candles on) under each guarantee. It reports the time to commit it all,
// kline records per second, the member's peak RSS, and the time a second
// member of the group takes to restore the state the first left.
//
// KLAGG_SCALE (default 2000:1000000,10000:1000000,50000:2000000) lists
// symbols:trades cases; KLAGG_SCALE_BASELINE names another klagg binary
// to run side by side on the same backlogs (an older build, say);
// KLAGG_SCALE_FLAGS adds flags to this build's members.
// scripts/scale-bench.sh starts a broker and runs it.
func BenchmarkScale(b *testing.B) {
	if brokers == nil {
		b.Skip("KLAGG_TEST_BROKERS is unset")
	}
	cases := os.Getenv("KLAGG_SCALE")
	if cases == "" {
		cases = "2000:1000000,10000:1000000,50000:2000000"
	}
	bins := map[string]string{"klagg": benchBinary(b)}
	if base := os.Getenv("KLAGG_SCALE_BASELINE"); base != "" {
		bins["baseline"] = base
	}
	for _, c := range strings.Split(cases, ",") {
		var spec backlogSpec
		if _, err := fmt.Sscanf(c, "%d:%d", &spec.symbols, &spec.trades); err != nil {
			b.Fatalf("KLAGG_SCALE: %q: want symbols:trades", c)
		}
		spec.partitions, spec.span = 6, 6*time.Hour
		var topic string
		for _, g := range []string{"exactly-once", "at-least-once"} {
			for _, name := range []string{"klagg", "baseline"} {
				bin, ok := bins[name]
				if !ok {
					continue
				}
				b.Run(fmt.Sprintf("symbols=%d/%s/%s", spec.symbols, g, name), func(b *testing.B) {
					if topic == "" {
						topic, _ = fillBacklog(b, spec)
					}
					for b.Loop() {
						group := fmt.Sprintf("scale-%d", time.Now().UnixNano())
						flags := []string{"--guarantee", g}
						if name == "klagg" {
							flags = append(flags, strings.Fields(os.Getenv("KLAGG_SCALE_FLAGS"))...)
						}
						r := catchUpBacklog(b, bin, topic, group, 20*time.Minute, flags...)
						b.ReportMetric(r.took.Seconds(), "s")
						b.ReportMetric(r.klines, "klines")
						b.ReportMetric(r.klines/r.took.Seconds(), "klines/s")
						b.ReportMetric(float64(r.peakKiB)/1024, "peak-RSS-MiB")
						b.ReportMetric(float64(restoreTime(b, bin, topic, group).Milliseconds()), "restore-ms")
					}
				})
			}
		}
	}
}

// TestBacklogMemoryBound: a first deployment on a topic holding three hours
// of 50,000 symbols' trades (2,000,000 of them, some 14 million kline
// records with flat candles). One member per guarantee catches it all up
// within 1 GiB of resident memory (it needed about 1 KB per record before
// the bound: gigabytes), and its candles equal the oracle's. Under
// exactly-once the first member is killed -9 in the middle and a new one
// finishes: no crash loop, nothing lost or doubled.
func TestBacklogMemoryBound(t *testing.T) {
	needBroker(t)
	if testing.Short() {
		t.Skip("minutes of catching up")
	}
	spec := backlogSpec{symbols: 50_000, trades: 2_000_000, partitions: 6, span: 3 * time.Hour}
	topic, recs := fillBacklog(t, spec)
	sample := func(sym string) bool { return crc32.ChecksumIEEE([]byte(sym))%100 == 0 }
	cfg := processor.DefaultConfig()
	want := oracle.ExpectedSummary(recs, cfg.Engine.Periods, cfg.Engine.Grace, false, sample)
	recs = nil
	finals := 0
	for _, se := range want.Series {
		finals += se.Count
	}
	bin := benchBinary(t)
	const boundKiB = 1 << 20 // 1 GiB
	for _, g := range []string{"exactly-once", "at-least-once"} {
		t.Run(g, func(t *testing.T) {
			group := fmt.Sprintf("bound-%s-%d", g, time.Now().UnixNano())
			flags := []string{"--guarantee", g, "--session-timeout", "6s"}
			var killedPeak int64
			if g == "exactly-once" {
				c := startMember(t, bin, topic, group, flags...)
				waitCommits(t, c, group, topic)
				killedPeak = peakRSS(c.cmd.Process.Pid)
				c.cmd.Process.Kill()
				<-c.done
			}
			r := catchUpBacklog(t, bin, topic, group, 15*time.Minute, flags...)
			killed := ""
			if killedPeak > 0 {
				killed = fmt.Sprintf(" (the member killed -9 before it: %d MiB)", killedPeak/1024)
			}
			t.Logf("%s: caught up in %s, %.0f kline records (%.0f/s), peak RSS %d MiB%s",
				g, r.took.Round(time.Millisecond), r.klines, r.klines/r.took.Seconds(), r.peakKiB/1024, killed)
			if r.peakKiB > boundKiB || killedPeak > boundKiB {
				t.Errorf("peak RSS %d KiB (killed member %d KiB), bound %d KiB", r.peakKiB, killedPeak, boundKiB)
			}
			got, err := oracle.ReadSummary(t.Context(), brokers, group+"-klines", true, sample)
			if err != nil {
				t.Fatal(err)
			}
			if d := oracle.DiffSummary(got, want); d != "" {
				t.Fatal(d)
			}
			t.Logf("%d final candles in %d series equal to the oracle's (%d sampled candles field by field), %d records read",
				finals, len(want.Series), len(want.Sample), got.Records)
		})
	}
}

// waitCommits waits until group has committed something, but not all, of
// topic: the member is in the middle of the backlog.
func waitCommits(t *testing.T, c *catchUp, group, topic string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		offs, err := adm.FetchOffsets(t.Context(), group)
		if err == nil {
			var n int64
			offs.Each(func(o kadm.OffsetResponse) { n += max(o.At, 0) })
			if n > 0 {
				if done, _ := oracle.Committed(t.Context(), adm, group, topic); done {
					t.Fatal("the member caught up before it could be killed in the middle")
				}
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no commit within 5m; log:\n%s", tail(c.log.String()))
}
