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

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/schema"
)

// Config configures a Server. Start from DefaultConfig.
type Config struct {
	Brokers     []string
	KlinesTopic string
	// HTTP is the listen address of the API, the stream and the page.
	HTTP string
	// Keep is how many candles per (symbol, period) are held, the newest.
	Keep int
	// QuoteAssets split symbols into base and quote assets for
	// exchangeInfo: the longest one a symbol ends with is its quote.
	QuoteAssets []string
	// CORSOrigin is the Access-Control-Allow-Origin of the API; "" sends
	// none (same-origin pages only).
	CORSOrigin string
}

// DefaultConfig returns the defaults of klagg serve.
func DefaultConfig() Config {
	return Config{Brokers: []string{"127.0.0.1:9092"}, KlinesTopic: "klines", HTTP: "127.0.0.1:8080", Keep: 1000,
		QuoteAssets: slices.Clone(DefaultQuoteAssets), CORSOrigin: "*"}
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

	updates chan []schema.Kline
	queries chan request
	subs    chan subscription
	unsubs  chan chan schema.Kline

	records atomic.Int64 // kline records read
	ready   atomic.Bool  // the first fetch has been handed to the store
	ln      net.Listener
}

type request struct {
	q     query
	reply chan<- answer
}

type answer struct {
	klines  []schema.Kline
	known   bool
	symbols []string
}

type subscription struct {
	symbol, period string
	ch             chan schema.Kline
}

// New validates cfg and listens on cfg.HTTP; Run serves.
func New(cfg Config, opts ...Option) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: slog.New(slog.DiscardHandler),
		updates: make(chan []schema.Kline, 16), queries: make(chan request),
		subs: make(chan subscription), unsubs: make(chan chan schema.Kline)}
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

// Records is how many kline records the server has read.
func (s *Server) Records() int64 { return s.records.Load() }

// Run reads the klines topic and serves HTTP until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(s.cfg.Brokers...), kgo.ConsumeTopics(s.cfg.KlinesTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		// Only committed candles: an aborted flush's records never show.
		kgo.FetchIsolationLevel(kgo.ReadCommitted())}, s.kgoOpts...)...)
	if err != nil {
		return fmt.Errorf("serve: kafka client: %w", err)
	}
	defer cl.Close()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v3/klines", s.handleKlines)
	mux.HandleFunc("GET /api/v3/uiKlines", s.handleKlines)
	mux.HandleFunc("GET /api/v3/ping", s.handlePing)
	mux.HandleFunc("GET /api/v3/time", s.handleTime)
	mux.HandleFunc("GET /api/v3/exchangeInfo", s.handleExchangeInfo)
	mux.HandleFunc("GET /api/v1/stream", s.handleStream)
	mux.HandleFunc("GET /api/v1/symbols", s.handleSymbols)
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
	s.own(ctx)
	return nil
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
		batch := make([]schema.Kline, 0, fetches.NumRecords())
		bad := 0
		fetches.EachRecord(func(r *kgo.Record) {
			var k schema.Kline
			if err := schema.DecodeKline(r.Value, &k); err != nil {
				bad++
				return
			}
			batch = append(batch, k)
		})
		if bad > 0 {
			s.log.Warn("records on the klines topic that are not klines", "count", bad)
		}
		s.records.Add(int64(len(batch)))
		select {
		case s.updates <- batch:
			s.ready.Store(true)
		case <-ctx.Done():
			return
		}
	}
}

// own is the goroutine that owns the store and the stream subscribers.
func (s *Server) own(ctx context.Context) {
	st := newStore(s.cfg.Keep)
	subs := map[chan schema.Kline]subscription{}
	for {
		select {
		case <-ctx.Done():
			for ch := range subs {
				close(ch)
			}
			return
		case batch := <-s.updates:
			for i := range batch {
				k := &batch[i]
				if !st.put(k) {
					continue
				}
				for ch, sub := range subs {
					if sub.symbol != k.Symbol || sub.period != k.Period {
						continue
					}
					select {
					case ch <- *k:
					default:
						// A reader that cannot keep up is cut off rather
						// than allowed to stall every other one.
						delete(subs, ch)
						close(ch)
					}
				}
			}
		case r := <-s.queries:
			if r.q.symbol == "" {
				r.reply <- answer{symbols: st.symbolList()}
				continue
			}
			k, known := st.klines(r.q)
			r.reply <- answer{klines: k, known: known}
		case sub := <-s.subs:
			subs[sub.ch] = sub
		case ch := <-s.unsubs:
			if _, ok := subs[ch]; ok {
				delete(subs, ch)
				close(ch)
			}
		}
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
