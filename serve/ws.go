package serve

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/schema"
)

// Binance's websocket market streams, for the kline streams: /ws and
// /ws/<stream> (raw events), /stream?streams=a/b (combined: each event
// wrapped as {"stream":…,"data":…}); SUBSCRIBE, UNSUBSCRIBE,
// LIST_SUBSCRIPTIONS, SET_PROPERTY and GET_PROPERTY "combined", with
// Binance's replies and error replies; a ping every 20 s; at most 1,024
// streams per connection and 5 incoming messages a second, as Binance.

const (
	wsMaxStreams   = 1024
	wsMaxMessages  = 5 // per second
	wsPingEvery    = 20 * time.Second
	wsPongWithin   = time.Minute
	wsWriteTimeout = 10 * time.Second
)

// The reasons a connection is closed with.
const (
	wsTooSlow         = "too slow: updates were not read as fast as they came"
	wsTooManyMessages = "too many messages: at most 5 a second"
)

// wsStream is one subscribed stream name and the series it follows. A
// stream in a time zone whose candles open at other instants than UTC's
// follows the finer part series its candles are combined from (zone.go):
// zone is the offset and p the stream's interval; zone 0 otherwise.
type wsStream struct {
	name string
	key  seriesKey
	zone int64
	p    period.Period
}

// parseStream reads "<symbol>@kline_<interval>" with an optional time zone
// ("@+08:00"): the symbol lower case, as Binance names streams. held is
// the intervals held, of which a zone stream's parts are chosen.
func parseStream(name string, held []string) (wsStream, error) {
	parts := strings.Split(name, "@")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[0] != strings.ToLower(parts[0]) {
		return wsStream{}, fmt.Errorf("invalid stream name %q: want <symbol>@kline_<interval>, symbol in lower case", name)
	}
	interval, ok := strings.CutPrefix(parts[1], "kline_")
	if !ok {
		return wsStream{}, fmt.Errorf("stream %q: klagg serves kline streams only", name)
	}
	p, err := period.Parse(interval)
	if err != nil {
		return wsStream{}, fmt.Errorf("stream %q: invalid interval %q", name, interval)
	}
	if len(parts) == 3 {
		off, ok := parseTimeZone(parts[2])
		if !ok {
			return wsStream{}, fmt.Errorf("stream %q: invalid time zone %q", name, parts[2])
		}
		if !sameInZone(p, off) {
			f, ok := partPeriod(p, off, held)
			if !ok {
				return wsStream{}, fmt.Errorf("stream %q: %s", name, (&zoneError{p: p, off: off, held: held}).Error())
			}
			return wsStream{name: name, key: seriesKey{strings.ToUpper(parts[0]), f.String()}, zone: off, p: p}, nil
		}
	}
	return wsStream{name: name, key: seriesKey{strings.ToUpper(parts[0]), p.String()}}, nil
}

// heldIntervals asks the owner which intervals it holds, for parseStream.
func (s *Server) heldIntervals(ctx context.Context) []string {
	a, err := s.ask(ctx, query{})
	if err != nil {
		return nil
	}
	return a.intervals
}

// wsRequest is a message from the client.
type wsRequest struct {
	Method string            `json:"method"`
	Params []json.RawMessage `json:"params"`
	ID     json.RawMessage   `json:"id"`
}

// wsReply is Binance's answer: result and id, or an error code and msg.
type wsReply struct {
	Result any             `json:"result"`
	ID     json.RawMessage `json:"id"`
}

type wsError struct {
	Code int             `json:"code"`
	Msg  string          `json:"msg"`
	ID   json.RawMessage `json:"id,omitempty"`
}

// wsConn is one websocket client. Its reader goroutine parses requests
// and applies them to streams, which only it touches; replies and the
// owner's updates reach the writer (the handler's goroutine) over channels.
type wsConn struct {
	s        *Server
	c        *websocket.Conn
	sub      *subscriber
	combined bool
	streams  map[string]wsStream // by name
	replies  chan any
	// byKey maps a series to the names it is subscribed under, for the
	// writer; the reader sends it a fresh copy after each change.
	byKey chan map[seriesKey][]wsStream
}

func (s *Server) handleWS(w http.ResponseWriter, r *http.Request) {
	combined := r.URL.Path == "/stream" || strings.HasPrefix(r.URL.Path, "/stream/")
	var initial []string
	if combined {
		if v := r.URL.Query().Get("streams"); v != "" {
			initial = strings.Split(v, "/")
		}
	} else if name, ok := strings.CutPrefix(r.URL.Path, "/ws/"); ok && strings.Contains(name, "@") {
		// /ws/<stream>. Anything else after /ws/ (ccxt.pro asks for
		// /ws/0) is a connection without streams yet.
		initial = []string{name}
	}
	var streams []wsStream
	var held []string
	if len(initial) > 0 {
		held = s.heldIntervals(r.Context())
	}
	for _, n := range initial {
		st, err := parseStream(n, held)
		if err != nil {
			writeError(w, http.StatusBadRequest, codeParamOutOfRange, err.Error())
			return
		}
		streams = append(streams, st)
	}
	if len(streams) > wsMaxStreams {
		writeError(w, http.StatusBadRequest, codeParamOutOfRange, fmt.Sprintf("too many streams: at most %d per connection", wsMaxStreams))
		return
	}
	// Market data for any origin, as Binance serves it.
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return // Accept has answered
	}
	conn := &wsConn{s: s, c: c, sub: &subscriber{ch: make(chan schema.Kline, s.cfg.StreamBuffer)}, combined: combined,
		streams: map[string]wsStream{}, replies: make(chan any, 16), byKey: make(chan map[seriesKey][]wsStream, 1)}
	conn.serve(r.Context(), streams)
}

func (w *wsConn) serve(ctx context.Context, initial []wsStream) {
	defer func() { _ = w.s.change(w.s.ctx, subChange{sub: w.sub, leave: true}) }()
	if err := w.subscribe(ctx, initial); err != nil {
		w.c.Close(websocket.StatusGoingAway, "the server is stopping")
		return
	}
	// Whichever side ends the connection closes it with its reason (a
	// cancelled Read or Write would drop it without one); the other then
	// fails on it and returns.
	combined := w.combined // from here on the reader's
	left := make(chan struct{})
	go func() {
		defer close(left)
		if r := w.read(ctx); r.status != 0 {
			w.c.Close(r.status, r.text)
		}
	}()
	if r := w.write(ctx, combined, left); r.status != 0 {
		w.c.Close(r.status, r.text)
	}
	w.c.CloseNow()
	<-left
}

type closeReason struct {
	status websocket.StatusCode
	text   string
}

// subscribe adds streams, tells the owner and the writer.
func (w *wsConn) subscribe(ctx context.Context, sts []wsStream) error {
	var add []seriesKey
	for _, st := range sts {
		if _, ok := w.streams[st.name]; !ok {
			w.streams[st.name] = st
			add = append(add, st.key)
		}
	}
	w.publish()
	return w.s.change(ctx, subChange{sub: w.sub, add: add})
}

func (w *wsConn) unsubscribe(ctx context.Context, names []string) error {
	var remove []seriesKey
	for _, n := range names {
		st, ok := w.streams[n]
		if !ok {
			continue
		}
		delete(w.streams, n)
		still := false
		for _, o := range w.streams {
			still = still || o.key == st.key
		}
		if !still {
			remove = append(remove, st.key)
		}
	}
	w.publish()
	return w.s.change(ctx, subChange{sub: w.sub, remove: remove})
}

// publish hands the writer the current names of each series (the newest
// replaces one it has not taken yet).
func (w *wsConn) publish() {
	m := map[seriesKey][]wsStream{}
	for _, st := range w.streams {
		m[st.key] = append(m[st.key], st)
	}
	select {
	case <-w.byKey:
	default:
	}
	w.byKey <- m
}

// read answers the client's requests until it leaves, and says why the
// connection should close.
func (w *wsConn) read(ctx context.Context) closeReason {
	var window time.Time
	n := 0
	for {
		_, data, err := w.c.Read(ctx)
		if err != nil {
			return closeReason{}
		}
		now := time.Now()
		if now.Sub(window) >= time.Second {
			window, n = now, 0
		}
		if n++; n > wsMaxMessages {
			return closeReason{websocket.StatusPolicyViolation, wsTooManyMessages}
		}
		reply := w.handle(ctx, data)
		select {
		case w.replies <- reply:
		default:
			// The writer is stuck: the client does not read its replies.
			return closeReason{websocket.StatusPolicyViolation, wsTooSlow}
		}
	}
}

// handle answers one request as Binance does.
func (w *wsConn) handle(ctx context.Context, data []byte) any {
	var req wsRequest
	if err := json.Unmarshal(data, &req); err != nil {
		var raw map[string]json.RawMessage
		if json.Unmarshal(data, &raw) != nil {
			return wsError{Code: 3, Msg: "Invalid JSON: " + err.Error()}
		}
		return wsError{Code: 2, Msg: "Invalid request: " + err.Error(), ID: raw["id"]}
	}
	if len(req.ID) > 0 && string(req.ID) != "null" {
		var id uint64
		var sid string
		if json.Unmarshal(req.ID, &id) != nil && (json.Unmarshal(req.ID, &sid) != nil || len(sid) > 36) {
			return req.invalid("request ID must be an unsigned integer or a string of at most 36 characters")
		}
	}
	switch req.Method {
	case "":
		return req.invalid("missing field `method`")
	case "SUBSCRIBE", "UNSUBSCRIBE":
		return w.handleStreams(ctx, &req)
	case "LIST_SUBSCRIPTIONS":
		list := make([]string, 0, len(w.streams))
		for n := range w.streams {
			list = append(list, n)
		}
		slices.Sort(list)
		return wsReply{Result: list, ID: req.ID}
	case "SET_PROPERTY", "GET_PROPERTY":
		return w.handleProperty(&req)
	}
	return req.invalid(fmt.Sprintf("unknown variant `%s`, expected one of `SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`", req.Method))
}

// invalid is Binance's error reply to a request it cannot carry out.
func (req *wsRequest) invalid(msg string) wsError {
	return wsError{Code: 2, Msg: "Invalid request: " + msg, ID: req.ID}
}

// handleStreams answers SUBSCRIBE and UNSUBSCRIBE.
func (w *wsConn) handleStreams(ctx context.Context, req *wsRequest) any {
	names := make([]string, 0, len(req.Params))
	for _, p := range req.Params {
		var s string
		if json.Unmarshal(p, &s) != nil {
			return req.invalid("stream names must be strings")
		}
		names = append(names, s)
	}
	if req.Method == "UNSUBSCRIBE" {
		if err := w.unsubscribe(ctx, names); err != nil {
			return req.invalid(err.Error())
		}
		return wsReply{ID: req.ID}
	}
	var sts []wsStream
	added := 0
	held := w.s.heldIntervals(ctx)
	for _, n := range names {
		st, err := parseStream(n, held)
		if err != nil {
			return req.invalid(err.Error())
		}
		if _, ok := w.streams[st.name]; !ok {
			added++
		}
		sts = append(sts, st)
	}
	if len(w.streams)+added > wsMaxStreams {
		return req.invalid(fmt.Sprintf("too many streams: at most %d per connection", wsMaxStreams))
	}
	if err := w.subscribe(ctx, sts); err != nil {
		return req.invalid(err.Error())
	}
	return wsReply{ID: req.ID}
}

// handleProperty answers SET_PROPERTY and GET_PROPERTY; "combined" is the
// only property, as on Binance.
func (w *wsConn) handleProperty(req *wsRequest) any {
	var prop string
	if len(req.Params) == 0 || json.Unmarshal(req.Params[0], &prop) != nil {
		return req.invalid("property name must be a string")
	}
	if prop != "combined" {
		return wsError{Code: 0, Msg: "Unknown property", ID: req.ID}
	}
	if req.Method == "GET_PROPERTY" {
		return wsReply{Result: w.combined, ID: req.ID}
	}
	var v bool
	if len(req.Params) != 2 || json.Unmarshal(req.Params[1], &v) != nil {
		return wsError{Code: 1, Msg: "Invalid value type: expected Boolean", ID: req.ID}
	}
	w.setCombined(v)
	return wsReply{ID: req.ID}
}

// setCombined travels to the writer among the replies, before the reply
// to the SET_PROPERTY that asked for it, so that it takes effect in order.
type setCombined bool

// setCombined is the reader's: it keeps its own copy (GET_PROPERTY) and
// tells the writer.
func (w *wsConn) setCombined(v bool) {
	w.combined = v
	select {
	case w.replies <- setCombined(v):
	default: // the writer is stuck; the reply after this one fails the same way
	}
}

// write sends updates, replies and pings until the context ends, the
// client stops reading, or the owner cuts it off.
func (w *wsConn) write(ctx context.Context, combined bool, left <-chan struct{}) closeReason {
	ping := time.NewTicker(wsPingEvery)
	defer ping.Stop()
	byKey := map[seriesKey][]wsStream{}
	var buf []byte // one event at a time, reused
	for {
		select {
		case <-ctx.Done():
			return closeReason{websocket.StatusGoingAway, "the server is stopping"}
		case <-left:
			return closeReason{}
		case m := <-w.byKey:
			byKey = m
		case r := <-w.replies:
			if c, ok := r.(setCombined); ok {
				combined = bool(c)
				continue
			}
			if err := w.send(ctx, r); err != nil {
				return closeReason{}
			}
		case k, open := <-w.sub.ch:
			if !open {
				return closeReason{websocket.StatusPolicyViolation, wsTooSlow}
			}
			// The names may have changed since the owner sent it.
			select {
			case m := <-w.byKey:
				byKey = m
			default:
			}
			now := time.Now()
			for _, st := range byKey[seriesKey{k.Symbol, k.Period}] {
				ev := &k
				if st.zone != 0 {
					zk, ok := w.zoneCandle(ctx, st, &k)
					if !ok {
						continue
					}
					ev = &zk
				}
				buf = buf[:0]
				if combined {
					buf = append(strconv.AppendQuote(append(buf, `{"stream":`...), st.name), `,"data":`...)
				}
				buf = appendEvent(buf, ev, now)
				if combined {
					buf = append(buf, '}')
				}
				if err := w.writeText(ctx, buf); err != nil {
					return closeReason{websocket.StatusPolicyViolation, wsTooSlow}
				}
			}
		case <-ping.C:
			pctx, cancel := context.WithTimeout(ctx, wsPongWithin)
			err := w.c.Ping(pctx)
			cancel()
			if err != nil {
				return closeReason{websocket.StatusPolicyViolation, "no pong within a minute"}
			}
		}
	}
}

// zoneCandle is the zone stream st's candle that the update of its part
// k changed, combined from the parts held (zone.go).
func (w *wsConn) zoneCandle(ctx context.Context, st wsStream, k *schema.Kline) (schema.Kline, bool) {
	o := zoneOpen(st.p, st.zone, k.OpenTime)
	next := zoneNext(st.p, st.zone, o)
	f, err := period.Parse(k.Period)
	if err != nil {
		return schema.Kline{}, false
	}
	a, err := w.s.ask(ctx, query{symbol: k.Symbol, period: f, start: o, end: next - 1, limit: maxZoneParts})
	if err != nil || a.err != nil || len(a.klines) == 0 {
		return schema.Kline{}, false
	}
	return combine(a.klines, st.p, o, next), true
}

func (w *wsConn) send(ctx context.Context, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return w.writeText(ctx, b)
}

func (w *wsConn) writeText(ctx context.Context, b []byte) error {
	wctx, cancel := context.WithTimeout(ctx, wsWriteTimeout)
	defer cancel()
	return w.c.Write(wctx, websocket.MessageText, b)
}
