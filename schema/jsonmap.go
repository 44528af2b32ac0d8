package schema

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// JSONMapping says where the fields of a trade are in a JSON trades
// message: the venue formats (Coinbase, Kraken, OKX, Bybit) are mappings,
// and a platform with its own JSON record writes one (README "Any trades
// topic"). Paths are dotted member names; a segment ending in "[]" stands
// for each element of an array. Field paths are relative to a trade,
// unless they start with "$." (from the message's root: an envelope field
// every trade of the message shares, such as a symbol given once).
type JSONMapping struct {
	// Trades is the path to the trades: "" when the message is one trade,
	// "data[]" for each element of the array data, "events[].trades[]"
	// for each trade of each event.
	Trades string `json:"trades"`
	// Symbol, Price and Quantity are required. Prices and quantities are
	// JSON numbers or strings holding one, read exactly.
	Symbol   string `json:"symbol"`
	Price    string `json:"price"`
	Quantity string `json:"quantity"`
	// Time is required; TimeUnit is s, ms, us or ns for an integer (a
	// number or a string of digits), or rfc3339 for text. Times finer
	// than a millisecond are rounded down to it.
	Time     string `json:"time"`
	TimeUnit string `json:"time_unit"`
	// Side holds the taker's side: a string or a boolean, compared as
	// its text with TakerBuy and TakerSell (a value in neither refuses
	// the trade, invalid_side). Without a Side every trade counts as a
	// taker sell, so the taker-buy volumes are 0.
	Side      string   `json:"side"`
	TakerBuy  []string `json:"taker_buy"`
	TakerSell []string `json:"taker_sell"`
	// ID is an integer (or a string of digits) that grows per symbol in
	// trade order: duplicates are refused by it. Without one, no trade is
	// a duplicate (every delivered copy counts). SharedIDs says several
	// trades of one message may carry the same ID (one match, several
	// makers): they are ordered by their place in the message.
	ID        string `json:"id"`
	SharedIDs bool   `json:"shared_ids"`
	// FirstID and LastID are the raw trade ids an aggregate covers, and
	// Count how many raw trades it is; all optional. Without them a
	// trade is one raw trade whose id is ID.
	FirstID string `json:"first_id"`
	LastID  string `json:"last_id"`
	Count   string `json:"count"`
	// Match lists root paths the message must carry with one of the
	// given values (a value ending in "*" is a prefix): a message of
	// another channel on the same topic is refused as wrong_event.
	Match map[string][]string `json:"match"`
}

// Time units of JSONMapping.TimeUnit.
const (
	unitS = iota + 1
	unitMs
	unitUs
	unitNs
	unitRFC3339
)

var timeUnits = map[string]int{"s": unitS, "ms": unitMs, "us": unitUs, "µs": unitUs, "ns": unitNs, "rfc3339": unitRFC3339}

// leaf kinds: which field of a trade a mapped value fills.
const (
	leafSymbol = iota + 1
	leafPrice
	leafQuantity
	leafTime
	leafSide
	leafID
	leafFirst
	leafLast
	leafCount
	numLeaves
)

// setIDLeaf stores n, read for an id leaf (id, first_id, last_id, count),
// where it goes: a trade's ids, or *count, the message's count of raw
// trades (nil where there is none to fill).
func setIDLeaf(leaf int, n int64, t *Trade, count *int64) {
	switch leaf {
	case leafID:
		t.AggID = n
	case leafFirst:
		t.FirstID = n
	case leafLast:
		t.LastID = n
	case leafCount:
		if count != nil {
			*count = n
		}
	}
}

var leafNames = [numLeaves]string{"", "symbol", "price", "quantity", "time", "side", "id", "first_id", "last_id", "count"}

// jnode is one position in the message a compiled mapping reads.
type jnode struct {
	members []jmember // the object's members this mapping reads
	elem    *jnode    // for an array: each element
	leaf    int       // a field of the trade (0: none)
	env     bool      // leaf of the message root, shared by its trades
	match   int       // 1 + index in compiledMapping.match (0: none)
	trade   bool      // this value is a trade object
	path    string    // for messages
}

type jmember struct {
	name string
	word uint64 // the name's first eight bytes, for a quick compare
	node *jnode
}

// word packs the first eight bytes of b.
func word(b []byte) uint64 {
	var w uint64
	for i := range min(len(b), 8) {
		w |= uint64(b[i]) << (8 * i)
	}
	return w
}

type matchRule struct {
	path   string
	values []string
}

// compiledMapping is a JSONMapping ready to decode with.
type compiledMapping struct {
	root      *jnode
	unit      int
	buy, sell []string
	shared    bool
	ids       idRules
	match     []matchRule
	paths     [numLeaves]string // for missing_field
	required  int               // the leaves a trade must have (a bit each)
}

// ErrMapping is wrapped by every error of JSONMapping.Validate.
var ErrMapping = errors.New("schema: trades mapping")

// Validate reports every problem of m at once.
func (m *JSONMapping) Validate() error {
	_, err := m.compile()
	return err
}

func (m *JSONMapping) compile() (*compiledMapping, error) {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrMapping}, args...)...))
	}
	c := &compiledMapping{root: &jnode{path: "$"}, buy: m.TakerBuy, sell: m.TakerSell, shared: m.SharedIDs}
	trade := c.root
	if m.Trades != "" && m.Trades != "$" {
		n, err := c.insert(c.root, strings.TrimPrefix(m.Trades, "$."))
		if err != nil {
			bad("trades %q: %v", m.Trades, err)
		} else {
			trade = n
		}
	}
	trade.trade = true
	var ok bool
	if c.unit, ok = timeUnits[m.TimeUnit]; !ok {
		bad("time_unit %q: want s, ms, us, ns or rfc3339", m.TimeUnit)
	}
	fields := [numLeaves]string{leafSymbol: m.Symbol, leafPrice: m.Price, leafQuantity: m.Quantity, leafTime: m.Time,
		leafSide: m.Side, leafID: m.ID, leafFirst: m.FirstID, leafLast: m.LastID, leafCount: m.Count}
	for leaf, path := range fields {
		if leaf == 0 {
			continue
		}
		if path == "" {
			if leaf <= leafTime {
				bad("%s: a path is required", leafNames[leaf])
			}
			continue
		}
		c.paths[leaf] = path
		base, rel := trade, path
		if strings.HasPrefix(path, "$.") {
			base, rel = c.root, path[2:]
		}
		n, err := c.insert(base, rel)
		switch {
		case err != nil:
			bad("%s %q: %v", leafNames[leaf], path, err)
		case n.leaf != 0 || n.match != 0 || n.trade || n.elem != nil || len(n.members) > 0:
			bad("%s %q: the path is already used", leafNames[leaf], path)
		default:
			n.leaf, n.env = leaf, base == c.root && trade != c.root
			if leaf <= leafTime || leaf == leafSide || leaf == leafID {
				c.required |= 1 << leaf
			}
		}
	}
	c.ids = idRules{hasSide: m.Side != "", hasID: m.ID != "", hasFirst: m.FirstID != "" || m.LastID != ""}
	if (m.FirstID == "") != (m.LastID == "") {
		bad("first_id and last_id: give both or neither")
	}
	if c.ids.hasFirst && m.Count != "" {
		bad("count: give count or first_id and last_id, not both")
	}
	if m.SharedIDs && !c.ids.hasID {
		bad("shared_ids: needs an id")
	}
	if c.ids.hasSide && len(m.TakerBuy)+len(m.TakerSell) == 0 {
		bad("side: give taker_buy or taker_sell values")
	}
	for _, v := range slices.Concat(m.TakerBuy, m.TakerSell) {
		if slices.Contains(m.TakerBuy, v) && slices.Contains(m.TakerSell, v) {
			bad("side value %q is both a taker buy and a taker sell", v)
		}
	}
	c.addMatches(m.Match, bad)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// addMatches adds the match rules, in path order (stable errors and rules).
func (c *compiledMapping) addMatches(match map[string][]string, bad func(string, ...any)) {
	for _, p := range slices.Sorted(maps.Keys(match)) {
		n, err := c.insert(c.root, strings.TrimPrefix(p, "$."))
		switch {
		case err != nil:
			bad("match %q: %v", p, err)
		case n.leaf != 0 || n.match != 0 || n.trade || n.elem != nil || len(n.members) > 0:
			bad("match %q: the path is already used", p)
		case len(match[p]) == 0:
			bad("match %q: no values", p)
		default:
			c.match = append(c.match, matchRule{path: p, values: match[p]})
			n.match = len(c.match)
		}
	}
}

// insert returns the node of path below n, creating what is missing. An
// array segment ("x[]") leads to its element's node.
func (c *compiledMapping) insert(n *jnode, path string) (*jnode, error) {
	if path == "" {
		return nil, errors.New("empty path")
	}
	for seg := range strings.SplitSeq(path, ".") {
		name, each := strings.CutSuffix(seg, "[]")
		if name == "" || strings.ContainsAny(name, "[]\"\\") {
			return nil, fmt.Errorf("bad segment %q", seg)
		}
		if n.leaf != 0 || n.match != 0 || n.elem != nil {
			return nil, fmt.Errorf("%s is not an object here", n.path)
		}
		var next *jnode
		for _, m := range n.members {
			if m.name == name {
				next = m.node
			}
		}
		if next == nil {
			next = &jnode{path: n.path + "." + name}
			n.members = append(n.members, jmember{name, word([]byte(name)), next})
		}
		n = next
		if each {
			if len(n.members) > 0 || n.leaf != 0 || n.match != 0 || n.trade {
				return nil, fmt.Errorf("%s is not an array here", n.path)
			}
			if n.elem == nil {
				n.elem = &jnode{path: n.path + "[]"}
			}
			n = n.elem
		}
	}
	return n, nil
}

// mapped bits: which fields a trade has.
const (
	hasSymbol = 1 << leafSymbol
	hasPrice  = 1 << leafPrice
	hasQty    = 1 << leafQuantity
	hasTime   = 1 << leafTime
	hasSide   = 1 << leafSide
	hasID     = 1 << leafID
	hasFirst  = 1 << leafFirst
	hasLast   = 1 << leafLast
	hasCount  = 1 << leafCount
)

// mappedScan decodes one message with a compiled mapping into a Batch.
type mappedScan struct {
	jsonScanner
	m       *compiledMapping
	out     *Batch
	cur     int // index of the trade being read, -1 for the envelope
	env     Trade
	envSeen int
	envErr  error
	seen    []int   // per trade
	counts  []int64 // per trade, when mapped
	ids     []int64 // per trade, the id as read
	shape   error   // the first value of the wrong JSON type where the mapping reads one
	matched int     // bit per match rule
}

func (s *mappedScan) decode(value []byte) error {
	s.jsonScanner = jsonScanner{b: value}
	s.cur, s.env, s.envSeen, s.envErr, s.matched, s.shape = -1, Trade{}, 0, nil, 0, nil
	s.seen, s.counts, s.ids = s.seen[:0], s.counts[:0], s.ids[:0]
	s.ws()
	if err := s.value(s.m.root, 0); err != nil {
		return err
	}
	s.ws()
	if s.i != len(s.b) {
		return invalid(ReasonMalformed, "", errTrailing)
	}
	// Another channel's message first: its shape may differ anyway.
	for i, r := range s.m.match {
		if s.matched&(1<<i) == 0 {
			return invalid(ReasonWrongEvent, r.path, nil)
		}
	}
	if s.shape != nil {
		return s.shape
	}
	s.finish()
	return nil
}

func (s *mappedScan) value(n *jnode, depth int) error {
	if depth > maxJSONDepth {
		return invalid(ReasonMalformed, "", errTooDeep)
	}
	switch {
	case n.leaf != 0:
		return s.leaf(n)
	case n.match != 0:
		return s.matchValue(n.match - 1)
	case n.elem != nil:
		return s.array(n, depth)
	}
	if n.trade {
		if s.cur >= 0 {
			return invalid(ReasonMalformed, "", errors.New("a trade inside a trade"))
		}
		s.out.Trades = append(s.out.Trades, Trade{})
		s.out.Errs = append(s.out.Errs, nil)
		s.seen = append(s.seen, 0)
		s.counts = append(s.counts, 0)
		s.ids = append(s.ids, 0)
		s.cur = len(s.out.Trades) - 1
		defer func() { s.cur = -1 }()
	}
	return s.object(n, depth)
}

// wrongType steps over a value of another JSON type than the mapping
// reads at n, and keeps the first such as the message's error.
func (s *mappedScan) wrongType(n *jnode, want string, depth int) error {
	if s.shape == nil {
		s.shape = invalid(ReasonMalformed, n.path, errors.New("not "+want))
	}
	return s.skip(depth + 1)
}

func (s *mappedScan) array(n *jnode, depth int) error {
	elem := n.elem
	if s.i >= len(s.b) || s.b[s.i] != '[' {
		return s.wrongType(n, "an array", depth)
	}
	s.i++
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == ']' {
		s.i++
		return nil
	}
	for {
		s.ws()
		if err := s.value(elem, depth+1); err != nil {
			return err
		}
		s.ws()
		if s.i >= len(s.b) {
			return s.syntax()
		}
		switch s.b[s.i] {
		case ',':
			s.i++
		case ']':
			s.i++
			return nil
		default:
			return s.syntax()
		}
	}
}

func (s *mappedScan) object(n *jnode, depth int) error {
	if s.i >= len(s.b) || s.b[s.i] != '{' {
		return s.wrongType(n, "an object", depth)
	}
	s.i++
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		return nil
	}
	for {
		s.ws()
		key, escaped, err := s.str()
		if err != nil {
			return err
		}
		s.ws()
		if s.i >= len(s.b) || s.b[s.i] != ':' {
			return s.syntax()
		}
		s.i++
		s.ws()
		var child *jnode
		if !escaped && len(n.members) > 0 {
			w := word(key)
			for _, m := range n.members {
				if m.word == w && len(m.name) == len(key) && (len(key) <= 8 || m.name == string(key)) {
					child = m.node
					break
				}
			}
		}
		if child != nil {
			err = s.value(child, depth+1)
		} else {
			err = s.skip(depth + 1)
		}
		if err != nil {
			return err
		}
		s.ws()
		if s.i >= len(s.b) {
			return s.syntax()
		}
		switch s.b[s.i] {
		case ',':
			s.i++
		case '}':
			s.i++
			return nil
		default:
			return s.syntax()
		}
	}
}

// token reads a string's contents or a literal or number's text.
func (s *mappedScan) token() ([]byte, bool, error) {
	if s.i < len(s.b) && s.b[s.i] == '"' {
		v, esc, err := s.str()
		return v, esc, err
	}
	start := s.i
	if err := s.skip(maxJSONDepth); err != nil {
		return nil, false, err
	}
	if c := s.b[start]; c == '{' || c == '[' {
		return nil, false, errors.New("an object or array")
	}
	return s.b[start:s.i], false, nil
}

func (s *mappedScan) matchValue(i int) error {
	v, esc, err := s.token()
	if err != nil {
		return invalidField(err, s.m.match[i].path)
	}
	if esc {
		return nil
	}
	for _, want := range s.m.match[i].values {
		if p, ok := strings.CutSuffix(want, "*"); ok && len(v) >= len(p) && string(v[:len(p)]) == p || string(v) == want {
			s.matched |= 1 << i
			return nil
		}
	}
	return nil
}

// leaf reads a mapped value into the trade being read (or the envelope).
// A value of the right JSON type but not usable refuses that trade only;
// bad syntax refuses the message.
func (s *mappedScan) leaf(n *jnode) error {
	t, seen, terr := &s.env, &s.envSeen, &s.envErr
	var count *int64
	if s.cur >= 0 && !n.env {
		t, seen, terr, count = &s.out.Trades[s.cur], &s.seen[s.cur], &s.out.Errs[s.cur], &s.counts[s.cur]
	}
	*seen |= 1 << n.leaf
	field := s.m.paths[n.leaf]
	var err error
	switch n.leaf {
	case leafSymbol:
		v, esc, e := s.token()
		switch {
		case e != nil:
			return invalidField(e, field)
		case esc || len(v) > 0 && s.b[s.i-1] != '"':
			err = invalid(ReasonInvalidSymbol, field, errors.New("not a plain string"))
		}
		t.Symbol = v
	case leafPrice, leafQuantity:
		start := s.i
		d, e := s.decimal()
		if e != nil {
			if errors.Is(e, errSyntax) {
				return invalidField(e, field)
			}
			if s.i == start { // not a number: step over it
				if e := s.skip(1); e != nil {
					return e
				}
			}
			if n.leaf == leafPrice {
				err = decimalReason(e, ReasonInvalidPrice, field)
			} else {
				err = decimalReason(e, ReasonInvalidQuantity, field)
			}
		}
		if n.leaf == leafPrice {
			t.Price = d
		} else {
			t.Quantity = d
		}
	case leafTime:
		v, esc, e := s.token()
		if e != nil {
			return invalidField(e, field)
		}
		if t.Time, e = parseTime(v, esc, s.m.unit); e != nil {
			err = invalid(ReasonMalformed, field, e)
		}
	default:
		v, esc, e := s.token()
		if e != nil {
			return invalidField(e, field)
		}
		err = s.textLeaf(n.leaf, field, v, esc, t, count)
	}
	if err != nil && *terr == nil {
		*terr = err
	}
	return nil
}

// textLeaf reads a side or an id from its token's text.
func (s *mappedScan) textLeaf(leaf int, field string, v []byte, esc bool, t *Trade, count *int64) error {
	if leaf == leafSide {
		switch {
		case !esc && slices.Contains(s.m.buy, string(v)):
			t.BuyerMaker = false
		case !esc && slices.Contains(s.m.sell, string(v)):
			t.BuyerMaker = true
		default:
			return invalid(ReasonInvalidSide, field, fmt.Errorf("%.20q is not a taker buy or sell", v))
		}
		return nil
	}
	id, ok := digits(v)
	setIDLeaf(leaf, id, t, count)
	if esc || !ok {
		return invalid(ReasonInvalidTradeIDs, field, errNumber)
	}
	return nil
}

// digits parses a non-negative decimal integer that fits an int64;
// leading zeros are allowed (Coinbase writes trade_id "000000000").
func digits(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 19 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, n >= 0
}

// finish fills each trade from the envelope, checks presence and sets the
// ids.
func (s *mappedScan) finish() {
	m := s.m
	var rank int64
	s.ids = s.ids[:len(s.out.Trades)]
	for i := range s.out.Trades {
		t, seen := &s.out.Trades[i], s.seen[i]
		if s.envSeen != 0 {
			seen = s.fromEnvelope(t, seen)
		}
		if s.out.Errs[i] == nil && s.envErr != nil && s.envSeen&^s.seen[i] != 0 {
			s.out.Errs[i] = s.envErr
		}
		if seen&m.required != m.required && s.out.Errs[i] == nil {
			for leaf := leafSymbol; leaf < numLeaves; leaf++ {
				if m.required&^seen&(1<<leaf) != 0 {
					s.out.Errs[i] = invalid(ReasonMissingField, m.paths[leaf], nil)
					break
				}
			}
		}
		id := t.AggID
		s.ids[i] = id
		m.ids.apply(t, s.counts[i])
		if m.shared {
			// Ordered by place among the trades just before it with the
			// same id and symbol: the trades of one match come together
			// (a message is in matching order), so the walk back is
			// short and a batch of 1,024 stays linear.
			rank = 0
			for j := i - 1; j >= 0 && s.ids[j] == id; j-- {
				if string(s.out.Trades[j].Symbol) == string(t.Symbol) {
					rank++
				}
			}
			if (id > (1<<63-1)>>sharedIDBits || rank >= 1<<sharedIDBits) && s.out.Errs[i] == nil {
				s.out.Errs[i] = invalid(ReasonInvalidTradeIDs, m.paths[leafID], errors.New("id too large to share"))
			}
			t.AggID = id<<sharedIDBits | rank
		}
	}
}

// idRules are what a mapping's optional fields mean for a trade, the
// same for JSON and Avro: no side, every trade a taker sell; no id, no
// trade a duplicate; no first and last ids, one raw trade (or count)
// ending at the id.
type idRules struct{ hasSide, hasID, hasFirst bool }

func (r idRules) apply(t *Trade, count int64) {
	if !r.hasSide {
		t.BuyerMaker = true
	}
	id := t.AggID
	if !r.hasID {
		t.Unordered, t.AggID = true, 0
	}
	if !r.hasFirst {
		t.FirstID, t.LastID = id, id
		if count > 1 {
			t.FirstID = id - count + 1
		}
	}
}

// sharedIDBits is the room left below a shared id for the rank of the
// trades that share it (Bybit sends at most 1,024 trades a message).
const sharedIDBits = 11

func (s *mappedScan) fromEnvelope(t *Trade, seen int) int {
	e, from := &s.env, s.envSeen&^seen
	if from&hasSymbol != 0 {
		t.Symbol = e.Symbol
	}
	if from&hasPrice != 0 {
		t.Price = e.Price
	}
	if from&hasQty != 0 {
		t.Quantity = e.Quantity
	}
	if from&hasTime != 0 {
		t.Time = e.Time
	}
	if from&hasSide != 0 {
		t.BuyerMaker = e.BuyerMaker
	}
	if from&hasID != 0 {
		t.AggID = e.AggID
	}
	if from&hasFirst != 0 {
		t.FirstID = e.FirstID
	}
	if from&hasLast != 0 {
		t.LastID = e.LastID
	}
	return seen | from
}
