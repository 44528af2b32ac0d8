package integration_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/internal/oracle"
	"github.com/klagg/klagg/processor"
	"github.com/klagg/klagg/schema"
)

const (
	replaySymbols = 2000
	replayTrades  = 2_000_000
)

var replayTopic string

// replayFixture fills one single-partition trades topic once per process:
// 2,000,000 trades of 2,000 symbols over about two hours of trade time.
func replayFixture(b *testing.B) string {
	if brokers == nil {
		b.Skip("KLAGG_TEST_BROKERS is unset")
	}
	if replayTopic != "" {
		return replayTopic
	}
	ctx := context.Background()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerBatchMaxBytes(1<<20))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	topic := fmt.Sprintf("bench-replay-%d", time.Now().UnixNano())
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, nil, topic); err != nil {
		b.Fatal(err)
	}
	recs := oracle.Market(oracle.MarketSpec{Seed: 42, Symbols: replaySymbols, Trades: replayTrades, Partitions: 1,
		Start: time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC), StepMs: 4})
	if err := oracle.Produce(ctx, cl, topic, recs); err != nil {
		b.Fatal(err)
	}
	replayTopic = topic
	return topic
}

// BenchmarkReplay replays the same pre-filled topic two ways, side by side:
// "bare-consumer" is franz-go reading every record and decoding it with
// klagg's decoder; "klagg" is one member joining its group, folding the
// trades into 15 periods, delivering every kline and state record and
// committing to the end (its output topics exist beforehand, as in a
// deployment). Run with -benchtime 1x -count N and compare the medians.
func BenchmarkReplay(b *testing.B) {
	topic := replayFixture(b)
	b.Run("bare-consumer", func(b *testing.B) {
		for b.Loop() {
			start := time.Now()
			cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
				kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
			if err != nil {
				b.Fatal(err)
			}
			var tr schema.Trade
			n := 0
			for n < replayTrades {
				cl.PollRecords(context.Background(), 10_000).EachRecord(func(r *kgo.Record) {
					if err := schema.DecodeBinanceJSON(r.Value, r.Key, &tr); err != nil {
						b.Fatal(err)
					}
					n++
				})
			}
			cl.Close()
			b.ReportMetric(float64(replayTrades)/time.Since(start).Seconds(), "trades/s")
		}
	})
	var group string
	b.Run("klagg", func(b *testing.B) {
		for b.Loop() {
			group = fmt.Sprintf("bench-%d", time.Now().UnixNano())
			cfg := benchConfig(topic, group)
			createOutputs(b, cfg) // a deployment's one-time step, not replay time
			start := time.Now()
			stats := runUntilCommitted(b, cfg)
			b.ReportMetric(float64(replayTrades)/time.Since(start).Seconds(), "trades/s")
			b.ReportMetric(float64(stats.Klines.Load())/float64(replayTrades), "klines/trade")
		}
	})
	// The state the last klagg run left: a new member of the same group
	// restores the partition's 2,000 symbols × 15 periods.
	b.Run("restore", func(b *testing.B) {
		if group == "" {
			b.Skip("needs the klagg sub-benchmark")
		}
		for b.Loop() {
			stats := &processor.Stats{}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- processor.Run(ctx, benchConfig(topic, group), processor.WithStats(stats)) }()
			for stats.Restores.Load() == 0 {
				time.Sleep(5 * time.Millisecond)
			}
			cancel()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(stats.RestoreNanos.Load())/1e6, "restore-ms")
		}
	})
}

func createOutputs(b *testing.B, cfg processor.Config) {
	b.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	for _, t := range []struct {
		name    string
		configs map[string]*string
	}{{cfg.KlinesTopic, nil}, {cfg.StateTopic, map[string]*string{"cleanup.policy": kadm.StringPtr("compact")}}, {cfg.DLQTopic, nil}} {
		if _, err := adm.CreateTopic(context.Background(), 1, 1, t.configs, t.name); err != nil {
			b.Fatal(err)
		}
	}
}

func benchConfig(topic, group string) processor.Config {
	cfg := processor.DefaultConfig()
	cfg.Brokers = brokers
	cfg.Group = group
	cfg.TradesTopic = topic
	cfg.KlinesTopic = group + "-klines"
	cfg.StateTopic = group + "-state"
	cfg.DLQTopic = group + "-dlq"
	cfg.Engine.SymbolsHint = replaySymbols
	return cfg
}

func runUntilCommitted(b *testing.B, cfg processor.Config) *processor.Stats {
	b.Helper()
	stats := &processor.Stats{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- processor.Run(ctx, cfg, processor.WithStats(stats)) }()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	for {
		ok, err := oracle.Committed(context.Background(), adm, cfg.Group, cfg.TradesTopic)
		if err == nil && ok {
			break
		}
		select {
		case err := <-done:
			b.Fatalf("member stopped: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	return stats
}
