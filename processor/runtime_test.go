package processor_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sr"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/hint"
	"github.com/klagg/klagg/internal/oracle"
	"github.com/klagg/klagg/internal/testkit"
	"github.com/klagg/klagg/partition"
	"github.com/klagg/klagg/processor"
	"github.com/klagg/klagg/processor/engine"
	"github.com/klagg/klagg/schema"
)

func handled(s *processor.Stats) int64 {
	var n int64
	for i := range s.Trades {
		n += s.Trades[i].Load()
	}
	for i := range s.Invalid {
		n += s.Invalid[i].Load()
	}
	return n
}

// TestRunKfake runs two members against franz-go's in-process broker over
// three partitions of trades with duplicates and bad records mixed in; the
// final candles on the klines topic must equal the oracle's.
// producer is a client that writes records to the partitions they name,
// closed when the test ends.
func producer(t *testing.T, brokers []string) *kgo.Client {
	t.Helper()
	prod, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(prod.Close)
	return prod
}

// runMember runs a member with cfg, logging to the test's output, until
// stop, which fails the test if Run returned an error.
func runMember(t *testing.T, ctx context.Context, cfg processor.Config, opts ...processor.RunOption) (stats *processor.Stats, stop func()) {
	stats = &processor.Stats{}
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	opts = append([]processor.RunOption{processor.WithStats(stats), processor.WithRunLogger(slog.New(slog.NewTextHandler(t.Output(), nil)))}, opts...)
	go func() {
		done <- processor.Run(mctx, cfg, opts...)
	}()
	return stats, func() {
		t.Helper()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// waitCommitted waits until cfg's group has committed every trades offset.
func waitCommitted(t *testing.T, ctx context.Context, adm *kadm.Client, cfg processor.Config) {
	t.Helper()
	testkit.WaitFor(t, time.Minute, "offsets committed to the end", func() bool {
		ok, err := oracle.Committed(ctx, adm, cfg.Group, cfg.TradesTopic)
		return err == nil && ok
	})
}

// checkExact fails the test unless the final candles on cfg's klines
// topic are the oracle's for recs, and returns those.
func checkExact(t *testing.T, ctx context.Context, cfg processor.Config, recs []oracle.Record) map[oracle.Key]schema.Kline {
	t.Helper()
	want, _ := oracle.Expected(recs, cfg.Engine.Periods, cfg.Engine.Grace)
	if _, problem := oracle.Check(ctx, cfg.Brokers, cfg.KlinesTopic, want); problem != "" {
		t.Fatal(problem)
	}
	return want
}

func TestRunKfake(t *testing.T) {
	for _, g := range []processor.Guarantee{processor.ExactlyOnce, processor.AtLeastOnce} {
		t.Run(string(g), func(t *testing.T) { testRunKfake(t, g) })
	}
}

func testRunKfake(t *testing.T, g processor.Guarantee) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(3, "trades"))
	brokers := cluster.ListenAddrs()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	recs := oracle.Market(oracle.MarketSpec{Seed: 1, Symbols: 30, Trades: 12_000, Partitions: 3,
		Start: time.Date(2024, 2, 29, 23, 50, 0, 0, time.UTC), StepMs: 40, DuplicateRate: 0.01, BadRate: 0.002})
	prod := producer(t, brokers)
	if err := oracle.Produce(ctx, prod, "trades", recs); err != nil {
		t.Fatal(err)
	}

	cfg := processor.DefaultConfig()
	cfg.Brokers = brokers
	cfg.Guarantee = g
	cfg.FlushInterval = 50 * time.Millisecond
	stats := [2]*processor.Stats{{}, {}}
	var members [2]context.CancelFunc
	errs := make(chan error, 2)
	for i := range members {
		mctx, mcancel := context.WithCancel(ctx)
		members[i] = mcancel
		go func() {
			errs <- processor.Run(mctx, cfg, processor.WithStats(stats[i]), processor.WithRunLogger(slog.New(slog.NewTextHandler(t.Output(), nil))))
		}()
	}
	testkit.WaitFor(t, time.Minute, "every record handled", func() bool {
		select {
		case err := <-errs:
			t.Fatalf("a member stopped early: %v", err)
		default:
		}
		return handled(stats[0])+handled(stats[1]) >= int64(len(recs))
	})
	adm := kadm.NewClient(prod)
	waitCommitted(t, ctx, adm, cfg)
	for i := range members {
		members[i]()
		if err := <-errs; err != nil {
			t.Fatalf("member: %v", err)
		}
	}

	want, refused := oracle.Expected(recs, cfg.Engine.Periods, cfg.Engine.Grace)
	got, problem := oracle.Check(ctx, brokers, cfg.KlinesTopic, want)
	if problem != "" {
		t.Fatal(problem)
	}
	dead := stats[0].DeadLetters.Load() + stats[1].DeadLetters.Load()
	if dead < int64(refused) {
		t.Fatalf("%d dead letters, want at least %d", dead, refused)
	}
	t.Logf("%d records, %d final candles, %d kline records, %d dead letters", len(recs), len(want), got.Records, dead)
}

func TestRunRefusesMismatchedTopics(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(3, "trades"), kfake.SeedTopics(2, "klines"))
	cfg := processor.DefaultConfig()
	cfg.Brokers = cluster.ListenAddrs()
	err := processor.Run(t.Context(), cfg)
	if !errors.Is(err, partition.ErrPartitionMismatch) || !strings.Contains(err.Error(), `"klines" has 2 partitions but trades topic "trades" has 3`) {
		t.Fatalf("got %v", err)
	}
	// A trades topic that is not there yet is waited for, saying so; a
	// stop while waiting is a clean stop.
	cfg.TradesTopic = "nope"
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	var logs testkit.Buffer
	err = processor.Run(ctx, cfg, processor.WithRunLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil || !strings.Contains(logs.String(), "waiting") ||
		!strings.Contains(logs.String(), processor.ErrTopicMissing.Error()+`: \"nope\"`) {
		t.Fatalf("missing trades topic: %v\n%s", err, logs.String())
	}
}

// TestRunWaitsForTradesTopic: a member started before its trades topic
// exists starts once it is created.
func TestRunWaitsForTradesTopic(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1))
	cfg := processor.DefaultConfig()
	cfg.Brokers = cluster.ListenAddrs()
	stats := &processor.Stats{}
	ctx, cancel := context.WithCancel(t.Context())
	errs := make(chan error, 1)
	go func() { errs <- processor.Run(ctx, cfg, processor.WithStats(stats)) }()
	time.Sleep(time.Second) // the member is waiting: nothing to create yet
	if _, err := kadm.NewClient(mustClient(t, cluster)).CreateTopic(t.Context(), 2, 1, nil, cfg.TradesTopic); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 30*time.Second, "the member to own the new topic's partitions", func() bool { return stats.Assigned.Load() == 2 })
	cancel()
	if err := <-errs; err != nil {
		t.Fatalf("member: %v", err)
	}
}

// TestRunWaitsForTransactionCoordinator: a member with an instance id
// fences its predecessor's transactional id first; while the coordinator
// answers COORDINATOR_NOT_AVAILABLE (a cluster still starting) it waits
// with back-off, says so, and starts once the coordinator answers. The
// client retries such answers itself for up to 30 s, silently; it is
// told to retry once here, so that the member's own waiting shows.
func TestRunWaitsForTransactionCoordinator(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, processor.DefaultConfig().TradesTopic))
	var refused atomic.Int32
	cluster.ControlKey(int16(kmsg.InitProducerID), func(req kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		if refused.Load() >= 12 {
			return nil, nil, false
		}
		refused.Add(1)
		resp := req.(*kmsg.InitProducerIDRequest).ResponseKind().(*kmsg.InitProducerIDResponse)
		resp.ErrorCode = kerr.CoordinatorNotAvailable.Code
		return resp, nil, true
	})
	cfg := processor.DefaultConfig()
	cfg.Brokers, cfg.InstanceID = cluster.ListenAddrs(), "klagg-0"
	stats := &processor.Stats{}
	logs := &testkit.Buffer{}
	ctx, cancel := context.WithCancel(t.Context())
	errs := make(chan error, 1)
	go func() {
		errs <- processor.Run(ctx, cfg, processor.WithStats(stats), processor.WithKgoOpts(kgo.RequestRetries(1)),
			processor.WithRunLogger(slog.New(slog.NewTextHandler(logs, nil))))
	}()
	testkit.WaitFor(t, 30*time.Second, "the member to own the partitions", func() bool { return stats.Assigned.Load() == 2 })
	cancel()
	if err := <-errs; err != nil {
		t.Fatalf("member: %v", err)
	}
	if refused.Load() < 12 || !strings.Contains(logs.String(), "waiting for the transaction coordinator") {
		t.Fatalf("refused %d times; logs:\n%s", refused.Load(), logs.String())
	}
}

// TestRegistryRefusesKlineSchema2: a subject that holds kline schema 1
// under BACKWARD compatibility refuses schema 2, as Confluent's registry
// does (srfake does not check compatibility: an interceptor answers as the
// registry would). klagg stops at start-up, before it creates anything,
// with an error that names the subject and both ways forward; once the
// subject's level is NONE, it starts.
func TestRegistryRefusesKlineSchema2(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "trades"))
	reg := srfake.New(srfake.WithGlobalCompat(sr.CompatBackward))
	defer reg.Close()
	v1, err := os.ReadFile("../schema/kline.v1.avsc")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := reg.RegisterSchema("klines-value", sr.Schema{Schema: string(v1), Type: sr.TypeAvro}); err != nil {
		t.Fatal(err)
	}
	var none atomic.Bool // the subject's level is NONE
	reg.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodPost || r.URL.Path != "/subjects/klines-value/versions" || none.Load() {
			return false
		}
		w.Header().Set("Content-Type", "application/vnd.schemaregistry.v1+json")
		w.WriteHeader(http.StatusConflict)
		fmt.Fprintf(w, `{"error_code":409,"message":"Schema being registered is incompatible with an earlier schema for subject \"klines-value\""}`)
		return true
	})
	cfg := processor.DefaultConfig()
	cfg.Brokers = cluster.ListenAddrs()
	cfg.SchemaRegistry = reg.URL()
	err = processor.Run(t.Context(), cfg)
	var ise *processor.IncompatibleSchemaError
	var h *hint.Error
	if !errors.As(err, &ise) || ise.Subject != "klines-value" || !strings.Contains(err.Error(), `{"compatibility":"NONE"}`) ||
		!errors.As(err, &h) || h.Setting != "KlinesTopic" {
		t.Fatalf("got %v", err)
	}
	if topics, _ := kadm.NewClient(mustClient(t, cluster)).ListTopics(t.Context()); topics.Has("klines") {
		t.Fatal("klagg created its topics before the registry accepted the schema")
	}
	none.Store(true)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- processor.Run(ctx, cfg) }()
	testkit.WaitFor(t, 20*time.Second, "schema 2 registered", func() bool {
		s, ok := reg.GetSchema("klines-value", 2)
		return ok && s.Schema.Schema == schema.KlineSchemaText
	})
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("after NONE: %v", err)
	}
}

func mustClient(t *testing.T, c *kfake.Cluster) *kgo.Client {
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// TestDeliveryFailureRestartsShard: while the broker refuses produce
// requests for good (MESSAGE_TOO_LARGE is not retried), the
// shard must not commit past them; it restarts from its last commit, and
// once the broker accepts again the candles are complete and exact.
func TestDeliveryFailureRestartsShard(t *testing.T) {
	for _, g := range []processor.Guarantee{processor.ExactlyOnce, processor.AtLeastOnce} {
		t.Run(string(g), func(t *testing.T) { testDeliveryFailureRestartsShard(t, g) })
	}
}

func testDeliveryFailureRestartsShard(t *testing.T, g processor.Guarantee) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "trades"))
	var refuse atomic.Bool
	refused := refuseProduces(cluster, refuse.Load)
	brokers := cluster.ListenAddrs()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	recs := oracle.Market(oracle.MarketSpec{Seed: 3, Symbols: 10, Trades: 5_000, Partitions: 1,
		Start: time.Date(2024, 6, 30, 23, 55, 0, 0, time.UTC), StepMs: 60})
	prod := producer(t, brokers)
	if err := oracle.Produce(ctx, prod, "trades", recs[:len(recs)/2]); err != nil {
		t.Fatal(err)
	}
	refuse.Store(true) // from here every produce fails for good, until cleared

	cfg := processor.DefaultConfig()
	cfg.Brokers = brokers
	cfg.Guarantee = g
	cfg.FlushInterval = 50 * time.Millisecond
	stats, stop := runMember(t, ctx, cfg)

	testkit.WaitFor(t, time.Minute, "two shard restarts", func() bool { return stats.Restarts.Load() >= 2 })
	adm := kadm.NewClient(prod)
	if commits, err := adm.FetchOffsets(ctx, cfg.Group); err == nil {
		if c, ok := commits.Lookup("trades", 0); ok && c.At > 0 {
			t.Fatalf("committed offset %d while every klines delivery failed", c.At)
		}
	}
	refuse.Store(false)
	if err := oracle.Produce(ctx, prod, "trades", recs[len(recs)/2:]); err != nil {
		t.Fatal(err)
	}
	waitCommitted(t, ctx, adm, cfg)
	stop()
	want := checkExact(t, ctx, cfg, recs)
	t.Logf("%d produce requests refused, %d restarts; %d final candles exact", refused.Load(), stats.Restarts.Load(), len(want))
}

// refuseProduces makes cluster fail every partition of a produce request
// for good (MESSAGE_TOO_LARGE) whenever refuse, asked once per request,
// says so; it counts the requests refused.
func refuseProduces(cluster *kfake.Cluster, refuse func() bool) *atomic.Int64 {
	var refused atomic.Int64
	cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		if !refuse() {
			return nil, nil, false
		}
		refused.Add(1)
		pr := req.(*kmsg.ProduceRequest)
		resp := pr.ResponseKind().(*kmsg.ProduceResponse)
		for _, rt := range pr.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID // v13+ names topics by id
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.MessageTooLarge.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	return &refused
}

// TestPipelinedFinalsExactlyOnce: a backlog under exactly-once sends its
// final candles out in pieces that are acknowledged while the shard folds
// on. Some of those pieces fail: the transaction holding them aborts, the
// shard is rebuilt from the committed state, and the candles stay exact.
func TestPipelinedFinalsExactlyOnce(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "trades"))
	var produces atomic.Int64
	var failing atomic.Bool
	refused := refuseProduces(cluster, func() bool { return failing.Load() && produces.Add(1)%9 == 0 })
	brokers := cluster.ListenAddrs()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	// Two hours of 40 symbols: thousands of final candles, in small pieces.
	recs := oracle.Market(oracle.MarketSpec{Seed: 5, Symbols: 40, Trades: 20_000, Partitions: 1,
		Start: time.Date(2024, 3, 31, 22, 30, 0, 0, time.UTC), StepMs: 360})
	prod := producer(t, brokers)
	if err := oracle.Produce(ctx, prod, "trades", recs); err != nil {
		t.Fatal(err)
	}
	failing.Store(true)

	cfg := processor.DefaultConfig()
	cfg.Brokers = brokers
	cfg.Engine.MaxPending = 8
	cfg.FlushInterval = 50 * time.Millisecond
	stats, stop := runMember(t, ctx, cfg)
	testkit.WaitFor(t, time.Minute, "three aborted transactions", func() bool { return stats.Aborts.Load() >= 3 })
	failing.Store(false)
	adm := kadm.NewClient(prod)
	waitCommitted(t, ctx, adm, cfg)
	stop()
	if stats.Backlogs.Load() == 0 {
		t.Fatal("no shard was ever backlogged: no final candles went out in pieces")
	}
	want := checkExact(t, ctx, cfg, recs)
	t.Logf("%d backlogs, %d produce requests refused, %d aborts, %d rebuilds; %d final candles exact",
		stats.Backlogs.Load(), refused.Load(), stats.Aborts.Load(), stats.Restarts.Load(), len(want))
}

// TestFetchPastResumeRewinds: a client whose fetch position for a
// partition is past the offset the shard's state reflects (here the first
// assignment starts partition 0 a thousand records in, as if the client
// had lost its place) must not have the member fold from there: those
// records would be in no candle. The member sets the position back, and
// the candles come out exact.
func TestFetchPastResumeRewinds(t *testing.T) {
	for _, g := range []processor.Guarantee{processor.ExactlyOnce, processor.AtLeastOnce} {
		t.Run(string(g), func(t *testing.T) { testFetchPastResumeRewinds(t, g) })
	}
}

func testFetchPastResumeRewinds(t *testing.T, g processor.Guarantee) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "trades"))
	brokers := cluster.ListenAddrs()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	recs := oracle.Market(oracle.MarketSpec{Seed: 9, Symbols: 8, Trades: 6_000, Partitions: 2,
		Start: time.Date(2024, 6, 1, 23, 30, 0, 0, time.UTC), StepMs: 700})
	prod := producer(t, brokers)
	if err := oracle.Produce(ctx, prod, "trades", recs); err != nil {
		t.Fatal(err)
	}
	cfg := processor.DefaultConfig()
	cfg.Brokers = brokers
	cfg.Guarantee = g
	cfg.FlushInterval = 50 * time.Millisecond
	var skipped atomic.Bool
	skip := kgo.AdjustFetchOffsetsFn(func(_ context.Context, offs map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
		if ps, ok := offs[cfg.TradesTopic]; ok {
			if _, ok := ps[0]; ok && !skipped.Swap(true) {
				ps[0] = kgo.NewOffset().At(1_000)
			}
		}
		return offs, nil
	})
	stats, stop := runMember(t, ctx, cfg, processor.WithMemberKgoOpts(skip))
	adm := kadm.NewClient(prod)
	waitCommitted(t, ctx, adm, cfg)
	stop()
	checkExact(t, ctx, cfg, recs)
	if !skipped.Load() || stats.Rewinds.Load() == 0 {
		t.Fatalf("skipped %v, %d rewinds: the scenario did not happen", skipped.Load(), stats.Rewinds.Load())
	}
}

// TestCommitPastDeadlineAborts: a transaction that cannot commit well
// inside the transaction timeout (the broker stalls its acknowledgements
// past it) aborts rather than commit late: past the timeout the
// coordinator may abort it on its own, and an offset commit the client
// retried after that would be left pending on the group. The member goes
// on and the candles come out exact.
func TestCommitPastDeadlineAborts(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "trades"))
	var stalls, late atomic.Int64
	var armed atomic.Bool // once the trades are in: the member's produce requests
	// The control functions run on the cluster's one goroutine: began
	// needs no lock. It is when the open transaction's first record came.
	var began time.Time
	cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		if req.(*kmsg.ProduceRequest).TransactionID != nil && began.IsZero() {
			began = time.Now()
		}
		if armed.Load() && stalls.Load() < 2 {
			stalls.Add(1)
			time.Sleep(2500 * time.Millisecond) // the whole broker stalls
		}
		return nil, nil, false
	})
	cluster.ControlKey(int16(kmsg.EndTxn), func(kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		began = time.Time{}
		return nil, nil, false
	})
	// An offset commit that reaches the group past the transaction
	// timeout could come after the coordinator aborted the transaction.
	cluster.ControlKey(int16(kmsg.TxnOffsetCommit), func(kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		if !began.IsZero() && time.Since(began) > 2*time.Second {
			late.Add(1)
		}
		return nil, nil, false
	})
	brokers := cluster.ListenAddrs()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	recs := oracle.Market(oracle.MarketSpec{Seed: 11, Symbols: 10, Trades: 3_000, Partitions: 1,
		Start: time.Date(2024, 2, 29, 23, 40, 0, 0, time.UTC), StepMs: 400})
	prod := producer(t, brokers)
	if err := oracle.Produce(ctx, prod, "trades", recs); err != nil {
		t.Fatal(err)
	}
	cfg := processor.DefaultConfig()
	cfg.Brokers = brokers
	armed.Store(true)
	cfg.TransactionTimeout = 2 * time.Second // commits by 1.6 s after Begin
	cfg.FlushInterval = 100 * time.Millisecond
	stats, stop := runMember(t, ctx, cfg)
	adm := kadm.NewClient(prod)
	waitCommitted(t, ctx, adm, cfg)
	stop()
	checkExact(t, ctx, cfg, recs)
	if stalls.Load() < 2 || stats.Aborts.Load() == 0 || late.Load() > 0 {
		t.Fatalf("%d stalls, %d aborts, %d offset commits past the transaction timeout", stalls.Load(), stats.Aborts.Load(), late.Load())
	}
	t.Logf("%d stalls, %d aborts, %d commits", stalls.Load(), stats.Aborts.Load(), stats.Commits.Load())
}

// TestIdleTransactionKeptOpen: an exactly-once member with nothing to
// commit ends no transaction (franz-go's End holds the session 500 ms after
// a commit without offsets), flushes on, and when trades come after an
// idle stretch longer than the commit deadline, the transaction that was
// left open commits them rather than aborting as if it were stale.
func TestIdleTransactionKeptOpen(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "trades"))
	brokers := cluster.ListenAddrs()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cfg := processor.DefaultConfig()
	cfg.Brokers = brokers
	cfg.TransactionTimeout = time.Second // commit deadline 800 ms after Begin
	cfg.FlushInterval = 50 * time.Millisecond
	stats, stop := runMember(t, ctx, cfg)

	testkit.WaitFor(t, time.Minute, "the partition assigned", func() bool { return stats.Assigned.Load() == 1 })
	idleFrom := time.Now().UnixMilli()
	testkit.WaitFor(t, time.Minute, "flushes through 1.5 s of idling", func() bool {
		return stats.LastFlush.Load() >= idleFrom+1500
	})
	if n := stats.Commits.Load(); n != 0 {
		t.Fatalf("an idle member committed %d transactions, want none", n)
	}

	recs := oracle.Market(oracle.MarketSpec{Seed: 5, Symbols: 5, Trades: 500, Partitions: 1,
		Start: time.Date(2024, 2, 29, 23, 55, 0, 0, time.UTC), StepMs: 1000})
	if err := oracle.Produce(ctx, producer(t, brokers), "trades", recs); err != nil {
		t.Fatal(err)
	}
	waitCommitted(t, ctx, kadm.NewClient(mustClient(t, cluster)), cfg)
	stop()
	checkExact(t, ctx, cfg, recs)
	if stats.Aborts.Load() != 0 || stats.Commits.Load() == 0 {
		t.Fatalf("%d aborts, %d commits after the idle stretch: want none and some", stats.Aborts.Load(), stats.Commits.Load())
	}
}

// TestRunStopsOnCorruptState: a shard that cannot be restored must not fold
// trades without its state (it would count them twice): Run stops with an
// error that names the record.
func TestRunStopsOnCorruptState(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "trades"), kfake.SeedTopics(1, "klines-state"))
	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(t.Context(), &kgo.Record{Topic: "klines-state", Key: []byte("BTCUSDT"), Value: []byte("not a state record")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cfg := processor.DefaultConfig()
	cfg.Brokers = cluster.ListenAddrs()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	err = processor.Run(ctx, cfg)
	var bad *processor.BadStateError
	if !errors.As(err, &bad) || bad.Offset != 0 || bad.Symbol != "BTCUSDT" || !strings.Contains(err.Error(), "klines-state/0@0") ||
		!strings.Contains(err.Error(), "set BadState to rebuild") || !errors.Is(err, schema.ErrUnknownFraming) {
		t.Fatalf("got %v", err)
	}
}

// TestBadStateRebuild: with --bad-state rebuild, a member given a
// partition whose state topic holds an unreadable record for one symbol
// rebuilds that symbol from the trades still on the trades topic, and the
// candles come out exact.
func TestBadStateRebuild(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "trades"))
	brokers := cluster.ListenAddrs()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	recs := oracle.Market(oracle.MarketSpec{Seed: 9, Symbols: 8, Trades: 6_000, Partitions: 1,
		Start: time.Date(2024, 12, 31, 23, 40, 0, 0, time.UTC), StepMs: 300})
	prod := producer(t, brokers)
	adm := kadm.NewClient(prod)
	cfg := processor.DefaultConfig()
	cfg.Brokers = brokers
	cfg.FlushInterval = 50 * time.Millisecond
	runUntilCommitted := func(cfg processor.Config, stats *processor.Stats) {
		mctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- processor.Run(mctx, cfg, processor.WithStats(stats)) }()
		testkit.WaitFor(t, time.Minute, "offsets committed to the end", func() bool {
			select {
			case err := <-done:
				t.Fatalf("member stopped: %v", err)
			default:
			}
			ok, err := oracle.Committed(ctx, adm, cfg.Group, cfg.TradesTopic)
			return err == nil && ok
		})
		stop()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	half := len(recs) / 2
	if err := oracle.Produce(ctx, prod, "trades", recs[:half]); err != nil {
		t.Fatal(err)
	}
	runUntilCommitted(cfg, &processor.Stats{})

	// The busiest symbol's state is now one bad byte (a disk, a tool).
	victim := recs[0].Trade.Symbol
	if err := prod.ProduceSync(ctx, &kgo.Record{Topic: cfg.StateTopic, Partition: 0, Key: []byte(victim), Value: []byte{0xC3, 0x01, 1}}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if err := oracle.Produce(ctx, prod, "trades", recs[half:]); err != nil {
		t.Fatal(err)
	}
	cfg.BadState = processor.BadStateRebuild
	stats := &processor.Stats{}
	runUntilCommitted(cfg, stats)
	if n := stats.RebuiltStates.Load(); n != 1 {
		t.Fatalf("%d symbols rebuilt, want 1", n)
	}
	want := checkExact(t, ctx, cfg, recs)
	t.Logf("%s rebuilt from %d trades records; %d final candles exact", victim, half, len(want))
}

// TestTransactionalTrades: trades written by a transactional producer
// (Kafka Streams, Flink and klagg itself write so) end each transaction with
// a marker that takes an offset. A member must count a partition read up to
// its marker as caught up: commit up to the end (no lag of one record
// forever) and let the idle watermark make the candles final without more
// trades.
func TestTransactionalTrades(t *testing.T) {
	for _, g := range []processor.Guarantee{processor.ExactlyOnce, processor.AtLeastOnce} {
		t.Run(string(g), func(t *testing.T) { testTransactionalTrades(t, g) })
	}
}

func testTransactionalTrades(t *testing.T, g processor.Guarantee) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "trades"))
	brokers := cluster.ListenAddrs()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	prod, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.TransactionalID("upstream"), kgo.DefaultProduceTopic("trades"))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	// Trades of a minute the member's clock is about to end, so that the
	// idle watermark finishes it within seconds.
	minuteEnd := time.Now().Truncate(time.Minute)
	shift := minuteEnd.Add(-50 * time.Millisecond).Sub(time.Now())
	clock := func() time.Time { return time.Now().Add(shift) }
	for i := range 3 {
		if err := prod.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		tr := schema.Trade{Symbol: []byte("TXNUSDT"), AggID: int64(i + 1), Price: decimal.Fixed(10+i) * 100_000_000, Quantity: 100_000_000,
			FirstID: int64(i + 1), LastID: int64(i + 1), Time: minuteEnd.Add(-time.Duration(3-i) * 100 * time.Millisecond).UnixMilli()}
		if err := prod.ProduceSync(ctx, &kgo.Record{Key: tr.Symbol, Value: schema.AppendBinanceJSON(nil, &tr)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
		if err := prod.EndTransaction(ctx, kgo.TryCommit); err != nil {
			t.Fatal(err)
		}
	}

	cfg := processor.DefaultConfig()
	cfg.Brokers = brokers
	cfg.Guarantee = g
	cfg.FlushInterval = 50 * time.Millisecond
	mctx, mcancel := context.WithCancel(ctx)
	errs := make(chan error, 1)
	go func() {
		errs <- processor.Run(mctx, cfg, processor.WithClock(clock), processor.WithRunLogger(slog.New(slog.NewTextHandler(t.Output(), nil))))
	}()
	defer func() {
		mcancel()
		if err := <-errs; err != nil {
			t.Errorf("member: %v", err)
		}
	}()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(cfg.KlinesTopic), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		fctx, fcancel := context.WithTimeout(ctx, time.Second)
		fetches := cl.PollFetches(fctx)
		fcancel()
		final := false
		fetches.EachRecord(func(r *kgo.Record) {
			var k schema.Kline
			if schema.DecodeKline(r.Value, &k) == nil && k.Period == "1m" && k.IsFinal && k.TradeCount == 3 {
				final = true
			}
		})
		if final {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the 1m candle of the transactional trades is not final 20 s later: the member thinks it is behind")
		}
	}
	adm := kadm.NewClient(prod)
	testkit.WaitFor(t, 20*time.Second, "offsets committed to the end, past the last marker", func() bool {
		ok, err := oracle.Committed(ctx, adm, cfg.Group, cfg.TradesTopic)
		return err == nil && ok
	})
}

// TestRestoreDoubleState: a state record of schema 2 (doubles) written by
// klagg before decimal candles (schema/testdata/state.v2-inexact.bin)
// restores, the member says what it converted, and the restored candle
// goes on exactly: its sums plus a new trade's, digit for digit.
func TestRestoreDoubleState(t *testing.T) {
	rec, err := os.ReadFile("../schema/testdata/state.v2-inexact.bin")
	if err != nil {
		t.Fatal(err)
	}
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "trades"), kfake.SeedTopics(1, "klines-state"),
		kfake.SeedTopics(1, "klines"))
	cl := mustClient(t, cluster)
	recs := []*kgo.Record{{Topic: "klines-state", Key: []byte("BTCUSDT"), Value: rec}}
	// The record reflects trades offsets up to 99: fill them with another
	// symbol, then one BTCUSDT trade in the restored 1m candle.
	at := time.UnixMilli(1680652830000) // 2023-04-05 00:00:30
	for i := range 100 {
		tr := schema.Trade{Symbol: []byte("ETHUSDT"), AggID: int64(i + 1), Price: 190_000_000_000, Quantity: 100_000_000,
			FirstID: int64(i), LastID: int64(i), Time: at.UnixMilli()}
		recs = append(recs, &kgo.Record{Topic: "trades", Key: tr.Symbol, Value: schema.AppendBinanceJSON(nil, &tr)})
	}
	btc := schema.Trade{Symbol: []byte("BTCUSDT"), AggID: 3071245461, Price: 2816441000000, Quantity: 100_000,
		FirstID: 3071245461, LastID: 3071245461, Time: at.UnixMilli(), BuyerMaker: false}
	recs = append(recs, &kgo.Record{Topic: "trades", Key: btc.Symbol, Value: schema.AppendBinanceJSON(nil, &btc)})
	if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cfg := processor.DefaultConfig()
	cfg.Brokers = cluster.ListenAddrs()
	cfg.FlushInterval = 50 * time.Millisecond
	var logs testkit.Buffer
	ctx, cancel := context.WithCancel(t.Context())
	errs := make(chan error, 1)
	go func() {
		// The wall clock a second after the trade, and running.
		skew := time.Until(at.Add(time.Second))
		errs <- processor.Run(ctx, cfg, processor.WithClock(func() time.Time { return time.Now().Add(skew) }),
			processor.WithRunLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	}()
	defer func() {
		cancel()
		if err := <-errs; err != nil {
			t.Errorf("member: %v", err)
		}
	}()
	var got schema.Kline
	testkit.WaitFor(t, 20*time.Second, "the restored BTCUSDT 1m candle with the new trade", func() bool {
		_ = oracle.ReadTopic(t.Context(), cluster.ListenAddrs(), "klines", func(r *kgo.Record) {
			var k schema.Kline
			if schema.DecodeKline(r.Value, &k) == nil && k.Symbol == "BTCUSDT" && k.Period == "1m" && k.TradeCount == 3 {
				got = k
			}
		})
		return got.TradeCount == 3
	})
	// 0.00184 + 0.001; 51.8244648 + 28.16441; the taker sums: 0 + 0.001
	// and 0.30000000000000004 (rounded at 16 digits to 0.3) + 28.16441.
	if got.Volume.String() != "0.00284000" || got.QuoteVolume.String() != "79.98887480" ||
		got.TakerBuyVolume.String() != "0.00100000" || got.TakerBuyQuoteVolume.String() != "28.46441000" ||
		got.Open.String() != "28165.47000000" || got.Low.String() != "28164.41000000" {
		t.Fatalf("restored candle %+v", got)
	}
	if !strings.Contains(logs.String(), "restored state written with doubles") || !strings.Contains(logs.String(), "records=1 values_rounded_to_scale=1") {
		t.Fatalf("the member did not say what it converted:\n%s", logs.String())
	}
}

// TestAvroTradesBothSchemas: Confluent-framed Avro trades of trade schema 1
// (doubles, registered under trades-value by an older producer) and of
// schema 2 (decimals) on one topic: the member learns schema 1's id from
// the registry at start-up and folds both exactly.
func TestAvroTradesBothSchemas(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "trades"))
	reg := srfake.New()
	defer reg.Close()
	v1ID, _, err := reg.RegisterSchema("trades-value", sr.Schema{Schema: schema.TradeSchemaV1Text, Type: sr.TypeAvro})
	if err != nil {
		t.Fatal(err)
	}
	v2ID, _, err := reg.RegisterSchema("trades-value", sr.Schema{Schema: schema.TradeSchemaText, Type: sr.TypeAvro})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now().Add(-time.Hour).Truncate(time.Minute)
	var recs []*kgo.Record
	for i := range 4 {
		tr := schema.Trade{Symbol: []byte("BTCUSDT"), AggID: int64(i + 1), Price: 2816547000000 + decimal.Fixed(i)*1_000_000,
			Quantity: 56_000 * decimal.Fixed(i+1), FirstID: int64(i), LastID: int64(i), Time: at.Add(time.Duration(i) * time.Second).UnixMilli()}
		value := binary.BigEndian.AppendUint32([]byte{0}, uint32(v2ID))
		value = schema.AppendAvroTradeBody(value, &tr)
		if i%2 == 0 {
			value = schema.AppendAvroTradeBodyV1(binary.BigEndian.AppendUint32([]byte{0}, uint32(v1ID)), &tr)
		}
		recs = append(recs, &kgo.Record{Topic: "trades", Key: tr.Symbol, Value: value})
	}
	if err := mustClient(t, cluster).ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cfg := processor.DefaultConfig()
	cfg.Brokers = cluster.ListenAddrs()
	cfg.SchemaRegistry = reg.URL()
	cfg.InputFormat = schema.InputAvro
	cfg.FlushInterval = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(t.Context())
	errs := make(chan error, 1)
	go func() { errs <- processor.Run(ctx, cfg) }()
	defer func() {
		cancel()
		if err := <-errs; err != nil {
			t.Errorf("member: %v", err)
		}
	}()
	var got schema.Kline
	testkit.WaitFor(t, 20*time.Second, "the 1m candle of all four trades, two of schema 1", func() bool {
		_ = oracle.ReadTopic(t.Context(), cluster.ListenAddrs(), "klines", func(r *kgo.Record) {
			var k schema.Kline
			if schema.DecodeKline(r.Value, &k) == nil && k.Period == "1m" && k.TradeCount == 4 {
				got = k
			}
		})
		return got.TradeCount == 4
	})
	// 0.00056 + 0.00112 + 0.00168 + 0.00224; 28165.47 × 0.00056 + 28165.48 ×
	// 0.00112 + 28165.49 × 0.00168 + 28165.50 × 0.00224.
	if got.Volume.String() != "0.00560000" || got.QuoteVolume.String() != "157.72674400" || got.High.String() != "28165.50000000" {
		t.Fatalf("candle %+v", got)
	}
}

// TestSumsOutOfRangeToDeadLetters: trades of the largest price and
// quantity until a candle's sums pass 2^125: the next is a dead letter
// with reason out_of_range, and the member goes on.
func TestSumsOutOfRangeToDeadLetters(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "trades"))
	at := time.Now().Add(-time.Hour).Truncate(time.Minute)
	var recs []*kgo.Record
	for i := range 6 {
		tr := schema.Trade{Symbol: []byte("MAXUSDT"), AggID: int64(i + 1), Price: decimal.MaxFixed, Quantity: decimal.MaxFixed,
			FirstID: int64(i), LastID: int64(i), Time: at.Add(time.Duration(i) * time.Second).UnixMilli()}
		recs = append(recs, &kgo.Record{Topic: "trades", Key: tr.Symbol, Value: schema.AppendBinanceJSON(nil, &tr)})
	}
	if err := mustClient(t, cluster).ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cfg := processor.DefaultConfig()
	cfg.Brokers = cluster.ListenAddrs()
	cfg.FlushInterval = 50 * time.Millisecond
	stats := &processor.Stats{}
	ctx, cancel := context.WithCancel(t.Context())
	errs := make(chan error, 1)
	go func() { errs <- processor.Run(ctx, cfg, processor.WithStats(stats)) }()
	defer func() {
		cancel()
		if err := <-errs; err != nil {
			t.Errorf("member: %v", err)
		}
	}()
	reasons := map[string]int{}
	testkit.WaitFor(t, 20*time.Second, "the refused trades on the dead-letter topic", func() bool {
		clear(reasons)
		_ = oracle.ReadTopic(t.Context(), cluster.ListenAddrs(), cfg.DLQTopic, func(r *kgo.Record) {
			for _, h := range r.Headers {
				if h.Key == "klagg.reason" {
					reasons[string(h.Value)]++
				}
			}
		})
		return reasons["out_of_range"] > 0 && int64(reasons["out_of_range"]) == stats.Trades[engine.OutOfRange].Load() &&
			stats.Trades[engine.Folded].Load()+stats.Trades[engine.OutOfRange].Load() == int64(len(recs))
	})
	if stats.Trades[engine.Folded].Load() < 1 {
		t.Fatalf("no trade folded before the bound: %v", reasons)
	}
}
