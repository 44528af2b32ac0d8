// Package testkit holds what klagg's tests share: waiting for a condition,
// a free loopback address, a buffer that a process or goroutine writes
// while the test reads it, and an in-process kfake cluster closed with the
// test. Only tests import it.
package testkit
