package processor

import (
	"strings"
	"testing"
)

func TestDurabilityProblem(t *testing.T) {
	for _, tc := range []struct {
		rf, minISR int
		want       string
	}{
		{3, 2, ""},
		{5, 3, ""},
		{1, 1, "a broker loss loses its acknowledged records"},
		{3, 1, "acknowledged with one copy"},
		{2, 2, "one broker down stops every write"},
		{3, 3, "one broker down stops every write"},
	} {
		got := durability{Topic: "klines", Replication: tc.rf, MinInsync: tc.minISR, Brokers: 3}.Problem()
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("replication %d, min.insync.replicas %d: %q, want %q", tc.rf, tc.minISR, got, tc.want)
		}
	}
}
