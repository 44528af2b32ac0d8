package integration_test

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"testing"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/schema"
)

// TestAvroDecimalReaders: kline records as klagg writes them, read by
// fastavro as a Python consumer would: every price and volume arrives as a
// decimal.Decimal equal to klagg's exact text, including the largest value
// decimal(38, 8) holds, a value past 64 bits and the smallest price.
func TestAvroDecimalReaders(t *testing.T) {
	python := os.Getenv("KLAGG_TEST_PYTHON")
	if python == "" {
		t.Skip("KLAGG_TEST_PYTHON (a Python with fastavro; scripts/test.sh installs it) is unset")
	}
	wide := func(s string) decimal.Wide {
		w, err := decimal.ParseWide(s)
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	klines := []schema.Kline{
		{Symbol: "BTCUSDT", Period: "1m", Open: 2816547000000, High: 2816791000000, Low: 2816441000000, Close: 2816442000000,
			Volume: wide("24.816"), QuoteVolume: wide("698992.2971503"), TradeCount: 616, TakerBuyVolume: wide("10.78311"),
			TakerBuyQuoteVolume: wide("303728.1601222")},
		{Symbol: "SHIBUSDT", Period: "1M", Open: 1, High: decimal.MaxFixed, Low: 1, Close: 128,
			Volume: wide("12345678901234567890.12345678"), QuoteVolume: wide("999999999999999999999999999999.99999999")},
	}
	var in bytes.Buffer
	for i := range klines {
		in.WriteString(hex.EncodeToString(schema.AppendKlineBody(nil, &klines[i])) + "\n")
	}
	cmd := exec.Command(python, "testdata/fastavro_klines.py", "../schema/kline.avsc")
	cmd.Stdin = &in
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("fastavro: %v\n%s", err, stderr)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for i := 0; sc.Scan(); i++ {
		var got map[string][2]string
		if err := json.Unmarshal(sc.Bytes(), &got); err != nil || i >= len(klines) {
			t.Fatalf("line %d %q: %v", i, sc.Text(), err)
		}
		k := &klines[i]
		want := map[string]string{"open": k.Open.String(), "high": k.High.String(), "low": k.Low.String(), "close": k.Close.String(),
			"volume": k.Volume.String(), "quote_volume": k.QuoteVolume.String(), "taker_buy_volume": k.TakerBuyVolume.String(),
			"taker_buy_quote_volume": k.TakerBuyQuoteVolume.String()}
		for field, w := range want {
			if g := got[field]; g[0] != "decimal.Decimal" || g[1] != w {
				t.Errorf("kline %d %s: fastavro reads %v, klagg wrote %s", i, field, g, w)
			}
		}
	}
}
