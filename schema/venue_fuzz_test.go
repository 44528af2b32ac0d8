package schema_test

import (
	"bytes"
	"encoding/json"
	"math/big"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/klagg/klagg/schema"
)

// FuzzDecodeVenueJSON: for each venue mapping (and so for the generic
// mapped decoder), the decoder never panics; what it accepts is valid
// JSON; and for inputs without escapes or repeated keys, it finds the
// trades encoding/json finds along the mapping's paths, with the symbols
// and the exact prices and quantities math/big reads.
func FuzzDecodeVenueJSON(f *testing.F) {
	formats := []string{"coinbase", "kraken", "okx", "bybit"}
	for i, name := range formats {
		msg, err := os.ReadFile("testdata/venues/" + name + ".json")
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), msg)
	}
	f.Add(uint8(1), []byte(`{"channel":"trade","data":[{"symbol":"A","price":1e-8,"qty":"0.1","trade_id":1,"side":"buy","timestamp":"2024-01-01T00:00:00Z"},{}]}`))
	f.Add(uint8(3), []byte(`{"topic":"publicTrade.X","data":[{"T":"1","s":"X","S":"Sell","v":1,"p":"2","seq":"3"}],"data":[]}`))
	f.Fuzz(func(t *testing.T, which uint8, value []byte) {
		f, _ := schema.ParseInputFormat(formats[int(which)%len(formats)])
		m, _ := schema.VenueMapping(f)
		d := schema.TradeDecoder{Format: f, Validate: schema.ValidateConfig{MaxSkew: schema.DefaultMaxSkew}}
		var b schema.Batch
		err := d.DecodeBatch(nil, value, now, &b)
		if err != nil {
			if schema.ReasonOf(err) == schema.ReasonNone || len(b.Trades) != 0 {
				t.Fatalf("error without reason, or with trades: %v", err)
			}
			return
		}
		if !json.Valid(value) {
			t.Fatalf("accepted invalid JSON %q", value)
		}
		if bytes.Contains(value, []byte(`\`)) {
			return
		}
		root, dup := parseRef(json.NewDecoder(bytes.NewReader(value)))
		if dup {
			return
		}
		ref := refTrades(root, strings.Split(m.Trades, "."))
		if len(ref) != len(b.Trades) {
			t.Fatalf("%d trades, encoding/json finds %d along %q in %s", len(b.Trades), len(ref), m.Trades, value)
		}
		for i, obj := range ref {
			if b.Errs[i] != nil {
				continue
			}
			tr := &b.Trades[i]
			if sym, _ := refPath(obj, m.Symbol).(string); sym != string(tr.Symbol) {
				t.Fatalf("trade %d symbol %q, encoding/json %q", i, tr.Symbol, sym)
			}
			for _, c := range []struct {
				path string
				got  int64
			}{{m.Price, int64(tr.Price)}, {m.Quantity, int64(tr.Quantity)}} {
				var text string
				switch v := refPath(obj, c.path).(type) {
				case string:
					text = v
				case json.Number:
					text = string(v)
				}
				want, ok := new(big.Rat).SetString(text)
				if !ok || want.Cmp(new(big.Rat).SetFrac64(c.got, 100_000_000)) != 0 {
					t.Fatalf("trade %d %s: got %d×10^-8, math/big %v from %q", i, c.path, c.got, want, text)
				}
			}
			if err := d.Validate.Validate(tr, now); err == nil {
				checkValid(t, tr)
			}
		}
	})
}

// parseRef reads one JSON value with encoding/json's tokenizer, reporting
// whether an object repeats a key (where decoders may differ).
func parseRef(dec *json.Decoder) (any, bool) {
	dec.UseNumber()
	var value func() (any, bool)
	value = func() (any, bool) {
		tok, err := dec.Token()
		if err != nil {
			return nil, true
		}
		switch tok {
		case json.Delim('{'):
			obj, dup := map[string]any{}, false
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return nil, true
				}
				v, d := value()
				key, _ := k.(string)
				_, seen := obj[key]
				dup = dup || d || seen
				obj[key] = v
			}
			dec.Token()
			return obj, dup
		case json.Delim('['):
			var arr []any
			dup := false
			for dec.More() {
				v, d := value()
				arr, dup = append(arr, v), dup || d
			}
			dec.Token()
			return arr, dup
		}
		return tok, false
	}
	return value()
}

// refTrades walks a trades path ("a[].b[]") from v.
func refTrades(v any, segs []string) []map[string]any {
	if len(segs) == 0 || segs[0] == "" {
		if obj, ok := v.(map[string]any); ok {
			return []map[string]any{obj}
		}
		return nil
	}
	name, each := strings.CutSuffix(segs[0], "[]")
	obj, ok := v.(map[string]any)
	if !ok {
		return nil
	}
	child, ok := obj[name]
	if !ok {
		return nil
	}
	if !each {
		return refTrades(child, segs[1:])
	}
	arr, _ := child.([]any)
	var out []map[string]any
	for _, e := range arr {
		out = append(out, refTrades(e, segs[1:])...)
	}
	return out
}

func refPath(obj map[string]any, path string) any {
	var v any = obj
	for seg := range strings.SplitSeq(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[seg]
	}
	return v
}

// strictRFC3339 is RFC 3339's date-time grammar (time.Parse is laxer:
// one-digit hours, for one).
var strictRFC3339 = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$`)

// FuzzRFC3339: what the hand-written time parser accepts, time.Parse
// (RFC3339Nano) reads as the same millisecond; what fits the grammar and
// time.Parse reads, it accepts.
func FuzzRFC3339(f *testing.F) {
	for _, s := range []string{"2024-02-29T23:59:59.9999Z", "2099-12-31T23:59:59.123456789-11:30", "2024-03-04T10:15:02+01:00", "2024-13-01T00:00:00Z"} {
		f.Add(s)
	}
	m := schema.JSONMapping{Symbol: "s", Price: "p", Quantity: "q", Time: "t", TimeUnit: "rfc3339"}
	cm, err := m.Compile()
	if err != nil {
		f.Fatal(err)
	}
	d := schema.TradeDecoder{Format: schema.InputJSON, Mapping: cm}
	f.Fuzz(func(t *testing.T, s string) {
		if strings.ContainsAny(s, "\"\\") || !utf8.ValidString(s) {
			return
		}
		for _, c := range s {
			if c < 0x20 {
				return
			}
		}
		var b schema.Batch
		if err := d.DecodeBatch(nil, []byte(`{"s":"X","p":"1","q":"1","t":"`+s+`"}`), 1<<62, &b); err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		ok := schema.ReasonOf(b.Errs[0]) != schema.ReasonMalformed
		norm := strings.Replace(strings.ToUpper(s), " ", "T", 1)
		ref, rerr := time.Parse(time.RFC3339Nano, norm)
		leap := len(s) > 18 && s[17:19] == "60"
		switch {
		case ok && leap:
		case ok && rerr != nil:
			t.Fatalf("%q read as %d; time.Parse refuses it: %v", s, b.Trades[0].Time, rerr)
		case ok && b.Trades[0].Time != ref.UnixMilli():
			t.Fatalf("%q read as %d, time.Parse %d", s, b.Trades[0].Time, ref.UnixMilli())
		case !ok && rerr == nil && strictRFC3339.MatchString(s):
			t.Fatalf("%q refused (%v); time.Parse reads %v", s, b.Errs[0], ref)
		}
	})
}
