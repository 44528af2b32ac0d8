package decimal

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/bits"
	"strconv"
	"strings"
)

// Scale is the fractional digits of Fixed and Wide: Binance's eight.
const Scale = 8

// QuoteScale is the fractional digits of Quote: those of a product of two
// Fixed values.
const QuoteScale = 2 * Scale

const unit = 100_000_000 // 10^Scale

// Parse errors, wrapped by ParseFixed.
var (
	ErrSyntax    = errors.New("decimal: not a decimal number")
	ErrPrecision = errors.New("decimal: more than 8 fractional digits")
	ErrRange     = errors.New("decimal: out of range")
)

// Fixed is a decimal with Scale fractional digits: the value is
// int64(f) × 10^-8. Its range is ±92,233,720,368.54775807.
type Fixed int64

// MaxFixed is the greatest Fixed.
const MaxFixed = Fixed(math.MaxInt64)

var pow10 = [...]uint64{1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13,
	1e14, 1e15, 1e16, 1e17, 1e18, 1e19}

// ParseFixed parses decimal text: an optional '-', digits, an optional
// fraction and an optional exponent (the JSON number grammar). The value
// must be exact at Scale digits: "1.000000001" is ErrPrecision, while
// "1.0000000010e1" and "1.0000000000" are exact. It allocates nothing.
func ParseFixed(b []byte) (Fixed, error) {
	if n, ok := parsePlain(b); ok {
		return n, nil
	}
	return parseGeneral(b)
}

// parsePlain is the common case: unsigned, no exponent, at most 18 digits
// and at most 8 of them fractional.
func parsePlain(b []byte) (Fixed, bool) {
	var m uint64
	digits, frac := 0, -1
	for i, c := range b {
		switch {
		case c >= '0' && c <= '9':
			m = m*10 + uint64(c-'0')
			digits++
		case c == '.' && frac < 0 && i > 0 && i < len(b)-1:
			frac = len(b) - i - 1
		default:
			return 0, false
		}
	}
	switch {
	case digits == 0 || digits > 18 || frac > Scale:
		return 0, false
	case len(b) > 1 && b[0] == '0' && b[1] != '.': // a leading zero: JSON refuses it
		return 0, false
	case frac < 0:
		frac = 0
	}
	if m > math.MaxInt64/pow10[Scale-frac] {
		return 0, false
	}
	return Fixed(m * pow10[Scale-frac]), true
}

// number is decimal text split by the JSON number grammar.
type number struct {
	neg             bool
	intDigits, frac []byte
	exp             int // capped at ±10,000: far beyond any Fixed either way
}

// splitNumber matches the JSON number grammar: -?int(.frac)?([eE][+-]?exp)?
func splitNumber(b []byte) (number, bool) {
	var n number
	if n.neg = len(b) > 0 && b[0] == '-'; n.neg {
		b = b[1:]
	}
	digits := func(i int) int {
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i
	}
	i := digits(0)
	n.intDigits = b[:i]
	if i == 0 || (i > 1 && b[0] == '0') {
		return n, false
	}
	if i < len(b) && b[i] == '.' {
		j := digits(i + 1)
		if n.frac = b[i+1 : j]; len(n.frac) == 0 {
			return n, false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		eneg := i < len(b) && b[i] == '-'
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(i)
		if j == i {
			return n, false
		}
		for _, c := range b[i:j] {
			n.exp = min(n.exp*10+int(c-'0'), 10_000)
		}
		if eneg {
			n.exp = -n.exp
		}
		i = j
	}
	return n, i == len(b)
}

func parseGeneral(b []byte) (Fixed, error) {
	num, ok := splitNumber(b)
	if !ok {
		return 0, ErrSyntax
	}
	neg, intDigits, fracDigits, exp := num.neg, num.intDigits, num.frac, num.exp
	// value = digits × 10^(exp - len(frac)); n = digits × 10^shift.
	for len(fracDigits) > 0 && fracDigits[len(fracDigits)-1] == '0' {
		fracDigits = fracDigits[:len(fracDigits)-1]
	}
	shift := exp - len(fracDigits) + Scale
	var m uint64
	zeros := 0 // trailing zeros of the digits so far, not yet multiplied in
	over := false
	for _, part := range [2][]byte{intDigits, fracDigits} {
		for _, c := range part {
			if c == '0' {
				zeros++
				continue
			}
			if m != 0 || zeros > 0 {
				m, over = mulPow10(m, zeros+1, over)
			}
			m, zeros = m+uint64(c-'0'), 0
			if m < uint64(c-'0') {
				over = true
			}
		}
	}
	shift += zeros
	if m == 0 && !over {
		return 0, nil
	}
	if shift < 0 { // the last non-zero digit is below 10^-8
		return 0, ErrPrecision
	}
	if m, over = mulPow10(m, shift, over); over || m > math.MaxInt64 {
		return 0, ErrRange
	}
	if neg {
		return -Fixed(m), nil
	}
	return Fixed(m), nil
}

// mulPow10 returns m × 10^k, reporting overflow past uint64 in over.
func mulPow10(m uint64, k int, over bool) (uint64, bool) {
	for ; k > 0 && !over; k-- {
		hi, lo := bits.Mul64(m, 10)
		m, over = lo, hi != 0
	}
	return m, over || k > 0 && m != 0
}

// Append appends f's text with exactly Scale fractional digits, as Binance
// prints it: "28165.47000000".
func (f Fixed) Append(dst []byte) []byte {
	u := uint64(f)
	if f < 0 {
		dst = append(dst, '-')
		u = -u
	}
	return appendScaled(strconv.AppendUint(dst, u/unit, 10), u%unit)
}

// appendScaled appends '.' and frac (< 10^8) as exactly eight digits.
func appendScaled(dst []byte, frac uint64) []byte {
	var buf [Scale + 1]byte
	buf[0] = '.'
	for i := Scale; i > 0; i-- {
		buf[i] = byte('0' + frac%10)
		frac /= 10
	}
	return append(dst, buf[:]...)
}

// appendScaled8 appends frac (< 10^8) as eight more digits, no point.
func appendScaled8(dst []byte, frac uint64) []byte {
	var buf [Scale]byte
	for i := Scale - 1; i >= 0; i-- {
		buf[i] = byte('0' + frac%10)
		frac /= 10
	}
	return append(dst, buf[:]...)
}

func (f Fixed) String() string { return string(f.Append(nil)) }

// Float64 returns the nearest float64, for display and metrics only.
func (f Fixed) Float64() float64 { return float64(f) / unit }

// Wide is a non-negative decimal with Scale fractional digits in 128 bits:
// the value is (hi·2^64 + lo) × 10^-8. The zero value is 0.
type Wide struct{ hi, lo uint64 }

// WideOf returns f as a Wide; f must not be negative.
func WideOf(f Fixed) Wide { return Wide{lo: uint64(f)} }

// AddFixed returns w + f for a non-negative f.
func (w Wide) AddFixed(f Fixed) Wide {
	lo, c := bits.Add64(w.lo, uint64(f), 0)
	return Wide{hi: w.hi + c, lo: lo}
}

// Add returns w + v.
func (w Wide) Add(v Wide) Wide {
	lo, c := bits.Add64(w.lo, v.lo, 0)
	return Wide{hi: w.hi + v.hi + c, lo: lo}
}

// IsZero reports whether w is 0.
func (w Wide) IsZero() bool { return w.hi|w.lo == 0 }

// Room reports whether w is below 2^125, so that adding any two values
// below 2^126 and 2^125 to it stays below 2^127 (see the package doc).
func (w Wide) Room() bool { return w.hi < 1<<61 }

// Append appends w's text with exactly Scale fractional digits.
func (w Wide) Append(dst []byte) []byte {
	q, r := divmod(w.hi, w.lo, unit)
	return appendScaled(appendU128(dst, q.hi, q.lo), r)
}

func (w Wide) String() string { return string(w.Append(nil)) }

// Float64 returns the nearest float64, for display only.
func (w Wide) Float64() float64 {
	var buf [48]byte
	f, _ := strconv.ParseFloat(string(w.Append(buf[:0])), 64) // the text is always a valid number
	return f
}

// Big returns w's unscaled integer.
func (w Wide) Big() *big.Int { return u128Big(w.hi, w.lo) }

// WideFromBig returns the Wide whose unscaled integer is n, or ErrRange
// when n is negative or not below 2^127.
func WideFromBig(n *big.Int) (Wide, error) {
	hi, lo, err := bigU128(n)
	return Wide{hi: hi, lo: lo}, err
}

// Quote is a non-negative decimal with QuoteScale fractional digits in 128
// bits: an exact sum of products of Fixed values.
type Quote struct{ hi, lo uint64 }

// Product returns p × q exactly; both must be non-negative.
func Product(p, q Fixed) Quote {
	hi, lo := bits.Mul64(uint64(p), uint64(q))
	return Quote{hi: hi, lo: lo}
}

// Add returns s + v.
func (s Quote) Add(v Quote) Quote {
	lo, c := bits.Add64(s.lo, v.lo, 0)
	return Quote{hi: s.hi + v.hi + c, lo: lo}
}

// IsZero reports whether s is 0.
func (s Quote) IsZero() bool { return s.hi|s.lo == 0 }

// Room reports whether s is below 2^125 (see Wide.Room).
func (s Quote) Room() bool { return s.hi < 1<<61 }

// Round returns s at Scale digits, rounded half to even: the one rounding
// klagg does (DESIGN.md, "Exact decimals").
func (s Quote) Round() Wide {
	q, r := divmod(s.hi, s.lo, unit)
	if r > unit/2 || r == unit/2 && q.lo&1 == 1 {
		lo, c := bits.Add64(q.lo, 1, 0)
		q = Wide{hi: q.hi + c, lo: lo}
	}
	return q
}

// Append appends s's exact text with QuoteScale fractional digits.
func (s Quote) Append(dst []byte) []byte {
	q, r := divmod(s.hi, s.lo, unit)
	w, r2 := divmod(q.hi, q.lo, unit)
	return appendScaled8(appendScaled(appendU128(dst, w.hi, w.lo), r2), r)
}

// Big returns s's unscaled integer.
func (s Quote) Big() *big.Int { return u128Big(s.hi, s.lo) }

// QuoteFromBig returns the Quote whose unscaled integer is n, or ErrRange
// when n is negative or not below 2^127.
func QuoteFromBig(n *big.Int) (Quote, error) {
	hi, lo, err := bigU128(n)
	return Quote{hi: hi, lo: lo}, err
}

// divmod divides the 128-bit hi:lo by d.
func divmod(hi, lo, d uint64) (Wide, uint64) {
	qhi, r := hi/d, hi%d
	qlo, r := bits.Div64(r, lo, d)
	return Wide{hi: qhi, lo: qlo}, r
}

const e19 = 10_000_000_000_000_000_000

// appendU128 appends hi:lo in decimal; hi:lo must be below 10^38.
func appendU128(dst []byte, hi, lo uint64) []byte {
	if hi == 0 {
		return strconv.AppendUint(dst, lo, 10)
	}
	q, r := divmod(hi, lo, e19)
	dst = appendU128(dst, q.hi, q.lo)
	var buf [19]byte
	for i := len(buf) - 1; i >= 0; i-- {
		buf[i] = byte('0' + r%10)
		r /= 10
	}
	return append(dst, buf[:]...)
}

func u128Big(hi, lo uint64) *big.Int {
	n := new(big.Int).SetUint64(hi)
	return n.Lsh(n, 64).Or(n, new(big.Int).SetUint64(lo))
}

var max127 = new(big.Int).Lsh(big.NewInt(1), 127)

func bigU128(n *big.Int) (hi, lo uint64, err error) {
	if n.Sign() < 0 || n.Cmp(max127) >= 0 {
		return 0, 0, fmt.Errorf("%w: %s is not in [0, 2^127)", ErrRange, n)
	}
	lo = new(big.Int).And(n, new(big.Int).SetUint64(math.MaxUint64)).Uint64()
	return new(big.Int).Rsh(n, 64).Uint64(), lo, nil
}

// MarshalText returns Append's text, so JSON carries Binance's strings.
func (f Fixed) MarshalText() ([]byte, error) { return f.Append(nil), nil }

// UnmarshalText parses text with ParseFixed.
func (f *Fixed) UnmarshalText(b []byte) error {
	v, err := ParseFixed(b)
	if err != nil {
		return fmt.Errorf("%w: %q", err, b)
	}
	*f = v
	return nil
}

// MarshalText returns Append's text.
func (w Wide) MarshalText() ([]byte, error) { return w.Append(nil), nil }

// UnmarshalText parses a non-negative decimal of at most Scale fractional
// digits.
func (w *Wide) UnmarshalText(b []byte) error {
	v, err := ParseWide(string(b))
	if err != nil {
		return err
	}
	*w = v
	return nil
}

// ParseWide parses a non-negative decimal of at most Scale fractional
// digits into a Wide. It is for tests, files and tools, not hot paths.
func ParseWide(s string) (Wide, error) {
	r, ok := new(big.Rat).SetString(s)
	if !ok || strings.ContainsAny(s, "/") {
		return Wide{}, fmt.Errorf("%w: %q", ErrSyntax, s)
	}
	r.Mul(r, new(big.Rat).SetInt64(unit))
	if !r.IsInt() {
		return Wide{}, fmt.Errorf("%w: %q", ErrPrecision, s)
	}
	return WideFromBig(r.Num())
}

// Rat returns f's exact value.
func (f Fixed) Rat() *big.Rat { return new(big.Rat).SetFrac(big.NewInt(int64(f)), big.NewInt(unit)) }

// Rat returns w's exact value.
func (w Wide) Rat() *big.Rat { return new(big.Rat).SetFrac(w.Big(), big.NewInt(unit)) }

// UnmarshalJSON reads a JSON number or a string holding one.
func (f *Fixed) UnmarshalJSON(b []byte) error {
	return f.UnmarshalText(unquote(b))
}

// UnmarshalJSON reads a JSON number or a string holding one.
func (w *Wide) UnmarshalJSON(b []byte) error {
	return w.UnmarshalText(unquote(b))
}

func unquote(b []byte) []byte {
	if len(b) >= 2 && b[0] == '"' && b[len(b)-1] == '"' {
		return b[1 : len(b)-1]
	}
	return b
}
