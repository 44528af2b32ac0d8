package processor

// brokerClock is a shard's check on its member's wall clock: the newest
// record timestamp the brokers gave it (LogAppendTime, or the producer's
// CreateTime) and the wall-clock time it was seen. The wall clock then
// says now; the brokers' clock says ts + (now - seenAt), which a wall
// clock off by a constant amount cannot move (both readings carry the
// same error). A member trusts its own clock, bounded by the brokers':
//   - closing quiet candles (AdvanceClock) and deciding liveness take the
//     earlier of the two, so a clock running ahead never closes a candle
//     before its last trade could arrive (it would refuse that trade as
//     late);
//   - the max-skew check takes the later, so a clock running behind never
//     refuses a current trade as being from the future.
//
// A clock running behind closes quiet candles that much later, never
// earlier. The brokers' clock counts only while within the live window of
// the wall clock: record timestamps that are event times of a replay, or
// a producer's broken clock, must not stop a live shard's candles closing.
type brokerClock struct {
	ts, seenAt int64 // Unix ms; ts 0: no record seen yet
	window     int64 // how far apart the two clocks may be and still both count
}

// see notes a record timestamp tsMs read at wall-clock time nowMs.
func (c *brokerClock) see(tsMs, nowMs int64) {
	if tsMs > c.ts {
		c.ts, c.seenAt = tsMs, nowMs
	}
}

// bounds returns the earlier and the later of the wall clock nowMs and the
// brokers' clock, or nowMs twice when the brokers' does not count.
func (c *brokerClock) bounds(nowMs int64) (early, late int64) {
	if c.ts == 0 {
		return nowMs, nowMs
	}
	b := c.ts + (nowMs - c.seenAt)
	if b < nowMs-c.window || b > nowMs+c.window {
		return nowMs, nowMs
	}
	return min(nowMs, b), max(nowMs, b)
}
