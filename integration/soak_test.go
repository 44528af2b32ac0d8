package integration_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
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

// TestSoak is not part of the test command: scripts/soak.sh runs it. Three
// exactly-once members (the release build) on the three-node cluster,
// 20,000 trades/s of 500 symbols stamped with the wall clock for
// KLAGG_SOAK_DURATION (10m), one node killed (-9) and started again 10 s
// later every two minutes, in turn. Every 10 s it prints each member's
// resident memory, the group's lag and the commits per second. At the end:
// every trade is either in the candles or on the dead-letter topic as
// late (a live shard closes a quiet candle by the clock, and a partition
// whose leader is down is quiet: trades it delivers after the grace are
// late), and the final candles of every minute that ended before the last
// trade equal the oracle's over the trades not refused, with one final
// record per final candle.
func TestSoak(t *testing.T) {
	if os.Getenv("KLAGG_SOAK") == "" {
		t.Skip("the soak runs by scripts/soak.sh (KLAGG_SOAK=1), not in the test command")
	}
	duration := 10 * time.Minute
	if d, err := time.ParseDuration(os.Getenv("KLAGG_SOAK_DURATION")); err == nil {
		duration = d
	}
	const rate, symbols, partitions = 20_000, 500, 6
	brokers := needCluster(t)
	ctx, cancel := context.WithTimeout(t.Context(), duration+10*time.Minute)
	defer cancel()
	name := fmt.Sprintf("soak-%d", time.Now().Unix())
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ProducerLinger(5*time.Millisecond), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	if _, err := adm.CreateTopic(ctx, partitions, -1, nil, name+"-trades"); err != nil {
		t.Fatal(err)
	}

	type soakMember struct {
		cmd     *exec.Cmd
		log     *testkit.Buffer
		metrics string
		commits int64
	}
	var members []*soakMember
	for i := range 3 {
		m := &soakMember{log: &testkit.Buffer{}, metrics: testkit.FreeAddr(t)}
		m.cmd = exec.Command(benchBinary(t), "run", "--brokers", strings.Join(brokers, ","), "--group", name,
			"--trades-topic", name+"-trades", "--klines-topic", name+"-klines", "--state-topic", name+"-state",
			"--dlq-topic", name+"-dlq", "--metrics-addr", m.metrics, "--log-format", "text",
			"--instance-id", fmt.Sprintf("soak-%d", i), "--session-timeout", "10s")
		m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
		if err := m.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer m.cmd.Process.Kill()
		members = append(members, m)
	}

	// The feed, on its own goroutine: 1% of the rate every 10 ms.
	var recs []oracle.Record
	var produceErrs atomic.Int64
	countErr := func(_ *kgo.Record, err error) {
		if err != nil {
			produceErrs.Add(1)
		}
	}
	fed := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(fed)
		var agg [symbols]int64
		raw := int64(0)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for i := 0; time.Since(start) < duration; i++ {
			<-tick.C
			now := time.Now().UnixMilli()
			for j := range rate / 100 {
				s := (i*(rate/100) + j) % symbols
				agg[s]++
				raw++
				tr := oracle.Trade{Symbol: fmt.Sprintf("SOAK%03d", s), AggID: agg[s], First: raw, Last: raw, Time: now,
					Price: decimal.Fixed(int64(100+(raw%13)) * 100_000_000), Qty: decimal.Fixed(1 + raw%100_000_000), BuyerMaker: raw%2 == 0}
				r := oracle.Record{Partition: int32(s % partitions), Trade: tr}
				recs = append(recs, r)
				cl.Produce(ctx, &kgo.Record{Topic: name + "-trades", Partition: r.Partition, Key: []byte(tr.Symbol), Value: r.Value()}, countErr)
			}
		}
	}()

	// Every 10 s, the figures; every two minutes, a node bounced.
	report := time.NewTicker(10 * time.Second)
	defer report.Stop()
	bounced, lastCommitsAt := 0, time.Now()
	for done := false; !done; {
		select {
		case <-fed:
			done = true
		case <-report.C:
		}
		elapsed := time.Since(start)
		if n := int(elapsed / (2 * time.Minute)); n > bounced && !done {
			bounced = n
			go func(n int) {
				// Not bounce: t.Fatal may not be called from this goroutine.
				for _, op := range []string{"node-kill", "", "node-start"} {
					if op == "" {
						time.Sleep(10 * time.Second)
						continue
					}
					if out, err := exec.Command("bash", kcluster.script, op, kcluster.dir, strconv.Itoa(n)).CombinedOutput(); err != nil {
						t.Errorf("%s %d: %v\n%s", op, n, err, out)
					}
				}
			}((n-1)%3 + 1)
			t.Logf("kill -9 node %d, back 10s later", (n-1)%3+1)
		}
		var line strings.Builder
		fmt.Fprintf(&line, "%4.0fs", elapsed.Seconds())
		since := time.Since(lastCommitsAt).Seconds()
		lastCommitsAt = time.Now()
		for i, m := range members {
			c := scrapeCounter(m.metrics, "klagg_commits_total")
			fmt.Fprintf(&line, "  m%d rss %4d MiB commits %4.1f/s", i, currentRSS(m.cmd.Process.Pid)/1024, float64(c-m.commits)/since)
			m.commits = c
		}
		if lags, err := adm.Lag(ctx, name); err == nil {
			if g := lags[name]; g.Error() == nil {
				fmt.Fprintf(&line, "  lag %d", g.Lag.Total())
			}
		}
		t.Log(line.String())
	}
	last := time.Now()
	if err := cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := produceErrs.Load(); n > 0 {
		t.Fatalf("%d trades could not be produced: the oracle would count them", n)
	}
	for {
		ok, err := oracle.Committed(ctx, adm, name, name+"-trades")
		if err == nil && ok {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the group never committed the whole feed")
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("everything committed %s after the last trade", time.Since(last).Round(100*time.Millisecond))
	for _, m := range members {
		t.Logf("peak RSS %d MiB", peakRSS(m.cmd.Process.Pid)/1024)
		m.cmd.Process.Signal(syscall.SIGTERM)
		m.cmd.Wait()
	}

	// Candles that ended by the last trade time less the grace: the
	// oracle closes them by trades, as the members do; later ones the
	// members close by the clock.
	type id struct {
		symbol string
		agg    int64
	}
	late, other := map[id]bool{}, 0
	if err := oracle.ReadTopic(ctx, brokers, name+"-dlq", func(r *kgo.Record) {
		var tr schema.Trade
		reason := ""
		for _, h := range r.Headers {
			if h.Key == processor.HeaderReason {
				reason = string(h.Value)
			}
		}
		if reason != schema.ReasonLate.String() || schema.DecodeBinanceJSON(r.Value, r.Key, &tr) != nil {
			other++
			return
		}
		late[id{string(tr.Symbol), tr.AggID}] = true
	}); err != nil {
		t.Fatal(err)
	}
	if other > 0 {
		t.Fatalf("%d dead letters for another reason than late", other)
	}
	kept := recs[:0:0]
	for _, r := range recs {
		if !late[id{r.Trade.Symbol, r.Trade.AggID}] {
			kept = append(kept, r)
		}
	}
	t.Logf("%d trades refused as late (dead letters), all of them produced", len(recs)-len(kept))
	if len(recs)-len(kept) != len(late) {
		t.Fatalf("%d late dead letters, %d of them trades that were produced", len(late), len(recs)-len(kept))
	}
	cfg := processor.DefaultConfig()
	want, _ := oracle.Expected(kept, cfg.Engine.Periods, cfg.Engine.Grace)
	got, err := oracle.ReadKlines(ctx, brokers, name+"-klines")
	if err != nil {
		t.Fatal(err)
	}
	cutoff := recs[len(recs)-1].Trade.Time - cfg.Engine.Grace.Milliseconds()
	closed := func(m map[oracle.Key]schema.Kline) map[oracle.Key]schema.Kline {
		out := map[oracle.Key]schema.Kline{}
		for k, v := range m {
			if v.CloseTime < cutoff {
				out[k] = v
			}
		}
		return out
	}
	if len(got.Problems) > 0 {
		t.Fatalf("%d problems; first: %s", len(got.Problems), got.Problems[0])
	}
	if d := oracle.Diff(closed(got.Final), closed(want)); d != "" {
		t.Fatal(d)
	}
	if got.FinalRecords != len(got.Final) {
		t.Fatalf("%d final records for %d final candles", got.FinalRecords, len(got.Final))
	}
	t.Logf("%d trades in %s; %d final candles equal to the oracle's, one final record each; %d kline records",
		len(recs), duration, len(closed(want)), got.Records)
}

// scrapeCounter reads one unlabelled counter from a /metrics page, or 0.
func scrapeCounter(addr, name string) int64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return int64(f)
		}
	}
	return 0
}

// currentRSS returns VmRSS of pid in KiB, or 0.
func currentRSS(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb
		}
	}
	return 0
}
