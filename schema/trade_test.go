package schema_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/hamba/avro/v2"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/schema"
)

const now = int64(1_700_000_000_000) // 2023-11-14

const goodJSON = `{"e":"aggTrade","E":1699999999999,"s":"BTCUSDT","a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1699999999998,"m":true,"M":true}`

func TestDecodeBinanceJSON(t *testing.T) {
	want := schema.Trade{Symbol: []byte("BTCUSDT"), AggID: 26129, Price: fx("0.01633102"), Quantity: fx("4.70443515"),
		FirstID: 27781, LastID: 27781, Time: 1699999999998, BuyerMaker: true, EventTime: 1699999999999}
	raw := want
	raw.FirstID, raw.LastID = 26129, 26129
	tests := []struct {
		name  string
		value string
		key   string
		want  schema.Trade
	}{
		{"plain event", goodJSON, "", want},
		{"combined stream", `{"stream":"btcusdt@aggTrade","data":` + goodJSON + `}`, "", want},
		{"data before stream", `{"data":` + goodJSON + `,"stream":"btcusdt@aggTrade"}`, "", want},
		{"symbol from key", strings.Replace(goodJSON, `"s":"BTCUSDT",`, "", 1), "BTCUSDT", want},
		{"s wins over key", goodJSON, "OTHER", want},
		{"numbers not strings", strings.NewReplacer(`"p":"0.01633102"`, `"p":0.01633102`, `"q":"4.70443515"`, `"q":4.70443515`).Replace(goodJSON), "", want},
		{"whitespace and unknown fields", " {\n\t\"x\": [1, {\"y\": null}, \"z\\\"\"], " + goodJSON[1:] + " \n", "", want},
		{"no e and no E", `{"s":"BTCUSDT","a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1699999999998,"m":true}`, "",
			func() schema.Trade { w := want; w.EventTime = 0; return w }()},
		// Binance's raw trade stream (<symbol>@trade): one trade, id "t".
		{"raw trade", `{"e":"trade","E":1699999999999,"s":"BTCUSDT","t":26129,"p":"0.01633102","q":"4.70443515","T":1699999999998,"m":true,"M":true}`, "", raw},
		// Older raw events also carried the buyer's and seller's order ids.
		{"raw trade with order ids", `{"e":"trade","E":1699999999999,"s":"BTCUSDT","t":26129,"p":"0.01633102","q":"4.70443515","b":88,"a":50,"T":1699999999998,"m":true,"M":true}`, "", raw},
		{"raw trade, no e", `{"stream":"btcusdt@trade","data":{"E":1699999999999,"s":"BTCUSDT","t":26129,"p":"0.01633102","q":"4.70443515","T":1699999999998,"m":true}}`, "", raw},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got schema.Trade
			if err := schema.DecodeBinanceJSON([]byte(tt.value), []byte(tt.key), &got); err != nil {
				t.Fatal(err)
			}
			if !equalTrade(got, tt.want) {
				t.Fatalf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func equalTrade(a, b schema.Trade) bool {
	return string(a.Symbol) == string(b.Symbol) && a.AggID == b.AggID && a.Price == b.Price &&
		a.Quantity == b.Quantity && a.FirstID == b.FirstID && a.LastID == b.LastID &&
		a.Time == b.Time && a.BuyerMaker == b.BuyerMaker && a.EventTime == b.EventTime
}

// TestBadInput covers every refusal class (README, "Bad input") that the schema
// package decides (duplicate and late are the engine's), in both formats.
func TestBadInput(t *testing.T) {
	r := strings.NewReplacer
	tests := []struct {
		name   string
		value  string
		key    string
		reason schema.Reason
		field  string
	}{
		{"not json", `not json`, "", schema.ReasonMalformed, ""},
		{"truncated", goodJSON[:40], "", schema.ReasonMalformed, ""},
		{"trailing garbage", goodJSON + "x", "", schema.ReasonMalformed, ""},
		{"two objects", goodJSON + goodJSON, "", schema.ReasonMalformed, ""},
		{"array", `[` + goodJSON + `]`, "", schema.ReasonMalformed, ""},
		{"bad nesting in skipped value", r(`"M":true`, `"M":[1,2}`).Replace(goodJSON), "", schema.ReasonMalformed, ""},
		{"control char in string", r(`"e":"aggTrade"`, "\"x\":\"a\x01b\",\"e\":\"aggTrade\"").Replace(goodJSON), "", schema.ReasonMalformed, ""},
		{"too deep", `{"x":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `,` + goodJSON[1:], "", schema.ReasonMalformed, ""},
		{"id as float", r(`"a":26129`, `"a":26129.5`).Replace(goodJSON), "", schema.ReasonMalformed, "a"},
		{"id overflow", r(`"a":26129`, `"a":99999999999999999999`).Replace(goodJSON), "", schema.ReasonMalformed, "a"},
		{"time as string", r(`"T":1699999999998`, `"T":"1699999999998"`).Replace(goodJSON), "", schema.ReasonMalformed, "T"},
		{"m not bool", r(`"m":true`, `"m":1`).Replace(goodJSON), "", schema.ReasonMalformed, "m"},
		{"missing a", r(`"a":26129,`, ``).Replace(goodJSON), "", schema.ReasonMissingField, "a"},
		{"missing p", r(`"p":"0.01633102",`, ``).Replace(goodJSON), "", schema.ReasonMissingField, "p"},
		{"missing T", r(`"T":1699999999998,`, ``).Replace(goodJSON), "", schema.ReasonMissingField, "T"},
		{"missing m", r(`,"m":true`, ``).Replace(goodJSON), "", schema.ReasonMissingField, "m"},
		{"missing symbol and key", r(`"s":"BTCUSDT",`, ``).Replace(goodJSON), "", schema.ReasonMissingField, "s"},
		{"empty object", `{}`, "K", schema.ReasonMissingField, "a"},
		{"wrong event", r(`"aggTrade"`, `"kline"`).Replace(goodJSON), "", schema.ReasonWrongEvent, "e"},
		{"raw trade without its id", r(`"aggTrade"`, `"trade"`).Replace(goodJSON), "", schema.ReasonMissingField, "t"},
		{"empty symbol", r(`"BTCUSDT"`, `""`).Replace(goodJSON), "", schema.ReasonInvalidSymbol, "symbol"},
		{"symbol with space", r(`"BTCUSDT"`, `"BTC USDT"`).Replace(goodJSON), "", schema.ReasonInvalidSymbol, "symbol"},
		{"symbol with escape", r(`"BTCUSDT"`, `"BTC\u0041"`).Replace(goodJSON), "", schema.ReasonInvalidSymbol, "s"},
		{"symbol non-ascii", r(`"BTCUSDT"`, `"BTC€"`).Replace(goodJSON), "", schema.ReasonInvalidSymbol, "symbol"},
		{"oversized symbol", r(`"BTCUSDT"`, `"`+strings.Repeat("X", 33)+`"`).Replace(goodJSON), "", schema.ReasonSymbolTooLong, "symbol"},
		{"price NaN", r(`"0.01633102"`, `"NaN"`).Replace(goodJSON), "", schema.ReasonInvalidPrice, "p"},
		{"price Inf", r(`"0.01633102"`, `"Infinity"`).Replace(goodJSON), "", schema.ReasonInvalidPrice, "p"},
		{"price overflow", r(`"0.01633102"`, `"1e999"`).Replace(goodJSON), "", schema.ReasonOutOfRange, "p"},
		{"price past the Fixed range", r(`"0.01633102"`, `"92233720368.54775808"`).Replace(goodJSON), "", schema.ReasonOutOfRange, "p"},
		{"price with nine decimals", r(`"0.01633102"`, `"0.016331025"`).Replace(goodJSON), "", schema.ReasonExcessPrecision, "p"},
		{"quantity with nine decimals", r(`"4.70443515"`, `4.704435151`).Replace(goodJSON), "", schema.ReasonExcessPrecision, "q"},
		{"quantity tiny exponent", r(`"4.70443515"`, `"1e-9"`).Replace(goodJSON), "", schema.ReasonExcessPrecision, "q"},
		{"price hex", r(`"0.01633102"`, `"0x1p-2"`).Replace(goodJSON), "", schema.ReasonInvalidPrice, "p"},
		{"price zero", r(`"0.01633102"`, `"0.00000000"`).Replace(goodJSON), "", schema.ReasonInvalidPrice, "price"},
		{"price negative", r(`"0.01633102"`, `"-1.5"`).Replace(goodJSON), "", schema.ReasonInvalidPrice, "price"},
		{"price empty", r(`"0.01633102"`, `""`).Replace(goodJSON), "", schema.ReasonInvalidPrice, "p"},
		{"quantity NaN", r(`"4.70443515"`, `"nan"`).Replace(goodJSON), "", schema.ReasonInvalidQuantity, "q"},
		{"quantity zero", r(`"4.70443515"`, `"0"`).Replace(goodJSON), "", schema.ReasonInvalidQuantity, "quantity"},
		{"quantity negative", r(`"4.70443515"`, `-4`).Replace(goodJSON), "", schema.ReasonInvalidQuantity, "quantity"},
		{"last before first", r(`"l":27781`, `"l":27780`).Replace(goodJSON), "", schema.ReasonInvalidTradeIDs, "trade_id"},
		{"negative agg id", r(`"a":26129`, `"a":-1`).Replace(goodJSON), "", schema.ReasonInvalidTradeIDs, "trade_id"},
		{"future time", r(`"T":1699999999998`, `"T":1700000011000`).Replace(goodJSON), "", schema.ReasonFutureTime, "trade_time"},
		{"seconds not millis", r(`"T":1699999999998`, `"T":1699999999`).Replace(goodJSON), "", schema.ReasonAncientTime, "trade_time"},
		{"before 2010", r(`"T":1699999999998`, `"T":1262303999999`).Replace(goodJSON), "", schema.ReasonAncientTime, "trade_time"},
	}
	dec := schema.TradeDecoder{Format: schema.InputBinanceJSON, Validate: schema.ValidateConfig{MaxSkew: schema.DefaultMaxSkew}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tr schema.Trade
			err := dec.Decode([]byte(tt.key), []byte(tt.value), now, &tr)
			checkInvalid(t, err, tt.reason, tt.field)
		})
	}

	// The value rules hold for Avro input too.
	avroDec := schema.TradeDecoder{Format: schema.InputAvro, Validate: schema.ValidateConfig{MaxSkew: schema.DefaultMaxSkew}}
	good := schema.Trade{Symbol: []byte("ETHUSDT"), AggID: 5, Price: fx("2000.5"), Quantity: fx("0.25"), FirstID: 10, LastID: 12, Time: now - 5}
	avroTests := []struct {
		name   string
		mutate func(*schema.Trade)
		reason schema.Reason
	}{
		{"price zero", func(t *schema.Trade) { t.Price = 0 }, schema.ReasonInvalidPrice},
		{"price negative", func(t *schema.Trade) { t.Price = -1 }, schema.ReasonInvalidPrice},
		{"quantity negative", func(t *schema.Trade) { t.Quantity = -fx("0.5") }, schema.ReasonInvalidQuantity},
		{"oversized symbol", func(t *schema.Trade) { t.Symbol = []byte(strings.Repeat("A", 64)) }, schema.ReasonSymbolTooLong},
		{"future", func(t *schema.Trade) { t.Time = now + 3_600_000 }, schema.ReasonFutureTime},
		{"negative first id", func(t *schema.Trade) { t.FirstID = -5 }, schema.ReasonInvalidTradeIDs},
	}
	for _, tt := range avroTests {
		t.Run("avro/"+tt.name, func(t *testing.T) {
			tr := good
			tt.mutate(&tr)
			value := frameSOE(t, schema.AppendAvroTradeBody(nil, &tr))
			var out schema.Trade
			checkInvalid(t, avroDec.Decode(nil, value, now, &out), tt.reason, "")
		})
	}
	t.Run("avro/decimal wider than 64 bits", func(t *testing.T) {
		body := schema.AppendAvroTradeBody(nil, &good)
		// Re-write the price (after symbol, id) as nine bytes.
		head := 1 + len(good.Symbol) + 1
		plen := int(body[head]) / 2
		wide := append(append(append([]byte{}, body[:head]...), 18, 0, 1, 2, 3, 4, 5, 6, 7, 8), body[head+1+plen:]...)
		var out schema.Trade
		checkInvalid(t, avroDec.Decode(nil, frameSOE(t, wide), now, &out), schema.ReasonOutOfRange, "price")
	})
	t.Run("avro/schema 1 (doubles)", func(t *testing.T) {
		var out schema.Trade
		if err := avroDec.Decode(nil, frameV1(t, schema.AppendAvroTradeBodyV1(nil, &good)), now, &out); err != nil || !equalTrade(out, good) {
			t.Fatalf("got %+v, %v", out, err)
		}
		// Confluent-framed, schema 1 is known by its registry id.
		v1 := avroDec
		v1.V1IDs = map[int]bool{7: true}
		value := append([]byte{0, 0, 0, 0, 7}, schema.AppendAvroTradeBodyV1(nil, &good)...)
		if err := v1.Decode(nil, value, now, &out); err != nil || !equalTrade(out, good) {
			t.Fatalf("confluent schema 1: got %+v, %v", out, err)
		}
	})
	t.Run("avro/good", func(t *testing.T) {
		var out schema.Trade
		if err := avroDec.Decode(nil, frameSOE(t, schema.AppendAvroTradeBody(nil, &good)), now, &out); err != nil || !equalTrade(out, good) {
			t.Fatalf("got %+v, %v", out, err)
		}
	})
	for name, value := range map[string][]byte{
		"empty":           nil,
		"no framing":      schema.AppendAvroTradeBody(nil, &good),
		"short header":    {0xC3, 0x01, 1, 2},
		"truncated body":  frameSOE(t, schema.AppendAvroTradeBody(nil, &good))[:20],
		"trailing bytes":  append(frameSOE(t, schema.AppendAvroTradeBody(nil, &good)), 0),
		"bool not 0 or 1": func() []byte { b := frameSOE(t, schema.AppendAvroTradeBody(nil, &good)); b[len(b)-1] = 7; return b }(),
		"wrong fingerprint": func() []byte {
			b := frameSOE(t, schema.AppendAvroTradeBody(nil, &good))
			b[3] ^= 0xff
			return b
		}(),
	} {
		t.Run("avro/"+name, func(t *testing.T) {
			var out schema.Trade
			checkInvalid(t, avroDec.Decode(nil, value, now, &out), schema.ReasonMalformed, "")
		})
	}
}

func checkInvalid(t *testing.T, err error, reason schema.Reason, field string) {
	t.Helper()
	if !errors.Is(err, schema.ErrInvalidTrade) {
		t.Fatalf("want ErrInvalidTrade (%s), got %v", reason, err)
	}
	var ite *schema.InvalidTradeError
	if !errors.As(err, &ite) || ite.Reason != reason || schema.ReasonOf(err) != reason {
		t.Fatalf("want reason %s, got %v", reason, err)
	}
	if field != "" && ite.Field != field {
		t.Fatalf("want field %q, got %q (%v)", field, ite.Field, err)
	}
	if !strings.HasPrefix(err.Error(), "schema: ") || !strings.Contains(err.Error(), reason.String()) {
		t.Fatalf("message %q lacks prefix or reason", err)
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

// frameV1 frames a trade schema 1 body, single-object.
func frameV1(t testing.TB, body []byte) []byte {
	t.Helper()
	s, err := avro.Parse(schema.TradeSchemaV1Text)
	if err != nil {
		t.Fatal(err)
	}
	p, err := schema.Prefix(schema.FramingSingleObject, s, 0)
	if err != nil {
		t.Fatal(err)
	}
	return append(p, body...)
}

func frameSOE(t testing.TB, body []byte) []byte {
	t.Helper()
	p, err := schema.Prefix(schema.FramingSingleObject, schema.TradeSchema, 0)
	if err != nil {
		t.Fatal(err)
	}
	return append(p, body...)
}

func TestReasonsAreDistinct(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range schema.Reasons() {
		s := r.String()
		if seen[s] || strings.ContainsAny(s, " -") || s == "none" {
			t.Fatalf("reason %q is repeated or not a snake_case label", s)
		}
		seen[s] = true
	}
	if len(seen) != 15 {
		t.Fatalf("%d reasons, want 15", len(seen))
	}
}

func TestAppendBinanceJSONRoundTrip(t *testing.T) {
	for _, tr := range []schema.Trade{
		{Symbol: []byte("BTCUSDT"), AggID: 1, Price: fx("0.01633102"), Quantity: fx("4.70443515"), FirstID: 3, LastID: 9, Time: now, BuyerMaker: true},
		{Symbol: []byte("X"), AggID: 1 << 62, Price: 1, Quantity: decimal.MaxFixed, FirstID: 0, LastID: 0, Time: now, EventTime: now + 1},
	} {
		var back schema.Trade
		if err := schema.DecodeBinanceJSON(schema.AppendBinanceJSON(nil, &tr), nil, &back); err != nil {
			t.Fatal(err)
		}
		if back.EventTime == 0 {
			t.Fatal("no event time")
		}
		back.EventTime = tr.EventTime
		if !equalTrade(back, tr) {
			t.Fatalf("got %+v want %+v", back, tr)
		}
	}
}
