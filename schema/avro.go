package schema

import (
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/hamba/avro/v2"
	"github.com/hamba/avro/v2/soe"

	"github.com/klagg/klagg/decimal"
)

// The schemas, embedded so the binary needs no files.
var (
	//go:embed kline.avsc
	KlineSchemaText string
	//go:embed trade.avsc
	TradeSchemaText string
	//go:embed state.avsc
	StateSchemaText string
	// Older state schemas that earlier klagg versions wrote; restore
	// resolves their records into the current one.
	//go:embed state.v1.avsc
	stateSchemaV1Text string
	//go:embed state.v2.avsc
	stateSchemaV2Text string
	// Kline and trade schema 1 carried prices and volumes as doubles;
	// readers still take records written with them.
	//go:embed kline.v1.avsc
	klineSchemaV1Text string
	//go:embed trade.v1.avsc
	tradeSchemaV1Text string
)

// Parsed schemas. They are compiled into the binary, so failing to parse
// them is a build defect caught by every test, not an input error.
var (
	KlineSchema = avro.MustParse(KlineSchemaText)
	TradeSchema = avro.MustParse(TradeSchemaText)
	StateSchema = avro.MustParse(StateSchemaText)

	klineSchemaV1 = avro.MustParse(klineSchemaV1Text)
	tradeSchemaV1 = avro.MustParse(tradeSchemaV1Text)
)

// Framing is how an Avro body is wrapped in a Kafka record value.
type Framing uint8

const (
	// FramingSingleObject is Avro single-object encoding: 0xC3 0x01, the
	// schema's 8-byte little-endian CRC-64-AVRO fingerprint, then the body.
	FramingSingleObject Framing = iota
	// FramingConfluent is the Confluent wire format: 0x00, a 4-byte
	// big-endian schema id, then the body.
	FramingConfluent
)

// Framing errors, wrapped by the decoders.
var (
	ErrShortValue       = errors.New("value shorter than its framing header")
	ErrUnknownFraming   = errors.New("value is neither Confluent-framed nor Avro single-object encoded")
	ErrWrongFingerprint = errors.New("single-object fingerprint is not this schema's")
	ErrTrailingBytes    = errors.New("bytes after the Avro record")
)

// Prefix returns the framing bytes that precede every body written with
// schema s: for FramingConfluent, schemaID is the registry's id for s.
func Prefix(f Framing, s avro.Schema, schemaID int) ([]byte, error) {
	switch f {
	case FramingSingleObject:
		h, err := soe.BuildHeader(s)
		if err != nil {
			return nil, fmt.Errorf("schema: single-object header: %w", err)
		}
		return h, nil
	case FramingConfluent:
		if schemaID < 0 || schemaID > math.MaxUint32 {
			return nil, fmt.Errorf("schema: confluent header: schema id %d out of range", schemaID)
		}
		return binary.BigEndian.AppendUint32([]byte{0}, uint32(schemaID)), nil
	default:
		return nil, fmt.Errorf("schema: framing %d: %w", f, ErrUnknownFraming)
	}
}

// UnframeSingleObject strips the single-object framing of value and returns
// the writer schema's fingerprint, whatever the schema.
func UnframeSingleObject(value []byte) (fingerprint [8]byte, body []byte, err error) {
	switch {
	case len(value) < 2 || value[0] != 0xC3 || value[1] != 0x01:
		return fingerprint, nil, ErrUnknownFraming
	case len(value) < 10:
		return fingerprint, nil, ErrShortValue
	}
	copy(fingerprint[:], value[2:10])
	return fingerprint, value[10:], nil
}

// Unframe strips the framing of value. For FramingSingleObject it checks the
// fingerprint against s; for FramingConfluent it returns the schema id, which
// the caller may check.
func Unframe(value []byte, s avro.Schema) (f Framing, schemaID int, body []byte, err error) {
	switch {
	case len(value) >= 1 && value[0] == 0x00:
		if len(value) < 5 {
			return 0, 0, nil, ErrShortValue
		}
		return FramingConfluent, int(binary.BigEndian.Uint32(value[1:5])), value[5:], nil
	case len(value) >= 2 && value[0] == 0xC3 && value[1] == 0x01:
		if len(value) < 10 {
			return 0, 0, nil, ErrShortValue
		}
		fp, err := s.FingerprintUsing(avro.CRC64AvroLE)
		if err != nil {
			return 0, 0, nil, fmt.Errorf("schema: fingerprint: %w", err)
		}
		if string(value[2:10]) != string(fp) {
			return 0, 0, nil, ErrWrongFingerprint
		}
		return FramingSingleObject, 0, value[10:], nil
	default:
		return 0, 0, nil, ErrUnknownFraming
	}
}

// Avro binary primitives. Writers append; the reader never panics and
// reports a short or malformed buffer as an error.

func appendLong(b []byte, v int64) []byte {
	return binary.AppendUvarint(b, uint64((v<<1)^(v>>63)))
}

func appendDouble(b []byte, f float64) []byte {
	return binary.LittleEndian.AppendUint64(b, math.Float64bits(f))
}

// appendFixed appends f as an Avro decimal (bytes).
func appendFixed(b []byte, f decimal.Fixed) []byte {
	var buf [8]byte
	d := f.AppendAvro(buf[:0])
	return append(appendLong(b, int64(len(d))), d...)
}

// appendWide appends w as an Avro decimal (bytes).
func appendWide(b []byte, w decimal.Wide) []byte {
	var buf [17]byte
	d := w.AppendAvro(buf[:0])
	return append(appendLong(b, int64(len(d))), d...)
}

func appendString(b []byte, s string) []byte {
	return append(appendLong(b, int64(len(s))), s...)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

var (
	errAvroShort  = errors.New("avro: truncated")
	errAvroVarint = errors.New("avro: bad varint")
	errAvroBool   = errors.New("avro: boolean is neither 0 nor 1")
	errAvroLength = errors.New("avro: negative or oversized length")
)

type avroReader struct {
	b   []byte
	i   int
	err error
}

func (r *avroReader) long() int64 {
	if r.err != nil {
		return 0
	}
	var u uint64
	for shift := uint(0); shift < 70; shift += 7 {
		if r.i >= len(r.b) {
			r.err = errAvroShort
			return 0
		}
		c := r.b[r.i]
		r.i++
		if shift == 63 && c > 1 {
			r.err = errAvroVarint
			return 0
		}
		u |= uint64(c&0x7f) << shift
		if c < 0x80 {
			return int64(u>>1) ^ -int64(u&1)
		}
	}
	r.err = errAvroVarint
	return 0
}

func (r *avroReader) double() float64 {
	if r.err != nil {
		return 0
	}
	if len(r.b)-r.i < 8 {
		r.err = errAvroShort
		return 0
	}
	f := math.Float64frombits(binary.LittleEndian.Uint64(r.b[r.i:]))
	r.i += 8
	return f
}

func (r *avroReader) fixed() decimal.Fixed {
	b := r.bytes()
	if r.err != nil {
		return 0
	}
	f, err := decimal.FixedFromAvro(b)
	if err != nil {
		r.err = err
	}
	return f
}

func (r *avroReader) wide() decimal.Wide {
	b := r.bytes()
	if r.err != nil {
		return decimal.Wide{}
	}
	w, err := decimal.WideFromAvro(b)
	if err != nil {
		r.err = err
	}
	return w
}

// bytes returns a string's bytes, aliasing the buffer.
func (r *avroReader) bytes() []byte {
	n := r.long()
	if r.err != nil {
		return nil
	}
	if n < 0 || n > int64(len(r.b)-r.i) {
		r.err = errAvroLength
		return nil
	}
	v := r.b[r.i : r.i+int(n)]
	r.i += int(n)
	return v
}

// take returns the next n bytes (a fixed or a float), aliasing the buffer.
func (r *avroReader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b)-r.i < n {
		r.err = errAvroShort
		return nil
	}
	v := r.b[r.i : r.i+n]
	r.i += n
	return v
}

func (r *avroReader) boolean() bool {
	if r.err != nil {
		return false
	}
	if r.i >= len(r.b) {
		r.err = errAvroShort
		return false
	}
	c := r.b[r.i]
	r.i++
	if c > 1 {
		r.err = errAvroBool
		return false
	}
	return c == 1
}

func (r *avroReader) end() error {
	if r.err != nil {
		return r.err
	}
	if r.i != len(r.b) {
		return ErrTrailingBytes
	}
	return nil
}
