package serve

import (
	"slices"
	"sort"

	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/schema"
)

// store keeps the newest keep candles of every (symbol, period) series, the
// newest version of each winning, in memory (Config.Data ""). It is owned
// by one goroutine (Server.own); handlers reach it over channels.
//
// Series live in one flat slice like the engine's slots, index =
// symbol*numPeriods + period; each series is a slice sorted by open time,
// capped at keep. An update almost always touches the last candle or
// appends one, so it costs O(1); a late one is found by binary search.
type store struct {
	keep    int
	np      int    // periods per symbol
	held    uint32 // bit p: some candle of period p was seen
	symbols map[string]int32
	names   []string
	series  [][]schema.Kline
}

func newStore(keep int) *store {
	return &store{keep: keep, np: len(period.All()), symbols: map[string]int32{}}
}

// put records k unless a newer version of its candle is held. It reports
// whether k changed the store.
func (s *store) put(k *schema.Kline) bool {
	p, err := period.Parse(k.Period)
	if err != nil {
		return false
	}
	sym, ok := s.symbols[k.Symbol]
	if !ok {
		sym = int32(len(s.names))
		s.symbols[k.Symbol] = sym
		s.names = append(s.names, k.Symbol)
		s.series = append(s.series, make([][]schema.Kline, s.np)...)
	}
	s.held |= 1 << p
	idx := int(sym)*s.np + int(p)
	ser := s.series[idx]
	n := len(ser)
	switch {
	case n > 0 && ser[n-1].OpenTime == k.OpenTime:
		if ser[n-1].Version >= k.Version {
			return false
		}
		ser[n-1] = *k
		return true
	case n == 0 || ser[n-1].OpenTime < k.OpenTime:
		ser = append(ser, *k)
	default:
		i := sort.Search(n, func(i int) bool { return ser[i].OpenTime >= k.OpenTime })
		if i < n && ser[i].OpenTime == k.OpenTime {
			if ser[i].Version >= k.Version {
				return false
			}
			ser[i] = *k
			return true
		}
		if i == 0 && n >= s.keep {
			return false // older than everything kept
		}
		ser = slices.Insert(ser, i, *k)
	}
	if len(ser) > s.keep {
		// Shift rather than reslice, so the array does not creep forward
		// and grow without bound.
		copy(ser, ser[len(ser)-s.keep:])
		ser = ser[:s.keep]
	}
	s.series[idx] = ser
	return true
}

// apply puts each candle of batch; changed[i] says whether batch[i]
// changed the store. The memory store keeps no offsets: it is read from
// the topic's start.
func (s *store) apply(batch []schema.Kline, _ map[int32]int64, changed []bool) error {
	for i := range batch {
		changed[i] = s.put(&batch[i])
	}
	return nil
}

func (s *store) close() error { return nil }

// candleStore is what the owner goroutine keeps candles in: the memory
// window (store) or the pebble database (diskStore).
type candleStore interface {
	apply(batch []schema.Kline, next map[int32]int64, changed []bool) error
	klines(q query) ([]schema.Kline, bool, error)
	symbolList() []string
	intervalList() []string
	close() error
}

// query is a /api/v3/klines request, in Binance's terms.
type query struct {
	symbol     string
	period     period.Period
	start, end int64 // open time bounds, inclusive; -1 when not given
	limit      int
	// zone is timeZone's offset in ms when the period's candles open at
	// other instants there than in UTC: the answer is combined from a
	// finer period's candles (zone.go). 0 otherwise.
	zone int64
}

// klines answers q with copies of the candles whose open time lies in
// [start, end], oldest first, and whether the symbol is known: with a start
// time the first limit of them, otherwise the last limit.
func (s *store) klines(q query) ([]schema.Kline, bool, error) {
	sym, ok := s.symbols[q.symbol]
	if !ok {
		return nil, false, nil
	}
	ser := s.series[int(sym)*s.np+int(q.period)]
	lo := 0
	if q.start >= 0 {
		lo = sort.Search(len(ser), func(i int) bool { return ser[i].OpenTime >= q.start })
	}
	hi := len(ser)
	if q.end >= 0 {
		hi = sort.Search(len(ser), func(i int) bool { return ser[i].OpenTime > q.end })
	}
	if hi <= lo {
		return []schema.Kline{}, true, nil
	}
	if hi-lo > q.limit {
		if q.start >= 0 {
			hi = lo + q.limit
		} else {
			lo = hi - q.limit
		}
	}
	return slices.Clone(ser[lo:hi]), true, nil
}

// symbolList is the known symbols, sorted.
func (s *store) symbolList() []string {
	out := slices.Clone(s.names)
	slices.Sort(out)
	return out
}

// intervalList is the intervals of which some candle is held, in
// canonical order: those the pipeline computes.
func (s *store) intervalList() []string {
	var out []string
	for _, p := range period.All() {
		if s.held&(1<<p) != 0 {
			out = append(out, p.String())
		}
	}
	return out
}
