// Package engine is klagg's candle engine: it folds trades into candles for
// every symbol of a shard and every configured period at once. It knows
// nothing of Kafka; the runtime (package processor) feeds it records and
// publishes what it drains.
//
// # Model
//
// A shard (one trades partition) is an Aggregator, owned by one goroutine.
// Its candles live in flat arrays indexed slot = symbol*len(periods)+period;
// each slot holds the open candle of one (symbol, period). A sparse set —
// dirtyFlags []bool plus dirtyIndices []int32 — records the slots changed
// since the last Drain, so a drain costs what changed, not what exists, and
// an empty drain costs nothing. Candles that end are queued as final records
// until the next Drain. A trade writes the finest period's candle and a
// per-symbol accumulator that is merged into the coarser periods' candles
// (every boundary of theirs is one of the finest's) when they roll or are
// drained; periods that do not nest in the finest are updated per trade.
//
// # Rules (Binance is the reference; README "Candle rules" for its open choices)
//
//   - A trade is bucketed by its trade time into each period's candle
//     (period.Period.Open; 1w opens Monday 00:00 UTC, 1M is the calendar month).
//   - A trade whose aggregate id is not above its symbol's highest is a
//     Duplicate; a trade whose candle has ended for any period is Late and
//     is refused for all of them. Neither changes anything.
//   - open/close are the earliest/latest trade by (trade time, aggregate
//     id); first_trade_id is the open trade's first raw id, last_trade_id the
//     close trade's last.
//   - Sums are exact: volumes in 128-bit decimal.Wide, quote volumes as the
//     exact sum of price × quantity (decimal.Quote, sixteen decimals),
//     rounded half to even to eight only when a kline is built. A trade that
//     finds one of its symbol's sums past 2^125 is OutOfRange and changes
//     nothing, so no sum can wrap.
//   - A symbol's trade in a later candle finalizes its slot's candle, and any
//     skipped periods become flat final candles at the previous close.
//   - The watermark W = greatest accepted trade time − grace finalizes every
//     candle whose close_time < W; the slot moves on to a flat candle that is
//     never emitted while open. A live, caught-up shard with no trade for the
//     grace lets W follow the wall clock (AdvanceClock); replayed history
//     never does.
//   - version = max(previous + 1, wall clock in µs at the drain): strictly
//     increasing per candle, and above anything emitted before a restart.
//
// # State
//
// DrainFinals is the flush of a shard that is catching up: only the candles
// that became final, no state, nothing to commit; open candles wait for the
// next Drain.
//
// Drain also returns one schema.SymbolState per changed symbol: its candles,
// highest aggregate id, and the trades offset it reflects. Restore rebuilds
// a shard from the newest record of each symbol; after it, Fold reports
// trades at or below a symbol's offset as Replayed and skips them, so a
// replay after a crash never counts a trade twice.
package engine
