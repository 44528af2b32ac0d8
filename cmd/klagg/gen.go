package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/processor"
	"github.com/klagg/klagg/schema"
)

// cmdGen produces trades to a topic, keyed by symbol: a synthetic market,
// or a replay of Binance's public aggTrades CSV files.
func cmdGen(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f, code := parseGenFlags(args, stdout, stderr)
	if f == nil {
		return code
	}
	enc, err := newTradeEncoder(ctx, f.format, f.registry, f.topic, f.conn.sr)
	if err != nil {
		fmt.Fprintf(stderr, "klagg gen: %v\n", err)
		return 1
	}
	seeds := append(f.conn.kgo, kgo.SeedBrokers(splitList(f.brokers)...))
	cl, err := kgo.NewClient(append(seeds, kgo.DefaultProduceTopic(f.topic))...)
	if err != nil {
		fmt.Fprintf(stderr, "klagg gen: %v\n", err)
		return 1
	}
	defer cl.Close()
	if err := f.prepareTopic(ctx, cl, stdout); err != nil {
		fmt.Fprintf(stderr, "klagg gen: %v\n", err)
		return 1
	}
	warnIfRefused(ctx, cl, seeds, f.topic, f.stateTopic, f.firstTrades(), stderr)
	p := &producer{ctx: ctx, cl: cl, enc: enc}
	start := time.Now()
	if f.csvFiles != "" {
		skipped := 0
		for _, file := range strings.Split(f.csvFiles, ",") {
			n, err := replayCSV(p, file, f.symbol, f.speed)
			skipped += n
			if err != nil {
				fmt.Fprintf(stderr, "klagg gen: %v\n", err)
				return 1
			}
		}
		if skipped > 0 {
			fmt.Fprintf(stderr, "klagg gen: skipped %d CSV rows that did not parse\n", skipped)
		}
	} else {
		synthetic(p, f.symbols, f.rate, f.duration, f.seed, false)
	}
	if err := p.flush(); err != nil {
		fmt.Fprintf(stderr, "klagg gen: produce to %q: %v\n", f.topic, err)
		return 1
	}
	fmt.Fprintf(stdout, "produced %d trades to %q in %s\n", p.n, f.topic, time.Since(start).Round(time.Millisecond))
	return 0
}

// genFlags are gen's settings.
type genFlags struct {
	brokers, topic, registry, csvFiles, symbol, stateTopic string
	format                                                 schema.InputFormat
	symbols, rate, partitions                              int
	duration                                               time.Duration
	seed                                                   uint64
	speed                                                  float64
	createTopic                                            bool
	conn                                                   conn
}

// parseGenFlags reads args, or returns nil and the exit code (0 for -h,
// 2 with every problem printed at once).
func parseGenFlags(args []string, stdout, stderr io.Writer) (*genFlags, int) {
	fs := flag.NewFlagSet("klagg gen", flag.ContinueOnError)
	fs.SetOutput(stdout) // -h is asked for: it goes to stdout; errors go to stderr
	describe(fs, "klagg gen [flags]", `Produces trades to a topic, keyed by symbol: a synthetic market, or with
--csv a replay of Binance's public aggTrades (or raw trades) CSV files (rows that do not
parse are skipped and counted). Binance JSON, or Avro with --format avro.`)
	def := processor.DefaultConfig()
	f := &genFlags{}
	fs.StringVar(&f.brokers, "brokers", strings.Join(def.Brokers, ","), "Kafka bootstrap brokers, comma-separated")
	fs.StringVar(&f.topic, "trades-topic", def.TradesTopic, "topic to produce to")
	format := fs.String("format", "binance-json", "value encoding: binance-json, avro, or a venue's trade messages (coinbase, kraken, okx, bybit)")
	fs.StringVar(&f.registry, "schema-registry", "", "with avro: register trade.avsc and Confluent-frame the values (default: single-object encoding)")
	fs.IntVar(&f.symbols, "symbols", 100, "synthetic: number of symbols")
	fs.IntVar(&f.rate, "rate", 1000, "synthetic: trades per second")
	fs.DurationVar(&f.duration, "duration", 10*time.Second, "synthetic: how long to produce")
	fs.Uint64Var(&f.seed, "seed", 1, "synthetic: random seed")
	fs.StringVar(&f.csvFiles, "csv", "", "replay these Binance aggTrades CSV files (comma-separated) instead of a synthetic market")
	fs.StringVar(&f.symbol, "symbol", "", "CSV: the symbol of the files (default: from a name like BTCUSDT-aggTrades-2024-01-01.csv)")
	fs.Float64Var(&f.speed, "speed", 0, "CSV: 0 as fast as possible, 1 the original pace, 10 ten times faster")
	fs.BoolVar(&f.createTopic, "create-topic", false, "create --trades-topic first if it does not exist (a fresh topic for a replay)")
	fs.IntVar(&f.partitions, "partitions", 6, "with --create-topic: its partition count")
	fs.StringVar(&f.stateTopic, "state-topic", def.StateTopic, "warn if a group reads --trades-topic and this state topic is past the trades sent")
	var cf connFlags
	cf.register(fs)
	perr := parse(fs, args, os.Getenv)
	if errors.Is(perr, flag.ErrHelp) {
		return nil, 0
	}
	errs := []error{perr} // with the checks below: every problem at once
	var err error
	if f.format, err = schema.ParseInputFormat(*format); err != nil {
		errs = append(errs, fmt.Errorf("--format: %w", err))
	} else if f.format == schema.InputJSON {
		errs = append(errs, errors.New("--format json: gen writes binance-json, avro, coinbase, kraken, okx or bybit (a platform's own JSON is the platform's)"))
	}
	if f.csvFiles == "" && (f.symbols < 1 || f.rate < 1 || f.duration <= 0) {
		errs = append(errs, fmt.Errorf("--symbols, --rate and --duration must be positive"))
	}
	if f.speed < 0 {
		errs = append(errs, fmt.Errorf("--speed %g is negative", f.speed))
	}
	if f.partitions < 1 || f.partitions > 10_000 {
		errs = append(errs, fmt.Errorf("--partitions %d: want 1 to 10000", f.partitions))
	}
	if f.conn, err = cf.resolve(os.Getenv); err != nil {
		errs = append(errs, err)
	}
	if f.csvFiles != "" {
		for _, file := range strings.Split(f.csvFiles, ",") {
			// A missing file first: its name is then beside the point.
			if _, err := os.Stat(file); err != nil {
				errs = append(errs, fmt.Errorf("--csv: %w", err))
			} else if _, err := csvSymbol(file, f.symbol); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintf(stderr, "klagg gen: %v\n", err)
		return nil, 2
	}
	return f, 0
}

// prepareTopic checks that the brokers answer and the trades topic exists,
// creating it first with --create-topic.
func (f *genFlags) prepareTopic(ctx context.Context, cl *kgo.Client, stdout io.Writer) error {
	if err := reach(ctx, cl, f.brokers); err != nil {
		return err
	}
	if f.createTopic {
		cctx, cancel := context.WithTimeout(ctx, connectTimeout)
		_, err := kadm.NewClient(cl).CreateTopic(cctx, int32(f.partitions), -1, nil, f.topic)
		cancel()
		switch {
		case err == nil:
			fmt.Fprintf(stdout, "created topic %q with %d partitions\n", f.topic, f.partitions)
		case errors.Is(err, kerr.TopicAlreadyExists):
		default:
			return fmt.Errorf("create topic %q: %w", f.topic, err)
		}
	}
	return topicExists(ctx, cl, f.topic, "--trades-topic, or --create-topic")
}

// firstTrades is the first trade gen will send of each symbol.
func (f *genFlags) firstTrades() map[string]schema.Trade {
	firsts := map[string]schema.Trade{}
	if f.csvFiles == "" {
		now := time.Now().UnixMilli()
		for i := range f.symbols {
			firsts[syntheticSymbol(i)] = schema.Trade{Symbol: []byte(syntheticSymbol(i)), AggID: 1, Time: now}
		}
		return firsts
	}
	for _, file := range strings.Split(f.csvFiles, ",") {
		if t, ok := firstCSVTrade(file, f.symbol); ok {
			if prev, seen := firsts[string(t.Symbol)]; !seen || t.AggID < prev.AggID {
				firsts[string(t.Symbol)] = t
			}
		}
	}
	return firsts
}

type tradeEncoder func(dst []byte, t *schema.Trade) []byte

// venueEncoder writes one trade per message in a JSON format gen can
// write, or is nil.
func venueEncoder(f schema.InputFormat) tradeEncoder {
	switch f {
	case schema.InputBinanceJSON:
		return schema.AppendBinanceJSON
	case schema.InputCoinbase, schema.InputKraken, schema.InputOKX, schema.InputBybit:
		return func(dst []byte, t *schema.Trade) []byte { return schema.AppendVenueJSON(dst, f, []schema.Trade{*t}) }
	}
	return nil
}

func newTradeEncoder(ctx context.Context, f schema.InputFormat, registry, topic string, srOpts []sr.ClientOpt) (tradeEncoder, error) {
	if enc := venueEncoder(f); enc != nil {
		return enc, nil
	}
	if f != schema.InputAvro {
		return nil, fmt.Errorf("gen writes binance-json, avro, coinbase, kraken, okx or bybit, not %s", f)
	}
	framing, id := schema.FramingSingleObject, 0
	if registry != "" {
		rcl, err := sr.NewClient(append([]sr.ClientOpt{sr.URLs(registry)}, srOpts...)...)
		if err != nil {
			return nil, fmt.Errorf("schema registry %s: %w", registry, err)
		}
		ss, err := rcl.CreateSchema(ctx, topic+"-value", sr.Schema{Schema: schema.TradeSchemaText, Type: sr.TypeAvro})
		if err != nil {
			return nil, fmt.Errorf("register trade.avsc under %q at %s: %w", topic+"-value", registry, err)
		}
		framing, id = schema.FramingConfluent, ss.ID
	}
	prefix, err := schema.Prefix(framing, schema.TradeSchema, id)
	if err != nil {
		return nil, err
	}
	return func(dst []byte, t *schema.Trade) []byte {
		return schema.AppendAvroTradeBody(append(dst, prefix...), t)
	}, nil
}

// producer sends trades asynchronously and remembers the first failure.
type producer struct {
	ctx   context.Context
	cl    *kgo.Client
	enc   tradeEncoder
	n     int64
	errMu sync.Mutex // callbacks run on franz-go's goroutines
	err   error
}

func (p *producer) send(t *schema.Trade) {
	p.n++
	p.cl.Produce(p.ctx, &kgo.Record{Key: append([]byte(nil), t.Symbol...), Value: p.enc(nil, t)}, func(_ *kgo.Record, err error) {
		if err != nil {
			p.errMu.Lock()
			if p.err == nil {
				p.err = err
			}
			p.errMu.Unlock()
		}
	})
}

func (p *producer) flush() error {
	if err := p.cl.Flush(p.ctx); err != nil {
		return err
	}
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return p.err
}

// synthetic produces rate trades per second for d: skewed activity (a few
// symbols trade most), prices on a 0.01 grid, trade time = wall clock; with
// bursty, the rate swings between quiet spells and bursts.
func synthetic(p *producer, symbols, rate int, d time.Duration, seed uint64, bursty bool) {
	rng := rand.New(rand.NewPCG(seed, 1))
	prices := make([]int64, symbols) // in cents
	aggs := make([]int64, symbols)
	for i := range prices {
		prices[i] = int64(1+rng.IntN(5000)) * 100
	}
	const step = 10 * time.Millisecond
	t := time.NewTicker(step)
	defer t.Stop()
	var raw int64
	carry, burst := 0.0, 1.0
	for end := time.Now().Add(d); time.Now().Before(end) && p.ctx.Err() == nil; <-t.C {
		if bursty && rng.IntN(100) == 0 {
			burst = []float64{0.1, 1, 1, 3}[rng.IntN(4)]
		}
		carry += float64(rate) * burst * step.Seconds()
		n := int(carry)
		carry -= float64(n)
		now := time.Now().UnixMilli()
		for range n {
			i := int(float64(symbols) * math.Pow(rng.Float64(), 3))
			aggs[i]++
			prices[i] = max(1, prices[i]+int64(rng.IntN(7)-3))
			k := int64(1 + rng.IntN(3))
			p.send(&schema.Trade{Symbol: []byte(syntheticSymbol(i)), AggID: aggs[i], Price: decimal.Fixed(prices[i] * 1_000_000),
				Quantity: decimal.Fixed(1+rng.IntN(100000)) * 10_000, FirstID: raw + 1, LastID: raw + k, Time: now,
				BuyerMaker: rng.IntN(2) == 0})
			raw += k
		}
	}
}

// syntheticSymbol names the synthetic market's symbol i.
func syntheticSymbol(i int) string { return fmt.Sprintf("S%03dUSDT", i) }

// csvSymbol is the symbol of a CSV file's trades: given, or from a name
// like BTCUSDT-aggTrades-2024-01-01.csv.
func csvSymbol(file, symbol string) (string, error) {
	if symbol != "" {
		if r := schema.ValidSymbol([]byte(symbol)); r != schema.ReasonNone {
			return "", fmt.Errorf("--symbol %q: %s", symbol, r)
		}
		return symbol, nil
	}
	symbol, ok := schema.CSVSymbol(file)
	if !ok {
		return "", fmt.Errorf("%s: cannot tell the symbol from the file name; pass --symbol", file)
	}
	return symbol, nil
}

// replayCSV produces the rows of one Binance trades archive (aggTrades or
// raw trades, schema.ParseCSVTrade), with or without a header. It returns
// the rows it skipped.
func replayCSV(p *producer, file, symbol string, speed float64) (int, error) {
	symbol, err := csvSymbol(file, symbol)
	if err != nil {
		return 0, err
	}
	f, err := os.Open(file)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	skipped, line := 0, 0
	var first, firstWall int64
	for sc.Scan() {
		line++
		t, err := schema.ParseCSVTrade(sc.Text(), symbol)
		if err != nil {
			if line > 1 || startsWithDigit(sc.Text()) {
				skipped++ // a header is the first line only
			}
			continue
		}
		if speed > 0 {
			if first == 0 {
				first, firstWall = t.Time, time.Now().UnixMilli()
			}
			due := firstWall + int64(float64(t.Time-first)/speed)
			if wait := due - time.Now().UnixMilli(); wait > 0 {
				select {
				case <-p.ctx.Done():
					return skipped, p.ctx.Err()
				case <-time.After(time.Duration(wait) * time.Millisecond):
				}
			}
		}
		p.send(&t)
	}
	if err := sc.Err(); err != nil {
		return skipped, fmt.Errorf("%s line %d: %w", file, line, err)
	}
	return skipped, nil
}

func startsWithDigit(s string) bool { return s != "" && s[0] >= '0' && s[0] <= '9' }
