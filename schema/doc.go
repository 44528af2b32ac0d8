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
// Trades arrive as Binance aggTrade or raw trade JSON (plain or in a
// combined-stream wrapper), as Avro (trade.avsc), as a venue's trade
// messages (Coinbase, Kraken, OKX, Bybit), or as a platform's own JSON or
// Avro read through a JSONMapping. A record may carry several trades:
// TradeDecoder.DecodeBatch fills a reused Batch, each trade valid or
// refused on its own. The venue formats are mappings too (VenueMapping):
// one scanner walks a message once along a compiled tree of the members a
// mapping reads; AvroMapping compiles a mapping per writer schema into a
// plan of read and skip steps. Decoding is allocation-free: a decoded
// Trade's Symbol aliases the input (or the Batch, with a symbol prefix). Every record that cannot be used is refused with an
// *InvalidTradeError whose Reason names its class (malformed,
// missing_field, invalid_price, future_time, …); the reason is what the
// dead-letter header and the metrics carry, so the set is closed and small.
//
// The kline body is written by a hand-rolled appender, checked byte for
// byte against hamba/avro in the tests, because it is on the flush path of
// every changed candle; the state record, written once per changed symbol
// per flush, goes through hamba/avro.
package schema
