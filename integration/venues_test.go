package integration_test

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/internal/oracle"
	"github.com/klagg/klagg/processor"
	"github.com/klagg/klagg/schema"
)

// venueFeed is a trades topic as a venue's feed fills it: batches of
// trades (resent ones among them), messages of other channels, broken
// messages and refusable trades inside good batches.
type venueFeed struct {
	records  []*kgo.Record
	expected []oracle.Record // the trades klagg must fold, in order
	bad      map[string]int  // dead letters owed beyond the oracle's refusals, by reason
	// placed: some refused trades sit in batches of several, so some
	// dead letters must name their trade's place (header klagg.trade).
	placed bool
}

// newVenueFeed packs the trades of a synthetic market into messages of 1
// to 4 trades of one partition, encoded by enc, and decodes each message
// with dec for the oracle's trades, checking that decoding kept what
// was written.
func newVenueFeed(t *testing.T, recs []oracle.Record, partitions int32, dec schema.TradeDecoder,
	enc func([]schema.Trade) []byte, other, broken []byte, badTrade func(*schema.Trade) []byte) *venueFeed {
	t.Helper()
	rng := rand.New(rand.NewPCG(3, 4))
	f := &venueFeed{bad: map[string]int{}, placed: true}
	pending := map[int32][]schema.Trade{}
	var b schema.Batch
	emit := func(p int32, value []byte, trades []schema.Trade) {
		f.records = append(f.records, &kgo.Record{Partition: p, Value: value})
		if err := dec.DecodeBatch(nil, value, time.Now().UnixMilli(), &b); err != nil {
			t.Fatalf("decode %s: %v", value, err)
		}
		if len(b.Trades) != len(trades) {
			t.Fatalf("%d trades decoded from %s, %d written", len(b.Trades), value, len(trades))
		}
		for i, tr := range b.Trades {
			w := trades[i]
			if string(tr.Symbol) != string(dec.SymbolPrefix)+string(w.Symbol) || tr.Price != w.Price || tr.Quantity != w.Quantity ||
				tr.Time != w.Time || tr.BuyerMaker != w.BuyerMaker {
				t.Fatalf("decoded %+v from %s, wrote %+v", tr, value, w)
			}
			if b.Errs[i] != nil {
				continue
			}
			f.expected = append(f.expected, oracle.Record{Partition: p, Trade: oracle.Trade{Symbol: string(tr.Symbol), AggID: tr.AggID,
				First: tr.FirstID, Last: tr.LastID, Time: tr.Time, Price: tr.Price, Qty: tr.Quantity, BuyerMaker: tr.BuyerMaker, Unordered: tr.Unordered}})
		}
	}
	flush := func(p int32) {
		if ts := pending[p]; len(ts) > 0 {
			emit(p, enc(ts), ts)
			pending[p] = nil
		}
	}
	for i, r := range recs {
		if r.Bad != nil {
			continue
		}
		o := r.Trade
		tr := schema.Trade{Symbol: []byte(o.Symbol), AggID: o.AggID, FirstID: o.First, LastID: o.Last, Time: o.Time,
			Price: o.Price, Quantity: o.Qty, BuyerMaker: o.BuyerMaker}
		pending[r.Partition] = append(pending[r.Partition], tr)
		if len(pending[r.Partition]) >= 1+rng.IntN(4) {
			flush(r.Partition)
		}
		if i%997 == 0 {
			flush(r.Partition)
			f.records = append(f.records, &kgo.Record{Partition: r.Partition, Value: other},
				&kgo.Record{Partition: r.Partition, Value: broken},
				&kgo.Record{Partition: r.Partition, Value: badTrade(&tr)})
			f.bad[schema.ReasonWrongEvent.String()]++
			f.bad[schema.ReasonMalformed.String()]++
			f.bad[schema.ReasonInvalidSide.String()]++
		}
	}
	for p := range partitions {
		flush(p)
	}
	return f
}

// prepend puts the venue's documented sample message (testdata of package
// schema: its edge cases, checked field by field there) first on
// partition p, its trades first in the oracle's.
func (f *venueFeed) prepend(t *testing.T, p int32, dec schema.TradeDecoder, file string) {
	t.Helper()
	value, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var b schema.Batch
	if err := dec.DecodeBatch(nil, value, time.Now().UnixMilli(), &b); err != nil || len(b.Trades) < 2 {
		t.Fatalf("%s: %v, %d trades", file, err, len(b.Trades))
	}
	var first []oracle.Record
	for i, tr := range b.Trades {
		if b.Errs[i] != nil {
			t.Fatalf("%s: trade %d: %v", file, i, b.Errs[i])
		}
		first = append(first, oracle.Record{Partition: p, Trade: oracle.Trade{Symbol: string(tr.Symbol), AggID: tr.AggID,
			First: tr.FirstID, Last: tr.LastID, Time: tr.Time, Price: tr.Price, Qty: tr.Quantity, BuyerMaker: tr.BuyerMaker}})
	}
	f.records = append([]*kgo.Record{{Partition: p, Value: value}}, f.records...)
	f.expected = append(first, f.expected...)
}

// TestVenueFormats replays each venue's trade messages through the built
// binary, its documented sample first: candles equal the oracle's over the
// trades the messages carry;
// another channel's messages, broken messages and a trade with an unknown
// side are dead letters with their reasons, and resent trades duplicates.
func TestVenueFormats(t *testing.T) {
	needBroker(t)
	others := map[string]string{
		"coinbase": `{"channel":"heartbeats","client_id":"","timestamp":"2024-05-01T00:00:00Z","sequence_num":9,"events":[{"current_time":"2024-05-01 00:00:00","heartbeat_counter":9}]}`,
		"kraken":   `{"channel":"heartbeat"}`,
		"okx":      `{"arg":{"channel":"books5","instId":"BTC-USDT"},"data":[{"asks":[["1","2","0","1"]],"bids":[],"instId":"BTC-USDT","ts":"1714521600000","seqId":1}]}`,
		"bybit":    `{"topic":"orderbook.1.BTCUSDT","type":"snapshot","ts":1714521600000,"data":{"s":"BTCUSDT","b":[["1","2"]],"a":[],"u":1,"seq":2},"cts":1714521600000}`,
	}
	sides := map[string][2]string{"coinbase": {`"BUY"`, `"UNKNOWN_ORDER_SIDE"`}, "kraken": {`"buy"`, `"long"`},
		"okx": {`"buy"`, `"b"`}, "bybit": {`"Buy"`, `""`}}
	for _, venue := range []string{"coinbase", "kraken", "okx", "bybit"} {
		t.Run(venue, func(t *testing.T) {
			f, err := schema.ParseInputFormat(venue)
			if err != nil {
				t.Fatal(err)
			}
			b := newBed(t, 2)
			dec := schema.TradeDecoder{Format: f, SymbolPrefix: []byte(venue + ":"), Validate: schema.ValidateConfig{MaxSkew: time.Minute}}
			recs := market(11, 12_000, 2, "2024-05-01T00:00:00Z", 150, 0.01, 0)
			enc := func(ts []schema.Trade) []byte { return schema.AppendVenueJSON(nil, f, ts) }
			badTrade := func(tr *schema.Trade) []byte {
				tr.BuyerMaker = false
				msg := enc([]schema.Trade{*tr})
				s := sides[venue]
				return []byte(replaceOnce(string(msg), s[0], s[1]))
			}
			feed := newVenueFeed(t, recs, 2, dec, enc, []byte(others[venue]), []byte(others[venue])[:15], badTrade)
			feed.prepend(t, 0, dec, "../schema/testdata/venues/"+venue+".json")
			b.startWith("a", "--input-format", venue, "--symbol-prefix", venue+":")
			if err := b.cl.ProduceSync(b.ctx, withTopic(feed.records, b.topic("trades"))...).FirstErr(); err != nil {
				t.Fatal(err)
			}
			b.produced = feed.expected
			b.settle(3 * time.Minute)
			b.stop("a")
			b.check()
			checkDeadLetters(t, b, feed)
		})
	}
}

// TestJSONMappingInput reads a platform's own JSON (nested paths, the
// symbol in the envelope, microsecond times, a boolean side, no ordered
// id) with --input-mapping.
func TestJSONMappingInput(t *testing.T) {
	b := newBed(t, 2)
	m := schema.JSONMapping{Trades: "fills[]", Symbol: "$.instrument.code", Price: "px.value", Quantity: "qty",
		Time: "at_us", TimeUnit: "us", Side: "aggressor", TakerBuy: []string{"bid"}, TakerSell: []string{"ask"},
		Match: map[string][]string{"kind": {"fills"}}}
	cm, err := m.Compile()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "mapping.json")
	text, _ := json.Marshal(m)
	if err := os.WriteFile(file, text, 0o644); err != nil {
		t.Fatal(err)
	}
	dec := schema.TradeDecoder{Format: schema.InputJSON, Mapping: cm, Validate: schema.ValidateConfig{MaxSkew: time.Minute}}
	// One symbol per message: the envelope names it. No ids, so resent
	// trades would count twice: the market has none.
	enc := func(ts []schema.Trade) []byte {
		out := []byte(`{"kind":"fills","instrument":{"code":"`)
		if len(ts) > 0 {
			out = append(out, ts[0].Symbol...)
		}
		out = append(out, `","venue":"acme"},"fills":[`...)
		for i, tr := range ts {
			if i > 0 {
				out = append(out, ',')
			}
			out = append(out, `{"px":{"value":"`...)
			out = append(tr.Price.Append(out), `","ccy":"USD"},"qty":`...)
			out = append(tr.Quantity.Append(out), `,"at_us":`...)
			out = strconv.AppendInt(out, tr.Time*1000+int64(i%1000), 10)
			out = append(out, `,"aggressor":"`...)
			if tr.BuyerMaker {
				out = append(out, "ask"...)
			} else {
				out = append(out, "bid"...)
			}
			out = append(out, `"}`...)
		}
		return append(out, "]}"...)
	}
	recs := market(12, 12_000, 2, "2024-05-01T00:00:00Z", 150, 0, 0)
	feed := newVenueFeedBySymbol(t, recs, dec, enc)
	b.startWith("a", "--input-format", "json", "--input-mapping", file)
	if err := b.cl.ProduceSync(b.ctx, withTopic(feed.records, b.topic("trades"))...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	b.produced = feed.expected
	b.settle(3 * time.Minute)
	b.stop("a")
	b.check()
	checkDeadLetters(t, b, feed)
}

// newVenueFeedBySymbol packs consecutive trades of the same symbol into
// one message, adding one message of another kind per 1,000 trades.
func newVenueFeedBySymbol(t *testing.T, recs []oracle.Record, dec schema.TradeDecoder, enc func([]schema.Trade) []byte) *venueFeed {
	t.Helper()
	f := &venueFeed{bad: map[string]int{}}
	var b schema.Batch
	var run []schema.Trade
	var runP int32
	emit := func() {
		if len(run) == 0 {
			return
		}
		value := enc(run)
		f.records = append(f.records, &kgo.Record{Partition: runP, Value: value})
		if err := dec.DecodeBatch(nil, value, time.Now().UnixMilli(), &b); err != nil || len(b.Trades) != len(run) {
			t.Fatalf("decode %s: %v, %d trades", value, err, len(b.Trades))
		}
		for i, tr := range b.Trades {
			if b.Errs[i] != nil || tr.Price != run[i].Price || tr.Time != run[i].Time || string(tr.Symbol) != string(run[i].Symbol) || !tr.Unordered {
				t.Fatalf("decoded %+v (%v) from %s, wrote %+v", tr, b.Errs[i], value, run[i])
			}
			f.expected = append(f.expected, oracle.Record{Partition: runP, Trade: oracle.Trade{Symbol: string(tr.Symbol),
				First: tr.FirstID, Last: tr.LastID, Time: tr.Time, Price: tr.Price, Qty: tr.Quantity, BuyerMaker: tr.BuyerMaker, Unordered: true}})
		}
		run = nil
	}
	for i, r := range recs {
		o := r.Trade
		if len(run) > 0 && (string(run[0].Symbol) != o.Symbol || len(run) == 5) {
			emit()
		}
		runP = r.Partition
		run = append(run, schema.Trade{Symbol: []byte(o.Symbol), Time: o.Time, Price: o.Price, Quantity: o.Qty, BuyerMaker: o.BuyerMaker})
		if i%1000 == 999 {
			emit()
			f.records = append(f.records, &kgo.Record{Partition: r.Partition, Value: []byte(`{"kind":"quotes","instrument":{"code":"X"},"fills":[]}`)})
			f.bad[schema.ReasonWrongEvent.String()]++
		}
	}
	emit()
	return f
}

func withTopic(recs []*kgo.Record, topic string) []*kgo.Record {
	for _, r := range recs {
		r.Topic = topic
	}
	return recs
}

func replaceOnce(s, old, new string) string {
	for i := 0; i+len(old) <= len(s); i++ {
		if s[i:i+len(old)] == old {
			return s[:i] + new + s[i+len(old):]
		}
	}
	return s
}

// checkDeadLetters: the dead-letter topic holds the oracle's refusals
// (duplicates, late trades) plus the feed's bad messages, by reason, and
// a refused trade of a batch names its place in the batch.
func checkDeadLetters(t *testing.T, b *bed, feed *venueFeed) {
	t.Helper()
	cfg := processor.DefaultConfig()
	_, refused := oracle.Expected(b.produced, cfg.Engine.Periods, cfg.Engine.Grace)
	got := readDeadLetters(t, b.ctx, b.topic("dlq"))
	want := map[string]int{}
	for r, n := range feed.bad {
		want[r] += n
	}
	total := 0
	for r, n := range got {
		total += n
		if n < want[r] {
			t.Errorf("%d dead letters of reason %s, want at least %d", n, r, want[r])
		}
	}
	owed := refused
	for _, n := range feed.bad {
		owed += n
	}
	if total != owed {
		t.Errorf("dead letters by reason %v (%d), want %d: the oracle's %d refused and %v", got, total, owed, refused, feed.bad)
	}
	placed := 0
	err := oracle.ReadTopic(b.ctx, b.brokers, b.topic("dlq"), func(r *kgo.Record) {
		for _, h := range r.Headers {
			if h.Key == processor.HeaderTrade {
				if _, err := strconv.Atoi(string(h.Value)); err != nil {
					t.Errorf("header %s %q", h.Key, h.Value)
				}
				placed++
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if feed.placed != (placed > 0) {
		t.Errorf("%d dead letters name their trade's place in a batch; want some: %v", placed, feed.placed)
	}
	t.Logf("dead letters by reason: %v, %d naming their trade's place", got, placed)
}
