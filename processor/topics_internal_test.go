package processor

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// TestAwaitPartitions: topics whose partitions take 40 s to show are
// waited for (past the 15 s a member used to give up after), with back-off
// and a log line that names them; a stopped context ends the wait with an
// error that names them too.
func TestAwaitPartitions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs bytes.Buffer
		r := &core{log: slog.New(slog.NewTextHandler(&logs, nil))}
		start := time.Now()
		looks := 0
		describe := func(topics []string) (map[string]int32, error) {
			looks++
			got := map[string]int32{}
			if time.Since(start) >= 40*time.Second {
				for _, topic := range topics {
					got[topic] = 6
				}
			}
			return got, nil
		}
		counts := map[string]int32{"klines": 0, "klines-state": 6, "trades-dlq": 0}
		if err := r.awaitPartitions(t.Context(), counts, describe); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		if counts["klines"] != 6 || counts["trades-dlq"] != 6 || took < 40*time.Second || took > 46*time.Second {
			t.Fatalf("counts %v after %s", counts, took)
		}
		if looks > 15 {
			t.Fatalf("%d looks in %s: no back-off", looks, took)
		}
		if !strings.Contains(logs.String(), "waiting for the topics' partitions to show") || !strings.Contains(logs.String(), "klines trades-dlq") {
			t.Fatalf("nothing said what it waits for:\n%s", logs.String())
		}

		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		never := func([]string) (map[string]int32, error) { return nil, errors.New("not yet") }
		err := r.awaitPartitions(ctx, map[string]int32{"klines": 0}, never)
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "[klines]") {
			t.Fatalf("stopped: %v", err)
		}
	})
}
