package processor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/sr"

	"github.com/klagg/klagg/hint"
	"github.com/klagg/klagg/schema"
)

func (c *core) setupEncoders(ctx context.Context) error {
	var err error
	if c.stateCodec, err = schema.NewStateCodec(); err != nil {
		return err
	}
	if c.cfg.InputMapping != nil && c.cfg.InputFormat == schema.InputJSON {
		if c.mapping, err = c.cfg.InputMapping.Compile(); err != nil {
			return fmt.Errorf("processor: %w", err)
		}
	}
	if c.cfg.SchemaRegistry == "" {
		c.klineEnc, err = schema.NewKlineEncoder(schema.FramingSingleObject, 0)
		return err
	}
	rcl, err := sr.NewClient(append([]sr.ClientOpt{sr.URLs(c.cfg.SchemaRegistry)}, c.srOpt...)...)
	if err != nil {
		return fmt.Errorf("processor: schema registry %s: %w", c.cfg.SchemaRegistry, err)
	}
	subject := c.cfg.KlinesTopic + "-value"
	ss, err := rcl.CreateSchema(ctx, subject, sr.Schema{Schema: schema.KlineSchemaText, Type: sr.TypeAvro})
	var re *sr.ResponseError
	if errors.As(err, &re) && re.ErrorCode == sr.ErrIncompatibleSchema.Code {
		return &hint.Error{Err: &IncompatibleSchemaError{Subject: subject, Registry: c.cfg.SchemaRegistry, Err: err},
			Setting: "KlinesTopic", Fix: "or publish to a new topic (%s) whose readers expect decimals"}
	}
	if err != nil {
		return fmt.Errorf("processor: register the kline schema under %q at %s: %w", subject, c.cfg.SchemaRegistry, err)
	}
	c.log.Info("kline schema registered", "subject", subject, "id", ss.ID)
	c.klineEnc, err = schema.NewKlineEncoder(schema.FramingConfluent, ss.ID)
	if err != nil || c.cfg.InputFormat != schema.InputAvro {
		return err
	}
	if c.cfg.InputMapping != nil {
		return c.setupAvroMapping(ctx, rcl)
	}
	return c.findTradeV1IDs(ctx, rcl)
}

// setupAvroMapping compiles the mapping against every writer schema under
// <trades>-value; the newest must fit, so that a wrong mapping stops
// start-up naming the field instead of refusing every record. Schemas
// registered later are fetched by id when a record names one.
func (c *core) setupAvroMapping(ctx context.Context, rcl *sr.Client) error {
	am, err := schema.NewAvroMapping(*c.cfg.InputMapping, func(id int) (string, error) {
		lctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := rcl.SchemaByID(lctx, id)
		return s.Schema, err
	})
	if err != nil {
		return fmt.Errorf("processor: %w", err)
	}
	subject := c.cfg.TradesTopic + "-value"
	all, err := rcl.Schemas(ctx, subject)
	var re *sr.ResponseError
	switch {
	case errors.As(err, &re) && re.StatusCode == 404:
		c.log.Warn("no trade schema registered yet: each is read from the registry when a record names it", "subject", subject)
	case err != nil:
		return fmt.Errorf("processor: read the trade schemas under %q at %s: %w", subject, c.cfg.SchemaRegistry, err)
	}
	slices.SortFunc(all, func(a, b sr.SubjectSchema) int { return a.Version - b.Version })
	for i, s := range all {
		err := am.AddSchema(s.ID, s.Schema.Schema)
		switch {
		case err != nil && i == len(all)-1:
			return &hint.Error{Err: fmt.Errorf("processor: the newest trade schema under %q (version %d): %w", subject, s.Version, err),
				Setting: "InputMapping", Fix: "so that each path names a field of that schema, of a type that can give its value"}
		case err != nil:
			c.log.Warn("an older trade schema does not fit the mapping: its records go to the dead-letter topic", "subject", subject,
				"version", s.Version, "err", err)
		}
	}
	c.avroMapping = am
	return nil
}

// findTradeV1IDs looks up which registry ids of the trades subject are
// trade schema 1 (doubles): a Confluent-framed record names only its id.
// A subject the registry does not have holds none.
func (c *core) findTradeV1IDs(ctx context.Context, rcl *sr.Client) error {
	subject := c.cfg.TradesTopic + "-value"
	all, err := rcl.Schemas(ctx, subject)
	var re *sr.ResponseError
	if errors.As(err, &re) && re.StatusCode == 404 {
		return nil
	}
	if err != nil {
		return fmt.Errorf("processor: read the trade schemas under %q at %s: %w", subject, c.cfg.SchemaRegistry, err)
	}
	c.tradeV1IDs = map[int]bool{}
	for _, s := range all {
		if schema.IsTradeSchemaV1(s.Schema.Schema) {
			c.tradeV1IDs[s.ID] = true
		}
	}
	if len(c.tradeV1IDs) > 0 {
		c.log.Info("trades with trade schema 1 (doubles) are read too", "subject", subject, "ids", len(c.tradeV1IDs))
	}
	return nil
}

// IncompatibleSchemaError is returned by Run when the registry refuses the
// kline schema under the subject's compatibility setting: the subject holds
// kline schema 1 (doubles, klagg before decimal candles), and Avro has no
// promotion from double to decimal, so BACKWARD or FORWARD refuses schema
// 2. Error says how to proceed; Run returns it inside a *hint.Error naming
// KlinesTopic (the other way on: a new topic).
type IncompatibleSchemaError struct {
	Subject, Registry string
	Err               error
}

func (e *IncompatibleSchemaError) Error() string {
	return fmt.Sprintf("processor: the registry at %s refuses kline schema 2 (decimal prices and volumes) under %q: "+
		"its compatibility setting does not allow a double to become a decimal (%v). Either let the subject take it once: "+
		"curl -X PUT -H 'Content-Type: application/json' -d '{\"compatibility\":\"NONE\"}' %s/config/%s, "+
		"start klagg, then set the level back",
		e.Registry, e.Subject, e.Err, e.Registry, e.Subject)
}

// Unwrap returns the registry's error.
func (e *IncompatibleSchemaError) Unwrap() error { return e.Err }
