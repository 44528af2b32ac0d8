package schema

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"

	"github.com/hamba/avro/v2"

	"github.com/klagg/klagg/decimal"
)

// SymbolState is one symbol's engine state in one shard: the value of the
// compacted state topic, keyed by symbol (state.avsc). The shard-wide fields
// (Watermark onwards) are repeated in every record so that a restore needs
// nothing but the latest record of each key.
type SymbolState struct {
	Symbol            string
	LastAggID         int64
	LastTradeTime     int64
	SourceOffset      int64
	Watermark         int64
	ShardMaxTradeTime int64
	AcceptedAt        int64
	AcceptedTradeTime int64
	Candles           []CandleState
	// Since state schema 2; empty and 0 in records resolved from schema 1.
	Writer    string
	WrittenAt int64
	// Read, not written: the writer's state schema (1, 2 or 3), and for
	// schemas 1 and 2, how many of the record's doubles had a shortest
	// decimal that was not exact at the field's scale and were rounded
	// half to even (the one inexact step, DESIGN.md "State records and their
	// schemas").
	FromSchema int
	Rounded    int
}

// CandleState is the open candle of one period of a symbol. Prices and
// volumes are exact; the quote sums keep all sixteen fractional digits of
// their products, so a restored candle rounds exactly as an unbroken one.
type CandleState struct {
	Period              string
	OpenTime            int64
	Open                decimal.Fixed
	High                decimal.Fixed
	Low                 decimal.Fixed
	Close               decimal.Fixed
	Volume              decimal.Wide
	QuoteVolume         decimal.Quote
	TakerBuyVolume      decimal.Wide
	TakerBuyQuoteVolume decimal.Quote
	TradeCount          int64
	FirstTradeID        int64
	LastTradeID         int64
	OpenTradeTime       int64
	Version             int64
}

// stateWire is SymbolState as hamba/avro reads and writes state.avsc.
type stateWire struct {
	Symbol            string       `avro:"symbol"`
	LastAggID         int64        `avro:"last_agg_id"`
	LastTradeTime     int64        `avro:"last_trade_time"`
	SourceOffset      int64        `avro:"source_offset"`
	Watermark         int64        `avro:"watermark"`
	ShardMaxTradeTime int64        `avro:"shard_max_trade_time"`
	AcceptedAt        int64        `avro:"accepted_at"`
	AcceptedTradeTime int64        `avro:"accepted_trade_time"`
	Candles           []candleWire `avro:"candles"`
	Writer            string       `avro:"writer"`
	WrittenAt         int64        `avro:"written_at"`
}

type candleWire struct {
	Period              string   `avro:"period"`
	OpenTime            int64    `avro:"open_time"`
	Open                [8]byte  `avro:"open"`
	High                [8]byte  `avro:"high"`
	Low                 [8]byte  `avro:"low"`
	Close               [8]byte  `avro:"close"`
	Volume              [16]byte `avro:"volume"`
	QuoteVolume         [16]byte `avro:"quote_volume"`
	TakerBuyVolume      [16]byte `avro:"taker_buy_volume"`
	TakerBuyQuoteVolume [16]byte `avro:"taker_buy_quote_volume"`
	TradeCount          int64    `avro:"trade_count"`
	FirstTradeID        int64    `avro:"first_trade_id"`
	LastTradeID         int64    `avro:"last_trade_id"`
	OpenTradeTime       int64    `avro:"open_trade_time"`
	Version             int64    `avro:"version"`
}

// stateV2Wire reads state schemas 1 and 2, whose sums were doubles.
type stateV2Wire struct {
	Symbol            string         `avro:"symbol"`
	LastAggID         int64          `avro:"last_agg_id"`
	LastTradeTime     int64          `avro:"last_trade_time"`
	SourceOffset      int64          `avro:"source_offset"`
	Watermark         int64          `avro:"watermark"`
	ShardMaxTradeTime int64          `avro:"shard_max_trade_time"`
	AcceptedAt        int64          `avro:"accepted_at"`
	AcceptedTradeTime int64          `avro:"accepted_trade_time"`
	Candles           []candleV2Wire `avro:"candles"`
	Writer            string         `avro:"writer"`
	WrittenAt         int64          `avro:"written_at"`
}

type candleV2Wire struct {
	Period              string  `avro:"period"`
	OpenTime            int64   `avro:"open_time"`
	Open                float64 `avro:"open"`
	High                float64 `avro:"high"`
	Low                 float64 `avro:"low"`
	Close               float64 `avro:"close"`
	Volume              float64 `avro:"volume"`
	QuoteVolume         float64 `avro:"quote_volume"`
	TakerBuyVolume      float64 `avro:"taker_buy_volume"`
	TakerBuyQuoteVolume float64 `avro:"taker_buy_quote_volume"`
	TradeCount          int64   `avro:"trade_count"`
	FirstTradeID        int64   `avro:"first_trade_id"`
	LastTradeID         int64   `avro:"last_trade_id"`
	OpenTradeTime       int64   `avro:"open_trade_time"`
	Version             int64   `avro:"version"`
}

// maxStateCandles bounds the candles of one record: one per period.
const maxStateCandles = 16

// stateAPI bounds what a corrupt state record can make the decoder allocate.
var stateAPI = avro.Config{
	MaxByteSliceSize:  1 << 16,
	MaxSliceAllocSize: maxStateCandles * 4,
}.Freeze()

// ErrInvalidState is wrapped by DecodeState for a record that decodes but
// breaks the state's invariants.
var ErrInvalidState = errors.New("invalid state record")

// ErrUnknownStateSchema is wrapped by Decode for a record whose writer
// schema (its single-object fingerprint) is none this binary knows: written
// by a newer klagg, or not a state record.
var ErrUnknownStateSchema = errors.New("state record written with an unknown schema")

// StateCodec writes state records with the current state schema (3) in
// single-object encoding, whose fingerprint names the writer schema, and
// reads records of schema 3 and of the older schemas 1 and 2, whose prices
// and sums were doubles: each double becomes its shortest decimal, rounded
// half to even at the field's scale when that decimal has more digits
// (SymbolState.Rounded counts those).
type StateCodec struct {
	prefix  []byte
	current [8]byte
	legacy  map[[8]byte]stateReader // writer fingerprint -> how to read it
}

type stateReader struct {
	schema  avro.Schema // resolved into state schema 2's shape
	version int
}

// NewStateCodec returns the state record codec.
func NewStateCodec() (*StateCodec, error) {
	p, err := Prefix(FramingSingleObject, StateSchema, 0)
	if err != nil {
		return nil, err
	}
	c := &StateCodec{prefix: p, legacy: map[[8]byte]stateReader{}}
	copy(c.current[:], p[2:10])
	v2, err := avro.Parse(stateSchemaV2Text)
	if err != nil {
		return nil, fmt.Errorf("schema: state schema 2: %w", err)
	}
	c.legacy[fingerprint(v2)] = stateReader{schema: v2, version: 2}
	v1, err := avro.Parse(stateSchemaV1Text)
	if err != nil {
		return nil, fmt.Errorf("schema: state schema 1: %w", err)
	}
	resolved, err := avro.NewSchemaCompatibility().Resolve(v2, v1)
	if err != nil {
		return nil, fmt.Errorf("schema: resolve state schema 1 into 2: %w", err)
	}
	c.legacy[fingerprint(v1)] = stateReader{schema: resolved, version: 1}
	return c, nil
}

// Encode returns the framed record of st.
func (c *StateCodec) Encode(st *SymbolState) ([]byte, error) {
	w := stateWire{Symbol: st.Symbol, LastAggID: st.LastAggID, LastTradeTime: st.LastTradeTime,
		SourceOffset: st.SourceOffset, Watermark: st.Watermark, ShardMaxTradeTime: st.ShardMaxTradeTime,
		AcceptedAt: st.AcceptedAt, AcceptedTradeTime: st.AcceptedTradeTime, Writer: st.Writer, WrittenAt: st.WrittenAt,
		Candles: make([]candleWire, len(st.Candles))}
	for i := range st.Candles {
		cs := &st.Candles[i]
		w.Candles[i] = candleWire{Period: cs.Period, OpenTime: cs.OpenTime,
			Open: price8(cs.Open), High: price8(cs.High), Low: price8(cs.Low), Close: price8(cs.Close),
			Volume: cs.Volume.Bytes16(), QuoteVolume: cs.QuoteVolume.Bytes16(),
			TakerBuyVolume: cs.TakerBuyVolume.Bytes16(), TakerBuyQuoteVolume: cs.TakerBuyQuoteVolume.Bytes16(),
			TradeCount: cs.TradeCount, FirstTradeID: cs.FirstTradeID, LastTradeID: cs.LastTradeID,
			OpenTradeTime: cs.OpenTradeTime, Version: cs.Version}
	}
	body, err := stateAPI.Marshal(StateSchema, &w)
	if err != nil {
		return nil, fmt.Errorf("schema: encode state %q: %w", st.Symbol, err)
	}
	return append(append(make([]byte, 0, len(c.prefix)+len(body)), c.prefix...), body...), nil
}

func price8(f decimal.Fixed) (b [8]byte) {
	binary.BigEndian.PutUint64(b[:], uint64(f))
	return b
}

// Decode decodes a framed state record into st and checks its invariants:
// a valid symbol, at most 16 candles, non-negative sums, positive prices
// with low <= open, close <= high, and consistent trade ids. Period names
// and alignment are the engine's to check. Errors wrap ErrInvalidState,
// ErrUnknownStateSchema, or the framing or Avro error.
func (c *StateCodec) Decode(value []byte, st *SymbolState) error {
	fp, body, err := UnframeSingleObject(value)
	if err != nil {
		return fmt.Errorf("schema: decode state: %w", err)
	}
	*st = SymbolState{}
	if fp == c.current {
		err = c.decodeCurrent(body, st)
	} else if r, ok := c.legacy[fp]; ok {
		err = decodeLegacyState(r, body, st)
	} else {
		return fmt.Errorf("schema: decode state: %w (fingerprint %x)", ErrUnknownStateSchema, fp)
	}
	if err != nil {
		return fmt.Errorf("schema: decode state: %w", err)
	}
	if err := st.validate(); err != nil {
		return fmt.Errorf("schema: decode state %q: %w: %w", st.Symbol, ErrInvalidState, err)
	}
	return nil
}

func (c *StateCodec) decodeCurrent(body []byte, st *SymbolState) error {
	var w stateWire
	if err := stateAPI.Unmarshal(StateSchema, body, &w); err != nil {
		return err
	}
	*st = SymbolState{Symbol: w.Symbol, LastAggID: w.LastAggID, LastTradeTime: w.LastTradeTime,
		SourceOffset: w.SourceOffset, Watermark: w.Watermark, ShardMaxTradeTime: w.ShardMaxTradeTime,
		AcceptedAt: w.AcceptedAt, AcceptedTradeTime: w.AcceptedTradeTime, Writer: w.Writer, WrittenAt: w.WrittenAt,
		FromSchema: 3, Candles: make([]CandleState, len(w.Candles))}
	var errs []error
	for i := range w.Candles {
		cw := &w.Candles[i]
		cs := CandleState{Period: cw.Period, OpenTime: cw.OpenTime,
			Open:       decimal.Fixed(binary.BigEndian.Uint64(cw.Open[:])),
			High:       decimal.Fixed(binary.BigEndian.Uint64(cw.High[:])),
			Low:        decimal.Fixed(binary.BigEndian.Uint64(cw.Low[:])),
			Close:      decimal.Fixed(binary.BigEndian.Uint64(cw.Close[:])),
			TradeCount: cw.TradeCount, FirstTradeID: cw.FirstTradeID, LastTradeID: cw.LastTradeID,
			OpenTradeTime: cw.OpenTradeTime, Version: cw.Version}
		var e [4]error
		cs.Volume, e[0] = decimal.WideFrom16(cw.Volume)
		cs.QuoteVolume, e[1] = decimal.QuoteFrom16(cw.QuoteVolume)
		cs.TakerBuyVolume, e[2] = decimal.WideFrom16(cw.TakerBuyVolume)
		cs.TakerBuyQuoteVolume, e[3] = decimal.QuoteFrom16(cw.TakerBuyQuoteVolume)
		errs = append(errs, e[:]...)
		st.Candles[i] = cs
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidState, err)
	}
	return nil
}

// decodeLegacyState reads a schema 1 or 2 record and converts its doubles.
func decodeLegacyState(r stateReader, body []byte, st *SymbolState) error {
	var w stateV2Wire
	if err := stateAPI.Unmarshal(r.schema, body, &w); err != nil {
		return err
	}
	*st = SymbolState{Symbol: w.Symbol, LastAggID: w.LastAggID, LastTradeTime: w.LastTradeTime,
		SourceOffset: w.SourceOffset, Watermark: w.Watermark, ShardMaxTradeTime: w.ShardMaxTradeTime,
		AcceptedAt: w.AcceptedAt, AcceptedTradeTime: w.AcceptedTradeTime, Writer: w.Writer, WrittenAt: w.WrittenAt,
		FromSchema: r.version, Candles: make([]CandleState, len(w.Candles))}
	var errs []error
	conv := func(f float64, scale int) *big.Int {
		if !(f >= 0) {
			errs = append(errs, fmt.Errorf("negative or NaN value %v", f))
			return new(big.Int)
		}
		n, exact, err := decimal.FromFloat(f, scale)
		if err != nil {
			errs = append(errs, err)
			return new(big.Int)
		}
		if !exact {
			st.Rounded++
		}
		return n
	}
	price := func(f float64) decimal.Fixed {
		n := conv(f, decimal.Scale)
		if !n.IsInt64() {
			errs = append(errs, fmt.Errorf("%w: price %v", decimal.ErrRange, f))
		}
		return decimal.Fixed(n.Int64())
	}
	wide := func(f float64) decimal.Wide {
		v, err := decimal.WideFromBig(conv(f, decimal.Scale))
		errs = append(errs, err)
		return v
	}
	quote := func(f float64) decimal.Quote {
		v, err := decimal.QuoteFromBig(conv(f, decimal.QuoteScale))
		errs = append(errs, err)
		return v
	}
	for i := range w.Candles {
		cw := &w.Candles[i]
		st.Candles[i] = CandleState{Period: cw.Period, OpenTime: cw.OpenTime,
			Open: price(cw.Open), High: price(cw.High), Low: price(cw.Low), Close: price(cw.Close),
			Volume: wide(cw.Volume), QuoteVolume: quote(cw.QuoteVolume),
			TakerBuyVolume: wide(cw.TakerBuyVolume), TakerBuyQuoteVolume: quote(cw.TakerBuyQuoteVolume),
			TradeCount: cw.TradeCount, FirstTradeID: cw.FirstTradeID, LastTradeID: cw.LastTradeID,
			OpenTradeTime: cw.OpenTradeTime, Version: cw.Version}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: state schema %d: %w", ErrInvalidState, r.version, err)
	}
	return nil
}

func (st *SymbolState) validate() error {
	if r := ValidSymbol([]byte(st.Symbol)); r != ReasonNone {
		return errors.New(r.String())
	}
	if st.LastAggID < 0 || st.SourceOffset < -1 {
		return errors.New("negative aggregate id or offset")
	}
	if len(st.Candles) == 0 || len(st.Candles) > maxStateCandles {
		return fmt.Errorf("%d candles, want 1 to %d", len(st.Candles), maxStateCandles)
	}
	for i := range st.Candles {
		c := &st.Candles[i]
		if c.Open <= 0 || c.High <= 0 || c.Low <= 0 || c.Close <= 0 {
			return fmt.Errorf("candle %s: price not positive", c.Period)
		}
		if c.Low > c.High || c.Open < c.Low || c.Open > c.High || c.Close < c.Low || c.Close > c.High {
			return fmt.Errorf("candle %s: open or close outside [low, high]", c.Period)
		}
		if !c.Volume.Room() || !c.QuoteVolume.Room() || !c.TakerBuyVolume.Room() || !c.TakerBuyQuoteVolume.Room() {
			return fmt.Errorf("candle %s: a sum past 2^125", c.Period)
		}
		if c.TradeCount < 0 {
			return fmt.Errorf("candle %s: negative trade count", c.Period)
		}
		if c.TradeCount == 0 {
			if c.FirstTradeID != -1 || c.LastTradeID != -1 {
				return fmt.Errorf("candle %s: no trades but trade ids set", c.Period)
			}
		} else if c.FirstTradeID < 0 || c.LastTradeID < 0 {
			return fmt.Errorf("candle %s: trades but negative trade ids", c.Period)
		}
	}
	return nil
}
