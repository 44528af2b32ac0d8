package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/serve"
)

// parseRetention reads --retention: interval=duration pairs, durations in
// days (d), years of 365 days (y) or Go's units.
func parseRetention(s string) (map[period.Period]time.Duration, error) {
	out := map[period.Period]time.Duration{}
	var errs []error
	for _, pair := range strings.Split(s, ",") {
		if pair = strings.TrimSpace(pair); pair == "" {
			continue
		}
		name, dur, ok := strings.Cut(pair, "=")
		p, err := period.Parse(name)
		if !ok || err != nil {
			errs = append(errs, fmt.Errorf("--retention %q: want interval=duration with an interval of %s", pair, period.DefaultList))
			continue
		}
		var d time.Duration
		switch {
		case strings.HasSuffix(dur, "d") || strings.HasSuffix(dur, "y"):
			n, err := strconv.Atoi(dur[:len(dur)-1])
			d = time.Duration(n) * 24 * time.Hour
			if strings.HasSuffix(dur, "y") {
				d *= 365
			}
			if err != nil {
				d = 0
			}
		default:
			d, _ = time.ParseDuration(dur)
		}
		if d <= 0 {
			errs = append(errs, fmt.Errorf("--retention %q: %q is not a positive duration (90d, 1y, 36h)", pair, dur))
			continue
		}
		out[p] = d
	}
	return out, errors.Join(errs...)
}

// defaultServeData is --data's default: klagg/serve/{klines-topic} under
// the user's cache directory (what the store is: rebuilt from the klines
// topic if lost), one store per topic.
func defaultServeData() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "klagg", "serve", "{klines-topic}")
}

// cmdServe reads the klines topic and serves Binance's klines API, a stream
// of updates and the chart page.
func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("klagg serve", flag.ContinueOnError)
	fs.SetOutput(stdout) // -h is asked for: it goes to stdout; errors go to stderr
	describe(fs, "klagg serve [flags]", `Reads the klines topic (committed records only, both framings) and serves
every candle it reads, kept on disk (--data): GET /api/v3/klines and
uiKlines as Binance's endpoints (same parameters, limits, arrays, error
codes and timeZone), /api/v3/ping, /time, /exchangeInfo and /ticker/24hr
and /ticker/price for the symbols held, Binance's websocket kline streams
on /ws and /stream, GET /api/v1/stream?symbol=&interval= (Server-Sent
Events of each update, as Binance's websocket kline events), a live chart
page on /, and /metrics, /healthz, /readyz.`)
	def := serve.DefaultConfig()
	cfg := def
	brokers := fs.String("brokers", strings.Join(def.Brokers, ","), "Kafka bootstrap brokers, comma-separated")
	fs.StringVar(&cfg.KlinesTopic, "klines-topic", def.KlinesTopic, "topic to read")
	fs.StringVar(&cfg.HTTP, "http", def.HTTP, "address of the API, the stream and the chart page")
	data := fs.String("data", defaultServeData(), `directory of the on-disk store that keeps every candle read and the offsets applied, so a restart resumes where it stopped; {klines-topic} is replaced by --klines-topic ("": only the newest --keep candles per series, in memory, read from the topic's start at each start)`)
	fs.IntVar(&cfg.CacheMB, "cache-mb", def.CacheMB, "the store's block cache in MiB: with its memtables, what bounds serve's memory whatever the history's length")
	fs.IntVar(&cfg.Keep, "keep", def.Keep, "without --data: candles kept per (symbol, period), the newest")
	retention := fs.String("retention", "", `with --data: how long to keep each interval's candles, by open time, e.g. "1m=90d,1s=2d,5m=1y" (d days, y 365 days, or Go durations); an interval not listed keeps everything`)
	quotes := fs.String("quote-assets", strings.Join(def.QuoteAssets, ","), "exchangeInfo: a symbol's quote asset is the longest of these it ends with; the rest is its base asset")
	fs.IntVar(&cfg.StreamBuffer, "stream-buffer", def.StreamBuffer, "updates queued for one websocket or SSE client before it is cut off as too slow")
	fs.StringVar(&cfg.CORSOrigin, "cors-origin", def.CORSOrigin, "Access-Control-Allow-Origin of the API (empty: none, same-origin pages only)")
	var logs logFlags
	logs.register(fs)
	var cf connFlags
	cf.register(fs)
	perr := parse(fs, args, os.Getenv)
	if errors.Is(perr, flag.ErrHelp) {
		return 0
	}
	cfg.QuoteAssets = splitList(*quotes)
	cfg.Brokers = splitList(*brokers)
	var rerr error
	cfg.Retention, rerr = parseRetention(*retention)
	cfg.Data = strings.ReplaceAll(*data, "{klines-topic}", cfg.KlinesTopic)
	conn, err := cf.resolve(os.Getenv)
	log, lerr := logs.logger(stderr)
	klog, klerr := logs.kafkaLogger(stderr)
	conn.kgo = append(conn.kgo, klog...)
	if err := errors.Join(perr, err, lerr, klerr, rerr, cfg.Validate()); err != nil {
		fmt.Fprintf(stderr, "klagg serve: %s\n", userMessage(err))
		return 2
	}
	cl, err := kgo.NewClient(append(conn.kgo, kgo.SeedBrokers(cfg.Brokers...))...)
	if err != nil {
		fmt.Fprintf(stderr, "klagg serve: %v\n", err)
		return 1
	}
	err = reach(ctx, cl, *brokers)
	cl.Close()
	if err != nil {
		fmt.Fprintf(stderr, "klagg serve: %v\n", err)
		return 1
	}
	srv, err := newServer(cfg, log, conn.kgo)
	if err != nil {
		fmt.Fprintf(stderr, "klagg serve: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "klagg serve: chart on http://%s/, klines API on http://%s/api/v3/klines\n", srv.Addr(), srv.Addr())
	if err := srv.Run(ctx); err != nil {
		log.Error("klagg serve stopped", "err", userMessage(err))
		return 1
	}
	return 0
}

// newServer is a serve.Server with the process's metrics and health
// endpoints mounted beside the API.
func newServer(cfg serve.Config, log *slog.Logger, kgoOpts []kgo.Opt) (*serve.Server, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var srv *serve.Server
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "klagg_serve_records_total", Help: "Kline records read from the klines topic."},
		func() float64 { return float64(srv.Records()) }))
	o := ops{reg: reg, log: log, ready: func() (string, error) {
		if !srv.Ready() {
			return "", errors.New("the klines topic is not read yet")
		}
		return "", nil
	}}
	opts := []serve.Option{serve.WithLogger(log), serve.WithKgoOpts(kgoOpts...)}
	for pattern, h := range o.routes() {
		opts = append(opts, serve.WithHandler(pattern, h))
	}
	srv, err := serve.New(cfg, opts...)
	return srv, err
}
