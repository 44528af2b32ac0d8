package schema

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hamba/avro/v2"

	"github.com/klagg/klagg/decimal"
)

// AvroMapping reads a platform's own Avro trade records, of any record
// schema, with a JSONMapping's paths (dotted field names of nested
// records; one trade per record, so no Trades path). Each record names
// its writer schema (a Confluent registry id, or a single-object
// fingerprint); the mapping is compiled once per writer schema, against
// its fields and types, and the record is read by that plan without
// allocating. A writer schema the mapping does not fit (a field missing,
// or of a type that cannot give the value) refuses its records as
// malformed, naming the field: start-up checks the newest schema first
// (AddSchema), so that a wrong mapping is one clear error there.
type AvroMapping struct {
	leafs map[string]int // path -> leaf
	paths [numLeaves]string
	unit  int
	rules idRules
	buy   []string
	sell  []string
	// lookup fetches a writer schema the mapping has not seen, by
	// registry id; nil: only the schemas added.
	lookup func(id int) (string, error)

	// required: the leaves a record must give.
	required int

	// The plans, copied on write (a new writer schema is rare): a record
	// finds its plan with one atomic load and no lock.
	mu    sync.Mutex // serialises writers
	plans atomic.Pointer[planSet]
}

type planSet struct {
	byID map[int]*avroPlan
	byFP map[[8]byte]*avroPlan
}

// avroPlan is a writer schema compiled against the mapping.
type avroPlan struct {
	root avroOp
	err  error // the schema does not fit the mapping
	set  int   // the leaves the schema can give
}

type avroKind uint8

const (
	aNull avroKind = iota
	aBool
	aLong // int or long
	aFloat
	aDouble
	aBytes // bytes or string
	aFixed
	aEnum
	aRecord
	aArray
	aMap
	aUnion
)

type avroOp struct {
	kind  avroKind
	leaf  int
	str   bool // a string, not bytes
	size  int  // fixed
	scale int  // decimal scale, -1 when not a decimal
	unit  int  // time unit of a timestamp logical type (0: the mapping's)
	syms  []string
	symb  [][]byte // syms as bytes, so that a symbol read allocates nothing
	sides []int8   // for a side enum: per symbol 1 taker buy, 2 taker sell, 0 neither
	sub   []avroOp // record fields; array items and map values [0]; union branches
	path  string
}

// MappingMismatchError is returned by AddSchema, and carried by the
// dead letters of records, when a writer schema does not fit a mapping.
type MappingMismatchError struct {
	SchemaID int    // the registry id, 0 for a single-object fingerprint
	Path     string // the mapped path
	Err      error
}

func (e *MappingMismatchError) Error() string {
	return fmt.Sprintf("schema: trades mapping does not fit writer schema %d at %q: %v", e.SchemaID, e.Path, e.Err)
}

func (e *MappingMismatchError) Unwrap() error { return e.Err }

// NewAvroMapping checks m for Avro records (every problem at once, each
// wrapping ErrMapping). lookup, when set, fetches an unknown writer
// schema by registry id; it is called from the decoding goroutines,
// once per id.
func NewAvroMapping(m JSONMapping, lookup func(id int) (string, error)) (*AvroMapping, error) {
	var errs []error
	if m.Trades != "" {
		errs = append(errs, fmt.Errorf("%w: trades %q: an Avro record is one trade", ErrMapping, m.Trades))
	}
	if m.SharedIDs || len(m.Match) > 0 {
		errs = append(errs, fmt.Errorf("%w: shared_ids and match are for JSON messages, not Avro records", ErrMapping))
	}
	m.Trades = ""
	c, err := m.compile()
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	a := &AvroMapping{leafs: map[string]int{}, unit: c.unit, rules: c.ids, buy: m.TakerBuy, sell: m.TakerSell, lookup: lookup}
	a.plans.Store(&planSet{byID: map[int]*avroPlan{}, byFP: map[[8]byte]*avroPlan{}})
	for leaf, p := range c.paths {
		if p != "" {
			a.paths[leaf] = strings.TrimPrefix(p, "$.")
			a.leafs[a.paths[leaf]] = leaf
			if leaf <= leafTime || leaf == leafSide || leaf == leafID {
				a.required |= 1 << leaf
			}
		}
	}
	return a, nil
}

// AddSchema compiles the mapping against a writer schema known by its
// registry id (0: by its fingerprint only) and returns the
// *MappingMismatchError of a schema it does not fit (kept: such records
// are refused).
func (a *AvroMapping) AddSchema(id int, text string) error {
	p := a.plan(id, text)
	a.mu.Lock()
	defer a.mu.Unlock()
	old := a.plans.Load()
	next := &planSet{byID: maps.Clone(old.byID), byFP: maps.Clone(old.byFP)}
	if id != 0 {
		next.byID[id] = p
	}
	if s, err := avro.Parse(text); err == nil {
		next.byFP[fingerprint(s)] = p
	}
	a.plans.Store(next)
	return p.err
}

func (a *AvroMapping) plan(id int, text string) *avroPlan {
	s, err := avro.Parse(text)
	if err != nil {
		return &avroPlan{err: &MappingMismatchError{SchemaID: id, Err: err}}
	}
	p := &avroPlan{}
	if _, ok := s.(*avro.RecordSchema); !ok {
		p.err = &MappingMismatchError{SchemaID: id, Err: fmt.Errorf("a %s, not a record", s.Type())}
		return p
	}
	p.root, err = a.compileType(s, "", &p.set)
	if err == nil {
		for path, leaf := range a.leafs {
			if p.set&(1<<leaf) == 0 {
				err = &MappingMismatchError{Path: path, Err: errors.New("no such field")}
				break
			}
		}
	}
	var me *MappingMismatchError
	if errors.As(err, &me) {
		me.SchemaID = id
	}
	p.err = err
	return p
}

// compileType compiles the schema of the value at path.
func (a *AvroMapping) compileType(s avro.Schema, path string, set *int) (avroOp, error) {
	if ref, ok := s.(*avro.RefSchema); ok {
		s = ref.Schema()
	}
	op := avroOp{scale: -1, path: path, leaf: a.leafs[path]}
	switch s := s.(type) {
	case *avro.RecordSchema:
		op.kind = aRecord
		for _, f := range s.Fields() {
			sub := f.Name()
			if path != "" {
				sub = path + "." + f.Name()
			}
			fop, err := a.compileType(f.Type(), sub, set)
			if err != nil {
				return op, err
			}
			if fop.kind == aRecord {
				op.sub = append(op.sub, fop.sub...) // a nested record's fields are read in line
			} else {
				op.sub = append(op.sub, fop)
			}
		}
	case *avro.UnionSchema:
		op.kind = aUnion
		for _, b := range s.Types() {
			bop, err := a.compileType(b, path, set)
			if err != nil {
				return op, err
			}
			op.sub = append(op.sub, bop)
		}
		op.leaf = 0 // the branches carry it
		return op, nil
	case *avro.ArraySchema:
		op.kind = aArray
		item, err := a.compileType(s.Items(), path+"[]", new(int))
		op.sub = []avroOp{item}
		if err != nil {
			return op, err
		}
	case *avro.MapSchema:
		op.kind = aMap
		val, err := a.compileType(s.Values(), path+"{}", new(int))
		op.sub = []avroOp{val}
		if err != nil {
			return op, err
		}
	case *avro.NullSchema:
		op.kind, op.leaf = aNull, 0 // a null branch: the field is absent
	case *avro.EnumSchema:
		op.kind, op.syms = aEnum, s.Symbols()
		for _, sym := range op.syms {
			op.symb = append(op.symb, []byte(sym))
		}
	case *avro.FixedSchema:
		op.kind, op.size = aFixed, s.Size()
		if d, ok := s.Logical().(*avro.DecimalLogicalSchema); ok {
			op.scale = d.Scale()
		}
	case *avro.PrimitiveSchema:
		primitive(&op, s)
	default:
		return op, &MappingMismatchError{Path: path, Err: fmt.Errorf("type %s is not read", s.Type())}
	}
	if op.leaf != 0 {
		if err := leafFits(&op); err != nil {
			return op, &MappingMismatchError{Path: path, Err: err}
		}
		*set |= 1 << op.leaf
	}
	if op.leaf == leafSide && op.kind == aEnum {
		op.sides = a.sideTable(op.syms)
	}
	return op, nil
}

// sideTable says, per enum symbol, 1 taker buy, 2 taker sell, 0 neither.
func (a *AvroMapping) sideTable(syms []string) []int8 {
	sides := make([]int8, len(syms))
	for i, sym := range syms {
		switch {
		case slices.Contains(a.buy, sym):
			sides[i] = 1
		case slices.Contains(a.sell, sym):
			sides[i] = 2
		}
	}
	return sides
}

// primitive fills op from a primitive type and its logical type.
func primitive(op *avroOp, s *avro.PrimitiveSchema) {
	switch s.Type() {
	case avro.Null:
		op.kind = aNull
		op.leaf = 0 // a null branch: the field is absent
	case avro.Boolean:
		op.kind = aBool
	case avro.Int, avro.Long:
		op.kind = aLong
	case avro.Float:
		op.kind = aFloat
	case avro.Double:
		op.kind = aDouble
	case avro.String, avro.Bytes:
		op.kind, op.str = aBytes, s.Type() == avro.String
	}
	if l := s.Logical(); l != nil {
		switch l.Type() {
		case avro.Decimal:
			op.scale = l.(*avro.DecimalLogicalSchema).Scale()
		case avro.TimestampMillis, avro.LocalTimestampMillis:
			op.unit = unitMs
		case avro.TimestampMicros, avro.LocalTimestampMicros:
			op.unit = unitUs
		}
	}
}

// leafFits says whether a value of op's type can give its field.
func leafFits(op *avroOp) error {
	ok := false
	switch op.leaf {
	case leafSymbol:
		ok = op.kind == aBytes && op.str || op.kind == aEnum
	case leafPrice, leafQuantity:
		ok = op.kind == aBytes && (op.str || op.scale >= 0) || op.kind == aFixed && op.scale >= 0 ||
			op.kind == aLong || op.kind == aDouble || op.kind == aFloat
	case leafTime:
		ok = op.kind == aLong || op.kind == aBytes && op.str
	case leafSide:
		ok = op.kind == aBool || op.kind == aBytes && op.str || op.kind == aEnum
	default:
		ok = op.kind == aLong || op.kind == aBytes && op.str
	}
	if !ok {
		return fmt.Errorf("a %s cannot give the %s", op.describe(), leafNames[op.leaf])
	}
	return nil
}

func (op *avroOp) describe() string {
	switch {
	case op.kind == aBytes && op.str:
		return "string"
	case op.scale >= 0:
		return "decimal"
	}
	return [...]string{"null", "boolean", "long", "float", "double", "bytes", "fixed", "enum", "record", "array", "map", "union"}[op.kind]
}

// avroCache remembers, for one decoding goroutine (in its Batch), the
// plan of the last registry id it met, so that a record of the same
// writer schema skips the map.
type avroCache struct {
	set  *planSet
	id   int
	plan *avroPlan
}

// planFor returns the plan of a record's writer schema.
func (a *AvroMapping) planFor(value []byte, c *avroCache) (*avroPlan, []byte, error) {
	switch {
	case len(value) >= 5 && value[0] == 0x00:
		id := int(uint32(value[1])<<24 | uint32(value[2])<<16 | uint32(value[3])<<8 | uint32(value[4]))
		set := a.plans.Load()
		if c.set == set && c.id == id { // the usual case: the writer schema of the record before
			return c.plan, value[5:], nil
		}
		p := set.byID[id]
		if p != nil {
			*c = avroCache{set: set, id: id, plan: p}
		}
		if p == nil {
			if a.lookup == nil {
				return nil, nil, fmt.Errorf("writer schema id %d is unknown", id)
			}
			text, err := a.lookup(id)
			if err != nil {
				return nil, nil, fmt.Errorf("writer schema id %d: %w", id, err) // not kept: the registry may answer later
			}
			a.AddSchema(id, text)
			p = a.plans.Load().byID[id]
		}
		return p, value[5:], nil
	case len(value) >= 10 && value[0] == 0xC3 && value[1] == 0x01:
		var fp [8]byte
		copy(fp[:], value[2:10])
		p := a.plans.Load().byFP[fp]
		if p == nil {
			return nil, nil, fmt.Errorf("writer schema of fingerprint %x is unknown", fp)
		}
		return p, value[10:], nil
	}
	return nil, nil, ErrUnknownFraming
}

// decode reads one framed record into t, which is zero.
func (a *AvroMapping) decode(value []byte, t *Trade, c *avroCache) error {
	p, body, err := a.planFor(value, c)
	if err != nil {
		return invalid(ReasonMalformed, "", err)
	}
	if p.err != nil {
		return invalid(ReasonMalformed, "", p.err)
	}
	d := avroMapRead{r: avroReader{b: body}, a: a, t: t}
	for i := range p.root.sub {
		d.read(&p.root.sub[i], 0)
	}
	if err := d.r.end(); err != nil {
		*t = Trade{}
		return invalid(ReasonMalformed, "", err)
	}
	if d.seen&a.required != a.required {
		for leaf := leafSymbol; leaf < numLeaves; leaf++ {
			if a.required&^d.seen&(1<<leaf) != 0 {
				return invalid(ReasonMissingField, a.paths[leaf], nil)
			}
		}
	}
	if d.err != nil {
		return d.err
	}
	a.rules.apply(t, d.count)
	return nil
}

type avroMapRead struct {
	r     avroReader
	a     *AvroMapping
	t     *Trade
	seen  int
	count int64
	err   error // the first refusal of a value
}

func (d *avroMapRead) read(op *avroOp, depth int) {
	if op.kind < aRecord { // a value: the common case first
		if op.leaf == 0 {
			d.skip(op)
			return
		}
		d.seen |= 1 << op.leaf
		if err := d.leaf(op); err != nil && d.err == nil {
			d.err = err
		}
		return
	}
	if d.r.err != nil {
		return
	}
	if depth > maxJSONDepth {
		d.r.err = errors.New("avro: nested too deeply")
		return
	}
	switch op.kind {
	case aRecord:
		for i := range op.sub {
			d.read(&op.sub[i], depth+1)
		}
		return
	case aUnion:
		i := d.r.long()
		if d.r.err == nil && (i < 0 || i >= int64(len(op.sub))) {
			d.r.err = errors.New("avro: union branch out of range")
		}
		if d.r.err == nil {
			d.read(&op.sub[i], depth+1)
		}
		return
	case aArray, aMap:
		for {
			n := d.r.long()
			if d.r.err != nil || n == 0 {
				return
			}
			if n < 0 {
				n = -n
				d.r.long() // the block's size in bytes
			}
			if n > int64(len(d.r.b)) {
				d.r.err = errAvroLength
				return
			}
			for range n {
				if op.kind == aMap {
					d.r.bytes()
				}
				d.read(&op.sub[0], depth+1)
				if d.r.err != nil {
					return
				}
			}
		}
	}
	if op.leaf == 0 {
		d.skip(op)
		return
	}
	d.seen |= 1 << op.leaf
	if err := d.leaf(op); err != nil && d.err == nil {
		d.err = err
	}
}

func (d *avroMapRead) skip(op *avroOp) {
	switch op.kind {
	case aBool:
		d.r.boolean()
	case aLong, aEnum:
		d.r.long()
	case aFloat:
		d.r.take(4)
	case aDouble:
		d.r.double()
	case aBytes:
		d.r.bytes()
	case aFixed:
		d.r.take(op.size)
	}
}

// leaf reads a mapped value into the trade; a value that cannot be used
// is the trade's refusal.
func (d *avroMapRead) leaf(op *avroOp) error {
	t, field := d.t, op.path
	switch op.leaf {
	case leafSymbol:
		if op.kind == aEnum {
			if i := d.enum(op); i >= 0 {
				t.Symbol = op.symb[i]
			}
			return nil
		}
		t.Symbol = d.r.bytes()
	case leafPrice, leafQuantity:
		v, err := d.decimal(op)
		if op.leaf == leafPrice {
			t.Price = v
		} else {
			t.Quantity = v
		}
		if err != nil && d.r.err == nil {
			bad := ReasonInvalidQuantity
			if op.leaf == leafPrice {
				bad = ReasonInvalidPrice
			}
			return decimalReason(err, bad, field)
		}
	case leafTime:
		var err error
		switch {
		case op.kind == aLong:
			n := d.r.long()
			unit := op.unit
			if unit == 0 {
				unit = d.a.unit
			}
			t.Time, err = scaleTime(n, unit)
		default:
			t.Time, err = parseTime(d.r.bytes(), false, d.a.unit)
		}
		if err != nil && d.r.err == nil {
			return invalid(ReasonMalformed, field, err)
		}
	case leafSide:
		return d.side(op, t)
	default:
		var n int64
		if op.kind == aLong {
			n = d.r.long()
		} else {
			var ok bool
			if n, ok = digits(d.r.bytes()); !ok && d.r.err == nil {
				return invalid(ReasonInvalidTradeIDs, field, errNumber)
			}
		}
		setIDLeaf(op.leaf, n, t, &d.count)
	}
	return nil
}

// side reads the taker's side from a boolean (compared as "true" or
// "false"), an enum (its symbol's side found at compile time) or a string.
func (d *avroMapRead) side(op *avroOp, t *Trade) error {
	var b []byte
	switch op.kind {
	case aEnum:
		i := d.enum(op)
		switch {
		case i < 0:
			return nil // bad input: the reader's error says so
		case op.sides[i] == 2:
			t.BuyerMaker = true
		case op.sides[i] == 0:
			b = op.symb[i]
		}
	case aBool:
		b = boolText[0]
		if d.r.boolean() {
			b = boolText[1]
		}
	default:
		b = d.r.bytes()
	}
	switch {
	case b == nil:
	case sliceHas(d.a.buy, b):
	case sliceHas(d.a.sell, b):
		t.BuyerMaker = true
	case d.r.err == nil:
		return invalid(ReasonInvalidSide, op.path, fmt.Errorf("%.20q is not a taker buy or sell", b))
	}
	return nil
}

var boolText = [2][]byte{[]byte("false"), []byte("true")}

func sliceHas(vs []string, b []byte) bool {
	for _, v := range vs {
		if v == string(b) {
			return true
		}
	}
	return false
}

// enum reads an enum's index, or -1.
func (d *avroMapRead) enum(op *avroOp) int {
	i := d.r.long()
	if d.r.err == nil && (i < 0 || i >= int64(len(op.syms))) {
		d.r.err = errors.New("avro: enum index out of range")
	}
	if d.r.err != nil {
		return -1
	}
	return int(i)
}

// decimal reads a price or quantity of any type that can give one.
func (d *avroMapRead) decimal(op *avroOp) (decimal.Fixed, error) {
	switch {
	case op.kind == aBytes && op.scale < 0:
		return decimal.ParseFixed(d.r.bytes())
	case op.kind == aBytes:
		return scaledDecimal(d.r.bytes(), op.scale)
	case op.kind == aFixed:
		return scaledDecimal(d.r.take(op.size), op.scale)
	case op.kind == aLong:
		n := d.r.long()
		if n > math.MaxInt64/100_000_000 || n < math.MinInt64/100_000_000 {
			return 0, decimal.ErrRange
		}
		return decimal.Fixed(n * 100_000_000), nil
	case op.kind == aDouble:
		return legacyFixed(d.r.double())
	}
	b := d.r.take(4)
	if b == nil {
		return 0, errAvroShort
	}
	return legacyFixed(float64(math.Float32frombits(uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24)))
}

// scaledDecimal reads Avro decimal bytes (big-endian two's complement)
// of scale digits as a Fixed.
func scaledDecimal(b []byte, scale int) (decimal.Fixed, error) {
	for len(b) > 8 && (b[0] == 0 && b[1] < 0x80 || b[0] == 0xFF && b[1] >= 0x80) {
		b = b[1:] // sign extension
	}
	if len(b) == 0 {
		return 0, nil
	}
	v, err := decimal.FixedFromAvro(b)
	if err != nil {
		return 0, decimal.ErrRange
	}
	n := int64(v)
	for ; scale < decimal.Scale; scale++ {
		if n > math.MaxInt64/10 || n < math.MinInt64/10 {
			return 0, decimal.ErrRange
		}
		n *= 10
	}
	for ; scale > decimal.Scale; scale-- {
		if n%10 != 0 {
			return 0, decimal.ErrPrecision
		}
		n /= 10
	}
	return decimal.Fixed(n), nil
}

// scaleTime turns an integer time of unit into Unix milliseconds,
// rounded down.
func scaleTime(n int64, unit int) (int64, error) {
	switch unit {
	case unitS:
		if n > math.MaxInt64/1000 || n < math.MinInt64/1000 {
			return 0, errors.New("time out of range")
		}
		return n * 1000, nil
	case unitUs:
		return floorDiv(n, 1000), nil
	case unitNs:
		return floorDiv(n, 1_000_000), nil
	case unitRFC3339:
		return 0, errors.New("an integer time with time_unit rfc3339")
	}
	return n, nil
}

func floorDiv(n, d int64) int64 {
	q := n / d
	if n%d < 0 {
		q--
	}
	return q
}
