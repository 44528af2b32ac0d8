package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/processor"
	"github.com/klagg/klagg/schema"
)

// cmdTail reads the klines topic and prints the decoded candles, as an
// aligned table or JSON lines. Both framings (Confluent, single-object) are
// recognised by their first byte.
func cmdTail(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f, code := parseTailFlags(args, stdout, stderr)
	if f == nil {
		return code
	}
	start := kgo.NewOffset().AtEnd()
	if f.fromBeginning {
		start = kgo.NewOffset().AtStart()
	}
	topic, flagName := f.topic, "--klines-topic"
	if f.deadLetters {
		topic, flagName = f.dlqTopic, "--dlq-topic"
	}
	cl, err := kgo.NewClient(append(f.conn.kgo, kgo.SeedBrokers(splitList(f.brokers)...), kgo.ConsumeTopics(topic),
		// Only what klagg committed: records of an aborted flush never show.
		kgo.ConsumeResetOffset(start), kgo.FetchIsolationLevel(kgo.ReadCommitted()))...)
	if err != nil {
		fmt.Fprintf(stderr, "klagg tail: %v\n", err)
		return 1
	}
	defer cl.Close()
	if err := reach(ctx, cl, f.brokers); err != nil {
		fmt.Fprintf(stderr, "klagg tail: %v\n", err)
		return 1
	}
	if err := topicExists(ctx, cl, topic, flagName); errors.Is(err, errNoTopic) {
		// Said at once; then wait, since klagg run creates it on start.
		fmt.Fprintf(stderr, "klagg tail: %v; waiting for it to be created\n", err)
	} else if err != nil {
		fmt.Fprintf(stderr, "klagg tail: %v\n", err)
		return 1
	}
	if f.deadLetters {
		return printDeadLetters(ctx, cl, f.format == "json", f.max, stdout, stderr)
	}
	return f.printKlines(ctx, cl, stdout, stderr)
}

// tailFlags are tail's settings.
type tailFlags struct {
	brokers, topic, symbol, period, format, dlqTopic string
	finalOnly, fromBeginning, deadLetters            bool
	max                                              int
	conn                                             conn
}

// parseTailFlags reads args, or returns nil and the exit code (0 for -h,
// 2 with every problem printed at once).
func parseTailFlags(args []string, stdout, stderr io.Writer) (*tailFlags, int) {
	fs := flag.NewFlagSet("klagg tail", flag.ContinueOnError)
	fs.SetOutput(stdout) // -h is asked for: it goes to stdout; errors go to stderr
	describe(fs, "klagg tail [flags]", `Reads the klines topic and prints the candles as an aligned table or JSON
lines. Both framings are read: Confluent (with a registry) and Avro
single-object encoding.`)
	def := processor.DefaultConfig()
	f := &tailFlags{}
	fs.StringVar(&f.brokers, "brokers", strings.Join(def.Brokers, ","), "Kafka bootstrap brokers, comma-separated")
	fs.StringVar(&f.topic, "klines-topic", def.KlinesTopic, "topic to read")
	fs.StringVar(&f.symbol, "symbol", "", "only this symbol")
	fs.StringVar(&f.period, "period", "", "only this period (1m, 1h, 1M, …)")
	fs.BoolVar(&f.finalOnly, "final-only", false, "only final candles")
	fs.BoolVar(&f.fromBeginning, "from-beginning", false, "read the topic from its start (default: only new records)")
	fs.StringVar(&f.format, "format", "table", "output: table or json (one object per line)")
	fs.IntVar(&f.max, "max", 0, "stop after printing this many candles (0: never)")
	fs.BoolVar(&f.deadLetters, "dead-letters", false, "print the dead-letter topic instead: each refused trade with its reason, source and error")
	fs.StringVar(&f.dlqTopic, "dlq-topic", def.DLQTopic, "dead-letter topic, with --dead-letters")
	var cf connFlags
	cf.register(fs)
	perr := parse(fs, args, os.Getenv)
	if errors.Is(perr, flag.ErrHelp) {
		return nil, 0
	}
	errs := []error{perr} // with the checks below: every problem at once
	if f.period != "" {
		if _, err := period.Parse(f.period); err != nil {
			errs = append(errs, fmt.Errorf("--period: %w", err))
		}
	}
	if f.format != "table" && f.format != "json" {
		errs = append(errs, fmt.Errorf("--format %q: want table or json", f.format))
	}
	if f.max < 0 {
		errs = append(errs, fmt.Errorf("--max %d is negative", f.max))
	}
	var err error
	if f.conn, err = cf.resolve(os.Getenv); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintf(stderr, "klagg tail: %v\n", err)
		return nil, 2
	}
	return f, 0
}

// printKlines prints the candles that pass the filters until ctx ends or
// --max are printed.
func (f *tailFlags) printKlines(ctx context.Context, cl *kgo.Client, stdout, stderr io.Writer) int {
	enc := json.NewEncoder(stdout)
	if f.format == "table" {
		fmt.Fprintln(stdout, tableHeader)
	}
	printed, undecodable := 0, 0
	for {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			break
		}
		var ferr error
		fetches.EachError(func(t string, p int32, err error) { ferr = fmt.Errorf("%s/%d: %w", t, p, err) })
		if ferr != nil {
			fmt.Fprintf(stderr, "klagg tail: fetch: %v\n", ferr)
			return 1
		}
		done := false
		fetches.EachRecord(func(r *kgo.Record) {
			if done {
				return
			}
			var k schema.Kline
			if err := schema.DecodeKline(r.Value, &k); err != nil {
				undecodable++
				return
			}
			if (f.symbol != "" && k.Symbol != f.symbol) || (f.period != "" && k.Period != f.period) || (f.finalOnly && !k.IsFinal) {
				return
			}
			if f.format == "json" {
				enc.Encode(klineJSONOf(&k)) //nolint:errcheck // stdout
			} else {
				fmt.Fprintln(stdout, tableRow(&k))
			}
			printed++
			done = f.max > 0 && printed >= f.max
		})
		if done {
			break
		}
	}
	if undecodable > 0 {
		fmt.Fprintf(stderr, "klagg tail: skipped %d records that are not klines of kline.avsc\n", undecodable)
	}
	return 0
}

// The table fits 100 columns; the version is in the JSON lines only.
const (
	tableHeader = "symbol       per open (UTC)        open       high        low      close      volume trades fin"
	numWidth    = 10
	volWidth    = 11
)

func tableRow(k *schema.Kline) string {
	final := ""
	if k.IsFinal {
		final = "yes"
	}
	return fmt.Sprintf("%-12.12s %-3s %-16s %*s %*s %*s %*s %*s %6d %s", k.Symbol, k.Period,
		time.UnixMilli(k.OpenTime).UTC().Format("2006-01-02 15:04"),
		numWidth, fitted(k.Open, numWidth), numWidth, fitted(k.High, numWidth), numWidth, fitted(k.Low, numWidth),
		numWidth, fitted(k.Close, numWidth), volWidth, fitted(k.Volume, volWidth), k.TradeCount, final)
}

// exact is v's exact text without trailing fractional zeros: "13.8175".
func exact(v interface{ Append([]byte) []byte }) string {
	return strings.TrimRight(strings.TrimRight(string(v.Append(nil)), "0"), ".")
}

// fitted is v's exact text when it fits width; else v rounded to as many
// decimals as fit, for the table only (the JSON lines are exact).
func fitted(v interface {
	Append([]byte) []byte
	Float64() float64
}, width int) string {
	if out := exact(v); len(out) <= width {
		return out
	}
	f := v.Float64()
	intDigits := len(strconv.FormatFloat(math.Trunc(math.Abs(f)), 'f', 0, 64))
	places := max(0, min(8, width-intDigits-1))
	out := strconv.FormatFloat(f, 'f', places, 64)
	if strings.Contains(out, ".") {
		out = strings.TrimRight(strings.TrimRight(out, "0"), ".")
	}
	return out
}

// klineJSON is a kline as tail prints it in JSON: the fields of
// schema.Kline, with prices and volumes as their exact decimal numbers
// (at most eight decimals, Binance's precision), trailing zeros left out.
type klineJSON struct {
	Symbol              string      `json:"symbol"`
	Period              string      `json:"period"`
	OpenTime            int64       `json:"open_time"`
	CloseTime           int64       `json:"close_time"`
	Open                json.Number `json:"open"`
	High                json.Number `json:"high"`
	Low                 json.Number `json:"low"`
	Close               json.Number `json:"close"`
	Volume              json.Number `json:"volume"`
	QuoteVolume         json.Number `json:"quote_volume"`
	TradeCount          int64       `json:"trade_count"`
	TakerBuyVolume      json.Number `json:"taker_buy_volume"`
	TakerBuyQuoteVolume json.Number `json:"taker_buy_quote_volume"`
	FirstTradeID        int64       `json:"first_trade_id"`
	LastTradeID         int64       `json:"last_trade_id"`
	IsFinal             bool        `json:"is_final"`
	Version             int64       `json:"version"`
}

func klineJSONOf(k *schema.Kline) *klineJSON {
	num := func(v interface{ Append([]byte) []byte }) json.Number { return json.Number(exact(v)) }
	return &klineJSON{
		Symbol: k.Symbol, Period: k.Period, OpenTime: k.OpenTime, CloseTime: k.CloseTime,
		Open: num(k.Open), High: num(k.High), Low: num(k.Low), Close: num(k.Close),
		Volume: num(k.Volume), QuoteVolume: num(k.QuoteVolume), TradeCount: k.TradeCount,
		TakerBuyVolume: num(k.TakerBuyVolume), TakerBuyQuoteVolume: num(k.TakerBuyQuoteVolume),
		FirstTradeID: k.FirstTradeID, LastTradeID: k.LastTradeID, IsFinal: k.IsFinal, Version: k.Version,
	}
}

// deadLetter is one refused trade as klagg run wrote it to the dead-letter
// topic: the original key and value, and headers saying why.
type deadLetter struct {
	Reason string `json:"reason"`
	Source string `json:"source"` // trades topic/partition/offset
	Key    string `json:"key"`
	Value  string `json:"value"`
	Error  string `json:"error,omitempty"`
	// Trade is the refused trade's place in a record of several.
	Trade *int `json:"trade,omitempty"`
}

func printDeadLetters(ctx context.Context, cl *kgo.Client, asJSON bool, maxRecords int, stdout, stderr io.Writer) int {
	enc := json.NewEncoder(stdout)
	if !asJSON {
		fmt.Fprintf(stdout, "%-16s %-28s %-12s %s\n", "reason", "source (topic/partition/offset)", "key", "error or value")
	}
	printed := 0
	for {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			return 0
		}
		var ferr error
		fetches.EachError(func(t string, p int32, err error) { ferr = fmt.Errorf("%s/%d: %w", t, p, err) })
		if ferr != nil {
			fmt.Fprintf(stderr, "klagg tail: fetch: %v\n", ferr)
			return 1
		}
		for _, r := range fetches.Records() {
			d := deadLetter{Key: string(r.Key), Value: string(r.Value)}
			for _, h := range r.Headers {
				switch h.Key {
				case processor.HeaderReason:
					d.Reason = string(h.Value)
				case processor.HeaderSource:
					d.Source = string(h.Value)
				case processor.HeaderError:
					d.Error = string(h.Value)
				case processor.HeaderTrade:
					if i, err := strconv.Atoi(string(h.Value)); err == nil {
						d.Trade = &i
					}
				}
			}
			if asJSON {
				enc.Encode(&d) //nolint:errcheck // stdout
			} else {
				detail := d.Error
				if detail == "" {
					detail = d.Value
				}
				source := d.Source
				if d.Trade != nil {
					source += "#" + strconv.Itoa(*d.Trade) // the trade's place in its record
				}
				line := fmt.Sprintf("%-16s %-28s %-12.12s %s", d.Reason, source, d.Key, strings.ReplaceAll(detail, "\n", " "))
				if len(line) > 100 {
					line = line[:99] + "…"
				}
				fmt.Fprintln(stdout, line)
			}
			printed++
			if maxRecords > 0 && printed >= maxRecords {
				return 0
			}
		}
	}
}
