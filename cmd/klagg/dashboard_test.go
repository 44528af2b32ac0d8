package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/testkit"
	"github.com/twmb/franz-go/pkg/kfake"
)

// TestDashboardQueries runs a real Prometheus (Debian's package) against a
// live klagg member on kfake, fed by klagg gen, and evaluates every query
// of the Grafana dashboard through Prometheus's HTTP API: each must parse
// and return series, and the trades panel must show trades being folded.
// promtool checks compose's Prometheus configuration itself.
func TestDashboardQueries(t *testing.T) {
	bin := os.Getenv("KLAGG_TEST_PROMETHEUS")
	if bin == "" {
		t.Skip("KLAGG_TEST_PROMETHEUS is unset (scripts/test.sh installs Debian's prometheus and sets it)")
	}
	conf := filepath.Join(repoRoot, "deploy", "prometheus", "prometheus.yml")
	if out, err := exec.CommandContext(t.Context(), filepath.Join(filepath.Dir(bin), "promtool"), "check", "config", conf).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config %s: %v\n%s", conf, err, out)
	}

	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "trades"))
	brokers := cluster.ListenAddrs()[0]
	metricsAddr := testkit.FreeAddr(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan int, 2)
	go func() {
		done <- run(ctx, []string{"run", "--brokers", brokers, "--metrics-addr", metricsAddr, "--flush-interval", "100ms"}, io.Discard, io.Discard)
	}()
	go func() {
		done <- run(ctx, []string{"gen", "--brokers", brokers, "--symbols", "20", "--rate", "500", "--duration", "2m"}, io.Discard, io.Discard)
	}()
	defer func() {
		cancel()
		<-done
		<-done
	}()

	// compose's scrape job, with the member's address in place of the DNS
	// lookup of the compose service, scraped every second.
	dir := t.TempDir()
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"+
		"  - job_name: klagg\n    static_configs:\n      - targets: [%q]\n", metricsAddr)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	promAddr := testkit.FreeAddr(t)
	var promOut bytes.Buffer
	prom := exec.CommandContext(ctx, bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+promAddr)
	prom.Stdout, prom.Stderr = &promOut, &promOut
	if err := prom.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		prom.Process.Kill()
		prom.Wait()
		if t.Failed() {
			t.Logf("prometheus:\n%s", promOut.String())
		}
	}()

	type series struct {
		Metric map[string]string
		Value  [2]any
	}
	query := func(q string) ([]series, error) {
		resp, err := http.Get("http://" + promAddr + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		var r struct {
			Status, Error string
			Data          struct{ Result []series }
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return nil, err
		}
		if r.Status != "success" {
			return nil, queryError(r.Error)
		}
		return r.Data.Result, nil
	}

	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "grafana", "dashboards", "klagg.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, panel := range dash.Panels {
		for _, target := range panel.Targets {
			for {
				res, err := query(target.Expr)
				var refused queryError
				if err != nil && !errors.As(err, &refused) && time.Now().Before(deadline) {
					time.Sleep(250 * time.Millisecond) // not up yet
					continue
				}
				if err != nil {
					t.Fatalf("panel %q: %s: %v", panel.Title, target.Expr, err)
				}
				if len(res) > 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("panel %q: %s: no series after a minute of scraping a live member", panel.Title, target.Expr)
				}
				time.Sleep(250 * time.Millisecond)
			}
		}
	}
	// Trades flow: the first panel shows folded trades above zero.
	for {
		res, err := query(dash.Panels[0].Targets[0].Expr)
		if err != nil {
			t.Fatal(err)
		}
		folded := 0.0
		for _, s := range res {
			if s.Metric["result"] == "folded" {
				v, _ := s.Value[1].(string)
				folded, _ = strconv.ParseFloat(v, 64)
			}
		}
		if folded > 0 {
			t.Logf("%s: folded %.0f trades/s", dash.Panels[0].Title, folded)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no folded trades: %+v", dash.Panels[0].Title, res)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// queryError is a query Prometheus refused (bad PromQL), as opposed to
// one that did not reach it.
type queryError string

func (e queryError) Error() string { return "prometheus refused the query: " + string(e) }
