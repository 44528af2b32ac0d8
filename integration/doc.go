// Package integration holds klagg's tests against a real Apache Kafka
// broker: the built klagg binary runs as separate processes that are added,
// stopped, killed with SIGKILL and made to ride out a broker restart, and
// the candles they publish are compared with the oracle's (internal/oracle).
//
// The tests read the broker address from KLAGG_TEST_BROKERS and are skipped
// where it is unset; scripts/test.sh (the README's test command) fetches,
// starts and stops the broker and sets it.
package integration
