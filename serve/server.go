package serve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/schema"
)

// Config configures a Server. Start from DefaultConfig.
type Config struct {
	Brokers     []string
	KlinesTopic string
	// HTTP is the listen address of the API, the stream and the page.
	HTTP string
	// Data is the directory of the on-disk store that keeps every candle
	// read (diskStore). "" keeps only the newest Keep candles of each
	// (symbol, period) in memory and reads the topic from its start at
	// every start.
	Data string
	// CacheMB is the store's block cache: with the memtables, what bounds
	// serve's memory, whatever the history's length.
	CacheMB int
	// Keep is how many candles per (symbol, period) are held in memory
	// when Data is "".
	Keep int
	// Retention, per period, is how long the on-disk store keeps candles
	// (by open time); a period not listed keeps all.
	Retention map[period.Period]time.Duration
	// QuoteAssets split symbols into base and quote assets for
	// exchangeInfo: the longest one a symbol ends with is its quote.
	QuoteAssets []string
	// CORSOrigin is the Access-Control-Allow-Origin of the API; "" sends
	// none (same-origin pages only).
	CORSOrigin string
	// StreamBuffer is how many updates may wait for one stream client
	// (websocket or SSE) before it is cut off as too slow.
	StreamBuffer int
}

// DefaultConfig returns the defaults of klagg serve.
func DefaultConfig() Config {
	return Config{Brokers: []string{"127.0.0.1:9092"}, KlinesTopic: "klines", HTTP: "127.0.0.1:8080", Keep: 1000,
		QuoteAssets: slices.Clone(DefaultQuoteAssets), CORSOrigin: "*", StreamBuffer: 1024, CacheMB: 64}
}

// Validate reports every problem of c at once.
func (c Config) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 || strings.TrimSpace(strings.Join(c.Brokers, "")) == "" {
		errs = append(errs, errors.New("serve: no brokers"))
	}
	if c.KlinesTopic == "" {
		errs = append(errs, errors.New("serve: empty klines topic"))
	}
	if c.HTTP == "" {
		errs = append(errs, errors.New("serve: empty HTTP address"))
	}
	for _, q := range c.QuoteAssets {
		if q == "" || strings.ContainsAny(q, " ,") {
			errs = append(errs, fmt.Errorf("serve: quote asset %q: want letters and digits", q))
		}
	}
	if c.StreamBuffer < 1 || c.StreamBuffer > 1_000_000 {
		errs = append(errs, fmt.Errorf("serve: stream buffer %d: want 1 to 1000000 updates", c.StreamBuffer))
	}
	for p, d := range c.Retention {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("serve: retention of %s: %s is not positive", p, d))
		}
	}
	if c.CacheMB < 1 || c.CacheMB > 1<<20 {
		errs = append(errs, fmt.Errorf("serve: cache %d MiB: want 1 to 1048576", c.CacheMB))
	}
	if c.Keep < 1 || c.Keep > 1_000_000 {
		errs = append(errs, fmt.Errorf("serve: keep %d: want 1 to 1000000 candles per series", c.Keep))
	}
	return errors.Join(errs...)
}

// Option injects a dependency into New.
type Option func(*Server)

// WithLogger sets the Server's logger; the default discards.
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithKgoOpts adds options to the Kafka client (TLS, SASL).
func WithKgoOpts(opts ...kgo.Opt) Option {
	return func(s *Server) { s.kgoOpts = append(s.kgoOpts, opts...) }
}

// WithHandler mounts extra handlers (metrics, health) on the server's mux.
func WithHandler(pattern string, h http.Handler) Option {
	return func(s *Server) { s.extra = append(s.extra, route{pattern, h}) }
}

type route struct {
	pattern string
	h       http.Handler
}

// Server reads the klines topic and serves the candles it holds.
type Server struct {
	cfg     Config
	log     *slog.Logger
	kgoOpts []kgo.Opt
	extra   []route

	updates chan update
	queries chan request
	changes chan subChange

	ctx     context.Context // Run's: handlers use it for what outlives a request
	streams atomic.Int64    // stream clients the owner sends updates to
	records atomic.Int64    // kline records read
	ready   atomic.Bool     // the first fetch has been handed to the store
	ln      net.Listener
}

// update is one fetch's klines and, per partition, the offset after its
// last record.
type update struct {
	klines []schema.Kline
	next   map[int32]int64
}

type request struct {
	q     query
	reply chan<- answer
}

type answer struct {
	klines    []schema.Kline
	known     bool
	err       error
	symbols   []string
	intervals []string
}

// seriesKey names the candles of one symbol and period.
type seriesKey struct{ symbol, period string }

// subscriber is one stream client (SSE or websocket): the owner sends it
// the updates of the series it follows, and closes ch to cut it off when
// it cannot keep up, or when it leaves.
type subscriber struct {
	ch chan schema.Kline
}

// subChange asks the owner to add or remove series of a subscriber, or to
// forget it (leave).
type subChange struct {
	sub         *subscriber
	add, remove []seriesKey
	leave       bool
}

// New validates cfg and listens on cfg.HTTP; Run serves.
func New(cfg Config, opts ...Option) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: slog.New(slog.DiscardHandler),
		updates: make(chan update, 16), queries: make(chan request),
		changes: make(chan subChange)}
	for _, o := range opts {
		o(s)
	}
	ln, err := net.Listen("tcp", cfg.HTTP)
	if err != nil {
		return nil, fmt.Errorf("serve: listen on %s: %w", cfg.HTTP, err)
	}
	s.ln = ln
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Ready reports whether the server has read from the klines topic at least
// once (its first fetch, possibly empty, reached the store).
func (s *Server) Ready() bool { return s.ready.Load() }

// Streams is how many stream clients (websocket or SSE) follow at least
// one series: a client cut off or gone no longer counts.
func (s *Server) Streams() int64 { return s.streams.Load() }

// Records is how many kline records the server has read.
func (s *Server) Records() int64 { return s.records.Load() }

// Run reads the klines topic and serves HTTP until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx) // a store error ends the consumer and the handlers too
	defer cancel()
	var st candleStore = newStore(s.cfg.Keep)
	consume := kgo.ConsumeTopics(s.cfg.KlinesTopic)
	if s.cfg.Data != "" {
		ds, err := openDiskStore(s.cfg.Data, s.cfg.CacheMB, s.log)
		if err != nil {
			return err
		}
		defer ds.close()
		st = ds
		if consume, err = s.resume(ctx, ds); err != nil {
			if ctx.Err() != nil {
				return nil // stopped while waiting for the topic
			}
			return err
		}
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(s.cfg.Brokers...), consume,
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		// Only committed candles: an aborted flush's records never show.
		kgo.FetchIsolationLevel(kgo.ReadCommitted())}, s.kgoOpts...)...)
	if err != nil {
		return fmt.Errorf("serve: kafka client: %w", err)
	}
	defer cl.Close()

	s.ctx = ctx
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v3/klines", s.handleKlines)
	mux.HandleFunc("GET /api/v3/uiKlines", s.handleKlines)
	mux.HandleFunc("GET /api/v3/ping", s.handlePing)
	mux.HandleFunc("GET /api/v3/time", s.handleTime)
	mux.HandleFunc("GET /api/v3/exchangeInfo", s.handleExchangeInfo)
	mux.HandleFunc("GET /api/v3/ticker/24hr", s.handleTicker24h)
	mux.HandleFunc("GET /api/v3/ticker/price", s.handleTickerPrice)
	mux.HandleFunc("GET /api/v1/stream", s.handleStream)
	mux.HandleFunc("GET /ws", s.handleWS)
	mux.HandleFunc("GET /ws/", s.handleWS)
	mux.HandleFunc("GET /stream", s.handleWS)
	mux.HandleFunc("GET /api/v1/symbols", s.handleSymbols)
	mux.HandleFunc("GET /api/v1/intervals", s.handleIntervals)
	mux.Handle("GET /", pageHandler())
	for _, r := range s.extra {
		mux.Handle(r.pattern, r.h)
	}
	srv := &http.Server{Handler: cors(s.cfg.CORSOrigin, mux), ReadHeaderTimeout: 5 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	go func() {
		if err := srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("http", "err", err)
		}
	}()
	defer srv.Close()

	go s.consume(ctx, cl)
	return s.own(ctx, st)
}

// resume consumes every partition of the klines topic from the offset the
// store applied last (from the start where it has none).
func (s *Server) resume(ctx context.Context, ds *diskStore) (kgo.ConsumerOpt, error) {
	applied, err := ds.offsets()
	if err != nil {
		return nil, err
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(s.cfg.Brokers...)}, s.kgoOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("serve: kafka client: %w", err)
	}
	defer cl.Close()
	// The topic may not exist yet (serve started before klagg run): wait.
	var parts []int32
	for {
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		td, err := kadm.NewClient(cl).ListTopics(tctx, s.cfg.KlinesTopic)
		cancel()
		if err == nil && td.Has(s.cfg.KlinesTopic) && td[s.cfg.KlinesTopic].Err == nil {
			parts = td[s.cfg.KlinesTopic].Partitions.Numbers()
			if err := ds.bindTopic(s.cfg.Data, s.cfg.KlinesTopic, td[s.cfg.KlinesTopic].ID); err != nil {
				return nil, err
			}
			break
		}
		s.log.Info("waiting for the klines topic", "topic", s.cfg.KlinesTopic, "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
	offsets := map[int32]kgo.Offset{}
	resumed := 0
	for _, p := range parts {
		offsets[p] = kgo.NewOffset().AtStart()
		if o, ok := applied[p]; ok {
			offsets[p] = kgo.NewOffset().At(o)
			resumed++
		}
	}
	s.log.Info("store opened", "dir", s.cfg.Data, "partitions", len(parts), "resumed", resumed)
	return kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{s.cfg.KlinesTopic: offsets}), nil
}

// consume reads kline records and hands them to the owner in batches.
func (s *Server) consume(ctx context.Context, cl *kgo.Client) {
	for {
		// Bounded, so that an empty topic still counts as read (Ready).
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		fetches := cl.PollFetches(pctx)
		cancel()
		if ctx.Err() != nil || fetches.IsClientClosed() {
			return
		}
		fetches.EachError(func(topic string, p int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) {
				s.log.Warn("fetch", "topic", topic, "partition", p, "err", err)
			}
		})
		batch := update{klines: make([]schema.Kline, 0, fetches.NumRecords()), next: map[int32]int64{}}
		bad := 0
		fetches.EachRecord(func(r *kgo.Record) {
			batch.next[r.Partition] = r.Offset + 1
			var k schema.Kline
			if err := schema.DecodeKline(r.Value, &k); err != nil {
				bad++
				return
			}
			batch.klines = append(batch.klines, k)
		})
		if bad > 0 {
			s.log.Warn("records on the klines topic that are not klines", "count", bad)
		}
		s.records.Add(int64(len(batch.klines)))
		select {
		case s.updates <- batch:
			s.ready.Store(true)
		case <-ctx.Done():
			return
		}
	}
}

// own is the goroutine that owns the store and the stream subscribers. It
// returns the store's error, which stops serve: a store that cannot be
// written must not go on answering from what it had.
func (s *Server) own(ctx context.Context, st candleStore) error {
	subs := subscribers{index: map[seriesKey]map[*subscriber]struct{}{}, keys: map[*subscriber]map[seriesKey]struct{}{}}
	var changed []bool
	expire := time.NewTicker(time.Minute)
	defer expire.Stop()
	for {
		select {
		case <-ctx.Done():
			for sub := range subs.keys {
				subs.cut(sub)
			}
			return nil
		case now := <-expire.C:
			if ds, ok := st.(*diskStore); ok {
				if err := ds.expire(s.cfg.Retention, now.UnixMilli()); err != nil {
					return err
				}
			}
		case batch := <-s.updates:
			changed = slices.Grow(changed[:0], len(batch.klines))[:len(batch.klines)]
			if err := st.apply(batch.klines, batch.next, changed); err != nil {
				for sub := range subs.keys {
					subs.cut(sub)
				}
				return err
			}
			for i := range batch.klines {
				k := &batch.klines[i]
				if !changed[i] {
					continue
				}
				for sub := range subs.index[seriesKey{k.Symbol, k.Period}] {
					select {
					case sub.ch <- *k:
					default:
						// A reader that cannot keep up is cut off rather
						// than allowed to stall every other one.
						subs.cut(sub)
					}
				}
			}
		case r := <-s.queries:
			if r.q.symbol == "" {
				r.reply <- answer{symbols: st.symbolList(), intervals: st.intervalList()}
				continue
			}
			k, known, err := st.klines(r.q)
			r.reply <- answer{klines: k, known: known, err: err}
		case c := <-s.changes:
			subs.apply(c)
		}
		s.streams.Store(int64(len(subs.keys)))
	}
}

// subscribers is the owner's index of who follows which series.
type subscribers struct {
	index map[seriesKey]map[*subscriber]struct{}
	keys  map[*subscriber]map[seriesKey]struct{}
}

func (ss *subscribers) apply(c subChange) {
	if c.leave {
		ss.cut(c.sub)
		return
	}
	keys, ok := ss.keys[c.sub]
	if !ok {
		if len(c.add) == 0 {
			return // cut off already, or never followed anything
		}
		keys = map[seriesKey]struct{}{}
		ss.keys[c.sub] = keys
	}
	for _, k := range c.add {
		keys[k] = struct{}{}
		if ss.index[k] == nil {
			ss.index[k] = map[*subscriber]struct{}{}
		}
		ss.index[k][c.sub] = struct{}{}
	}
	for _, k := range c.remove {
		delete(keys, k)
		delete(ss.index[k], c.sub)
		if len(ss.index[k]) == 0 {
			delete(ss.index, k)
		}
	}
}

// cut forgets sub and closes its channel, once.
func (ss *subscribers) cut(sub *subscriber) {
	keys, ok := ss.keys[sub]
	if !ok {
		return
	}
	for k := range keys {
		delete(ss.index[k], sub)
		if len(ss.index[k]) == 0 {
			delete(ss.index, k)
		}
	}
	delete(ss.keys, sub)
	close(sub.ch)
}

// change hands c to the owner.
func (s *Server) change(ctx context.Context, c subChange) error {
	select {
	case s.changes <- c:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Server) ask(ctx context.Context, q query) (answer, error) {
	reply := make(chan answer, 1)
	select {
	case s.queries <- request{q: q, reply: reply}:
	case <-ctx.Done():
		return answer{}, ctx.Err()
	}
	select {
	case a := <-reply:
		return a, nil
	case <-ctx.Done():
		return answer{}, ctx.Err()
	}
}
