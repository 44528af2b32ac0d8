// Package partition holds what klagg knows about a trades partition apart
// from candles: the symbols a shard has seen and the slot index each one
// owns, and how a trades partition maps onto the klines, state and
// dead-letter topics.
//
// A shard is the unit of ownership: one trades partition, one goroutine, one
// set of symbols. Because the trades topic is keyed by symbol, a symbol lives
// in exactly one partition and so in exactly one shard; its slot index is
// dense (0, 1, 2, … in order of first appearance) so the engine can keep its
// candles in flat arrays indexed by slot.
//
// Every record derived from trades partition p is written to partition p of
// the output topics (Target). That keeps a symbol's klines in order on one
// partition and lets a shard restore from exactly one state partition. It
// only works when the topics have the same partition count, which
// CheckPartitionCounts verifies at start-up rather than re-mapping silently.
package partition
