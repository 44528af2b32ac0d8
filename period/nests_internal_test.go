package period

import (
	"math/rand/v2"
	"testing"
)

// TestNests checks the claim the lazy periods rest on against the period
// arithmetic: where p.NestsIn(fine), every boundary of p is one of fine's;
// where not, some boundary of p is not.
func TestNests(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for fine := range Count {
		for p := fine + 1; p < Count; p++ {
			claim := p.NestsIn(fine)
			always := true
			for range 5000 {
				t0 := rng.Int64N(ms2100) + msDay
				b := p.Open(t0)
				if fine.Open(b) != b {
					always = false
					break
				}
			}
			if claim != always {
				t.Errorf("%s.NestsIn(%s) = %v, but the boundaries say %v", p, fine, claim, always)
			}
		}
	}
	if !P1M.NestsIn(P1m) || P5m.NestsIn(P3m) || !P1w.NestsIn(P3m) {
		t.Error("nests disagrees with the cases worked by hand")
	}
}

const ms2100 = 4102444800000 // 2100-01-01, Unix ms
