package processor

import (
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
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

// TestCommitAt: a transaction's offset commit carries the offsets polled
// at its last drain, whatever was polled after it.
func TestCommitAt(t *testing.T) {
	part := func(p int32, off int64, epoch int32) kmsg.TxnOffsetCommitRequestTopicPartition {
		tp := kmsg.NewTxnOffsetCommitRequestTopicPartition()
		tp.Partition, tp.Offset, tp.LeaderEpoch = p, off, epoch
		return tp
	}
	topic := func(name string, ps ...kmsg.TxnOffsetCommitRequestTopicPartition) kmsg.TxnOffsetCommitRequestTopic {
		t := kmsg.NewTxnOffsetCommitRequestTopic()
		t.Topic, t.Partitions = name, ps
		return t
	}
	for _, tc := range []struct {
		name string
		cut  map[string]map[int32]kgo.EpochOffset
		sent []kmsg.TxnOffsetCommitRequestTopic // as End would send it
		want []kmsg.TxnOffsetCommitRequestTopic
	}{
		{"polled past the cut", map[string]map[int32]kgo.EpochOffset{"trades": {0: {Epoch: 3, Offset: 100}, 1: {Epoch: 3, Offset: 7}}},
			[]kmsg.TxnOffsetCommitRequestTopic{topic("trades", part(0, 250, 4), part(1, 7, 3))},
			[]kmsg.TxnOffsetCommitRequestTopic{topic("trades", part(0, 100, 3), part(1, 7, 3))}},
		{"a partition first polled after the cut", map[string]map[int32]kgo.EpochOffset{"trades": {1: {Epoch: 0, Offset: 9}}},
			[]kmsg.TxnOffsetCommitRequestTopic{topic("trades", part(0, 40, 0), part(1, 12, 0))},
			[]kmsg.TxnOffsetCommitRequestTopic{topic("trades", part(1, 9, 0))}},
		{"nothing polled before the cut", map[string]map[int32]kgo.EpochOffset{},
			[]kmsg.TxnOffsetCommitRequestTopic{topic("trades", part(0, 40, 0))},
			[]kmsg.TxnOffsetCommitRequestTopic{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := kmsg.NewPtrTxnOffsetCommitRequest()
			req.Topics = tc.sent
			if err := commitAt(tc.cut)(req); err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(req.Topics) != fmt.Sprint(tc.want) {
				t.Fatalf("commits %v, want %v", req.Topics, tc.want)
			}
		})
	}
}
