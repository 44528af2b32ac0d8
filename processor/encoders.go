package processor

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/sr"

	"github.com/klagg/klagg/schema"
)

func (r *runtime) setupEncoders(ctx context.Context) error {
	var err error
	if r.stateCodec, err = schema.NewStateCodec(); err != nil {
		return err
	}
	if r.cfg.SchemaRegistry == "" {
		r.klineEnc, err = schema.NewKlineEncoder(schema.FramingSingleObject, 0)
		return err
	}
	rcl, err := sr.NewClient(append([]sr.ClientOpt{sr.URLs(r.cfg.SchemaRegistry)}, r.srOpt...)...)
	if err != nil {
		return fmt.Errorf("processor: schema registry %s: %w", r.cfg.SchemaRegistry, err)
	}
	subject := r.cfg.KlinesTopic + "-value"
	ss, err := rcl.CreateSchema(ctx, subject, sr.Schema{Schema: schema.KlineSchemaText, Type: sr.TypeAvro})
	if err != nil {
		return fmt.Errorf("processor: register the kline schema under %q at %s: %w", subject, r.cfg.SchemaRegistry, err)
	}
	r.log.Info("kline schema registered", "subject", subject, "id", ss.ID)
	r.klineEnc, err = schema.NewKlineEncoder(schema.FramingConfluent, ss.ID)
	return err
}
