package integration_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/klagg/klagg/internal/oracle"
	"github.com/klagg/klagg/schema"
)

// TestClickHouse: klagg, registry-framed, on the real broker; then
// ClickHouse (chdb, embedded) reads the klines topic's records as
// AvroConfluent, against the registry klagg registered with, into the
// repository's own tables (deploy/clickhouse). SELECT ... FINAL must hold
// exactly the newest version of every candle on the topic, and its final
// candles must equal the oracle's.
func TestClickHouse(t *testing.T) {
	python := os.Getenv("KLAGG_TEST_PYTHON")
	if python == "" {
		t.Skip("KLAGG_TEST_PYTHON (a Python with chdb; scripts/test.sh installs it) is unset")
	}
	reg := srfake.New()
	defer reg.Close()
	b := newBed(t, 3)
	b.extra = []string{"--schema-registry", reg.URL()}
	b.start("a")
	// In three parts, so that candles open across a part's end are
	// published more than once and FINAL has versions to choose from.
	recs := market(5, 30_000, 3, "2024-05-31T21:00:00Z", 300, 0.01, 0)
	for i := range 3 {
		b.produce(recs[i*len(recs)/3 : (i+1)*len(recs)/3])
		b.settle(3 * time.Minute)
	}
	b.stop("a")
	b.check()

	// The topic's records back to back, as ClickHouse's Kafka engine would
	// read them one by one; and the newest version of each candle.
	var raw bytes.Buffer
	newest := map[oracle.Key]schema.Kline{}
	n := 0
	err := oracle.ReadTopic(b.ctx, brokers, b.topic("klines"), func(r *kgo.Record) {
		if r.Value[0] != 0 {
			t.Fatalf("record %d/%d is not Confluent-framed", r.Partition, r.Offset)
		}
		var k schema.Kline
		if err := schema.DecodeKline(r.Value, &k); err != nil {
			t.Fatal(err)
		}
		if prev, ok := newest[oracle.KeyOf(&k)]; !ok || k.Version > prev.Version {
			newest[oracle.KeyOf(&k)] = k
		}
		raw.Write(r.Value)
		n++
	})
	if err != nil {
		t.Fatal(err)
	}
	records := filepath.Join(t.TempDir(), "klines.avro")
	if err := os.WriteFile(records, raw.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(b.ctx, python, "testdata/clickhouse.py", "../deploy/clickhouse", records, reg.URL())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chdb: %v\n%s", err, stderr.String())
	}

	rows := map[oracle.Key]schema.Kline{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var k schema.Kline
		if err := json.Unmarshal(sc.Bytes(), &k); err != nil {
			t.Fatalf("row %q: %v", sc.Text(), err)
		}
		if _, dup := rows[oracle.KeyOf(&k)]; dup {
			t.Fatalf("FINAL returned %v twice", oracle.KeyOf(&k))
		}
		rows[oracle.KeyOf(&k)] = k
	}
	if n <= len(newest) {
		t.Errorf("%d records for %d candles: no candle was published twice", n, len(newest))
	}
	if len(rows) != len(newest) {
		t.Errorf("ClickHouse has %d candles, the topic %d", len(rows), len(newest))
	}
	bad := 0
	for key, want := range newest {
		got, ok := rows[key]
		if !ok || got.Version != want.Version || got.IsFinal != want.IsFinal || got.CloseTime != want.CloseTime || !oracle.Equal(got, want) {
			if bad++; bad <= 5 {
				t.Errorf("%v: ClickHouse %+v, topic's newest %+v", key, got, want)
			}
		}
	}

	// And the final candles are the oracle's.
	final := map[oracle.Key]schema.Kline{}
	for key, k := range rows {
		if k.IsFinal {
			k.Version = 0
			final[key] = k
		}
	}
	if d := oracle.Diff(final, b.expected()); d != "" {
		t.Fatalf("ClickHouse's final candles differ from the oracle's: %s", d)
	}
	t.Logf("ClickHouse read %d records: %d candles, each the topic's newest; %d final, equal to the oracle's", n, len(rows), len(final))
}
