// Command klagg turns a Kafka topic of exchange trades into candlesticks.
// See the README, or klagg help.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lmittmann/tint"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kslog"

	"github.com/klagg/klagg/hint"
	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/processor"
	"github.com/klagg/klagg/schema"
	"github.com/klagg/klagg/serve"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `klagg turns a Kafka topic of exchange trades into candlesticks (klines)
for many symbols and periods at once, and publishes every changed candle as
an Avro record.

Usage:
  klagg run   [flags]   run one member of the consumer group
  klagg demo  [flags]   everything in one process: embedded broker, registry,
                        synthetic market and three members; no setup needed
  klagg gen   [flags]   produce trades: a synthetic market, or Binance aggTrades CSV files
  klagg tail  [flags]   decode and print the klines topic
  klagg serve [flags]   Binance-compatible klines API, update stream and live chart page
  klagg version         the module version, commit and Go version
  klagg help [command]  this text, or a command's flags

Every flag also reads KLAGG_<FLAG> from the environment (--flush-interval is
KLAGG_FLUSH_INTERVAL); a flag on the command line wins.
Run "klagg <command> -h" for a command's flags.
`

// run is main without the process: testable, it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	// klagg's logger and the Kafka client's are two handlers on stderr,
	// each with its own lock: one lock for the writer keeps their lines
	// whole whatever stderr is (a file writes each line at once; a
	// caller's buffer need not).
	stderr = &lockedWriter{w: stderr}
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(ctx, args[1:], stdout, stderr)
	case "demo":
		return cmdDemo(ctx, args[1:], stdout, stderr)
	case "gen":
		return cmdGen(ctx, args[1:], stdout, stderr)
	case "tail":
		return cmdTail(ctx, args[1:], stdout, stderr)
	case "serve":
		return cmdServe(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		if len(args) > 1 && args[1] != "help" {
			return run(ctx, []string{args[1], "-h"}, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return 0
	case "version", "--version":
		fmt.Fprintln(stdout, version())
		return 0
	default:
		fmt.Fprintf(stderr, "klagg: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

// version is the module version, the VCS commit and the Go version the
// binary was built with, as the build recorded them.
func version() string {
	v, commit, modified, goVersion := "(devel)", "unknown", false, runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			v = bi.Main.Version
		}
		goVersion = bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if modified {
		commit += " (modified)"
	}
	return fmt.Sprintf("klagg %s, commit %s, %s", v, commit, goVersion)
}

// describe sets fs's -h text: what the command does, then its flags.
func describe(fs *flag.FlagSet, synopsis, text string) {
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: %s\n\n%s\n\nFlags (each also read from KLAGG_<FLAG>: upper case, dashes as underscores):\n", synopsis, text)
		fs.PrintDefaults()
	}
}

// logFlags are shared by every command.
type logFlags struct {
	format string
	level  string
	kafka  string
}

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.format, "log-format", "auto", "log format: auto (colour on a terminal), text or json")
	fs.StringVar(&l.level, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&l.kafka, "kafka-log-level", "warn", "log level of the Kafka client (franz-go): debug, info, warn, error or off;\ninfo shows joins, assignments and how each transaction ends")
}

func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", l.level)
	}
	return l.build(w, level)
}

// kafkaLogger is the Kafka client's logger: the same format as the
// process's, at its own level, each line marked component=kafka.
func (l *logFlags) kafkaLogger(w io.Writer) ([]kgo.Opt, error) {
	if l.kafka == "off" {
		return nil, nil
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.kafka)); err != nil {
		return nil, fmt.Errorf("--kafka-log-level %q: want debug, info, warn, error or off", l.kafka)
	}
	log, err := l.build(w, level)
	if err != nil {
		return nil, err
	}
	return []kgo.Opt{kgo.WithLogger(kslog.New(log.With("component", "kafka")))}, nil
}

func (l *logFlags) build(w io.Writer, level slog.Level) (*slog.Logger, error) {
	switch l.format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})), nil
	case "auto":
		return slog.New(tint.NewHandler(w, &tint.Options{Level: level, TimeFormat: time.TimeOnly, NoColor: !isTerminal(w)})), nil
	}
	return nil, fmt.Errorf("--log-format %q: want auto, text or json", l.format)
}

// lockedWriter serializes the writes of the loggers that share it.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func isTerminal(w io.Writer) bool {
	if l, ok := w.(*lockedWriter); ok {
		w = l.w
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// parse parses args, then fills every flag not given on the command line
// from KLAGG_<FLAG>. It reports every bad value at once.
func parse(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	errs, help := parseFlags(fs, args)
	if help {
		if fs.Usage != nil {
			fs.Usage()
		} else {
			fs.PrintDefaults()
		}
		return flag.ErrHelp
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		env := "KLAGG_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v := getenv(env); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w%s", env, v, err, expectedForm(f)))
			}
		}
	})
	return errors.Join(errs...)
}

// parseFlags sets the flags in args as the flag package's FlagSet.Parse
// would (-name, --name, =value or the next argument, bool flags without a
// value, -- ending them), but goes on past a bad one, so that every bad
// flag is reported at once, each with the form it wants. help is whether
// -h or -help was asked for.
func parseFlags(fs *flag.FlagSet, args []string) (errs []error, help bool) {
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	defer func() { // the pointer to the help once, after the last bad flag
		if n := len(errs); n > 0 && !help {
			errs[n-1] = fmt.Errorf("%w (see %s -h)", errs[n-1], fs.Name())
		}
	}()
	var rest []string // after the flags
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			rest = args[i+1:]
			break
		}
		if len(arg) < 2 || arg[0] != '-' {
			rest = args[i:]
			break
		}
		name := strings.TrimPrefix(arg[1:], "-")
		name, value, hasValue := strings.Cut(name, "=")
		if name == "" || name[0] == '-' || name[0] == '=' {
			bad("bad flag syntax: %s", arg)
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			if name == "h" || name == "help" {
				return nil, true
			}
			bad("flag provided but not defined: -%s", name)
			continue
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() && !hasValue {
			value, hasValue = "true", true
		}
		if !hasValue {
			if i+1 == len(args) {
				bad("flag needs an argument: -%s", name)
				continue
			}
			i++
			value = args[i]
		}
		// The flag package's Set stores its zero value on a parse error:
		// put the value back, so that the checks after parsing do not
		// report a second, made-up problem.
		before := f.Value.String()
		if err := fs.Set(name, value); err != nil {
			bad("invalid value %q for flag -%s: %v%s", value, name, err, expectedForm(f))
			fs.Set(name, before) //nolint:errcheck // a value it printed itself
		}
	}
	if len(rest) > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments: %q", rest))
	}
	return errs, false
}

// expectedForm says what a flag whose value did not parse wants.
func expectedForm(f *flag.Flag) string {
	switch fmt.Sprintf("%T", f.Value) {
	case "*flag.durationValue":
		return ": want a duration such as 250ms, 10s or 1m"
	case "*flag.intValue", "*flag.int64Value", "*flag.uintValue":
		return ": want a whole number"
	case "*flag.boolValue":
		return ": want true or false"
	case "*flag.float64Value":
		return ": want a number"
	}
	return ""
}

// userMessage is an error as a user reads it: a setting a library's hint
// names (hint.Error) is named by its flag.
func userMessage(err error) string { return hint.Render(err, flagOf) }

// flagOf is the flag of a setting that processor's or serve's errors name
// by its Config field.
func flagOf(setting string) string {
	if f, ok := map[string]string{"BadState": "--bad-state", "KlinesTopic": "--klines-topic", "InstanceID": "--instance-id",
		"TradesTopic": "--trades-topic", "Data": "--data", "InputMapping": "--input-mapping"}[setting]; ok {
		return f
	}
	return setting
}

// runFlags binds processor.Config to flags; defaults come from
// processor.DefaultConfig.
type runFlags struct {
	cfg         processor.Config
	brokers     string
	periods     string
	inputFormat string
	mapping     string // --input-mapping: a file
	metricsAddr string
	replication int
	httpAddr    string
	logs        logFlags
	connFlags   connFlags
	conn        conn // resolved from connFlags by finish
}

func newRunFlags(name string, help io.Writer) (*flag.FlagSet, *runFlags) {
	rf := &runFlags{cfg: processor.DefaultConfig()}
	c := &rf.cfg
	fs := flag.NewFlagSet("klagg "+name, flag.ContinueOnError)
	fs.SetOutput(help)
	describe(fs, "klagg run [flags]", `Runs one member of the consumer group: reads the trades topic, keeps the
candles of the partitions it is assigned, and every --flush-interval
publishes the changed candles to the klines topic, then the shard state,
then commits. Start as many as the trades topic has partitions; SIGTERM
stops one cleanly.`)
	fs.StringVar(&rf.brokers, "brokers", strings.Join(c.Brokers, ","), "Kafka bootstrap brokers, comma-separated")
	fs.StringVar(&c.Group, "group", c.Group, "consumer group id")
	fs.StringVar(&c.TradesTopic, "trades-topic", c.TradesTopic, "topic of trades, keyed by symbol")
	fs.StringVar(&c.KlinesTopic, "klines-topic", c.KlinesTopic, "topic the klines are published to (created if missing)")
	fs.StringVar(&c.StateTopic, "state-topic", c.StateTopic, "compacted topic of shard state (created if missing)")
	fs.StringVar(&c.DLQTopic, "dlq-topic", c.DLQTopic, "dead-letter topic for refused trades (created if missing)")
	fs.StringVar(&rf.periods, "periods", period.DefaultList, "candle periods, comma-separated, from 1s 1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w 1M")
	fs.StringVar(&rf.inputFormat, "input-format", c.InputFormat.String(), "trade encoding: binance-json (aggTrade or raw trade events, spot or futures), avro (trade.avsc), a venue's trade messages (coinbase, kraken, okx, bybit), or json (a platform's own, read with --input-mapping)")
	fs.StringVar(&rf.mapping, "input-mapping", "", "with --input-format json or avro: a JSON file saying where each field of a trade is (README \"Any trades topic\")")
	fs.StringVar(&c.SymbolPrefix, "symbol-prefix", "", "put before every symbol read, e.g. coinbase: so that several venues can share one klines topic")
	fs.StringVar(&c.SchemaRegistry, "schema-registry", "", "schema registry URL; klines are then Confluent-framed (default: Avro single-object encoding)")
	fs.DurationVar(&c.FlushInterval, "flush-interval", c.FlushInterval, "how often changed candles are published and offsets committed")
	fs.DurationVar(&c.Engine.Grace, "grace", c.Engine.Grace, "how far the watermark trails the newest trade time")
	fs.DurationVar(&c.Engine.LiveWindow, "live-window", c.Engine.LiveWindow, "a shard whose latest trade arrived within this of its trade time is live: its candles close by the wall clock")
	fs.DurationVar(&c.MaxSkew, "max-skew", c.MaxSkew, "trades timed further than this past the wall clock are refused")
	fs.DurationVar(&c.SessionTimeout, "session-timeout", c.SessionTimeout, "how long the group waits for a member that died without leaving")
	fs.StringVar(&c.Compression, "compression", c.Compression, "compression of produced batches: none, gzip, snappy, lz4 or zstd")
	fs.StringVar((*string)(&c.Guarantee), "guarantee", string(c.Guarantee), "exactly-once (each flush is one Kafka transaction) or at-least-once (commit after delivery)")
	fs.StringVar(&c.InstanceID, "instance-id", "", "static group member id (KIP-345), e.g. the pod name: a restart gets its partitions back at once")
	fs.DurationVar(&c.TransactionTimeout, "transaction-timeout", c.TransactionTimeout, "exactly-once: how long a transaction left open by a killed member holds up readers of its partitions")
	fs.StringVar((*string)(&c.Engine.Flat), "flat-candles", string(c.Engine.Flat), "all (a flat final candle for every period a symbol, once seen, has no trade: Binance's rule) or none (gaps, for the reader to fill)")
	fs.IntVar(&c.Engine.MaxPending, "max-pending-candles", c.Engine.MaxPending, "per shard: final candles held before a flush must take them; reading pauses meanwhile (memory bound)")
	fs.IntVar(&c.MaxQueued, "max-queued-trades", c.MaxQueued, "trades read but not yet folded by the shards; reading pauses past it (memory bound)")
	fs.IntVar(&c.MaxTransactionRecords, "max-transaction-records", c.MaxTransactionRecords, "exactly-once: a transaction ends once it holds this many records, whatever the flush interval")
	fs.StringVar((*string)(&c.BadState), "bad-state", string(c.BadState), "an unreadable state record: stop (the member stops and names it) or rebuild (recompute the symbol from the retained trades)")
	fs.IntVar(&rf.replication, "replication-factor", int(c.ReplicationFactor), "replication factor of the topics klagg creates (-1: the brokers' default.replication.factor); 3, with min.insync.replicas=2, keeps every acknowledged record through a broker loss")
	fs.StringVar(&rf.metricsAddr, "metrics-addr", ":9464", "address of /metrics (Prometheus), /healthz and /readyz (empty: none)")
	fs.StringVar(&rf.httpAddr, "http", "", "also serve the chart page and Binance's /api/v3/klines here, as klagg serve does (empty: none)")
	rf.logs.register(fs)
	rf.connFlags.register(fs)
	return fs, rf
}

// finish turns the flag strings into the config and validates it.
func (rf *runFlags) finish(getenv func(string) string) error {
	var errs []error
	var err error
	if rf.conn, err = rf.connFlags.resolve(getenv); err != nil {
		errs = append(errs, err)
	}
	rf.cfg.Brokers = splitList(rf.brokers)
	periods, err := period.ParseList(rf.periods)
	if err != nil {
		errs = append(errs, fmt.Errorf("--periods: %w", err))
	} else {
		rf.cfg.Engine.Periods = periods
	}
	if rf.cfg.InputFormat, err = schema.ParseInputFormat(rf.inputFormat); err != nil {
		errs = append(errs, fmt.Errorf("--input-format: %w", err))
	}
	if rf.mapping != "" {
		if rf.cfg.InputMapping, err = readMapping(rf.mapping); err != nil {
			errs = append(errs, fmt.Errorf("--input-mapping: %w", err))
		}
	}
	if rf.replication > math.MaxInt16 {
		errs = append(errs, fmt.Errorf("--replication-factor %d: want at most %d", rf.replication, math.MaxInt16))
	}
	rf.cfg.ReplicationFactor = int16(max(min(rf.replication, math.MaxInt16), math.MinInt16))
	// Every problem at once: the configuration's own checks too.
	return errors.Join(append(errs, rf.cfg.Validate())...)
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, rf := newRunFlags("run", stdout)
	perr := parse(fs, args, os.Getenv)
	if errors.Is(perr, flag.ErrHelp) {
		return 0
	}
	// Bad flags and bad values together: a flag that did not parse keeps
	// its default, which the checks accept.
	if err := errors.Join(perr, rf.finish(os.Getenv)); err != nil {
		fmt.Fprintf(stderr, "klagg run: %s\n", userMessage(err))
		return 2
	}
	log, err := rf.logs.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "klagg run: %v\n", err)
		return 2
	}
	klog, err := rf.logs.kafkaLogger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "klagg run: %v\n", err)
		return 2
	}
	rf.conn.kgo = append(rf.conn.kgo, klog...)
	log.Info("connecting to brokers", "brokers", strings.Join(rf.cfg.Brokers, ","))
	if cl, err := kgo.NewClient(append(rf.conn.kgo, kgo.SeedBrokers(rf.cfg.Brokers...))...); err != nil {
		fmt.Fprintf(stderr, "klagg run: %v\n", err)
		return 1
	} else {
		err := reach(ctx, cl, strings.Join(rf.cfg.Brokers, ","))
		cl.Close()
		if err != nil {
			fmt.Fprintf(stderr, "klagg run: %v\n", err)
			return 1
		}
	}
	stats := &processor.Stats{}
	m := newMetrics(stats)
	srv, err := ops{reg: m.reg, ready: memberReady(stats, rf.cfg.FlushInterval), log: log}.listen(rf.metricsAddr)
	if err != nil {
		fmt.Fprintf(stderr, "klagg run: %v\n", err)
		return 1
	}
	defer srv.Close()
	if rf.httpAddr != "" {
		// klagg serve in the member: it reads the whole klines topic, so
		// that any replica behind one address answers for every symbol,
		// not only for the shards it owns.
		scfg := serve.DefaultConfig()
		scfg.Brokers, scfg.KlinesTopic, scfg.HTTP = rf.cfg.Brokers, rf.cfg.KlinesTopic, rf.httpAddr
		// Its health and metrics are the member's, on --metrics-addr.
		chart, err := serve.New(scfg, serve.WithLogger(log), serve.WithKgoOpts(rf.conn.kgo...))
		if err != nil {
			fmt.Fprintf(stderr, "klagg run: --http: %s\n", userMessage(err))
			return 1
		}
		fmt.Fprintf(stdout, "klagg run: chart on http://%s/, klines API on http://%s/api/v3/klines\n", chart.Addr(), chart.Addr())
		chartCtx, stopChart := context.WithCancel(ctx)
		defer stopChart()
		go func() {
			if err := chart.Run(chartCtx); err != nil {
				log.Error("chart page stopped", "err", err)
			}
		}()
	}
	if err := processor.Run(ctx, rf.cfg, processor.WithRunLogger(log), processor.WithStats(stats),
		processor.WithObserver(m), processor.WithMemberKgoOpts(m.memberOpts()...),
		processor.WithKgoOpts(rf.conn.kgo...), processor.WithRegistryOpts(rf.conn.sr...)); err != nil {
		log.Error("klagg stopped", "err", userMessage(err))
		return 1
	}
	return 0
}

// splitList reads a comma-separated flag (--brokers, --quote-assets): the
// items trimmed, empty ones left out. Every command parses brokers with it.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// readMapping reads a JSONMapping file; a field it does not know is an
// error, so that a misspelt path is not silently left out.
func readMapping(path string) (*schema.JSONMapping, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	var m schema.JSONMapping
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &m, nil
}
