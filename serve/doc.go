// Package serve is klagg serve: it reads the klines topic (read_committed,
// both framings), keeps the newest candles of every (symbol, period) and
// serves them the way trading tools and people read candles: Binance's
// market-data REST endpoints (klines, uiKlines, exchangeInfo, ping, time),
// Binance's websocket kline streams, a Server-Sent Events stream of the
// same events, and a live chart page.
//
// # Model
//
// One goroutine owns the store: flat per-(symbol, period) series, each
// sorted by open time and capped at Config.Keep, the newest version of a
// candle winning. A consumer goroutine decodes records and hands it
// batches; HTTP handlers ask it over a channel. Stream clients (a
// websocket connection, an SSE request) are subscribers: each has a
// channel of Config.StreamBuffer updates, and the owner keeps an index
// from series to subscribers, changed only by messages (subChange). The
// owner never blocks on a subscriber: one whose channel is full is cut off
// (its channel closed), and its writer closes the connection with the
// reason.
//
// A websocket connection has two goroutines: the reader parses requests
// (SUBSCRIBE, UNSUBSCRIBE, ...), owns the connection's stream names and
// tells the owner and the writer of changes; the writer (the handler's
// goroutine) sends replies, updates and pings. Whichever ends the
// connection closes it with its reason.
package serve
