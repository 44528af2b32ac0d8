package decimal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/bits"
	"strconv"
)

// ErrAvroBytes is wrapped for Avro decimal bytes that do not hold a value
// of the type read.
var ErrAvroBytes = errors.New("decimal: avro bytes out of range")

// AppendAvro appends f's unscaled integer as the Avro decimal logical
// type's bytes: big-endian two's complement, as few bytes as hold it (0 is
// one zero byte), the same bytes hamba/avro and Java's BigDecimal write.
// The Avro length prefix is the caller's.
func (f Fixed) AppendAvro(dst []byte) []byte {
	u := uint64(f)
	mag := u
	if f < 0 {
		mag = ^u // the bits a negative value needs below its sign
	}
	n := bits.Len64(mag)/8 + 1 // the magnitude's bits and a sign bit
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], u)
	return append(dst, buf[8-n:]...)
}

// AppendAvro appends w's unscaled integer as Avro decimal bytes.
func (w Wide) AppendAvro(dst []byte) []byte { return appendAvroU128(dst, w.hi, w.lo) }

func appendAvroU128(dst []byte, hi, lo uint64) []byte {
	if hi == 0 && lo <= math.MaxInt64 {
		return Fixed(lo).AppendAvro(dst)
	}
	// hi:lo is below 2^127: its bits and a sign bit.
	n := (64+bits.Len64(hi))/8 + 1
	if hi == 0 {
		n = bits.Len64(lo)/8 + 1
	}
	var buf [17]byte
	binary.BigEndian.PutUint64(buf[1:9], hi)
	binary.BigEndian.PutUint64(buf[9:], lo)
	return append(dst, buf[17-n:]...)
}

// FixedFromAvro reads Avro decimal bytes into a Fixed (same scale).
func FixedFromAvro(b []byte) (Fixed, error) {
	if len(b) == 0 || len(b) > 8 {
		return 0, fmt.Errorf("%w: %d bytes for a 64-bit value", ErrAvroBytes, len(b))
	}
	v := int64(int8(b[0])) // sign-extends
	for _, c := range b[1:] {
		v = v<<8 | int64(c)
	}
	return Fixed(v), nil
}

// WideFromAvro reads Avro decimal bytes into a Wide (same scale); a
// negative value is ErrAvroBytes.
func WideFromAvro(b []byte) (Wide, error) {
	if len(b) == 0 || len(b) > 16 {
		return Wide{}, fmt.Errorf("%w: %d bytes for a 128-bit value", ErrAvroBytes, len(b))
	}
	if b[0]&0x80 != 0 {
		return Wide{}, fmt.Errorf("%w: negative", ErrAvroBytes)
	}
	var w Wide
	for _, c := range b {
		w.hi = w.hi<<8 | w.lo>>56
		w.lo = w.lo<<8 | uint64(c)
	}
	return w, nil
}

// QuoteFromAvro reads Avro decimal bytes (scale QuoteScale) into a Quote.
func QuoteFromAvro(b []byte) (Quote, error) {
	w, err := WideFromAvro(b)
	return Quote(w), err
}

// AppendAvro appends s's unscaled integer as Avro decimal bytes.
func (s Quote) AppendAvro(dst []byte) []byte { return appendAvroU128(dst, s.hi, s.lo) }

// FromFloat returns the unscaled integer at scale digits of f's shortest
// decimal (the text strconv prints for it), rounded half to even when that
// text has more than scale fractional digits; exact reports that it did
// not. It is how values that older klagg versions kept as doubles become
// decimals: a double parsed from text of at most 17 significant digits
// prints as that text again, so prices come back exactly.
func FromFloat(f float64, scale int) (n *big.Int, exact bool, err error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, false, fmt.Errorf("%w: %v", ErrRange, f)
	}
	r, ok := new(big.Rat).SetString(strconv.FormatFloat(f, 'g', -1, 64))
	if !ok {
		return nil, false, fmt.Errorf("%w: %v", ErrSyntax, f)
	}
	r.Mul(r, new(big.Rat).SetInt(new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(scale)), nil)))
	if r.IsInt() {
		return new(big.Int).Set(r.Num()), true, nil
	}
	return roundHalfEven(r), false, nil
}

// roundHalfEven rounds r to an integer, ties to even.
func roundHalfEven(r *big.Rat) *big.Int {
	q, m := new(big.Int).DivMod(r.Num(), r.Denom(), new(big.Int)) // floor, 0 <= m < denom
	twice := new(big.Int).Lsh(m, 1)
	switch c := twice.Cmp(r.Denom()); {
	case c > 0, c == 0 && q.Bit(0) == 1:
		q.Add(q, big.NewInt(1))
	}
	return q
}

// Bytes16 returns w's unscaled integer as 16 big-endian bytes: the Avro
// fixed(16) decimal of klagg's state records.
func (w Wide) Bytes16() (b [16]byte) {
	binary.BigEndian.PutUint64(b[:8], w.hi)
	binary.BigEndian.PutUint64(b[8:], w.lo)
	return b
}

// WideFrom16 reads Bytes16's form; a negative value is ErrAvroBytes.
func WideFrom16(b [16]byte) (Wide, error) {
	w := Wide{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
	if w.hi>>63 != 0 {
		return Wide{}, fmt.Errorf("%w: negative", ErrAvroBytes)
	}
	return w, nil
}

// Bytes16 returns s's unscaled integer as 16 big-endian bytes.
func (s Quote) Bytes16() [16]byte { return Wide(s).Bytes16() }

// QuoteFrom16 reads Bytes16's form; a negative value is ErrAvroBytes.
func QuoteFrom16(b [16]byte) (Quote, error) {
	w, err := WideFrom16(b)
	return Quote(w), err
}
