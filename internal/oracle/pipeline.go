package oracle

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/processor/engine"
	"github.com/klagg/klagg/schema"
)

// Record is one trades record as produced: its partition, and either a
// trade or a bad value.
type Record struct {
	Partition int32
	Trade     Trade
	Bad       []byte // when set, the value produced instead of the trade
}

// MarketSpec describes a synthetic trade stream for pipeline tests.
type MarketSpec struct {
	Seed       uint64
	Symbols    int
	Trades     int
	Partitions int32
	Start      time.Time
	// StepMs is the mean trade-time step between consecutive trades.
	StepMs int
	// DuplicateRate and BadRate are fractions of resent trades and of
	// malformed values mixed in.
	DuplicateRate, BadRate float64
	// CoarseQty draws quantities of at most four decimals, so that every
	// price × quantity has at most eight (as on Binance's USDT markets)
	// and a sum of rounded quote volumes is the rounded sum.
	CoarseQty bool
}

// Market generates the records of spec. Symbol i lives in partition
// i % Partitions, so each partition is one shard for the oracle.
func Market(spec MarketSpec) []Record {
	rng := rand.New(rand.NewPCG(spec.Seed, 7))
	type sym struct {
		agg, raw int64
		price    int64 // in 10^-4
		last     Trade
	}
	syms := make([]sym, spec.Symbols)
	for i := range syms {
		syms[i].price = int64(10+rng.IntN(1000)) * 10_000
	}
	t := spec.Start.UnixMilli()
	out := make([]Record, 0, spec.Trades)
	for len(out) < spec.Trades {
		t += int64(rng.IntN(2*spec.StepMs + 1))
		i := int(float64(spec.Symbols) * math.Pow(rng.Float64(), 2))
		s := &syms[i]
		p := int32(i) % spec.Partitions
		switch x := rng.Float64(); {
		case x < spec.BadRate:
			bad := [][]byte{[]byte(`{"e":"aggTrade","s":"BAD`), []byte(`{"s":"X","a":1,"p":"NaN","q":"1","f":1,"l":1,"T":1,"m":true}`), []byte(`not json`)}
			out = append(out, Record{Partition: p, Bad: bad[rng.IntN(len(bad))]})
			continue
		case x < spec.BadRate+spec.DuplicateRate && s.last.Symbol != "":
			out = append(out, Record{Partition: p, Trade: s.last})
			continue
		}
		s.agg++
		n := int64(1 + rng.IntN(3))
		s.price = max(1, s.price+int64(rng.IntN(201)-100))
		// Prices with four decimals and quantities with up to eight make
		// products of up to twelve, so quote sums get rounded.
		tr := Trade{Symbol: fmt.Sprintf("SYM%03dUSDT", i), AggID: s.agg, First: s.raw + 1, Last: s.raw + n,
			Time: t - int64(rng.IntN(300)), Price: decimal.Fixed(s.price * 10_000),
			Qty: decimal.Fixed(1 + rng.Int64N(1_000_000_000)), BuyerMaker: rng.IntN(2) == 0}
		if spec.CoarseQty {
			tr.Qty = tr.Qty/10_000*10_000 + 10_000
		}
		s.raw += n
		s.last = tr
		out = append(out, Record{Partition: p, Trade: tr})
	}
	return out
}

// Value returns the Binance JSON value of r.
func (r Record) Value() []byte {
	if r.Bad != nil {
		return r.Bad
	}
	t := r.Trade
	return schema.AppendBinanceJSON(nil, &schema.Trade{Symbol: []byte(t.Symbol), AggID: t.AggID, Price: t.Price,
		Quantity: t.Qty, FirstID: t.First, LastID: t.Last, Time: t.Time, BuyerMaker: t.BuyerMaker})
}

// Produce writes records to topic in order, each to its partition, keyed
// by symbol.
func Produce(ctx context.Context, cl *kgo.Client, topic string, recs []Record) error {
	const batch = 5000
	for i := 0; i < len(recs); i += batch {
		var krs []*kgo.Record
		for _, r := range recs[i:min(i+batch, len(recs))] {
			krs = append(krs, &kgo.Record{Topic: topic, Partition: r.Partition, Key: []byte(r.Trade.Symbol), Value: r.Value()})
		}
		if err := cl.ProduceSync(ctx, krs...).FirstErr(); err != nil {
			return fmt.Errorf("oracle: produce: %w", err)
		}
	}
	return nil
}

// Expected runs one Reference per partition over recs (a backfill: the wall
// clock never moves the watermark) and returns the final candles and the
// number of records each refusal class should send to the dead-letter topic.
func Expected(recs []Record, periods []period.Period, grace time.Duration) (final map[Key]schema.Kline, refused int) {
	refs, refused := shards(recs, periods, grace, false)
	final = map[Key]schema.Kline{}
	for _, ref := range refs {
		f, _ := ref.Candles()
		for k, v := range f {
			final[k] = v
		}
	}
	return final, refused
}

// shards runs one Reference per partition over recs, as a backfill (the
// wall clock never moves the watermark), and counts the records refused.
func shards(recs []Record, periods []period.Period, grace time.Duration, noFlat bool) (map[int32]*Reference, int) {
	refs := map[int32]*Reference{}
	refused := 0
	now := time.Now().UnixMilli()
	for _, r := range recs {
		ref := refs[r.Partition]
		if ref == nil {
			ref = New(periods, grace, time.Minute)
			ref.NoFlat = noFlat
			refs[r.Partition] = ref
		}
		if r.Bad != nil || ref.Trade(r.Trade, now) != engine.Folded {
			refused++
		}
	}
	return refs, refused
}

// Emitted is what a klines topic holds, folded the way ReplacingMergeTree
// would: the newest version per candle.
type Emitted struct {
	Final   map[Key]schema.Kline // candles whose newest version is final
	Records int
	// FinalRecords counts the final records read: under exactly-once each
	// final candle has one, so it equals len(Final).
	FinalRecords int
	// Problems: a version not above one read before it for the same
	// candle (Regressions counts those), two finals that disagree, a
	// candle whose newest version is not final after a final one.
	Problems    []string
	Regressions int
}

// ReadTopic calls fn with every committed record of topic, from the start
// to the end it has when ReadTopic is called, as a downstream consumer
// would see them (read_committed): records of aborted transactions never
// reach fn, and the transaction markers are read but not passed on.
func ReadTopic(ctx context.Context, brokers []string, topic string, fn func(*kgo.Record), opts ...kgo.Opt) error {
	adm, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, opts...)...)
	if err != nil {
		return err
	}
	ends, err := kadm.NewClient(adm).ListEndOffsets(ctx, topic)
	adm.Close()
	if err != nil {
		return fmt.Errorf("oracle: end offsets of %s: %w", topic, err)
	}
	want := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			want[o.Partition] = o.Offset
		}
	})
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		// The last record below the end offset may be a marker.
		kgo.KeepControlRecords()}, opts...)...)
	if err != nil {
		return err
	}
	defer cl.Close()
	for len(want) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return fmt.Errorf("oracle: read %s: %w (still waiting for %v)", topic, ctx.Err(), want)
		}
		var ferr error
		fs.EachError(func(_ string, _ int32, err error) { ferr = err })
		if ferr != nil {
			return ferr
		}
		fs.EachRecord(func(r *kgo.Record) {
			if end, ok := want[r.Partition]; ok && r.Offset+1 >= end {
				delete(want, r.Partition)
			}
			if !r.Attrs.IsControl() {
				fn(r)
			}
		})
	}
	return nil
}

// ReadKlines reads a klines topic from the start to its current end.
func ReadKlines(ctx context.Context, brokers []string, topic string, opts ...kgo.Opt) (*Emitted, error) {
	e := &Emitted{Final: map[Key]schema.Kline{}}
	newest := map[Key]schema.Kline{}
	finals := map[Key]schema.Kline{}
	err := ReadTopic(ctx, brokers, topic, func(r *kgo.Record) {
		var k schema.Kline
		if err := schema.DecodeKline(r.Value, &k); err != nil {
			e.Problems = append(e.Problems, fmt.Sprintf("undecodable kline at %d/%d: %v", r.Partition, r.Offset, err))
			return
		}
		e.Records++
		key := KeyOf(&k)
		prev, seen := newest[key]
		if seen && k.Version <= prev.Version {
			e.Regressions++
			e.Problems = append(e.Problems, fmt.Sprintf("%v: version %d after %d", key, k.Version, prev.Version))
		}
		if !seen || k.Version > prev.Version {
			newest[key] = k
		}
		if !k.IsFinal {
			return
		}
		e.FinalRecords++
		if f, ok := finals[key]; ok && !Equal(f, k) {
			e.Problems = append(e.Problems, fmt.Sprintf("%v: final twice, differently:\n%+v\n%+v", key, f, k))
		}
		finals[key] = k
	}, opts...)
	if err != nil {
		return nil, err
	}
	for key, k := range newest {
		if k.IsFinal {
			k.Version = 0
			e.Final[key] = k
		} else if _, ok := finals[key]; ok {
			e.Problems = append(e.Problems, fmt.Sprintf("%v: newest version %d is not final, after a final record", key, k.Version))
		}
	}
	return e, nil
}

// Check reads the klines topic and returns "" when its final candles equal
// want and it shows no problem, else what is wrong.
func Check(ctx context.Context, brokers []string, topic string, want map[Key]schema.Kline) (*Emitted, string) {
	got, err := ReadKlines(ctx, brokers, topic)
	if err != nil {
		return nil, err.Error()
	}
	if len(got.Problems) > 0 {
		return got, fmt.Sprintf("%d problems on %s; first: %s", len(got.Problems), topic, got.Problems[0])
	}
	return got, Diff(got.Final, want)
}

// Equal compares two candles field by field, every decimal exactly,
// versions ignored.
func Equal(a, b schema.Kline) bool {
	a.Version, b.Version = 0, 0
	return a == b
}

// Diff returns "" when got and want hold the same candles, else a summary
// with a few examples of what is missing, extra or different.
func Diff(got, want map[Key]schema.Kline) string {
	var missing, extra, differ []string
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			missing = append(missing, fmt.Sprintf("%v", k))
		} else if !Equal(g, w) {
			differ = append(differ, fmt.Sprintf("%v\n   got  %+v\n   want %+v", k, g, w))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			extra = append(extra, fmt.Sprintf("%v", k))
		}
	}
	if len(missing)+len(extra)+len(differ) == 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d candles expected, %d got: %d missing, %d extra, %d differ", len(want), len(got), len(missing), len(extra), len(differ))
	for _, l := range []struct {
		name string
		l    []string
	}{{"missing", missing}, {"extra", extra}, {"differ", differ}} {
		sort.Strings(l.l)
		for i, s := range l.l {
			if i == 3 {
				break
			}
			fmt.Fprintf(&b, "\n  %s: %s", l.name, s)
		}
	}
	return b.String()
}

// Committed reports whether group has committed the end offset of every
// non-empty partition of topic: every record was handled and delivered.
func Committed(ctx context.Context, adm *kadm.Client, group, topic string) (bool, error) {
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return false, err
	}
	commits, err := adm.FetchOffsets(ctx, group)
	if err != nil {
		return false, err
	}
	done := true
	ends.Each(func(e kadm.ListedOffset) {
		if e.Offset == 0 {
			return
		}
		c, ok := commits.Lookup(topic, e.Partition)
		if !ok || c.Err != nil || c.At < e.Offset {
			done = false
		}
	})
	return done, nil
}
