package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/klagg/klagg/processor"
	"github.com/klagg/klagg/processor/engine"
	"github.com/klagg/klagg/schema"
	"github.com/klagg/klagg/serve"
)

// cmdDemo runs the whole pipeline in one process: franz-go's in-process
// broker (kfake) and schema registry (srfake), a synthetic live market, and
// several klagg members in one consumer group; it prints the open 1m
// candle of the busiest symbols, the one before it, and the live figures.
func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("klagg demo", flag.ContinueOnError)
	fs.SetOutput(stdout) // -h is asked for: it goes to stdout; errors go to stderr
	describe(fs, "klagg demo [flags]", `Runs everything in one process, with nothing to set up: an embedded Kafka
broker and schema registry, a synthetic market, and klagg members in one
group. Shows the busiest symbols' open 1m candle and the one before it
(final a second after its minute ends) and the live figures until
interrupted or --duration ends.`)
	duration := fs.Duration("duration", 0, "stop after this long (0: until interrupted)")
	symbols := fs.Int("symbols", 300, "symbols in the synthetic market")
	rate := fs.Int("rate", 3000, "trades per second")
	members := fs.Int("members", 3, "klagg members in the group")
	partitions := fs.Int("partitions", 6, "partitions of the trades topic")
	httpAddr := fs.String("http", "127.0.0.1:8080", "address of the live chart page and the klines API (klagg serve on the demo's topic; empty: none)")
	listen := fs.String("listen", "", "serve the embedded broker on this HOST:PORT and the schema registry on PORT+1, for klagg tail and other tools (default: random loopback ports)")
	var logs logFlags
	logs.register(fs)
	perr := parse(fs, args, os.Getenv)
	if errors.Is(perr, flag.ErrHelp) {
		return 0
	}
	errs := []error{perr} // with the checks below: every problem at once
	if *symbols < 1 || *symbols > 100_000 {
		errs = append(errs, fmt.Errorf("--symbols %d: want 1 to 100000", *symbols))
	}
	if *rate < 1 || *rate > 1_000_000 {
		errs = append(errs, fmt.Errorf("--rate %d: want 1 to 1000000", *rate))
	}
	if *members < 1 || *members > 32 {
		errs = append(errs, fmt.Errorf("--members %d: want 1 to 32", *members))
	}
	if *partitions < 1 || *partitions > 256 {
		errs = append(errs, fmt.Errorf("--partitions %d: want 1 to 256", *partitions))
	}
	var listenHost string
	var listenPort int
	if *listen != "" {
		host, port, err := net.SplitHostPort(*listen)
		n, perr := strconv.Atoi(port)
		if err != nil || perr != nil || n < 1 || n > 65534 {
			errs = append(errs, fmt.Errorf("--listen %q: want HOST:PORT, PORT from 1 to 65534", *listen))
		}
		listenHost, listenPort = host, n
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintf(stderr, "klagg demo: %v\n", err)
		return 2
	}
	if logs.level == "info" {
		logs.level = "warn" // the table is the demo's output; logs only for trouble
	}
	log, err := logs.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "klagg demo: %v\n", err)
		return 2
	}
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}

	// Most of the demo's heap is the embedded broker's records, which
	// change all the time: a soft limit makes the collector return them
	// before the heap doubles, as it would by default (GOMEMLIMIT wins).
	// Put back on return: tests run the demo inside their own process.
	if os.Getenv("GOMEMLIMIT") == "" {
		defer debug.SetMemoryLimit(debug.SetMemoryLimit(demoMemoryLimit))
	}
	// The embedded broker keeps records in memory: like a real cluster's
	// retention, old records are dropped (the state topic is compacted
	// instead), so that the demo's memory stays flat however long it runs.
	// Retention drops whole segments only, and kfake's default segment is
	// 100 MiB a partition: small segments let it drop them.
	kopts := []kfake.Opt{kfake.NumBrokers(1), kfake.BrokerConfigs(map[string]string{
		"log.cleaner.backoff.ms": "10000",
		"log.segment.bytes":      strconv.Itoa(demoSegmentBytes),
	})}
	if *listen != "" {
		kopts = append(kopts, kfake.Ports(listenPort), kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			return net.Listen(network, *listen)
		}))
	}
	cluster, err := kfake.NewCluster(kopts...)
	if err != nil {
		fmt.Fprintf(stderr, "klagg demo: embedded broker on %s: %v\n", cmp.Or(*listen, "a loopback port"), err)
		return 1
	}
	defer cluster.Close()
	regURL, stopRegistry, err := startRegistry(listenHost, listenPort)
	if err != nil {
		fmt.Fprintf(stderr, "klagg demo: embedded schema registry: %v\n", err)
		return 1
	}
	defer stopRegistry()
	brokers := cluster.ListenAddrs()
	admCl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		fmt.Fprintf(stderr, "klagg demo: %v\n", err)
		return 1
	}
	adm := kadm.NewClient(admCl)
	defer adm.Close()

	cfg := processor.DefaultConfig()
	cfg.Brokers = brokers
	cfg.SchemaRegistry = regURL
	for _, t := range []struct {
		topic     string
		retention time.Duration
	}{
		{cfg.TradesTopic, demoTradesRetention}, {cfg.KlinesTopic, demoKlinesRetention}, {cfg.DLQTopic, demoKlinesRetention},
	} {
		ms := strconv.FormatInt(t.retention.Milliseconds(), 10)
		if _, err := adm.CreateTopic(ctx, int32(*partitions), 1, map[string]*string{"retention.ms": &ms}, t.topic); err != nil {
			fmt.Fprintf(stderr, "klagg demo: create topic %q: %v\n", t.topic, err)
			return 1
		}
	}

	var wg sync.WaitGroup
	stats := make([]*processor.Stats, *members)
	runCtx, stopMembers := context.WithCancel(context.Background())
	failed := make(chan error, *members)
	for i := range stats {
		stats[i] = &processor.Stats{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := processor.Run(runCtx, cfg, processor.WithStats(stats[i]), processor.WithRunLogger(log.With("member", i))); err != nil {
				failed <- err
			}
		}()
	}
	defer func() {
		stopMembers()
		wg.Wait()
	}()

	prod, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(cfg.TradesTopic))
	if err != nil {
		fmt.Fprintf(stderr, "klagg demo: %v\n", err)
		return 1
	}
	defer prod.Close()
	go synthetic(&producer{ctx: ctx, cl: prod, enc: schema.AppendBinanceJSON}, *symbols, *rate, 100*365*24*time.Hour, uint64(time.Now().UnixNano()), true) // until ctx ends

	chartNote := ""
	if *httpAddr != "" {
		scfg := serve.DefaultConfig()
		scfg.Brokers, scfg.KlinesTopic, scfg.HTTP = brokers, cfg.KlinesTopic, *httpAddr
		srv, err := newServer(scfg, log, nil)
		if err != nil {
			fmt.Fprintf(stderr, "klagg demo: chart page: %v (choose another --http, or --http \"\")\n", err)
			return 1
		}
		chartNote = ", chart on http://" + srv.Addr() + "/"
		// First, so that it is the line to find.
		fmt.Fprintf(stdout, "klagg demo: live chart on http://%s/ (and Binance's /api/v3/klines)\n", srv.Addr())
		go func() {
			if err := srv.Run(ctx); err != nil {
				log.Error("chart page", "err", err)
			}
		}()
	}

	view := newKlineView()
	tail, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(cfg.KlinesTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		fmt.Fprintf(stderr, "klagg demo: %v\n", err)
		return 1
	}
	defer tail.Close()
	go func() {
		for ctx.Err() == nil {
			tail.PollFetches(ctx).EachRecord(func(r *kgo.Record) { view.add(r.Value) })
		}
	}()

	term := isTerminal(stdout)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var prevTrades, prevKlines int64
	var prevRefused map[string]int64
	for {
		select {
		case err := <-failed:
			fmt.Fprintf(stderr, "klagg demo: member failed: %v\n", err)
			return 1
		case <-ctx.Done():
			fmt.Fprintln(stdout, "demo finished")
			return 0
		case <-tick.C:
			lag := "?"
			lctx, lcancel := context.WithTimeout(ctx, 500*time.Millisecond)
			if lags, err := adm.Lag(lctx, cfg.Group); err == nil {
				if g, ok := lags[cfg.Group]; ok && g.Error() == nil {
					lag = strconv.FormatInt(g.Lag.Total(), 10)
				}
			}
			lcancel()
			var trades, klines, flushes, dirty, rebalances int64
			for _, s := range stats {
				for i := range s.Trades {
					trades += s.Trades[i].Load()
				}
				klines += s.Klines.Load()
				flushes += s.Flushes.Load()
				dirty += s.DirtyFlushed.Load()
				rebalances += s.Rebalances.Load()
			}
			var b strings.Builder
			if term {
				b.WriteString("\x1b[H\x1b[2J")
			}
			// At most 100 columns a line.
			fmt.Fprintf(&b, "klagg demo: %d members, %d symbols%s\n", *members, *symbols, chartNote)
			fmt.Fprintf(&b, "%d trades/s  %d candles/s  %.0f dirty candles/flush  lag %s trades  %d rebalances\n",
				trades-prevTrades, klines-prevKlines, float64(dirty)/math.Max(1, float64(flushes)), lag, rebalances)
			refused := refusals(stats)
			fmt.Fprintf(&b, "refused/s %s\n", refusedPerSecond(refused, prevRefused))
			prevRefused = refused
			fmt.Fprintf(&b, "broker %s  registry %s  topics %s -> %s\n(try: klagg tail --brokers %s)\n",
				brokers[0], regURL, cfg.TradesTopic, cfg.KlinesTopic, brokers[0])
			prevTrades, prevKlines = trades, klines
			view.render(&b, 10, time.Now())
			fmt.Fprint(stdout, b.String())
		}
	}
}

// How long the demo's embedded broker keeps records: trades are read
// within moments, and klagg serve keeps its own copy of the candles.
const (
	demoTradesRetention = time.Minute
	demoKlinesRetention = time.Minute
	demoSegmentBytes    = 512 << 10
	demoMemoryLimit     = 224 << 20
)

// refusals sums the members' refused trades by reason.
func refusals(stats []*processor.Stats) map[string]int64 {
	out := map[string]int64{}
	for _, s := range stats {
		out[schema.ReasonDuplicate.String()] += s.Trades[engine.Duplicate].Load()
		out[schema.ReasonLate.String()] += s.Trades[engine.Late].Load()
		out[schema.ReasonOutOfRange.String()] += s.Trades[engine.OutOfRange].Load()
		for _, r := range schema.Reasons() {
			if n := s.Invalid[r].Load(); n > 0 {
				out[r.String()] += n
			}
		}
	}
	return out
}

// refusedPerSecond is "none", or each reason that refused trades in the
// last second with its count, most first.
func refusedPerSecond(now, prev map[string]int64) string {
	type rc struct {
		reason string
		n      int64
	}
	var rs []rc
	for r, n := range now {
		if d := n - prev[r]; d > 0 {
			rs = append(rs, rc{r, d})
		}
	}
	if len(rs) == 0 {
		return "none"
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].n > rs[j].n || rs[i].n == rs[j].n && rs[i].reason < rs[j].reason })
	var b strings.Builder
	for i, r := range rs {
		if i > 0 {
			b.WriteString("  ")
		}
		fmt.Fprintf(&b, "%s %d", r.reason, r.n)
	}
	return b.String() + "  (klagg tail --dead-letters shows them)"
}

// startRegistry serves srfake on host:port+1, or on a random loopback
// port when port is 0.
func startRegistry(host string, port int) (url string, stop func(), err error) {
	if port == 0 {
		reg := srfake.New()
		return reg.URL(), reg.Close, nil
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port+1)))
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: srfake.NewRegistry().Handler(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	return "http://" + ln.Addr().String(), func() { srv.Close() }, nil
}

// klineView keeps, for every symbol, its two newest 1m candles: the one
// still open and the one before it, which turns final once the watermark
// passes its close plus the grace.
type klineView struct {
	mu     sync.Mutex
	latest map[string][2]schema.Kline // [0] newest by open time, [1] the one before
}

func newKlineView() *klineView { return &klineView{latest: map[string][2]schema.Kline{}} }

func (v *klineView) add(value []byte) {
	var k schema.Kline
	if schema.DecodeKline(value, &k) != nil || k.Period != "1m" {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	cur, ok := v.latest[k.Symbol]
	switch {
	case !ok || k.OpenTime > cur[0].OpenTime:
		cur[0], cur[1] = k, cur[0]
	case k.OpenTime == cur[0].OpenTime:
		if k.Version > cur[0].Version {
			cur[0] = k
		}
	case k.OpenTime > cur[1].OpenTime || (k.OpenTime == cur[1].OpenTime && k.Version > cur[1].Version):
		cur[1] = k
	}
	v.latest[k.Symbol] = cur
}

// render writes the two newest 1m candles of the n/2 busiest symbols, in at
// most 100 columns.
func (v *klineView) render(w io.Writer, n int, now time.Time) {
	v.mu.Lock()
	ks := make([][2]schema.Kline, 0, len(v.latest))
	for _, k := range v.latest {
		ks = append(ks, k)
	}
	v.mu.Unlock()
	sort.Slice(ks, func(i, j int) bool {
		if ks[i][0].TradeCount != ks[j][0].TradeCount {
			return ks[i][0].TradeCount > ks[j][0].TradeCount
		}
		return ks[i][0].Symbol < ks[j][0].Symbol
	})
	fmt.Fprintf(w, "\n%-10s %-5s %11s %11s %11s %11s %11s %7s  %s\n", "symbol", "1m", "open", "high", "low", "close", "volume", "trades", "state")
	for _, pair := range ks[:min(max(1, n/2), len(ks))] {
		for _, k := range pair {
			if k.Symbol == "" {
				continue
			}
			fmt.Fprintf(w, "%-10.10s %-5s %11s %11s %11s %11s %11s %7d  %s\n", k.Symbol,
				time.UnixMilli(k.OpenTime).UTC().Format("15:04"), fitted(k.Open, 11), fitted(k.High, 11),
				fitted(k.Low, 11), fitted(k.Close, 11), fitted(k.Volume, 11), k.TradeCount, candleState(&k, now))
		}
	}
}

// candleState says where a candle is in its life: open (and for how much
// longer), closed but waiting for the grace and the watermark, or final.
func candleState(k *schema.Kline, now time.Time) string {
	switch left := time.UnixMilli(k.CloseTime + 1).Sub(now); {
	case k.IsFinal:
		return "final"
	case left > 0:
		return fmt.Sprintf("open, %ds left", int(math.Ceil(left.Seconds())))
	default:
		return "closing"
	}
}
