-- Moves every record the Kafka table reads into the ReplacingMergeTree.
CREATE MATERIALIZED VIEW IF NOT EXISTS klagg.klines_mv TO klagg.klines AS
SELECT
    symbol, period, open_time, close_time,
    open, high, low, close, volume, quote_volume, trade_count,
    taker_buy_volume, taker_buy_quote_volume,
    first_trade_id, last_trade_id, is_final, version
FROM klagg.klines_queue;
