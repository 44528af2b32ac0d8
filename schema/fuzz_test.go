package schema_test

import (
	"bytes"
	"encoding/json"
	"math/big"
	"os"
	"path/filepath"
	"testing"

	"github.com/hamba/avro/v2"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/schema"
)

// FuzzDecodeBinanceJSON: the decoder never panics; what it accepts is valid
// JSON (encoding/json agrees); for inputs without escapes or a wrapper, the
// fields it reads equal encoding/json's; and what passes validation keeps
// every rule.
func FuzzDecodeBinanceJSON(f *testing.F) {
	f.Add([]byte(goodJSON), []byte(""))
	f.Add([]byte(`{"stream":"x","data":`+goodJSON+`}`), []byte(""))
	f.Add([]byte(`{"a":1,"p":"1.5","q":"2","f":1,"l":1,"T":1700000000000,"m":false}`), []byte("BTCUSDT"))
	f.Add([]byte(`{"a":1,"p":1e3,"q":0.5,"f":3,"l":2,"T":1,"m":true,"s":"a\u0041","x":[{},[],null]}`), []byte("K"))
	f.Add([]byte(`{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"1.5","q":"2","b":1,"a":2,"T":1700000000000,"m":false,"M":true}`), []byte(""))
	dec := schema.TradeDecoder{Validate: schema.ValidateConfig{MaxSkew: schema.DefaultMaxSkew}}
	f.Fuzz(func(t *testing.T, value, key []byte) {
		var tr schema.Trade
		err := schema.DecodeBinanceJSON(value, key, &tr)
		if err != nil {
			if schema.ReasonOf(err) == schema.ReasonNone {
				t.Fatalf("error without reason: %v", err)
			}
			return
		}
		if !json.Valid(value) {
			t.Fatalf("accepted invalid JSON %q", value)
		}
		if !bytes.ContainsAny(value, `\`) && !bytes.Contains(value, []byte(`"data"`)) {
			var m map[string]json.RawMessage
			if err := json.Unmarshal(value, &m); err != nil {
				t.Fatalf("encoding/json refuses %q: %v", value, err)
			}
			checkInt := func(k string, got int64) {
				var want int64
				if err := json.Unmarshal(m[k], &want); err != nil || want != got {
					t.Fatalf("field %s: got %d, encoding/json %s (%v)", k, got, m[k], err)
				}
			}
			if _, agg := m["a"]; agg && string(m["e"]) != `"trade"` {
				checkInt("a", tr.AggID)
				checkInt("f", tr.FirstID)
				checkInt("l", tr.LastID)
			} else { // a raw trade: an aggregate of itself
				checkInt("t", tr.AggID)
				checkInt("t", tr.FirstID)
				checkInt("t", tr.LastID)
			}
			checkInt("T", tr.Time)
			checkDec := func(k string, got decimal.Fixed) {
				// math/big reads the text exactly; the decoder must agree.
				want, ok := new(big.Rat).SetString(string(bytes.Trim(m[k], `"`)))
				if !ok || want.Cmp(new(big.Rat).SetFrac64(int64(got), 100_000_000)) != 0 {
					t.Fatalf("field %s: got %s, math/big %v from %s", k, got, want, m[k])
				}
			}
			checkDec("p", tr.Price)
			checkDec("q", tr.Quantity)
		}
		if err := dec.Validate.Validate(&tr, now); err == nil {
			checkValid(t, &tr)
		}
	})
}

func checkValid(t *testing.T, tr *schema.Trade) {
	t.Helper()
	ok := len(tr.Symbol) > 0 && len(tr.Symbol) <= schema.MaxSymbolLen &&
		tr.Price > 0 && tr.Quantity > 0 &&
		tr.AggID >= 0 && tr.FirstID >= 0 && tr.LastID >= tr.FirstID &&
		tr.Time >= schema.MinTradeTime && tr.Time <= now+schema.DefaultMaxSkew.Milliseconds()
	if !ok {
		t.Fatalf("validation passed a trade that breaks the rules: %+v", tr)
	}
	if schema.ValidSymbol(tr.Symbol) != schema.ReasonNone {
		t.Fatalf("bad symbol %q passed", tr.Symbol)
	}
}

// FuzzDecodeAvroTrade: never panics; what it accepts re-encodes to the same
// bytes and hamba/avro reads the same values; validation keeps every rule.
func FuzzDecodeAvroTrade(f *testing.F) {
	good := schema.Trade{Symbol: []byte("ETHUSDT"), AggID: 5, Price: fx("2000.5"), Quantity: fx("0.25"), FirstID: 10, LastID: 12, Time: now - 5}
	f.Add(frameSOE(f, schema.AppendAvroTradeBody(nil, &good)))
	f.Add(append([]byte{0, 0, 0, 0, 7}, schema.AppendAvroTradeBody(nil, &good)...))
	f.Add([]byte{0xC3, 0x01})
	f.Add(frameV1(f, schema.AppendAvroTradeBodyV1(nil, &good)))
	val := schema.ValidateConfig{MaxSkew: schema.DefaultMaxSkew}
	f.Fuzz(func(t *testing.T, value []byte) {
		var tr schema.Trade
		if err := schema.DecodeAvroTrade(value, &tr); err != nil {
			return
		}
		_, _, body, err := schema.Unframe(value, schema.TradeSchema)
		if err != nil {
			return // schema 1, read through its fingerprint
		}
		if re := schema.AppendAvroTradeBody(nil, &tr); !bytes.Equal(re, body) {
			// Avro varints have one canonical form only for values written
			// minimally; a longer encoding of the same value is still valid.
			var again schema.Trade
			if err := schema.DecodeAvroTradeBody(re, &again); err != nil || !equalTrade(again, tr) {
				t.Fatalf("re-encoding changed the trade: %+v vs %+v", again, tr)
			}
		}
		var h struct {
			Symbol   string   `avro:"symbol"`
			AggID    int64    `avro:"agg_trade_id"`
			Price    *big.Rat `avro:"price"`
			Quantity *big.Rat `avro:"quantity"`
			FirstID  int64    `avro:"first_trade_id"`
			LastID   int64    `avro:"last_trade_id"`
			Time     int64    `avro:"trade_time"`
			M        bool     `avro:"is_buyer_maker"`
		}
		if err := avro.Unmarshal(schema.TradeSchema, body, &h); err == nil {
			if h.Symbol != string(tr.Symbol) || h.AggID != tr.AggID || h.Time != tr.Time || h.M != tr.BuyerMaker ||
				h.Price.Cmp(tr.Price.Rat()) != 0 || h.Quantity.Cmp(tr.Quantity.Rat()) != 0 {
				t.Fatalf("hamba/avro reads %+v, klagg %+v", h, tr)
			}
		}
		if val.Validate(&tr, now) == nil {
			checkValid(t, &tr)
		}
	})
}

// FuzzDecodeState: never panics, never allocates without bound, and what it
// accepts keeps the state invariants and survives a re-encode.
func FuzzDecodeState(f *testing.F) {
	for _, name := range []string{"state.bin", "state.v1.bin", "state.v2.bin", "state.v2-inexact.bin"} {
		if b, err := os.ReadFile(filepath.Join("testdata", name)); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte{0xC3, 0x01, 0, 0, 0, 0, 0, 0, 0, 0})
	codec, err := schema.NewStateCodec()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		var st schema.SymbolState
		if err := codec.Decode(value, &st); err != nil {
			return
		}
		if len(st.Candles) == 0 || len(st.Candles) > 16 || schema.ValidSymbol([]byte(st.Symbol)) != schema.ReasonNone {
			t.Fatalf("accepted %+v", st)
		}
		for _, c := range st.Candles {
			if !(c.Low > 0 && c.Low <= c.Open && c.Open <= c.High && c.Low <= c.Close && c.Close <= c.High) ||
				!c.Volume.Room() || !c.QuoteVolume.Room() || c.TradeCount < 0 {
				t.Fatalf("accepted candle %+v", c)
			}
		}
		re, err := codec.Encode(&st)
		if err != nil {
			t.Fatal(err)
		}
		var again schema.SymbolState
		if err := codec.Decode(re, &again); err != nil || again.Symbol != st.Symbol || len(again.Candles) != len(st.Candles) {
			t.Fatalf("re-encode: %+v, %v", again, err)
		}
	})
}

// FuzzDecodeKline: never panics; what it accepts re-encodes to the same
// body (Avro's minimal varints) or to one that decodes to the same kline.
func FuzzDecodeKline(f *testing.F) {
	for _, name := range []string{"kline.single-object.bin", "kline.confluent.bin", "kline.v1.single-object.bin"} {
		if b, err := os.ReadFile(filepath.Join("testdata", name)); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		var k schema.Kline
		if err := schema.DecodeKline(value, &k); err != nil {
			return
		}
		_, _, body, err := schema.Unframe(value, schema.KlineSchema)
		if err != nil {
			return // kline schema 1, read through its fingerprint
		}
		re := schema.AppendKlineBody(nil, &k)
		if bytes.Equal(re, body) {
			return
		}
		var again schema.Kline
		framed := append([]byte{0, 0, 0, 0, 1}, re...)
		if err := schema.DecodeKline(framed, &again); err != nil || again != k {
			t.Fatalf("re-encoding changed the kline: %+v vs %+v (%v)", again, k, err)
		}
	})
}
