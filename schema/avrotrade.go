package schema

import (
	"fmt"
)

// InputFormat is the encoding of the trades topic's values.
type InputFormat uint8

const (
	// InputBinanceJSON is Binance's aggTrade event JSON (the default).
	InputBinanceJSON InputFormat = iota
	// InputAvro is the trade schema (trade.avsc), Confluent-framed or
	// single-object encoded.
	InputAvro
)

func (f InputFormat) String() string {
	switch f {
	case InputBinanceJSON:
		return "binance-json"
	case InputAvro:
		return "avro"
	}
	return fmt.Sprintf("InputFormat(%d)", uint8(f))
}

// ParseInputFormat parses "binance-json" or "avro".
func ParseInputFormat(s string) (InputFormat, error) {
	switch s {
	case "binance-json":
		return InputBinanceJSON, nil
	case "avro":
		return InputAvro, nil
	}
	return 0, fmt.Errorf("schema: input format %q: want binance-json or avro", s)
}

// DecodeAvroTrade decodes a framed Avro trade (Confluent or single-object,
// told apart by the first byte) into t. It checks syntax only; call
// ValidateConfig.Validate for the value rules. Errors are *InvalidTradeError.
// t.Symbol aliases value.
func DecodeAvroTrade(value []byte, t *Trade) error {
	_, _, body, err := Unframe(value, TradeSchema)
	if err != nil {
		return invalid(ReasonMalformed, "", err)
	}
	return DecodeAvroTradeBody(body, t)
}

// DecodeAvroTradeBody decodes an unframed trade.avsc body.
func DecodeAvroTradeBody(body []byte, t *Trade) error {
	r := avroReader{b: body}
	*t = Trade{
		Symbol:     r.bytes(),
		AggID:      r.long(),
		Price:      r.double(),
		Quantity:   r.double(),
		FirstID:    r.long(),
		LastID:     r.long(),
		Time:       r.long(),
		BuyerMaker: r.boolean(),
	}
	if err := r.end(); err != nil {
		*t = Trade{}
		return invalid(ReasonMalformed, "", err)
	}
	return nil
}

// AppendAvroTradeBody appends t as a trade.avsc body.
func AppendAvroTradeBody(b []byte, t *Trade) []byte {
	b = appendLong(b, int64(len(t.Symbol)))
	b = append(b, t.Symbol...)
	b = appendLong(b, t.AggID)
	b = appendDouble(b, t.Price)
	b = appendDouble(b, t.Quantity)
	b = appendLong(b, t.FirstID)
	b = appendLong(b, t.LastID)
	b = appendLong(b, t.Time)
	return appendBool(b, t.BuyerMaker)
}

// TradeDecoder turns a trades record into a validated Trade.
type TradeDecoder struct {
	Format   InputFormat
	Validate ValidateConfig
}

// Decode decodes and validates one record; nowMs is the wall clock in Unix
// milliseconds. It returns nil or an *InvalidTradeError. t.Symbol aliases
// key or value.
func (d *TradeDecoder) Decode(key, value []byte, nowMs int64, t *Trade) error {
	var err error
	switch d.Format {
	case InputAvro:
		err = DecodeAvroTrade(value, t)
	default:
		err = DecodeBinanceJSON(value, key, t)
	}
	if err != nil {
		return err
	}
	return d.Validate.Validate(t, nowMs)
}
