package serve_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/internal/testkit"
	"github.com/klagg/klagg/schema"
	"github.com/klagg/klagg/serve"
)

// BenchmarkFanOut: 1,000 websocket clients follow one stream while kline
// records of it reach the klines topic ten times a second (klagg's flush
// cadence: a candle changes at most once a flush); each record carries
// its produce time (µs) as its version, and each client notes when it
// reads the update. It reports the record-to-client latency's median and
// p99 over every update every client read, all on loopback: against the
// broker KLAGG_TEST_BROKERS names (scripts/test.sh's Apache Kafka), else
// kfake. At 200 updates a second (200,000 messages a second to clients in
// the same process) two cores saturate and the latency is the queue's.
func BenchmarkFanOut(b *testing.B) {
	const clients, rate = 1000, 10
	topic := fmt.Sprintf("fanout-%d", time.Now().UnixNano())
	brokers := strings.Split(os.Getenv("KLAGG_TEST_BROKERS"), ",")
	if brokers[0] == "" {
		brokers = testkit.Cluster(b, kfake.NumBrokers(1)).ListenAddrs()
	}
	adm, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		b.Fatal(err)
	}
	defer adm.Close()
	if _, err := kadm.NewClient(adm).CreateTopic(b.Context(), 1, 1, nil, topic); err != nil {
		b.Fatal(err)
	}
	cfg := serve.DefaultConfig()
	cfg.Brokers, cfg.HTTP, cfg.KlinesTopic = brokers, "127.0.0.1:0", topic
	srv, err := serve.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	go srv.Run(ctx)
	prod, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ProducerLinger(0))
	if err != nil {
		b.Fatal(err)
	}
	defer prod.Close()
	enc, _ := schema.NewKlineEncoder(schema.FramingSingleObject, 0)
	t0 := time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	record := func() *kgo.Record {
		k := schema.Kline{Symbol: "BTCUSDT", Period: "1m", OpenTime: t0, CloseTime: t0 + 59_999, Open: 1, High: 1, Low: 1, Close: 1,
			TradeCount: 1, Version: time.Now().UnixMicro()}
		return &kgo.Record{Topic: topic, Value: enc.Append(nil, &k)}
	}
	// One record first, so that the symbol is known.
	if err := prod.ProduceSync(ctx, record()).FirstErr(); err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	for range clients {
		c, _, err := websocket.Dial(ctx, "ws://"+srv.Addr()+"/ws/btcusdt@kline_1m", nil)
		if err != nil {
			b.Fatal(err)
		}
		defer c.CloseNow()
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for {
				_, msg, err := c.Read(ctx)
				if err != nil {
					break
				}
				now := time.Now().UnixMicro()
				var e struct {
					K struct {
						Version int64 `json:"version"`
					} `json:"k"`
				}
				if json.Unmarshal(msg, &e) == nil && e.K.Version > 0 {
					mine = append(mine, time.Duration(now-e.K.Version)*time.Microsecond)
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	for srv.Streams() < clients {
		time.Sleep(10 * time.Millisecond)
	}
	b.ResetTimer()
	tick := time.NewTicker(time.Second / rate)
	defer tick.Stop()
	for b.Loop() {
		<-tick.C
		prod.Produce(ctx, record(), nil)
	}
	time.Sleep(500 * time.Millisecond) // the last updates reach the clients
	b.StopTimer()
	cancel()
	wg.Wait()
	if len(lat) < clients {
		b.Fatalf("%d updates read by %d clients", len(lat), clients)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "median-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(len(lat))/float64(clients), "updates/client")
}
