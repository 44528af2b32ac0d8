// Package decimal holds prices, quantities and their sums as exact
// fixed-point integers, the way an exchange's matching engine does, so a
// candle's every digit equals the exchange's.
//
// The model:
//
//   - Fixed is an int64 count of 10^-8 (Scale fractional digits, Binance's
//     precision): a trade's price or quantity, parsed from its decimal text
//     without passing through a float (ParseFixed). Text with more
//     fractional digits than Scale is refused (ErrPrecision), never
//     rounded; a value beyond MaxFixed is refused (ErrRange).
//   - Wide is a non-negative 128-bit count of 10^-8: a candle's volume, the
//     exact sum of its trades' quantities.
//   - Quote is a non-negative 128-bit count of 10^-16: the exact sum of
//     price × quantity over a candle's trades. A product of two Fixed
//     values has at most 16 fractional digits, so nothing is lost until
//     Round turns the sum into a Wide once, when a record is written,
//     rounding half to even.
//
// The 128-bit sums refuse to grow past 2^125 (Wide.Room, Quote.Room):
// below that, one more product (less than 2^126) cannot overflow the
// signed 128 bits an Avro decimal(38, 8) holds.
//
// Text is Binance's: eight fractional digits, always ("28165.47000000").
// AppendAvro writes the Avro decimal logical type's bytes (big-endian two's
// complement, minimal length), which Java reads as BigDecimal, Python's
// fastavro as decimal.Decimal and ClickHouse as Decimal128.
package decimal
