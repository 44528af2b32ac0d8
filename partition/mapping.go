package partition

import (
	"errors"
	"fmt"
	"slices"
)

// Target returns the partition of the klines, state and dead-letter topics
// that receives what is derived from trades partition p: p itself.
func Target(p int32) int32 { return p }

// ErrPartitionMismatch is wrapped by *MismatchError.
var ErrPartitionMismatch = errors.New("partition count mismatch")

// MismatchError says that an output topic's partition count differs from the
// trades topic's, so records could not follow their trades partition.
type MismatchError struct {
	Topic      string
	Partitions int32
	Trades     string
	Want       int32
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("partition: topic %q has %d partitions but trades topic %q has %d; "+
		"klagg writes what comes from trades partition p to partition p, so they must be equal "+
		"(recreate %q with %d partitions, or use another topic name)",
		e.Topic, e.Partitions, e.Trades, e.Want, e.Topic, e.Want)
}

func (e *MismatchError) Unwrap() error { return ErrPartitionMismatch }

// CheckPartitionCounts returns one *MismatchError for every topic in outputs
// whose count differs from the trades topic's, joined.
func CheckPartitionCounts(trades string, want int32, outputs map[string]int32) error {
	names := make([]string, 0, len(outputs))
	for n := range outputs {
		names = append(names, n)
	}
	// Sorted so that the message is stable.
	slices.Sort(names)
	var errs []error
	for _, n := range names {
		if got := outputs[n]; got != want {
			errs = append(errs, &MismatchError{Topic: n, Partitions: got, Trades: trades, Want: want})
		}
	}
	return errors.Join(errs...)
}
