// Package period is klagg's vocabulary of candle periods: Binance's sixteen
// kline intervals (1s to 1M), their names, canonical order and candle
// boundaries in UTC. It is a leaf: the engine computes candles with it, and
// serve, the oracle and the command line parse and print periods with it
// without importing the engine.
//
// # Model
//
// A Period is a small integer in canonical order (shortest first), the
// order of a symbol's slots in the engine. Open(t) is the open time of the
// candle containing t and Next(open) the following one: fixed lengths
// aligned to the Unix epoch, except 1w (Monday 00:00 UTC; the epoch was a
// Thursday) and 1M (the calendar month). Names are case-sensitive, as on
// Binance: "1m" is a minute, "1M" a month.
package period
