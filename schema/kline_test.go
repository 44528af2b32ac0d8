package schema_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/sr"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/klagg/klagg/schema"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

var sampleKline = schema.Kline{
	Symbol: "BTCUSDT", Period: "1m", OpenTime: 1700000040000, CloseTime: 1700000099999,
	Open: 37000.5, High: 37010, Low: 36990.25, Close: 37005.75, Volume: 12.5, QuoteVolume: 462_600.125,
	TradeCount: 321, TakerBuyVolume: 6.25, TakerBuyQuoteVolume: 231_300.0625,
	FirstTradeID: 1000, LastTradeID: 1320, IsFinal: true, Version: 1700000100000123,
}

// TestKlineEncoding checks the hand-written body against hamba/avro's
// reflection codec, for ordinary and edge values.
func TestKlineEncoding(t *testing.T) {
	edge := sampleKline
	edge.Symbol, edge.Version, edge.FirstTradeID, edge.LastTradeID, edge.IsFinal = "", math.MaxInt64, -1, math.MinInt64, false
	edge.Open, edge.Low = math.SmallestNonzeroFloat64, -0.0
	for _, k := range []schema.Kline{sampleKline, edge} {
		want, err := avro.Marshal(schema.KlineSchema, k)
		if err != nil {
			t.Fatal(err)
		}
		got := schema.AppendKlineBody(nil, &k)
		if !bytes.Equal(got, want) {
			t.Fatalf("body differs from hamba/avro:\n got %x\nwant %x", got, want)
		}
		var back schema.Kline
		if err := avro.Unmarshal(schema.KlineSchema, got, &back); err != nil || back != k {
			t.Fatalf("hamba/avro reads back %+v, %v", back, err)
		}
	}
}

// TestKlineFraming pins both framings in golden files, and checks the
// Confluent id against a registry (srfake) and the single-object
// fingerprint against the Avro specification's CRC-64-AVRO.
func TestKlineFraming(t *testing.T) {
	reg := srfake.New()
	defer reg.Close()
	cl, err := sr.NewClient(sr.URLs(reg.URL()))
	if err != nil {
		t.Fatal(err)
	}
	ss, err := cl.CreateSchema(t.Context(), "klines-value", sr.Schema{Schema: schema.KlineSchemaText, Type: sr.TypeAvro})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		framing schema.Framing
		id      int
	}{{"single-object", schema.FramingSingleObject, 0}, {"confluent", schema.FramingConfluent, ss.ID}} {
		t.Run(tc.name, func(t *testing.T) {
			enc, err := schema.NewKlineEncoder(tc.framing, tc.id)
			if err != nil {
				t.Fatal(err)
			}
			got := enc.Append(nil, &sampleKline)
			golden(t, filepath.Join("testdata", "kline."+tc.name+".bin"), got)
			var back schema.Kline
			if err := schema.DecodeKline(got, &back); err != nil || back != sampleKline {
				t.Fatalf("round trip: %+v, %v", back, err)
			}
			switch tc.framing {
			case schema.FramingConfluent:
				var h sr.ConfluentHeader
				id, _, err := h.DecodeID(got)
				if err != nil || id != ss.ID {
					t.Fatalf("confluent id %d, %v; want %d", id, err, ss.ID)
				}
			case schema.FramingSingleObject:
				if got[0] != 0xC3 || got[1] != 0x01 {
					t.Fatalf("magic %x", got[:2])
				}
				want := crc64Avro([]byte(schema.KlineSchema.String()))
				if fp := binary.LittleEndian.Uint64(got[2:10]); fp != want {
					t.Fatalf("fingerprint %x, want %x", fp, want)
				}
			}
		})
	}
	var k schema.Kline
	if err := schema.DecodeKline([]byte{0x01, 2, 3}, &k); !errors.Is(err, schema.ErrUnknownFraming) {
		t.Fatalf("unknown framing: %v", err)
	}
}

// crc64Avro is the Avro specification's Rabin fingerprint, written out
// here from the spec so that the test does not trust the library under test.
func crc64Avro(buf []byte) uint64 {
	const empty = 0xc15d213aa4d7a795
	var table [256]uint64
	for i := range table {
		fp := uint64(i)
		for range 8 {
			fp = (fp >> 1) ^ (empty & -(fp & 1))
		}
		table[i] = fp
	}
	fp := uint64(empty)
	for _, b := range buf {
		fp = (fp >> 8) ^ table[byte(fp)^b]
	}
	return fp
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./schema -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs:\n got %x\nwant %x", path, got, want)
	}
}

func TestStateRoundTrip(t *testing.T) {
	codec, err := schema.NewStateCodec()
	if err != nil {
		t.Fatal(err)
	}
	st := schema.SymbolState{
		Symbol: "ETHUSDT", LastAggID: 77, LastTradeTime: 1700000001000, SourceOffset: 4321,
		Watermark: 1700000000000, ShardMaxTradeTime: 1700000001000, AcceptedAt: 1700000001100, AcceptedTradeTime: 1700000001000,
		Candles: []schema.CandleState{
			{Period: "1m", OpenTime: 1699999980000, Open: 2, High: 3, Low: 1, Close: 2.5, Volume: 4, QuoteVolume: 9,
				TradeCount: 3, FirstTradeID: 10, LastTradeID: 12, OpenTradeTime: 1699999990000, Version: 5},
			{Period: "1h", OpenTime: 1699999200000, Open: 2, High: 2, Low: 2, Close: 2, TradeCount: 0, FirstTradeID: -1, LastTradeID: -1},
		},
		Writer: "klagg-klagg-klagg-0", WrittenAt: 1700000001200,
	}
	b, err := codec.Encode(&st)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, filepath.Join("testdata", "state.bin"), b)
	var back schema.SymbolState
	if err := codec.Decode(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Symbol != st.Symbol || len(back.Candles) != 2 || back.Candles[0] != st.Candles[0] || back.SourceOffset != 4321 ||
		back.Writer != st.Writer || back.WrittenAt != st.WrittenAt {
		t.Fatalf("round trip: %+v", back)
	}

	// testdata/state.v1.bin is the same state as klagg wrote it before
	// state schema 2 (no writer, no written_at): it still restores.
	v1, err := os.ReadFile(filepath.Join("testdata", "state.v1.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if string(v1[2:10]) == string(b[2:10]) {
		t.Fatal("the v1 record carries the current schema's fingerprint: the test proves nothing")
	}
	var old schema.SymbolState
	if err := codec.Decode(v1, &old); err != nil {
		t.Fatalf("a state record of schema 1: %v", err)
	}
	want := st
	want.Writer, want.WrittenAt = "", 0
	if old.Symbol != want.Symbol || len(old.Candles) != 2 || old.Candles[0] != want.Candles[0] || old.Candles[1] != want.Candles[1] ||
		old.SourceOffset != want.SourceOffset || old.Watermark != want.Watermark || old.Writer != "" || old.WrittenAt != 0 {
		t.Fatalf("schema 1 record resolved to %+v", old)
	}
	// A fingerprint of no schema this binary embeds: a newer klagg's.
	future := append([]byte(nil), b...)
	future[2] ^= 0xff
	if err := codec.Decode(future, &old); !errors.Is(err, schema.ErrUnknownStateSchema) {
		t.Fatalf("unknown writer schema: %v", err)
	}

	bad := []struct {
		name   string
		mutate func(*schema.SymbolState)
	}{
		{"no candles", func(s *schema.SymbolState) { s.Candles = nil }},
		{"bad symbol", func(s *schema.SymbolState) { s.Symbol = "a b" }},
		{"NaN close", func(s *schema.SymbolState) { s.Candles[0].Close = math.NaN() }},
		{"close above high", func(s *schema.SymbolState) { s.Candles[0].Close = 4 }},
		{"negative volume", func(s *schema.SymbolState) { s.Candles[0].Volume = -1 }},
		{"ids without trades", func(s *schema.SymbolState) { s.Candles[1].FirstTradeID = 3 }},
		{"negative count", func(s *schema.SymbolState) { s.Candles[0].TradeCount = -2 }},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			c := st
			c.Candles = append([]schema.CandleState(nil), st.Candles...)
			tt.mutate(&c)
			b, err := codec.Encode(&c)
			if err != nil {
				t.Fatal(err)
			}
			var out schema.SymbolState
			if err := codec.Decode(b, &out); !errors.Is(err, schema.ErrInvalidState) {
				t.Fatalf("want ErrInvalidState, got %v", err)
			}
		})
	}
}
