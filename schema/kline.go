package schema

import (
	"fmt"

	"github.com/hamba/avro/v2"

	"github.com/klagg/klagg/decimal"
)

// Kline is one candle as published on the klines topic; the field order and
// names follow kline.avsc (schema 2). OpenTime and CloseTime are Unix
// milliseconds. Prices and volumes are exact decimals of eight fractional
// digits; in JSON they are Binance's strings ("28165.47000000").
type Kline struct {
	Symbol              string        `json:"symbol"`
	Period              string        `json:"period"`
	OpenTime            int64         `json:"open_time"`
	CloseTime           int64         `json:"close_time"`
	Open                decimal.Fixed `json:"open"`
	High                decimal.Fixed `json:"high"`
	Low                 decimal.Fixed `json:"low"`
	Close               decimal.Fixed `json:"close"`
	Volume              decimal.Wide  `json:"volume"`
	QuoteVolume         decimal.Wide  `json:"quote_volume"`
	TradeCount          int64         `json:"trade_count"`
	TakerBuyVolume      decimal.Wide  `json:"taker_buy_volume"`
	TakerBuyQuoteVolume decimal.Wide  `json:"taker_buy_quote_volume"`
	FirstTradeID        int64         `json:"first_trade_id"`
	LastTradeID         int64         `json:"last_trade_id"`
	IsFinal             bool          `json:"is_final"`
	Version             int64         `json:"version"`
}

// KlineEncoder writes klines in one framing. It is immutable and safe for
// concurrent use.
//
// The body is written by hand rather than through hamba/avro's reflection
// codec: BenchmarkEncodeKline shows the difference, and TestKlineEncoding
// checks the bytes against hamba/avro for every field.
type KlineEncoder struct {
	prefix []byte
}

// NewKlineEncoder returns an encoder for framing f; schemaID is the
// registry's id of KlineSchema and is used only with FramingConfluent.
func NewKlineEncoder(f Framing, schemaID int) (*KlineEncoder, error) {
	p, err := Prefix(f, KlineSchema, schemaID)
	if err != nil {
		return nil, err
	}
	return &KlineEncoder{prefix: p}, nil
}

// Append appends the framed record of k to dst.
func (e *KlineEncoder) Append(dst []byte, k *Kline) []byte {
	return AppendKlineBody(append(dst, e.prefix...), k)
}

// AppendKlineBody appends k's Avro body, without framing.
func AppendKlineBody(b []byte, k *Kline) []byte {
	b = appendString(b, k.Symbol)
	b = appendString(b, k.Period)
	b = appendLong(b, k.OpenTime)
	b = appendLong(b, k.CloseTime)
	b = appendFixed(b, k.Open)
	b = appendFixed(b, k.High)
	b = appendFixed(b, k.Low)
	b = appendFixed(b, k.Close)
	b = appendWide(b, k.Volume)
	b = appendWide(b, k.QuoteVolume)
	b = appendLong(b, k.TradeCount)
	b = appendWide(b, k.TakerBuyVolume)
	b = appendWide(b, k.TakerBuyQuoteVolume)
	b = appendLong(b, k.FirstTradeID)
	b = appendLong(b, k.LastTradeID)
	b = appendBool(b, k.IsFinal)
	return appendLong(b, k.Version)
}

// DecodeKline decodes a framed kline value (either framing) into k. The
// strings are copied, so k outlives value. A single-object record of kline
// schema 1 (doubles) is read too, each double taken as its shortest
// decimal (FromFloat); a Confluent-framed one is taken to be schema 2,
// since its id means nothing without the registry.
func DecodeKline(value []byte, k *Kline) error {
	if fp, body, err := UnframeSingleObject(value); err == nil && string(fp[:]) == string(klineV1Fingerprint[:]) {
		return decodeKlineV1(body, k)
	}
	_, _, body, err := Unframe(value, KlineSchema)
	if err != nil {
		return fmt.Errorf("schema: decode kline: %w", err)
	}
	return DecodeKlineBody(body, k)
}

// DecodeKlineBody decodes an unframed kline schema 2 body into k; the
// strings are copied.
func DecodeKlineBody(body []byte, k *Kline) error {
	r := avroReader{b: body}
	*k = Kline{
		Symbol:              string(r.bytes()),
		Period:              string(r.bytes()),
		OpenTime:            r.long(),
		CloseTime:           r.long(),
		Open:                r.fixed(),
		High:                r.fixed(),
		Low:                 r.fixed(),
		Close:               r.fixed(),
		Volume:              r.wide(),
		QuoteVolume:         r.wide(),
		TradeCount:          r.long(),
		TakerBuyVolume:      r.wide(),
		TakerBuyQuoteVolume: r.wide(),
		FirstTradeID:        r.long(),
		LastTradeID:         r.long(),
		IsFinal:             r.boolean(),
		Version:             r.long(),
	}
	if err := r.end(); err != nil {
		return fmt.Errorf("schema: decode kline: %w", err)
	}
	return nil
}

var klineV1Fingerprint = fingerprint(klineSchemaV1)

func fingerprint(s avro.Schema) (fp [8]byte) {
	b, err := s.FingerprintUsing(avro.CRC64AvroLE)
	if err != nil {
		panic(err) // a compiled-in schema: covered by every test
	}
	copy(fp[:], b)
	return fp
}

func decodeKlineV1(body []byte, k *Kline) error {
	r := avroReader{b: body}
	*k = Kline{Symbol: string(r.bytes()), Period: string(r.bytes()), OpenTime: r.long(), CloseTime: r.long()}
	var err error
	fixed := func(f float64) decimal.Fixed {
		v, e := legacyFixed(f)
		err = firstErr(err, e)
		return v
	}
	wide := func(f float64) decimal.Wide {
		v, e := legacyWide(f, decimal.Scale)
		err = firstErr(err, e)
		return v
	}
	k.Open, k.High, k.Low, k.Close = fixed(r.double()), fixed(r.double()), fixed(r.double()), fixed(r.double())
	k.Volume, k.QuoteVolume = wide(r.double()), wide(r.double())
	k.TradeCount = r.long()
	k.TakerBuyVolume, k.TakerBuyQuoteVolume = wide(r.double()), wide(r.double())
	k.FirstTradeID, k.LastTradeID, k.IsFinal, k.Version = r.long(), r.long(), r.boolean(), r.long()
	if e := r.end(); e != nil {
		err = e
	}
	if err != nil {
		return fmt.Errorf("schema: decode kline schema 1: %w", err)
	}
	return nil
}

func firstErr(err, e error) error {
	if err != nil {
		return err
	}
	return e
}

// legacyFixed converts a double of an older schema to the Fixed of its
// shortest decimal, rounded half to even at eight digits.
func legacyFixed(f float64) (decimal.Fixed, error) {
	n, _, err := decimal.FromFloat(f, decimal.Scale)
	if err != nil {
		return 0, err
	}
	if !n.IsInt64() {
		return 0, fmt.Errorf("%w: %v", decimal.ErrRange, f)
	}
	return decimal.Fixed(n.Int64()), nil
}

// legacyWide is legacyFixed for sums, at scale digits.
func legacyWide(f float64, scale int) (decimal.Wide, error) {
	n, _, err := decimal.FromFloat(f, scale)
	if err != nil {
		return decimal.Wide{}, err
	}
	return decimal.WideFromBig(n)
}
