package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/klagg/klagg/processor"
)

// startHealth serves /metrics (Prometheus, the process's own registry),
// /healthz (the process is alive) and /readyz (the member has started and
// its flush loop ran recently) on addr; an empty addr serves nothing.
func startHealth(addr string, stats *processor.Stats, reg *prometheus.Registry, flushEvery time.Duration, log *slog.Logger) (interface{ Close() error }, error) {
	if addr == "" {
		return noServer{}, nil
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelError)}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		last := stats.LastFlush.Load()
		stale := 10*flushEvery + 5*time.Second
		if last == 0 || time.Since(time.UnixMilli(last)) > stale {
			http.Error(w, "not ready: no flush in the last "+stale.String(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ok: %d partitions\n", stats.Assigned.Load())
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("health server", "err", err)
		}
	}()
	return srv, nil
}

type noServer struct{}

func (noServer) Close() error { return nil }
