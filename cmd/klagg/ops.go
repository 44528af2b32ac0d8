package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/klagg/klagg/processor"
)

// ops are a process's operations endpoints, the same for every command:
// /metrics (Prometheus, the process's own registry), /healthz (the process
// is alive) and /readyz (ready says whether the command does its work, and
// what it has or why not).
type ops struct {
	reg   *prometheus.Registry
	ready func() (string, error)
	log   *slog.Logger
}

// routes are the endpoints by pattern, for a command that mounts them
// beside its own (serve) or on their own listener (listen).
func (o ops) routes() map[string]http.Handler {
	return map[string]http.Handler{
		"GET /metrics": promhttp.HandlerFor(o.reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(o.log.Handler(), slog.LevelError)}),
		"GET /healthz": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }),
		"GET /readyz": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			detail, err := o.ready()
			if err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok"+detail)
		}),
	}
}

// listen serves the endpoints on addr until closed; an empty addr serves
// nothing.
func (o ops) listen(addr string) (io.Closer, error) {
	if addr == "" {
		return noServer{}, nil
	}
	mux := http.NewServeMux()
	for pattern, h := range o.routes() {
		mux.Handle(pattern, h)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			o.log.Error("operations server", "err", err)
		}
	}()
	return srv, nil
}

// memberReady is a member's readiness: it has started and its flush loop
// ran recently.
func memberReady(stats *processor.Stats, flushEvery time.Duration) func() (string, error) {
	return func() (string, error) {
		last := stats.LastFlush.Load()
		stale := 10*flushEvery + 5*time.Second
		if last == 0 || time.Since(time.UnixMilli(last)) > stale {
			return "", fmt.Errorf("no flush in the last %s", stale)
		}
		return fmt.Sprintf(": %d partitions", stats.Assigned.Load()), nil
	}
}

type noServer struct{}

func (noServer) Close() error { return nil }
