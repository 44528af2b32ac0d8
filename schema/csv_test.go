package schema_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/klagg/klagg/schema"
)

func TestParseCSVTrade(t *testing.T) {
	for _, tc := range []struct {
		name, row string
		want      schema.Trade
		err       string
	}{
		{"aggTrades", "26129,0.01633102,4.70443515,27781,27781,1498793709153,True,True",
			schema.Trade{AggID: 26129, Price: 1_633_102, Quantity: 470_443_515, FirstID: 27781, LastID: 27781, Time: 1498793709153, BuyerMaker: true}, ""},
		{"aggTrades in microseconds", "3,42000.5,0.1,10,12,1735689600123456,false",
			schema.Trade{AggID: 3, Price: 4_200_050_000_000, Quantity: 10_000_000, FirstID: 10, LastID: 12, Time: 1735689600123, BuyerMaker: false}, ""},
		{"raw trades", "3640590921,59342.01,0.00084,49.8484884,1723161300043,false,true",
			schema.Trade{AggID: 3640590921, Price: 5_934_201_000_000, Quantity: 84_000, FirstID: 3640590921, LastID: 3640590921, Time: 1723161300043}, ""},
		{"header", "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker", schema.Trade{}, "column price"},
		{"short", "1,2,3", schema.Trade{}, "3 columns"},
		{"bad side", "1,2,3,4,5,6,maybe", schema.Trade{}, "column is_buyer_maker"},
		{"too precise", "1,2.123456789,3,4,5,6,true", schema.Trade{}, "column price"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := schema.ParseCSVTrade(tc.row, "BTCUSDT")
			if tc.err != "" {
				if !errors.Is(err, schema.ErrCSVRow) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one naming %q", err, tc.err)
				}
				return
			}
			tc.want.Symbol = []byte("BTCUSDT")
			if err != nil || string(got.Symbol) != "BTCUSDT" || got.AggID != tc.want.AggID || got.Price != tc.want.Price ||
				got.Quantity != tc.want.Quantity || got.FirstID != tc.want.FirstID || got.LastID != tc.want.LastID ||
				got.Time != tc.want.Time || got.BuyerMaker != tc.want.BuyerMaker {
				t.Fatalf("got %+v, %v\nwant %+v", got, err, tc.want)
			}
		})
	}
}

func TestCSVSymbol(t *testing.T) {
	for file, want := range map[string]string{"/data/BTCUSDT-aggTrades-2024-01-01.csv": "BTCUSDT", "ETHBTC-trades-2024-08.csv": "ETHBTC",
		"trades.csv": "", "btc usdt-1.csv": ""} {
		got, ok := schema.CSVSymbol(file)
		if got != want && (ok || want != "") {
			t.Errorf("CSVSymbol(%q) = %q, %v; want %q", file, got, ok, want)
		}
		if ok != (want != "") {
			t.Errorf("CSVSymbol(%q) ok = %v", file, ok)
		}
	}
}

// FuzzParseCSVTrade: never panics; a row it accepts has seven columns or
// more, and an error always wraps ErrCSVRow.
func FuzzParseCSVTrade(f *testing.F) {
	for _, row := range []string{"26129,0.01633102,4.70443515,27781,27781,1498793709153,True,True",
		"3640590921,59342.01,0.00084,49.8484884,1723161300043,false,true", "agg_trade_id,price", ""} {
		f.Add(row)
	}
	f.Fuzz(func(t *testing.T, row string) {
		tr, err := schema.ParseCSVTrade(row, "X")
		if err != nil {
			if !errors.Is(err, schema.ErrCSVRow) {
				t.Fatalf("%q: error %v does not wrap ErrCSVRow", row, err)
			}
			return
		}
		if string(tr.Symbol) != "X" || len(strings.Split(strings.TrimSpace(row), ",")) < 7 {
			t.Fatalf("%q: accepted as %+v", row, tr)
		}
	})
}
