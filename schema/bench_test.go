package schema_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/hamba/avro/v2"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/schema"
)

// binanceEvent is what encoding/json needs to decode the same event.
type binanceEvent struct {
	E  string      `json:"e"`
	ET int64       `json:"E"`
	S  string      `json:"s"`
	A  int64       `json:"a"`
	P  json.Number `json:"p"`
	Q  json.Number `json:"q"`
	F  int64       `json:"f"`
	L  int64       `json:"l"`
	T  int64       `json:"T"`
	M  bool        `json:"m"`
}

// BenchmarkDecodeBinanceJSON decodes one aggTrade event: klagg's decoder
// beside encoding/json (which also has to parse the decimal strings).
func BenchmarkDecodeBinanceJSON(b *testing.B) {
	value := []byte(goodJSON)
	b.Run("klagg", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(value)))
		var t schema.Trade
		for b.Loop() {
			if err := schema.DecodeBinanceJSON(value, nil, &t); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding_json", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(value)))
		for b.Loop() {
			var ev binanceEvent
			if err := json.Unmarshal(value, &ev); err != nil {
				b.Fatal(err)
			}
			if _, err := decimal.ParseFixed([]byte(ev.P)); err != nil {
				b.Fatal(err)
			}
			if _, err := decimal.ParseFixed([]byte(ev.Q)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkEncodeKline encodes one framed kline into a reused buffer:
// klagg's appender beside hamba/avro's reflection encoder.
func BenchmarkEncodeKline(b *testing.B) {
	enc, err := schema.NewKlineEncoder(schema.FramingSingleObject, 0)
	if err != nil {
		b.Fatal(err)
	}
	k := sampleKline
	b.Run("klagg", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 256)
		for b.Loop() {
			buf = enc.Append(buf[:0], &k)
		}
		b.SetBytes(int64(len(buf)))
	})
	b.Run("hamba_avro", func(b *testing.B) {
		b.ReportAllocs()
		var out bytes.Buffer
		e := avro.NewEncoderForSchema(schema.KlineSchema, &out)
		h := hambaOf(&k) // decimals as *big.Rat, built once
		for b.Loop() {
			out.Reset()
			if err := e.Encode(&h); err != nil {
				b.Fatal(err)
			}
		}
		b.SetBytes(int64(out.Len()))
	})
}

func BenchmarkDecodeAvroTrade(b *testing.B) {
	tr := schema.Trade{Symbol: []byte("BTCUSDT"), AggID: 1, Price: fx("37000.5"), Quantity: fx("0.25"), FirstID: 1, LastID: 2, Time: now}
	value := frameSOE(b, schema.AppendAvroTradeBody(nil, &tr))
	b.ReportAllocs()
	var out schema.Trade
	for b.Loop() {
		if err := schema.DecodeAvroTrade(value, &out); err != nil {
			b.Fatal(err)
		}
	}
}
