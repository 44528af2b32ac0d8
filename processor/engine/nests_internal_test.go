package engine

import (
	"math/rand/v2"
	"testing"
)

// TestNests checks the claim the lazy periods rest on against the period
// arithmetic: where nests(p, fine), every boundary of p is one of fine's;
// where not, some boundary of p is not.
func TestNests(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for fine := range numPeriods {
		for p := fine + 1; p < numPeriods; p++ {
			claim := nests(p, fine)
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
				t.Errorf("nests(%s, %s) = %v, but the boundaries say %v", p, fine, claim, always)
			}
		}
	}
	if !nests(Period1M, Period1m) || nests(Period5m, Period3m) || !nests(Period1w, Period3m) {
		t.Error("nests disagrees with the cases worked by hand")
	}
}

const ms2100 = 4102444800000 // 2100-01-01, Unix ms
