package processor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/klagg/klagg/hint"
	"github.com/klagg/klagg/partition"
)

// ErrTopicMissing names what a starting member waits for, in its log, while
// the trades topic does not exist: Run waits until it does or ctx ends.
var ErrTopicMissing = errors.New("trades topic does not exist")

// ensureTopics checks the trades topic and creates the others with its
// partition count; a count that differs is an error naming both.
func (c *core) ensureTopics(ctx context.Context, adm *kadm.Client) (int32, error) {
	cfg := c.cfg
	details, err := c.awaitTradesTopic(ctx, adm)
	if err != nil {
		return 0, err
	}
	trades := details[cfg.TradesTopic]
	n := int32(len(trades.Partitions))
	counts := map[string]int32{}
	for _, spec := range []struct {
		topic   string
		configs map[string]*string
	}{
		{cfg.KlinesTopic, nil},
		{cfg.StateTopic, map[string]*string{"cleanup.policy": kadm.StringPtr("compact")}},
		{cfg.DLQTopic, nil},
	} {
		if d, ok := details[spec.topic]; ok && d.Err == nil {
			counts[spec.topic] = int32(len(d.Partitions)) // 0 while another member creates it
			continue
		}
		resp, err := adm.CreateTopic(ctx, n, cfg.ReplicationFactor, spec.configs, spec.topic)
		if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			return 0, fmt.Errorf("processor: create topic %q: %w", spec.topic, err)
		}
		if err == nil {
			c.log.Info("created topic", "topic", spec.topic, "partitions", n, "compacted", spec.configs != nil)
			counts[spec.topic] = resp.NumPartitions
			if resp.NumPartitions <= 0 {
				counts[spec.topic] = n
			}
			continue
		}
		counts[spec.topic] = 0 // created concurrently by another member: described below
	}
	// A topic another member has just created may be listed before its
	// partitions are: wait for the metadata to settle before comparing.
	err = c.awaitPartitions(ctx, counts, func(topics []string) (map[string]int32, error) {
		d, err := adm.ListTopics(ctx, topics...)
		got := map[string]int32{}
		for _, topic := range topics {
			got[topic] = int32(len(d[topic].Partitions))
		}
		return got, err
	})
	if err != nil {
		return 0, err
	}
	if err := partition.CheckPartitionCounts(cfg.TradesTopic, n, counts); err != nil {
		return 0, fmt.Errorf("processor: %w", err)
	}
	go c.checkDurability(ctx, adm)
	return n, nil
}

// awaitTradesTopic lists the topics once the trades topic exists, waiting
// with back-off, and saying so, while the brokers cannot be reached or the
// topic is not there yet (a deployment may start klagg before the job that
// creates it), for as long as ctx lives.
func (c *core) awaitTradesTopic(ctx context.Context, adm *kadm.Client) (kadm.TopicDetails, error) {
	cfg := c.cfg
	var b backoff
	for {
		details, err := adm.ListTopics(ctx, cfg.TradesTopic, cfg.KlinesTopic, cfg.StateTopic, cfg.DLQTopic)
		trades, ok := details[cfg.TradesTopic]
		switch {
		case err != nil:
			err = fmt.Errorf("processor: list topics on %v: %w (are the brokers reachable?)", cfg.Brokers, err)
		case !ok || errors.Is(trades.Err, kerr.UnknownTopicOrPartition):
			err = &hint.Error{Err: fmt.Errorf("processor: %w: %q", ErrTopicMissing, cfg.TradesTopic),
				Setting: "TradesTopic", Fix: "create it, keyed by symbol, or point %s at yours"}
		case trades.Err != nil:
			return nil, fmt.Errorf("processor: describe %q: %w", cfg.TradesTopic, trades.Err)
		default:
			return details, nil
		}
		if b.waited >= 500*time.Millisecond { // past the first quick looks
			c.log.Warn("waiting", "for", err.Error(), "waited", b.waited.Round(100*time.Millisecond))
		}
		if !b.wait(ctx) {
			return nil, err
		}
	}
}

// awaitPartitions waits until every topic of counts shows its partitions
// (describe fills in the counts of the topics still at 0), backing off from
// 100 ms to 5 s between looks and saying what it waits for, for as long as
// ctx lives: a busy cluster may take a while to propagate a topic another
// member has just created, and a member that gave up would be lost.
func (c *core) awaitPartitions(ctx context.Context, counts map[string]int32,
	describe func([]string) (map[string]int32, error)) error {
	var b backoff
	for {
		var pending []string
		for topic, got := range counts {
			if got == 0 {
				pending = append(pending, topic)
			}
		}
		if len(pending) == 0 {
			return nil
		}
		slices.Sort(pending)
		if b.waited >= 5*time.Second {
			c.log.Info("waiting for the topics' partitions to show", "topics", pending, "waited", b.waited.Round(time.Second))
		}
		if !b.wait(ctx) {
			return fmt.Errorf("processor: topics %v still show no partitions after %s: %w", pending, b.waited.Round(time.Millisecond), ctx.Err())
		}
		got, err := describe(pending)
		if err != nil {
			// Transient while the broker restarts or the metadata settles.
			c.log.Warn("describe topics", "topics", pending, "err", err)
		}
		for _, topic := range pending {
			counts[topic] = got[topic]
		}
	}
}
