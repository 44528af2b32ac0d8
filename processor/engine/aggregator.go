package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"time"

	"github.com/klagg/klagg/decimal"
	"github.com/klagg/klagg/partition"
	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/schema"
)

// LevelTrace is below slog.LevelDebug; the engine logs a slot going from
// clean to dirty at this level, and nothing per trade above it.
const LevelTrace = slog.Level(-8)

// Config configures an Aggregator. The zero value is not valid; start
// from DefaultConfig.
type Config struct {
	// Periods are the candle periods, in canonical order (ParsePeriods).
	Periods []period.Period
	// Grace is how far the watermark trails the greatest accepted trade
	// time (the package doc, Rules).
	Grace time.Duration
	// LiveWindow: a shard whose latest trade was accepted within this much
	// of its trade time is live, and its watermark may follow the wall clock.
	LiveWindow time.Duration
	// SymbolsHint sizes the arrays for about this many symbols.
	SymbolsHint int
	// MaxPending bounds the final candles the engine queues before they
	// are drained. The watermark moves toward its target one candle
	// boundary at a time and stops once this many are queued (Backlogged),
	// so a watermark that sweeps hours of trade time at once never holds
	// more than MaxPending plus one boundary's candles (one per slot).
	MaxPending int
	// Flat says which candles without trades are emitted when they end.
	Flat FlatPolicy
}

// FlatPolicy is which quiet candles (no trade in the period) are emitted.
type FlatPolicy string

// The policies (--flat-candles).
const (
	// FlatAll emits a flat final candle (OHLC at the previous close,
	// volumes 0, trade ids -1) for every period a symbol, once seen, has
	// no trade: Binance's rule, and the default.
	FlatAll FlatPolicy = "all"
	// FlatNone emits no candle for a period without trades: the reader
	// fills gaps (deploy/clickhouse/queries/fill-gaps.sql, a chart's whitespace), as most
	// stream processors leave them. Output then grows with trades, not
	// with symbols × time.
	FlatNone FlatPolicy = "none"
)

// DefaultConfig returns DESIGN.md's defaults.
func DefaultConfig() Config {
	periods, err := period.ParseList(period.DefaultList)
	if err != nil {
		panic(err) // a constant: covered by every test
	}
	return Config{Periods: periods, Grace: time.Second, LiveWindow: time.Minute, SymbolsHint: 256,
		MaxPending: DefaultMaxPending, Flat: FlatAll}
}

// DefaultMaxPending is Config.MaxPending's default. A candle on its way to
// the broker (queued, copied into a batch, encoded, buffered by the
// producer) takes roughly 700 bytes by the sizes of those structures, and
// a shard may hold one full queue while the previous one is delivered:
// some 25 MB per shard. A smaller queue means more, smaller deliveries
// (see the README's scaling section for what 4,096 cost).
const DefaultMaxPending = 16_384

// Validate reports every problem of c at once.
func (c Config) Validate() error {
	var errs []error
	if len(c.Periods) == 0 {
		errs = append(errs, errors.New("engine: no periods"))
	}
	var seen [period.Count]bool
	for i, p := range c.Periods {
		switch {
		case p >= period.Count:
			errs = append(errs, fmt.Errorf("engine: period %d: %w", p, period.ErrUnknown))
		case seen[p]:
			errs = append(errs, fmt.Errorf("engine: period %s listed twice", p))
		case i > 0 && p < c.Periods[i-1]:
			errs = append(errs, fmt.Errorf("engine: periods not in canonical order at %s", p))
		}
		if p < period.Count {
			seen[p] = true
		}
	}
	if c.Grace < 0 {
		errs = append(errs, fmt.Errorf("engine: grace %s is negative", c.Grace))
	}
	if c.LiveWindow <= 0 {
		errs = append(errs, fmt.Errorf("engine: live window %s must be positive", c.LiveWindow))
	}
	if c.SymbolsHint < 0 {
		errs = append(errs, fmt.Errorf("engine: symbols hint %d is negative", c.SymbolsHint))
	}
	if c.MaxPending < 1 {
		errs = append(errs, fmt.Errorf("engine: max pending candles %d must be positive", c.MaxPending))
	}
	switch c.Flat {
	case FlatAll, FlatNone:
	default:
		errs = append(errs, fmt.Errorf("engine: flat candles %q: want %s or %s", c.Flat, FlatAll, FlatNone))
	}
	return errors.Join(errs...)
}

// Option injects a dependency into an Aggregator or a runtime component.
type Option func(*options)

type options struct {
	log *slog.Logger
}

// WithLogger sets the logger; the default discards.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

func applyOptions(opts []Option) options {
	o := options{log: slog.New(slog.DiscardHandler)}
	for _, fn := range opts {
		fn(&o)
	}
	return o
}

// Outcome is what Fold did with a trade.
type Outcome uint8

const (
	// Folded: the trade changed its candles.
	Folded Outcome = iota
	// Replayed: the trade's offset is at or below what the symbol's
	// restored state already reflects; it was counted before and is skipped.
	Replayed
	// Duplicate: its aggregate id is not above the symbol's highest.
	Duplicate
	// Late: its candle is already final for at least one period.
	Late
	// OutOfRange: one of the symbol's sums is past 2^125 (about 4×10^21 in
	// quote units), where one more trade could overflow 128 bits.
	OutOfRange
)

// Reason maps a refusal to the dead-letter reason; ReasonNone otherwise.
func (o Outcome) Reason() schema.Reason {
	switch o {
	case Duplicate:
		return schema.ReasonDuplicate
	case Late:
		return schema.ReasonLate
	case OutOfRange:
		return schema.ReasonOutOfRange
	}
	return schema.ReasonNone
}

// candle is the open candle of one (symbol, period) slot. firstID < 0 marks
// a candle without trades yet: flat at the previous close, never emitted
// while open. nextOpen == 0 marks a slot not started yet (a period added
// since the state was written); it starts at the symbol's next trade.
type candle struct {
	openTime, nextOpen int64
	trades
	version int64 // of the last record emitted for this candle
}

// trades is what a candle, or an accum, knows of its trades. firstID < 0:
// none yet.
type trades struct {
	open, high, low, close        decimal.Fixed
	volume, takerVolume           decimal.Wide
	quoteVolume, takerQuoteVolume decimal.Quote // exact, rounded only in kline
	tradeCount                    int64
	firstID, lastID               int64
	openTradeTime                 int64 // trade time of the open trade
}

// add folds one trade in. quote and the taker sums are precomputed by Fold
// (the same for every period); closes says the trade is its symbol's latest
// so far, which moves the close.
func (s *trades) add(t *schema.Trade, quote decimal.Quote, takerQty decimal.Fixed, takerQuote decimal.Quote, count int64, closes bool) (full bool) {
	price := t.Price
	if s.firstID < 0 {
		s.open, s.high, s.low, s.close = price, price, price, price
		s.firstID, s.lastID, s.openTradeTime = t.FirstID, t.LastID, t.Time
	} else {
		if price > s.high {
			s.high = price
		}
		if price < s.low {
			s.low = price
		}
		if t.Time < s.openTradeTime {
			s.open, s.firstID, s.openTradeTime = price, t.FirstID, t.Time
		}
		if closes {
			s.close, s.lastID = price, t.LastID
		}
	}
	s.volume = s.volume.AddFixed(t.Quantity)
	s.quoteVolume = s.quoteVolume.Add(quote)
	s.takerVolume = s.takerVolume.AddFixed(takerQty)
	s.takerQuoteVolume = s.takerQuoteVolume.Add(takerQuote)
	s.tradeCount += count
	return !s.volume.Room() || !s.quoteVolume.Room()
}

// merge folds in o, whose trades all came after s's; oCloses says one of
// them closed. The result is what adding o's trades one by one gives (sums
// included: they are exact, so the order does not matter).
func (s *trades) merge(o *trades, oCloses bool) (full bool) {
	if s.firstID < 0 {
		s.open, s.high, s.low, s.close = o.open, o.high, o.low, o.close
		s.firstID, s.lastID, s.openTradeTime = o.firstID, o.lastID, o.openTradeTime
	} else {
		s.high = max(s.high, o.high)
		s.low = min(s.low, o.low)
		if o.openTradeTime < s.openTradeTime {
			s.open, s.firstID, s.openTradeTime = o.open, o.firstID, o.openTradeTime
		}
		if oCloses {
			s.close, s.lastID = o.close, o.lastID
		}
	}
	s.volume = s.volume.Add(o.volume)
	s.quoteVolume = s.quoteVolume.Add(o.quoteVolume)
	s.takerVolume = s.takerVolume.Add(o.takerVolume)
	s.takerQuoteVolume = s.takerQuoteVolume.Add(o.takerQuoteVolume)
	s.tradeCount += o.tradeCount
	return !s.volume.Room() || !s.quoteVolume.Room()
}

// accum is the trades of one symbol folded since its coarser periods were
// last brought up to date (see Aggregator.propagate): a candle started
// empty, plus whether any of its trades closes (moves a candle's close).
// firstID < 0: empty.
type accum struct {
	trades
	closes bool
}

// Aggregator is the engine of one shard: the candles of every (symbol,
// period) of one trades partition in flat arrays, slot index =
// symbol*len(periods)+period, and a sparse set of the slots changed since
// the last Drain. It is owned by one goroutine and is not safe for
// concurrent use; see the package doc for the rules it implements.
type Aggregator struct {
	periods     []period.Period
	periodNames []string
	nP          int
	graceMs     int64
	liveMs      int64
	log         *slog.Logger

	symbols        *partition.Symbols
	lastAggID      []int64 // per symbol
	full           []bool  // per symbol: a sum may have passed 2^125 (see room)
	lastTradeTime  []int64 // per symbol: greatest accepted trade time
	restoredOffset []int64 // per symbol: trades at or below are already folded

	candles      []candle // per slot
	acc          []accum  // per symbol, when lazy is not empty
	dirtyFlags   []bool   // per slot
	dirtyIndices []int32  // the slots whose flag is set, in the order they were set
	finals       []schema.Kline
	symMark      []bool // per symbol, scratch for Drain
	dirtySyms    []int32

	// minNext[p] is a lower bound of nextOpen over the slots of period p:
	// the watermark needs to look at period p only once it reaches it.
	minNext    []int64
	minNextAll int64

	// A trade updates the finest period (index 0) and direct ones at once;
	// the lazy periods, whose every boundary is one of the finest period's,
	// get the symbol's accum merged in when the finest candle rolls, when
	// they roll, and before they are emitted or snapshotted. A trade then
	// writes two candles instead of one per period.
	direct []int // 0, and the periods not nested in it
	lazy   []int
	all    []int

	// target is W as the rules define it; watermark is how far it has been
	// applied: every started slot has nextOpen > watermark. They differ
	// while the engine is backlogged (see advance).
	target            int64
	watermark         int64
	stepTo            int64 // the watermark of a step in progress, when above watermark
	maxPending        int
	flat              bool // FlatAll
	maxTradeTime      int64
	acceptedAt        int64 // wall clock when the latest trade was accepted
	acceptedTradeTime int64
	live              bool
	position          int64 // last trades offset handled; -1 before any
}

// NewAggregator returns an empty shard engine.
func NewAggregator(cfg Config, opts ...Option) (*Aggregator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := applyOptions(opts)
	nP := len(cfg.Periods)
	a := &Aggregator{
		periods:        append([]period.Period(nil), cfg.Periods...),
		nP:             nP,
		graceMs:        cfg.Grace.Milliseconds(),
		liveMs:         cfg.LiveWindow.Milliseconds(),
		log:            o.log,
		symbols:        partition.NewSymbols(cfg.SymbolsHint),
		lastAggID:      make([]int64, 0, cfg.SymbolsHint),
		lastTradeTime:  make([]int64, 0, cfg.SymbolsHint),
		restoredOffset: make([]int64, 0, cfg.SymbolsHint),
		candles:        make([]candle, 0, cfg.SymbolsHint*nP),
		dirtyFlags:     make([]bool, 0, cfg.SymbolsHint*nP),
		dirtyIndices:   make([]int32, 0, cfg.SymbolsHint*nP),
		symMark:        make([]bool, 0, cfg.SymbolsHint),
		minNext:        make([]int64, nP),
		minNextAll:     math.MaxInt64,
		watermark:      math.MinInt64,
		target:         math.MinInt64,
		stepTo:         math.MinInt64,
		maxPending:     cfg.MaxPending,
		flat:           cfg.Flat == FlatAll,
		maxTradeTime:   math.MinInt64,
		position:       -1,
	}
	for i, p := range a.periods {
		a.periodNames = append(a.periodNames, p.String())
		a.minNext[i] = math.MaxInt64
		a.all = append(a.all, i)
		if i > 0 && p.NestsIn(a.periods[0]) {
			a.lazy = append(a.lazy, i)
		} else {
			a.direct = append(a.direct, i)
		}
	}
	if len(a.lazy) > 0 {
		a.acc = make([]accum, 0, cfg.SymbolsHint)
	}
	return a, nil
}

// Symbols is the number of symbols the shard holds.
func (a *Aggregator) Symbols() int { return a.symbols.Len() }

// DirtyLen is the number of slots changed since the last Drain.
func (a *Aggregator) DirtyLen() int { return len(a.dirtyIndices) }

// Watermark returns W in Unix ms (math.MinInt64 before any trade), as the
// rules define it; while Backlogged, candles are still being closed up to it.
func (a *Aggregator) Watermark() int64 { return a.target }

// Pending is the number of final candles queued for the next drain.
func (a *Aggregator) Pending() int { return len(a.finals) }

// Backlogged reports that the engine must be drained before it takes more
// trades: MaxPending final candles are queued, or the watermark has not
// reached W yet because closing the candles up to W would queue more. After
// a drain, Settle goes on closing them. Fold on a backlogged engine is
// still correct, but closes every candle up to W at once, unbounded.
func (a *Aggregator) Backlogged() bool {
	return len(a.finals) >= a.maxPending || a.watermark < a.target
}

// Settle goes on closing the candles up to W, as far as MaxPending allows,
// and reports whether W is reached.
func (a *Aggregator) Settle() bool {
	a.advance(true)
	return a.watermark >= a.target
}

// Position returns the last trades offset handled, -1 before any.
func (a *Aggregator) Position() int64 { return a.position }

// MarkOffset records that the trades record at offset was handled without
// reaching Fold (it was invalid), so Drain's Position covers it.
func (a *Aggregator) MarkOffset(offset int64) {
	if offset > a.position {
		a.position = offset
	}
}

// Fold applies one validated trade read at offset of the shard's trades
// partition; nowMs is the wall clock (Unix ms) at which it was read, for
// the live-window rule. It allocates nothing unless the symbol is new.
func (a *Aggregator) Fold(t *schema.Trade, offset, nowMs int64) Outcome {
	if a.watermark < a.target {
		// The caller did not Settle: the rules below need W applied.
		a.advance(false)
	}
	a.MarkOffset(offset)
	sym, known := a.symbols.Lookup(t.Symbol)
	if out := a.refusal(t, sym, known, offset); out != Folded {
		return out
	}

	// Accepted.
	if t.Time > a.maxTradeTime {
		a.maxTradeTime = t.Time
		a.target = max(a.target, t.Time-a.graceMs)
	}
	a.acceptedAt, a.acceptedTradeTime = nowMs, t.Time
	a.live = nowMs-t.Time <= a.liveMs
	// Bounded: this trade is folded whatever the rest of W costs (its own
	// slots roll to its time below); the next one waits for Settle.
	a.advance(true)
	if known && !a.Consistent() {
		// The step stopped half way: close it for this symbol first, or
		// its trade would reach a coarse candle the step is closing.
		a.finishStepFor(sym)
	}
	if !known {
		sym = a.addSymbol(t.Symbol)
	}
	quote := decimal.Product(t.Price, t.Quantity)
	// Branch-free taker sums: adding 0 leaves a sum unchanged.
	var takerQty decimal.Fixed
	var takerQuote decimal.Quote
	if !t.BuyerMaker {
		takerQty, takerQuote = t.Quantity, quote
	}
	count := t.LastID - t.FirstID + 1
	base := int(sym) * a.nP
	cs := a.candles[base : base+a.nP]
	if t.Time >= cs[0].nextOpen {
		// The finest candle ends (or starts): every period may roll. The
		// finest rolls first, and roll propagates the accum before it.
		for i := range cs {
			a.rollTo(base+i, t.Time)
		}
	} else {
		for _, i := range a.direct[1:] {
			a.rollTo(base+i, t.Time)
		}
	}
	if a.full[sym] && !a.room(sym, cs) {
		return OutOfRange
	}
	if !t.Unordered {
		a.lastAggID[sym] = t.AggID
	}
	closes := t.Time >= a.lastTradeTime[sym]
	if closes {
		a.lastTradeTime[sym] = t.Time
	}
	full := false
	for _, i := range a.direct {
		full = cs[i].add(t, quote, takerQty, takerQuote, count, closes) || full
	}
	if a.lazy != nil {
		ac := &a.acc[sym]
		full = ac.add(t, quote, takerQty, takerQuote, count, closes) || full
		ac.closes = ac.closes || closes
	}
	if full {
		a.full[sym] = true
	}
	flags := a.dirtyFlags[base : base+a.nP]
	for i := range flags {
		if !flags[i] {
			a.markDirty(base + i)
		}
	}
	return Folded
}

// room reports whether the symbol's sums can take one more trade: each
// below 2^125 (decimal.Quote.Room), so no 128-bit sum can wrap, however
// large the trade. Taker sums never exceed the totals. Fold asks only
// when the symbol's full flag is set (an add or a merge passed 2^125: the
// flag clear says there is room without reading the slots), and room
// clears it once the candles that held the large sums have rolled.
func (a *Aggregator) room(sym int32, cs []candle) bool {
	for i := range cs {
		if !cs[i].volume.Room() || !cs[i].quoteVolume.Room() {
			return false
		}
	}
	if a.lazy != nil {
		if ac := &a.acc[sym]; !ac.volume.Room() || !ac.quoteVolume.Room() {
			return false
		}
	}
	a.full[sym] = false
	return true
}

// refusal is Replayed, Duplicate or Late for a trade Fold must not fold,
// else Folded.
func (a *Aggregator) refusal(t *schema.Trade, sym int32, known bool, offset int64) Outcome {
	if !known {
		if t.Time < a.watermark && a.lateForNewSymbol(t.Time) {
			return Late
		}
		return Folded
	}
	if offset <= a.restoredOffset[sym] {
		return Replayed
	}
	if !t.Unordered && t.AggID <= a.lastAggID[sym] {
		return Duplicate
	}
	// A lazy period's candle opens no later than the finest one's, so the
	// direct periods decide, once the finest has started (it may not have,
	// if it was added since the state was written).
	base := int(sym) * a.nP
	check := a.direct
	if a.candles[base].nextOpen == 0 {
		check = a.all
	}
	for _, i := range check {
		if t.Time < a.candles[base+i].openTime {
			return Late
		}
	}
	return Folded
}

// finishStepFor rolls sym's slots that the watermark step in progress has
// yet to reach, as the rest of the step will.
func (a *Aggregator) finishStepFor(sym int32) {
	base := int(sym) * a.nP
	for i := range a.nP {
		if c := &a.candles[base+i]; c.nextOpen != 0 && c.nextOpen <= a.stepTo {
			a.roll(base+i, a.stepTo)
		}
	}
}

// rollTo starts slot idx, or rolls it, when t lies past its candle.
func (a *Aggregator) rollTo(idx int, t int64) {
	c := &a.candles[idx]
	if t < c.nextOpen {
		return
	}
	if c.nextOpen == 0 {
		a.startSlot(c, a.periods[idx%a.nP], t)
	} else {
		a.roll(idx, t)
	}
}

// propagate merges sym's accum into its lazy periods' candles and empties
// it. The result equals folding the accum's trades into them one by one
// (sums aside, which add in another order).
func (a *Aggregator) propagate(sym int32) {
	ac := &a.acc[sym]
	if ac.firstID < 0 {
		return
	}
	base := int(sym) * a.nP
	for _, i := range a.lazy {
		c := &a.candles[base+i]
		if c.nextOpen == 0 {
			// Added since the state was written: it starts with the
			// symbol's first trade since, which the accum holds.
			a.startSlot(c, a.periods[i], ac.openTradeTime)
		}
		if c.merge(&ac.trades, ac.closes) {
			a.full[sym] = true
		}
	}
	*ac = accum{trades: trades{firstID: -1}}
}

// lateForNewSymbol: a new symbol has no slots yet, so its trade is late when
// the candle it would open is already closed by the watermark.
func (a *Aggregator) lateForNewSymbol(t int64) bool {
	for _, p := range a.periods {
		if p.Next(p.Open(t)) <= a.watermark {
			return true
		}
	}
	return false
}

func (a *Aggregator) addSymbol(name []byte) int32 {
	sym := a.symbols.Add(name)
	a.lastAggID = append(a.lastAggID, -1)
	a.full = append(a.full, false)
	a.lastTradeTime = append(a.lastTradeTime, math.MinInt64)
	a.restoredOffset = append(a.restoredOffset, -1)
	a.symMark = append(a.symMark, false)
	if a.lazy != nil {
		a.acc = append(a.acc, accum{trades: trades{firstID: -1}})
	}
	for range a.nP {
		a.candles = append(a.candles, candle{openTime: math.MinInt64, trades: trades{firstID: -1, lastID: -1}})
		a.dirtyFlags = append(a.dirtyFlags, false)
	}
	return sym
}

// startSlot opens the slot's first candle at the one containing t.
func (a *Aggregator) startSlot(c *candle, p period.Period, t int64) {
	open := p.Open(t)
	*c = candle{openTime: open, nextOpen: p.Next(open), trades: trades{firstID: -1, lastID: -1}}
	pi := a.periodIndex(p)
	a.minNext[pi] = min(a.minNext[pi], c.nextOpen)
	a.minNextAll = min(a.minNextAll, c.nextOpen)
}

func (a *Aggregator) periodIndex(p period.Period) int {
	for i, q := range a.periods {
		if q == p {
			return i
		}
	}
	return -1
}

// roll finalizes the slot's candle and every following one that ends at or
// before until, queueing each for the next Drain; candles without trades
// become flat at the previous close.
func (a *Aggregator) roll(idx int, until int64) {
	c := &a.candles[idx]
	sym, pi := int32(idx/a.nP), idx%a.nP
	if a.lazy != nil {
		a.propagate(sym) // the accum's trades belong to the candles now ending
	}
	p := a.periods[pi]
	for c.nextOpen <= until {
		if a.flat || c.firstID >= 0 {
			a.finals = append(a.finals, a.kline(sym, pi, c, true))
		}
		prevClose, next := c.close, c.nextOpen
		if !a.flat {
			// No record for the quiet candles between: skip to the one
			// holding until.
			next = max(next, p.Open(until))
		}
		*c = candle{openTime: next, nextOpen: p.Next(next), trades: trades{
			open: prevClose, high: prevClose, low: prevClose, close: prevClose,
			firstID: -1, lastID: -1,
		}}
	}
	a.markDirty(idx)
}

// advance applies the target watermark. With flat candles it steps one
// candle boundary at a time (the earliest any slot waits for), so that each
// step closes at most one candle per slot; without them a slot's quiet
// candles make no records, and one step to the target closes at most one
// per slot too. With budget it stops once MaxPending finals are queued,
// between steps or inside one (see Consistent).
func (a *Aggregator) advance(budget bool) {
	for a.watermark < a.target {
		if budget && len(a.finals) >= a.maxPending {
			return
		}
		if !a.step(budget, a.target) {
			return
		}
	}
}

// step goes on with the step in progress, or starts the next one toward
// target, and reports whether it completed.
func (a *Aggregator) step(budget bool, target int64) bool {
	if a.stepTo <= a.watermark {
		w := target
		if a.flat && a.minNextAll < w {
			w = a.minNextAll
		}
		a.stepTo = w
	}
	if !a.applyWatermark(a.stepTo, budget) {
		return false
	}
	a.watermark = a.stepTo
	return true
}

// Consistent reports that no watermark step is half done: every started
// slot is past the applied watermark, so Drain may write state. Between
// steps the engine is consistent even while Backlogged.
func (a *Aggregator) Consistent() bool { return a.stepTo <= a.watermark }

// SettleStep finishes a watermark step in progress, as far as MaxPending
// allows, without starting another, and reports whether the engine is
// Consistent: the way to a Drain with state in the middle of a sweep.
func (a *Aggregator) SettleStep() bool {
	if a.Consistent() {
		return true
	}
	if len(a.finals) >= a.maxPending {
		return false
	}
	return a.step(true, a.target)
}

// applyWatermark rolls every slot whose candle ends at or before w, and
// reports whether it got through them all; with budget it stops once
// MaxPending finals are queued, and a later call resumes (the slots it
// rolled are past w and are passed over).
func (a *Aggregator) applyWatermark(w int64, budget bool) bool {
	if w < a.minNextAll {
		return true
	}
	all := int64(math.MaxInt64)
	for pi := range a.nP {
		if a.minNext[pi] > w {
			all = min(all, a.minNext[pi])
			continue
		}
		m := int64(math.MaxInt64)
		for idx := pi; idx < len(a.candles); idx += a.nP {
			c := &a.candles[idx]
			if c.nextOpen == 0 {
				continue
			}
			if c.nextOpen <= w {
				if budget && len(a.finals) >= a.maxPending {
					return false // minNext keeps its lower bounds
				}
				a.roll(idx, w)
			}
			m = min(m, c.nextOpen)
		}
		a.minNext[pi] = m
		all = min(all, m)
	}
	a.minNextAll = all
	return true
}

func (a *Aggregator) markDirty(idx int) {
	if a.dirtyFlags[idx] {
		return
	}
	a.dirtyFlags[idx] = true
	a.dirtyIndices = append(a.dirtyIndices, int32(idx))
	if a.log.Enabled(context.Background(), LevelTrace) {
		a.log.Log(context.Background(), LevelTrace, "slot dirty",
			"symbol", a.symbols.Name(int32(idx/a.nP)), "period", a.periodNames[idx%a.nP])
	}
}

// kline snapshots slot idx. For a final candle queued by roll, Version holds
// the candle's last emitted version until Drain assigns the new one.
func (a *Aggregator) kline(sym int32, pi int, c *candle, final bool) schema.Kline {
	var k schema.Kline
	a.fillKline(&k, sym, pi, c, final)
	return k
}

// fillKline is kline writing into k, so a batch's slot is filled where it
// lies rather than built and copied (a kline is 192 bytes).
func (a *Aggregator) fillKline(k *schema.Kline, sym int32, pi int, c *candle, final bool) {
	*k = schema.Kline{
		Symbol:              a.symbols.Name(sym),
		Period:              a.periodNames[pi],
		OpenTime:            c.openTime,
		CloseTime:           c.nextOpen - 1,
		Open:                c.open,
		High:                c.high,
		Low:                 c.low,
		Close:               c.close,
		Volume:              c.volume,
		QuoteVolume:         c.quoteVolume.Round(),
		TradeCount:          c.tradeCount,
		TakerBuyVolume:      c.takerVolume,
		TakerBuyQuoteVolume: c.takerQuoteVolume.Round(),
		FirstTradeID:        c.firstID,
		LastTradeID:         c.lastID,
		IsFinal:             final,
		Version:             c.version,
	}
}

// AdvanceClock lets the watermark follow the wall clock (nowMs, Unix ms)
// when the shard is live, caught up (the runtime knows: no lag) and has had
// no trade for the grace, so quiet markets close on time. Replayed history
// is never live, so it never fills flat candles up to today.
func (a *Aggregator) AdvanceClock(nowMs int64, caughtUp bool) {
	if !caughtUp || !a.live || nowMs-a.acceptedAt < a.graceMs {
		return
	}
	if w := nowMs - a.graceMs; w > a.target {
		a.target = w
		a.advance(true)
	}
}

// Batch is what Drain hands over: the klines to publish, the state records
// of every symbol that changed, and the last trades offset they reflect. The
// caller owns it and passes it back to Drain to reuse its memory.
type Batch struct {
	Klines   []schema.Kline
	States   []schema.SymbolState
	Position int64
}

// Drain moves every change since the last Drain into b: first the candles
// that became final (in the order they did), then a snapshot of every open
// candle that changed, then one state record per changed symbol. Its cost is
// proportional to the changed slots; with b reused it allocates nothing in
// steady state. nowMs (Unix ms) seeds the records' versions: a version is
// max(previous+1, nowMs*1000), strictly increasing per candle and, because
// it follows the wall clock, above anything emitted before a restart.
func (a *Aggregator) Drain(b *Batch, nowMs int64) { a.DrainSome(b, nowMs, math.MaxInt) }

// DrainSome is Drain in pieces of at most limit records (a state record
// counting as one per period, for its size), so that a drain of a shard
// whose every slot changed (a catch-up) needs no more memory than the
// limit. It reports whether this was the last piece; only that one carries
// the Position, and between pieces the caller must neither Fold nor Settle
// nor AdvanceClock: together they are one snapshot.
func (a *Aggregator) DrainSome(b *Batch, nowMs int64, limit int) (done bool) {
	if !a.Consistent() {
		// State needs whole steps: finish this one, unbounded (at most
		// one candle per slot). Callers that keep to MaxPending drain
		// finals only until SettleStep says Consistent.
		a.step(false, a.target)
	}
	b.Klines = b.Klines[:0]
	b.States = b.States[:0]
	b.Position = -1
	vnow := nowMs * 1000
	n := min(len(a.finals), limit)
	a.takeFinals(b, n, vnow)

	nP := int32(a.nP)
	taken := 0
	for _, idx := range a.dirtyIndices {
		if len(b.Klines) >= limit {
			break
		}
		taken++
		a.dirtyFlags[idx] = false
		sym := idx / nP
		if !a.symMark[sym] {
			a.symMark[sym] = true
			a.dirtySyms = append(a.dirtySyms, sym)
			if a.lazy != nil {
				a.propagate(sym) // before any of its candles is snapshotted
			}
		}
		c := &a.candles[idx]
		if c.firstID < 0 {
			continue // flat and open: only its final record is ever emitted
		}
		c.version = max(c.version+1, vnow)
		b.Klines = slices.Grow(b.Klines, 1)[:len(b.Klines)+1]
		a.fillKline(&b.Klines[len(b.Klines)-1], sym, int(idx-sym*nP), c, false)
	}
	// Keep the array: the seed's swap-out, without giving up the capacity.
	a.dirtyIndices = a.dirtyIndices[:copy(a.dirtyIndices, a.dirtyIndices[taken:])]
	if len(a.dirtyIndices) > 0 {
		return false
	}
	states := len(a.dirtySyms)
	if limit != math.MaxInt {
		states = min(states, max(0, (limit-len(b.Klines))/a.nP))
		if states == 0 && len(b.Klines) == 0 {
			states = min(1, len(a.dirtySyms)) // a limit below one record's weight
		}
	}
	a.appendStates(b, states)
	if len(a.dirtySyms) > 0 || len(a.finals) > 0 {
		return false
	}
	b.Position = a.position
	return true
}

// takeFinals moves the first n queued finals into b, versioned.
func (a *Aggregator) takeFinals(b *Batch, n int, vnow int64) {
	for i := range n {
		k := &a.finals[i]
		k.Version = max(k.Version+1, vnow)
		b.Klines = append(b.Klines, *k)
	}
	a.finals = a.finals[:copy(a.finals, a.finals[n:])]
}

// DrainFinals moves only the candles that became final since the last
// drain into b, versioned as Drain does; open candles that changed stay
// dirty for the next Drain, and b gets no state records and a Position of
// -1. It is the cheap flush of a shard that is catching up: finals go out
// as they close, while each open candle's intermediate updates, which newer
// ones would supersede within moments, are held back. The trades behind
// such a flush must not be committed: their open candles are not delivered
// and their state is not written.
func (a *Aggregator) DrainFinals(b *Batch, nowMs int64) {
	b.Klines = b.Klines[:0]
	b.States = b.States[:0]
	b.Position = -1
	a.takeFinals(b, len(a.finals), nowMs*1000)
}

// appendStates adds the state records of the first n symbols in dirtySyms
// to b, and takes them off the list.
func (a *Aggregator) appendStates(b *Batch, n int) {
	for _, sym := range a.dirtySyms[:n] {
		a.symMark[sym] = false
		if len(b.States) < cap(b.States) {
			b.States = b.States[:len(b.States)+1]
		} else {
			b.States = append(b.States, schema.SymbolState{})
		}
		a.fillState(&b.States[len(b.States)-1], sym)
	}
	a.dirtySyms = a.dirtySyms[:copy(a.dirtySyms, a.dirtySyms[n:])]
}

func (a *Aggregator) fillState(st *schema.SymbolState, sym int32) {
	candles := st.Candles[:0]
	base := int(sym) * a.nP
	for i := range a.nP {
		c := &a.candles[base+i]
		if c.nextOpen == 0 {
			continue
		}
		candles = slices.Grow(candles, 1)[:len(candles)+1] // filled in place: a CandleState is 160 bytes
		candles[len(candles)-1] = schema.CandleState{
			Period: a.periodNames[i], OpenTime: c.openTime,
			Open: c.open, High: c.high, Low: c.low, Close: c.close,
			Volume: c.volume, QuoteVolume: c.quoteVolume,
			TakerBuyVolume: c.takerVolume, TakerBuyQuoteVolume: c.takerQuoteVolume,
			TradeCount: c.tradeCount, FirstTradeID: c.firstID, LastTradeID: c.lastID,
			OpenTradeTime: c.openTradeTime, Version: c.version,
		}
	}
	*st = schema.SymbolState{
		Symbol:            a.symbols.Name(sym),
		LastAggID:         a.lastAggID[sym],
		LastTradeTime:     a.lastTradeTime[sym],
		SourceOffset:      a.position,
		Watermark:         a.watermark,
		ShardMaxTradeTime: a.maxTradeTime,
		AcceptedAt:        a.acceptedAt,
		AcceptedTradeTime: a.acceptedTradeTime,
		Candles:           candles,
	}
}

// ErrBadState is wrapped by Restore for a record the engine cannot use.
var ErrBadState = errors.New("bad state record")

// maxClockSkew bounds how far a state record's times may lie past the
// restoring member's wall clock: the clocks of two members differ, but a
// record from beyond this is corrupt, and trusting it would roll flat
// candles up to its far-future watermark.
const maxClockSkew = time.Hour

// Restore rebuilds the shard from the latest state record of each symbol
// (a compacted topic may still hold older ones: pass only the newest); nowMs
// is the wall clock, Unix ms. It must be called before any Fold. Candles of
// periods no longer configured are dropped; a configured period missing from
// a record starts at that symbol's next trade. It returns an error wrapping
// ErrBadState, and changes nothing, if any record is unusable.
func (a *Aggregator) Restore(states []schema.SymbolState, nowMs int64) error {
	if a.symbols.Len() > 0 || a.position >= 0 {
		return fmt.Errorf("engine: restore: %w: shard already in use", ErrBadState)
	}
	for i := range states {
		if err := a.checkState(&states[i], nowMs+maxClockSkew.Milliseconds()); err != nil {
			return err
		}
	}
	for i := range states {
		st := &states[i]
		sym, ok := a.symbols.Lookup([]byte(st.Symbol))
		if !ok {
			sym = a.addSymbol([]byte(st.Symbol))
		}
		a.lastAggID[sym] = st.LastAggID
		a.lastTradeTime[sym] = st.LastTradeTime
		a.restoredOffset[sym] = st.SourceOffset
		base := int(sym) * a.nP
		for j := range a.nP {
			a.candles[base+j] = candle{openTime: math.MinInt64, trades: trades{firstID: -1, lastID: -1}}
		}
		for _, cs := range st.Candles {
			pi := a.periodIndexByName(cs.Period)
			if pi < 0 {
				continue
			}
			p := a.periods[pi]
			c := &a.candles[base+pi]
			*c = candle{openTime: cs.OpenTime, nextOpen: p.Next(cs.OpenTime), version: cs.Version, trades: trades{
				open: cs.Open, high: cs.High, low: cs.Low, close: cs.Close,
				volume: cs.Volume, quoteVolume: cs.QuoteVolume,
				takerVolume: cs.TakerBuyVolume, takerQuoteVolume: cs.TakerBuyQuoteVolume,
				tradeCount: cs.TradeCount, firstID: cs.FirstTradeID, lastID: cs.LastTradeID,
				openTradeTime: cs.OpenTradeTime,
			}}
			a.minNext[pi] = min(a.minNext[pi], c.nextOpen)
			a.minNextAll = min(a.minNextAll, c.nextOpen)
		}
		// A record written while backlogged carries the watermark applied
		// so far (its candles agree with it); W itself follows from the
		// shard's greatest trade time.
		a.target = max(a.target, st.Watermark, st.ShardMaxTradeTime-a.graceMs)
		a.maxTradeTime = max(a.maxTradeTime, st.ShardMaxTradeTime)
		a.position = max(a.position, st.SourceOffset)
		if st.AcceptedAt > a.acceptedAt {
			a.acceptedAt, a.acceptedTradeTime = st.AcceptedAt, st.AcceptedTradeTime
			a.live = st.AcceptedAt-st.AcceptedTradeTime <= a.liveMs
		}
	}
	// Records of quiet symbols may predate the newest watermark: close what
	// it has closed, as the shard would have had it kept running, from the
	// earliest open candle on and within MaxPending (Backlogged says when
	// more is to come).
	a.watermark = a.target
	if a.minNextAll <= a.target {
		a.watermark = a.minNextAll - 1
	}
	a.advance(true)
	return nil
}

func (a *Aggregator) periodIndexByName(name string) int {
	for i, n := range a.periodNames {
		if n == name {
			return i
		}
	}
	return -1
}

// checkState verifies what schema.StateCodec cannot: period names and
// alignment, and that each candle's trades lie inside it.
func (a *Aggregator) checkState(st *schema.SymbolState, latest int64) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("engine: restore %q: %w: %s", st.Symbol, ErrBadState, fmt.Sprintf(format, args...))
	}
	if r := schema.ValidSymbol([]byte(st.Symbol)); r != schema.ReasonNone {
		return bad("symbol: %s", r)
	}
	if st.LastTradeTime < schema.MinTradeTime || st.ShardMaxTradeTime < st.LastTradeTime {
		return bad("trade times out of order")
	}
	if st.ShardMaxTradeTime > latest || st.Watermark > latest || st.AcceptedAt > latest {
		return bad("times past the wall clock")
	}
	if st.Watermark < schema.MinTradeTime-a.graceMs && st.Watermark != math.MinInt64 {
		return bad("watermark before 2010")
	}
	var seen [period.Count]bool
	for _, cs := range st.Candles {
		p, err := period.Parse(cs.Period)
		if err != nil {
			return bad("%v", err)
		}
		if seen[p] {
			return bad("period %s twice", p)
		}
		seen[p] = true
		if cs.OpenTime < p.Open(schema.MinTradeTime) || p.Open(cs.OpenTime) != cs.OpenTime {
			return bad("period %s: open time %d not a candle boundary", p, cs.OpenTime)
		}
		if cs.OpenTime > st.LastTradeTime && cs.OpenTime > st.Watermark {
			return bad("period %s: candle opens after the symbol's last trade and the watermark", p)
		}
		if p.Next(cs.OpenTime) <= st.Watermark {
			return bad("period %s: candle already closed by the record's own watermark", p)
		}
		if cs.TradeCount > 0 && (cs.OpenTradeTime < cs.OpenTime || cs.OpenTradeTime >= p.Next(cs.OpenTime)) {
			return bad("period %s: open trade outside the candle", p)
		}
	}
	return nil
}
