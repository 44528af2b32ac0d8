package schema

import (
	"errors"
	"strconv"
	"time"
)

// The venues' trade messages, as mappings. Each was written from the
// venue's own documentation; README "Any trades topic" shows a sample of
// each and says what its side, time and id mean.
var venueMappings = map[InputFormat]JSONMapping{
	// Coinbase Advanced Trade, channel market_trades: trades batched in
	// events (snapshot, then updates), the side the taker's, the time
	// RFC 3339 with microseconds, trade_id a string of digits that grows
	// per product.
	InputCoinbase: {
		Trades: "events[].trades[]", Symbol: "product_id", Price: "price", Quantity: "size",
		Time: "time", TimeUnit: "rfc3339", Side: "side", TakerBuy: []string{"BUY"}, TakerSell: []string{"SELL"},
		ID: "trade_id", Match: map[string][]string{"channel": {"market_trades"}},
	},
	// Kraken websocket v2, channel trade: prices and quantities JSON
	// numbers, the taker's side, trade_id an integer per book.
	InputKraken: {
		Trades: "data[]", Symbol: "symbol", Price: "price", Quantity: "qty",
		Time: "timestamp", TimeUnit: "rfc3339", Side: "side", TakerBuy: []string{"buy"}, TakerSell: []string{"sell"},
		ID: "trade_id", Match: map[string][]string{"channel": {"trade"}},
	},
	// OKX v5, channels trades (aggregated: count raw trades up to
	// tradeId) and trades-all: everything strings, ts in milliseconds.
	InputOKX: {
		Trades: "data[]", Symbol: "instId", Price: "px", Quantity: "sz",
		Time: "ts", TimeUnit: "ms", Side: "side", TakerBuy: []string{"buy"}, TakerSell: []string{"sell"},
		ID: "tradeId", Count: "count", Match: map[string][]string{"arg.channel": {"trades", "trades-all"}},
	},
	// Bybit v5, topic publicTrade.<symbol>: the trade id i is not ordered
	// (a UUID on derivatives), seq is, and the trades of one match share
	// it; T in milliseconds; S the taker's side.
	InputBybit: {
		Trades: "data[]", Symbol: "s", Price: "p", Quantity: "v",
		Time: "T", TimeUnit: "ms", Side: "S", TakerBuy: []string{"Buy"}, TakerSell: []string{"Sell"},
		ID: "seq", SharedIDs: true, Match: map[string][]string{"topic": {"publicTrade.*"}},
	},
}

// VenueMapping returns the mapping of a venue format, for documentation
// and for writing a platform's own mapping from it.
func VenueMapping(f InputFormat) (JSONMapping, bool) {
	m, ok := venueMappings[f]
	return m, ok
}

var compiledVenues = func() map[InputFormat]*compiledMapping {
	out := map[InputFormat]*compiledMapping{}
	for f, m := range venueMappings {
		c, err := m.compile()
		if err != nil {
			panic("schema: venue mapping " + f.String() + ": " + err.Error()) // a programming error, caught by any test
		}
		out[f] = c
	}
	return out
}()

// Batch holds the trades of one record; reuse it across records, so
// that decoding allocates nothing in steady state. Trades[i] was refused
// when Errs[i] is non-nil (an *InvalidTradeError). A Trade's Symbol
// aliases the record or the Batch, until the next decode into it.
type Batch struct {
	Trades []Trade
	Errs   []error
	scan   mappedScan
	avro   avroCache
	arena  []byte // prefixed symbols
}

func (b *Batch) reset() {
	b.Trades, b.Errs = b.Trades[:0], b.Errs[:0]
}

func (b *Batch) one(err error) {
	b.Trades = append(b.Trades, Trade{})
	b.Errs = append(b.Errs, err)
}

// Mapping is a compiled JSONMapping for TradeDecoder.Mapping.
type Mapping struct{ c *compiledMapping }

// Compile checks m (every problem at once, each wrapping ErrMapping) and
// returns it ready to decode with.
func (m *JSONMapping) Compile() (*Mapping, error) {
	c, err := m.compile()
	if err != nil {
		return nil, err
	}
	return &Mapping{c}, nil
}

// DecodeBatch decodes one record into b and validates each trade; nowMs
// is the wall clock in Unix milliseconds. It returns an *InvalidTradeError
// when the record as a whole is refused (malformed, another channel's
// message); otherwise b holds its trades, each valid or refused with its
// reason, and possibly none (an empty batch is not an error).
func (d *TradeDecoder) DecodeBatch(key, value []byte, nowMs int64, b *Batch) error {
	b.reset()
	switch d.Format {
	case InputBinanceJSON, InputAvro:
		b.one(nil)
		var err error
		switch {
		case d.Format == InputAvro && d.Avro != nil:
			err = d.Avro.decode(value, &b.Trades[0], &b.avro)
		case d.Format == InputAvro:
			err = decodeAvroTrade(value, &b.Trades[0], d.V1IDs)
		default:
			err = DecodeBinanceJSON(value, key, &b.Trades[0])
		}
		if err != nil {
			b.reset()
			return err
		}
	default:
		m := compiledVenues[d.Format]
		if d.Format == InputJSON && d.Mapping != nil {
			m = d.Mapping.c
		}
		if m == nil {
			return invalid(ReasonMalformed, "", errors.New("no mapping for the input format"))
		}
		b.scan.m, b.scan.out = m, b
		if err := b.scan.decode(value); err != nil {
			b.reset()
			return err
		}
	}
	if len(d.SymbolPrefix) > 0 {
		b.prefix(d.SymbolPrefix)
	}
	for i := range b.Trades {
		if b.Errs[i] == nil {
			b.Errs[i] = d.Validate.Validate(&b.Trades[i], nowMs)
		}
	}
	return nil
}

// prefix puts p before every symbol, in b's arena.
func (b *Batch) prefix(p []byte) {
	n := 0
	for i := range b.Trades {
		n += len(p) + len(b.Trades[i].Symbol)
	}
	if cap(b.arena) < n {
		b.arena = make([]byte, 0, n)
	}
	b.arena = b.arena[:0]
	for i := range b.Trades {
		start := len(b.arena)
		b.arena = append(append(b.arena, p...), b.Trades[i].Symbol...)
		b.Trades[i].Symbol = b.arena[start:len(b.arena):len(b.arena)]
	}
}

// parseTime reads a mapped trade time as Unix milliseconds, rounded down.
func parseTime(v []byte, escaped bool, unit int) (int64, error) {
	if escaped {
		return 0, errors.New("escaped time")
	}
	if unit == unitRFC3339 {
		return parseRFC3339(v)
	}
	whole, frac, _ := cutByte(v, '.')
	if len(frac) > 0 && unit != unitS {
		return 0, errors.New("a fraction of a unit finer than seconds")
	}
	n, ok := digits(whole)
	if !ok {
		return 0, errors.New("not a time")
	}
	switch unit {
	case unitS:
		if n > 1<<53 {
			return 0, errors.New("time out of range")
		}
		ms := n * 1000
		for i, scale := 0, int64(100); i < len(frac); i, scale = i+1, scale/10 {
			if frac[i] < '0' || frac[i] > '9' {
				return 0, errors.New("not a time")
			}
			ms += int64(frac[i]-'0') * scale
		}
		return ms, nil
	case unitUs:
		return n / 1000, nil
	case unitNs:
		return n / 1_000_000, nil
	}
	return n, nil
}

func cutByte(v []byte, c byte) (before, after []byte, found bool) {
	for i, x := range v {
		if x == c {
			return v[:i], v[i+1:], true
		}
	}
	return v, nil, false
}

var errRFC3339 = errors.New("not an RFC 3339 time")

// parseRFC3339 reads 2006-01-02T15:04:05[.fraction](Z|±07:00) into Unix
// milliseconds, rounded down, without allocating.
func parseRFC3339(v []byte) (int64, error) {
	num := func(i, n int) int64 {
		var x int64
		for _, c := range v[i : i+n] {
			if c < '0' || c > '9' {
				return -1
			}
			x = x*10 + int64(c-'0')
		}
		return x
	}
	if len(v) < 20 || v[4] != '-' || v[7] != '-' || (v[10] != 'T' && v[10] != 't' && v[10] != ' ') || v[13] != ':' || v[16] != ':' {
		return 0, errRFC3339
	}
	y, mo, d, h, mi, sec := num(0, 4), num(5, 2), num(8, 2), num(11, 2), num(14, 2), num(17, 2)
	if y < 0 || mo < 1 || mo > 12 || d < 1 || d > int64(daysIn(int(y), int(mo))) || h < 0 || h > 23 || mi < 0 || mi > 59 || sec < 0 || sec > 60 {
		return 0, errRFC3339
	}
	i, ms := 19, int64(0)
	if v[i] == '.' {
		i++
		start := i
		for i < len(v) && v[i] >= '0' && v[i] <= '9' {
			if i-start < 3 {
				ms = ms*10 + int64(v[i]-'0')
			}
			i++
		}
		if i == start {
			return 0, errRFC3339
		}
		for k := i - start; k < 3; k++ {
			ms *= 10
		}
	}
	var off int64
	switch {
	case i == len(v)-1 && (v[i] == 'Z' || v[i] == 'z'):
	case i == len(v)-6 && (v[i] == '+' || v[i] == '-') && v[i+3] == ':':
		oh, om := num(i+1, 2), num(i+4, 2)
		if oh < 0 || oh > 23 || om < 0 || om > 59 {
			return 0, errRFC3339
		}
		off = (oh*60 + om) * 60
		if v[i] == '-' {
			off = -off
		}
	default:
		return 0, errRFC3339
	}
	days := daysFromCivil(y, mo, d)
	secs := days*86400 + h*3600 + mi*60 + min(sec, 59) - off
	return secs*1000 + ms, nil
}

func daysIn(y, m int) int {
	if m == 2 && (y%4 == 0 && y%100 != 0 || y%400 == 0) {
		return 29
	}
	return monthDays[m]
}

var monthDays = [13]int{0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}

// daysFromCivil is the days since 1970-01-01 of a proleptic Gregorian
// date (Howard Hinnant's algorithm).
func daysFromCivil(y, m, d int64) int64 {
	if m <= 2 {
		y--
	}
	era := y / 400
	if y < 0 {
		era = (y - 399) / 400
	}
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}

// AppendVenueJSON appends ts as one message of venue format f, the way
// the venue writes it (for gen, the demo and tests). Ids: Coinbase and
// Kraken carry AggID; OKX LastID with the count of raw trades; Bybit
// LastID as seq.
func AppendVenueJSON(b []byte, f InputFormat, ts []Trade) []byte {
	side := func(b []byte, t *Trade, buy, sell string) []byte {
		if t.BuyerMaker {
			return append(b, sell...)
		}
		return append(b, buy...)
	}
	switch f {
	case InputCoinbase:
		b = append(b, `{"channel":"market_trades","client_id":"","timestamp":"`...)
		b = appendRFC3339(b, ts[len(ts)-1].Time)
		b = append(b, `","sequence_num":0,"events":[{"type":"update","trades":[`...)
	case InputKraken:
		b = append(b, `{"channel":"trade","type":"update","data":[`...)
	case InputOKX:
		b = append(b, `{"arg":{"channel":"trades","instId":"`...)
		b = append(b, ts[0].Symbol...)
		b = append(b, `"},"data":[`...)
	case InputBybit:
		b = append(b, `{"topic":"publicTrade.`...)
		b = append(b, ts[0].Symbol...)
		b = append(b, `","type":"snapshot","ts":`...)
		b = strconv.AppendInt(b, ts[len(ts)-1].Time+2, 10)
		b = append(b, `,"data":[`...)
	default:
		return b
	}
	for i := range ts {
		t := &ts[i]
		if i > 0 {
			b = append(b, ',')
		}
		switch f {
		case InputCoinbase:
			b = append(b, `{"trade_id":"`...)
			b = strconv.AppendInt(b, t.AggID, 10)
			b = append(append(append(b, `","product_id":"`...), t.Symbol...), `","price":"`...)
			b = append(t.Price.Append(b), `","size":"`...)
			b = append(t.Quantity.Append(b), `","side":"`...)
			b = append(side(b, t, "BUY", "SELL"), `","time":"`...)
			b = append(appendRFC3339(b, t.Time), `"}`...)
		case InputKraken:
			b = append(append(append(b, `{"symbol":"`...), t.Symbol...), `","side":"`...)
			b = append(side(b, t, "buy", "sell"), `","price":`...)
			b = append(t.Price.Append(b), `,"qty":`...)
			b = append(t.Quantity.Append(b), `,"ord_type":"market","trade_id":`...)
			b = append(strconv.AppendInt(b, t.AggID, 10), `,"timestamp":"`...)
			b = append(appendRFC3339(b, t.Time), `"}`...)
		case InputOKX:
			b = append(append(append(b, `{"instId":"`...), t.Symbol...), `","tradeId":"`...)
			b = append(strconv.AppendInt(b, t.LastID, 10), `","px":"`...)
			b = append(t.Price.Append(b), `","sz":"`...)
			b = append(t.Quantity.Append(b), `","side":"`...)
			b = append(side(b, t, "buy", "sell"), `","ts":"`...)
			b = append(strconv.AppendInt(b, t.Time, 10), `","count":"`...)
			b = append(strconv.AppendInt(b, t.LastID-t.FirstID+1, 10), `"}`...)
		case InputBybit:
			b = append(strconv.AppendInt(append(b, `{"T":`...), t.Time, 10), `,"s":"`...)
			b = append(append(b, t.Symbol...), `","S":"`...)
			b = append(side(b, t, "Buy", "Sell"), `","v":"`...)
			b = append(t.Quantity.Append(b), `","p":"`...)
			b = append(t.Price.Append(b), `","L":"ZeroPlusTick","i":"`...)
			b = append(strconv.AppendUint(b, uint64(t.LastID)*2654435761%1_000_000_007, 16), `","BT":false,"seq":`...)
			b = append(strconv.AppendInt(b, t.LastID, 10), '}')
		}
	}
	if f == InputCoinbase {
		b = append(b, ']', '}')
	}
	return append(b, ']', '}')
}

func appendRFC3339(b []byte, ms int64) []byte {
	return time.UnixMilli(ms).UTC().AppendFormat(b, "2006-01-02T15:04:05.000000Z")
}
