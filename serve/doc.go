// Package serve is klagg serve: it reads the klines topic (read_committed,
// both framings), keeps the newest candles of every (symbol, period) and
// serves them the way trading tools and people read candles: Binance's
// GET /api/v3/klines, a Server-Sent Events stream of updates shaped like
// Binance's websocket kline events, and a live chart page.
//
// # Model
//
// One goroutine owns the store: flat per-(symbol, period) series, each
// sorted by open time and capped at Config.Keep, the newest version of a
// candle winning. A consumer goroutine decodes records and hands it
// batches; HTTP handlers ask it over a channel and stream subscribers
// register with it; a subscriber too slow to keep up is cut off.
package serve
