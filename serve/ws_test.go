package serve_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/internal/oracle"
	"github.com/klagg/klagg/internal/testkit"
	"github.com/klagg/klagg/schema"
	"github.com/klagg/klagg/serve"
)

type wsEvent struct {
	Stream string          `json:"stream"`
	Data   json.RawMessage `json:"data"`
	E      string          `json:"e"`
	Time   int64           `json:"E"` // json matches keys regardless of case: "E" needs its own field
	K      struct {
		Symbol   string `json:"s"`
		Interval string `json:"i"`
		Start    int64  `json:"t"`
		End      int64  `json:"T"`
		Open     string `json:"o"`
		Final    bool   `json:"x"`
		Version  int64  `json:"version"`
	} `json:"k"`
	Result json.RawMessage `json:"result"`
	ID     json.RawMessage `json:"id"`
	Code   *int            `json:"code"`
	Msg    string          `json:"msg"`
}

func dial(t *testing.T, ctx context.Context, u string) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.Dial(ctx, strings.Replace(u, "http://", "ws://", 1), nil)
	if err != nil {
		t.Fatalf("dial %s: %v", u, err)
	}
	c.SetReadLimit(1 << 20)
	t.Cleanup(func() { c.CloseNow() })
	return c
}

func send(t *testing.T, ctx context.Context, c *websocket.Conn, msg string) {
	t.Helper()
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		t.Fatal(err)
	}
}

// next reads messages until one satisfies want, within a deadline.
func next(t *testing.T, ctx context.Context, c *websocket.Conn, what string, want func(wsEvent) bool) wsEvent {
	t.Helper()
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for {
		_, b, err := c.Read(rctx)
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		var e wsEvent
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if e.Stream != "" { // combined: the event is in data
			var inner wsEvent
			if err := json.Unmarshal(e.Data, &inner); err != nil {
				t.Fatal(err)
			}
			inner.Stream = e.Stream
			e = inner
		}
		if want(e) {
			return e
		}
	}
}

// TestWebsocketStreams: Binance's websocket market streams as its clients
// use them: a raw stream (/ws/<stream>), a combined one (/stream?streams=),
// a plain /ws with SUBSCRIBE, LIST_SUBSCRIPTIONS, the combined property,
// Binance's replies and error replies, and its limit on incoming messages.
func TestWebsocketStreams(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	recs := oracle.Market(oracle.MarketSpec{Seed: 13, Symbols: 2, Trades: 4_000, Partitions: 2,
		Start: time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC), StepMs: 500})
	base, _, prod, srv := pipelineWith(t, ctx, recs[:1000], func(*serve.Config) {})

	raw := dial(t, ctx, base+"/ws/sym000usdt@kline_1m")
	comb := dial(t, ctx, base+"/stream?streams=sym000usdt@kline_1m/sym001usdt@kline_1m")
	plain := dial(t, ctx, base+"/ws/0") // as ccxt.pro connects
	reply := func(msg string) wsEvent {
		t.Helper()
		send(t, ctx, plain, msg)
		return next(t, ctx, plain, "a reply to "+msg, func(e wsEvent) bool { return e.E == "" })
	}
	for _, tc := range []struct{ msg, want string }{
		{`{"method":"SUBSCRIBE","params":["sym000usdt@kline_1m","sym001usdt@kline_5m@+08:00"],"id":1}`, `result=null id=1`},
		{`{"method":"LIST_SUBSCRIPTIONS","id":2}`, `result=["sym000usdt@kline_1m","sym001usdt@kline_5m@+08:00"] id=2`},
		{`{"method":"GET_PROPERTY","params":["combined"],"id":"a"}`, `result=false id="a"`},
		// 1d at +08:00 opens at 16:00 UTC: combined from 8h candles.
		{`{"method":"SUBSCRIBE","params":["sym000usdt@kline_1d@+08:00"],"id":3}`, `result=null id=3`},
		{`{"method":"SUBSCRIBE","params":["SYM000USDT@kline_1m"],"id":4}`, `code=2 id=4 lower case`},
	} {
		time.Sleep(220 * time.Millisecond) // within Binance's five messages a second
		e := reply(tc.msg)
		got := fmt.Sprintf("result=%s id=%s", e.Result, e.ID)
		if e.Code != nil {
			got = fmt.Sprintf("code=%d id=%s %s", *e.Code, e.ID, e.Msg)
		}
		if want := strings.Fields(tc.want); !strings.HasPrefix(got, want[0]+" "+want[1]) || !strings.Contains(got, strings.Join(want[2:], " ")) {
			t.Errorf("%s:\n got %s\nwant %s", tc.msg, got, tc.want)
		}
	}
	for _, tc := range []struct{ msg, want string }{
		{`not json`, `code=3 Invalid JSON`},
		{`{"method":"SUBSCRIB","params":[],"id":5}`, "code=2 Invalid request: unknown variant `SUBSCRIB`"},
		{`{"params":[],"id":6}`, "code=2 Invalid request: missing field `method`"},
		{`{"method":"SET_PROPERTY","params":["combined","yes"],"id":7}`, `code=1 Invalid value type: expected Boolean`},
		{`{"method":"GET_PROPERTY","params":["colour"],"id":8}`, `code=0 Unknown property`},
	} {
		time.Sleep(220 * time.Millisecond)
		e := reply(tc.msg)
		if e.Code == nil || !strings.HasPrefix(fmt.Sprintf("code=%d %s", *e.Code, e.Msg), tc.want) {
			t.Errorf("%s: got code %v %q; want %s", tc.msg, e.Code, e.Msg, tc.want)
		}
	}
	time.Sleep(220 * time.Millisecond)
	if e := reply(`{"method":"SET_PROPERTY","params":["combined",true],"id":9}`); e.Code != nil || string(e.ID) != "9" {
		t.Fatalf("SET_PROPERTY combined: %+v", e)
	}
	testkit.WaitFor(t, 10*time.Second, "three stream clients", func() bool { return srv.Streams() == 3 })

	if err := oracle.Produce(ctx, prod, "trades", recs[1000:]); err != nil {
		t.Fatal(err)
	}
	isKline := func(sym, interval string) func(wsEvent) bool {
		return func(e wsEvent) bool { return e.E == "kline" && e.K.Symbol == sym && e.K.Interval == interval }
	}
	if e := next(t, ctx, raw, "a raw event", isKline("SYM000USDT", "1m")); e.Stream != "" || e.K.End != e.K.Start+59_999 || e.K.Open == "" {
		t.Errorf("raw event %+v", e)
	}
	if e := next(t, ctx, comb, "a combined event", isKline("SYM001USDT", "1m")); e.Stream != "sym001usdt@kline_1m" {
		t.Errorf("combined event on stream %q", e.Stream)
	}
	if e := next(t, ctx, plain, "a subscribed event", isKline("SYM001USDT", "5m")); e.Stream != "sym001usdt@kline_5m@+08:00" {
		t.Errorf("after SET_PROPERTY combined: stream %q", e.Stream)
	}
	zoneDay := time.Date(2024, 4, 30, 16, 0, 0, 0, time.UTC).UnixMilli() // 2024-05-01 00:00 at +08:00
	if e := next(t, ctx, plain, "a 1d event at +08:00", isKline("SYM000USDT", "1d")); e.Stream != "sym000usdt@kline_1d@+08:00" ||
		e.K.Start != zoneDay || e.K.End != zoneDay+86_400_000-1 || e.K.Open == "" {
		t.Errorf("zone stream event %+v", e)
	}

	// A sixth message within a second: Binance disconnects.
	flood := dial(t, ctx, base+"/ws")
	for i := range 6 {
		send(t, ctx, flood, fmt.Sprintf(`{"method":"LIST_SUBSCRIPTIONS","id":%d}`, i))
	}
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	var err error
	for err == nil {
		_, _, err = flood.Read(rctx)
	}
	if websocket.CloseStatus(err) != websocket.StatusPolicyViolation || !strings.Contains(err.Error(), "too many messages") {
		t.Errorf("after six messages in a second: %v", err)
	}
}

// TestWebsocketSlowClient: a client that cannot keep up is cut off with
// a reason, and the server forgets it.
func TestWebsocketSlowClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	recs := oracle.Market(oracle.MarketSpec{Seed: 17, Symbols: 3, Trades: 6_000, Partitions: 2,
		Start: time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC), StepMs: 2000})
	base, _, prod, srv := pipelineWith(t, ctx, recs[:500], func(c *serve.Config) { c.StreamBuffer = 1 })
	var streams []string
	for i := range 3 {
		for _, p := range []string{"1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h"} {
			streams = append(streams, fmt.Sprintf("sym%03dusdt@kline_%s", i, p))
		}
	}
	c := dial(t, ctx, base+"/stream?streams="+strings.Join(streams, "/"))
	testkit.WaitFor(t, 10*time.Second, "the client to subscribe", func() bool { return srv.Streams() == 1 })
	if err := oracle.Produce(ctx, prod, "trades", recs[500:]); err != nil {
		t.Fatal(err)
	}
	// Each flush sends some 24 updates at once: a buffer of one overflows.
	testkit.WaitFor(t, time.Minute, "the slow client to be cut off", func() bool { return srv.Streams() == 0 })
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	var err error
	for err == nil {
		_, _, err = c.Read(rctx)
	}
	if websocket.CloseStatus(err) != websocket.StatusPolicyViolation || !strings.Contains(err.Error(), "too slow") {
		t.Errorf("the slow client saw %v", err)
	}
}

// TestWebsocketFanOut: 1,000 clients on one stream each get every update
// of it, in order: exactly the records the klines topic holds for it since
// they subscribed.
func TestWebsocketFanOut(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 connections")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	recs := oracle.Market(oracle.MarketSpec{Seed: 23, Symbols: 2, Trades: 4_000, Partitions: 2,
		Start: time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC), StepMs: 1000})
	base, cfg, prod, srv := pipelineWith(t, ctx, recs[:500], func(*serve.Config) {})
	ends, err := kadm.NewClient(prod).ListEndOffsets(ctx, cfg.KlinesTopic)
	if err != nil {
		t.Fatal(err)
	}
	const clients = 1000
	got := make([][]string, clients)
	var wg sync.WaitGroup
	conns := make([]*websocket.Conn, clients)
	for i := range conns {
		conns[i] = dial(t, ctx, base+"/ws/sym000usdt@kline_1m")
	}
	testkit.WaitFor(t, 30*time.Second, "1,000 stream clients", func() bool { return srv.Streams() == clients })
	var mu sync.Mutex // guards got
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				// The test's context: coder/websocket drops a connection
				// whose Read context expires.
				_, b, err := c.Read(ctx)
				if err != nil {
					return // closed by the test below
				}
				var e wsEvent
				_ = json.Unmarshal(b, &e)
				mu.Lock()
				got[i] = append(got[i], fmt.Sprintf("%d/%d", e.K.Start, e.K.Version))
				mu.Unlock()
			}
		}()
	}
	if err := oracle.Produce(ctx, prod, "trades", recs[500:]); err != nil {
		t.Fatal(err)
	}
	// The pipeline's flushes, then silence: every client has read all.
	counts := func() string {
		mu.Lock()
		defer mu.Unlock()
		n := map[int]int{}
		for i := range got {
			n[len(got[i])]++
		}
		return fmt.Sprint(n)
	}
	prev := ""
	for stable := 0; stable < 4; {
		time.Sleep(time.Second)
		if c := counts(); c == prev && !strings.Contains(c, "map[0:") {
			stable++
		} else {
			prev, stable = c, 0
		}
		if ctx.Err() != nil {
			t.Fatalf("updates never settled: %s", prev)
		}
	}
	for _, c := range conns {
		c.CloseNow()
	}
	wg.Wait()
	// What the topic holds for the series since the clients subscribed.
	var want []string
	err = oracle.ReadTopic(ctx, cfg.Brokers, cfg.KlinesTopic, func(r *kgo.Record) {
		if e, ok := ends.Lookup(cfg.KlinesTopic, r.Partition); ok && r.Offset < e.Offset {
			return
		}
		var k schema.Kline
		if schema.DecodeKline(r.Value, &k) == nil && k.Symbol == "SYM000USDT" && k.Period == "1m" {
			want = append(want, fmt.Sprintf("%d/%d", k.OpenTime, k.Version))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(want) < 10 || fmt.Sprint(got[0]) != fmt.Sprint(want) {
		t.Fatalf("client 0 got %d updates, the topic holds %d for the series; first difference near %v", len(got[0]), len(want), firstDiff(got[0], want))
	}
	last := map[string]int64{}
	for _, ev := range got[0] {
		var start, version int64
		if _, err := fmt.Sscanf(ev, "%d/%d", &start, &version); err != nil {
			t.Fatalf("client 0: %s", ev)
		}
		if v, ok := last[fmt.Sprint(start)]; ok && version <= v {
			t.Fatalf("client 0: candle %d version %d after %d", start, version, v)
		}
		last[fmt.Sprint(start)] = version
	}
	for i := 1; i < clients; i++ {
		if fmt.Sprint(got[i]) != fmt.Sprint(got[0]) {
			t.Fatalf("client %d got %d updates, client 0 %d; first difference near %v", i, len(got[i]), len(got[0]), firstDiff(got[i], got[0]))
		}
	}
	t.Logf("%d clients each got the same %d updates, in order", clients, len(got[0]))
}

func firstDiff(a, b []string) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return fmt.Sprintf("#%d: %s vs %s", i, a[i], b[i])
		}
	}
	return "the end of the shorter"
}
