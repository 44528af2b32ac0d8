package partition

// Symbols assigns dense slot indices to the symbols of one shard. It is owned
// by the shard's goroutine and is not safe for concurrent use.
type Symbols struct {
	index map[string]int32
	names []string
}

// NewSymbols returns an empty table sized for about capacity symbols.
func NewSymbols(capacity int) *Symbols {
	return &Symbols{index: make(map[string]int32, capacity), names: make([]string, 0, capacity)}
}

// Lookup returns the slot of sym. It does not allocate: the map lookup with
// string(sym) is optimised by the compiler not to copy.
func (s *Symbols) Lookup(sym []byte) (int32, bool) {
	i, ok := s.index[string(sym)]
	return i, ok
}

// Add gives sym the next slot and returns it. The name is copied once, here;
// sym must not already be present.
func (s *Symbols) Add(sym []byte) int32 {
	name := string(sym)
	i := int32(len(s.names))
	s.index[name] = i
	s.names = append(s.names, name)
	return i
}

// Name returns the symbol of slot i.
func (s *Symbols) Name(i int32) string { return s.names[i] }

// Len is the number of symbols.
func (s *Symbols) Len() int { return len(s.names) }
