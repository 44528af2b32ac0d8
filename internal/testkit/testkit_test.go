package testkit_test

import (
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/klagg/klagg/internal/testkit"
)

func TestBufferConcurrent(t *testing.T) {
	var b testkit.Buffer
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for range 100 {
				fmt.Fprintf(&b, "%d", i)
				_ = b.String()
			}
		})
	}
	wg.Wait()
	if got := len(b.String()); got != 400 {
		t.Fatalf("%d bytes written, want 400", got)
	}
}

func TestFreeAddrListens(t *testing.T) {
	ln, err := net.Listen("tcp", testkit.FreeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
}

func TestFreeAddrPairListens(t *testing.T) {
	addr := testkit.FreeAddrPair(t)
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(port)
	for _, a := range []string{addr, net.JoinHostPort(host, strconv.Itoa(n+1))} {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
	}
}

func TestWaitForAndCluster(t *testing.T) {
	c := testkit.Cluster(t, kfake.NumBrokers(1))
	start := time.Now()
	testkit.WaitFor(t, time.Second, "40 ms to pass", func() bool { return time.Since(start) > 40*time.Millisecond })
	if len(c.ListenAddrs()) != 1 {
		t.Fatalf("listen addresses %v", c.ListenAddrs())
	}
}
