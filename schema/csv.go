package schema

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/klagg/klagg/decimal"
)

// ErrCSVRow is returned (wrapped, with the column at fault) by ParseCSVTrade
// for a row that is not a trade of either Binance archive.
var ErrCSVRow = errors.New("not a Binance trades archive row")

// ParseCSVTrade reads one row of a Binance public-data trades archive as a
// trade of symbol. Two layouts, told apart by their columns:
//   - aggTrades: agg_trade_id, price, quantity, first_trade_id,
//     last_trade_id, transact_time, is_buyer_maker (and the best-match
//     column some files add);
//   - trades (raw, not aggregated): id, price, qty, quote_qty, time,
//     is_buyer_maker, is_best_match; each row is an aggregate of itself
//     (first = last = id).
//
// Times in microseconds (the archives' newer files) are rounded down to
// milliseconds. A header row, or any row that is not a trade, is an error
// wrapping ErrCSVRow.
func ParseCSVTrade(row, symbol string) (Trade, error) {
	f := strings.Split(strings.TrimSpace(row), ",")
	if len(f) < 7 {
		return Trade{}, fmt.Errorf("schema: csv: %w: %d columns, want 7 or more", ErrCSVRow, len(f))
	}
	t := Trade{Symbol: []byte(symbol)}
	var err error
	if t.Price, err = decimal.ParseFixed([]byte(f[1])); err != nil {
		return Trade{}, csvColumn("price", err)
	}
	if t.Quantity, err = decimal.ParseFixed([]byte(f[2])); err != nil {
		return Trade{}, csvColumn("quantity", err)
	}
	timeCol, makerCol := 5, 6
	raw := len(f) == 7 && strings.Contains(f[3], ".") // the quote_qty column is a decimal
	if raw {
		timeCol, makerCol = 4, 5
	}
	cols := []struct {
		name string
		col  int
		to   *int64
	}{{"id", 0, &t.AggID}, {"time", timeCol, &t.Time}, {"first_trade_id", 3, &t.FirstID}, {"last_trade_id", 4, &t.LastID}}
	if raw {
		cols = cols[:2]
	}
	for _, c := range cols {
		if *c.to, err = strconv.ParseInt(f[c.col], 10, 64); err != nil {
			return Trade{}, csvColumn(c.name, err)
		}
	}
	if raw {
		t.FirstID, t.LastID = t.AggID, t.AggID
	}
	if t.BuyerMaker, err = strconv.ParseBool(strings.ToLower(f[makerCol])); err != nil {
		return Trade{}, csvColumn("is_buyer_maker", err)
	}
	if t.Time > 1e14 { // microseconds
		t.Time /= 1000
	}
	return t, nil
}

func csvColumn(name string, err error) error {
	return fmt.Errorf("schema: csv: %w: column %s: %w", ErrCSVRow, name, err)
}

// CSVSymbol is the symbol a Binance archive's file name carries, as in
// BTCUSDT-aggTrades-2024-01-01.csv, or false when the name carries none.
func CSVSymbol(file string) (string, bool) {
	base := filepath.Base(file)
	symbol, _, ok := strings.Cut(base, "-")
	return symbol, ok && ValidSymbol([]byte(symbol)) == ReasonNone
}
