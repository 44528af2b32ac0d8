package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/hint"
	"github.com/klagg/klagg/internal/testkit"
	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/processor"
	"github.com/klagg/klagg/schema"
)

func TestCLIErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		code int
		want []string // in stderr
	}{
		{"no command", nil, nil, 2, []string{"Usage:"}},
		{"unknown command", []string{"frobnicate"}, nil, 2, []string{`unknown command "frobnicate"`}},
		{"unknown flag", []string{"run", "--nope"}, nil, 2, []string{"flag provided but not defined: -nope"}},
		{"bad periods", []string{"run", "--periods", "1m,7m,1m"}, nil, 2, []string{`--periods`, `"7m"`, `"1m" listed twice`}},
		{"bad format and duration", []string{"run", "--input-format", "xml", "--flush-interval", "0s"}, nil, 2,
			[]string{`input format "xml"`, "flush interval 0s"}},
		{"bad env", []string{"run"}, map[string]string{"KLAGG_GRACE": "soon"}, 2, []string{`KLAGG_GRACE="soon"`}},
		{"bad guarantee, timeout and policy", []string{"run", "--guarantee", "maybe", "--transaction-timeout", "1ms", "--bad-state", "ignore"}, nil, 2,
			[]string{`guarantee "maybe": want exactly-once or at-least-once`, "transaction timeout 1ms", `bad-state policy "ignore": want stop or rebuild`}},
		{"flush interval above half the transaction timeout", []string{"run", "--flush-interval", "6s"}, nil, 2,
			[]string{"flush interval 6s: exactly-once wants at most half the transaction timeout (10s)"}},
		{"bad guarantee from env", []string{"run"}, map[string]string{"KLAGG_GUARANTEE": "twice"}, 2, []string{`guarantee "twice"`}},
		{"same topic twice", []string{"run", "--klines-topic", "trades"}, nil, 2, []string{`are both "trades"`}},
		{"stray argument", []string{"run", "extra"}, nil, 2, []string{`unexpected arguments: ["extra"]`}},
		{"every bad flag at once", []string{"run", "--grace", "abc", "--nope", "--flush-interval=soon", "--periods", "7m", "--static-members=maybe", "--group"}, nil, 2,
			[]string{`invalid value "abc" for flag -grace: parse error: want a duration such as 250ms, 10s or 1m`, "not defined: -nope",
				`invalid value "soon" for flag -flush-interval`, `"7m"`, "flag needs an argument: -group"}},
		{"bad flags and bad values of demo", []string{"demo", "--rate", "fast", "--members", "99", "--symbols", "1.5"}, nil, 2,
			[]string{`invalid value "fast" for flag -rate: parse error: want a whole number`, "--members 99", `invalid value "1.5" for flag -symbols`}},
		{"bad env says the form", []string{"tail"}, map[string]string{"KLAGG_MAX": "ten"}, 2, []string{`KLAGG_MAX="ten": parse error: want a whole number`}},
		{"arguments after --", []string{"gen", "--symbols", "3", "--", "--rate"}, nil, 2, []string{`unexpected arguments: ["--rate"]`}},
		{"bad demo flags", []string{"demo", "--symbols", "0", "--members", "99", "--listen", "9092"}, nil, 2, []string{"--symbols 0", "--members 99", `--listen "9092"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var stdout, stderr bytes.Buffer
			code := run(t.Context(), tt.args, &stdout, &stderr)
			if code != tt.code {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tt.code, stderr.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr.String())
				}
			}
		})
	}
}

func TestHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(t.Context(), []string{"help"}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "klagg run") {
		t.Fatalf("help: %d %q", code, stdout.String())
	}
	// A command's help is on stdout (klagg run -h | less), however asked.
	for _, args := range [][]string{{"run", "-h"}, {"help", "run"}} {
		stdout.Reset()
		stderr.Reset()
		if code := run(t.Context(), args, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "-flush-interval") ||
			!strings.HasPrefix(stdout.String(), "Usage: klagg run") || stderr.Len() > 0 {
			t.Fatalf("%v: %d stdout %q stderr %q", args, code, stdout.String(), stderr.String())
		}
	}
	for _, cmd := range []string{"demo", "gen", "tail", "serve"} {
		stdout.Reset()
		if code := run(t.Context(), []string{"help", cmd}, &stdout, &stderr); code != 0 || !strings.HasPrefix(stdout.String(), "Usage: klagg "+cmd) {
			t.Fatalf("help %s: %d %q", cmd, code, stdout.String())
		}
	}
	stdout.Reset()
	if code := run(t.Context(), []string{"version"}, &stdout, &stderr); code != 0 ||
		!regexp.MustCompile(`^klagg \S+, commit \S+.*, go1\.\d+`).MatchString(stdout.String()) {
		t.Fatalf("version: %d %q", code, stdout.String())
	}
}

func TestEnvironmentFillsFlags(t *testing.T) {
	fs, rf := newRunFlags("run", io.Discard)
	env := map[string]string{"KLAGG_FLUSH_INTERVAL": "100ms", "KLAGG_BROKERS": "a:1,b:2", "KLAGG_GROUP": "from-env"}
	if err := parse(fs, []string{"--group", "from-flag"}, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if err := rf.finish(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if rf.cfg.FlushInterval != 100*time.Millisecond || len(rf.cfg.Brokers) != 2 || rf.cfg.Group != "from-flag" {
		t.Fatalf("got %+v", rf.cfg)
	}
	if err := parse(flag.NewFlagSet("x", flag.ContinueOnError), nil, func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
}

// TestRunStopsOnSignal: klagg run against kfake exits 0 when its context
// (SIGTERM in main) is cancelled.
func TestRunStopsOnSignal(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "trades"))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan int, 1)
	var stderr bytes.Buffer
	go func() {
		done <- run(ctx, []string{"run", "--brokers", cluster.ListenAddrs()[0], "--metrics-addr", "", "--log-format", "json", "--kafka-log-level", "info"}, io.Discard, &stderr)
	}()
	time.Sleep(300 * time.Millisecond)
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("klagg run did not stop")
	}
	if !strings.Contains(stderr.String(), `"msg":"member stopped"`) {
		t.Fatalf("no JSON log of the stop: %s", stderr.String())
	}
	// --kafka-log-level info: the client's own lines, in the same format.
	if !strings.Contains(stderr.String(), `"component":"kafka"`) {
		t.Fatalf("no JSON log line of the Kafka client: %s", stderr.String())
	}
	stderr.Reset()
	if code := run(t.Context(), []string{"run", "--kafka-log-level", "loud"}, io.Discard, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), `--kafka-log-level "loud": want debug, info, warn, error or off`) {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
}

func TestDemoRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the demo until it shows candles")
	}
	// Run until candles show (members joining takes a few seconds, more
	// under the race detector), then stop it as Ctrl-C would.
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var stdout, stderr testkit.Buffer
	done := make(chan int, 1)
	listen := testkit.FreeAddrPair(t) // the broker, and the registry on the next port
	go func() {
		done <- run(ctx, []string{"demo", "--symbols", "20", "--rate", "500", "--listen", listen, "--http", "127.0.0.1:0"}, &stdout, &stderr)
	}()
	for !strings.Contains(stdout.String(), "S000USDT") && ctx.Err() == nil {
		select {
		case code := <-done:
			t.Fatalf("the demo stopped before showing candles: exit %d: %s", code, stderr.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	// --listen: other tools reach the embedded broker and registry.
	var tailOut, tailErr bytes.Buffer
	if code := run(ctx, []string{"tail", "--brokers", listen, "--from-beginning", "--max", "1", "--format", "json"}, &tailOut, &tailErr); code != 0 ||
		!strings.Contains(tailOut.String(), `"symbol":"S0`) {
		t.Errorf("tail against the demo's broker: exit %d %q %s", code, tailOut.String(), tailErr.String())
	}
	host, port, _ := net.SplitHostPort(listen)
	n, _ := strconv.Atoi(port)
	if resp, err := http.Get(fmt.Sprintf("http://%s:%d/subjects", host, n+1)); err != nil {
		t.Errorf("the demo's registry: %v", err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), "klines-value") {
			t.Errorf("the demo's registry has no klines-value subject: %s", b)
		}
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	out := stdout.String()
	for _, w := range []string{"trades/s", "candles/s", "dirty candles/flush", " trades  ", "rebalances", "broker " + listen, "S000USDT", "demo finished"} {
		if !strings.Contains(out, w) {
			t.Errorf("demo output lacks %q:\n%s", w, out)
		}
	}
	if !regexp.MustCompile(`lag \d+ trades`).MatchString(out) {
		t.Errorf("demo output shows no consumer lag:\n%s", out)
	}
	if !regexp.MustCompile(`refused/s (none|\w+ \d+)`).MatchString(out) {
		t.Errorf("demo output shows no refusals line:\n%s", out)
	}
	for _, line := range strings.Split(out, "\n") {
		if n := utf8.RuneCountInString(line); n > 100 {
			t.Errorf("demo line of %d columns: %q", n, line)
		}
	}
}

// TestInputMappingFile: a mapping file with a key klagg does not know (a
// misspelt path) and a mapping without its required paths stop run at
// once, every problem named.
func TestInputMappingFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "mapping.json")
	if err := os.WriteFile(file, []byte(`{"symbol":"s","price":"p","time":"t","time_unit":"ms","sides":"x"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	code := run(t.Context(), []string{"run", "--input-format", "json", "--input-mapping", file, "--brokers", "127.0.0.1:1"}, io.Discard, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), `unknown field "sides"`) {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if err := os.WriteFile(file, []byte(`{"symbol":"s","price":"p","time":"t","time_unit":"hours"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	stderr.Reset()
	code = run(t.Context(), []string{"run", "--input-format", "json", "--input-mapping", file, "--brokers", "127.0.0.1:1"}, io.Discard, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), "quantity: a path is required") || !strings.Contains(stderr.String(), `time_unit "hours"`) {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
}

// TestDemoVenueFormat: the demo fed with one venue's trade messages
// (--format) shows candles and refuses none of its messages.
func TestDemoVenueFormat(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the demo until it shows candles")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var stdout testkit.Buffer
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"demo", "--format", "okx", "--symbols", "20", "--rate", "500", "--members", "1", "--http", ""}, &stdout, &stderr)
	}()
	shown := regexp.MustCompile(`S000USDT +\d\d:\d\d .* [1-9]\d* +(open|final)`)
	for !shown.MatchString(stdout.String()) && ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // a few more screens, to see refusals if there are any
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	out := stdout.String()
	if !shown.MatchString(out) || !strings.Contains(out, "symbols in okx") {
		t.Fatalf("the demo in okx shows no candle with trades:\n%s", out)
	}
	// Decoding refusals only: late or duplicate trades are the market's.
	if regexp.MustCompile(`(malformed|missing_field|wrong_event|invalid_\w+|excess_precision) [1-9]`).MatchString(out) {
		t.Fatalf("the demo refused okx messages:\n%s", out)
	}
	var code int
	if code = run(t.Context(), []string{"demo", "--format", "json"}, io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "--format") {
		t.Fatalf("--format json: exit %d, %s", code, stderr.String())
	}
}

func TestTail(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "klines"))
	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	soe, _ := schema.NewKlineEncoder(schema.FramingSingleObject, 0)
	conf, _ := schema.NewKlineEncoder(schema.FramingConfluent, 7)
	k := schema.Kline{Symbol: "BTCUSDT", Period: "1m", OpenTime: 1714557600000, CloseTime: 1714557659999,
		Open: fx("1"), High: fx("2"), Low: fx("0.5"), Close: fx("1.5"), Volume: wd("13.8175"), QuoteVolume: wd("763487970"),
		TakerBuyVolume: wd("0.00002345"), TradeCount: 4, FirstTradeID: 1, LastTradeID: 9, Version: 11}
	var recs []*kgo.Record
	for i, enc := range []*schema.KlineEncoder{soe, conf, soe} {
		k.IsFinal = i > 0
		k.Symbol = []string{"BTCUSDT", "BTCUSDT", "ETHUSDT"}[i]
		recs = append(recs, &kgo.Record{Topic: "klines", Value: enc.Append(nil, &k)})
	}
	recs = append(recs, &kgo.Record{Topic: "klines", Value: []byte("garbage")})
	if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"tail", "--brokers", cluster.ListenAddrs()[0], "--from-beginning", "--format", "json",
		"--symbol", "BTCUSDT", "--final-only", "--max", "1"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], `"symbol":"BTCUSDT"`) || !strings.Contains(lines[0], `"is_final":true`) {
		t.Fatalf("json output: %q", stdout.String())
	}
	// The exact decimals, as plain JSON numbers without trailing zeros,
	// that decode to the candle's values.
	for _, want := range []string{`"volume":13.8175,`, `"quote_volume":763487970,`, `"taker_buy_volume":0.00002345,`, `"low":0.5,`} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("json output without %s: %s", want, lines[0])
		}
	}
	var back schema.Kline
	if err := json.Unmarshal([]byte(lines[0]), &back); err != nil || back.Volume != wd("13.8175") || back.TakerBuyVolume != wd("0.00002345") || back.Version != 11 {
		t.Errorf("json output does not decode to the candle: %+v, %v", back, err)
	}
	stdout.Reset()
	ctx2, cancel2 := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel2()
	if code := run(ctx2, []string{"tail", "--brokers", cluster.ListenAddrs()[0], "--from-beginning"}, &stdout, &stderr); code != 0 {
		t.Fatalf("table: exit %d", code)
	}
	if n := strings.Count(stdout.String(), "\n"); n != 4 || !strings.Contains(stderr.String(), "skipped 1 records") {
		t.Fatalf("table of 3 candles plus header, and one skipped record; got:\n%s\n%s", stdout.String(), stderr.String())
	}
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		if len(line) > 100 || strings.Contains(line, "e+") || strings.Contains(line, "e-") {
			t.Errorf("table line of %d columns, or in exponent form: %q", len(line), line)
		}
	}
	if code := run(t.Context(), []string{"tail", "--period", "7m", "--format", "xml"}, &stdout, &stderr); code != 2 {
		t.Fatalf("bad flags: exit %d", code)
	}
}

func TestMetricsAndHealth(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "trades"))
	addr := testkit.FreeAddr(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"run", "--brokers", cluster.ListenAddrs()[0], "--metrics-addr", addr, "--flush-interval", "50ms"}, io.Discard, io.Discard)
	}()
	defer func() {
		cancel()
		<-done
	}()
	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	now := time.Now().UnixMilli()
	var recs []*kgo.Record
	for i := range 50 {
		tr := schema.Trade{Symbol: []byte("BTCUSDT"), AggID: int64(i + 1), Price: fx("100"), Quantity: fx("1"), FirstID: int64(i), LastID: int64(i), Time: now}
		recs = append(recs, &kgo.Record{Topic: "trades", Key: tr.Symbol, Value: schema.AppendBinanceJSON(nil, &tr)})
	}
	recs = append(recs, &kgo.Record{Topic: "trades", Value: []byte("{")})
	if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// Every series, once the trades and a commit show: the lag gauge of a
	// partition is dropped when its shard is rebuilt and set again at the
	// next commit, so a single scrape may fall between the two.
	names := []string{"klagg_klines_emitted_total", "klagg_dead_letters_total", "klagg_flush_duration_seconds_bucket",
		"klagg_flush_dirty_candles_bucket", "klagg_restore_duration_seconds_count", "klagg_rebalances_total",
		`klagg_consumer_lag_records{partition="0"}`, "klagg_partitions_assigned 2", "klagg_kafka_", "go_goroutines", "process_resident_memory_bytes"}
	var body string
	var missing []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, b := get("/metrics")
		body, missing = b, nil
		for _, name := range names {
			if !strings.Contains(b, name) {
				missing = append(missing, name)
			}
		}
		if code == 200 && strings.Contains(b, `klagg_trades_total{result="folded"} 50`) && strings.Contains(b, `klagg_trades_invalid_total{reason="malformed"} 1`) &&
			strings.Contains(b, "klagg_commit_duration_seconds_count") && !strings.Contains(b, "klagg_commit_duration_seconds_count 0") && len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30s, metrics lack the trades, a commit or %v:\n%s", missing, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if strings.Contains(body, "symbol=") {
		t.Error("a metric is labelled by symbol")
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz %d", code)
	}
	if code, b := get("/readyz"); code != 200 {
		t.Errorf("/readyz %d %s", code, b)
	}
}

// TestServeOps: klagg serve mounts the operations endpoints every command
// serves (ops) beside its API: /healthz at once, /readyz once the klines
// topic is read, /metrics with serve's own counter.
func TestServeOps(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "klines"))
	ctx, cancel := context.WithCancel(t.Context())
	var stdout testkit.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--brokers", cluster.ListenAddrs()[0], "--http", "127.0.0.1:0", "--data", t.TempDir()}, &stdout, io.Discard)
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("serve exited %d", code)
		}
	}()
	addrRe := regexp.MustCompile(`klagg serve: chart on http://([0-9.:]+)/`)
	var addr string
	testkit.WaitFor(t, 10*time.Second, "serve's address on stdout", func() bool {
		if m := addrRe.FindStringSubmatch(stdout.String()); m != nil {
			addr = m[1]
		}
		return addr != ""
	})
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, b := get("/healthz"); code != 200 || b != "ok\n" {
		t.Errorf("/healthz %d %q", code, b)
	}
	testkit.WaitFor(t, 20*time.Second, "/readyz to answer 200", func() bool { code, _ := get("/readyz"); return code == 200 })
	if code, b := get("/metrics"); code != 200 || !strings.Contains(b, "klagg_serve_records_total 0") || !strings.Contains(b, "go_goroutines") {
		t.Errorf("/metrics %d:\n%s", code, b)
	}
}

func TestGenCSVAndSynthetic(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "trades"))
	dir := t.TempDir()
	file := filepath.Join(dir, "BTCUSDT-aggTrades-2024-01-01.csv")
	csv := "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n" +
		"100,42000.5,0.25,1000,1002,1704067200000,true\n" +
		"101,42001.0,0.5,1003,1003,1704067200123456,False\n" + // microseconds, as newer files have
		"102,not-a-price,1,1004,1004,1704067201000,true\n" +
		"103,42002.0,1,1005,1005,1704067202000,false,true\n" // with the best-match column
	if err := os.WriteFile(file, []byte(csv), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	addr := cluster.ListenAddrs()[0]
	if code := run(t.Context(), []string{"gen", "--brokers", addr, "--csv", file}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "produced 3 trades") || !strings.Contains(stderr.String(), "skipped 1 CSV rows") {
		t.Fatalf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
	stdout.Reset()
	if code := run(t.Context(), []string{"gen", "--brokers", addr, "--format", "avro", "--symbols", "5", "--rate", "2000", "--duration", "200ms"}, &stdout, &stderr); code != 0 {
		t.Fatalf("synthetic: exit %d: %s", code, stderr.String())
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumeTopics("trades"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var trades []schema.Trade
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for len(trades) < 4 && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			var tr schema.Trade
			var err error
			if r.Value[0] == '{' {
				err = schema.DecodeBinanceJSON(r.Value, r.Key, &tr)
			} else {
				err = schema.DecodeAvroTrade(r.Value, &tr)
			}
			if err != nil {
				t.Fatalf("record %d: %v", r.Offset, err)
			}
			tr.Symbol = append([]byte(nil), tr.Symbol...)
			trades = append(trades, tr)
		})
	}
	if len(trades) < 4 || string(trades[0].Symbol) != "BTCUSDT" || trades[0].LastID != 1002 || !trades[0].BuyerMaker ||
		trades[1].Time != 1704067200123 || trades[1].BuyerMaker || trades[3].Price <= 0 {
		t.Fatalf("trades: %+v", trades[:min(4, len(trades))])
	}
	if err := os.WriteFile(filepath.Join(dir, "nosymbol.csv"), []byte("1,2.5,1,1,1,1704067200000,true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code := run(t.Context(), []string{"gen", "--csv", filepath.Join(dir, "nosymbol.csv")}, &stdout, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), "pass --symbol") {
		t.Fatalf("file without a symbol: %d %s", code, stderr.String())
	}
}

func TestFitted(t *testing.T) {
	for _, tc := range []struct {
		v     string
		width int
		want  string
	}{
		{"2504", 10, "2504"},
		{"2504.09", 10, "2504.09"},
		{"0.00002345", 10, "0.00002345"},
		{"763487970", 12, "763487970"},
		{"13.8175", 10, "13.8175"},
		{"98765.4321", 10, "98765.4321"},
		{"0", 10, "0"},
		{"123456.12345678", 10, "123456.123"}, // too wide: rounded to fit, in the table only
		{"4756643.47552570", 11, "4756643.476"},
	} {
		if got := fitted(wd(tc.v), tc.width); got != tc.want {
			t.Errorf("fitted(%s, %d) = %q, want %q", tc.v, tc.width, got, tc.want)
		}
		if got := exact(wd(tc.v)); got != strings.TrimRight(strings.TrimRight(wd(tc.v).String(), "0"), ".") {
			t.Errorf("exact(%s) = %q", tc.v, got)
		}
	}
}

// TestTailDeadLetters: refused trades are visible with their reason,
// source and error, as JSON lines or a table of at most 100 columns.
func TestTailDeadLetters(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "trades-dlq"))
	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	h := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	if err := cl.ProduceSync(t.Context(),
		&kgo.Record{Topic: "trades-dlq", Key: []byte("BTCUSDT"), Value: []byte(`{"s":"BTCUSDT","p":"NaN"}`), Headers: []kgo.RecordHeader{
			h(processor.HeaderReason, "invalid_price"), h(processor.HeaderSource, "trades/3/1200"), h(processor.HeaderError, "price NaN: not a positive finite number")}},
		&kgo.Record{Topic: "trades-dlq", Key: []byte("ETHUSDT"), Value: []byte(`{"s":"ETHUSDT","a":7}`), Headers: []kgo.RecordHeader{
			h(processor.HeaderReason, "late"), h(processor.HeaderSource, "trades/1/88"), h(processor.HeaderTrade, "2")}},
	).FirstErr(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if code := run(ctx, []string{"tail", "--brokers", cluster.ListenAddrs()[0], "--dead-letters", "--from-beginning", "--max", "2", "--format", "json"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"reason":"invalid_price"`) || !strings.Contains(lines[0], `"source":"trades/3/1200"`) ||
		!strings.Contains(lines[0], `"error":"price NaN`) || !strings.Contains(lines[1], `"reason":"late"`) || !strings.Contains(lines[1], `"key":"ETHUSDT"`) || !strings.Contains(lines[1], `"trade":2`) ||
		strings.Contains(lines[0], `"trade"`) {
		t.Fatalf("json: %q", stdout.String())
	}
	stdout.Reset()
	if code := run(ctx, []string{"tail", "--brokers", cluster.ListenAddrs()[0], "--dead-letters", "--from-beginning", "--max", "2"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	lines = strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[1], "invalid_price") || !strings.Contains(lines[2], "trades/1/88#2") {
		t.Fatalf("table: %q", stdout.String())
	}
	for _, l := range lines {
		if utf8.RuneCountInString(l) > 100 {
			t.Errorf("line of %d columns: %q", utf8.RuneCountInString(l), l)
		}
	}
}

// TestSaysSoAtOnce: a missing topic is named at once, and a broker that
// accepts connections but never answers is reported within the connect
// bound, with its address.
func TestSaysSoAtOnce(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "trades"))
	var stdout, stderr bytes.Buffer
	start := time.Now()
	// tail says so, then waits for klagg run to create it.
	tctx, tcancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer tcancel()
	if code := run(tctx, []string{"tail", "--brokers", cluster.ListenAddrs()[0], "--klines-topic", "nosuchtopic"}, &stdout, &stderr); code != 0 ||
		!strings.Contains(stderr.String(), `topic "nosuchtopic" does not exist (check --klines-topic); waiting for it to be created`) {
		t.Fatalf("tail of a missing topic: exit %d %q", code, stderr.String())
	}
	stderr.Reset()
	if code := run(t.Context(), []string{"gen", "--brokers", cluster.ListenAddrs()[0], "--trades-topic", "nosuch", "--duration", "1s"}, &stdout, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), `topic "nosuch" does not exist (check --trades-topic, or --create-topic)`) {
		t.Fatalf("gen to a missing topic: exit %d %q", code, stderr.String())
	}
	// --create-topic makes a fresh one with --partitions.
	stdout.Reset()
	if code := run(t.Context(), []string{"gen", "--brokers", cluster.ListenAddrs()[0], "--trades-topic", "fresh", "--create-topic", "--partitions", "3",
		"--symbols", "2", "--rate", "100", "--duration", "100ms"}, &stdout, &stderr); code != 0 ||
		!strings.Contains(stdout.String(), `created topic "fresh" with 3 partitions`) {
		t.Fatalf("gen --create-topic: exit %d %q %q", code, stdout.String(), stderr.String())
	}
	// A missing CSV file is named as missing, not as a name without a symbol.
	stderr.Reset()
	if code := run(t.Context(), []string{"gen", "--csv", "/nonexistent.csv"}, &stdout, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), "no such file") || strings.Contains(stderr.String(), "symbol") {
		t.Fatalf("gen --csv /nonexistent.csv: exit %d %q", code, stderr.String())
	}
	if took := time.Since(start); took > 8*time.Second {
		t.Errorf("a missing topic took %s to report", took)
	}

	// Accepts, never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	stderr.Reset()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if code := run(ctx, []string{"tail", "--brokers", ln.Addr().String()}, &stdout, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "brokers "+ln.Addr().String()+" do not answer within 10s") {
		t.Fatalf("silent broker: exit %d %q", code, stderr.String())
	}
}

// TestKlineView: the demo shows each busy symbol's open 1m candle and the
// one before it, whose state turns final when its final record arrives,
// whatever order versions come in.
func TestKlineView(t *testing.T) {
	enc, _ := schema.NewKlineEncoder(schema.FramingSingleObject, 0)
	minute := int64(1714557600000)
	kline := func(sym string, open int64, trades, version int64, final bool) []byte {
		return enc.Append(nil, &schema.Kline{Symbol: sym, Period: "1m", OpenTime: open, CloseTime: open + 59_999,
			Open: fx("2504.09"), High: fx("2504.1"), Low: fx("0.00002345"), Close: fx("13.8175"), Volume: wd("763487970"),
			TradeCount: trades, Version: version, IsFinal: final})
	}
	v := newKlineView()
	for _, r := range [][]byte{
		kline("BTCUSDT", minute, 10, 1, false),
		kline("BTCUSDT", minute+60_000, 3, 2, false), // the next minute opens
		kline("BTCUSDT", minute, 12, 3, false),       // a late update of the previous one
		kline("BTCUSDT", minute-60_000, 99, 1, true), // older than both: not shown
		kline("BTCUSDT", minute+60_000, 5, 4, false),
		kline("BTCUSDT", minute+60_000, 4, 3, false), // an older version: ignored
		kline("ETHUSDT", minute+60_000, 1, 1, false),
		kline("BTCUSDT", minute, 12, 5, true), // final
		kline("BTCUSDT", minute+60_000, 4, 4, false),
		[]byte("garbage"),
	} {
		v.add(r)
	}
	var b strings.Builder
	v.render(&b, 2, time.UnixMilli(minute+60_000+36_500)) // 23.5 s before the open candle closes
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("want a header and the busiest symbol's two candles:\n%s", b.String())
	}
	for i, want := range []string{
		`^BTCUSDT +10:01 +2504\.09 +2504\.1 +0\.00002345 +13\.8175 +763487970 +5  open, 24s left$`,
		`^BTCUSDT +10:00 .* +12  final$`,
	} {
		if !regexp.MustCompile(want).MatchString(lines[i+1]) {
			t.Errorf("row %d: %q does not match %s", i+1, lines[i+1], want)
		}
	}
	for _, line := range lines {
		if len(line) > 100 {
			t.Errorf("line of %d columns: %q", len(line), line)
		}
	}
	if got := candleState(&schema.Kline{CloseTime: minute - 1}, time.UnixMilli(minute+500)); got != "closing" {
		t.Errorf("a closed candle not yet final: %q", got)
	}
}

// TestEveryBadFlagOnce: bad flags are reported together, the pointer to
// -h once, and a flag that did not parse is not reported a second time by
// the checks that follow (the flag package zeroes it on a parse error).
func TestEveryBadFlagOnce(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(t.Context(), []string{"run", "--flush-interval", "soon", "--grace=later", "--nope"}, &stdout, &stderr); code != 2 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	if len(lines) != 3 || strings.Count(stderr.String(), "(see klagg run -h)") != 1 || strings.Contains(stderr.String(), "below") {
		t.Fatalf("want three problems, one pointer to -h, nothing about a zeroed flush interval:\n%s", stderr.String())
	}
}

// TestGenWarnsOfRefusals: sending the same synthetic market again into a
// running pipeline warns that klagg run would refuse it; a fresh topic
// does not.
func TestGenWarnsOfRefusals(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "trades"))
	brokers := cluster.ListenAddrs()[0]
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"run", "--brokers", brokers, "--metrics-addr", "", "--flush-interval", "50ms"}, io.Discard, io.Discard)
	}()
	defer func() {
		cancel()
		<-done
	}()
	gen := func(extra ...string) string {
		var stdout, stderr bytes.Buffer
		args := append([]string{"gen", "--brokers", brokers, "--symbols", "3", "--rate", "300", "--duration", "300ms"}, extra...)
		if code := run(t.Context(), args, &stdout, &stderr); code != 0 {
			t.Fatalf("gen %q: exit %d: %s", extra, code, stderr.String())
		}
		return stderr.String()
	}
	gen()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	testkit.WaitFor(t, 30*time.Second, "state of the 3 symbols", func() bool {
		states, _, err := processor.LatestStates(t.Context(), cl, "klines-state", kgo.SeedBrokers(brokers))
		return err == nil && len(states) == 3
	})
	if out := gen(); !strings.Contains(out, `warning: group "klagg" already reads "trades", and the state in "klines-state" is past`) ||
		!strings.Contains(out, "for 3 of 3 symbols (S000USDT: duplicate, trade id 1 is not above its last") {
		t.Errorf("the same market again: no warning:\n%s", out)
	}
	warning := gen()
	t.Logf("the warning:\n%s", warning)
	for _, line := range strings.Split(strings.TrimSpace(warning), "\n") {
		if len(line) > 100 {
			t.Errorf("warning line of %d columns: %q", len(line), line)
		}
	}
	// A 2024 file into today's pipeline: a symbol the state does not know,
	// whose candles closed long before every shard's watermark.
	csv := filepath.Join(t.TempDir(), "BTCUSDT-aggTrades-2024-01-01.csv")
	if err := os.WriteFile(csv, []byte("1,42000.5,0.1,1,1,1704067200000,true\n2,42001,0.2,2,3,1704067201000,false\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := gen("--csv", csv); !strings.Contains(out, "for 1 of 1 symbols (BTCUSDT: late, its 1m candle of 2024-01-01 00:00:00 closed before") {
		t.Errorf("a 2024 file: no warning:\n%s", out)
	}
	if out := gen("--trades-topic", "fresh", "--create-topic"); out != "" {
		t.Errorf("a fresh topic: %s", out)
	}
}

// TestRunHTTP: klagg run --http serves the chart page and the klines API
// from the klines topic, beside its work.
func TestRunHTTP(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "trades"))
	brokers := cluster.ListenAddrs()[0]
	ctx, cancel := context.WithCancel(t.Context())
	var stdout testkit.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"run", "--brokers", brokers, "--metrics-addr", "", "--flush-interval", "50ms", "--http", "127.0.0.1:0"}, &stdout, io.Discard)
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("run exited %d", code)
		}
	}()
	addrRe := regexp.MustCompile(`klagg run: chart on http://([0-9.:]+)/, klines API on http://[0-9.:]+/api/v3/klines`)
	var addr string
	testkit.WaitFor(t, 10*time.Second, "the chart's address on stdout", func() bool {
		if m := addrRe.FindStringSubmatch(stdout.String()); m != nil {
			addr = m[1]
		}
		return addr != ""
	})
	if code := run(t.Context(), []string{"gen", "--brokers", brokers, "--symbols", "2", "--rate", "200", "--duration", "300ms"}, io.Discard, io.Discard); code != 0 {
		t.Fatalf("gen: exit %d", code)
	}
	var candles [][]any
	testkit.WaitFor(t, 20*time.Second, "S000USDT's 1m candles from /api/v3/klines", func() bool {
		resp, err := http.Get("http://" + addr + "/api/v3/klines?symbol=S000USDT&interval=1m")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&candles) == nil && len(candles) > 0
	})
	if len(candles[0]) != 12 {
		t.Errorf("a candle of %d fields, want Binance's 12: %v", len(candles[0]), candles[0])
	}
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "<html") {
		t.Errorf("the chart page: %d %.200s", resp.StatusCode, page)
	}
}

// fx parses a test's decimal literal.
func fx(s string) decimal.Fixed {
	v, err := decimal.ParseFixed([]byte(s))
	if err != nil {
		panic(err)
	}
	return v
}

// wd parses a test's decimal literal into a Wide.
func wd(s string) decimal.Wide {
	v, err := decimal.ParseWide(s)
	if err != nil {
		panic(err)
	}
	return v
}

func TestParseRetention(t *testing.T) {
	got, err := parseRetention("1m=90d, 1s=36h,1d=2y")
	if err != nil || len(got) != 3 || got[period.P1m] != 90*24*time.Hour || got[period.P1s] != 36*time.Hour ||
		got[period.P1d] != 730*24*time.Hour {
		t.Fatalf("got %v, %v", got, err)
	}
	for _, bad := range []string{"1m", "7m=1d", "1m=0d", "1m=-3h", "1m=xd", "1h=soon"} {
		if _, err := parseRetention(bad); err == nil || !strings.Contains(err.Error(), "--retention") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestSplitList(t *testing.T) {
	for in, want := range map[string]string{
		"a:1,b:2":            "[a:1 b:2]",
		" a:1 , b:2 ,":       "[a:1 b:2]",
		"":                   "[]",
		" , ":                "[]",
		"kafka:9092":         "[kafka:9092]",
		"USDT, USDC ,,FDUSD": "[USDT USDC FDUSD]",
	} {
		if got := fmt.Sprint(splitList(in)); got != want {
			t.Errorf("splitList(%q) = %s, want %s", in, got, want)
		}
	}
}

// TestHintsNameFlags: every setting that processor's and serve's errors
// name (hint.Error) is rendered as a flag that run or serve has.
func TestHintsNameFlags(t *testing.T) {
	runFS, _ := newRunFlags("run", io.Discard)
	settingRe := regexp.MustCompile(`Setting: +"(\w+)"`)
	found := 0
	for _, dir := range []string{"../../processor", "../../serve"} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range settingRe.FindAllStringSubmatch(string(src), -1) {
				found++
				flag := flagOf(m[1])
				name := strings.TrimPrefix(flag, "--")
				if flag == m[1] || (runFS.Lookup(name) == nil && name != "data") {
					t.Errorf("%s: setting %s renders as %q, not a flag of klagg run or serve", f, m[1], flag)
				}
			}
		}
	}
	if found < 5 {
		t.Fatalf("only %d hints found: the pattern no longer matches the sources", found)
	}
	fenced := &hint.Error{Err: errors.New("processor: fenced"), Setting: "InstanceID", Fix: "give each process its own %s"}
	if got := userMessage(fenced); got != "processor: fenced (give each process its own --instance-id)" {
		t.Errorf("userMessage: %q", got)
	}
}

// TestLoggersShareOneWriterLock: run gives klagg's logger and the Kafka
// client's (two handlers, each with its own lock) one lockedWriter, so
// that a caller's plain buffer gets whole lines from both at once (the
// race detector fails this test if the writes are not serialized).
func TestLoggersShareOneWriterLock(t *testing.T) {
	var buf bytes.Buffer
	w := &lockedWriter{w: &buf}
	lf := logFlags{format: "json"}
	var wg sync.WaitGroup
	for range 2 {
		log, err := lf.build(w, slog.LevelInfo)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			for i := range 500 {
				log.Info("line", "i", i)
			}
		})
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	for _, l := range lines {
		if !json.Valid([]byte(l)) {
			t.Fatalf("a torn line: %q", l)
		}
	}
	if len(lines) != 1000 {
		t.Fatalf("%d lines, want 1000", len(lines))
	}
}
