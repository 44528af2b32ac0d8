package processor

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/processor/engine"
	"github.com/klagg/klagg/schema"
)

// Config configures the Kafka runtime (Run). Start from DefaultConfig; the
// defaults live there and nowhere else.
type Config struct {
	Brokers     []string
	Group       string
	TradesTopic string
	KlinesTopic string
	StateTopic  string
	DLQTopic    string

	Engine engine.Config

	InputFormat schema.InputFormat
	// InputMapping reads a platform's own records: JSON (InputJSON), or
	// Avro of any record schema (InputAvro, with SchemaRegistry): where
	// each field of a trade is.
	InputMapping *schema.JSONMapping
	// SymbolPrefix is put before every symbol read ("coinbase:"), so
	// that several venues can share one klines topic.
	SymbolPrefix string
	// MaxSkew bounds how far past the wall clock a trade time may lie.
	MaxSkew time.Duration
	// SchemaRegistry, when set, is the URL of a Confluent-compatible
	// registry: klines are then Confluent-framed under <klines>-value.
	SchemaRegistry string

	// FlushInterval is how often shards are drained, their records
	// delivered and the trades offsets committed.
	FlushInterval time.Duration
	// DeliveryTimeout is how long a record may take to be acknowledged
	// before its shard is restarted from its last commit.
	DeliveryTimeout time.Duration
	// MaxQueued bounds the trades records a member has read and handed to
	// its shards but not yet folded; past it, consumption pauses. A shard
	// stops folding while its engine holds Engine.MaxPending final candles
	// not yet taken by a flush, so a broker slow to acknowledge, or a
	// catch-up whose watermark closes hours of candles, pauses reading
	// instead of growing buffers.
	MaxQueued int
	// MaxTransactionRecords ends an exactly-once transaction once it holds
	// this many records (klines, state, dead letters), at the next point
	// where every shard has folded what it was given, whatever the flush
	// interval: a catch-up's transactions stay well inside the
	// transaction timeout, and read_committed readers see its candles
	// in steady steps.
	MaxTransactionRecords int
	// ReplicationFactor of the topics klagg creates; -1 is the broker's
	// default.
	ReplicationFactor int16
	// SessionTimeout: how long the group waits for a silent member (one
	// killed without leaving) before giving its partitions to others.
	SessionTimeout time.Duration
	// Compression of the produced batches: none, gzip, snappy, lz4 or zstd.
	Compression string

	// Guarantee is ExactlyOnce (each flush with something to commit one
	// Kafka transaction) or AtLeastOnce (offsets committed after every
	// record is acknowledged).
	Guarantee Guarantee
	// InstanceID, when set, makes the member static (KIP-345): restarted
	// with the same id it gets its partitions back without waiting for the
	// session timeout. Under exactly-once it also makes the transactional
	// id stable, so that a restart fences its predecessor at once.
	InstanceID string
	// TransactionTimeout bounds how long a transaction a member left open
	// (it died mid-flush) holds up read_committed readers of its
	// partitions: the next owner's restore, ClickHouse.
	TransactionTimeout time.Duration
	// BadState is what restore does with a state record it cannot read.
	BadState BadStatePolicy
}

// Guarantee is the delivery guarantee of a member.
type Guarantee string

// The guarantees (--guarantee).
const (
	ExactlyOnce Guarantee = "exactly-once"
	AtLeastOnce Guarantee = "at-least-once"
)

// BadStatePolicy says what restore does with an unreadable state record
// (--bad-state).
type BadStatePolicy string

// The policies.
const (
	// BadStateStop stops the member with a *BadStateError naming the
	// record; every member given that partition stops the same way until
	// an operator acts.
	BadStateStop BadStatePolicy = "stop"
	// BadStateRebuild restores the rest of the shard and recomputes that
	// symbol's state from its trades still held by the trades topic.
	BadStateRebuild BadStatePolicy = "rebuild"
)

// DefaultConfig returns the defaults the README's flag table lists.
func DefaultConfig() Config {
	return Config{
		Brokers:         []string{"127.0.0.1:9092"},
		Group:           "klagg",
		TradesTopic:     "trades",
		KlinesTopic:     "klines",
		StateTopic:      "klines-state",
		DLQTopic:        "trades-dlq",
		Engine:          engine.DefaultConfig(),
		InputFormat:     schema.InputBinanceJSON,
		MaxSkew:         schema.DefaultMaxSkew,
		FlushInterval:   250 * time.Millisecond,
		DeliveryTimeout: 2 * time.Minute,
		MaxQueued:       50_000,
		// About half a second of a catch-up's output on a small machine.
		MaxTransactionRecords: 250_000,
		ReplicationFactor:     -1,
		SessionTimeout:        45 * time.Second,
		Compression:           "snappy", // franz-go's default
		Guarantee:             ExactlyOnce,
		// Well below the session timeout, as franz-go advises; a
		// killed member's open transaction stalls its partitions' readers
		// this long.
		TransactionTimeout: 10 * time.Second,
		BadState:           BadStateStop,
	}
}

// Validate reports every problem of c at once.
func (c Config) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 || strings.TrimSpace(strings.Join(c.Brokers, "")) == "" {
		errs = append(errs, errors.New("processor: no brokers"))
	}
	named := []struct{ name, value string }{
		{"group", c.Group}, {"trades topic", c.TradesTopic}, {"klines topic", c.KlinesTopic},
		{"state topic", c.StateTopic}, {"dead-letter topic", c.DLQTopic},
	}
	topics := map[string]string{}
	for _, n := range named {
		switch {
		case n.value == "":
			errs = append(errs, fmt.Errorf("processor: empty %s", n.name))
		case n.name == "group":
		case topics[n.value] != "":
			errs = append(errs, fmt.Errorf("processor: the %s and %s are both %q", topics[n.value], n.name, n.value))
		default:
			topics[n.value] = n.name
		}
	}
	if err := c.Engine.Validate(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.validateInput()...)
	if c.MaxSkew <= 0 {
		errs = append(errs, fmt.Errorf("processor: max skew %s must be positive", c.MaxSkew))
	}
	if c.FlushInterval < time.Millisecond {
		errs = append(errs, fmt.Errorf("processor: flush interval %s is below 1ms", c.FlushInterval))
	}
	if c.DeliveryTimeout < time.Second {
		errs = append(errs, fmt.Errorf("processor: delivery timeout %s is below 1s", c.DeliveryTimeout))
	}
	if c.MaxQueued < 1 {
		errs = append(errs, fmt.Errorf("processor: max queued trades %d must be positive", c.MaxQueued))
	}
	if c.MaxTransactionRecords < 1 {
		errs = append(errs, fmt.Errorf("processor: max transaction records %d must be positive", c.MaxTransactionRecords))
	}
	if c.SessionTimeout < time.Second {
		errs = append(errs, fmt.Errorf("processor: session timeout %s is below 1s", c.SessionTimeout))
	}
	if _, err := compressionCodec(c.Compression); err != nil {
		errs = append(errs, err)
	}
	switch c.Guarantee {
	case ExactlyOnce, AtLeastOnce:
	default:
		errs = append(errs, fmt.Errorf("processor: guarantee %q: want %s or %s", c.Guarantee, ExactlyOnce, AtLeastOnce))
	}
	if c.Guarantee != AtLeastOnce && (c.TransactionTimeout < time.Second || c.TransactionTimeout > 15*time.Minute) {
		errs = append(errs, fmt.Errorf("processor: transaction timeout %s: want 1s to 15m (the broker's default maximum)", c.TransactionTimeout))
	} else if c.Guarantee != AtLeastOnce && c.FlushInterval > c.TransactionTimeout/2 {
		// A transaction stays open about a flush interval and must commit
		// well inside the timeout (commitDeadline).
		errs = append(errs, fmt.Errorf("processor: flush interval %s: exactly-once wants at most half the transaction timeout (%s)", c.FlushInterval, c.TransactionTimeout))
	}
	switch c.BadState {
	case BadStateStop, BadStateRebuild:
	default:
		errs = append(errs, fmt.Errorf("processor: %w %q: want %s or %s", ErrBadStatePolicy, c.BadState, BadStateStop, BadStateRebuild))
	}
	if strings.ContainsAny(c.InstanceID, " \t\n") {
		errs = append(errs, fmt.Errorf("processor: instance id %q contains white space", c.InstanceID))
	}
	if c.ReplicationFactor == 0 || c.ReplicationFactor < -1 {
		errs = append(errs, fmt.Errorf("processor: replication factor %d: want -1 (broker default) or at least 1", c.ReplicationFactor))
	}
	return errors.Join(errs...)
}

// validateInput reports what is wrong with how trades are read: the
// format, its mapping, the symbol prefix.
func (c Config) validateInput() []error {
	var errs []error
	switch {
	case c.InputFormat == schema.InputJSON && c.InputMapping == nil:
		errs = append(errs, errors.New("processor: input format json needs a mapping"))
	case c.InputMapping != nil && c.InputFormat != schema.InputJSON && c.InputFormat != schema.InputAvro:
		errs = append(errs, fmt.Errorf("processor: a mapping is for input format json or avro, not %s", c.InputFormat))
	case c.InputMapping != nil && c.InputFormat == schema.InputAvro:
		if c.SchemaRegistry == "" {
			errs = append(errs, errors.New("processor: avro with a mapping needs a schema registry, where the writer schemas are"))
		}
		if _, err := schema.NewAvroMapping(*c.InputMapping, nil); err != nil {
			errs = append(errs, fmt.Errorf("processor: %w", err))
		}
	case c.InputMapping != nil:
		if err := c.InputMapping.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("processor: %w", err))
		}
	}
	if c.SymbolPrefix != "" && (schema.ValidSymbol([]byte(c.SymbolPrefix)) != schema.ReasonNone || len(c.SymbolPrefix) > schema.MaxSymbolLen/2) {
		errs = append(errs, fmt.Errorf("processor: symbol prefix %q: want up to %d of [A-Za-z0-9._/:-]", c.SymbolPrefix, schema.MaxSymbolLen/2))
	}
	return errs
}

func compressionCodec(name string) (kgo.CompressionCodec, error) {
	switch name {
	case "none":
		return kgo.NoCompression(), nil
	case "gzip":
		return kgo.GzipCompression(), nil
	case "snappy":
		return kgo.SnappyCompression(), nil
	case "lz4":
		return kgo.Lz4Compression(), nil
	case "zstd":
		return kgo.ZstdCompression(), nil
	}
	return kgo.CompressionCodec{}, fmt.Errorf("processor: compression %q: want none, gzip, snappy, lz4 or zstd", name)
}
