package serve_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/internal/testkit"
	"github.com/klagg/klagg/schema"
	"github.com/klagg/klagg/serve"
)

// TestStoreResumes: serve with --data keeps what it read across a restart
// and resumes after the last record it applied: the second run reads only
// the records produced while it was down, a newer version of a candle
// replaces the stored one, an older version does not, and the history
// answers in full.
func TestStoreResumes(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "klines"))
	prod, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	enc, err := schema.NewKlineEncoder(schema.FramingSingleObject, 0)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC).UnixMilli()
	kline := func(i int, version int64, close decimal.Fixed) *kgo.Record {
		open := t0 + int64(i)*60_000
		k := schema.Kline{Symbol: "BTCUSDT", Period: "1m", OpenTime: open, CloseTime: open + 59_999, Open: close, High: close,
			Low: close, Close: close, TradeCount: 1, FirstTradeID: int64(i), LastTradeID: int64(i), IsFinal: true, Version: version}
		return &kgo.Record{Topic: "klines", Partition: int32(i % 2), Value: enc.Append(nil, &k)}
	}
	produce := func(recs ...*kgo.Record) {
		if err := prod.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	var first []*kgo.Record
	for i := range 10 {
		first = append(first, kline(i, 10, decimal.Fixed(100+i)*100_000_000))
	}
	produce(first...)

	dir := t.TempDir()
	run := func(topic, dir string) (*serve.Server, func() error) {
		cfg := serve.DefaultConfig()
		cfg.Brokers, cfg.HTTP, cfg.KlinesTopic, cfg.Data = cluster.ListenAddrs(), "127.0.0.1:0", topic, dir
		srv, err := serve.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- srv.Run(ctx) }()
		return srv, func() error {
			cancel()
			return <-done
		}
	}
	srv, stop := run("klines", dir)
	testkit.WaitFor(t, 20*time.Second, "the first ten records", func() bool { return srv.Records() == 10 })
	if got := query(t, srv); len(got) != 10 {
		t.Fatalf("%d candles after the first run", len(got))
	}
	// What kill -9 would leave: the files as they are while serve runs.
	crashed := copyDir(t, dir)
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// While serve is down: a newer version of candle 0, an older one of
	// candle 1, and five new candles.
	later := []*kgo.Record{kline(0, 11, 9_900_000_000), kline(1, 9, 9_900_000_000)}
	for i := 10; i < 15; i++ {
		later = append(later, kline(i, 10, decimal.Fixed(100+i)*100_000_000))
	}
	produce(later...)
	for _, restart := range []struct{ name, dir string }{{"a clean stop", dir}, {"kill -9", crashed}} {
		srv, stop = run("klines", restart.dir)
		testkit.WaitFor(t, 20*time.Second, "the records produced while serve was down", func() bool { return srv.Records() >= int64(len(later)) })
		got := query(t, srv)
		if srv.Records() != int64(len(later)) {
			t.Fatalf("after %s, the second run read %d records; only the %d produced since were new", restart.name, srv.Records(), len(later))
		}
		if len(got) != 15 || got[0][4] != "99.00000000" || got[1][4] != "101.00000000" || got[14][4] != "114.00000000" {
			t.Fatalf("after %s: %d candles, %v", restart.name, len(got), got)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	}

	// The store belongs to its topic.
	if _, err := kadmCreate(t, cluster, "other"); err != nil {
		t.Fatal(err)
	}
	cfg := serve.DefaultConfig()
	cfg.Brokers, cfg.HTTP, cfg.KlinesTopic, cfg.Data = cluster.ListenAddrs(), "127.0.0.1:0", "other", dir
	other, err := serve.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := other.Run(ctx); !errors.Is(err, serve.ErrStoreTopic) || !contains(err.Error(), `filled from topic "klines"`, "own Data directory") {
		t.Fatalf("another topic's store: %v", err)
	}
}

// TestStoreFormat: a data directory in a layout this build does not know
// is refused with a message that says what to do, never misread.
func TestStoreFormat(t *testing.T) {
	dir := t.TempDir()
	db, err := pebble.Open(dir, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Set([]byte("format"), []byte("klagg-serve-99"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	db.Close()
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "klines"))
	cfg := serve.DefaultConfig()
	cfg.Brokers, cfg.HTTP, cfg.Data = cluster.ListenAddrs(), "127.0.0.1:0", dir
	srv, err := serve.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = srv.Run(t.Context())
	if !errors.Is(err, serve.ErrStoreFormat) ||
		!contains(err.Error(), `"klagg-serve-99"`, "move the directory away") {
		t.Fatalf("got %v", err)
	}
}

// copyDir copies a directory's regular files, as they are on disk now.
func copyDir(t *testing.T, from string) string {
	t.Helper()
	to := t.TempDir()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

func contains(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

func kadmCreate(t *testing.T, c *kfake.Cluster, topic string) (kadm.CreateTopicResponse, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	return kadm.NewClient(cl).CreateTopic(t.Context(), 1, 1, nil, topic)
}

// query asks srv for every BTCUSDT 1m candle, as Binance's arrays.
func query(t *testing.T, srv *serve.Server) [][]any {
	t.Helper()
	u := fmt.Sprintf("http://%s/api/v3/klines?%s", srv.Addr(), url.Values{"symbol": {"BTCUSDT"}, "interval": {"1m"},
		"startTime": {"0"}, "limit": {"1000"}}.Encode())
	code, body := get(t, u)
	if code != http.StatusOK {
		t.Fatalf("%d %s", code, body)
	}
	var rows [][]any
	if err := json.Unmarshal(body, &rows); err != nil {
		t.Fatal(err)
	}
	return rows
}
