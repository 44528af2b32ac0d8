package serve

import (
	"context"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"slices"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/period"
)

// Tickers are computed from the candles of the finest interval held
// (1m in klagg's default): the 24-hour window is the last 24 hours of
// that interval's candles up to the newest one held, so it moves a candle
// at a time, not a trade at a time as Binance's does. klagg has no order
// book: bid and ask prices and quantities are "0.00000000", and so is
// lastQty (a candle does not know its last trade's size).

type ticker24h struct {
	Symbol             string `json:"symbol"`
	PriceChange        string `json:"priceChange"`
	PriceChangePercent string `json:"priceChangePercent"`
	WeightedAvgPrice   string `json:"weightedAvgPrice"`
	PrevClosePrice     string `json:"prevClosePrice"`
	LastPrice          string `json:"lastPrice"`
	LastQty            string `json:"lastQty"`
	BidPrice           string `json:"bidPrice"`
	BidQty             string `json:"bidQty"`
	AskPrice           string `json:"askPrice"`
	AskQty             string `json:"askQty"`
	OpenPrice          string `json:"openPrice"`
	HighPrice          string `json:"highPrice"`
	LowPrice           string `json:"lowPrice"`
	Volume             string `json:"volume"`
	QuoteVolume        string `json:"quoteVolume"`
	OpenTime           int64  `json:"openTime"`
	CloseTime          int64  `json:"closeTime"`
	FirstID            int64  `json:"firstId"`
	LastID             int64  `json:"lastId"`
	Count              int64  `json:"count"`
}

const zero8 = "0.00000000"

// requestedSymbols reads symbol= or symbols=["A","B"] (none: every symbol
// held) and checks them against the held ones, as exchangeInfo and the
// tickers take them; it has written the error when it returns false.
func requestedSymbols(w http.ResponseWriter, r *http.Request, held []string) ([]string, bool) {
	v := r.URL.Query()
	var want []string
	if one := v.Get("symbol"); one != "" {
		want = []string{one}
	} else if many := v.Get("symbols"); many != "" {
		if err := json.Unmarshal([]byte(many), &want); err != nil {
			writeError(w, http.StatusBadRequest, codeIllegalChars,
				"Illegal characters found in parameter 'symbols'; legal range is '^\\[(\"[A-Z0-9-_.]{1,20}\"(,\"[A-Z0-9-_.]{1,20}\"){0,}){0,1}\\]$'.")
			return nil, false
		}
	} else {
		return held, true
	}
	for _, n := range want {
		if !slices.Contains(held, n) {
			writeError(w, http.StatusBadRequest, codeBadSymbol, "Invalid symbol.")
			return nil, false
		}
	}
	return want, true
}

// finest is the finest interval held, or false.
func finest(held []string) (period.Period, bool) {
	for _, name := range held { // canonical order: finest first
		if p, err := period.Parse(name); err == nil {
			return p, true
		}
	}
	return 0, false
}

// handleTickerPrice is Binance's GET /api/v3/ticker/price: the newest
// close of the finest interval held.
func (s *Server) handleTickerPrice(w http.ResponseWriter, r *http.Request) {
	type price struct {
		Symbol string `json:"symbol"`
		Price  string `json:"price"`
	}
	s.serveTickers(w, r, func(ctx context.Context, symbol string, f period.Period) (any, bool, error) {
		a, err := s.ask(ctx, query{symbol: symbol, period: f, start: -1, end: -1, limit: 1})
		if err = errors.Join(err, a.err); err != nil || len(a.klines) == 0 {
			return nil, false, err
		}
		return price{symbol, a.klines[0].Close.String()}, true, nil
	})
}

// handleTicker24h is Binance's GET /api/v3/ticker/24hr, over the finest
// interval's candles of the last 24 hours held.
func (s *Server) handleTicker24h(w http.ResponseWriter, r *http.Request) {
	s.serveTickers(w, r, func(ctx context.Context, symbol string, f period.Period) (any, bool, error) {
		return s.ticker(ctx, symbol, f)
	})
}

// serveTickers answers a ticker request: one computes a symbol's ticker
// from the finest interval held (false: it holds no candle); one symbol=
// gets an object, else an array.
func (s *Server) serveTickers(w http.ResponseWriter, r *http.Request,
	one func(ctx context.Context, symbol string, f period.Period) (any, bool, error)) {
	meta, err := s.ask(r.Context(), query{})
	if err != nil {
		return
	}
	names, ok := requestedSymbols(w, r, meta.symbols)
	if !ok {
		return
	}
	f, _ := finest(meta.intervals)
	out := make([]any, 0, len(names))
	for _, n := range names {
		t, ok, err := one(r.Context(), n, f)
		if err != nil {
			if r.Context().Err() == nil {
				s.log.Error("ticker", "symbol", n, "err", err)
				writeError(w, http.StatusInternalServerError, codeUnknown, "An unknown error occurred while processing the request.")
			}
			return
		}
		if ok {
			out = append(out, t)
		}
	}
	if r.URL.Query().Get("symbol") != "" && len(out) == 1 {
		writeJSON(w, out[0])
		return
	}
	writeJSON(w, out)
}

const day = 24 * 3600_000

func (s *Server) ticker(ctx context.Context, symbol string, f period.Period) (any, bool, error) {
	last, err := s.ask(ctx, query{symbol: symbol, period: f, start: -1, end: -1, limit: 1})
	if err = errors.Join(err, last.err); err != nil || len(last.klines) == 0 {
		return nil, false, err
	}
	end := last.klines[0].CloseTime
	from := end + 1 - day
	// The window's candles and the one before it (prevClosePrice).
	a, err := s.ask(ctx, query{symbol: symbol, period: f, start: -1, end: end, limit: int(day/max(1, length(f))) + 1})
	if err = errors.Join(err, a.err); err != nil {
		return nil, false, err
	}
	ks := a.klines
	prev := decimal.Fixed(0)
	if len(ks) > 0 && ks[0].OpenTime < from {
		prev, ks = ks[0].Close, ks[1:]
	}
	c := combine(ks, f, from, end+1)
	t := ticker24h{Symbol: symbol, PrevClosePrice: prev.String(), LastPrice: c.Close.String(), LastQty: zero8,
		BidPrice: zero8, BidQty: zero8, AskPrice: zero8, AskQty: zero8, OpenPrice: c.Open.String(),
		HighPrice: c.High.String(), LowPrice: c.Low.String(), Volume: c.Volume.String(), QuoteVolume: c.QuoteVolume.String(),
		OpenTime: from, CloseTime: end, FirstID: c.FirstTradeID, LastID: c.LastTradeID, Count: c.TradeCount,
		PriceChange: (c.Close - c.Open).String(), PriceChangePercent: "0.000", WeightedAvgPrice: zero8}
	if c.Open > 0 {
		// Binance's three decimals.
		change := new(big.Int).Mul(big.NewInt(int64(c.Close)-int64(c.Open)), big.NewInt(100))
		pct := new(big.Rat).SetFrac(change, big.NewInt(int64(c.Open)))
		t.PriceChangePercent = pct.FloatString(3)
	}
	if !c.Volume.IsZero() {
		avg := new(big.Rat).SetFrac(c.QuoteVolume.Big(), c.Volume.Big())
		t.WeightedAvgPrice = avg.FloatString(8)
	}
	if c.TradeCount == 0 {
		t.FirstID, t.LastID = -1, -1
	}
	return t, true, nil
}
