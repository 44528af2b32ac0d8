package schema

import (
	"errors"
	"strconv"

	"github.com/klagg/klagg/decimal"
)

// The decoder below is hand-written because encoding/json costs about 2 µs
// and 8 allocations per trade (see BenchmarkDecodeBinanceJSON) while the
// hot path must allocate nothing. It is a strict recursive-descent parser of
// RFC 8259 for the parts it reads and for the values it skips, fuzzed against
// encoding/json (FuzzDecodeBinanceJSON).

const maxJSONDepth = 32

var (
	errSyntax   = errors.New("json syntax")
	errTooDeep  = errors.New("json nested too deeply")
	errTrailing = errors.New("json: data after the object")
	errNumber   = errors.New("not an integer")
	errDecimal  = errors.New("not a decimal number")
	errBool     = errors.New("not a boolean")
	errString   = errors.New("not a string")
)

// field bits, also the required set.
const (
	fieldS = 1 << iota
	fieldA
	fieldP
	fieldQ
	fieldF
	fieldL
	fieldT
	fieldM
	fieldTradeID // "t" of a raw trade event
	required     = fieldA | fieldP | fieldQ | fieldF | fieldL | fieldT | fieldM
	requiredRaw  = fieldTradeID | fieldP | fieldQ | fieldT | fieldM
)

var fieldNames = [...]struct {
	bit  int
	name string
}{{fieldTradeID, "t"}, {fieldA, "a"}, {fieldP, "p"}, {fieldQ, "q"}, {fieldF, "f"}, {fieldL, "l"}, {fieldT, "T"}, {fieldM, "m"}}

type jsonScanner struct {
	b       []byte
	i       int
	seen    int
	t       *Trade
	raw     bool  // "e":"trade": a raw trade, not an aggregate
	tradeID int64 // its "t"
}

// DecodeBinanceJSON decodes a Binance aggTrade event, or a raw trade event
// ("e":"trade", id in "t"; or no "e", a "t" and none of "a", "f", "l"),
// plain or inside a combined-stream wrapper {"stream":…,"data":{…}}, into
// t. A raw trade is an aggregate of itself: AggID, FirstID and LastID are
// its id, which grows per symbol as an aggregate id does (the order
// duplicates are told by). The "a" and "b" order ids older raw events
// carried are ignored. When the event has no "s", key is the symbol. It
// checks syntax and presence only; call ValidateConfig.Validate for the
// value rules. Errors are *InvalidTradeError. t.Symbol aliases value or
// key.
func DecodeBinanceJSON(value, key []byte, t *Trade) error {
	*t = Trade{}
	s := jsonScanner{b: value, t: t}
	s.ws()
	if err := s.object(0); err != nil {
		return err
	}
	s.ws()
	if s.i != len(s.b) {
		return invalid(ReasonMalformed, "", errTrailing)
	}
	if s.seen&fieldS == 0 {
		if len(key) == 0 {
			return invalid(ReasonMissingField, "s", nil)
		}
		t.Symbol = key
	}
	want := required
	if s.raw || s.seen&fieldTradeID != 0 && s.seen&(fieldA|fieldF|fieldL) == 0 {
		want = requiredRaw
		t.AggID, t.FirstID, t.LastID = s.tradeID, s.tradeID, s.tradeID
	}
	if s.seen&want != want {
		for _, f := range fieldNames {
			if want&f.bit != 0 && s.seen&f.bit == 0 {
				return invalid(ReasonMissingField, f.name, nil)
			}
		}
	}
	return nil
}

func (s *jsonScanner) ws() {
	for s.i < len(s.b) && isSpace[s.b[s.i]] {
		s.i++
	}
}

var isSpace = [256]bool{' ': true, '\t': true, '\n': true, '\r': true}

// plain marks the bytes a string may hold without a closer look.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func (s *jsonScanner) syntax() error {
	return invalid(ReasonMalformed, "", errSyntax)
}

// object parses an object whose members are aggTrade fields; at depth 0 a
// "data" member holding an object is the combined-stream payload.
func (s *jsonScanner) object(depth int) error {
	if s.i >= len(s.b) || s.b[s.i] != '{' {
		return s.syntax()
	}
	s.i++
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		return nil
	}
	for {
		s.ws()
		key, escaped, err := s.str()
		if err != nil {
			return err
		}
		s.ws()
		if s.i >= len(s.b) || s.b[s.i] != ':' {
			return s.syntax()
		}
		s.i++
		s.ws()
		if escaped {
			err = s.skip(depth + 1)
		} else {
			err = s.member(key, depth)
		}
		if err != nil {
			return err
		}
		s.ws()
		if s.i >= len(s.b) {
			return s.syntax()
		}
		switch s.b[s.i] {
		case ',':
			s.i++
		case '}':
			s.i++
			return nil
		default:
			return s.syntax()
		}
	}
}

func (s *jsonScanner) member(key []byte, depth int) error {
	t := s.t
	var err error
	if len(key) == 1 {
		switch key[0] {
		case 'e':
			v, esc, err := s.str()
			if err != nil {
				return invalidField(err, "e")
			}
			switch {
			case esc:
				return invalid(ReasonWrongEvent, "e", nil)
			case string(v) == "trade":
				s.raw = true
			case string(v) != "aggTrade":
				return invalid(ReasonWrongEvent, "e", nil)
			}
			return nil
		case 't':
			s.tradeID, err = s.int()
			s.seen |= fieldTradeID
			return invalidField(err, "t")
		case 'E':
			t.EventTime, err = s.int()
			return invalidField(err, "E")
		case 's':
			v, esc, err := s.str()
			if err != nil {
				return invalidField(err, "s")
			}
			if esc {
				return invalid(ReasonInvalidSymbol, "s", errors.New("escaped characters in symbol"))
			}
			t.Symbol = v
			s.seen |= fieldS
			return nil
		case 'a':
			t.AggID, err = s.int()
			s.seen |= fieldA
			return invalidField(err, "a")
		case 'p':
			t.Price, err = s.decimal()
			s.seen |= fieldP
			if err != nil {
				return decimalReason(err, ReasonInvalidPrice, "p")
			}
			return nil
		case 'q':
			t.Quantity, err = s.decimal()
			s.seen |= fieldQ
			if err != nil {
				return decimalReason(err, ReasonInvalidQuantity, "q")
			}
			return nil
		case 'f':
			t.FirstID, err = s.int()
			s.seen |= fieldF
			return invalidField(err, "f")
		case 'l':
			t.LastID, err = s.int()
			s.seen |= fieldL
			return invalidField(err, "l")
		case 'T':
			t.Time, err = s.int()
			s.seen |= fieldT
			return invalidField(err, "T")
		case 'm':
			t.BuyerMaker, err = s.boolean()
			s.seen |= fieldM
			return invalidField(err, "m")
		}
	}
	if depth == 0 && string(key) == "data" && s.i < len(s.b) && s.b[s.i] == '{' {
		return s.object(1)
	}
	return s.skip(depth + 1)
}

func invalidField(err error, field string) error {
	if err == nil {
		return nil
	}
	var ite *InvalidTradeError
	if errors.As(err, &ite) {
		return err
	}
	return invalid(ReasonMalformed, field, err)
}

// str reads a string and returns its raw bytes between the quotes, and
// whether it holds escapes (which the caller then does not interpret).
func (s *jsonScanner) str() ([]byte, bool, error) {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return nil, false, invalid(ReasonMalformed, "", errString)
	}
	s.i++
	start := s.i
	escaped := false
	for s.i < len(s.b) {
		for s.i < len(s.b) && plain[s.b[s.i]] {
			s.i++
		}
		if s.i >= len(s.b) {
			break
		}
		c := s.b[s.i]
		switch {
		case c == '"':
			v := s.b[start:s.i]
			s.i++
			return v, escaped, nil
		case c == '\\':
			escaped = true
			if s.i+1 >= len(s.b) {
				return nil, false, s.syntax()
			}
			switch s.b[s.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i += 2
			case 'u':
				if s.i+6 > len(s.b) {
					return nil, false, s.syntax()
				}
				for _, h := range s.b[s.i+2 : s.i+6] {
					if !isHex(h) {
						return nil, false, s.syntax()
					}
				}
				s.i += 6
			default:
				return nil, false, s.syntax()
			}
		case c < 0x20:
			return nil, false, s.syntax()
		default:
			s.i++
		}
	}
	return nil, false, s.syntax()
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// int reads a JSON integer (no fraction, no exponent) that fits an int64,
// in one pass.
func (s *jsonScanner) int() (int64, error) {
	b, i := s.b, s.i
	neg := i < len(b) && b[i] == '-'
	if neg {
		i++
	}
	start := i
	var n uint64
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		if i-start == 19 {
			return 0, errNumber // more than 19 digits cannot fit
		}
		n = n*10 + uint64(b[i]-'0')
		i++
	}
	digits := i - start
	switch {
	case digits == 0, digits > 1 && b[start] == '0': // JSON forbids leading zeros
		return 0, errNumber
	case i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E'):
		return 0, errNumber
	case neg && n > 1<<63, !neg && n > 1<<63-1:
		return 0, errNumber
	}
	s.i = i
	if neg {
		return -int64(n), nil
	}
	return int64(n), nil
}

// decimal reads a price or quantity: a JSON number, or a string holding one
// (Binance sends strings), straight into a decimal.Fixed: no float on the
// way, so "28165.47000000" is 2816547000000 × 10^-8 exactly. NaN, Inf, hex
// and underscores are refused by the grammar.
func (s *jsonScanner) decimal() (decimal.Fixed, error) {
	var num []byte
	if s.i < len(s.b) && s.b[s.i] == '"' {
		v, esc, err := s.str()
		if err != nil {
			return 0, err
		}
		if esc {
			return 0, errDecimal
		}
		if end, ok := scanNumber(v, 0); !ok || end != len(v) {
			return 0, errDecimal
		}
		num = v
	} else {
		start := s.i
		end, ok := scanNumber(s.b, s.i)
		if !ok {
			return 0, errDecimal
		}
		s.i = end
		num = s.b[start:end]
	}
	return decimal.ParseFixed(num)
}

// scanNumber matches the JSON number grammar at b[i:] and returns its end.
func scanNumber(b []byte, i int) (int, bool) {
	if i < len(b) && b[i] == '-' {
		i++
	}
	if i >= len(b) {
		return i, false
	}
	if b[i] == '0' {
		i++
	} else if b[i] >= '1' && b[i] <= '9' {
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	} else {
		return i, false
	}
	if i < len(b) && b[i] == '.' {
		i++
		d := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == d {
			return i, false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		d := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == d {
			return i, false
		}
	}
	return i, true
}

func (s *jsonScanner) boolean() (bool, error) {
	if s.hasLit("true") {
		return true, nil
	}
	if s.hasLit("false") {
		return false, nil
	}
	return false, errBool
}

func (s *jsonScanner) hasLit(lit string) bool {
	if len(s.b)-s.i >= len(lit) && string(s.b[s.i:s.i+len(lit)]) == lit {
		s.i += len(lit)
		return true
	}
	return false
}

// skip parses and discards any JSON value.
func (s *jsonScanner) skip(depth int) error {
	if depth > maxJSONDepth {
		return invalid(ReasonMalformed, "", errTooDeep)
	}
	if s.i >= len(s.b) {
		return s.syntax()
	}
	switch c := s.b[s.i]; {
	case c == '"':
		_, _, err := s.str()
		return err
	case c == '{' || c == '[':
		closer := byte('}')
		if c == '[' {
			closer = ']'
		}
		s.i++
		s.ws()
		if s.i < len(s.b) && s.b[s.i] == closer {
			s.i++
			return nil
		}
		for {
			s.ws()
			if c == '{' {
				if _, _, err := s.str(); err != nil {
					return err
				}
				s.ws()
				if s.i >= len(s.b) || s.b[s.i] != ':' {
					return s.syntax()
				}
				s.i++
				s.ws()
			}
			if err := s.skip(depth + 1); err != nil {
				return err
			}
			s.ws()
			if s.i >= len(s.b) {
				return s.syntax()
			}
			if s.b[s.i] == ',' {
				s.i++
				continue
			}
			if s.b[s.i] == closer {
				s.i++
				return nil
			}
			return s.syntax()
		}
	case c == 't':
		if s.hasLit("true") {
			return nil
		}
	case c == 'f':
		if s.hasLit("false") {
			return nil
		}
	case c == 'n':
		if s.hasLit("null") {
			return nil
		}
	default:
		if end, ok := scanNumber(s.b, s.i); ok {
			s.i = end
			return nil
		}
	}
	return s.syntax()
}

// AppendBinanceJSON appends t as a Binance aggTrade event, prices and
// quantities as decimal strings the way Binance sends them.
func AppendBinanceJSON(b []byte, t *Trade) []byte {
	b = append(b, `{"e":"aggTrade","E":`...)
	b = strconv.AppendInt(b, max(t.EventTime, t.Time), 10)
	b = append(b, `,"s":"`...)
	b = append(b, t.Symbol...)
	b = append(b, `","a":`...)
	b = strconv.AppendInt(b, t.AggID, 10)
	b = append(b, `,"p":"`...)
	b = t.Price.Append(b)
	b = append(b, `","q":"`...)
	b = t.Quantity.Append(b)
	b = append(b, `","f":`...)
	b = strconv.AppendInt(b, t.FirstID, 10)
	b = append(b, `,"l":`...)
	b = strconv.AppendInt(b, t.LastID, 10)
	b = append(b, `,"T":`...)
	b = strconv.AppendInt(b, t.Time, 10)
	b = append(b, `,"m":`...)
	b = strconv.AppendBool(b, t.BuyerMaker)
	return append(b, `,"M":true}`...)
}
