package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
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
	f, code := parseDemoFlags(args, stdout, stderr)
	if f == nil {
		return code
	}
	log, err := f.logs.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "klagg demo: %v\n", err)
		return 2
	}
	if f.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.duration)
		defer cancel()
	}
	// Most of the demo's heap is the embedded broker's records, which
	// change all the time: a soft limit makes the collector return them
	// before the heap doubles, as it would by default (GOMEMLIMIT wins).
	// Put back on return: tests run the demo inside their own process.
	if os.Getenv("GOMEMLIMIT") == "" {
		defer debug.SetMemoryLimit(debug.SetMemoryLimit(demoMemoryLimit))
	}
	d, err := startDemoCluster(ctx, f)
	if err != nil {
		fmt.Fprintf(stderr, "klagg demo: %v\n", err)
		return 1
	}
	defer d.close()

	stats := make([]*processor.Stats, f.members)
	failed := make(chan error, f.members)
	defer d.startMembers(stats, failed, log)()
	prod, err := kgo.NewClient(kgo.SeedBrokers(d.brokers...), kgo.DefaultProduceTopic(d.cfg.TradesTopic))
	if err != nil {
		fmt.Fprintf(stderr, "klagg demo: %v\n", err)
		return 1
	}
	defer prod.Close()
	go synthetic(&producer{ctx: ctx, cl: prod, enc: venueEncoder(f.format)}, f.symbols, f.rate, 100*365*24*time.Hour, uint64(time.Now().UnixNano()), true) // until ctx ends

	chartNote := ""
	if f.httpAddr != "" {
		addr, err := d.startChart(ctx, f.httpAddr, log)
		if err != nil {
			fmt.Fprintf(stderr, "klagg demo: chart page: %v (choose another --http, or --http \"\")\n", err)
			return 1
		}
		chartNote = ", chart on http://" + addr + "/"
		// First, so that it is the line to find.
		fmt.Fprintf(stdout, "klagg demo: live chart on http://%s/ (and Binance's /api/v3/klines)\n", addr)
	}
	view := newKlineView()
	if err := d.follow(ctx, view); err != nil {
		fmt.Fprintf(stderr, "klagg demo: %v\n", err)
		return 1
	}

	screen := demoScreen{d: d, f: f, stats: stats, view: view, chartNote: chartNote, term: isTerminal(stdout)}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case err := <-failed:
			fmt.Fprintf(stderr, "klagg demo: member failed: %v\n", err)
			return 1
		case <-ctx.Done():
			fmt.Fprintln(stdout, "demo finished")
			return 0
		case <-tick.C:
			fmt.Fprint(stdout, screen.render(ctx))
		}
	}
}

// demoFlags are the demo's settings.
type demoFlags struct {
	duration                           time.Duration
	symbols, rate, members, partitions int
	httpAddr, listen                   string
	format                             schema.InputFormat
	listenHost                         string
	listenPort                         int
	logs                               logFlags
}

// parseDemoFlags reads args, or returns nil and the exit code (0 for -h,
// 2 with every problem printed at once).
func parseDemoFlags(args []string, stdout, stderr io.Writer) (*demoFlags, int) {
	fs := flag.NewFlagSet("klagg demo", flag.ContinueOnError)
	fs.SetOutput(stdout) // -h is asked for: it goes to stdout; errors go to stderr
	describe(fs, "klagg demo [flags]", `Runs everything in one process, with nothing to set up: an embedded Kafka
broker and schema registry, a synthetic market, and klagg members in one
group. Shows the busiest symbols' open 1m candle and the one before it
(final a second after its minute ends) and the live figures until
interrupted or --duration ends.`)
	f := &demoFlags{}
	fs.DurationVar(&f.duration, "duration", 0, "stop after this long (0: until interrupted)")
	fs.IntVar(&f.symbols, "symbols", 300, "symbols in the synthetic market")
	fs.IntVar(&f.rate, "rate", 3000, "trades per second")
	fs.IntVar(&f.members, "members", 3, "klagg members in the group")
	fs.IntVar(&f.partitions, "partitions", 6, "partitions of the trades topic")
	fs.StringVar(&f.httpAddr, "http", "127.0.0.1:8080", "address of the live chart page and the klines API (klagg serve on the demo's topic; empty: none)")
	fs.StringVar(&f.listen, "listen", "", "serve the embedded broker on this HOST:PORT and the schema registry on PORT+1, for klagg tail and other tools (default: random loopback ports)")
	format := fs.String("format", "binance-json", "the trades' format: binance-json, or a venue's trade messages (coinbase, kraken, okx, bybit)")
	f.logs.register(fs)
	perr := parse(fs, args, os.Getenv)
	if errors.Is(perr, flag.ErrHelp) {
		return nil, 0
	}
	errs := []error{perr} // with the checks below: every problem at once
	var err error
	if f.format, err = schema.ParseInputFormat(*format); err != nil || venueEncoder(f.format) == nil {
		errs = append(errs, fmt.Errorf("--format %q: want binance-json, coinbase, kraken, okx or bybit", *format))
	}
	for _, c := range []struct {
		name      string
		v, lo, hi int
	}{{"symbols", f.symbols, 1, 100_000}, {"rate", f.rate, 1, 1_000_000}, {"members", f.members, 1, 32}, {"partitions", f.partitions, 1, 256}} {
		if c.v < c.lo || c.v > c.hi {
			errs = append(errs, fmt.Errorf("--%s %d: want %d to %d", c.name, c.v, c.lo, c.hi))
		}
	}
	if f.listen != "" {
		host, port, err := net.SplitHostPort(f.listen)
		n, perr := strconv.Atoi(port)
		if err != nil || perr != nil || n < 1 || n > 65534 {
			errs = append(errs, fmt.Errorf("--listen %q: want HOST:PORT, PORT from 1 to 65534", f.listen))
		}
		f.listenHost, f.listenPort = host, n
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintf(stderr, "klagg demo: %v\n", err)
		return nil, 2
	}
	if f.logs.level == "info" {
		f.logs.level = "warn" // the table is the demo's output; logs only for trouble
	}
	return f, 0
}

// demoCluster is the demo's embedded broker and registry, with its topics.
type demoCluster struct {
	cluster *kfake.Cluster
	brokers []string
	regURL  string
	adm     *kadm.Client
	cfg     processor.Config
	closers []func()
}

func (d *demoCluster) close() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
}

// startDemoCluster starts the embedded broker and registry and creates
// the topics, with a retention that keeps the demo's memory flat.
func startDemoCluster(ctx context.Context, f *demoFlags) (*demoCluster, error) {
	// The embedded broker keeps records in memory: like a real cluster's
	// retention, old records are dropped (the state topic is compacted
	// instead), so that the demo's memory stays flat however long it runs.
	// Retention drops whole segments only, and kfake's default segment is
	// 100 MiB a partition: small segments let it drop them.
	kopts := []kfake.Opt{kfake.NumBrokers(1), kfake.BrokerConfigs(map[string]string{
		"log.cleaner.backoff.ms": "10000",
		"log.segment.bytes":      strconv.Itoa(demoSegmentBytes),
	})}
	if f.listen != "" {
		kopts = append(kopts, kfake.Ports(f.listenPort), kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			return net.Listen(network, f.listen)
		}))
	}
	d := &demoCluster{}
	cluster, err := kfake.NewCluster(kopts...)
	if err != nil {
		return nil, fmt.Errorf("embedded broker on %s: %w", cmp.Or(f.listen, "a loopback port"), err)
	}
	d.cluster, d.brokers = cluster, cluster.ListenAddrs()
	d.closers = append(d.closers, cluster.Close)
	regURL, stopRegistry, err := startRegistry(f.listenHost, f.listenPort)
	if err != nil {
		d.close()
		return nil, fmt.Errorf("embedded schema registry: %w", err)
	}
	d.regURL = regURL
	d.closers = append(d.closers, stopRegistry)
	admCl, err := kgo.NewClient(kgo.SeedBrokers(d.brokers...))
	if err != nil {
		d.close()
		return nil, err
	}
	d.adm = kadm.NewClient(admCl)
	d.closers = append(d.closers, d.adm.Close)

	d.cfg = processor.DefaultConfig()
	d.cfg.InputFormat = f.format
	d.cfg.Brokers, d.cfg.SchemaRegistry = d.brokers, regURL
	for _, t := range []struct {
		topic     string
		retention time.Duration
	}{
		{d.cfg.TradesTopic, demoTradesRetention}, {d.cfg.KlinesTopic, demoKlinesRetention}, {d.cfg.DLQTopic, demoKlinesRetention},
	} {
		ms := strconv.FormatInt(t.retention.Milliseconds(), 10)
		if _, err := d.adm.CreateTopic(ctx, int32(f.partitions), 1, map[string]*string{"retention.ms": &ms}, t.topic); err != nil {
			d.close()
			return nil, fmt.Errorf("create topic %q: %w", t.topic, err)
		}
	}
	return d, nil
}

// startMembers runs a klagg member per element of stats, each counting
// into its own; a member that fails sends its error on failed. The
// function returned stops them all and waits.
func (d *demoCluster) startMembers(stats []*processor.Stats, failed chan<- error, log *slog.Logger) (stop func()) {
	var wg sync.WaitGroup
	runCtx, stopMembers := context.WithCancel(context.Background())
	for i := range stats {
		stats[i] = &processor.Stats{}
		wg.Go(func() {
			if err := processor.Run(runCtx, d.cfg, processor.WithStats(stats[i]), processor.WithRunLogger(log.With("member", i))); err != nil {
				failed <- err
			}
		})
	}
	return func() {
		stopMembers()
		wg.Wait()
	}
}

// startChart serves the chart page and the klines API on addr until ctx
// ends, and returns the address it listens on.
func (d *demoCluster) startChart(ctx context.Context, addr string, log *slog.Logger) (string, error) {
	scfg := serve.DefaultConfig()
	scfg.Brokers, scfg.KlinesTopic, scfg.HTTP = d.brokers, d.cfg.KlinesTopic, addr
	srv, err := newServer(scfg, log, nil)
	if err != nil {
		return "", err
	}
	go func() {
		if err := srv.Run(ctx); err != nil {
			log.Error("chart page", "err", err)
		}
	}()
	return srv.Addr(), nil
}

// follow reads the committed klines into view until ctx ends.
func (d *demoCluster) follow(ctx context.Context, view *klineView) error {
	tail, err := kgo.NewClient(kgo.SeedBrokers(d.brokers...), kgo.ConsumeTopics(d.cfg.KlinesTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		return err
	}
	go func() {
		defer tail.Close()
		for ctx.Err() == nil {
			tail.PollFetches(ctx).EachRecord(func(r *kgo.Record) { view.add(r.Value) })
		}
	}()
	return nil
}

// demoScreen is what the demo prints every second.
type demoScreen struct {
	d                      *demoCluster
	f                      *demoFlags
	stats                  []*processor.Stats
	view                   *klineView
	chartNote              string
	term                   bool
	prevTrades, prevKlines int64
	prevRefused            map[string]int64
}

// render is the screen at most 100 columns wide: the live figures, then
// the busiest symbols' candles.
func (sc *demoScreen) render(ctx context.Context) string {
	d, cfg := sc.d, sc.d.cfg
	lag := "?"
	lctx, lcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	if lags, err := d.adm.Lag(lctx, cfg.Group); err == nil {
		if g, ok := lags[cfg.Group]; ok && g.Error() == nil {
			lag = strconv.FormatInt(g.Lag.Total(), 10)
		}
	}
	lcancel()
	var trades, klines, flushes, dirty, rebalances int64
	for _, s := range sc.stats {
		for i := range s.Trades {
			trades += s.Trades[i].Load()
		}
		klines += s.Klines.Load()
		flushes += s.Flushes.Load()
		dirty += s.DirtyFlushed.Load()
		rebalances += s.Rebalances.Load()
	}
	var b strings.Builder
	if sc.term {
		b.WriteString("\x1b[H\x1b[2J")
	}
	fmt.Fprintf(&b, "klagg demo: %d members, %d symbols in %s%s\n", sc.f.members, sc.f.symbols, sc.f.format, sc.chartNote)
	fmt.Fprintf(&b, "%d trades/s  %d candles/s  %.0f dirty candles/flush  lag %s trades  %d rebalances\n",
		trades-sc.prevTrades, klines-sc.prevKlines, float64(dirty)/math.Max(1, float64(flushes)), lag, rebalances)
	refused := refusals(sc.stats)
	fmt.Fprintf(&b, "refused/s %s\n", refusedPerSecond(refused, sc.prevRefused))
	fmt.Fprintf(&b, "broker %s  registry %s  topics %s -> %s\n(try: klagg tail --brokers %s)\n",
		d.brokers[0], d.regURL, cfg.TradesTopic, cfg.KlinesTopic, d.brokers[0])
	sc.prevRefused, sc.prevTrades, sc.prevKlines = refused, trades, klines
	sc.view.render(&b, 10, time.Now())
	return b.String()
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
