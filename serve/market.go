package serve

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Binance's market-data endpoints that clients call before they ask for
// candles: ccxt's load_markets reads exchangeInfo, and freqtrade checks
// the time. Answered from the symbols the store holds.

// DefaultQuoteAssets are the quote assets exchangeInfo splits symbols by,
// longest first when several end a symbol: Binance's own quote assets of
// its spot markets (the override is Config.QuoteAssets, --quote-assets).
var DefaultQuoteAssets = []string{"USDT", "USDC", "FDUSD", "TUSD", "BUSD", "DAI", "BTC", "ETH", "BNB",
	"EUR", "TRY", "BRL", "JPY", "GBP", "AUD", "MXN", "ARS", "PLN", "RON", "ZAR", "UAH", "IDR", "COP", "CZK"}

// splitSymbol splits a symbol into base and quote assets by the longest
// quote asset it ends with; a symbol that ends with none keeps its whole
// name as the base and "UNKNOWN" as the quote, so that clients still list
// it. A symbol with a separator (BTC-USDT, BTC/USDT, BTC_USDT) splits there.
func splitSymbol(symbol string, quotes []string) (base, quote string) {
	if i := strings.LastIndexAny(symbol, "-/_:"); i > 0 && i < len(symbol)-1 {
		return symbol[:i], symbol[i+1:]
	}
	best := ""
	for _, q := range quotes {
		if len(q) > len(best) && len(q) < len(symbol) && strings.HasSuffix(symbol, q) {
			best = q
		}
	}
	if best == "" {
		return symbol, "UNKNOWN"
	}
	return symbol[:len(symbol)-len(best)], best
}

func (s *Server) handlePing(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, struct{}{})
}

func (s *Server) handleTime(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, map[string]int64{"serverTime": time.Now().UnixMilli()})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

type filter map[string]string

type symbolInfo struct {
	Symbol                     string     `json:"symbol"`
	Status                     string     `json:"status"`
	BaseAsset                  string     `json:"baseAsset"`
	BaseAssetPrecision         int        `json:"baseAssetPrecision"`
	QuoteAsset                 string     `json:"quoteAsset"`
	QuotePrecision             int        `json:"quotePrecision"`
	QuoteAssetPrecision        int        `json:"quoteAssetPrecision"`
	BaseCommissionPrecision    int        `json:"baseCommissionPrecision"`
	QuoteCommissionPrecision   int        `json:"quoteCommissionPrecision"`
	OrderTypes                 []string   `json:"orderTypes"`
	IcebergAllowed             bool       `json:"icebergAllowed"`
	OcoAllowed                 bool       `json:"ocoAllowed"`
	OtoAllowed                 bool       `json:"otoAllowed"`
	QuoteOrderQtyMarketAllowed bool       `json:"quoteOrderQtyMarketAllowed"`
	AllowTrailingStop          bool       `json:"allowTrailingStop"`
	CancelReplaceAllowed       bool       `json:"cancelReplaceAllowed"`
	IsSpotTradingAllowed       bool       `json:"isSpotTradingAllowed"`
	IsMarginTradingAllowed     bool       `json:"isMarginTradingAllowed"`
	Filters                    []filter   `json:"filters"`
	Permissions                []string   `json:"permissions"`
	PermissionSets             [][]string `json:"permissionSets"`
}

// The filters of every symbol: klagg knows no exchange's trading rules,
// so they describe its own resolution, eight decimals (the scale of the
// prices and quantities it reads), and limits no candle reaches. ccxt
// derives each market's precision from tickSize and stepSize.
var symbolFilters = []filter{
	{"filterType": "PRICE_FILTER", "minPrice": "0.00000001", "maxPrice": "92233720368.00000000", "tickSize": "0.00000001"},
	{"filterType": "LOT_SIZE", "minQty": "0.00000001", "maxQty": "92233720368.00000000", "stepSize": "0.00000001"},
}

// handleExchangeInfo is Binance's GET /api/v3/exchangeInfo for the symbols
// held, all TRADING; symbol= or symbols=["A","B"] narrow it, and name an
// unknown symbol with -1121 as Binance does.
func (s *Server) handleExchangeInfo(w http.ResponseWriter, r *http.Request) {
	a, err := s.ask(r.Context(), query{})
	if err != nil {
		return
	}
	names, ok := requestedSymbols(w, r, a.symbols)
	if !ok {
		return
	}
	symbols := make([]symbolInfo, 0, len(names))
	for _, n := range names {
		base, quote := splitSymbol(n, s.cfg.QuoteAssets)
		symbols = append(symbols, symbolInfo{
			Symbol: n, Status: "TRADING", BaseAsset: base, QuoteAsset: quote,
			BaseAssetPrecision: 8, QuotePrecision: 8, QuoteAssetPrecision: 8,
			BaseCommissionPrecision: 8, QuoteCommissionPrecision: 8,
			OrderTypes: []string{"LIMIT", "MARKET"}, IsSpotTradingAllowed: true,
			Filters: symbolFilters, Permissions: []string{}, PermissionSets: [][]string{{"SPOT"}},
		})
	}
	writeJSON(w, map[string]any{
		"timezone":   "UTC",
		"serverTime": time.Now().UnixMilli(),
		"rateLimits": []map[string]any{
			{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
		},
		"exchangeFilters": []any{},
		"symbols":         symbols,
	})
}

// cors lets pages on other origins call the API (Binance's market-data
// endpoints answer any origin too); origin "" turns it off.
func cors(origin string, h http.Handler) http.Handler {
	if origin == "" {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", origin)
		if r.Method == http.MethodOptions {
			w.Header().Set("Access-Control-Allow-Methods", "GET, OPTIONS")
			w.Header().Set("Access-Control-Allow-Headers", "Content-Type")
			w.Header().Set("Access-Control-Max-Age", fmt.Sprint(24*3600))
			w.WriteHeader(http.StatusNoContent)
			return
		}
		h.ServeHTTP(w, r)
	})
}
