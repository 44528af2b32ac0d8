package schema

import (
	"errors"
	"fmt"
	"math"

	"github.com/hamba/avro/v2"
	"github.com/hamba/avro/v2/soe"
)

// SymbolState is one symbol's engine state in one shard: the value of the
// compacted state topic, keyed by symbol (state.avsc). The shard-wide fields
// (Watermark onwards) are repeated in every record so that a restore needs
// nothing but the latest record of each key.
type SymbolState struct {
	Symbol            string        `avro:"symbol"`
	LastAggID         int64         `avro:"last_agg_id"`
	LastTradeTime     int64         `avro:"last_trade_time"`
	SourceOffset      int64         `avro:"source_offset"`
	Watermark         int64         `avro:"watermark"`
	ShardMaxTradeTime int64         `avro:"shard_max_trade_time"`
	AcceptedAt        int64         `avro:"accepted_at"`
	AcceptedTradeTime int64         `avro:"accepted_trade_time"`
	Candles           []CandleState `avro:"candles"`
	// Since state schema 2; empty and 0 in records resolved from schema 1.
	Writer    string `avro:"writer"`
	WrittenAt int64  `avro:"written_at"`
}

// CandleState is the open candle of one period of a symbol.
type CandleState struct {
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

// StateCodec writes state records with the current state schema in
// single-object encoding, whose fingerprint names the writer schema, and
// reads records of the current schema and of every older one embedded in
// the binary, resolving them into the current one (new fields take their
// defaults).
type StateCodec struct {
	prefix  []byte
	readers map[[8]byte]avro.Schema // writer fingerprint -> schema to decode with
}

// NewStateCodec returns the state record codec.
func NewStateCodec() (*StateCodec, error) {
	p, err := Prefix(FramingSingleObject, StateSchema, 0)
	if err != nil {
		return nil, err
	}
	c := &StateCodec{prefix: p, readers: map[[8]byte]avro.Schema{}}
	var fp [8]byte
	copy(fp[:], p[2:10])
	c.readers[fp] = StateSchema
	for _, text := range []string{stateSchemaV1Text} {
		old, err := avro.Parse(text)
		if err != nil {
			return nil, fmt.Errorf("schema: older state schema: %w", err)
		}
		resolved, err := avro.NewSchemaCompatibility().Resolve(StateSchema, old)
		if err != nil {
			return nil, fmt.Errorf("schema: resolve an older state schema into the current one: %w", err)
		}
		h, err := soe.BuildHeader(old)
		if err != nil {
			return nil, fmt.Errorf("schema: single-object header: %w", err)
		}
		copy(fp[:], h[2:10])
		c.readers[fp] = resolved
	}
	return c, nil
}

// Schemas is how many state schemas the codec reads.
func (c *StateCodec) Schemas() int { return len(c.readers) }

// Encode returns the framed record of st.
func (c *StateCodec) Encode(st *SymbolState) ([]byte, error) {
	body, err := stateAPI.Marshal(StateSchema, st)
	if err != nil {
		return nil, fmt.Errorf("schema: encode state %q: %w", st.Symbol, err)
	}
	return append(append(make([]byte, 0, len(c.prefix)+len(body)), c.prefix...), body...), nil
}

// Decode decodes a framed state record into st and checks its invariants:
// a valid symbol, at most 16 candles, finite non-negative sums, positive
// prices with low <= open, close <= high, and consistent trade ids. Period
// names and alignment are the engine's to check. Errors wrap
// ErrInvalidState, or the framing or Avro error.
func (c *StateCodec) Decode(value []byte, st *SymbolState) error {
	fp, body, err := UnframeSingleObject(value)
	if err != nil {
		return fmt.Errorf("schema: decode state: %w", err)
	}
	reader, ok := c.readers[fp]
	if !ok {
		return fmt.Errorf("schema: decode state: %w (fingerprint %x)", ErrUnknownStateSchema, fp)
	}
	*st = SymbolState{}
	if err := stateAPI.Unmarshal(reader, body, st); err != nil {
		return fmt.Errorf("schema: decode state: %w", err)
	}
	if err := st.validate(); err != nil {
		return fmt.Errorf("schema: decode state %q: %w: %w", st.Symbol, ErrInvalidState, err)
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
		if !positiveFinite(c.Open) || !positiveFinite(c.High) || !positiveFinite(c.Low) || !positiveFinite(c.Close) {
			return fmt.Errorf("candle %s: price not positive and finite", c.Period)
		}
		if c.Low > c.High || c.Open < c.Low || c.Open > c.High || c.Close < c.Low || c.Close > c.High {
			return fmt.Errorf("candle %s: open or close outside [low, high]", c.Period)
		}
		for _, v := range [...]float64{c.Volume, c.QuoteVolume, c.TakerBuyVolume, c.TakerBuyQuoteVolume} {
			if !(v >= 0 && v <= math.MaxFloat64) {
				return fmt.Errorf("candle %s: volume negative or not finite", c.Period)
			}
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
