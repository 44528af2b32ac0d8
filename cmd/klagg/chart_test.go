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
	"github.com/klagg/klagg/internal/testkit"
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
	var stdout testkit.Buffer
	var stderr testkit.Buffer
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
		Transport     string       `json:"transport"`
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
	if state.Transport != "websocket" {
		t.Errorf("updates came over %q, want Binance's websocket stream", state.Transport)
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

	pageChecks(t, bctx, addr, symbol)
}

// pageChecks opens the page as a person would in other ways: loading
// older candles at the left edge, a symbol klagg does not hold, an
// interval it does not compute (neither reloads the page), and a phone's
// 390 px viewport, of which it leaves a screenshot.
func pageChecks(t *testing.T, bctx context.Context, addr, symbol string) {
	poll := func(expr string) chromedp.Action[chromedp.Void] {
		return chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(20*time.Second))
	}
	state := func() string {
		s, _ := chromedp.Run(bctx, chromedp.Evaluate[string](`JSON.stringify({notice: window.klagg.notice, candles: window.klagg.candles.length, older: window.klagg.olderLoads, url: location.search})`))
		return s
	}
	// One candle a load: the chart starts at its left edge and asks for
	// the older ones, with endTime, as scrolling left does.
	older := fmt.Sprintf("http://%s/?symbol=%s&interval=1m&limit=1", addr, symbol)
	if err := chromedp.Do(bctx, chromedp.Navigate(older),
		poll(`window.klagg && window.klagg.olderLoads > 0 && window.klagg.candles.length >= 2`)); err != nil {
		t.Errorf("older candles at the left edge: %v (page %s)", err, state())
	}
	for _, tc := range []struct{ query, notice, shot string }{
		{"?symbol=NOPE&interval=1m", "Unknown symbol NOPE", "chart-unknown-symbol.png"},
		{"?symbol=" + symbol + "&interval=1s", "Interval 1s is not computed; computed: 1m, 3m, 5m", ""},
	} {
		u := fmt.Sprintf("http://%s/%s", addr, tc.query)
		err := chromedp.Do(bctx, chromedp.Navigate(u),
			poll(fmt.Sprintf(`window.klagg && window.klagg.notice.includes(%q)`, tc.notice)),
			chromedp.Evaluate[chromedp.Void](`window.stillHere = true`),
			chromedp.Sleep(3*time.Second))
		if err == nil {
			var here bool
			if here, err = chromedp.Run(bctx, chromedp.Evaluate[bool](`window.stillHere === true`)); err == nil && !here {
				err = fmt.Errorf("the page reloaded itself")
			}
		}
		if err == nil && tc.shot != "" {
			var png []byte
			if png, err = chromedp.Run(bctx, chromedp.CaptureScreenshot()); err == nil {
				err = os.WriteFile(filepath.Join(artifactDir(t), tc.shot), png, 0o644)
			}
		}
		if err != nil {
			t.Errorf("%s: %v (page %s)", tc.query, err, state())
		}
	}

	// A phone: the header wraps above the chart instead of covering it.
	var png []byte
	var layout struct{ HeaderBottom, ChartTop, ChartHeight, Width float64 }
	err := chromedp.Do(bctx, chromedp.EmulateViewport(390, 844),
		chromedp.Navigate(fmt.Sprintf("http://%s/?symbol=%s&interval=1m", addr, symbol)),
		poll(`window.klagg && window.klagg.candles.length > 0`),
		chromedp.Sleep(500*time.Millisecond))
	if err == nil {
		var js string
		js, err = chromedp.Run(bctx, chromedp.Evaluate[string](`JSON.stringify({HeaderBottom: document.querySelector("header").getBoundingClientRect().bottom,
			ChartTop: document.getElementById("chart").getBoundingClientRect().top,
			ChartHeight: document.getElementById("chart").getBoundingClientRect().height, Width: document.documentElement.scrollWidth})`))
		if err == nil {
			err = json.Unmarshal([]byte(js), &layout)
		}
	}
	if err == nil {
		png, err = chromedp.Run(bctx, chromedp.CaptureScreenshot())
	}
	if err != nil {
		t.Fatalf("390 px: %v (page %s)", err, state())
	}
	shot := filepath.Join(artifactDir(t), "chart-390px.png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot at 390 px: %s; layout %+v", shot, layout)
	if layout.ChartTop < layout.HeaderBottom || layout.ChartHeight < 300 || layout.Width > 390 {
		t.Errorf("at 390 px the header ends at %.0f, the chart starts at %.0f and is %.0f high, the page is %.0f wide",
			layout.HeaderBottom, layout.ChartTop, layout.ChartHeight, layout.Width)
	}
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
