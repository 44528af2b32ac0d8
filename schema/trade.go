package schema

import (
	"errors"
	"fmt"
	"time"

	"github.com/klagg/klagg/decimal"
)

// Trade is one aggregate trade, as Binance's aggTrade event carries it.
//
// Symbol aliases the decoder's input: it is valid only until that input is
// reused. Keeping it a []byte is what lets decoding allocate nothing; copy it
// (string(t.Symbol)) to keep it.
type Trade struct {
	Symbol     []byte
	AggID      int64         // aggregate trade id ("a"), increasing per symbol
	Price      decimal.Fixed // "p", exact
	Quantity   decimal.Fixed // "q", exact
	FirstID    int64         // first raw trade id ("f")
	LastID     int64         // last raw trade id ("l")
	Time       int64         // trade time ("T"), Unix milliseconds
	BuyerMaker bool          // "m": true when the buyer was the maker, so the seller was the taker
	EventTime  int64         // "E", Unix milliseconds; 0 when absent
	// Unordered says the format carries no ordered id: AggID means
	// nothing and the trade is never a duplicate.
	Unordered bool
}

// Reason says why a trade was refused. Its String is the value of the
// dead-letter header and of the metric label, so the set is closed.
type Reason uint8

// The reasons. ReasonNone means accepted.
const (
	ReasonNone            Reason = iota
	ReasonMalformed              // not parseable JSON or Avro
	ReasonMissingField           // a required field is absent
	ReasonWrongEvent             // "e" is present and not "aggTrade"
	ReasonInvalidSymbol          // empty, or a byte outside [A-Za-z0-9._/:-]
	ReasonSymbolTooLong          // longer than MaxSymbolLen
	ReasonInvalidPrice           // zero, negative or not a decimal
	ReasonInvalidQuantity        // zero, negative or not a decimal
	ReasonInvalidTradeIDs        // negative ids, or last_trade_id < first_trade_id
	ReasonFutureTime             // trade time beyond the wall clock plus the max skew
	ReasonAncientTime            // trade time before 2010-01-01
	ReasonDuplicate              // aggregate id not above the symbol's highest accepted id
	ReasonLate                   // the trade's candle is already final for some period
	ReasonExcessPrecision        // price or quantity has more than eight fractional digits
	ReasonOutOfRange             // price or quantity above 92,233,720,368.54775807, or a candle's sums would pass 2^125
	ReasonInvalidSide            // a mapped side value that is neither a taker buy nor a taker sell
	numReasons
)

var reasonNames = [numReasons]string{
	"none", "malformed", "missing_field", "wrong_event", "invalid_symbol", "symbol_too_long",
	"invalid_price", "invalid_quantity", "invalid_trade_ids", "future_time", "ancient_time",
	"duplicate", "late", "excess_precision", "out_of_range", "invalid_side",
}

func (r Reason) String() string {
	if r >= numReasons {
		return fmt.Sprintf("reason(%d)", uint8(r))
	}
	return reasonNames[r]
}

// Reasons lists every refusal reason, for pre-creating metric series.
func Reasons() []Reason {
	out := make([]Reason, 0, numReasons-1)
	for r := ReasonNone + 1; r < numReasons; r++ {
		out = append(out, r)
	}
	return out
}

// ErrInvalidTrade is matched (errors.Is) by every *InvalidTradeError.
var ErrInvalidTrade = errors.New("invalid trade")

// InvalidTradeError is returned by the decoders and by Validate for a record
// that must go to the dead-letter topic. Reason is the class; Field names the
// offending field when there is one; Err is the underlying cause, if any.
type InvalidTradeError struct {
	Reason Reason
	Field  string
	Err    error
}

func (e *InvalidTradeError) Error() string {
	msg := "schema: invalid trade: " + e.Reason.String()
	if e.Field != "" {
		msg += " (field " + e.Field + ")"
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap returns the cause and ErrInvalidTrade.
func (e *InvalidTradeError) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrInvalidTrade, e.Err}
	}
	return []error{ErrInvalidTrade}
}

// ReasonOf returns the Reason carried by err, ReasonMalformed for any other
// non-nil error, and ReasonNone for nil.
func ReasonOf(err error) Reason {
	if err == nil {
		return ReasonNone
	}
	var ite *InvalidTradeError
	if errors.As(err, &ite) {
		return ite.Reason
	}
	return ReasonMalformed
}

func invalid(r Reason, field string, err error) error {
	return &InvalidTradeError{Reason: r, Field: field, Err: err}
}

// MaxSymbolLen bounds a symbol; Binance's longest are about 20 bytes.
const MaxSymbolLen = 32

// MinTradeTime is 2010-01-01T00:00:00Z: no exchange trade is older, so an
// older time is a unit mistake (seconds for milliseconds) or garbage.
var MinTradeTime = time.Date(2010, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()

// ValidateConfig holds the bounds Validate checks against.
type ValidateConfig struct {
	// MaxSkew is how far past the wall clock a trade time may lie.
	MaxSkew time.Duration
}

// DefaultMaxSkew is the default ValidateConfig.MaxSkew. A trade from the
// future advances the shard's watermark and would make honest trades late,
// so the bound is tight; 10s still absorbs ordinary clock drift.
const DefaultMaxSkew = 10 * time.Second

// ValidSymbol reports whether s is a usable symbol: 1 to MaxSymbolLen bytes
// of [A-Za-z0-9._/:-].
func ValidSymbol(s []byte) Reason {
	if len(s) == 0 {
		return ReasonInvalidSymbol
	}
	if len(s) > MaxSymbolLen {
		return ReasonSymbolTooLong
	}
	for _, c := range s {
		if !symbolByte[c] {
			return ReasonInvalidSymbol
		}
	}
	return ReasonNone
}

var symbolByte = func() (t [256]bool) {
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "._/:-" {
		t[c] = true
	}
	return t
}()

// Validate checks a decoded trade against every rule of README "Bad input" that
// needs no engine state; nowMs is the wall clock in Unix milliseconds. It
// returns nil or an *InvalidTradeError.
func (c ValidateConfig) Validate(t *Trade, nowMs int64) error {
	if r := ValidSymbol(t.Symbol); r != ReasonNone {
		return invalid(r, "symbol", nil)
	}
	if t.Price <= 0 {
		return invalid(ReasonInvalidPrice, "price", nil)
	}
	if t.Quantity <= 0 {
		return invalid(ReasonInvalidQuantity, "quantity", nil)
	}
	if t.AggID < 0 || t.FirstID < 0 || t.LastID < t.FirstID {
		return invalid(ReasonInvalidTradeIDs, "trade_id", nil)
	}
	if t.Time < MinTradeTime {
		return invalid(ReasonAncientTime, "trade_time", nil)
	}
	if t.Time > nowMs+c.MaxSkew.Milliseconds() {
		return invalid(ReasonFutureTime, "trade_time", nil)
	}
	return nil
}

// decimalReason classifies a decimal parse error of field: too many
// digits and out of range have their own reasons, anything else is an
// invalid price or quantity (bad).
func decimalReason(err error, bad Reason, field string) error {
	switch {
	case errors.Is(err, decimal.ErrPrecision):
		return invalid(ReasonExcessPrecision, field, err)
	case errors.Is(err, decimal.ErrRange), errors.Is(err, decimal.ErrAvroBytes):
		return invalid(ReasonOutOfRange, field, err)
	}
	return invalid(bad, field, err)
}
