package processor

import (
	"testing"
	"time"
)

// TestFlushedAt: exactly-once flushes start an interval apart, but a
// commit longer than half an interval leaves half an interval to poll.
func TestFlushedAt(t *testing.T) {
	start := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)
	const interval = 250 * time.Millisecond
	for _, tc := range []struct {
		name   string
		commit time.Duration // how long the commit took
		want   time.Duration // the next flush, after start
	}{
		{"short commit", 20 * time.Millisecond, interval},
		{"half an interval", interval / 2, interval},
		{"longer than half", 200 * time.Millisecond, 200*time.Millisecond + interval/2},
		{"longer than the interval", 500 * time.Millisecond, 500*time.Millisecond + interval/2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := start.Add(tc.commit)
			e := &exactlyOnce{core: &core{clock: func() time.Time { return now }}}
			if got := e.flushedAt(start, interval).Add(interval).Sub(start); got != tc.want {
				t.Fatalf("next flush %s after the start, want %s", got, tc.want)
			}
		})
	}
}
