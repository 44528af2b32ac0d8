package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/internal/oracle"
	"github.com/klagg/klagg/internal/testkit"
	"github.com/klagg/klagg/processor"
	"github.com/klagg/klagg/schema"
)

var (
	brokers []string
	binary  string
)

func TestMain(m *testing.M) {
	addr := os.Getenv("KLAGG_TEST_BROKERS")
	if addr == "" {
		fmt.Println("integration: KLAGG_TEST_BROKERS is unset; skipping (scripts/test.sh starts a broker and sets it)")
		os.Exit(m.Run())
	}
	brokers = strings.Split(addr, ",")
	dir, err := os.MkdirTemp("", "klagg-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "klagg")
	build := exec.Command("go", "build", "-race", "-o", binary, "../cmd/klagg")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Println("integration: build klagg:", err)
		os.Exit(1)
	}
	fmt.Printf("integration: against %s at %s\n", os.Getenv("KLAGG_TEST_BROKER_NAME"), addr)
	code := m.Run()
	stopCluster()
	os.RemoveAll(dir)
	os.Exit(code)
}

func needBroker(t *testing.T) {
	t.Helper()
	if brokers == nil {
		t.Skip("KLAGG_TEST_BROKERS is unset")
	}
}

// bed is one scenario's topics and members.
type bed struct {
	t          *testing.T
	ctx        context.Context
	cl         *kgo.Client
	adm        *kadm.Client
	name       string
	brokers    []string
	partitions int32
	members    map[string]*member
	produced   []oracle.Record
	extra      []string   // more flags for every member
	prefix     []string   // a command the member runs under (ip netns exec NS)
	progress   int64      // the sum of committed trades offsets at the last waitProgress
	logs       []namedLog // every member's log, stopped ones too, for a failed check
}

type namedLog struct {
	name string
	log  *testkit.Buffer
}

type member struct {
	cmd  *exec.Cmd
	log  *testkit.Buffer
	done chan struct{} // closed when the process has exited
	err  error         // its exit status, once done
}

func newBed(t *testing.T, partitions int32) *bed {
	needBroker(t)
	return newBedOn(t, partitions, brokers, 1)
}

// newBedOn is a bed on the given brokers, its trades topic replicated
// replication times (-1: the brokers' default).
func newBedOn(t *testing.T, partitions int32, brokers []string, replication int16) *bed {
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	t.Cleanup(cancel)
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	b := &bed{t: t, ctx: ctx, cl: cl, adm: kadm.NewClient(cl), partitions: partitions, members: map[string]*member{},
		brokers: brokers, name: fmt.Sprintf("%s-%d", strings.ReplaceAll(strings.ToLower(t.Name()), "/", "-"), rand.IntN(1_000_000))}
	if _, err := b.adm.CreateTopic(ctx, partitions, replication, nil, b.topic("trades")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for name := range b.members {
			b.kill(name)
		}
	})
	return b
}

func (b *bed) topic(kind string) string { return b.name + "-" + kind }

func (b *bed) args() []string {
	return append([]string{"run", "--brokers", strings.Join(b.brokers, ","), "--group", b.name,
		"--trades-topic", b.topic("trades"), "--klines-topic", b.topic("klines"),
		"--state-topic", b.topic("state"), "--dlq-topic", b.topic("dlq"),
		"--flush-interval", "100ms", "--session-timeout", "6s", "--metrics-addr", "", "--log-format", "text"}, b.extra...)
}

func (b *bed) start(name string) {
	b.t.Helper()
	argv := append(slices.Clone(b.prefix), binary)
	m := &member{cmd: exec.Command(argv[0], append(argv[1:], b.args()...)...), log: &testkit.Buffer{}, done: make(chan struct{})}
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	if err := m.cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	go func() {
		m.err = m.cmd.Wait()
		close(m.done)
	}()
	b.members[name] = m
	b.logs = append(b.logs, namedLog{name, m.log})
}

// stop sends SIGTERM and expects a clean exit 0.
func (b *bed) stop(name string) {
	b.t.Helper()
	m := b.members[name]
	delete(b.members, name)
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		b.t.Fatal(err)
	}
	select {
	case <-m.done:
		if m.err != nil {
			b.t.Fatalf("member %s exited with %v after SIGTERM; its log:\n%s", name, m.err, tail(m.log.String()))
		}
	case <-time.After(time.Minute):
		// Its goroutines, to see where it hangs.
		m.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-m.done:
		case <-time.After(5 * time.Second):
			m.cmd.Process.Kill()
		}
		b.t.Fatalf("member %s did not stop within a minute of SIGTERM; its log:\n%s", name, stacks(m.log.String()))
	}
}

// waitMembers waits until the group has n members with partitions.
func (b *bed) waitMembers(n int) {
	b.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		groups, err := b.adm.DescribeGroups(b.ctx, b.name)
		if err == nil {
			g := groups[b.name]
			if g.State == "Stable" && len(g.Members) == n {
				return
			}
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("group %s never reached %d stable members", b.name, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitProgress waits until the group's committed trades offsets have moved
// since the last call: the members are in the stream and have committed
// (under exactly-once, a transaction with state records).
func (b *bed) waitProgress() {
	b.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		sum := int64(0)
		if commits, err := b.adm.FetchOffsets(b.ctx, b.name); err == nil {
			commits.Each(func(o kadm.OffsetResponse) {
				if o.Topic == b.topic("trades") && o.Err == nil {
					sum += o.At
				}
			})
		}
		if sum > b.progress {
			b.progress = sum
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("group %s committed nothing new within a minute", b.name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill is kill -9: no flush, no commit, no leaving the group.
func (b *bed) kill(name string) {
	m := b.members[name]
	delete(b.members, name)
	m.cmd.Process.Kill()
	<-m.done
}

// stacks is the end of a member's log before its goroutine dump, and the
// dump's goroutines that are in klagg's code.
func stacks(log string) string {
	i := strings.Index(log, "SIGQUIT")
	if i < 0 {
		return tail(log)
	}
	var b strings.Builder
	b.WriteString(tail(log[:i]))
	for _, g := range strings.Split(log[i:], "\n\n") {
		if strings.Contains(g, "klagg/processor") || strings.Contains(g, "main.") {
			b.WriteString("\n\n" + g)
		}
	}
	return b.String()
}

func tail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-40):], "\n")
}

func (b *bed) produce(recs []oracle.Record) {
	b.t.Helper()
	if err := oracle.Produce(b.ctx, b.cl, b.topic("trades"), recs); err != nil {
		b.t.Fatal(err)
	}
	b.produced = append(b.produced, recs...)
}

// settle waits until the group has committed every trades offset, i.e. each
// trade's candles were delivered.
func (b *bed) settle(d time.Duration) {
	b.t.Helper()
	deadline := time.Now().Add(d)
	for {
		for name, m := range b.members {
			select {
			case <-m.done:
				b.t.Fatalf("member %s exited (%v): %s%s", name, m.err, tail(m.log.String()), b.saveLogs())
			default:
			}
		}
		ok, err := oracle.Committed(b.ctx, b.adm, b.name, b.topic("trades"))
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			var logs strings.Builder
			for name, m := range b.members {
				fmt.Fprintf(&logs, "--- %s\n%s\n", name, tail(m.log.String()))
			}
			b.t.Fatalf("group %s still lags after %s (%v); logs:\n%s%s", b.name, d, err, logs.String(), b.saveLogs())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// expected is the oracle's final candles for what was produced.
func (b *bed) expected() map[oracle.Key]schema.Kline {
	cfg := processor.DefaultConfig()
	want, _ := oracle.Expected(b.produced, cfg.Engine.Periods, cfg.Engine.Grace)
	return want
}

// check compares the final candles on the klines topic with the oracle's.
func (b *bed) check() *oracle.Emitted {
	b.t.Helper()
	want := b.expected()
	got, problem := oracle.Check(b.ctx, b.brokers, b.topic("klines"), want)
	if problem != "" {
		b.t.Fatal(problem + b.saveLogs())
	}
	if os.Getenv("KLAGG_TEST_KEEP_LOGS") != "" {
		b.t.Log(b.saveLogs())
	}
	if len(want) == 0 {
		b.t.Fatal("the scenario produced no final candle")
	}
	b.t.Logf("%d trades records: %d final candles equal to the oracle's, %d kline records", len(b.produced), len(want), got.Records)
	return got
}

// saveLogs writes every member's log to a directory that outlives the test
// and returns where, with the lines of each that tell how its
// transactions and assignments went.
func (b *bed) saveLogs() string {
	dir, err := os.MkdirTemp("", b.name+"-logs-")
	if err != nil {
		return "\nmember logs not saved: " + err.Error()
	}
	var out strings.Builder
	fmt.Fprintf(&out, "\nmember logs in %s", dir)
	for i, l := range b.logs {
		text := l.log.String()
		_ = os.WriteFile(filepath.Join(dir, fmt.Sprintf("%d-%s.log", i, l.name)), []byte(text), 0o644)
		var key []string
		for line := range strings.Lines(text) {
			if strings.Contains(line, "unable to dial") || strings.Contains(line, "unable to open connection") {
				continue // a broker down: many of them, and they say only that
			}
			if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") ||
				strings.Contains(line, "rebuilt") || strings.Contains(line, "assigned") || strings.Contains(line, "revoked") ||
				strings.Contains(line, "resetting") || strings.Contains(line, "aborted") {
				key = append(key, line)
			}
		}
		fmt.Fprintf(&out, "\n== member %s (%d of %d lines):\n%s", l.name, min(len(key), 60), strings.Count(text, "\n"), strings.Join(key[max(0, len(key)-60):], ""))
	}
	return out.String()
}

func market(seed uint64, trades int, partitions int32, start string, stepMs int, dup, bad float64) []oracle.Record {
	t0, err := time.Parse(time.RFC3339, start)
	if err != nil {
		panic(err)
	}
	return oracle.Market(oracle.MarketSpec{Seed: seed, Symbols: 40, Trades: trades, Partitions: partitions,
		Start: t0, StepMs: stepMs, DuplicateRate: dup, BadRate: bad})
}

// 1. One member, 200,000 trades over several days of trade time, across a
// month end (March 31) and a Monday (April 1, 2024).
func TestOneMember(t *testing.T) {
	b := newBed(t, 4)
	recs := market(1, 200_000, 4, "2024-03-29T20:00:00Z", 1300, 0, 0)
	b.produce(recs)
	b.start("a")
	b.settle(4 * time.Minute)
	b.stop("a")
	b.check()
}

// 2. Three members; a fourth joins and one leaves while they work.
func TestMembersJoinAndLeave(t *testing.T) {
	b := newBed(t, 6)
	recs := market(2, 60_000, 6, "2024-02-28T22:00:00Z", 400, 0, 0)
	third := len(recs) / 3
	for _, n := range []string{"a", "b", "c"} {
		b.start(n)
	}
	b.waitMembers(3)
	b.produce(recs[:third])
	b.start("d")
	b.waitMembers(4)
	b.produce(recs[third : 2*third])
	b.stop("b")
	b.produce(recs[2*third:])
	b.settle(3 * time.Minute)
	for _, n := range []string{"a", "c", "d"} {
		b.stop(n)
	}
	b.check()
}

// 3. kill -9 of a member, twice, mid-stream, restarted each time.
func TestKillNine(t *testing.T) {
	b := newBed(t, 4)
	recs := market(3, 60_000, 4, "2024-12-31T21:00:00Z", 400, 0, 0)
	q := len(recs) / 4
	b.start("a")
	b.start("b")
	b.waitMembers(2)
	b.produce(recs[:q])
	b.waitProgress() // the members have committed state a restart can restore
	b.kill("a")
	b.produce(recs[q : 2*q])
	b.start("a")
	b.produce(recs[2*q : 3*q])
	b.waitProgress()
	b.kill("b")
	b.start("b")
	b.produce(recs[3*q:])
	b.settle(3 * time.Minute)
	logs := b.members["a"].log.String() + b.members["b"].log.String()
	b.stop("a")
	b.stop("b")
	b.check()
	if !restoredSomething(logs) {
		t.Fatalf("no restarted member restored any symbol from the state topic; logs:\n%s", tail(logs))
	}
}

// restoredSomething reports whether a member's log shows a restore that
// found state, i.e. the scenario exercised recovery rather than a fresh start.
func restoredSomething(log string) bool {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "msg=restored") && !strings.Contains(line, "symbols=0 ") {
			return true
		}
	}
	return false
}

// 4. The broker stopped for 10 s and started again mid-stream.
func TestBrokerRestart(t *testing.T) {
	needBroker(t)
	script, dir := os.Getenv("KLAGG_TEST_KAFKA_SCRIPT"), os.Getenv("KLAGG_TEST_KAFKA_DIR")
	if script == "" || dir == "" {
		t.Skip("KLAGG_TEST_KAFKA_SCRIPT and KLAGG_TEST_KAFKA_DIR are unset: cannot restart the broker")
	}
	b := newBed(t, 4)
	b.extra = []string{"--kafka-log-level", "info"}
	recs := market(4, 40_000, 4, "2025-06-29T22:00:00Z", 500, 0, 0)
	half := len(recs) / 2
	b.start("a")
	b.start("b")
	b.waitMembers(2)
	b.produce(recs[:half])
	time.Sleep(300 * time.Millisecond)
	if out, err := exec.Command("bash", script, "stop", dir).CombinedOutput(); err != nil {
		t.Fatalf("stop broker: %v\n%s", err, out)
	}
	time.Sleep(10 * time.Second)
	if out, err := exec.Command("bash", script, "restart", dir).CombinedOutput(); err != nil {
		t.Fatalf("start broker: %v\n%s", err, out)
	}
	b.produce(recs[half:])
	b.settle(4 * time.Minute)
	b.stop("a")
	b.stop("b")
	b.check()
}

// 5. 1% duplicate trades and 0.1% bad records: the candles are those of the
// clean stream, and every refused record is on the dead-letter topic with
// its reason.
func TestBadInputToDeadLetters(t *testing.T) {
	b := newBed(t, 3)
	recs := market(5, 50_000, 3, "2024-10-31T23:00:00Z", 300, 0.01, 0.001)
	metricsAddr := testkit.FreeAddr(t)
	b.extra = []string{"--metrics-addr", metricsAddr}
	b.start("a")
	b.produce(recs)
	b.settle(3 * time.Minute)
	cfg := processor.DefaultConfig()
	_, refused := oracle.Expected(recs, cfg.Engine.Periods, cfg.Engine.Grace)
	checkMetrics(t, metricsAddr, len(recs)-refused)
	b.stop("a")
	b.check()

	reasons := readDeadLetters(t, b.ctx, b.topic("dlq"))
	total := 0
	for _, n := range reasons {
		total += n
	}
	var bad, dup int
	for _, r := range recs {
		if r.Bad != nil {
			bad++
		}
	}
	dup = refused - bad
	if total != refused || reasons[schema.ReasonDuplicate.String()] < dup-reasons[schema.ReasonLate.String()] || bad == 0 || dup == 0 {
		t.Fatalf("dead letters by reason %v (total %d); want %d refused: %d bad, %d duplicate or late", reasons, total, refused, bad, dup)
	}
	t.Logf("dead letters by reason: %v", reasons)
}

// checkMetrics scrapes a member's /metrics and /readyz: every metric the
// README lists is served, and the folded-trades counter says folded.
func checkMetrics(t *testing.T, addr string, folded int) {
	t.Helper()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	code, body := get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for _, name := range []string{
		fmt.Sprintf(`klagg_trades_total{result="folded"} %d`, folded), `klagg_trades_total{result="duplicate"}`,
		`klagg_trades_total{result="late"}`, `klagg_trades_invalid_total{reason="malformed"}`,
		"klagg_klines_emitted_total", "klagg_dead_letters_total", "klagg_flush_duration_seconds_bucket",
		"klagg_flush_dirty_candles_bucket", "klagg_commit_duration_seconds_bucket", `klagg_consumer_lag_records{partition="2"} 0`,
		"klagg_restore_duration_seconds_count", "klagg_rebalances_total", "klagg_partitions_assigned 3",
		"klagg_fetch_rewinds_total 0", "klagg_kafka_", "process_resident_memory_bytes",
	} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if strings.Contains(body, "symbol=") {
		t.Error("a metric is labelled by symbol")
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := get(path); code != http.StatusOK {
			t.Errorf("%s: %d %s", path, code, body)
		}
	}
}

func readDeadLetters(t *testing.T, ctx context.Context, topic string) map[string]int {
	t.Helper()
	reasons := map[string]int{}
	err := oracle.ReadTopic(ctx, brokers, topic, func(r *kgo.Record) {
		reason := ""
		for _, h := range r.Headers {
			if h.Key == processor.HeaderReason {
				reason = string(h.Value)
			}
		}
		if reason == "" {
			t.Errorf("dead letter at %d/%d has no reason header", r.Partition, r.Offset)
		}
		reasons[reason]++
	})
	if err != nil {
		t.Fatal(err)
	}
	return reasons
}

// startWith starts a member with flags of its own after the bed's.
func (b *bed) startWith(name string, flags ...string) {
	b.t.Helper()
	saved := b.extra
	b.extra = append(slices.Clone(saved), flags...)
	b.start(name)
	b.extra = saved
}

// feed produces recs in n parts, one every pause, on its own goroutine;
// the returned channel closes when it is done. It records what it
// produced for the oracle only once done, so call b.produced after.
func (b *bed) feed(recs []oracle.Record, n int, pause time.Duration) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			part := recs[i*len(recs)/n : (i+1)*len(recs)/n]
			if err := oracle.Produce(b.ctx, b.cl, b.topic("trades"), part); err != nil {
				b.t.Error(err)
				return
			}
			time.Sleep(pause)
		}
	}()
	b.produced = append(b.produced, recs...)
	return done
}

// freeze stops a member with SIGSTOP for d, then lets it go on (SIGCONT):
// a GC pause, a VM migration or a laptop lid, past the session timeout.
func (b *bed) freeze(name string, d time.Duration) {
	b.t.Helper()
	p := b.members[name].cmd.Process
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		b.t.Fatal(err)
	}
	time.Sleep(d)
	if err := p.Signal(syscall.SIGCONT); err != nil {
		b.t.Fatal(err)
	}
}

// 6. Two members while trades flow; three times one is frozen for twice
// the session timeout (6 s), then thawed. The group gives its partitions
// away meanwhile; what it writes when it wakes must change nothing.
// Exactly-once: nothing it wrote after its partitions moved is committed,
// so every candle is exact and versions only go up.
func TestFreezeExactlyOnce(t *testing.T) {
	got := freezeScenario(t, "exactly-once")
	if len(got.Problems) > 0 {
		t.Fatalf("%d problems on the klines topic; first: %s", len(got.Problems), got.Problems[0])
	}
}

// At-least-once: the thawed member proves its membership before each
// flush and writes nothing once expelled, and restore prefers the state
// that reflects the most trades, so the newest version of every candle is
// exact (what ReplacingMergeTree keeps). A freeze that lands inside a
// produce can still let older versions through after newer ones; they are
// counted, not failed.
func TestFreezeAtLeastOnce(t *testing.T) {
	got := freezeScenario(t, "at-least-once")
	t.Logf("%d version regressions on the klines topic", got.Regressions)
	if len(got.Problems) > got.Regressions {
		for _, p := range got.Problems {
			if !strings.Contains(p, " after ") || strings.Contains(p, "not final") {
				t.Fatalf("problem on the klines topic: %s", p)
			}
		}
	}
}

func freezeScenario(t *testing.T, guarantee string) *oracle.Emitted {
	b := newBed(t, 6)
	b.extra = []string{"--guarantee", guarantee}
	recs := market(6, 120_000, 6, "2024-03-29T20:00:00Z", 1700, 0, 0)
	b.start("a")
	b.start("b")
	b.waitMembers(2)
	fed := b.feed(recs, 40, time.Second)
	for i, victim := range []string{"a", "b", "a"} {
		time.Sleep(2 * time.Second)
		t.Logf("freeze %d: member %s stopped for 12s", i+1, victim)
		b.freeze(victim, 12*time.Second)
	}
	<-fed
	b.settle(4 * time.Minute)
	logs := b.members["a"].log.String() + b.members["b"].log.String()
	b.stop("a")
	b.stop("b")
	want := b.expected()
	got, err := oracle.ReadKlines(b.ctx, b.brokers, b.topic("klines"))
	if err != nil {
		t.Fatal(err)
	}
	if d := oracle.Diff(got.Final, want); d != "" {
		t.Fatalf("%s\nlogs:\n%s", d, tail(logs))
	}
	if !strings.Contains(logs, "lost") {
		t.Fatalf("no member noticed it had been expelled; the freezes tested nothing; logs:\n%s", tail(logs))
	}
	t.Logf("%s: %d trades, %d final candles equal to the oracle's, %d kline records", guarantee, len(recs), len(want), got.Records)
	return got
}

// 7. Exactly-once, kill -9 with no restart: the survivor takes the dead
// member's partitions after the session timeout, and its restore waits
// for any transaction the dead member left open (at most the transaction
// timeout). The time from the kill to everything committed is logged.
func TestKillNineTakeover(t *testing.T) {
	b := newBed(t, 4)
	b.extra = []string{"--transaction-timeout", "10s"}
	recs := market(7, 40_000, 4, "2025-02-28T22:00:00Z", 500, 0, 0)
	b.start("a")
	b.start("b")
	b.waitMembers(2)
	b.produce(recs[:len(recs)/2])
	b.settle(2 * time.Minute)
	fed := b.feed(recs[len(recs)/2:], 10, 200*time.Millisecond)
	time.Sleep(500 * time.Millisecond)
	killed := time.Now()
	b.kill("a")
	<-fed
	b.settle(3 * time.Minute)
	t.Logf("kill -9 without a restart: everything committed %s after the kill (session timeout 6s, transaction timeout 10s)",
		time.Since(killed).Round(100*time.Millisecond))
	b.stop("b")
	b.check()
}

// 8. Static membership: members with --instance-id; one is killed and
// started again at once with the same id. It gets its partitions back
// without the group waiting for its session timeout (here 45 s): the
// whole stream is committed well before that.
func TestStaticMemberRestart(t *testing.T) {
	b := newBed(t, 4)
	b.extra = []string{"--session-timeout", "45s"}
	recs := market(8, 40_000, 4, "2025-09-28T22:00:00Z", 500, 0, 0)
	b.startWith("a", "--instance-id", "klagg-0")
	b.startWith("b", "--instance-id", "klagg-1")
	b.waitMembers(2)
	b.produce(recs[:len(recs)/2])
	b.settle(2 * time.Minute)
	b.kill("a")
	restarted := time.Now()
	b.startWith("a", "--instance-id", "klagg-0")
	b.produce(recs[len(recs)/2:])
	b.settle(3 * time.Minute)
	took := time.Since(restarted)
	t.Logf("kill -9 and restart with the same instance id: everything committed %s after the restart", took.Round(100*time.Millisecond))
	if took > 30*time.Second {
		t.Fatalf("the restarted static member took %s to catch up: its partitions waited as for a new member (session timeout 45s)", took)
	}
	b.stop("a")
	b.stop("b")
	b.check()
}

// 9. klagg serve with its on-disk store, killed (-9) while the member
// publishes and started again on the same --data: /api/v3/klines then
// answers what the oracle computed, for several symbols, intervals and
// ranges, every decimal exact.
func TestServeKlinesAPI(t *testing.T) {
	b := newBed(t, 3)
	recs := market(9, 30_000, 3, "2024-06-30T21:00:00Z", 400, 0, 0)
	addr, data := testkit.FreeAddr(t), t.TempDir()
	startServe := func() *member {
		srv := &member{cmd: exec.Command(binary, "serve", "--brokers", strings.Join(brokers, ","), "--klines-topic", b.topic("klines"),
			"--http", addr, "--data", data, "--log-format", "text"), log: &testkit.Buffer{}, done: make(chan struct{})}
		srv.cmd.Stdout, srv.cmd.Stderr = srv.log, srv.log
		if err := srv.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() {
			srv.err = srv.cmd.Wait()
			close(srv.done)
		}()
		b.members["serve"] = srv
		return srv
	}
	startServe()
	b.start("a")
	b.produce(recs[:len(recs)/2])
	// Once serve holds some candles, kill it mid-stream.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var rows [][]any
		if resp, err := http.Get(fmt.Sprintf("http://%s/api/v3/klines?symbol=SYM000USDT&interval=1m&limit=5", addr)); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			_ = json.Unmarshal(body, &rows)
		}
		if len(rows) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("serve holds no candle two minutes after the member started")
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.kill("serve")
	b.produce(recs[len(recs)/2:])
	srv := startServe()
	deadline = time.Now().Add(time.Minute)
	for !regexp.MustCompile(`store opened.*resumed=[1-9]`).MatchString(srv.log.String()) {
		if time.Now().After(deadline) {
			t.Fatalf("the restarted serve did not resume from its store's offsets:\n%s", tail(srv.log.String()))
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.settle(3 * time.Minute)
	b.stop("a")
	want := b.expected()

	type series struct{ symbol, period string }
	finals := map[series][]schema.Kline{}
	for k, v := range want {
		finals[series{k.Symbol, k.Period}] = append(finals[series{k.Symbol, k.Period}], v)
	}
	checked := 0
	for _, s := range []series{{"SYM000USDT", "1m"}, {"SYM001USDT", "5m"}, {"SYM002USDT", "1h"}, {"SYM005USDT", "30m"}} {
		f := finals[s]
		slices.SortFunc(f, func(x, y schema.Kline) int { return int(x.OpenTime - y.OpenTime) })
		if len(f) < 3 {
			t.Fatalf("%v: %d final candles in the oracle", s, len(f))
		}
		u := fmt.Sprintf("http://%s/api/v3/klines?symbol=%s&interval=%s&startTime=%d&endTime=%d&limit=1000",
			addr, s.symbol, s.period, f[0].OpenTime, f[len(f)-1].OpenTime)
		var rows [][]any
		deadline := time.Now().Add(time.Minute)
		for {
			rows = nil
			if resp, err := http.Get(u); err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				_ = json.Unmarshal(body, &rows)
			}
			if len(rows) == len(f) || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if len(rows) != len(f) {
			t.Fatalf("%v: %d candles from /api/v3/klines, the oracle has %d; serve's log:\n%s", s, len(rows), len(f), tail(srv.log.String()))
		}
		// Every decimal exactly the oracle's, as text.
		for i, r := range rows {
			w := f[i]
			if int64(r[0].(float64)) != w.OpenTime || int64(r[6].(float64)) != w.CloseTime || int64(r[8].(float64)) != w.TradeCount ||
				r[1] != w.Open.String() || r[2] != w.High.String() || r[3] != w.Low.String() || r[4] != w.Close.String() ||
				r[5] != w.Volume.String() || r[7] != w.QuoteVolume.String() || r[9] != w.TakerBuyVolume.String() ||
				r[10] != w.TakerBuyQuoteVolume.String() || r[11] != "0" {
				t.Fatalf("%v candle %d:\n api    %v\n oracle %+v", s, i, r, w)
			}
		}
		checked += len(rows)
	}
	t.Logf("%d candles from klagg serve's /api/v3/klines equal to the oracle's", checked)
}

// TestTransactionalProducer: trades from a transactional producer, as Kafka
// Streams, Flink or another klagg write them. Committed transactions count,
// aborted ones never (each is the next transaction's trades at ten times
// the price: read, they would change the candles and make the real ones
// duplicates), and the member reads past each transaction marker: it
// commits to the partitions' ends and the candles equal the oracle's.
func TestTransactionalProducer(t *testing.T) {
	b := newBed(t, 3)
	recs := market(8, 30_000, 3, "2024-03-31T22:00:00Z", 500, 0.01, 0.001)
	prod, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.TransactionalID(b.name+"-upstream"))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	txn := func(part []oracle.Record, end kgo.TransactionEndTry) {
		if err := prod.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		if err := oracle.Produce(b.ctx, prod, b.topic("trades"), part); err != nil {
			t.Fatal(err)
		}
		if err := prod.EndTransaction(b.ctx, end); err != nil {
			t.Fatal(err)
		}
	}
	b.start("a")
	const chunk = 3000
	for i := 0; i < len(recs); i += chunk {
		part := recs[i:min(i+chunk, len(recs))]
		tampered := slices.Clone(part)
		for j := range tampered {
			tampered[j].Trade.Price *= 10
		}
		txn(tampered, kgo.TryAbort)
		txn(part, kgo.TryCommit)
		b.produced = append(b.produced, part...)
	}
	b.settle(3 * time.Minute)
	b.stop("a")
	b.check()
}
