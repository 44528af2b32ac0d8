package decimal_test

import (
	"errors"
	"math"
	"math/big"
	"math/rand/v2"
	"testing"

	"github.com/klagg/klagg/decimal"
)

func TestParseFixed(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // Append's text, or "" for an error
		err  error
	}{
		{in: "28165.47000000", want: "28165.47000000"},
		{in: "0.00000001", want: "0.00000001"},
		{in: "0", want: "0.00000000"},
		{in: "1", want: "1.00000000"},
		{in: "-2.5", want: "-2.50000000"},
		{in: "1.0000000000", want: "1.00000000"},    // trailing zeros beyond the scale are exact
		{in: "1.0000000010e1", want: "10.00000001"}, // so is an exponent that brings them in
		{in: "1e-8", want: "0.00000001"},
		{in: "12.5E+2", want: "1250.00000000"},
		{in: "92233720368.54775807", want: "92233720368.54775807"},
		{in: "0.000000000000000000000000000000", want: "0.00000000"},
		{in: "100000000000000000000e-10", want: "10000000000.00000000"},
		{in: "1.000000001", err: decimal.ErrPrecision},
		{in: "1e-9", err: decimal.ErrPrecision},
		{in: "0.123456789123456789123", err: decimal.ErrPrecision},
		{in: "92233720368.54775808", err: decimal.ErrRange},
		{in: "1e11", err: decimal.ErrRange},
		{in: "1e99999999", err: decimal.ErrRange},
		{in: "123456789012345678901234567890", err: decimal.ErrRange},
		{in: "", err: decimal.ErrSyntax},
		{in: "-", err: decimal.ErrSyntax},
		{in: ".5", err: decimal.ErrSyntax},
		{in: "5.", err: decimal.ErrSyntax},
		{in: "01", err: decimal.ErrSyntax},
		{in: "1e", err: decimal.ErrSyntax},
		{in: "+1", err: decimal.ErrSyntax},
		{in: "NaN", err: decimal.ErrSyntax},
		{in: "1_000", err: decimal.ErrSyntax},
		{in: "0x10", err: decimal.ErrSyntax},
	} {
		got, err := decimal.ParseFixed([]byte(tc.in))
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("ParseFixed(%q) = %v, %v; want error %v", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got.String() != tc.want {
			t.Errorf("ParseFixed(%q) = %s, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}

// randFixed returns a value of up to eight decimals whose magnitude is
// spread from 10^-8 to 10^10.
func randFixed(rng *rand.Rand) decimal.Fixed {
	digits := 1 + rng.IntN(18) // 1 .. 18 digits of 10^-8: 10^-8 .. 10^10
	n := rng.Int64N(int64(math.Pow10(digits-1))*9) + int64(math.Pow10(digits-1))
	return decimal.Fixed(min(n, int64(decimal.MaxFixed)))
}

// TestSumsAgainstBig folds random products and quantities into the 128-bit
// sums and checks every step's text and rounding against math/big.
func TestSumsAgainstBig(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	e8 := big.NewInt(100_000_000)
	for run := range 200 {
		var vol decimal.Wide
		var quote decimal.Quote
		bigVol, bigQuote := new(big.Int), new(big.Int)
		for range 1 + rng.IntN(2000) {
			p, q := randFixed(rng), randFixed(rng)
			if !vol.Room() || !quote.Room() {
				break // what the engine refuses: past 2^125
			}
			vol = vol.AddFixed(q)
			quote = quote.Add(decimal.Product(p, q))
			bigVol.Add(bigVol, big.NewInt(int64(q)))
			bigQuote.Add(bigQuote, new(big.Int).Mul(big.NewInt(int64(p)), big.NewInt(int64(q))))
		}
		if vol.Big().Cmp(bigVol) != 0 || quote.Big().Cmp(bigQuote) != 0 {
			t.Fatalf("run %d: sums %s, %s; math/big %s, %s", run, vol.Big(), quote.Big(), bigVol, bigQuote)
		}
		if got, want := vol.String(), new(big.Rat).SetFrac(bigVol, e8).FloatString(8); got != want {
			t.Fatalf("run %d: volume text %s, want %s", run, got, want)
		}
		if got, want := string(quote.Append(nil)), new(big.Rat).SetFrac(bigQuote, new(big.Int).Mul(e8, e8)).FloatString(16); got != want {
			t.Fatalf("run %d: quote text %s, want %s", run, got, want)
		}
		want := halfEven(bigQuote, e8)
		if got := quote.Round().Big(); got.Cmp(want) != 0 {
			t.Fatalf("run %d: rounded %s, want %s", run, got, want)
		}
	}
}

// halfEven is n / d rounded half to even, written independently of the
// package's rounding.
func halfEven(n, d *big.Int) *big.Int {
	q, r := new(big.Int).QuoRem(n, d, new(big.Int))
	switch c := new(big.Int).Mul(r, big.NewInt(2)).Cmp(d); {
	case c > 0, c == 0 && q.Bit(0) == 1:
		q.Add(q, big.NewInt(1))
	}
	return q
}

func TestRoundHalfEven(t *testing.T) {
	for _, tc := range []struct {
		p, q string
		want string
	}{
		{"0.00000001", "0.5", "0.00000000"},  // 0.000000005 -> even 0
		{"0.00000003", "0.5", "0.00000002"},  // 0.000000015 -> even 2
		{"0.00000005", "0.5", "0.00000002"},  // 0.000000025 -> even 2
		{"0.00000001", "0.51", "0.00000001"}, // above half
		{"28165.47", "0.00056", "15.77266320"},
	} {
		p, _ := decimal.ParseFixed([]byte(tc.p))
		q, _ := decimal.ParseFixed([]byte(tc.q))
		if got := decimal.Product(p, q).Round().String(); got != tc.want {
			t.Errorf("%s × %s rounds to %s, want %s", tc.p, tc.q, got, tc.want)
		}
	}
}

func TestRoom(t *testing.T) {
	// The largest product a trade can carry, added until Room says stop,
	// never wraps: the sum stays below 2^127.
	p := decimal.MaxFixed
	var s decimal.Quote
	limit := new(big.Int).Lsh(big.NewInt(1), 127)
	for i := 0; s.Room(); i++ {
		s = s.Add(decimal.Product(p, p))
		if s.Big().Cmp(limit) >= 0 || i > 8 {
			t.Fatalf("sum %s reached 2^127 after %d products", s.Big(), i+1)
		}
	}
	if _, err := decimal.QuoteFromBig(s.Big()); err != nil {
		t.Fatalf("a sum Room stopped at does not fit: %v", err)
	}
}

func TestAvroBytes(t *testing.T) {
	for _, v := range []int64{0, 1, -1, 127, 128, -128, -129, 255, 256, 32767, 32768,
		math.MaxInt64, math.MinInt64, 2816547000000, -2816547000000} {
		b := decimal.Fixed(v).AppendAvro(nil)
		want := twos(big.NewInt(v))
		if string(b) != string(want) {
			t.Errorf("Fixed(%d) = %x, want %x", v, b, want)
		}
		back, err := decimal.FixedFromAvro(b)
		if err != nil || int64(back) != v {
			t.Errorf("FixedFromAvro(%x) = %d, %v; want %d", b, back, err, v)
		}
	}
	for _, s := range []string{"0", "1", "127", "128", "9223372036854775807", "9223372036854775808",
		"18446744073709551616", "170141183460469231731687303715884105727"} {
		n, _ := new(big.Int).SetString(s, 10)
		w, err := decimal.WideFromBig(n)
		if err != nil {
			t.Fatal(err)
		}
		b := w.AppendAvro(nil)
		if want := twos(n); string(b) != string(want) {
			t.Errorf("Wide(%s) = %x, want %x", s, b, want)
		}
		back, err := decimal.WideFromAvro(b)
		if err != nil || back.Big().Cmp(n) != 0 {
			t.Errorf("WideFromAvro(%x) = %s, %v; want %s", b, back.Big(), err, s)
		}
	}
	if _, err := decimal.WideFromAvro([]byte{0xFF}); !errors.Is(err, decimal.ErrAvroBytes) {
		t.Errorf("a negative Wide: %v", err)
	}
	if _, err := decimal.FixedFromAvro(make([]byte, 9)); !errors.Is(err, decimal.ErrAvroBytes) {
		t.Errorf("nine bytes for a Fixed: %v", err)
	}
}

// twos is n's minimal big-endian two's complement, written from the
// definition.
func twos(n *big.Int) []byte {
	for size := 1; ; size++ {
		lim := new(big.Int).Lsh(big.NewInt(1), uint(8*size-1))
		if n.Cmp(lim) < 0 && n.Cmp(new(big.Int).Neg(lim)) >= 0 {
			v := new(big.Int).Set(n)
			if v.Sign() < 0 {
				v.Add(v, new(big.Int).Lsh(big.NewInt(1), uint(8*size)))
			}
			return v.FillBytes(make([]byte, size))
		}
	}
}

func TestFromFloat(t *testing.T) {
	tenth := 0.1
	point3 := tenth + 0.2
	for _, tc := range []struct {
		f     float64
		scale int
		want  string
		exact bool
	}{
		{28165.47, 8, "2816547000000", true},
		{point3, 8, "30000000", false}, // 0.30000000000000004
		{4756643.475525720001, 8, "475664347552572", true},
		{1e-9, 8, "0", false},
		{2.5e-8, 8, "2", false}, // half to even
		{1.5e-8, 8, "2", false},
		{123.4567, 16, "1234567000000000000", true},
	} {
		n, exact, err := decimal.FromFloat(tc.f, tc.scale)
		if err != nil || n.String() != tc.want || exact != tc.exact {
			t.Errorf("FromFloat(%v, %d) = %s, %v, %v; want %s, %v", tc.f, tc.scale, n, exact, err, tc.want, tc.exact)
		}
	}
	if _, _, err := decimal.FromFloat(math.NaN(), 8); err == nil {
		t.Error("FromFloat(NaN) succeeded")
	}
}

func FuzzParseFixed(f *testing.F) {
	for _, s := range []string{"28165.47000000", "1e-8", "-0.5", "1.0000000000", "92233720368.54775807", "01", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := decimal.ParseFixed([]byte(s))
		if err != nil {
			return
		}
		// Whatever parses equals the text's exact value.
		r, ok := new(big.Rat).SetString(s)
		if !ok && v == 0 {
			return // "0e99999999999": math/big refuses the exponent, the value is 0
		}
		if !ok {
			t.Fatalf("ParseFixed(%q) = %s, but math/big cannot read it", s, v)
		}
		if got := new(big.Rat).SetFrac(big.NewInt(int64(v)), big.NewInt(100_000_000)); got.Cmp(r) != 0 {
			t.Fatalf("ParseFixed(%q) = %s, math/big says %s", s, v, r.FloatString(10))
		}
		if back, err := decimal.ParseFixed(v.Append(nil)); err != nil || back != v {
			t.Fatalf("round trip of %s: %s, %v", v, back, err)
		}
	})
}
