package schema_test

import (
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/schema"
)

// What encoding/json needs to decode each venue's message, with the
// fields klagg reads.
type (
	coinbaseMsg struct {
		Channel string `json:"channel"`
		Events  []struct {
			Trades []struct {
				TradeID   string `json:"trade_id"`
				ProductID string `json:"product_id"`
				Price     string `json:"price"`
				Size      string `json:"size"`
				Side      string `json:"side"`
				Time      string `json:"time"`
			} `json:"trades"`
		} `json:"events"`
	}
	krakenMsg struct {
		Channel string `json:"channel"`
		Data    []struct {
			Symbol    string      `json:"symbol"`
			Side      string      `json:"side"`
			Price     json.Number `json:"price"`
			Qty       json.Number `json:"qty"`
			TradeID   int64       `json:"trade_id"`
			Timestamp string      `json:"timestamp"`
		} `json:"data"`
	}
	okxMsg struct {
		Arg struct {
			Channel string `json:"channel"`
		} `json:"arg"`
		Data []struct {
			InstID  string `json:"instId"`
			TradeID string `json:"tradeId"`
			Px      string `json:"px"`
			Sz      string `json:"sz"`
			Side    string `json:"side"`
			Ts      string `json:"ts"`
			Count   string `json:"count"`
		} `json:"data"`
	}
	bybitMsg struct {
		Topic string `json:"topic"`
		Data  []struct {
			T   int64  `json:"T"`
			S   string `json:"s"`
			Sd  string `json:"S"`
			V   string `json:"v"`
			P   string `json:"p"`
			Seq int64  `json:"seq"`
		} `json:"data"`
	}
)

// stdDecode decodes a venue message with encoding/json, then parses its
// decimals (exactly) and times as klagg must, and returns the trades.
func stdDecode(b *testing.B, venue string, value []byte) int {
	must := func(err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	dec := func(s string) {
		_, err := decimal.ParseFixed([]byte(s))
		must(err)
	}
	rfc := func(s string) {
		_, err := time.Parse(time.RFC3339Nano, s)
		must(err)
	}
	n := 0
	switch venue {
	case "coinbase":
		var m coinbaseMsg
		must(json.Unmarshal(value, &m))
		for _, e := range m.Events {
			for _, t := range e.Trades {
				dec(t.Price)
				dec(t.Size)
				rfc(t.Time)
				n++
			}
		}
	case "kraken":
		var m krakenMsg
		must(json.Unmarshal(value, &m))
		for _, t := range m.Data {
			dec(string(t.Price))
			dec(string(t.Qty))
			rfc(t.Timestamp)
			n++
		}
	case "okx":
		var m okxMsg
		must(json.Unmarshal(value, &m))
		for _, t := range m.Data {
			dec(t.Px)
			dec(t.Sz)
			n++
		}
	case "bybit":
		var m bybitMsg
		must(json.Unmarshal(value, &m))
		for _, t := range m.Data {
			dec(t.P)
			dec(t.V)
			n++
		}
	}
	return n
}

// BenchmarkDecodeVenue decodes each venue's sample message (2 or 3
// trades): klagg's mapped decoder beside encoding/json into the venue's
// own struct. The figure to compare is ns/trade.
func BenchmarkDecodeVenue(b *testing.B) {
	for _, venue := range []string{"coinbase", "kraken", "okx", "bybit"} {
		value, err := os.ReadFile("testdata/venues/" + venue + ".json")
		if err != nil {
			b.Fatal(err)
		}
		f, _ := schema.ParseInputFormat(venue)
		d := schema.TradeDecoder{Format: f, Validate: schema.ValidateConfig{MaxSkew: schema.DefaultMaxSkew}}
		b.Run(venue+"/klagg", func(b *testing.B) {
			b.ReportAllocs()
			var batch schema.Batch
			n := 0
			for b.Loop() {
				if err := d.DecodeBatch(nil, value, ms("2024-03-04T10:16:00Z"), &batch); err != nil {
					b.Fatal(err)
				}
				n += len(batch.Trades)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/trade")
		})
		b.Run(venue+"/encoding_json", func(b *testing.B) {
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				n += stdDecode(b, venue, value)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/trade")
		})
	}
}
