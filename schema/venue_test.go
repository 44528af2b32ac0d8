package schema_test

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/klagg/klagg/schema"
)

func ms(s string) int64 {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t.UnixMilli()
}

// want is a decoded trade in the terms a reader checks.
type want struct {
	sym             string
	id, first, last int64
	price, qty      string
	time            int64
	buyerMaker      bool
}

func got(t *schema.Trade) want {
	return want{string(t.Symbol), t.AggID, t.FirstID, t.LastID, t.Price.String(), t.Quantity.String(), t.Time, t.BuyerMaker}
}

func mustFormat(t *testing.T, name string) schema.InputFormat {
	t.Helper()
	f, err := schema.ParseInputFormat(name)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestVenueSamples decodes a message of each venue, written from its
// documentation (testdata/venues), with its batches, both sides, numbers
// as strings and as JSON numbers, and times finer than a millisecond.
func TestVenueSamples(t *testing.T) {
	p := func(s string) string { return fx(s).String() }
	tests := []struct {
		format string
		want   []want
	}{
		{"coinbase", []want{
			{"BTC-USD", 631, 631, 631, p("62010.55"), p("0.00031"), ms("2024-03-04T10:15:01.987Z"), false},
			{"BTC-USD", 632, 632, 632, p("62010.5"), p("1.2"), ms("2024-03-04T10:15:02Z"), true},
			{"ETH-USD", 88, 88, 88, p("3400"), p("2"), ms("2024-03-04T10:15:02Z"), true},
		}},
		{"kraken", []want{
			{"ETH/USD", 90017, 90017, 90017, p("3401.17"), p("0.25"), ms("2024-03-04T10:15:02Z"), true},
			{"ETH/USD", 90018, 90018, 90018, p("3401.18"), p("4"), ms("2024-03-04T10:15:02.001Z"), false},
		}},
		{"okx", []want{
			{"BTC-USDT", 450112, 450110, 450112, p("62000.1"), p("0.5"), 1709547302123, false},
			{"BTC-USDT", 450113, 450113, 450113, p("61999.9"), p("0.01"), 1709547302124, true},
		}},
		{"bybit", []want{
			{"BTCUSDT", 51234567 << 11, 51234567, 51234567, p("62001"), p("0.002"), 1709547302125, false},
			{"BTCUSDT", 51234567<<11 | 1, 51234567, 51234567, p("62001.5"), p("0.01"), 1709547302125, false},
			{"BTCUSDT", 51234570 << 11, 51234570, 51234570, p("62000"), p("1"), 1709547302128, true},
		}},
	}
	now := ms("2024-03-04T10:16:00Z")
	for _, tt := range tests {
		t.Run(tt.format, func(t *testing.T) {
			msg, err := os.ReadFile("testdata/venues/" + tt.format + ".json")
			if err != nil {
				t.Fatal(err)
			}
			d := schema.TradeDecoder{Format: mustFormat(t, tt.format), Validate: schema.ValidateConfig{MaxSkew: time.Second}}
			var b schema.Batch
			if err := d.DecodeBatch(nil, msg, now, &b); err != nil {
				t.Fatal(err)
			}
			if len(b.Trades) != len(tt.want) {
				t.Fatalf("%d trades, want %d", len(b.Trades), len(tt.want))
			}
			for i := range b.Trades {
				if b.Errs[i] != nil {
					t.Errorf("trade %d refused: %v", i, b.Errs[i])
				}
				if g := got(&b.Trades[i]); g != tt.want[i] {
					t.Errorf("trade %d:\n got %+v\nwant %+v", i, g, tt.want[i])
				}
			}
		})
	}
}

// TestVenueRefusals: what each venue's stream may also carry, and what
// broken messages become.
func TestVenueRefusals(t *testing.T) {
	tests := []struct {
		name, format, msg string
		record            schema.Reason   // the whole record's reason
		trades            []schema.Reason // else each trade's
	}{
		{"coinbase heartbeats", "coinbase", `{"channel":"heartbeats","client_id":"","timestamp":"2024-03-04T10:15:02Z","sequence_num":1,"events":[{"current_time":"x","heartbeat_counter":3}]}`, schema.ReasonWrongEvent, nil},
		{"coinbase subscriptions", "coinbase", `{"channel":"subscriptions","events":[{"subscriptions":{"market_trades":["BTC-USD"]}}]}`, schema.ReasonWrongEvent, nil},
		{"coinbase empty snapshot", "coinbase", `{"channel":"market_trades","events":[{"type":"snapshot","trades":[]}]}`, 0, []schema.Reason{}},
		{"kraken heartbeat", "kraken", `{"channel":"heartbeat"}`, schema.ReasonWrongEvent, nil},
		{"kraken status", "kraken", `{"channel":"status","type":"update","data":[{"api_version":"v2","system":"online"}]}`, schema.ReasonWrongEvent, nil},
		{"kraken bad side", "kraken", `{"channel":"trade","type":"update","data":[{"symbol":"ETH/USD","side":"short","price":1,"qty":1,"trade_id":1,"timestamp":"2024-03-04T10:15:02Z"},{"symbol":"ETH/USD","side":"buy","price":1,"qty":1,"trade_id":2,"timestamp":"2024-03-04T10:15:02Z"}]}`, 0, []schema.Reason{schema.ReasonInvalidSide, 0}},
		{"kraken price null", "kraken", `{"channel":"trade","data":[{"symbol":"ETH/USD","side":"sell","price":null,"qty":1,"trade_id":1,"timestamp":"2024-03-04T10:15:02Z"}]}`, 0, []schema.Reason{schema.ReasonInvalidPrice}},
		{"okx subscribe ack", "okx", `{"event":"subscribe","arg":{"channel":"trades","instId":"BTC-USDT"},"connId":"a4d3ae55"}`, 0, []schema.Reason{}},
		{"okx books", "okx", `{"arg":{"channel":"books5","instId":"BTC-USDT"},"data":[{"asks":[],"bids":[],"ts":"1"}]}`, schema.ReasonWrongEvent, nil},
		{"okx missing sz", "okx", `{"arg":{"channel":"trades"},"data":[{"instId":"BTC-USDT","tradeId":"1","px":"1","side":"buy","ts":"1709547302123"}]}`, 0, []schema.Reason{schema.ReasonMissingField}},
		{"okx bad time", "okx", `{"arg":{"channel":"trades"},"data":[{"instId":"BTC-USDT","tradeId":"1","px":"1","sz":"1","side":"buy","ts":"soon"}]}`, 0, []schema.Reason{schema.ReasonMalformed}},
		{"okx too precise", "okx", `{"arg":{"channel":"trades"},"data":[{"instId":"BTC-USDT","tradeId":"1","px":"1.000000001","sz":"1","side":"buy","ts":"1709547302123"}]}`, 0, []schema.Reason{schema.ReasonExcessPrecision}},
		{"bybit orderbook", "bybit", `{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1,"data":{"s":"BTCUSDT","b":[],"a":[],"u":1,"seq":2}}`, schema.ReasonWrongEvent, nil},
		{"bybit no seq", "bybit", `{"topic":"publicTrade.BTCUSDT","data":[{"T":1709547302125,"s":"BTCUSDT","S":"Buy","v":"1","p":"1","i":"x"}]}`, 0, []schema.Reason{schema.ReasonMissingField}},
		{"bybit uuid seq", "bybit", `{"topic":"publicTrade.BTCUSDT","data":[{"T":1709547302125,"s":"BTCUSDT","S":"Buy","v":"1","p":"1","seq":"4a1e"}]}`, 0, []schema.Reason{schema.ReasonInvalidTradeIDs}},
		{"truncated", "bybit", `{"topic":"publicTrade.BTCUSDT","data":[{"T":1709547302125`, schema.ReasonMalformed, nil},
		{"not json", "coinbase", `market_trades`, schema.ReasonMalformed, nil},
		{"trades not an array", "kraken", `{"channel":"trade","data":{"symbol":"ETH/USD"}}`, schema.ReasonMalformed, nil},
	}
	now := ms("2024-03-04T10:16:00Z")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := schema.TradeDecoder{Format: mustFormat(t, tt.format), Validate: schema.ValidateConfig{MaxSkew: time.Second}}
			var b schema.Batch
			err := d.DecodeBatch(nil, []byte(tt.msg), now, &b)
			if r := schema.ReasonOf(err); r != tt.record {
				t.Fatalf("record reason %v (%v), want %v", r, err, tt.record)
			}
			if err != nil {
				return
			}
			var rs []schema.Reason
			for _, e := range b.Errs {
				rs = append(rs, schema.ReasonOf(e))
			}
			if len(rs) != len(tt.trades) || !equalReasons(rs, tt.trades) {
				t.Fatalf("trade reasons %v (%v), want %v", rs, b.Errs, tt.trades)
			}
		})
	}
}

func equalReasons(a, b []schema.Reason) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestJSONMapping reads a platform's own record: nested paths, the symbol
// in the envelope, times in microseconds, a boolean side meaning buyer
// maker, no ordered id, a symbol prefix.
func TestJSONMapping(t *testing.T) {
	m := schema.JSONMapping{
		Trades: "payload.fills[]", Symbol: "$.meta.instrument", Price: "px.value", Quantity: "qty",
		Time: "at", TimeUnit: "us", Side: "aggressor_sells", TakerBuy: []string{"false"}, TakerSell: []string{"true"},
		Match: map[string][]string{"meta.kind": {"fills"}},
	}
	cm, err := m.Compile()
	if err != nil {
		t.Fatal(err)
	}
	d := schema.TradeDecoder{Format: schema.InputJSON, Mapping: cm, SymbolPrefix: []byte("acme:"),
		Validate: schema.ValidateConfig{MaxSkew: time.Second}}
	msg := `{"meta":{"kind":"fills","instrument":"BTC-EUR"},"payload":{"fills":[` +
		`{"px":{"value":"57000.25","ccy":"EUR"},"qty":0.5,"at":1709547302123999,"aggressor_sells":false},` +
		`{"px":{"value":57000},"qty":"1","at":"1709547302124000","aggressor_sells":true}]}}`
	var b schema.Batch
	if err := d.DecodeBatch(nil, []byte(msg), ms("2024-03-04T10:16:00Z"), &b); err != nil {
		t.Fatal(err)
	}
	wants := []want{
		{"acme:BTC-EUR", 0, 0, 0, fx("57000.25").String(), fx("0.5").String(), 1709547302123, false},
		{"acme:BTC-EUR", 0, 0, 0, fx("57000").String(), fx("1").String(), 1709547302124, true},
	}
	if len(b.Trades) != 2 {
		t.Fatalf("%d trades", len(b.Trades))
	}
	for i := range wants {
		if b.Errs[i] != nil || got(&b.Trades[i]) != wants[i] || !b.Trades[i].Unordered {
			t.Errorf("trade %d: %+v (%v, unordered %v), want %+v", i, got(&b.Trades[i]), b.Errs[i], b.Trades[i].Unordered, wants[i])
		}
	}
	if err := d.DecodeBatch(nil, []byte(`{"meta":{"kind":"fills"},"payload":{"fills":[{"px":{"value":"1"},"qty":1,"at":1709547302123999,"aggressor_sells":true}]}}`), ms("2024-03-04T10:16:00Z"), &b); err != nil {
		t.Fatal(err)
	}
	if r := schema.ReasonOf(b.Errs[0]); r != schema.ReasonMissingField {
		t.Errorf("without the envelope's symbol: %v, want missing_field", b.Errs[0])
	}
}

// TestMappingValidate reports every problem at once.
func TestMappingValidate(t *testing.T) {
	m := schema.JSONMapping{Trades: "data[].", Price: "p", Quantity: "p", TimeUnit: "hours", Side: "s", FirstID: "f", SharedIDs: true}
	err := m.Validate()
	if !errors.Is(err, schema.ErrMapping) {
		t.Fatalf("%v does not wrap ErrMapping", err)
	}
	for _, s := range []string{"trades", "time_unit", "symbol: a path is required", "time: a path is required",
		`quantity "p": the path is already used`, "first_id and last_id", "shared_ids", "taker_buy"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%q lacks %q", err, s)
		}
	}
	for f := range 7 {
		if vm, ok := schema.VenueMapping(schema.InputFormat(f)); ok {
			if err := vm.Validate(); err != nil {
				t.Errorf("%v: %v", schema.InputFormat(f), err)
			}
		}
	}
}

// TestRFC3339 holds the hand-written parser against time.Parse.
func TestRFC3339(t *testing.T) {
	m := schema.JSONMapping{Symbol: "s", Price: "p", Quantity: "q", Time: "t", TimeUnit: "rfc3339"}
	cm, err := m.Compile()
	if err != nil {
		t.Fatal(err)
	}
	d := schema.TradeDecoder{Format: schema.InputJSON, Mapping: cm}
	for _, s := range []string{"2024-02-29T23:59:59.9999Z", "2010-01-01T00:00:00Z", "2099-12-31T23:59:59.123456789-11:30",
		"2024-03-04T10:15:02+01:00", "2024-03-04t10:15:02.5z", "2024-03-04 10:15:02.05Z", "2024-02-30T00:00:00Z",
		"2024-03-04T24:00:00Z", "2024-03-04T10:15:02", "2024-03-04T10:15:02.Z", "2024-3-04T10:15:02Z", "2024-03-04T10:15:02.1234567890Z"} {
		var tr schema.Trade
		err := d.Decode(nil, []byte(`{"s":"X","p":"1","q":"1","t":"`+s+`"}`), ms("2101-01-01T00:00:00Z"), &tr)
		ref, rerr := time.Parse(time.RFC3339Nano, strings.Replace(strings.ToUpper(s), " ", "T", 1))
		switch {
		case rerr != nil && err == nil:
			t.Errorf("%s: accepted as %d; time.Parse: %v", s, tr.Time, rerr)
		case rerr == nil && err != nil:
			t.Errorf("%s: %v; time.Parse: %v", s, err, ref)
		case rerr == nil && tr.Time != ref.UnixMilli():
			t.Errorf("%s: %d, want %d", s, tr.Time, ref.UnixMilli())
		}
	}
}

// TestAppendVenueJSON: what gen writes for a venue decodes to the trades
// it wrote.
func TestAppendVenueJSON(t *testing.T) {
	ts := []schema.Trade{
		{Symbol: []byte("BTC-USD"), AggID: 7, FirstID: 5, LastID: 7, Price: fx("62000.5"), Quantity: fx("0.001"), Time: 1709547302123, BuyerMaker: true},
		{Symbol: []byte("BTC-USD"), AggID: 8, FirstID: 8, LastID: 8, Price: fx("62001"), Quantity: fx("3"), Time: 1709547302124},
	}
	for _, name := range []string{"coinbase", "kraken", "okx", "bybit"} {
		f := mustFormat(t, name)
		msg := schema.AppendVenueJSON(nil, f, ts)
		if !json.Valid(msg) {
			t.Fatalf("%s: invalid JSON %s", name, msg)
		}
		d := schema.TradeDecoder{Format: f, Validate: schema.ValidateConfig{MaxSkew: time.Hour}}
		var b schema.Batch
		if err := d.DecodeBatch(nil, msg, 1709547302124, &b); err != nil || len(b.Trades) != 2 {
			t.Fatalf("%s: %v, %d trades: %s", name, err, len(b.Trades), msg)
		}
		for i := range ts {
			g, w := b.Trades[i], ts[i]
			if b.Errs[i] != nil || string(g.Symbol) != string(w.Symbol) || g.Price != w.Price || g.Quantity != w.Quantity ||
				g.Time != w.Time || g.BuyerMaker != w.BuyerMaker {
				t.Errorf("%s trade %d: %+v (%v), want %+v", name, i, g, b.Errs[i], w)
			}
			if name == "okx" && (g.FirstID != w.FirstID || g.LastID != w.LastID) {
				t.Errorf("okx trade %d ids %d..%d, want %d..%d", i, g.FirstID, g.LastID, w.FirstID, w.LastID)
			}
		}
	}
}

// TestDecodeBatchAllocs: decoding a venue's batch into a reused Batch
// allocates nothing.
func TestDecodeBatchAllocs(t *testing.T) {
	for _, name := range []string{"coinbase", "kraken", "okx", "bybit"} {
		msg, err := os.ReadFile("testdata/venues/" + name + ".json")
		if err != nil {
			t.Fatal(err)
		}
		d := schema.TradeDecoder{Format: mustFormat(t, name), SymbolPrefix: []byte("v:"), Validate: schema.ValidateConfig{MaxSkew: time.Hour}}
		var b schema.Batch
		n := testing.AllocsPerRun(100, func() {
			if err := d.DecodeBatch(nil, msg, 1709547302124, &b); err != nil {
				t.Fatal(err)
			}
		})
		if n != 0 {
			t.Errorf("%s: %v allocations per message", name, n)
		}
	}
}

// TestBinanceFutures: USDⓈ-M futures' aggTrade (no "M", an "nq") and raw
// trade (an "X" order type) events read as spot's do.
func TestBinanceFutures(t *testing.T) {
	d := schema.TradeDecoder{Format: schema.InputBinanceJSON, Validate: schema.ValidateConfig{MaxSkew: time.Hour}}
	for _, tt := range []struct {
		msg  string
		want want
	}{
		{`{"e":"aggTrade","E":1709547302130,"a":26129,"s":"BTCUSDT","p":"62001.10","q":"0.250","nq":"0.250","f":100,"l":105,"T":1709547302125,"m":true}`,
			want{"BTCUSDT", 26129, 100, 105, fx("62001.1").String(), fx("0.25").String(), 1709547302125, true}},
		{`{"e":"trade","E":1709547302130,"T":1709547302125,"s":"ETHUSDT","t":5522,"p":"3401.2","q":"1.5","X":"MARKET","m":false}`,
			want{"ETHUSDT", 5522, 5522, 5522, fx("3401.2").String(), fx("1.5").String(), 1709547302125, false}},
	} {
		var tr schema.Trade
		if err := d.Decode(nil, []byte(tt.msg), 1709547302200, &tr); err != nil || got(&tr) != tt.want {
			t.Errorf("%s: %+v (%v), want %+v", tt.msg, got(&tr), err, tt.want)
		}
	}
}
