package integration_test

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/internal/testkit"
	"github.com/klagg/klagg/processor"
)

// The three-node cluster of scripts/kafka.sh (replication factor 3,
// min.insync.replicas 2, __consumer_offsets and __transaction_state
// replicated 3), started by the first test that needs it and stopped by
// TestMain. Node n has node.id n and is the n-th address.
var kcluster struct {
	once    sync.Once
	script  string
	dir     string
	brokers []string
	err     error
	// The brokers listen on the host end of a veth pair whose other end is
	// in network namespace ns, so that a member run there can be cut off
	// (link down) or black-holed while it keeps running; netnsErr says why
	// there is none (not root, no ip(8)), and the cluster is on loopback.
	ns, hostIf, nsIf, hostIP, nsIP string
	netnsErr                       error
}

// makeNetns makes the namespace and its veth pair, on private addresses
// of their own.
func makeNetns() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("not root")
	}
	id := os.Getpid() % 100_000
	kcluster.ns, kcluster.hostIf, kcluster.nsIf = fmt.Sprintf("klagg%d", id), fmt.Sprintf("kh%d", id), fmt.Sprintf("kn%d", id)
	kcluster.hostIP, kcluster.nsIP = fmt.Sprintf("10.213.%d.1", id%250), fmt.Sprintf("10.213.%d.2", id%250)
	for _, argv := range [][]string{
		{"ip", "netns", "add", kcluster.ns},
		{"ip", "link", "add", kcluster.hostIf, "type", "veth", "peer", "name", kcluster.nsIf},
		{"ip", "link", "set", kcluster.nsIf, "netns", kcluster.ns},
		{"ip", "addr", "add", kcluster.hostIP + "/30", "dev", kcluster.hostIf},
		{"ip", "link", "set", kcluster.hostIf, "up"},
		{"ip", "netns", "exec", kcluster.ns, "ip", "addr", "add", kcluster.nsIP + "/30", "dev", kcluster.nsIf},
		{"ip", "netns", "exec", kcluster.ns, "ip", "link", "set", kcluster.nsIf, "up"},
		{"ip", "netns", "exec", kcluster.ns, "ip", "link", "set", "lo", "up"},
	} {
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			removeNetns()
			return fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, out)
		}
	}
	return nil
}

func removeNetns() {
	if kcluster.ns != "" {
		_ = exec.Command("ip", "netns", "del", kcluster.ns).Run() // the veth pair goes with it
	}
}

// needCluster returns the cluster's addresses, starting it once.
func needCluster(t *testing.T) []string {
	t.Helper()
	needBroker(t)
	script := os.Getenv("KLAGG_TEST_KAFKA_SCRIPT")
	if script == "" {
		t.Skip("KLAGG_TEST_KAFKA_SCRIPT is unset: cannot start the three-node cluster")
	}
	kcluster.once.Do(func() {
		kcluster.script = script
		if kcluster.dir, kcluster.err = os.MkdirTemp("", "klagg-cluster"); kcluster.err != nil {
			return
		}
		cmd := exec.Command("bash", script, "cluster-start", kcluster.dir)
		if kcluster.netnsErr = makeNetns(); kcluster.netnsErr == nil {
			cmd.Env = append(os.Environ(), "KAFKA_HOST="+kcluster.hostIP)
		}
		out, err := cmd.Output()
		if err != nil {
			kcluster.err = fmt.Errorf("cluster-start: %w: %s", err, out)
			return
		}
		kcluster.brokers = strings.Split(strings.TrimSpace(string(out)), ",")
	})
	if kcluster.err != nil {
		t.Fatal(kcluster.err)
	}
	return kcluster.brokers
}

// stopCluster stops the cluster if a test started it.
func stopCluster() {
	if kcluster.dir == "" {
		return
	}
	_ = exec.Command("bash", kcluster.script, "cluster-stop", kcluster.dir).Run()
	os.RemoveAll(kcluster.dir)
	removeNetns()
}

// node runs a node operation of the script: node-kill, node-stop or
// node-start.
func node(t *testing.T, op string, n int32) {
	t.Helper()
	if out, err := exec.Command("bash", kcluster.script, op, kcluster.dir, strconv.Itoa(int(n))).CombinedOutput(); err != nil {
		t.Fatalf("%s %d: %v\n%s", op, n, err, out)
	}
}

// waitInSync waits until every partition of the cluster (klagg's topics
// and the internal ones) has all its replicas in sync again.
func waitInSync(t *testing.T, adm *kadm.Client) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		meta, err := adm.Metadata(t.Context())
		behind := -1
		if err == nil {
			behind = 0
			for _, td := range meta.Topics {
				for _, p := range td.Partitions {
					if len(p.ISR) < len(p.Replicas) || p.Leader < 0 {
						behind++
					}
				}
			}
		}
		if behind == 0 && len(meta.Brokers) == 3 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cluster's partitions are not back in sync after 3 minutes (%d behind, %v)", behind, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// clusterScenario runs two members of guarantee g on the cluster while
// trades flow, applies fault once the feed is under way, and checks the
// outcome: final candles equal to the oracle's, versions never going back,
// under exactly-once one final record per final candle; it logs how long
// after the fault ended the group had committed everything.
func clusterScenario(t *testing.T, g processor.Guarantee, seed uint64, fault func(b *bed)) (logs string) {
	b := newBedOn(t, 4, needCluster(t), -1)
	b.extra = []string{"--guarantee", string(g), "--transaction-timeout", "10s"}
	recs := market(seed, 40_000, 4, "2025-03-30T00:30:00Z", 500, 0, 0)
	b.startWith("a", "--instance-id", "klagg-0")
	b.startWith("b", "--instance-id", "klagg-1")
	b.waitMembers(2)
	b.produce(recs[:len(recs)/4])
	b.settle(2 * time.Minute)
	fed := b.feed(recs[len(recs)/4:], 30, 300*time.Millisecond)
	time.Sleep(time.Second)
	fault(b)
	ended := time.Now()
	<-fed
	last := time.Now()
	b.settle(4 * time.Minute)
	t.Logf("%s: everything committed %s after the fault ended, %s after the last trade was produced",
		g, time.Since(ended).Round(100*time.Millisecond), time.Since(last).Round(100*time.Millisecond))
	logs = b.members["a"].log.String() + b.members["b"].log.String()
	b.stop("a")
	b.stop("b")
	got := b.check()
	if g == processor.ExactlyOnce && got.FinalRecords != len(got.Final) {
		t.Fatalf("%d final records for %d final candles: some final candle was published twice", got.FinalRecords, len(got.Final))
	}
	return logs
}

// bounce kills node n (kill -9), and starts it again after d.
func bounce(t *testing.T, n int32, d time.Duration) {
	t.Logf("kill -9 node %d, back %s later", n, d)
	node(t, "node-kill", n)
	time.Sleep(d)
	node(t, "node-start", n)
}

// 12. kill -9 of the broker leading the most trades partitions, back 8 s
// later, under both guarantees.
func TestClusterLeaderKill(t *testing.T) {
	for i, g := range []processor.Guarantee{processor.ExactlyOnce, processor.AtLeastOnce} {
		t.Run(string(g), func(t *testing.T) {
			clusterScenario(t, g, 120+uint64(i), func(b *bed) {
				meta, err := b.adm.Metadata(b.ctx, b.topic("trades"))
				if err != nil {
					t.Fatal(err)
				}
				led := map[int32]int{}
				for _, p := range meta.Topics[b.topic("trades")].Partitions {
					led[p.Leader]++
				}
				leaders := slices.Collect(maps.Keys(led))
				slices.SortFunc(leaders, func(x, y int32) int { return led[y] - led[x] })
				bounce(t, leaders[0], 8*time.Second)
			})
			waitInSync(t, kadm.NewClient(mustClusterClient(t)))
		})
	}
}

// 13. kill -9 of the node hosting the group coordinator, and separately
// of the one hosting member a's transaction coordinator, mid-transaction
// (transactions end every 100 ms while trades flow).
func TestClusterCoordinatorKill(t *testing.T) {
	for i, which := range []string{"group", "transaction"} {
		t.Run(which, func(t *testing.T) {
			clusterScenario(t, processor.ExactlyOnce, 130+uint64(i), func(b *bed) {
				var found kadm.FindCoordinatorResponses
				if which == "group" {
					found = b.adm.FindGroupCoordinators(b.ctx, b.name)
				} else {
					found = b.adm.FindTxnCoordinators(b.ctx, "klagg-"+b.name+"-klagg-0")
				}
				var n int32 = -1
				for _, c := range found {
					if c.Err != nil {
						t.Fatalf("find the %s coordinator: %v", which, c.Err)
					}
					n = c.NodeID
				}
				if n < 0 {
					t.Fatalf("no %s coordinator found", which)
				}
				bounce(t, n, 8*time.Second)
			})
			waitInSync(t, kadm.NewClient(mustClusterClient(t)))
		})
	}
}

// 14. A rolling restart, as an upgrade does: each node in turn stopped
// (SIGTERM), started again, and the next one only once every partition is
// back in sync.
func TestClusterRollingRestart(t *testing.T) {
	clusterScenario(t, processor.ExactlyOnce, 140, func(b *bed) {
		for n := int32(1); n <= 3; n++ {
			t.Logf("rolling restart: node %d", n)
			node(t, "node-stop", n)
			node(t, "node-start", n)
			waitInSync(t, b.adm)
		}
	})
}

// 15. Two of the three brokers down for 15 s: the cluster is below
// min.insync.replicas (and its controller quorum), so nothing can be
// written. The members wait and retry, and lose nothing.
func TestClusterBelowMinISR(t *testing.T) {
	logs := clusterScenario(t, processor.ExactlyOnce, 150, func(b *bed) {
		node(t, "node-kill", 2)
		node(t, "node-kill", 3)
		t.Log("nodes 2 and 3 down (kill -9) for 15s")
		time.Sleep(15 * time.Second)
		node(t, "node-start", 2)
		node(t, "node-start", 3)
		waitInSync(t, b.adm)
	})
	var warned []string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			warned = append(warned, l)
		}
	}
	t.Logf("%d warnings; first ones:\n%s", len(warned), strings.Join(warned[:min(len(warned), 15)], "\n"))
}

func mustClusterClient(t *testing.T) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(kcluster.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// ipRun runs ip(8) with args, failing the test on error.
func ipRun(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// 16. A member cut off from every broker for 20 s (past its 6 s session
// timeout) while it keeps running: it runs in the test's network
// namespace, and the veth link is taken down and up again. Then, under
// exactly-once, the same member black-holed for 20 s: its packets to the
// brokers, and theirs to it, are dropped without a word (each side's
// neighbour entry for the other points at an address no one has), as a
// firewall or a dead switch does; it is never refused.
func TestClusterMemberCutOff(t *testing.T) {
	needCluster(t)
	if kcluster.netnsErr != nil {
		t.Skipf("no network namespace for the cut-off member (%v): run the tests as root with ip(8)", kcluster.netnsErr)
	}
	for i, tc := range []struct {
		g    processor.Guarantee
		how  string
		down func(t *testing.T)
		up   func(t *testing.T)
	}{
		{processor.ExactlyOnce, "link down",
			func(t *testing.T) { ipRun(t, "link", "set", kcluster.hostIf, "down") },
			func(t *testing.T) { ipRun(t, "link", "set", kcluster.hostIf, "up") }},
		{processor.AtLeastOnce, "link down",
			func(t *testing.T) { ipRun(t, "link", "set", kcluster.hostIf, "down") },
			func(t *testing.T) { ipRun(t, "link", "set", kcluster.hostIf, "up") }},
		{processor.ExactlyOnce, "black hole",
			func(t *testing.T) {
				ipRun(t, "neigh", "replace", kcluster.nsIP, "lladdr", "02:00:00:00:00:01", "dev", kcluster.hostIf, "nud", "permanent")
				ipRun(t, "netns", "exec", kcluster.ns, "ip", "neigh", "replace", kcluster.hostIP, "lladdr", "02:00:00:00:00:02", "dev", kcluster.nsIf, "nud", "permanent")
			},
			func(t *testing.T) {
				ipRun(t, "neigh", "del", kcluster.nsIP, "dev", kcluster.hostIf)
				ipRun(t, "netns", "exec", kcluster.ns, "ip", "neigh", "del", kcluster.hostIP, "dev", kcluster.nsIf)
			}},
	} {
		t.Run(string(tc.g)+"/"+strings.ReplaceAll(tc.how, " ", "-"), func(t *testing.T) {
			b := newBedOn(t, 4, kcluster.brokers, -1)
			b.extra = []string{"--guarantee", string(tc.g), "--transaction-timeout", "10s"}
			recs := market(160+uint64(i), 40_000, 4, "2025-10-26T00:30:00Z", 500, 0, 0)
			b.start("a")
			b.prefix = []string{"ip", "netns", "exec", kcluster.ns}
			b.start("cut")
			b.prefix = nil
			b.waitMembers(2)
			b.produce(recs[:len(recs)/4])
			b.settle(2 * time.Minute)
			// 30 s of trades: before, during and after the cut.
			fed := b.feed(recs[len(recs)/4:], 40, 750*time.Millisecond)
			time.Sleep(time.Second)
			t.Logf("%s: the member in the namespace cut off for 20s", tc.how)
			tc.down(t)
			time.Sleep(20 * time.Second)
			tc.up(t)
			ended := time.Now()
			<-fed
			b.settle(4 * time.Minute)
			t.Logf("%s, %s: everything committed %s after the link came back", tc.g, tc.how, time.Since(ended).Round(100*time.Millisecond))
			// The others took its partitions meanwhile; it learns so once its
			// connections time out and it reaches the brokers again, then
			// rejoins.
			cut := b.members["cut"].log
			deadline := time.Now().Add(2 * time.Minute)
			for !strings.Contains(cut.String(), "lost") {
				if time.Now().After(deadline) {
					t.Fatalf("the cut-off member never noticed it had lost its partitions; its log:\n%s", tail(cut.String()))
				}
				time.Sleep(200 * time.Millisecond)
			}
			b.waitMembers(2)
			t.Logf("%s, %s: the cut-off member noticed, and the group is back to two members, %s after the link came back",
				tc.g, tc.how, time.Since(ended).Round(100*time.Millisecond))
			b.stop("a")
			b.stop("cut")
			got := b.check()
			if tc.g == processor.ExactlyOnce && got.FinalRecords != len(got.Final) {
				t.Fatalf("%d final records for %d final candles: some final candle was published twice", got.FinalRecords, len(got.Final))
			}
		})
	}
}

// 17. On the cluster, output topics created with replication factor 1
// are warned about at start-up, each by name; the cluster's defaults
// (replication 3, min.insync.replicas 2) are not.
func TestClusterDurabilityWarning(t *testing.T) {
	for _, tc := range []struct {
		flags []string
		warn  bool
	}{{[]string{"--replication-factor", "1"}, true}, {nil, false}} {
		b := newBedOn(t, 2, needCluster(t), -1)
		b.startWith("a", tc.flags...)
		m := b.members["a"]
		testkit.WaitFor(t, time.Minute, "the replication check", func() bool {
			l := m.log.String()
			if strings.Contains(l, "could not check the output topics' replication") {
				t.Fatalf("flags %v: the member could not check; log:\n%s", tc.flags, tail(l))
			}
			return strings.Contains(l, "replication checked")
		})
		logs := m.log.String()
		b.stop("a")
		for _, kind := range []string{"klines", "state", "dlq"} {
			warned := regexp.MustCompile(`cannot ride out a broker loss.*topic=` + regexp.QuoteMeta(b.topic(kind)) + ` `).MatchString(logs)
			if warned != tc.warn {
				t.Errorf("flags %v: topic %s warned %v, want %v; log:\n%s", tc.flags, b.topic(kind), warned, tc.warn, tail(logs))
			}
		}
	}
}
