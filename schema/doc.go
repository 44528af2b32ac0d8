// Package schema holds klagg's record formats: the Avro schemas (embedded
// .avsc files) of the kline output, the trade input and the shard state
// record; their codecs in both framings (Confluent wire format with a
// registry id, Avro single-object encoding without one); and the decoding
// and validation of trades.
//
// Prices and volumes are exact decimals (package decimal): kline and trade
// schema 2 carry them as Avro decimal(38, 8), state schema 3 as fixed-size
// decimals with the quote sums unrounded. Records of the older schemas,
// whose prices and volumes were doubles (kline and trade schema 1, state
// schemas 1 and 2), are still read: each double becomes its shortest
// decimal, the one inexact step.
//
// Trades arrive as Binance aggTrade JSON (plain or in a combined-stream
// wrapper) or as Avro. Decoding is allocation-free: a decoded Trade's Symbol
// aliases the input. Every record that cannot be used is refused with an
// *InvalidTradeError whose Reason names its class (malformed,
// missing_field, invalid_price, future_time, …); the reason is what the
// dead-letter header and the metrics carry, so the set is closed and small.
//
// The kline body is written by a hand-rolled appender, checked byte for
// byte against hamba/avro in the tests, because it is on the flush path of
// every changed candle; the state record, written once per changed symbol
// per flush, goes through hamba/avro.
package schema
