package processor

import (
	"context"
	"slices"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
)

// durability is what an output topic's settings keep through the loss of
// one broker, as checkDurability finds them.
type durability struct {
	Topic       string
	Replication int // replicas of its first partition
	MinInsync   int // min.insync.replicas, the topic's or the brokers' default
	Brokers     int // brokers in the cluster
}

// Problem says what one broker loss would do to the topic, or "" when it
// keeps every acknowledged record and can still be written. With acks=all
// (klagg's producer), a record is acknowledged once min.insync.replicas
// replicas have it: below 2, the acknowledging broker may be its only
// copy; with replicas not above min.insync.replicas, one broker down
// stops every write (transactions included) until it is back.
func (d durability) Problem() string {
	switch {
	case d.Replication < 2:
		return "replication factor " + strconv.Itoa(d.Replication) + ": a broker loss loses its acknowledged records"
	case d.MinInsync < 2:
		return "min.insync.replicas " + strconv.Itoa(d.MinInsync) + ": a record is acknowledged with one copy, which a broker loss can take"
	case d.Replication <= d.MinInsync:
		return "replication factor " + strconv.Itoa(d.Replication) + " with min.insync.replicas " + strconv.Itoa(d.MinInsync) +
			": one broker down stops every write until it is back"
	}
	return ""
}

// checkDurability warns, once at start, about each output topic that one
// broker loss could cost an acknowledged record or stop (see Problem), and
// says when it has looked. A single-broker cluster (a test bed, a laptop)
// has nothing to replicate to, and is only mentioned at debug level. It
// runs beside the start-up, which it never holds up or stops: a check that
// cannot be made is logged and skipped.
func (c *core) checkDurability(ctx context.Context, adm *kadm.Client) {
	topics := []string{c.cfg.KlinesTopic, c.cfg.StateTopic, c.cfg.DLQTopic}
	// A broker other than the one that created them may not list topics
	// created a moment ago, and a busy cluster may take a while: look
	// again for up to durabilityPatience (nothing waits for this).
	giveUp := time.Now().Add(durabilityPatience)
	wait := 250 * time.Millisecond
	ds, err := durabilities(ctx, adm, topics)
	for (err != nil || len(ds) < len(topics)) && time.Now().Before(giveUp) {
		select {
		case <-ctx.Done():
			return // stopping: nothing to warn about
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
		ds, err = durabilities(ctx, adm, topics)
	}
	if ctx.Err() != nil {
		return
	}
	if err != nil || len(ds) < len(topics) {
		c.log.Warn("could not check the output topics' replication", "err", err, "described", len(ds))
		return
	}
	warned := 0
	for _, d := range ds {
		problem := d.Problem()
		switch {
		case problem == "":
		case d.Brokers < 2:
			c.log.Debug("single-broker cluster: output topic not replicated", "topic", d.Topic)
		default:
			warned++
			c.log.Warn("output topic cannot ride out a broker loss: set replication factor 3 and min.insync.replicas 2",
				"topic", d.Topic, "problem", problem, "brokers", d.Brokers)
		}
	}
	c.log.Info("output topics' replication checked", "topics", len(ds), "warnings", warned)
}

// durabilityPatience is how long checkDurability keeps trying before it
// says it could not check: long enough for a busy cluster (the cluster
// test once timed out waiting for the check while it tried for five
// seconds; that the check gave up there was likely, not shown).
const durabilityPatience = 30 * time.Second

// durabilities describes topics' replication, min.insync.replicas and the
// cluster's broker count.
func durabilities(ctx context.Context, adm *kadm.Client, topics []string) ([]durability, error) {
	meta, err := adm.Metadata(ctx, topics...)
	if err != nil {
		return nil, err
	}
	configs, err := adm.DescribeTopicConfigs(ctx, topics...)
	if err != nil {
		return nil, err
	}
	minISR := map[string]int{}
	for _, rc := range configs {
		for _, cv := range rc.Configs {
			if cv.Key == "min.insync.replicas" && cv.Value != nil {
				minISR[rc.Name], _ = strconv.Atoi(*cv.Value)
			}
		}
	}
	var out []durability
	for _, topic := range topics {
		td, ok := meta.Topics[topic]
		if !ok || td.Err != nil || len(td.Partitions) == 0 {
			continue
		}
		ps := td.Partitions.Numbers()
		slices.Sort(ps)
		out = append(out, durability{Topic: topic, Replication: len(td.Partitions[ps[0]].Replicas),
			MinInsync: minISR[topic], Brokers: len(meta.Brokers)})
	}
	return out, nil
}
