package serve_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/internal/oracle"
	"github.com/klagg/klagg/internal/testkit"
	"github.com/klagg/klagg/processor"
	"github.com/klagg/klagg/schema"
	"github.com/klagg/klagg/serve"
)

// pipeline runs one klagg member over recs on kfake until every offset is
// committed, then a Server over its klines topic until it has read them
// all. It returns the server's address and the member's config.
func pipeline(t *testing.T, ctx context.Context, recs []oracle.Record, keep int) (string, processor.Config, *kgo.Client) {
	t.Helper()
	base, cfg, prod, _ := pipelineWith(t, ctx, recs, func(c *serve.Config) { c.Keep = keep })
	return base, cfg, prod
}

// pipelineWith is pipeline with the server's config set by set; it also
// returns the server.
func pipelineWith(t *testing.T, ctx context.Context, recs []oracle.Record, set func(*serve.Config)) (string, processor.Config, *kgo.Client, *serve.Server) {
	t.Helper()
	brokers := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "trades")).ListenAddrs()
	prod, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(prod.Close)
	if err := oracle.Produce(ctx, prod, "trades", recs); err != nil {
		t.Fatal(err)
	}
	cfg := processor.DefaultConfig()
	cfg.Brokers = brokers
	cfg.FlushInterval = 50 * time.Millisecond
	mctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- processor.Run(mctx, cfg) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	adm := kadm.NewClient(prod)
	testkit.WaitFor(t, time.Minute, "offsets committed", func() bool {
		ok, err := oracle.Committed(ctx, adm, cfg.Group, cfg.TradesTopic)
		return err == nil && ok
	})
	got, err := oracle.ReadKlines(ctx, brokers, cfg.KlinesTopic)
	if err != nil {
		t.Fatal(err)
	}

	scfg := serve.DefaultConfig()
	scfg.Brokers, scfg.HTTP = brokers, "127.0.0.1:0"
	set(&scfg)
	srv, err := serve.New(scfg)
	if err != nil {
		t.Fatal(err)
	}
	sctx, sstop := context.WithCancel(ctx)
	sdone := make(chan error, 1)
	go func() { sdone <- srv.Run(sctx) }()
	t.Cleanup(func() {
		sstop()
		if err := <-sdone; err != nil {
			t.Error(err)
		}
	})
	testkit.WaitFor(t, time.Minute, "the server to read the klines topic", func() bool { return srv.Records() >= int64(got.Records) })
	return "http://" + srv.Addr(), cfg, prod, srv
}

func get(t *testing.T, u string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// binance decodes /api/v3/klines' arrays back into candles.
func binance(t *testing.T, symbol, period string, body []byte) []schema.Kline {
	t.Helper()
	var rows [][]any
	if err := json.Unmarshal(body, &rows); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	text := func(v any) string {
		s, ok := v.(string)
		if !ok || !strings.Contains(s, ".") || len(s)-strings.Index(s, ".") != 9 {
			t.Fatalf("%v is not a decimal string of eight places", v)
		}
		return s
	}
	num := func(v any) decimal.Fixed {
		var f decimal.Fixed
		if err := f.UnmarshalText([]byte(text(v))); err != nil {
			t.Fatal(err)
		}
		return f
	}
	wide := func(v any) decimal.Wide {
		var w decimal.Wide
		if err := w.UnmarshalText([]byte(text(v))); err != nil {
			t.Fatal(err)
		}
		return w
	}
	out := make([]schema.Kline, 0, len(rows))
	for _, r := range rows {
		if len(r) != 12 || r[11] != "0" {
			t.Fatalf("row %v: want Binance's 12 fields", r)
		}
		out = append(out, schema.Kline{Symbol: symbol, Period: period, OpenTime: int64(r[0].(float64)),
			Open: num(r[1]), High: num(r[2]), Low: num(r[3]), Close: num(r[4]), Volume: wide(r[5]),
			CloseTime: int64(r[6].(float64)), QuoteVolume: wide(r[7]), TradeCount: int64(r[8].(float64)),
			TakerBuyVolume: wide(r[9]), TakerBuyQuoteVolume: wide(r[10])})
	}
	return out
}

// same compares what Binance's array carries (no ids, no final flag),
// every decimal exactly.
func same(a, b schema.Kline) bool {
	return a.OpenTime == b.OpenTime && a.CloseTime == b.CloseTime && a.TradeCount == b.TradeCount &&
		a.Open == b.Open && a.High == b.High && a.Low == b.Low && a.Close == b.Close &&
		a.Volume == b.Volume && a.QuoteVolume == b.QuoteVolume &&
		a.TakerBuyVolume == b.TakerBuyVolume && a.TakerBuyQuoteVolume == b.TakerBuyQuoteVolume
}

// flt is what a client that parses Binance's strings into floats (ccxt,
// freqtrade) holds for v: the double nearest its exact value.
func flt(v interface{ Append([]byte) []byte }) float64 {
	f, err := strconv.ParseFloat(string(v.Append(nil)), 64)
	if err != nil {
		panic(err)
	}
	return f
}

// TestKlinesAPI: after a replay, /api/v3/klines answers for several symbols,
// intervals and ranges exactly what the oracle computed, in Binance's
// layout and order, and the window rules (limit, startTime, endTime) are
// Binance's.
func TestKlinesAPI(t *testing.T) {
	for _, store := range []string{"memory", "disk"} {
		t.Run(store, func(t *testing.T) {
			dir := ""
			if store == "disk" {
				dir = t.TempDir()
			}
			testKlinesAPI(t, func(c *serve.Config) { c.Data = dir })
		})
	}
}

func testKlinesAPI(t *testing.T, set func(*serve.Config)) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	recs := oracle.Market(oracle.MarketSpec{Seed: 11, Symbols: 6, Trades: 8_000, Partitions: 2,
		Start: time.Date(2024, 3, 31, 22, 30, 0, 0, time.UTC), StepMs: 900})
	base, cfg, _, _ := pipelineWith(t, ctx, recs, set)
	want, _ := oracle.Expected(recs, cfg.Engine.Periods, cfg.Engine.Grace)
	series := map[[2]string][]schema.Kline{}
	for k, v := range want {
		series[[2]string{k.Symbol, k.Period}] = append(series[[2]string{k.Symbol, k.Period}], v)
	}
	checked := 0
	for _, sym := range []string{"SYM000USDT", "SYM001USDT", "SYM004USDT"} {
		for _, period := range []string{"1m", "5m", "15m", "1h"} {
			finals := series[[2]string{sym, period}]
			sort.Slice(finals, func(i, j int) bool { return finals[i].OpenTime < finals[j].OpenTime })
			if len(finals) < 2 {
				t.Fatalf("%s %s: only %d final candles in the oracle; the test would prove little", sym, period, len(finals))
			}
			first, last := finals[0].OpenTime, finals[len(finals)-1].OpenTime
			for _, tc := range []struct {
				name   string
				params url.Values
				want   []schema.Kline
			}{
				{"range", url.Values{"startTime": {fmt.Sprint(first)}, "endTime": {fmt.Sprint(last)}}, finals},
				{"from start, limit 2", url.Values{"startTime": {fmt.Sprint(first)}, "limit": {"2"}}, finals[:2]},
				// Open time at or after startTime: a start inside a candle
				// begins with the next one.
				{"from inside the first", url.Values{"startTime": {fmt.Sprint(first + 1)}, "endTime": {fmt.Sprint(last)}}, finals[1:]},
				{"to end, limit 1", url.Values{"endTime": {fmt.Sprint(last)}, "limit": {"1"}}, finals[len(finals)-1:]},
			} {
				tc.params.Set("symbol", sym)
				tc.params.Set("interval", period)
				code, body := get(t, base+"/api/v3/klines?"+tc.params.Encode())
				if code != http.StatusOK {
					t.Fatalf("%s %s %s: %d %s", sym, period, tc.name, code, body)
				}
				got := binance(t, sym, period, body)
				if len(got) != len(tc.want) {
					t.Fatalf("%s %s %s: %d candles, want %d", sym, period, tc.name, len(got), len(tc.want))
				}
				for i := range got {
					if !same(got[i], tc.want[i]) {
						t.Fatalf("%s %s %s: candle %d\n got  %+v\n want %+v", sym, period, tc.name, i, got[i], tc.want[i])
					}
				}
				checked += len(got)
			}
			// No range: the newest candles, the open one included, up to
			// the default limit of 500.
			code, body := get(t, base+"/api/v3/klines?"+url.Values{"symbol": {sym}, "interval": {period}}.Encode())
			if code != http.StatusOK {
				t.Fatalf("%d %s", code, body)
			}
			got := binance(t, sym, period, body)
			if len(got) == 0 || len(got) > 500 || got[len(got)-1].OpenTime < last {
				t.Fatalf("%s %s newest: %d candles ending at %d; the last final opens at %d", sym, period, len(got), got[len(got)-1].OpenTime, last)
			}
		}
	}
	t.Logf("%d candles from /api/v3/klines equal to the oracle's", checked)
}

// TestKlinesAPIErrors: Binance's error codes and messages for what its
// endpoint refuses.
func TestKlinesAPIErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	recs := oracle.Market(oracle.MarketSpec{Seed: 12, Symbols: 2, Trades: 500, Partitions: 2,
		Start: time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC), StepMs: 500})
	base, _, _ := pipeline(t, ctx, recs, 10)
	for _, tc := range []struct {
		query string
		code  int
		msg   string
	}{
		{"interval=1m", -1102, "Mandatory parameter 'symbol'"},
		{"symbol=SYM000USDT", -1102, "Mandatory parameter 'interval'"},
		{"symbol=NOPE&interval=1m", -1121, "Invalid symbol."},
		{"symbol=SYM000USDT&interval=2m", -1120, "Invalid interval."},
		{"symbol=SYM000USDT&interval=1m&limit=0", -1130, "Data sent for parameter 'limit' is not valid."},
		{"symbol=SYM000USDT&interval=1m&timeZone=15", -1130, "parameter 'timeZone' is not valid."},
		{"symbol=SYM000USDT&interval=1m&timeZone=8:5", -1130, "parameter 'timeZone' is not valid."},
		{"symbol=SYM000USDT&interval=1m&limit=x", -1100, "parameter 'limit'"},
		{"symbol=SYM000USDT&interval=1m&startTime=abc", -1100, "parameter 'startTime'"},
		{"symbol=SYM000USDT&interval=1m&startTime=20&endTime=10", -1023, "Start time is greater than end time."},
	} {
		code, body := get(t, base+"/api/v3/klines?"+tc.query)
		var e struct {
			Code int    `json:"code"`
			Msg  string `json:"msg"`
		}
		if err := json.Unmarshal(body, &e); err != nil || code != http.StatusBadRequest || e.Code != tc.code || !strings.Contains(e.Msg, tc.msg) {
			t.Errorf("%s: %d %s; want 400 with code %d and %q", tc.query, code, body, tc.code, tc.msg)
		}
	}
	// Keep bounds what a series holds.
	code, body := get(t, base+"/api/v3/klines?symbol=SYM000USDT&interval=1m&limit=1000")
	if code != http.StatusOK || len(binance(t, "SYM000USDT", "1m", body)) > 10 {
		t.Fatalf("keep 10: %d %s", code, body)
	}
}

// TestStream: a stream subscriber gets each update of its symbol and
// interval as it arrives, as Binance's websocket kline event.
func TestStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	recs := oracle.Market(oracle.MarketSpec{Seed: 13, Symbols: 2, Trades: 2_000, Partitions: 2,
		Start: time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC), StepMs: 500})
	base, _, prod := pipeline(t, ctx, recs[:1000], 100)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/stream?symbol=SYM000USDT&interval=1m", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	sent := time.Now()
	if err := oracle.Produce(ctx, prod, "trades", recs[1000:]); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		// Binance's names differ by case only ("t" and "T"): each needs
		// its own field, or encoding/json folds them together.
		var e struct {
			E    string `json:"e"`
			Time int64  `json:"E"`
			K    struct {
				Symbol   string `json:"s"`
				Interval string `json:"i"`
				Open     string `json:"o"`
				Start    int64  `json:"t"`
				End      int64  `json:"T"`
			} `json:"k"`
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatal(err)
		}
		if e.E != "kline" || e.K.Symbol != "SYM000USDT" || e.K.Interval != "1m" || e.K.Open == "" || e.K.Start == 0 || e.K.End != e.K.Start+59_999 || e.Time == 0 {
			t.Fatalf("event %s", line)
		}
		t.Logf("first update %s after the trades were produced: %s", time.Since(sent).Round(time.Millisecond), line)
		return
	}
	t.Fatalf("stream ended without an update: %v", sc.Err())
}

// TestMarketEndpoints: what a Binance client asks before candles. ping,
// time, exchangeInfo (every symbol held, split into base and quote assets,
// filters with eight-decimal steps, -1121 for an unknown one), uiKlines as
// klines, a limit above 1,000 answered with 1,000 as Binance does, a
// timeZone whose boundaries are UTC's, and CORS.
func TestMarketEndpoints(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	recs := oracle.Market(oracle.MarketSpec{Seed: 5, Symbols: 3, Trades: 30_000, Partitions: 2,
		Start: time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC), StepMs: 2500}) // some 1,250 minutes
	base, _, _ := pipeline(t, ctx, recs, 2000)

	if code, body := get(t, base+"/api/v3/ping"); code != 200 || strings.TrimSpace(string(body)) != "{}" {
		t.Errorf("ping: %d %s", code, body)
	}
	var tm struct {
		ServerTime int64 `json:"serverTime"`
	}
	code, body := get(t, base+"/api/v3/time")
	if err := json.Unmarshal(body, &tm); err != nil || code != 200 || time.Since(time.UnixMilli(tm.ServerTime)).Abs() > time.Minute {
		t.Errorf("time: %d %s", code, body)
	}

	var info struct {
		Timezone string `json:"timezone"`
		Symbols  []struct {
			Symbol, Status, BaseAsset, QuoteAsset string
			Filters                               []map[string]string
		} `json:"symbols"`
	}
	code, body = get(t, base+"/api/v3/exchangeInfo")
	if err := json.Unmarshal(body, &info); err != nil || code != 200 || info.Timezone != "UTC" {
		t.Fatalf("exchangeInfo: %d %s", code, body)
	}
	var names []string
	for _, s := range info.Symbols {
		names = append(names, s.Symbol)
		if s.Status != "TRADING" || s.BaseAsset+s.QuoteAsset != s.Symbol || s.QuoteAsset != "USDT" {
			t.Errorf("exchangeInfo symbol %+v", s)
		}
		if len(s.Filters) < 2 || s.Filters[0]["tickSize"] != "0.00000001" || s.Filters[1]["stepSize"] != "0.00000001" {
			t.Errorf("%s filters %v", s.Symbol, s.Filters)
		}
	}
	if fmt.Sprint(names) != "[SYM000USDT SYM001USDT SYM002USDT]" {
		t.Errorf("exchangeInfo symbols %v", names)
	}
	code, body = get(t, base+"/api/v3/exchangeInfo?symbols="+url.QueryEscape(`["SYM001USDT"]`))
	if err := json.Unmarshal(body, &info); err != nil || code != 200 || len(info.Symbols) != 1 || info.Symbols[0].Symbol != "SYM001USDT" {
		t.Errorf("exchangeInfo?symbols: %d %s", code, body)
	}
	if code, body = get(t, base+"/api/v3/exchangeInfo?symbol=NOPE"); code != 400 || !strings.Contains(string(body), "-1121") {
		t.Errorf("exchangeInfo of an unknown symbol: %d %s", code, body)
	}

	_, want := get(t, base+"/api/v3/klines?symbol=SYM000USDT&interval=1m&limit=1000")
	for _, q := range []string{"limit=1500", "limit=1000&timeZone=0", "limit=1000&timeZone=%2B08:00", "limit=1000&timeZone=-3"} {
		for _, path := range []string{"klines", "uiKlines"} {
			code, body := get(t, base+"/api/v3/"+path+"?symbol=SYM000USDT&interval=1m&"+q)
			if code != 200 || string(body) != string(want) {
				t.Errorf("%s?%s: %d, %d bytes; want the same 1,000 candles as klines (%d bytes)", path, q, code, len(body), len(want))
			}
		}
	}
	if n := len(binance(t, "SYM000USDT", "1m", want)); n != 1000 {
		t.Fatalf("%d candles; the test needs more than 1,000 held", n)
	}

	req, _ := http.NewRequest(http.MethodOptions, base+"/api/v3/klines", nil)
	req.Header.Set("Origin", "http://elsewhere.example")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("preflight: %d, allow origin %q", resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"))
	}
}

// TestCcxt: ccxt's binance exchange, configured as the README says, loads
// the markets from exchangeInfo and pages through 1m candles with
// fetch_ohlcv(since, limit=1000): more than two pages, every final candle
// equal to the oracle's, and at most the open candle after them.
func TestCcxt(t *testing.T) {
	python := os.Getenv("KLAGG_TEST_PYTHON")
	if python == "" {
		t.Skip("KLAGG_TEST_PYTHON (a Python with ccxt; scripts/test.sh installs it) is unset")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	recs := oracle.Market(oracle.MarketSpec{Seed: 21, Symbols: 2, Trades: 20_000, Partitions: 2,
		Start: time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC), StepMs: 8000}) // some 2,660 minutes
	base, cfg, _ := pipeline(t, ctx, recs, 5000)
	defer ccxtTimeZone(t, ctx, python, base, recs, cfg)
	want := finalSeries(recs, cfg, "SYM000USDT", "1m")

	out, err := exec.CommandContext(ctx, python, "testdata/ccxt_ohlcv.py", base, "SYM000/USDT", "1m",
		strconv.FormatInt(want[0].OpenTime, 10)).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("ccxt: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	var got struct {
		Markets []string
		Pages   int
		Candles [][6]float64
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if fmt.Sprint(got.Markets) != "[SYM000/USDT SYM001/USDT]" {
		t.Errorf("markets %v", got.Markets)
	}
	if got.Pages < 3 {
		t.Errorf("%d pages; the test wants at least three", got.Pages)
	}
	if len(got.Candles) < len(want) || len(got.Candles) > len(want)+1 {
		t.Fatalf("%d candles from ccxt; the oracle has %d final ones", len(got.Candles), len(want))
	}
	for i, w := range want {
		g := got.Candles[i]
		if int64(g[0]) != w.OpenTime || g[1] != flt(w.Open) || g[2] != flt(w.High) || g[3] != flt(w.Low) || g[4] != flt(w.Close) || g[5] != flt(w.Volume) {
			t.Fatalf("candle %d: ccxt %v, oracle %+v", i, g, w)
		}
	}
	if n := len(got.Candles); n > len(want) && int64(got.Candles[n-1][0]) != want[len(want)-1].CloseTime+1 {
		t.Errorf("after the last final candle: %v", got.Candles[n-1])
	}
	t.Logf("ccxt %d pages: %d candles, %d final ones equal to the oracle's", got.Pages, len(got.Candles), len(want))
}

// TestCcxtPro: ccxt.pro's watch_ohlcv, configured as the README says,
// follows a symbol over the websocket while trades arrive: it sees the
// open candle change and then close, and the values it holds for each
// closed candle are the oracle's final ones.
func TestCcxtPro(t *testing.T) {
	python := os.Getenv("KLAGG_TEST_PYTHON")
	if python == "" {
		t.Skip("KLAGG_TEST_PYTHON (a Python with ccxt; scripts/test.sh installs it) is unset")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	recs := oracle.Market(oracle.MarketSpec{Seed: 29, Symbols: 2, Trades: 6_000, Partitions: 2,
		Start: time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC), StepMs: 100}) // some ten minutes
	base, cfg, prod, srv := pipelineWith(t, ctx, recs[:300], func(*serve.Config) {})
	final, _ := oracle.Expected(recs, cfg.Engine.Periods, cfg.Engine.Grace)

	const closed = 3
	cmd := exec.CommandContext(ctx, python, "testdata/ccxtpro_watch.py", base, "SYM000/USDT", strconv.Itoa(closed))
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, time.Minute, "ccxt.pro to subscribe", func() bool { return srv.Streams() == 1 })
	// The market moves on while it watches, a little at a time: a minute
	// of trade time (some 600 trades) every 1.5 s, so that each candle is
	// updated over several flushes even on a loaded machine (at a minute
	// every 0.36 s, CI once saw each candle only once).
	for i := 300; i < len(recs); i += 100 {
		if err := oracle.Produce(ctx, prod, "trades", recs[i:min(i+100, len(recs))]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("ccxt.pro: %v\n%s", err, errOut.String())
	}
	var got struct {
		Updates int
		Candles [][6]float64
	}
	if err := json.Unmarshal([]byte(out.String()), &got); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if len(got.Candles) <= closed || got.Updates <= len(got.Candles) {
		t.Fatalf("%d updates of %d candles: want the open candle updated and %d closed", got.Updates, len(got.Candles), closed)
	}
	for _, g := range got.Candles[:len(got.Candles)-1] { // the newest may still be open
		w, ok := final[oracle.Key{Symbol: "SYM000USDT", Period: "1m", Open: int64(g[0])}]
		if !ok || g[1] != flt(w.Open) || g[2] != flt(w.High) || g[3] != flt(w.Low) || g[4] != flt(w.Close) || g[5] != flt(w.Volume) {
			t.Errorf("ccxt.pro holds %v; the oracle's final candle is %+v", g, w)
		}
	}
	t.Logf("ccxt.pro: %d updates, %d candles, the closed ones equal to the oracle's", got.Updates, len(got.Candles))
}

// TestFreqtrade: freqtrade's download-data, configured as the README says
// (its binance exchange through ccxt, pointed at klagg, with only_from_ccxt
// so that it never asks Binance's archive), writes a day and more of 1m
// candles that equal the oracle's final ones, every one of them.
func TestFreqtrade(t *testing.T) {
	freqtrade := os.Getenv("KLAGG_TEST_FREQTRADE")
	if freqtrade == "" {
		t.Skip("KLAGG_TEST_FREQTRADE (freqtrade in the test venv; scripts/test.sh installs it) is unset")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	recs := oracle.Market(oracle.MarketSpec{Seed: 31, Symbols: 2, Trades: 20_000, Partitions: 2,
		Start: time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC), StepMs: 8000}) // to 2024-05-02 20:26
	base, cfg, _ := pipeline(t, ctx, recs, 5000)
	want := finalSeries(recs, cfg, "SYM000USDT", "1m")

	dir := t.TempDir()
	ccxtConfig := map[string]any{"urls": map[string]any{"api": map[string]any{"public": base + "/api/v3"}},
		"options": map[string]any{"fetchMarkets": map[string]any{"types": []string{"spot"}}}}
	config, _ := json.Marshal(map[string]any{
		"exchange": map[string]any{"name": "binance", "only_from_ccxt": true,
			"ccxt_config": ccxtConfig, "ccxt_async_config": ccxtConfig, "pair_whitelist": []string{"SYM000/USDT"}},
		"stake_currency": "USDT", "dry_run": true, "trading_mode": "spot", "dataformat_ohlcv": "json",
	})
	if err := os.WriteFile(dir+"/config.json", config, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"create-userdir", "--userdir", dir + "/user"},
		{"download-data", "--config", dir + "/config.json", "--userdir", dir + "/user", "--datadir", dir + "/data",
			"--pairs", "SYM000/USDT", "--timeframes", "1m", "--timerange", "20240501-20240503"},
	} {
		cmd := exec.CommandContext(ctx, freqtrade, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("freqtrade %s: %v\n%s", args[0], err, out)
		}
	}
	data, err := os.ReadFile(dir + "/data/SYM000_USDT-1m.json")
	if err != nil {
		t.Fatal(err)
	}
	var got [][6]float64
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatalf("%v: %.200s", err, data)
	}
	if len(got) != len(want) {
		t.Fatalf("freqtrade wrote %d candles; the oracle has %d final ones", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if int64(g[0]) != w.OpenTime || g[1] != flt(w.Open) || g[2] != flt(w.High) || g[3] != flt(w.Low) || g[4] != flt(w.Close) || g[5] != flt(w.Volume) {
			t.Fatalf("candle %d: freqtrade %v, oracle %+v", i, g, w)
		}
	}
	t.Logf("freqtrade download-data: %d candles, all equal to the oracle's final ones", len(got))
}

// finalSeries is the oracle's final candles of one series, oldest first.
func finalSeries(recs []oracle.Record, cfg processor.Config, symbol, period string) []schema.Kline {
	final, _ := oracle.Expected(recs, cfg.Engine.Periods, cfg.Engine.Grace)
	var out []schema.Kline
	for k, c := range final {
		if k.Symbol == symbol && k.Period == period {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].OpenTime < out[j].OpenTime })
	return out
}

// TestKlinesTimeZone: /api/v3/klines with a timeZone whose candle
// boundaries are not UTC's (1d at +08:00, 4h and 1h at +05:45, 1w at -03:30,
// 1M at +08:00) answers candles combined from finer ones, equal to the
// oracle's over the same trades bucketed in that zone (the trades shifted
// by the offset, the candles shifted back), every field exact. On both
// stores; paged as ccxt pages.
func TestKlinesTimeZone(t *testing.T) {
	for _, store := range []string{"memory", "disk"} {
		t.Run(store, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			recs := oracle.Market(oracle.MarketSpec{Seed: 5, Symbols: 2, Trades: 12_000, Partitions: 2,
				Start: time.Date(2024, 2, 20, 0, 0, 0, 0, time.UTC), StepMs: 500_000, CoarseQty: true})
			dir := ""
			if store == "disk" {
				dir = t.TempDir()
			}
			base, cfg, _, _ := pipelineWith(t, ctx, recs, func(c *serve.Config) { c.Data, c.Keep = dir, 100_000 })
			checked := 0
			for _, tc := range []struct {
				interval, tz string
				off          int64
			}{{"1d", "8", 8 * 3600_000}, {"4h", "+05:45", 345 * 60_000}, {"1h", "+05:45", 345 * 60_000},
				{"1w", "-03:30", -210 * 60_000}, {"1M", "+08:00", 8 * 3600_000}} {
				shifted := make([]oracle.Record, len(recs))
				for i, r := range recs {
					r.Trade.Time += tc.off
					shifted[i] = r
				}
				want, _ := oracle.Expected(shifted, cfg.Engine.Periods, cfg.Engine.Grace)
				var finals []schema.Kline
				for k, v := range want {
					if k.Symbol == "SYM000USDT" && k.Period == tc.interval {
						v.OpenTime -= tc.off
						v.CloseTime -= tc.off
						finals = append(finals, v)
					}
				}
				sort.Slice(finals, func(i, j int) bool { return finals[i].OpenTime < finals[j].OpenTime })
				if len(finals) < 2 {
					t.Fatalf("%s at %s: %d final candles in the oracle", tc.interval, tc.tz, len(finals))
				}
				// Pages of 3 from the first final candle, as ccxt does.
				var got []schema.Kline
				for since := finals[0].OpenTime; len(got) < len(finals); {
					params := url.Values{"symbol": {"SYM000USDT"}, "interval": {tc.interval}, "timeZone": {tc.tz},
						"startTime": {fmt.Sprint(since)}, "limit": {"3"}}
					code, body := get(t, base+"/api/v3/klines?"+params.Encode())
					if code != http.StatusOK {
						t.Fatalf("%s at %s: %d %s", tc.interval, tc.tz, code, body)
					}
					page := binance(t, "SYM000USDT", tc.interval, body)
					if len(page) == 0 {
						break
					}
					got = append(got, page...)
					since = page[len(page)-1].OpenTime + 1
				}
				if len(got) < len(finals) {
					t.Fatalf("%s at %s: %d candles, the oracle has %d final ones", tc.interval, tc.tz, len(got), len(finals))
				}
				for i, w := range finals {
					if !same(got[i], w) {
						t.Fatalf("%s at %s, candle %d:\n got  %+v\n want %+v", tc.interval, tc.tz, i, got[i], w)
					}
				}
				checked += len(finals)
			}
			t.Logf("%d zone candles equal to the oracle's", checked)
		})
	}
}

// TestTickers: /api/v3/ticker/24hr and /ticker/price for a symbol, from
// the 1m candles of the last 24 hours held, equal to the same figures
// computed from the trades themselves.
func TestTickers(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	recs := oracle.Market(oracle.MarketSpec{Seed: 8, Symbols: 2, Trades: 6_000, Partitions: 2,
		Start: time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC), StepMs: 40_000, CoarseQty: true})
	dir := t.TempDir() // the memory window's 1,000 candles would not reach back 24 hours
	base, _, _, _ := pipelineWith(t, ctx, recs, func(c *serve.Config) { c.Data = dir })
	var trades []oracle.Trade
	for _, r := range recs {
		if r.Bad == nil && r.Trade.Symbol == "SYM000USDT" {
			trades = append(trades, r.Trade)
		}
	}
	sort.Slice(trades, func(i, j int) bool {
		a, b := trades[i], trades[j]
		return a.Time < b.Time || a.Time == b.Time && a.AggID < b.AggID
	})
	end := trades[len(trades)-1].Time/60_000*60_000 + 59_999 // the newest 1m candle's close
	from := end + 1 - 24*3600_000
	var want struct {
		open, high, low, last, prev decimal.Fixed
		vol, quote                  *big.Int
		count, first, lastID        int64
	}
	want.vol, want.quote = new(big.Int), new(big.Int)
	for _, tr := range trades {
		if tr.Time < from {
			want.prev = tr.Price
			continue
		}
		if want.open == 0 {
			want.open, want.high, want.low, want.first = tr.Price, tr.Price, tr.Price, tr.First
		}
		want.high, want.low, want.last, want.lastID = max(want.high, tr.Price), min(want.low, tr.Price), tr.Price, tr.Last
		want.vol.Add(want.vol, big.NewInt(int64(tr.Qty)))
		want.quote.Add(want.quote, new(big.Int).Mul(big.NewInt(int64(tr.Price)), big.NewInt(int64(tr.Qty))))
		want.count += tr.Last - tr.First + 1
	}
	e8 := big.NewInt(100_000_000)
	text := func(n *big.Int, scale *big.Int) string { return new(big.Rat).SetFrac(n, scale).FloatString(8) }
	code, body := get(t, base+"/api/v3/ticker/24hr?symbol=SYM000USDT")
	if code != http.StatusOK {
		t.Fatalf("%d %s", code, body)
	}
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	for field, w := range map[string]any{
		"symbol": "SYM000USDT", "openPrice": want.open.String(), "highPrice": want.high.String(), "lowPrice": want.low.String(),
		"lastPrice": want.last.String(), "prevClosePrice": want.prev.String(), "volume": text(want.vol, e8),
		"quoteVolume": text(want.quote, new(big.Int).Mul(e8, e8)), "priceChange": (want.last - want.open).String(),
		"count": float64(want.count), "firstId": float64(trades[sort.Search(len(trades), func(i int) bool { return trades[i].Time >= from })].First),
		"lastId": float64(want.lastID), "openTime": float64(from), "closeTime": float64(end),
		"weightedAvgPrice": new(big.Rat).SetFrac(want.quote, new(big.Int).Mul(want.vol, e8)).FloatString(8),
	} {
		if got[field] != w {
			t.Errorf("24hr %s: %v, want %v", field, got[field], w)
		}
	}
	code, body = get(t, base+"/api/v3/ticker/price?symbol=SYM000USDT")
	if code != http.StatusOK || !strings.Contains(string(body), `"price":"`+want.last.String()+`"`) {
		t.Errorf("price: %d %s, want %s", code, body, want.last)
	}
	code, body = get(t, base+"/api/v3/ticker/24hr?symbol=NOPE")
	if code != http.StatusBadRequest || !strings.Contains(string(body), "-1121") {
		t.Errorf("unknown symbol: %d %s", code, body)
	}
	code, body = get(t, base+`/api/v3/ticker/price?symbols=["SYM000USDT","SYM001USDT"]`)
	var prices []map[string]string
	if code != http.StatusOK || json.Unmarshal(body, &prices) != nil || len(prices) != 2 {
		t.Errorf("two prices: %d %s", code, body)
	}
}

// ccxtTimeZone: ccxt's fetch_ohlcv with Binance's timeZone parameter,
// 4h candles at +05:45 (combined from 15m ones), paged five at a time,
// equal to the oracle's over the trades bucketed in that zone.
func ccxtTimeZone(t *testing.T, ctx context.Context, python, base string, recs []oracle.Record, cfg processor.Config) {
	const off = 345 * 60_000
	shifted := make([]oracle.Record, len(recs))
	for i, r := range recs {
		r.Trade.Time += off
		shifted[i] = r
	}
	all, _ := oracle.Expected(shifted, cfg.Engine.Periods, cfg.Engine.Grace)
	var want []schema.Kline
	for k, v := range all {
		if k.Symbol == "SYM000USDT" && k.Period == "4h" {
			v.OpenTime -= off
			want = append(want, v)
		}
	}
	sort.Slice(want, func(i, j int) bool { return want[i].OpenTime < want[j].OpenTime })
	out, err := exec.CommandContext(ctx, python, "testdata/ccxt_ohlcv.py", base, "SYM000/USDT", "4h",
		strconv.FormatInt(want[0].OpenTime, 10), "5", "+05:45").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("ccxt with timeZone: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	var got struct {
		Pages   int
		Candles [][6]float64
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if got.Pages < 3 || len(got.Candles) < len(want) {
		t.Fatalf("ccxt with timeZone: %d pages, %d candles; the oracle has %d final ones", got.Pages, len(got.Candles), len(want))
	}
	for i, w := range want {
		g := got.Candles[i]
		if int64(g[0]) != w.OpenTime || g[1] != flt(w.Open) || g[2] != flt(w.High) || g[3] != flt(w.Low) || g[4] != flt(w.Close) || g[5] != flt(w.Volume) {
			t.Fatalf("ccxt with timeZone, candle %d: %v, oracle %+v", i, g, w)
		}
	}
	t.Logf("ccxt fetch_ohlcv with timeZone +05:45: %d pages, %d 4h candles equal to the oracle's", got.Pages, len(want))
}
