package partition_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/klagg/klagg/partition"
)

func TestSymbols(t *testing.T) {
	s := partition.NewSymbols(0)
	for i, name := range []string{"BTCUSDT", "ETHUSDT", "BNBUSDT"} {
		if got := s.Add([]byte(name)); got != int32(i) {
			t.Fatalf("%s: slot %d, want %d", name, got, i)
		}
	}
	buf := []byte("ETHUSDT")
	if i, ok := s.Lookup(buf); !ok || i != 1 || s.Name(i) != "ETHUSDT" {
		t.Fatalf("lookup: %d %v", i, ok)
	}
	buf[0] = 'X' // the table copied the name
	if s.Name(1) != "ETHUSDT" {
		t.Fatal("name aliases the caller's buffer")
	}
	if _, ok := s.Lookup([]byte("XRPUSDT")); ok || s.Len() != 3 {
		t.Fatal("unknown symbol found")
	}
	if n := testing.AllocsPerRun(100, func() { s.Lookup(buf) }); n != 0 {
		t.Fatalf("lookup allocates %v", n)
	}
}

func TestCheckPartitionCounts(t *testing.T) {
	if err := partition.CheckPartitionCounts("trades", 6, map[string]int32{"klines": 6, "klines-state": 6}); err != nil {
		t.Fatal(err)
	}
	err := partition.CheckPartitionCounts("trades", 6, map[string]int32{"klines": 3, "klines-state": 6, "dlq": 12})
	var me *partition.MismatchError
	if !errors.Is(err, partition.ErrPartitionMismatch) || !errors.As(err, &me) {
		t.Fatalf("got %v", err)
	}
	for _, want := range []string{`topic "dlq" has 12 partitions but trades topic "trades" has 6`, `topic "klines" has 3`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "klines-state") {
		t.Errorf("a matching topic is reported: %v", err)
	}
	if partition.Target(5) != 5 {
		t.Fatal("target")
	}
}
