package oracle

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/schema"
)

// A Summary describes the final candles of a large run in bounded memory:
// for every (symbol, period) series, how many final candles, the first and
// last open time, and the sum of their trade counts; and, for the symbols
// a sample function picks, every final candle whole. Two summaries are
// equal when the series agree everywhere and the sampled candles agree
// field by field. Read from a klines topic, a series must also be
// contiguous when flat candles are on (each open time the previous one's
// next): with the same count, first and last, that is the same set of
// candles as the oracle's.
type Summary struct {
	Series   map[SeriesKey]Series
	Sample   map[Key]schema.Kline
	Problems []string
	Records  int // records read (a topic's summary)
}

// SeriesKey names one (symbol, period) series.
type SeriesKey struct{ Symbol, Period string }

// Series summarises one series' final candles.
type Series struct {
	Count       int
	First, Last int64
	Trades      int64
}

func newSummary() *Summary {
	return &Summary{Series: map[SeriesKey]Series{}, Sample: map[Key]schema.Kline{}}
}

// add takes one final candle; contiguous checks that it follows the
// series' last one directly.
func (s *Summary) add(k *schema.Kline, sample func(string) bool, contiguous bool) {
	sk := SeriesKey{k.Symbol, k.Period}
	se, ok := s.Series[sk]
	switch {
	case !ok:
		se = Series{First: k.OpenTime}
	case k.OpenTime <= se.Last:
		s.problem("%s %s: final candle %s after %s (duplicate or out of order)", k.Symbol, k.Period, ts(k.OpenTime), ts(se.Last))
		return
	case contiguous:
		if p, err := period.Parse(k.Period); err == nil && p.Next(se.Last) != k.OpenTime {
			s.problem("%s %s: final candle %s follows %s: a gap", k.Symbol, k.Period, ts(k.OpenTime), ts(se.Last))
		}
	}
	se.Count++
	se.Last = k.OpenTime
	se.Trades += k.TradeCount
	s.Series[sk] = se
	if sample(k.Symbol) {
		c := *k
		c.Version = 0
		s.Sample[KeyOf(&c)] = c
	}
}

func (s *Summary) problem(format string, args ...any) {
	if len(s.Problems) < 100 {
		s.Problems = append(s.Problems, fmt.Sprintf(format, args...))
	}
}

func ts(ms int64) string { return time.UnixMilli(ms).UTC().Format(time.RFC3339) }

// ExpectedSummary is Expected's final candles for recs, summarised.
func ExpectedSummary(recs []Record, periods []period.Period, grace time.Duration, noFlat bool, sample func(string) bool) *Summary {
	refs, _ := shards(recs, periods, grace, noFlat)
	s := newSummary()
	for _, ref := range refs {
		// EachCandle gives each series in order; the order of the series
		// does not matter.
		ref.EachCandle(func(k *schema.Kline) {
			if k.IsFinal {
				s.add(k, sample, false)
			}
		})
	}
	return s
}

// ReadSummary summarises the final candles on a klines topic (committed
// records only); flat says flat candles are on, so each series must be
// contiguous.
func ReadSummary(ctx context.Context, brokers []string, topic string, flat bool, sample func(string) bool) (*Summary, error) {
	s := newSummary()
	var k schema.Kline
	err := ReadTopic(ctx, brokers, topic, func(r *kgo.Record) {
		s.Records++
		if err := schema.DecodeKline(r.Value, &k); err != nil {
			s.problem("undecodable kline at %d/%d: %v", r.Partition, r.Offset, err)
			return
		}
		if k.IsFinal {
			s.add(&k, sample, flat)
		}
	})
	return s, err
}

// DiffSummary returns "" when got matches want, else what differs.
func DiffSummary(got, want *Summary) string {
	var b strings.Builder
	if len(got.Problems) > 0 {
		fmt.Fprintf(&b, "%d problems; first: %s\n", len(got.Problems), got.Problems[0])
	}
	var missing, extra, differ []string
	for k, w := range want.Series {
		g, ok := got.Series[k]
		switch {
		case !ok:
			missing = append(missing, fmt.Sprintf("%v", k))
		case g != w:
			differ = append(differ, fmt.Sprintf("%v: got %d candles %s..%s, %d trades; want %d %s..%s, %d",
				k, g.Count, ts(g.First), ts(g.Last), g.Trades, w.Count, ts(w.First), ts(w.Last), w.Trades))
		}
	}
	for k := range got.Series {
		if _, ok := want.Series[k]; !ok {
			extra = append(extra, fmt.Sprintf("%v", k))
		}
	}
	if len(missing)+len(extra)+len(differ) > 0 {
		fmt.Fprintf(&b, "series: %d want, %d got; %d missing, %d extra, %d differ", len(want.Series), len(got.Series),
			len(missing), len(extra), len(differ))
		for _, l := range [][]string{missing, extra, differ} {
			sort.Strings(l)
			for i, x := range l {
				if i == 3 {
					break
				}
				fmt.Fprintf(&b, "\n  %s", x)
			}
		}
		b.WriteString("\n")
	}
	if d := Diff(got.Sample, want.Sample); d != "" {
		fmt.Fprintf(&b, "sampled candles: %s", d)
	}
	return b.String()
}
