package integration_test

import (
	"encoding/csv"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/internal/oracle"
	"github.com/klagg/klagg/schema"
)

// TestBinanceKlines replays real Binance BTCUSDT trades (testdata/binance,
// with their origin) through the built binary, `klagg gen --csv` into the
// real broker and `klagg run` out of it, and holds every final 1m candle
// against Binance's own klines for those minutes: every field, as text,
// equal to Binance's string, with no tolerance.
//
// The 2023 set is replayed a second time as Binance's raw trade events
// (its origin is a capture of the <symbol>@trade stream), built from the
// CSV's own text and produced as they are: `--input-format binance-json`
// reads them as it reads aggTrade events.
func TestBinanceKlines(t *testing.T) {
	for _, set := range []string{"btcusdt-2017-08-17", "btcusdt-2023-04-05", "btcusdt-2023-04-05/raw-events"} {
		t.Run(set, func(t *testing.T) {
			name, rawEvents := strings.CutSuffix(set, "/raw-events")
			dir := filepath.Join("testdata", "binance", name)
			want := readBinanceKlines(t, filepath.Join(dir, "klines-1m.csv"))
			b := newBed(t, 1)
			if rawEvents {
				produceRawTradeEvents(t, b, filepath.Join(dir, "trades.csv"))
			} else {
				gen := exec.CommandContext(b.ctx, binary, "gen", "--brokers", strings.Join(brokers, ","),
					"--trades-topic", b.topic("trades"), "--csv", filepath.Join(dir, "trades.csv"), "--symbol", "BTCUSDT")
				out, err := gen.CombinedOutput()
				if err != nil || strings.Contains(string(out), "skipped") {
					t.Fatalf("klagg gen: %v\n%s", err, out)
				}
			}
			b.start("a")
			b.settle(2 * time.Minute)
			b.stop("a")

			got := map[int64]schema.Kline{} // the newest version of each 1m candle
			err := oracle.ReadTopic(b.ctx, brokers, b.topic("klines"), func(r *kgo.Record) {
				var k schema.Kline
				if err := schema.DecodeKline(r.Value, &k); err != nil {
					t.Fatal(err)
				}
				if prev, ok := got[k.OpenTime]; k.Period == "1m" && (!ok || k.Version > prev.Version) {
					got[k.OpenTime] = k
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range want {
				k, ok := got[w.openTime]
				if !ok || !k.IsFinal {
					t.Fatalf("%s: no final candle at %s (have %v)", set, time.UnixMilli(w.openTime).UTC(), ok)
				}
				fields := []string{k.Open.String(), k.High.String(), k.Low.String(), k.Close.String(), k.Volume.String(),
					strconv.FormatInt(k.CloseTime, 10), k.QuoteVolume.String(), strconv.FormatInt(k.TradeCount, 10),
					k.TakerBuyVolume.String(), k.TakerBuyQuoteVolume.String()}
				if strings.Join(fields, ",") != strings.Join(w.fields, ",") {
					t.Errorf("%s %s:\n klagg   %s\n Binance %s", set, time.UnixMilli(w.openTime).UTC().Format(time.DateTime),
						strings.Join(fields, ","), strings.Join(w.fields, ","))
				}
			}
			t.Logf("%s: %d candles, every field equal to Binance's klines", set, len(want))
		})
	}
}

type binanceKline struct {
	openTime int64
	fields   []string // open, high, low, close, volume, close time, quote volume, count, taker buy volume, taker buy quote volume
}

func readBinanceKlines(t *testing.T, file string) []binanceKline {
	t.Helper()
	rows := readCSV(t, file)
	var out []binanceKline
	for _, r := range rows[1:] { // a header
		open, err := strconv.ParseInt(r[0], 10, 64)
		if err != nil || len(r) != 12 {
			t.Fatalf("%s: row %v", file, r)
		}
		out = append(out, binanceKline{openTime: open, fields: r[1:11]})
	}
	if len(out) == 0 {
		t.Fatalf("%s: no klines", file)
	}
	return out
}

// produceRawTradeEvents writes each row of a Binance trades CSV (id, price,
// qty, quote_qty, time, is_buyer_maker, is_best_match) as the raw trade
// event Binance's stream sends, prices and quantities as the CSV's text.
func produceRawTradeEvents(t *testing.T, b *bed, file string) {
	t.Helper()
	rows := readCSV(t, file)
	var recs []*kgo.Record
	for _, r := range rows {
		value := fmt.Sprintf(`{"e":"trade","E":%s,"s":"BTCUSDT","t":%s,"p":"%s","q":"%s","T":%s,"m":%s,"M":%s}`,
			r[4], r[0], r[1], r[2], r[4], strings.ToLower(r[5]), strings.ToLower(r[6]))
		recs = append(recs, &kgo.Record{Topic: b.topic("trades"), Key: []byte("BTCUSDT"), Value: []byte(value)})
	}
	if err := b.cl.ProduceSync(b.ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

func readCSV(t *testing.T, file string) [][]string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	return rows
}
