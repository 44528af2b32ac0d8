package processor

import (
	"context"
	"time"
)

// backoff paces a starting member's looks at something it waits for
// (a topic, its partitions, a coordinator): 100 ms, doubling up to 5 s,
// for as long as its context lives. A member that gave up after a fixed
// time would be lost to a deployment that starts it before the cluster
// is ready.
type backoff struct {
	next   time.Duration
	waited time.Duration
}

// wait sleeps for the next interval and reports false when ctx ended first.
func (b *backoff) wait(ctx context.Context) bool {
	if b.next == 0 {
		b.next = 100 * time.Millisecond
	}
	select {
	case <-ctx.Done():
		return false
	case <-time.After(b.next):
	}
	b.waited += b.next
	b.next = min(2*b.next, 5*time.Second)
	return true
}
