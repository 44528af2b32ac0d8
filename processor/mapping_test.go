package processor_test

import (
	"context"
	"encoding/binary"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/klagg/klagg/hint"
	"github.com/klagg/klagg/internal/oracle"
	"github.com/klagg/klagg/internal/testkit"
	"github.com/klagg/klagg/processor"
	"github.com/klagg/klagg/schema"
)

// A platform's trade record, two versions: v2 adds a field and moves the
// time to microseconds in a nested record.
const (
	platformV1 = `{"type":"record","name":"Execution","namespace":"acme","fields":[
 {"name":"market","type":"string"},
 {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":20,"scale":4}},
 {"name":"amount","type":"string"},
 {"name":"at","type":{"type":"record","name":"Stamp","fields":[{"name":"micros","type":{"type":"long","logicalType":"timestamp-micros"}}]}},
 {"name":"taker","type":{"type":"enum","name":"Taker","symbols":["BUYER","SELLER"]}},
 {"name":"exec_id","type":"long"}]}`
	platformV2 = `{"type":"record","name":"Execution","namespace":"acme","fields":[
 {"name":"market","type":"string"},
 {"name":"venue","type":["null","string"],"default":null},
 {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":20,"scale":4}},
 {"name":"amount","type":"string"},
 {"name":"at","type":{"type":"record","name":"Stamp","fields":[{"name":"micros","type":{"type":"long","logicalType":"timestamp-micros"}}]}},
 {"name":"taker","type":{"type":"enum","name":"Taker","symbols":["BUYER","SELLER"]}},
 {"name":"exec_id","type":"long"}]}`
)

var platformMapping = schema.JSONMapping{Symbol: "market", Price: "price", Quantity: "amount", Time: "at.micros", TimeUnit: "us",
	Side: "taker", TakerBuy: []string{"BUYER"}, TakerSell: []string{"SELLER"}, ID: "exec_id"}

// TestAvroMappedTrades: a platform's own Avro trades (other field names,
// a nested record, microsecond times, an enum side), of two writer
// schemas, the second registered after the member started: candles equal
// the oracle's.
func TestAvroMappedTrades(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "trades"))
	brokers := cluster.ListenAddrs()
	reg := srfake.New()
	defer reg.Close()
	v1, _, err := reg.RegisterSchema("trades-value", sr.Schema{Schema: platformV1, Type: sr.TypeAvro})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cfg := processor.DefaultConfig()
	cfg.Brokers, cfg.SchemaRegistry, cfg.InputFormat, cfg.InputMapping = brokers, reg.URL(), schema.InputAvro, &platformMapping
	cfg.FlushInterval = 50 * time.Millisecond
	stats := &processor.Stats{}
	mctx, mcancel := context.WithCancel(ctx)
	errs := make(chan error, 1)
	go func() { errs <- processor.Run(mctx, cfg, processor.WithStats(stats)) }()

	v2, _, err := reg.RegisterSchema("trades-value", sr.Schema{Schema: platformV2, Type: sr.TypeAvro})
	if err != nil {
		t.Fatal(err)
	}
	recs := oracle.Market(oracle.MarketSpec{Seed: 5, Symbols: 20, Trades: 6_000, Partitions: 2,
		Start: time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC), StepMs: 100, DuplicateRate: 0.01})
	s1, s2 := avro.MustParse(platformV1), avro.MustParse(platformV2)
	var out []*kgo.Record
	var expected []oracle.Record
	for i, r := range recs {
		tr := r.Trade
		rec := map[string]any{"market": tr.Symbol, "price": new(big.Rat).SetFrac64(int64(tr.Price)/10_000, 10_000),
			"amount": tr.Qty.String(), "at": map[string]any{"micros": time.UnixMicro(tr.Time*1000 + int64(i%1000)).UTC()},
			"taker": map[bool]string{false: "BUYER", true: "SELLER"}[tr.BuyerMaker], "exec_id": tr.AggID}
		id, s := v1, s1
		if i%2 == 1 {
			id, s = v2, s2
			rec["venue"] = "acme"
		}
		body, err := avro.Marshal(s, rec)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, &kgo.Record{Topic: "trades", Partition: r.Partition, Key: []byte(tr.Symbol),
			Value: append(binary.BigEndian.AppendUint32([]byte{0}, uint32(id)), body...)})
		// What the mapping gives: one raw trade per record, its id exec_id.
		tr.First, tr.Last = tr.AggID, tr.AggID
		expected = append(expected, oracle.Record{Partition: r.Partition, Trade: tr})
	}
	prod := producer(t, brokers)
	if err := prod.ProduceSync(ctx, out...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, time.Minute, "offsets committed to the end", func() bool {
		select {
		case err := <-errs:
			t.Fatalf("the member stopped: %v", err)
		default:
		}
		ok, err := oracle.Committed(ctx, kadm.NewClient(prod), cfg.Group, cfg.TradesTopic)
		return err == nil && ok
	})
	mcancel()
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	want, refused := oracle.Expected(expected, cfg.Engine.Periods, cfg.Engine.Grace)
	if _, problem := oracle.Check(ctx, brokers, cfg.KlinesTopic, want); problem != "" {
		t.Fatal(problem)
	}
	if dead := stats.DeadLetters.Load(); dead != int64(refused) || refused == 0 {
		t.Fatalf("%d dead letters, want the oracle's %d duplicates and late trades", dead, refused)
	}
	t.Logf("%d records of 2 writer schemas: %d final candles equal to the oracle's, %d refused", len(out), len(want), refused)
}

// TestAvroMappingDoesNotFit: a mapping that does not fit the newest
// writer schema stops start-up, naming the field and the flag's setting.
func TestAvroMappingDoesNotFit(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "trades"))
	reg := srfake.New()
	defer reg.Close()
	if _, _, err := reg.RegisterSchema("trades-value", sr.Schema{Schema: platformV1, Type: sr.TypeAvro}); err != nil {
		t.Fatal(err)
	}
	m := platformMapping
	m.Quantity = "qty"
	cfg := processor.DefaultConfig()
	cfg.Brokers, cfg.SchemaRegistry, cfg.InputFormat, cfg.InputMapping = cluster.ListenAddrs(), reg.URL(), schema.InputAvro, &m
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	err := processor.Run(ctx, cfg)
	var he *hint.Error
	var me *schema.MappingMismatchError
	if !errors.As(err, &he) || he.Setting != "InputMapping" || !errors.As(err, &me) || me.Path != "qty" || !strings.Contains(err.Error(), "no such field") {
		t.Fatalf("Run: %v; want a hint naming InputMapping and a MappingMismatchError at qty", err)
	}
}
