package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/klagg/klagg/processor"
	"github.com/klagg/klagg/processor/engine"
	"github.com/klagg/klagg/schema"
)

// warnIfRefused warns when a consumer group already reads topic and the
// state klagg run would restore from stateTopic is past the first trade
// gen is about to send of a symbol: run would refuse those trades as
// duplicate (aggregate id not above the symbol's last) or late (before the
// open time of the symbol's current candle), as happens when a file or the
// synthetic market is sent again into a running pipeline. firsts is the
// first trade of each symbol. It never stops gen: a check that cannot be
// made says so.
func warnIfRefused(ctx context.Context, cl *kgo.Client, opts []kgo.Opt, topic, stateTopic string, firsts map[string]schema.Trade, stderr io.Writer) {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	groups, err := groupsReading(ctx, kadm.NewClient(cl), topic)
	if err != nil {
		fmt.Fprintf(stderr, "klagg gen: could not check for consumer groups of %q: %v\n", topic, err)
		return
	}
	if len(groups) == 0 {
		return
	}
	states, _, err := processor.LatestStates(ctx, cl, stateTopic, opts...)
	if err != nil {
		fmt.Fprintf(stderr, "klagg gen: could not check the state in %q: %v\n", stateTopic, err)
		return
	}
	var refused []string
	why := map[string]string{}
	judge := engine.NewJudge(states)
	for sym, first := range firsts {
		if _, reason := judge.Trade(&first); reason != "" {
			refused = append(refused, sym)
			why[sym] = reason
		}
	}
	if len(refused) == 0 {
		return
	}
	slices.Sort(refused)
	msg := fmt.Sprintf("klagg gen: warning: group %q already reads %q, and the state in %q is past "+
		"these trades for %d of %d symbols (%s: %s): klagg run with that state would refuse them "+
		"(klagg tail --dead-letters shows them). To replay, send to a fresh topic (--create-topic) "+
		"and run klagg with a fresh group and state topic.",
		groups[0], topic, stateTopic, len(refused), len(firsts), refused[0], why[refused[0]])
	fmt.Fprintln(stderr, wrap(msg, 100))
}

// wrap breaks s into lines of at most width columns between words.
func wrap(s string, width int) string {
	var b strings.Builder
	col := 0
	for _, w := range strings.Fields(s) {
		if col > 0 && col+1+len(w) > width {
			b.WriteByte('\n')
			col = 0
		} else if col > 0 {
			b.WriteByte(' ')
			col++
		}
		b.WriteString(w)
		col += len(w)
	}
	return b.String()
}

// groupsReading lists the consumer groups with offsets committed on topic.
func groupsReading(ctx context.Context, adm *kadm.Client, topic string) ([]string, error) {
	listed, err := adm.ListGroups(ctx)
	if err != nil {
		return nil, err
	}
	names := listed.Groups()
	if len(names) == 0 {
		return nil, nil
	}
	var out []string
	for group, r := range adm.FetchManyOffsets(ctx, names...) {
		if r.Err != nil {
			continue
		}
		if _, ok := r.Fetched[topic]; ok {
			out = append(out, group)
		}
	}
	slices.Sort(out)
	return out, nil
}

// firstCSVTrade is the first trade of a Binance aggTrades file.
func firstCSVTrade(file, symbol string) (schema.Trade, bool) {
	symbol, err := csvSymbol(file, symbol)
	if err != nil {
		return schema.Trade{}, false
	}
	f, err := os.Open(file)
	if err != nil {
		return schema.Trade{}, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for line := 0; line < 2 && sc.Scan(); line++ { // a header, then the first row
		if t, err := schema.ParseCSVTrade(sc.Text(), symbol); err == nil {
			return t, true
		}
	}
	return schema.Trade{}, false
}
