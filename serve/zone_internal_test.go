package serve

import (
	"strings"
	"testing"

	"github.com/klagg/klagg/period"
)

func TestPartPeriod(t *testing.T) {
	all := strings.Split(period.DefaultList, ",")
	for _, tc := range []struct {
		p    period.Period
		off  int64
		held []string
		want string // "" for none
	}{
		{period.P1d, 8 * 3600_000, all, "8h"},
		{period.P4h, 345 * 60_000, all, "15m"},
		{period.P2h, 330 * 60_000, all, "30m"},
		{period.P1w, -210 * 60_000, all, "30m"},
		{period.P1M, 8 * 3600_000, all, "8h"},
		{period.P3d, 9 * 3600_000, all, "1h"},
		{period.P1d, 347 * 60_000, []string{"5m", "1h", "1d"}, ""}, // +05:47: no held period divides it
		{period.P1h, 30 * 60_000, []string{"1h", "1d"}, ""},
	} {
		f, ok := partPeriod(tc.p, tc.off, tc.held)
		if got := map[bool]string{true: f.String(), false: ""}[ok]; got != tc.want {
			t.Errorf("%s at %s of %v: %q, want %q", tc.p, formatOffset(tc.off), tc.held, got, tc.want)
		}
	}
	e := &zoneError{p: period.P1d, off: 347 * 60_000, held: []string{"5m", "1h"}}
	if msg := e.Error(); !strings.Contains(msg, "'timeZone'") || !strings.Contains(msg, "UTC+05:47") || !strings.Contains(msg, "[5m 1h]") {
		t.Errorf("message %q", msg)
	}
}
