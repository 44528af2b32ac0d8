// Package processor is klagg's Kafka runtime: Run makes one member of a
// consumer group out of the candle engine (package engine).
//
// # Model
//
// Each trades partition the member owns is a shard: one goroutine owns its
// engine.Aggregator, folds the records the poll goroutine hands it, and
// answers drain requests on a one-shot channel. A flush drains every shard
// (the changed candles, the final ones, one state record per changed
// symbol) and delivers them to partition p of the klines, dead-letter and
// compacted state topics; the trades offsets are committed only with them.
// A shard given to this member is restored from the state topic first.
//
// # Guarantees
//
// Under ExactlyOnce (the default) a flush is one Kafka transaction
// (kgo.GroupTransactSession): the klines, dead letters, state records and
// the offsets they reflect become visible to read_committed readers
// together, or not at all. The goroutine that polls also drains and ends
// the transaction, so the offsets committed are exactly those the drained
// state reflects. A rebalance, a member expelled while frozen, or a failed
// delivery aborts the transaction, and the shards are rebuilt from the
// committed state.
//
// Under AtLeastOnce a flusher goroutine drains on its own clock, proves the
// member is still in the group with a heartbeat, delivers klines and dead
// letters, then state, and commits what was acknowledged. A crash replays
// from the last commit; state records carry the offset they reflect, so no
// trade is counted twice, but some klines are published twice (with a
// higher version).
//
// DESIGN.md in the repository lists the goroutines, who owns what, and how
// a flush, a revoke, a loss and a shutdown map onto transactions.
package processor
