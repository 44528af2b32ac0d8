-- The candles, one row per (symbol, period, open_time): klagg publishes a
-- candle again each time it changes, with a higher version, and
-- ReplacingMergeTree(version) keeps the newest. Query with FINAL (or
-- argMax(..., version)) to see each candle once before merges catch up.
CREATE DATABASE IF NOT EXISTS klagg;

CREATE TABLE IF NOT EXISTS klagg.klines
(
    symbol                 LowCardinality(String),
    period                 LowCardinality(String),
    open_time              DateTime64(3, 'UTC'),
    close_time             DateTime64(3, 'UTC'),
    open                   Decimal(38, 8),
    high                   Decimal(38, 8),
    low                    Decimal(38, 8),
    close                  Decimal(38, 8),
    volume                 Decimal(38, 8),
    quote_volume           Decimal(38, 8),
    trade_count            UInt64,
    taker_buy_volume       Decimal(38, 8),
    taker_buy_quote_volume Decimal(38, 8),
    first_trade_id         Int64,
    last_trade_id          Int64,
    is_final               Bool,
    version                UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(open_time)
ORDER BY (symbol, period, open_time);
