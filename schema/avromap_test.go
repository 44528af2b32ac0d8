package schema_test

import (
	"encoding/binary"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/hamba/avro/v2"

	"github.com/klagg/klagg/schema"
)

// fillSchema is a platform's own trade record: other names, a nested
// record, a decimal of scale 4, a string quantity, microsecond times,
// an enum side, an optional id, and fields klagg skips.
const fillSchema = `{"type":"record","name":"Fill","namespace":"acme","fields":[
 {"name":"instrument","type":{"type":"record","name":"Instrument","fields":[{"name":"venue","type":"string"},{"name":"code","type":"string"}]}},
 {"name":"tags","type":{"type":"map","values":"string"}},
 {"name":"px","type":{"type":"bytes","logicalType":"decimal","precision":18,"scale":4}},
 {"name":"size","type":"string"},
 {"name":"legs","type":{"type":"array","items":"double"}},
 {"name":"executed_at","type":{"type":"long","logicalType":"timestamp-micros"}},
 {"name":"aggressor","type":{"type":"enum","name":"Side","symbols":["BID","ASK"]}},
 {"name":"seq","type":["null","long"],"default":null},
 {"name":"note","type":["null","string"],"default":null}
]}`

type fillInstrument struct {
	Venue string `avro:"venue"`
	Code  string `avro:"code"`
}

type fill struct {
	Instrument fillInstrument    `avro:"instrument"`
	Tags       map[string]string `avro:"tags"`
	Px         *big.Rat          `avro:"px"`
	Size       string            `avro:"size"`
	Legs       []float64         `avro:"legs"`
	ExecutedAt time.Time         `avro:"executed_at"`
	Aggressor  string            `avro:"aggressor"`
	Seq        *int64            `avro:"seq"`
	Note       *string           `avro:"note"`
}

var fillMapping = schema.JSONMapping{Symbol: "instrument.code", Price: "px", Quantity: "size", Time: "executed_at", TimeUnit: "us",
	Side: "aggressor", TakerBuy: []string{"BID"}, TakerSell: []string{"ASK"}, ID: "seq"}

func confluent(t testing.TB, id int, text string, v any) []byte {
	t.Helper()
	body, err := avro.Marshal(avro.MustParse(text), v)
	if err != nil {
		t.Fatal(err)
	}
	return append(binary.BigEndian.AppendUint32([]byte{0}, uint32(id)), body...)
}

func sampleFill(seq *int64) fill {
	note := "block"
	return fill{Instrument: fillInstrument{"acme", "BTC-EUR"}, Tags: map[string]string{"desk": "7", "x": ""},
		Px: big.NewRat(570002525, 10_000), Size: "0.015", Legs: []float64{1.5, -2}, ExecutedAt: time.UnixMicro(1709547302123999).UTC(),
		Aggressor: "ASK", Seq: seq, Note: &note}
}

// TestAvroMapping reads a platform's Avro record through a mapping.
func TestAvroMapping(t *testing.T) {
	am, err := schema.NewAvroMapping(fillMapping, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := am.AddSchema(7, fillSchema); err != nil {
		t.Fatal(err)
	}
	d := schema.TradeDecoder{Format: schema.InputAvro, Avro: am, Validate: schema.ValidateConfig{MaxSkew: time.Hour}}
	seq := int64(4242)
	var tr schema.Trade
	if err := d.Decode(nil, confluent(t, 7, fillSchema, sampleFill(&seq)), ms("2024-03-04T10:16:00Z"), &tr); err != nil {
		t.Fatal(err)
	}
	w := want{"BTC-EUR", 4242, 4242, 4242, fx("57000.2525").String(), fx("0.015").String(), 1709547302123, true}
	if g := got(&tr); g != w {
		t.Fatalf("got %+v, want %+v", g, w)
	}
	// The optional id absent: the record is refused, naming it.
	err = d.Decode(nil, confluent(t, 7, fillSchema, sampleFill(nil)), ms("2024-03-04T10:16:00Z"), &tr)
	if schema.ReasonOf(err) != schema.ReasonMissingField || !strings.Contains(err.Error(), "seq") {
		t.Fatalf("without seq: %v", err)
	}
	// An unknown id, no lookup: malformed, saying so.
	err = d.Decode(nil, confluent(t, 8, fillSchema, sampleFill(&seq)), 0, &tr)
	if schema.ReasonOf(err) != schema.ReasonMalformed || !strings.Contains(err.Error(), "id 8") {
		t.Fatalf("unknown id: %v", err)
	}
	value := confluent(t, 7, fillSchema, sampleFill(&seq))
	var b schema.Batch
	if n := testing.AllocsPerRun(100, func() { _ = d.DecodeBatch(nil, value, ms("2024-03-04T10:16:00Z"), &b) }); n != 0 {
		t.Errorf("%v allocations per record", n)
	}
}

// TestAvroMappingMismatch: a mapping that does not fit a writer schema is
// an error naming the field, at AddSchema and for each record.
func TestAvroMappingMismatch(t *testing.T) {
	tests := []struct {
		name string
		edit func(*schema.JSONMapping)
		msg  string
	}{
		{"missing field", func(m *schema.JSONMapping) { m.Price = "price" }, `"price": no such field`},
		{"map for a quantity", func(m *schema.JSONMapping) { m.Quantity = "tags" }, "a map cannot give the quantity"},
		{"enum for a time", func(m *schema.JSONMapping) { m.Time = "aggressor" }, "a enum cannot give the time"},
		{"nested path too deep", func(m *schema.JSONMapping) { m.Symbol = "instrument.code.x" }, "no such field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := fillMapping
			tt.edit(&m)
			if m.Time == "aggressor" {
				m.Side = ""
			}
			am, err := schema.NewAvroMapping(m, func(int) (string, error) { return fillSchema, nil })
			if err != nil {
				t.Fatal(err)
			}
			err = am.AddSchema(3, fillSchema)
			var me *schema.MappingMismatchError
			if !errors.As(err, &me) || me.SchemaID != 3 || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("AddSchema: %v, want a MappingMismatchError with %q", err, tt.msg)
			}
			d := schema.TradeDecoder{Format: schema.InputAvro, Avro: am}
			seq := int64(1)
			var tr schema.Trade
			// Looked up (id 9), it does not fit either.
			err = d.Decode(nil, confluent(t, 9, fillSchema, sampleFill(&seq)), 0, &tr)
			if schema.ReasonOf(err) != schema.ReasonMalformed || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("record: %v", err)
			}
		})
	}
	if _, err := schema.NewAvroMapping(schema.JSONMapping{Trades: "data[]", Symbol: "s", Price: "p", Quantity: "q", Time: "t", TimeUnit: "ms",
		Match: map[string][]string{"c": {"x"}}}, nil); err == nil || !strings.Contains(err.Error(), "one trade") || !strings.Contains(err.Error(), "match") {
		t.Fatalf("a JSON-only mapping for Avro: %v", err)
	}
}

// TestAvroMappingDecimals: every numeric type a price may have.
func TestAvroMappingDecimals(t *testing.T) {
	for _, tt := range []struct {
		typ   string
		value any
		want  string
		r     schema.Reason
	}{
		{`{"type":"bytes","logicalType":"decimal","precision":30,"scale":10}`, big.NewRat(123456789, 100), "1234567.89", 0},
		{`{"type":"bytes","logicalType":"decimal","precision":30,"scale":10}`, big.NewRat(1, 3_000_000_000), "", schema.ReasonExcessPrecision},
		{`{"type":"fixed","name":"D","size":16,"logicalType":"decimal","precision":30,"scale":2}`, big.NewRat(-5, 1), "-5", schema.ReasonInvalidPrice},
		{`{"type":"bytes","logicalType":"decimal","precision":38,"scale":0}`, new(big.Rat).SetInt(new(big.Int).Lsh(big.NewInt(1), 100)), "", schema.ReasonOutOfRange},
		{`"long"`, int64(42), "42", 0},
		{`"double"`, 0.1, "0.1", 0},
		{`"float"`, float32(2.5), "2.5", 0},
		{`"string"`, "1e-3", "0.001", 0},
	} {
		text := `{"type":"record","name":"T","fields":[{"name":"s","type":"string"},{"name":"p","type":` + tt.typ + `},{"name":"q","type":"string"},{"name":"t","type":"long"}]}`
		am, err := schema.NewAvroMapping(schema.JSONMapping{Symbol: "s", Price: "p", Quantity: "q", Time: "t", TimeUnit: "ms"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := am.AddSchema(1, text); err != nil {
			t.Fatalf("%s: %v", tt.typ, err)
		}
		d := schema.TradeDecoder{Format: schema.InputAvro, Avro: am, Validate: schema.ValidateConfig{MaxSkew: time.Hour}}
		var tr schema.Trade
		err = d.Decode(nil, confluent(t, 1, text, map[string]any{"s": "X", "p": tt.value, "q": "1", "t": int64(1709547302123)}), 1709547302123, &tr)
		if r := schema.ReasonOf(err); r != tt.r {
			t.Errorf("%s %v: reason %v (%v), want %v", tt.typ, tt.value, r, err, tt.r)
		} else if tt.r == 0 && tr.Price != fx(tt.want) {
			t.Errorf("%s %v: %s, want %s", tt.typ, tt.value, tr.Price, tt.want)
		}
	}
}

// FuzzDecodeAvroMapped: the mapped Avro decoder never panics, and what it
// accepts hamba/avro reads as the same trade.
func FuzzDecodeAvroMapped(f *testing.F) {
	seq := int64(77)
	f.Add(confluent(f, 7, fillSchema, sampleFill(&seq))[5:])
	f.Add(confluent(f, 7, fillSchema, sampleFill(nil))[5:])
	am, err := schema.NewAvroMapping(fillMapping, nil)
	if err != nil {
		f.Fatal(err)
	}
	if err := am.AddSchema(7, fillSchema); err != nil {
		f.Fatal(err)
	}
	d := schema.TradeDecoder{Format: schema.InputAvro, Avro: am}
	s := avro.MustParse(fillSchema)
	f.Fuzz(func(t *testing.T, body []byte) {
		var tr schema.Trade
		err := d.Decode(nil, append([]byte{0, 0, 0, 0, 7}, body...), 1<<62, &tr)
		if err != nil && schema.ReasonOf(err) == schema.ReasonNone {
			t.Fatalf("error without reason: %v", err)
		}
		if err != nil {
			return
		}
		var ref fill
		if rerr := avro.Unmarshal(s, body, &ref); rerr != nil {
			t.Fatalf("accepted %x; hamba/avro: %v", body, rerr)
		}
		want, ok := new(big.Rat).SetString(ref.Size)
		if !ok || want.Cmp(new(big.Rat).SetFrac64(int64(tr.Quantity), 100_000_000)) != 0 || string(tr.Symbol) != ref.Instrument.Code ||
			ref.Px.Cmp(new(big.Rat).SetFrac64(int64(tr.Price), 100_000_000)) != 0 || tr.Time != ref.ExecutedAt.UnixMicro()/1000 && ref.ExecutedAt.UnixMicro() >= 0 {
			t.Fatalf("decoded %+v; hamba/avro %+v", tr, ref)
		}
	})
}

// BenchmarkDecodeAvroMapped: a platform's record read through a mapping
// beside klagg's own trade.avsc record (the target: within 2×).
func BenchmarkDecodeAvroMapped(b *testing.B) {
	am, err := schema.NewAvroMapping(fillMapping, nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := am.AddSchema(7, fillSchema); err != nil {
		b.Fatal(err)
	}
	seq := int64(77)
	f := sampleFill(&seq)
	f.Tags, f.Legs, f.Note = map[string]string{}, nil, nil // klagg's own record has no extras either
	mapped := confluent(b, 7, fillSchema, f)
	nowMs := ms("2024-03-04T10:16:00Z")
	b.Run("mapped", func(b *testing.B) {
		b.ReportAllocs()
		d := schema.TradeDecoder{Format: schema.InputAvro, Avro: am, Validate: schema.ValidateConfig{MaxSkew: time.Hour}}
		var batch schema.Batch
		for b.Loop() {
			if err := d.DecodeBatch(nil, mapped, nowMs, &batch); err != nil || batch.Errs[0] != nil {
				b.Fatal(err, batch.Errs)
			}
		}
	})
	b.Run("trade.avsc", func(b *testing.B) {
		b.ReportAllocs()
		tr := schema.Trade{Symbol: []byte("BTC-EUR"), AggID: 77, FirstID: 77, LastID: 77, Price: fx("57000.2525"), Quantity: fx("0.015"), Time: 1709547302123, BuyerMaker: true}
		own := schema.AppendAvroTradeBody([]byte{0, 0, 0, 0, 1}, &tr)
		d := schema.TradeDecoder{Format: schema.InputAvro, Validate: schema.ValidateConfig{MaxSkew: time.Hour}}
		var batch schema.Batch
		for b.Loop() {
			if err := d.DecodeBatch(nil, own, nowMs, &batch); err != nil || batch.Errs[0] != nil {
				b.Fatal(err, batch.Errs)
			}
		}
	})
}
