package serve

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"

	"github.com/klagg/klagg/hint"
	"github.com/klagg/klagg/period"
	"github.com/klagg/klagg/schema"
)

// diskStore keeps every candle serve reads in a pebble database under
// Config.Data, the newest version of each winning, together with the
// klines-topic offsets it has applied: one batch carries both, so after a
// restart (or kill -9) serve resumes after the last record it applied,
// never applying one twice and never re-reading the topic.
//
// Keys, ordered so a (symbol, interval, time range) query is one scan:
//
//	'k' symbol 0x00 period open_time(8, big-endian)  -> version(8) kline body (kline schema 2)
//	's' symbol                                      -> "" (exchangeInfo's symbols)
//	'p' period                                      -> "" (the intervals held)
//	'o' partition(4)                                -> offset(8): the next record to read
//	"format"                                        -> storeFormat
//	"topic"                                         -> the klines topic's name and id
//
// Memory is pebble's block cache and memtables (Config.CacheMB), whatever
// the history's length. Writes go to pebble's write-ahead log without
// fsync: a killed process loses nothing (the operating system holds the
// log), a lost machine may lose the last batches, which serve then reads
// from the topic again, offsets and candles together.
type diskStore struct {
	db      *pebble.DB
	names   []string // sorted
	symbols map[string]struct{}
	held    uint32
	// tails holds each series' two newest candles held (open time and
	// version), read from the store the first time the series is seen:
	// nearly every record is an update of one of them or a new newest
	// candle, whose version check then needs no read. Its size is the
	// number of series, not the history.
	tails map[tailKey]*[2]tail
}

type tailKey struct {
	symbol string
	p      period.Period
}

type tail struct{ open, version int64 } // open 0: none

// storeFormat is the layout above. A store of another format is refused
// with ErrStoreFormat rather than misread.
const storeFormat = "klagg-serve-1"

// ErrStoreFormat is returned by Run for a --data directory written in a
// layout this build does not know (by a newer klagg, or not a store).
var ErrStoreFormat = errors.New("serve: the data directory holds a store of another format")

var formatKey, topicKey = []byte("format"), []byte("topic")

// ErrStoreTopic is returned by Run for a --data directory that holds the
// candles of another klines topic, or of one deleted and created again:
// its offsets would mean nothing there.
var ErrStoreTopic = errors.New("serve: the data directory holds the candles of another klines topic")

// bindTopic records which topic the store's offsets belong to (name and
// Kafka topic id), or checks that it is the one recorded.
func (s *diskStore) bindTopic(dir, topic string, id [16]byte) error {
	want := append(append([]byte(topic), 0), id[:]...)
	v, closer, err := s.db.Get(topicKey)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
		return s.db.Set(topicKey, want, pebble.Sync)
	case err != nil:
		return fmt.Errorf("serve: store: %w", err)
	}
	defer closer.Close()
	if string(v) != string(want) {
		name, _, _ := strings.Cut(string(v), "\x00")
		return &hint.Error{Err: fmt.Errorf("%w: %s was filled from topic %q (id %x), not %q (id %x)", ErrStoreTopic, dir, name, v[min(len(v), len(name)+1):], topic, id),
			Setting: "Data", Fix: "give each topic its own %s directory, or move this one away to rebuild it from the topic"}
	}
	return nil
}

func openDiskStore(dir string, cacheMB int, log *slog.Logger) (*diskStore, error) {
	cache := pebble.NewCache(int64(cacheMB) << 20)
	defer cache.Unref()
	opts := &pebble.Options{Cache: cache, MemTableSize: 16 << 20, Logger: pebbleLogger{log}}
	// Most candles a batch writes are new keys: a Bloom filter answers
	// their version lookup without reading a block.
	opts.Levels[0].FilterPolicy = bloom.FilterPolicy(10)
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("serve: open the store in %s: %w", dir, err)
	}
	s := &diskStore{db: db, symbols: map[string]struct{}{}, tails: map[tailKey]*[2]tail{}}
	if err := s.checkFormat(dir); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.load(); err != nil {
		db.Close()
		return nil, fmt.Errorf("serve: read the store in %s: %w", dir, err)
	}
	return s, nil
}

func (s *diskStore) checkFormat(dir string) error {
	v, closer, err := s.db.Get(formatKey)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
		return s.db.Set(formatKey, []byte(storeFormat), pebble.Sync)
	case err != nil:
		return fmt.Errorf("serve: read the store's format in %s: %w", dir, err)
	}
	defer closer.Close()
	if string(v) != storeFormat {
		return fmt.Errorf("%w: %s holds %q, this build writes %q; run the klagg that wrote it, or move the directory away "+
			"and start again: serve rebuilds the store from the klines topic", ErrStoreFormat, dir, v, storeFormat)
	}
	return nil
}

// load reads the symbols and intervals held.
func (s *diskStore) load() error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{'p'}, UpperBound: []byte{'q'}})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		if k := it.Key(); len(k) == 2 && k[1] < byte(period.Count) {
			s.held |= 1 << k[1]
		}
	}
	if err := it.Close(); err != nil {
		return err
	}
	it, err = s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{'s'}, UpperBound: []byte{'t'}})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		name := string(it.Key()[1:])
		s.symbols[name] = struct{}{}
		s.names = append(s.names, name)
	}
	return it.Close()
}

// offsets returns the next offset to read of each partition applied so far.
func (s *diskStore) offsets() (map[int32]int64, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{'o'}, UpperBound: []byte{'p'}})
	if err != nil {
		return nil, err
	}
	out := map[int32]int64{}
	for it.First(); it.Valid(); it.Next() {
		k, v := it.Key(), it.Value()
		if len(k) != 5 || len(v) != 8 {
			it.Close()
			return nil, fmt.Errorf("%w: an offset record of %d and %d bytes", ErrStoreFormat, len(k), len(v))
		}
		out[int32(binary.BigEndian.Uint32(k[1:]))] = int64(binary.BigEndian.Uint64(v))
	}
	return out, it.Close()
}

func candleKey(dst []byte, symbol string, p period.Period, open int64) []byte {
	dst = append(append(append(dst, 'k'), symbol...), 0, byte(p))
	return binary.BigEndian.AppendUint64(dst, uint64(open))
}

// apply writes the candles of batch that are newer than those held, and
// next (partition -> next offset), in one atomic write. changed[i] says
// whether batch[i] was written.
func (s *diskStore) apply(batch []schema.Kline, next map[int32]int64, changed []bool) error {
	b := s.db.NewIndexedBatch()
	defer b.Close()
	var key, val []byte
	for i := range batch {
		k := &batch[i]
		changed[i] = false
		p, err := period.Parse(k.Period)
		if err != nil || schema.ValidSymbol([]byte(k.Symbol)) != schema.ReasonNone {
			continue
		}
		key = candleKey(key[:0], k.Symbol, p, k.OpenTime)
		t, err := s.tail(k.Symbol, p)
		if err != nil {
			return err
		}
		switch {
		case k.OpenTime > t[0].open: // a new newest candle
		case k.OpenTime == t[0].open && t[0].version >= k.Version, k.OpenTime == t[1].open && t[1].version >= k.Version:
			continue
		case k.OpenTime == t[0].open, k.OpenTime == t[1].open:
		default: // an older candle: read what is held
			old, closer, err := b.Get(key)
			switch {
			case err == nil:
				newer := len(old) >= 8 && int64(binary.BigEndian.Uint64(old)) >= k.Version
				closer.Close()
				if newer {
					continue
				}
			case !errors.Is(err, pebble.ErrNotFound):
				return fmt.Errorf("serve: store: %w", err)
			}
		}
		switch {
		case k.OpenTime > t[0].open:
			t[1], t[0] = t[0], tail{k.OpenTime, k.Version}
		case k.OpenTime == t[0].open:
			t[0].version = k.Version
		case k.OpenTime > t[1].open:
			t[1] = tail{k.OpenTime, k.Version}
		case k.OpenTime == t[1].open:
			t[1].version = k.Version
		}
		val = schema.AppendKlineBody(binary.BigEndian.AppendUint64(val[:0], uint64(k.Version)), k)
		if err := b.Set(key, val, nil); err != nil {
			return fmt.Errorf("serve: store: %w", err)
		}
		changed[i] = true
		if _, ok := s.symbols[k.Symbol]; !ok {
			s.symbols[k.Symbol] = struct{}{}
			i, _ := slices.BinarySearch(s.names, k.Symbol)
			s.names = slices.Insert(s.names, i, k.Symbol)
			if err := b.Set(append([]byte{'s'}, k.Symbol...), nil, nil); err != nil {
				return fmt.Errorf("serve: store: %w", err)
			}
		}
		if s.held&(1<<p) == 0 {
			s.held |= 1 << p
			if err := b.Set([]byte{'p', byte(p)}, nil, nil); err != nil {
				return fmt.Errorf("serve: store: %w", err)
			}
		}
	}
	for part, off := range next {
		if err := b.Set(binary.BigEndian.AppendUint32([]byte{'o'}, uint32(part)),
			binary.BigEndian.AppendUint64(nil, uint64(off)), nil); err != nil {
			return fmt.Errorf("serve: store: %w", err)
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("serve: store: %w", err)
	}
	return nil
}

// tail returns the series' two newest candles, read from the store the
// first time it is asked for.
func (s *diskStore) tail(symbol string, p period.Period) (*[2]tail, error) {
	if t, ok := s.tails[tailKey{symbol, p}]; ok {
		return t, nil
	}
	t := &[2]tail{}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: candleKey(nil, symbol, p, 0),
		UpperBound: candleKey(nil, symbol, p, math.MaxInt64)})
	if err != nil {
		return nil, fmt.Errorf("serve: store: %w", err)
	}
	i := 0
	for it.Last(); it.Valid() && i < 2; it.Prev() {
		k, v := it.Key(), it.Value()
		if len(v) >= 8 && len(k) >= 8 {
			t[i] = tail{int64(binary.BigEndian.Uint64(k[len(k)-8:])), int64(binary.BigEndian.Uint64(v))}
			i++
		}
	}
	if err := it.Close(); err != nil {
		return nil, fmt.Errorf("serve: store: %w", err)
	}
	s.tails[tailKey{symbol, p}] = t
	return t, nil
}

// klines answers q from the store: one ordered scan, forward from start
// or backward from end.
func (s *diskStore) klines(q query) ([]schema.Kline, bool, error) {
	if _, ok := s.symbols[q.symbol]; !ok {
		return nil, false, nil
	}
	lo, hi := int64(0), int64(math.MaxInt64) // open times are positive
	if q.start >= 0 {
		lo = q.start
	}
	if q.end >= 0 && q.end < hi {
		hi = q.end
	}
	if hi < lo {
		return []schema.Kline{}, true, nil
	}
	lower := candleKey(nil, q.symbol, q.period, lo)
	upper := candleKey(nil, q.symbol, q.period, hi)
	upper = append(upper, 0) // inclusive of hi
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, true, fmt.Errorf("serve: store: %w", err)
	}
	out := make([]schema.Kline, 0, min(q.limit, 1000))
	read := func() error {
		var k schema.Kline
		v := it.Value()
		if len(v) < 8 {
			return fmt.Errorf("%w: a candle of %d bytes", ErrStoreFormat, len(v))
		}
		if err := schema.DecodeKlineBody(v[8:], &k); err != nil {
			return fmt.Errorf("serve: store: %w", err)
		}
		out = append(out, k)
		return nil
	}
	if q.start >= 0 {
		for it.First(); it.Valid() && len(out) < q.limit; it.Next() {
			if err := read(); err != nil {
				it.Close()
				return nil, true, err
			}
		}
	} else {
		for it.Last(); it.Valid() && len(out) < q.limit; it.Prev() {
			if err := read(); err != nil {
				it.Close()
				return nil, true, err
			}
		}
		slices.Reverse(out)
	}
	if err := it.Close(); err != nil {
		return nil, true, fmt.Errorf("serve: store: %w", err)
	}
	return out, true, nil
}

func (s *diskStore) symbolList() []string { return slices.Clone(s.names) }

func (s *diskStore) intervalList() []string {
	var out []string
	for _, p := range period.All() {
		if s.held&(1<<p) != 0 {
			out = append(out, p.String())
		}
	}
	return out
}

func (s *diskStore) close() error { return s.db.Close() }

// pebbleLogger puts pebble's lines in serve's log: its routine ones at
// debug level.
type pebbleLogger struct{ log *slog.Logger }

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Debug("store: " + fmt.Sprintf(format, args...))
}

func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error("store: " + fmt.Sprintf(format, args...))
}

// Fatalf is pebble's report of a broken invariant of its own (a corrupt
// database), after which it must not return; its default logger exits.
func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.log.Error("store: fatal: " + msg)
	panic("serve: store: " + msg)
}

// expire deletes the candles older than each period's retention (open
// time before now − retention): one range deletion per symbol and period,
// which pebble drops in compaction.
func (s *diskStore) expire(retention map[period.Period]time.Duration, nowMs int64) error {
	if len(retention) == 0 {
		return nil
	}
	b := s.db.NewBatch()
	defer b.Close()
	for _, sym := range s.names {
		for p, keep := range retention {
			if s.held&(1<<p) == 0 {
				continue
			}
			before := nowMs - keep.Milliseconds()
			if before <= 0 {
				continue
			}
			if err := b.DeleteRange(candleKey(nil, sym, p, 0), candleKey(nil, sym, p, before), nil); err != nil {
				return fmt.Errorf("serve: store: expire: %w", err)
			}
		}
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("serve: store: expire: %w", err)
	}
	return nil
}
