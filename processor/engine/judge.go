package engine

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"time"

	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/schema"
)

// Judge applies Fold's refusal rules to trades against a state topic's
// newest record of each symbol (as a member restored from it holds them),
// without building an Aggregator: `klagg gen` warns with it before it sends
// trades that a running pipeline would refuse.
type Judge struct {
	states map[string]schema.SymbolState
	// For a symbol no state knows: the periods the states hold, finest
	// first, and the lowest watermark among them (the strictest shard).
	periods   []period.Period
	watermark int64
}

// NewJudge judges against states, keyed by symbol.
func NewJudge(states map[string]schema.SymbolState) *Judge {
	seen := map[period.Period]bool{}
	j := &Judge{states: states, watermark: math.MaxInt64}
	for _, st := range states {
		j.watermark = min(j.watermark, st.Watermark)
		for _, c := range st.Candles {
			if p, err := period.Parse(c.Period); err == nil {
				seen[p] = true
			}
		}
	}
	j.periods = slices.Sorted(maps.Keys(seen))
	return j
}

// Trade says how a member would take t, the next trade of its symbol:
// Folded, Duplicate (its aggregate id is not above the symbol's last) or
// Late (before the open time of the symbol's latest candle; for a symbol
// no state knows, one of its candles closed by the watermark), and why, in
// words, when refused.
func (j *Judge) Trade(t *schema.Trade) (Outcome, string) {
	st, ok := j.states[string(t.Symbol)]
	if !ok {
		for _, p := range j.periods {
			if open := p.Open(t.Time); p.Next(open) <= j.watermark {
				return Late, fmt.Sprintf("late, its %s candle of %s closed before the watermark of every shard, %s", p,
					utc(open), utc(j.watermark))
			}
		}
		return Folded, ""
	}
	if !t.Unordered && t.AggID <= st.LastAggID {
		return Duplicate, fmt.Sprintf("duplicate, trade id %d is not above its last, %d", t.AggID, st.LastAggID)
	}
	var open int64 = math.MinInt64
	for _, c := range st.Candles {
		open = max(open, c.OpenTime) // the finest period's: the latest to open
	}
	if t.Time < open {
		return Late, fmt.Sprintf("late, %s is before its open candle of %s", utc(t.Time), utc(open))
	}
	return Folded, ""
}

func utc(ms int64) string { return time.UnixMilli(ms).UTC().Format(time.DateTime) }
