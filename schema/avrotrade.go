package schema

import (
	"errors"
	"fmt"
	"strings"

	"github.com/hamba/avro/v2"

	"github.com/klagg/klagg/decimal"
)

// InputFormat is the encoding of the trades topic's values.
type InputFormat uint8

const (
	// InputBinanceJSON is Binance's aggTrade or raw trade event JSON
	// (spot or futures, plain or in a combined-stream wrapper): the
	// default.
	InputBinanceJSON InputFormat = iota
	// InputAvro is the trade schema (trade.avsc), Confluent-framed or
	// single-object encoded.
	InputAvro
	// InputCoinbase is Coinbase Advanced Trade's market_trades message.
	InputCoinbase
	// InputKraken is Kraken's websocket v2 trade message.
	InputKraken
	// InputOKX is OKX's v5 trades (or trades-all) message.
	InputOKX
	// InputBybit is Bybit's v5 publicTrade message.
	InputBybit
	// InputJSON is a platform's own JSON, read with a JSONMapping.
	InputJSON
	numInputFormats
)

var inputFormatNames = [numInputFormats]string{"binance-json", "avro", "coinbase", "kraken", "okx", "bybit", "json"}

func (f InputFormat) String() string {
	if f < numInputFormats {
		return inputFormatNames[f]
	}
	return fmt.Sprintf("InputFormat(%d)", uint8(f))
}

// InputFormats lists the format names ParseInputFormat takes.
func InputFormats() []string { return inputFormatNames[:] }

// ParseInputFormat parses a format name ("binance" is binance-json).
func ParseInputFormat(s string) (InputFormat, error) {
	if s == "binance" {
		return InputBinanceJSON, nil
	}
	for f, name := range inputFormatNames {
		if s == name {
			return InputFormat(f), nil
		}
	}
	return 0, fmt.Errorf("schema: input format %q: want one of %s", s, strings.Join(inputFormatNames[:], ", "))
}

// DecodeAvroTrade decodes a framed Avro trade (Confluent or single-object,
// told apart by the first byte) into t. It checks syntax only; call
// ValidateConfig.Validate for the value rules. Errors are *InvalidTradeError.
// t.Symbol aliases value.
//
// A single-object record of trade schema 1 (doubles) is read too, each
// double taken as its shortest decimal, which for a price or quantity
// printed with at most 17 significant digits is that text again. A
// Confluent-framed record is trade schema 2 unless its id is in v1IDs.
func DecodeAvroTrade(value []byte, t *Trade) error {
	return decodeAvroTrade(value, t, nil)
}

func decodeAvroTrade(value []byte, t *Trade, v1IDs map[int]bool) error {
	f, id, body, err := Unframe(value, TradeSchema)
	switch {
	case errors.Is(err, ErrWrongFingerprint) && string(value[2:10]) == string(tradeV1Fingerprint[:]):
		return decodeAvroTradeV1(value[10:], t)
	case err != nil:
		return invalid(ReasonMalformed, "", err)
	case f == FramingConfluent && v1IDs[id]:
		return decodeAvroTradeV1(body, t)
	}
	return DecodeAvroTradeBody(body, t)
}

var tradeV1Fingerprint = fingerprint(tradeSchemaV1)

// DecodeAvroTradeBody decodes an unframed trade.avsc (schema 2) body.
func DecodeAvroTradeBody(body []byte, t *Trade) error {
	r := avroReader{b: body}
	*t = Trade{Symbol: r.bytes(), AggID: r.long()}
	price, qty := r.bytes(), r.bytes()
	t.FirstID, t.LastID, t.Time, t.BuyerMaker = r.long(), r.long(), r.long(), r.boolean()
	if err := r.end(); err != nil {
		*t = Trade{}
		return invalid(ReasonMalformed, "", err)
	}
	var err error
	if t.Price, err = decimal.FixedFromAvro(price); err != nil {
		return decimalReason(err, ReasonInvalidPrice, "price")
	}
	if t.Quantity, err = decimal.FixedFromAvro(qty); err != nil {
		return decimalReason(err, ReasonInvalidQuantity, "quantity")
	}
	return nil
}

func decodeAvroTradeV1(body []byte, t *Trade) error {
	r := avroReader{b: body}
	*t = Trade{Symbol: r.bytes(), AggID: r.long()}
	price, qty := r.double(), r.double()
	t.FirstID, t.LastID, t.Time, t.BuyerMaker = r.long(), r.long(), r.long(), r.boolean()
	if err := r.end(); err != nil {
		*t = Trade{}
		return invalid(ReasonMalformed, "", err)
	}
	var err error
	if t.Price, err = legacyFixed(price); err != nil {
		return decimalReason(err, ReasonInvalidPrice, "price")
	}
	if t.Quantity, err = legacyFixed(qty); err != nil {
		return decimalReason(err, ReasonInvalidQuantity, "quantity")
	}
	return nil
}

// AppendAvroTradeBody appends t as a trade.avsc (schema 2) body.
func AppendAvroTradeBody(b []byte, t *Trade) []byte {
	b = appendLong(b, int64(len(t.Symbol)))
	b = append(b, t.Symbol...)
	b = appendLong(b, t.AggID)
	b = appendFixed(b, t.Price)
	b = appendFixed(b, t.Quantity)
	b = appendLong(b, t.FirstID)
	b = appendLong(b, t.LastID)
	b = appendLong(b, t.Time)
	return appendBool(b, t.BuyerMaker)
}

// AppendAvroTradeBodyV1 appends t as a trade schema 1 body (doubles), as
// producers written for older klagg versions do.
func AppendAvroTradeBodyV1(b []byte, t *Trade) []byte {
	b = appendLong(b, int64(len(t.Symbol)))
	b = append(b, t.Symbol...)
	b = appendLong(b, t.AggID)
	b = appendDouble(b, t.Price.Float64())
	b = appendDouble(b, t.Quantity.Float64())
	b = appendLong(b, t.FirstID)
	b = appendLong(b, t.LastID)
	b = appendLong(b, t.Time)
	return appendBool(b, t.BuyerMaker)
}

// TradeSchemaV1Text is trade schema 1, for producers and tests of it.
var TradeSchemaV1Text = tradeSchemaV1Text

// IsTradeSchemaV1 reports whether text is trade schema 1 (by its
// canonical form's fingerprint), as a registry returns it.
func IsTradeSchemaV1(text string) bool {
	s, err := avro.Parse(text)
	if err != nil {
		return false
	}
	return fingerprint(s) == tradeV1Fingerprint
}

// TradeDecoder turns a trades record into validated trades.
type TradeDecoder struct {
	Format   InputFormat
	Validate ValidateConfig
	// V1IDs are the registry ids of trade schema 1 (doubles), for
	// Confluent-framed records; single-object ones name their schema.
	V1IDs map[int]bool
	// Mapping reads InputJSON.
	Mapping *Mapping
	// Avro, when set, reads InputAvro records of a platform's own
	// schemas instead of trade.avsc.
	Avro *AvroMapping
	// SymbolPrefix is put before every symbol ("coinbase:"), so that
	// several venues can share one klines topic.
	SymbolPrefix []byte
}

// Decode decodes and validates a record of one trade; nowMs is the wall
// clock in Unix milliseconds. It returns nil or an *InvalidTradeError
// (malformed for a record of several trades). It allocates a Batch per
// call: hot paths use DecodeBatch with one they keep. t.Symbol aliases key
// or value, or that Batch when there is a prefix.
func (d *TradeDecoder) Decode(key, value []byte, nowMs int64, t *Trade) error {
	var b Batch
	if err := d.DecodeBatch(key, value, nowMs, &b); err != nil {
		return err
	}
	if len(b.Trades) != 1 {
		return invalid(ReasonMalformed, "", fmt.Errorf("%d trades in one record", len(b.Trades)))
	}
	*t = b.Trades[0]
	return b.Errs[0]
}
