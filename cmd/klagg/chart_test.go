package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestDemoChart opens the demo's chart page in headless Chromium (Debian's
// chromium, which scripts/test.sh installs and names in
// KLAGG_TEST_CHROMIUM), as a person would: it waits for candles, takes a
// screenshot, and checks from the page's own state that the chart shows the
// candles /api/v3/klines returns for that symbol and interval, and that an
// update arrives over the stream within 2 s of the page loading.
func TestDemoChart(t *testing.T) {
	chromium := os.Getenv("KLAGG_TEST_CHROMIUM")
	if chromium == "" {
		t.Skip("KLAGG_TEST_CHROMIUM is unset (scripts/test.sh installs Debian's chromium and sets it)")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var stdout syncBuffer
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"demo", "--symbols", "10", "--rate", "400", "--http", "127.0.0.1:0"}, &stdout, &stderr)
	}()
	defer func() {
		cancel()
		<-done
	}()
	addr := ""
	first := regexp.MustCompile(`live chart on http://([0-9.:]+)/`)
	for addr == "" {
		if m := first.FindStringSubmatch(stdout.String()); m != nil {
			addr = m[1]
		} else if ctx.Err() != nil {
			t.Fatalf("the demo printed no chart address: %s %s", stdout.String(), stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	const symbol, interval = "S000USDT", "1m"
	api := fmt.Sprintf("http://%s/api/v3/klines?symbol=%s&interval=%s&limit=1000", addr, symbol, interval)
	for {
		if rows := apiKlines(t, api); len(rows) >= 2 {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("no candles on the demo's API")
		}
		time.Sleep(200 * time.Millisecond)
	}

	actx, acancel := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.WindowSize(1000, 560), chromedp.UserDataDir(t.TempDir()))...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()

	type pageCandle struct {
		OpenTime int64   `json:"openTime"`
		Open     float64 `json:"open"`
		High     float64 `json:"high"`
		Low      float64 `json:"low"`
		Close    float64 `json:"close"`
		Volume   float64 `json:"volume"`
		Final    bool    `json:"final"`
	}
	var state struct {
		Candles       []pageCandle `json:"candles"`
		Updates       int          `json:"updates"`
		LoadedAt      int64        `json:"loadedAt"`
		FirstUpdateAt int64        `json:"firstUpdateAt"`
		Error         string       `json:"error"`
	}
	var stateJSON string
	var png []byte
	page := fmt.Sprintf("http://%s/?symbol=%s&interval=%s", addr, symbol, interval)
	err := chromedp.Do(bctx,
		chromedp.Navigate(page),
		chromedp.Poll[chromedp.Void](`window.klagg && window.klagg.candles.length > 0 && window.klagg.updates > 0`,
			chromedp.WithPollingTimeout(30*time.Second)),
		chromedp.Sleep(300*time.Millisecond), // let the chart paint the update
	)
	if err == nil {
		stateJSON, err = chromedp.Run(bctx, chromedp.Evaluate[string](`JSON.stringify(window.klagg)`))
	}
	if err == nil {
		png, err = chromedp.Run(bctx, chromedp.CaptureScreenshot())
	}
	if err != nil {
		if s, e := chromedp.Run(bctx, chromedp.Evaluate[string](`JSON.stringify(window.klagg)`)); e == nil {
			stateJSON = s
		}
		t.Fatalf("chart page %s: %v (page state %s)", page, err, stateJSON)
	}
	if err := json.Unmarshal([]byte(stateJSON), &state); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(artifactDir(t), "chart.png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of %s: %s (%d bytes); %d candles, %d updates", page, shot, len(png), len(state.Candles), state.Updates)
	if state.Error != "" {
		t.Fatalf("the page reports %q", state.Error)
	}
	if wait := state.FirstUpdateAt - state.LoadedAt; wait > 2000 || wait < 0 {
		t.Fatalf("first stream update %d ms after the page loaded; want within 2 s", wait)
	}

	// What the API says now: every candle the page shows is there, at the
	// same open time; those the page knows as final are equal.
	rows := apiKlines(t, api)
	byOpen := map[int64][]any{}
	for _, r := range rows {
		byOpen[int64(r[0].(float64))] = r
	}
	num := func(v any) float64 { f, _ := strconv.ParseFloat(v.(string), 64); return f }
	finals := 0
	for _, c := range state.Candles {
		r, ok := byOpen[c.OpenTime]
		if !ok {
			t.Fatalf("the page shows a candle at %d that /api/v3/klines does not have", c.OpenTime)
		}
		if c.Final {
			finals++
			if c.Open != num(r[1]) || c.High != num(r[2]) || c.Low != num(r[3]) || c.Close != num(r[4]) || c.Volume != num(r[5]) {
				t.Fatalf("final candle %d: page %+v, API %v", c.OpenTime, c, r)
			}
		}
	}
	if len(state.Candles) < len(rows)-2 {
		t.Fatalf("the page shows %d candles, the API %d", len(state.Candles), len(rows))
	}
	t.Logf("page and API agree on %d candles (%d final on the page)", len(state.Candles), finals)
}

func apiKlines(t *testing.T, u string) [][]any {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil // not there yet: the symbol appears with its first candle
	}
	var rows [][]any
	if err := json.Unmarshal(b, &rows); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return rows
}

// artifactDir is where tests leave files for a person to look at:
// KLAGG_TEST_ARTIFACTS (scripts/test.sh sets it), else the test's temp dir.
func artifactDir(t *testing.T) string {
	if d := os.Getenv("KLAGG_TEST_ARTIFACTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err == nil {
			return d
		}
	}
	return t.TempDir()
}
