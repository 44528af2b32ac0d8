package schema_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"testing"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/sr"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/schema"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

var sampleKline = schema.Kline{
	Symbol: "BTCUSDT", Period: "1m", OpenTime: 1700000040000, CloseTime: 1700000099999,
	Open: fx("37000.5"), High: fx("37010"), Low: fx("36990.25"), Close: fx("37005.75"), Volume: wd("12.5"),
	QuoteVolume: wd("462600.12500001"), TradeCount: 321, TakerBuyVolume: wd("6.25"), TakerBuyQuoteVolume: wd("231300.0625"),
	FirstTradeID: 1000, LastTradeID: 1320, IsFinal: true, Version: 1700000100000123,
}

// hambaKline is Kline as hamba/avro's reflection codec reads kline.avsc:
// decimals as *big.Rat.
type hambaKline struct {
	Symbol              string   `avro:"symbol"`
	Period              string   `avro:"period"`
	OpenTime            int64    `avro:"open_time"`
	CloseTime           int64    `avro:"close_time"`
	Open                *big.Rat `avro:"open"`
	High                *big.Rat `avro:"high"`
	Low                 *big.Rat `avro:"low"`
	Close               *big.Rat `avro:"close"`
	Volume              *big.Rat `avro:"volume"`
	QuoteVolume         *big.Rat `avro:"quote_volume"`
	TradeCount          int64    `avro:"trade_count"`
	TakerBuyVolume      *big.Rat `avro:"taker_buy_volume"`
	TakerBuyQuoteVolume *big.Rat `avro:"taker_buy_quote_volume"`
	FirstTradeID        int64    `avro:"first_trade_id"`
	LastTradeID         int64    `avro:"last_trade_id"`
	IsFinal             bool     `avro:"is_final"`
	Version             int64    `avro:"version"`
}

func hambaOf(k *schema.Kline) hambaKline {
	return hambaKline{Symbol: k.Symbol, Period: k.Period, OpenTime: k.OpenTime, CloseTime: k.CloseTime,
		Open: k.Open.Rat(), High: k.High.Rat(), Low: k.Low.Rat(), Close: k.Close.Rat(),
		Volume: k.Volume.Rat(), QuoteVolume: k.QuoteVolume.Rat(), TradeCount: k.TradeCount,
		TakerBuyVolume: k.TakerBuyVolume.Rat(), TakerBuyQuoteVolume: k.TakerBuyQuoteVolume.Rat(),
		FirstTradeID: k.FirstTradeID, LastTradeID: k.LastTradeID, IsFinal: k.IsFinal, Version: k.Version}
}

// TestKlineEncoding checks the hand-written body against hamba/avro's
// reflection codec (decimals through math/big), for ordinary and edge
// values: the smallest and largest prices, zero and the largest sums.
func TestKlineEncoding(t *testing.T) {
	edge := sampleKline
	edge.Symbol, edge.Version, edge.FirstTradeID, edge.LastTradeID, edge.IsFinal = "", math.MaxInt64, -1, math.MinInt64, false
	edge.Open, edge.High, edge.Low, edge.Close = 1, decimal.MaxFixed, -1, 128
	// The largest decimal(38, 8): sums below the engine's 2^125 bound plus
	// one trade stay below it (decimal.Wide.Room).
	edge.Volume, edge.TakerBuyVolume = decimal.Wide{}, wd("999999999999999999999999999999.99999999")
	edge.QuoteVolume = wd("999999999999999999999999999999.99999999")
	for _, k := range []schema.Kline{sampleKline, edge} {
		want, err := avro.Marshal(schema.KlineSchema, hambaOf(&k))
		if err != nil {
			t.Fatal(err)
		}
		got := schema.AppendKlineBody(nil, &k)
		if !bytes.Equal(got, want) {
			t.Fatalf("body differs from hamba/avro:\n got %x\nwant %x", got, want)
		}
		var back hambaKline
		if err := avro.Unmarshal(schema.KlineSchema, got, &back); err != nil || back.Volume.Cmp(k.Volume.Rat()) != 0 ||
			back.QuoteVolume.Cmp(k.QuoteVolume.Rat()) != 0 || back.Low.Cmp(k.Low.Rat()) != 0 {
			t.Fatalf("hamba/avro reads back %+v, %v", back, err)
		}
	}
}

// TestKlineSchema1 reads a kline record written by klagg before decimal
// candles (doubles): each double becomes its shortest decimal.
func TestKlineSchema1(t *testing.T) {
	v1, err := os.ReadFile(filepath.Join("testdata", "kline.v1.single-object.bin"))
	if err != nil {
		t.Fatal(err)
	}
	var k schema.Kline
	if err := schema.DecodeKline(v1, &k); err != nil {
		t.Fatal(err)
	}
	want := sampleKline
	want.QuoteVolume = wd("462600.125") // the double schema 1 carried
	if k != want {
		t.Fatalf("schema 1 record reads as\n%+v\nwant\n%+v", k, want)
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

// qt parses a test's decimal literal into a Quote.
func qt(s string) decimal.Quote {
	w := wd(s)
	q, err := decimal.QuoteFromBig(new(big.Int).Mul(w.Big(), big.NewInt(100_000_000)))
	if err != nil {
		panic(err)
	}
	return q
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
			{Period: "1m", OpenTime: 1699999980000, Open: fx("2"), High: fx("3"), Low: fx("1"), Close: fx("2.5"), Volume: wd("4"),
				QuoteVolume: qt("9"), TradeCount: 3, FirstTradeID: 10, LastTradeID: 12, OpenTradeTime: 1699999990000, Version: 5},
			{Period: "1h", OpenTime: 1699999200000, Open: fx("2"), High: fx("2"), Low: fx("2"), Close: fx("2"), TradeCount: 0, FirstTradeID: -1, LastTradeID: -1},
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

	if back.FromSchema != 3 || back.Rounded != 0 {
		t.Fatalf("a schema 3 record reads as schema %d with %d rounded", back.FromSchema, back.Rounded)
	}

	// testdata/state.v1.bin and state.v2.bin are the same state as klagg
	// wrote it before decimal candles, in state schemas 1 (no writer, no
	// written_at) and 2, with doubles: both still restore, exactly.
	var old schema.SymbolState
	for _, v := range []struct {
		file   string
		schema int
		writer string
	}{{"state.v1.bin", 1, ""}, {"state.v2.bin", 2, st.Writer}} {
		rec, err := os.ReadFile(filepath.Join("testdata", v.file))
		if err != nil {
			t.Fatal(err)
		}
		if string(rec[2:10]) == string(b[2:10]) {
			t.Fatalf("%s carries the current schema's fingerprint: the test proves nothing", v.file)
		}
		if err := codec.Decode(rec, &old); err != nil {
			t.Fatalf("%s: %v", v.file, err)
		}
		if old.Symbol != st.Symbol || len(old.Candles) != 2 || old.Candles[0] != st.Candles[0] || old.Candles[1] != st.Candles[1] ||
			old.SourceOffset != st.SourceOffset || old.Watermark != st.Watermark || old.Writer != v.writer ||
			old.FromSchema != v.schema || old.Rounded != 0 {
			t.Fatalf("%s resolved to %+v", v.file, old)
		}
	}
	// state.v2-inexact.bin: written by klagg before decimal candles with
	// float sums, one of them 0.1+0.2 (0.30000000000000004): the shortest
	// decimal of each double, rounded at 16 digits where it has more.
	rec, err := os.ReadFile(filepath.Join("testdata", "state.v2-inexact.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if err := codec.Decode(rec, &old); err != nil {
		t.Fatal(err)
	}
	c := old.Candles[0]
	if c.Open != fx("28165.47") || c.Low != fx("28164.41") || c.Volume != wd("0.00184") || c.QuoteVolume != qt("51.8244648") ||
		c.TakerBuyQuoteVolume != qt("0.3") || old.Rounded != 1 || old.FromSchema != 2 {
		t.Fatalf("inexact schema 2 record resolved to %+v (rounded %d)", c, old.Rounded)
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
		{"zero close", func(s *schema.SymbolState) { s.Candles[0].Close = 0 }},
		{"close above high", func(s *schema.SymbolState) { s.Candles[0].Close = fx("4") }},
		{"volume past 2^125", func(s *schema.SymbolState) { s.Candles[0].Volume = wd("425352958651173079329218259289.71026432") }},
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
