package serve

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/schema"
)

// Binance's error codes for GET /api/v3/klines, from its API documentation.
const (
	codeMandatoryParam  = -1102 // a mandatory parameter was not sent, was empty or malformed
	codeIllegalChars    = -1100 // illegal characters in a parameter
	codeBadInterval     = -1120 // invalid interval
	codeBadSymbol       = -1121 // invalid symbol
	codeStartAfterEnd   = -1023 // start time is greater than end time
	codeParamOutOfRange = -1130 // invalid data sent for a parameter
	codeUnknown         = -1000 // an unknown error occurred while processing the request
)

const (
	defaultLimit = 500
	maxLimit     = 1000
)

type apiError struct {
	Code int    `json:"code"`
	Msg  string `json:"msg"`
}

func writeError(w http.ResponseWriter, status, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(apiError{Code: code, Msg: msg})
}

// parseQuery reads Binance's klines parameters; on a bad one it writes
// Binance's error and returns false.
func parseQuery(w http.ResponseWriter, r *http.Request) (query, bool) {
	v := r.URL.Query()
	q := query{start: -1, end: -1, limit: defaultLimit}
	for _, name := range []string{"symbol", "interval"} {
		if v.Get(name) == "" {
			writeError(w, http.StatusBadRequest, codeMandatoryParam,
				fmt.Sprintf("Mandatory parameter '%s' was not sent, was empty/null, or malformed.", name))
			return q, false
		}
	}
	q.symbol = v.Get("symbol")
	p, err := period.Parse(v.Get("interval"))
	if err != nil {
		writeError(w, http.StatusBadRequest, codeBadInterval, "Invalid interval.")
		return q, false
	}
	q.period = p
	for _, f := range []struct {
		name string
		dst  *int64
	}{{"startTime", &q.start}, {"endTime", &q.end}} {
		s := v.Get(f.name)
		if s == "" {
			continue
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, codeIllegalChars,
				fmt.Sprintf("Illegal characters found in parameter '%s'; legal range is '^[0-9]{1,20}$'.", f.name))
			return q, false
		}
		*f.dst = n
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			writeError(w, http.StatusBadRequest, codeIllegalChars,
				"Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'.")
			return q, false
		}
		if n < 1 {
			writeError(w, http.StatusBadRequest, codeParamOutOfRange, "Data sent for parameter 'limit' is not valid.")
			return q, false
		}
		// Binance is reported to answer a larger limit with its maximum,
		// not an error (not checkable from here: no route to Binance).
		q.limit = min(n, maxLimit)
	}
	if tz := v.Get("timeZone"); tz != "" {
		off, ok := parseTimeZone(tz)
		if !ok {
			writeError(w, http.StatusBadRequest, codeParamOutOfRange, "Data sent for parameter 'timeZone' is not valid.")
			return q, false
		}
		// Binance interprets the interval in the zone (startTime and
		// endTime stay UTC). klagg keeps UTC candles: where the zone's
		// boundaries are the same, they are the answer; where not, they
		// are combined from a finer period's (zone.go).
		if !sameInZone(q.period, off) {
			q.zone = off
		}
	}
	if q.start >= 0 && q.end >= 0 && q.start > q.end {
		writeError(w, http.StatusBadRequest, codeStartAfterEnd, "Start time is greater than end time.")
		return q, false
	}
	return q, true
}

// handleKlines is Binance's GET /api/v3/klines: the same parameters,
// limits, errors and 12-field arrays, prices and volumes as decimal strings.
func (s *Server) handleKlines(w http.ResponseWriter, r *http.Request) {
	q, ok := parseQuery(w, r)
	if !ok {
		return
	}
	var a answer
	var err error
	if q.zone != 0 {
		a, err = s.inZone(r.Context(), q)
		var ze *zoneError
		if errors.As(err, &ze) {
			writeError(w, http.StatusBadRequest, codeParamOutOfRange, ze.Error())
			return
		}
	} else {
		a, err = s.ask(r.Context(), q)
	}
	if err != nil {
		return
	}
	if a.err != nil {
		s.log.Error("klines query", "symbol", q.symbol, "err", a.err)
		writeError(w, http.StatusInternalServerError, codeUnknown, "An unknown error occurred while processing the request.")
		return
	}
	if !a.known {
		writeError(w, http.StatusBadRequest, codeBadSymbol, "Invalid symbol.")
		return
	}
	buf := make([]byte, 0, 160*len(a.klines)+2)
	buf = append(buf, '[')
	for i := range a.klines {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = AppendBinanceKline(buf, &a.klines[i])
	}
	buf = append(buf, ']')
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(buf)
}

// AppendBinanceKline appends k as Binance's klines array: open time, open,
// high, low, close, volume, close time, quote volume, trades, taker buy
// volume, taker buy quote volume, and an unused "0".
func AppendBinanceKline(b []byte, k *schema.Kline) []byte {
	b = append(b, '[')
	b = strconv.AppendInt(b, k.OpenTime, 10)
	for _, f := range [...]decimal.Fixed{k.Open, k.High, k.Low, k.Close} {
		b = append(f.Append(append(b, ',', '"')), '"')
	}
	b = append(k.Volume.Append(append(b, ',', '"')), '"')
	b = strconv.AppendInt(append(b, ','), k.CloseTime, 10)
	b = append(k.QuoteVolume.Append(append(b, ',', '"')), '"')
	b = strconv.AppendInt(append(b, ','), k.TradeCount, 10)
	b = append(k.TakerBuyVolume.Append(append(b, ',', '"')), '"')
	b = append(k.TakerBuyQuoteVolume.Append(append(b, ',', '"')), '"')
	return append(b, `,"0"]`...)
}

// streamEvent is one candle update on the stream, shaped like Binance's
// websocket kline event so that its clients can read it.
type streamEvent struct {
	Event  string      `json:"e"`
	Time   int64       `json:"E"`
	Symbol string      `json:"s"`
	K      streamKline `json:"k"`
}

type streamKline struct {
	OpenTime    int64  `json:"t"`
	CloseTime   int64  `json:"T"`
	Symbol      string `json:"s"`
	Interval    string `json:"i"`
	FirstID     int64  `json:"f"`
	LastID      int64  `json:"L"`
	Open        string `json:"o"`
	Close       string `json:"c"`
	High        string `json:"h"`
	Low         string `json:"l"`
	Volume      string `json:"v"`
	Trades      int64  `json:"n"`
	Final       bool   `json:"x"`
	QuoteVolume string `json:"q"`
	TakerVolume string `json:"V"`
	TakerQuote  string `json:"Q"`
	Ignore      string `json:"B"`       // Binance's unused field, always "0"
	Version     int64  `json:"version"` // klagg's: newer replaces older
}

func event(k *schema.Kline, now time.Time) streamEvent {
	return streamEvent{Event: "kline", Time: now.UnixMilli(), Symbol: k.Symbol, K: streamKline{
		OpenTime: k.OpenTime, CloseTime: k.CloseTime, Symbol: k.Symbol, Interval: k.Period,
		FirstID: k.FirstTradeID, LastID: k.LastTradeID,
		Open: k.Open.String(), Close: k.Close.String(), High: k.High.String(), Low: k.Low.String(), Volume: k.Volume.String(),
		Trades: k.TradeCount, Final: k.IsFinal, QuoteVolume: k.QuoteVolume.String(),
		TakerVolume: k.TakerBuyVolume.String(), TakerQuote: k.TakerBuyQuoteVolume.String(), Ignore: "0", Version: k.Version,
	}}
}

// handleStream sends Server-Sent Events: each update of the candles of one
// symbol and interval, as it arrives, as Binance's websocket kline event.
func (s *Server) handleStream(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	symbol, interval := v.Get("symbol"), v.Get("interval")
	if symbol == "" || interval == "" {
		writeError(w, http.StatusBadRequest, codeMandatoryParam, "Mandatory parameter 'symbol' or 'interval' was not sent, was empty/null, or malformed.")
		return
	}
	if _, err := period.Parse(interval); err != nil {
		writeError(w, http.StatusBadRequest, codeBadInterval, "Invalid interval.")
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	sub := &subscriber{ch: make(chan schema.Kline, s.cfg.StreamBuffer)}
	ch := sub.ch
	ctx := r.Context()
	if s.change(ctx, subChange{sub: sub, add: []seriesKey{{symbol, interval}}}) != nil {
		return
	}
	defer func() {
		// The server's context, not the request's: the request is over.
		_ = s.change(s.ctx, subChange{sub: sub, leave: true})
	}()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte(": connected\n\n"))
	flusher.Flush()
	keepAlive := time.NewTicker(15 * time.Second)
	defer keepAlive.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-keepAlive.C:
			_, _ = w.Write([]byte(": keep-alive\n\n"))
			flusher.Flush()
		case k, open := <-ch:
			if !open {
				return // too slow, or the server stops
			}
			b, err := json.Marshal(event(&k, time.Now()))
			if err != nil {
				return
			}
			if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
				return
			}
			flusher.Flush()
		}
	}
}

// handleSymbols lists the symbols held, for the page's picker.
func (s *Server) handleSymbols(w http.ResponseWriter, r *http.Request) {
	a, err := s.ask(r.Context(), query{})
	if err != nil {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(a.symbols)
}

// parseTimeZone reads Binance's timeZone: hours ("8", "-1") or
// hours:minutes ("+05:45", "-03:30"), within [-12:00, +14:00]; it returns
// the offset in milliseconds.
func parseTimeZone(tz string) (int64, bool) {
	sign := int64(1)
	switch {
	case strings.HasPrefix(tz, "-"):
		sign, tz = -1, tz[1:]
	case strings.HasPrefix(tz, "+"):
		tz = tz[1:]
	}
	hs, ms, hasMin := strings.Cut(tz, ":")
	h, err := strconv.Atoi(hs)
	if err != nil || hs == "" || len(hs) > 2 || h < 0 {
		return 0, false
	}
	m := 0
	if hasMin {
		if m, err = strconv.Atoi(ms); err != nil || len(ms) != 2 || m < 0 || m > 59 {
			return 0, false
		}
	}
	off := sign * (int64(h)*3600_000 + int64(m)*60_000)
	if off < -12*3600_000 || off > 14*3600_000 {
		return 0, false
	}
	return off, true
}

// sameInZone reports whether p's candles open at the same instants in a
// zone offset by off from UTC: a fixed-length period whose length divides
// the offset (1m and 1h at +08:00; not 1d, nor 1h at +05:45). Months never,
// unless off is 0.
func sameInZone(p period.Period, off int64) bool {
	if off == 0 {
		return true
	}
	if p == period.P1M {
		return false
	}
	open := p.Open(0)
	return off%(p.Next(open)-open) == 0
}

// handleIntervals lists the intervals of which candles are held (those the
// pipeline computes), for the page to offer and to name.
func (s *Server) handleIntervals(w http.ResponseWriter, r *http.Request) {
	a, err := s.ask(r.Context(), query{})
	if err != nil {
		return
	}
	writeJSON(w, a.intervals)
}

// appendEvent appends k's stream event as json.Marshal(event(k, now))
// writes it, without reflection or an allocation per field: a websocket
// writer does it for every update of every client.
func appendEvent(b []byte, k *schema.Kline, now time.Time) []byte {
	b = append(b, `{"e":"kline","E":`...)
	b = strconv.AppendInt(b, now.UnixMilli(), 10)
	b = append(b, `,"s":`...)
	b = strconv.AppendQuote(b, k.Symbol)
	b = append(b, `,"k":{"t":`...)
	b = strconv.AppendInt(b, k.OpenTime, 10)
	b = append(b, `,"T":`...)
	b = strconv.AppendInt(b, k.CloseTime, 10)
	b = append(b, `,"s":`...)
	b = strconv.AppendQuote(b, k.Symbol)
	b = append(b, `,"i":`...)
	b = strconv.AppendQuote(b, k.Period)
	b = append(b, `,"f":`...)
	b = strconv.AppendInt(b, k.FirstTradeID, 10)
	b = append(b, `,"L":`...)
	b = strconv.AppendInt(b, k.LastTradeID, 10)
	for _, f := range [...]struct {
		name string
		v    decimal.Fixed
	}{{`,"o":"`, k.Open}, {`,"c":"`, k.Close}, {`,"h":"`, k.High}, {`,"l":"`, k.Low}} {
		b = append(f.v.Append(append(b, f.name...)), '"')
	}
	b = append(k.Volume.Append(append(b, `,"v":"`...)), '"')
	b = append(b, `,"n":`...)
	b = strconv.AppendInt(b, k.TradeCount, 10)
	b = append(b, `,"x":`...)
	b = strconv.AppendBool(b, k.IsFinal)
	b = append(k.QuoteVolume.Append(append(b, `,"q":"`...)), '"')
	b = append(k.TakerBuyVolume.Append(append(b, `,"V":"`...)), '"')
	b = append(k.TakerBuyQuoteVolume.Append(append(b, `,"Q":"`...)), '"')
	b = append(b, `,"B":"0","version":`...)
	b = strconv.AppendInt(b, k.Version, 10)
	return append(b, "}}"...)
}
