-- Binance's flat candles back, at query time, for klines published with
-- --flat-candles none: every period of one series from its first to its
-- last final candle, a quiet one flat at the previous close with zero
-- volumes, as --flat-candles all would have published it. For periods of a
-- fixed length (step_seconds: 60 for 1m, 3600 for 1h, 604800 for 1w); a
-- month needs STEP toIntervalMonth(1). Run with
--   clickhouse-client --param_symbol=BTCUSDT --param_period=1m \
--     --param_step_seconds=60 --queries-file fill-gaps.sql
-- TestFillGaps runs this file against the engine's own output.
SELECT
    {symbol:String} AS symbol,
    {period:String} AS period,
    open_time,
    if(trade_count = 0, close, open) AS open,
    if(trade_count = 0, close, high) AS high,
    if(trade_count = 0, close, low) AS low,
    close,
    volume,
    quote_volume,
    trade_count,
    taker_buy_volume,
    taker_buy_quote_volume
FROM
(
    SELECT open_time, open, high, low, close, volume, quote_volume, trade_count,
           taker_buy_volume, taker_buy_quote_volume
    FROM klagg.klines FINAL
    WHERE symbol = {symbol:String} AND period = {period:String} AND is_final
    ORDER BY open_time WITH FILL STEP toIntervalSecond({step_seconds:UInt32})
    INTERPOLATE (close AS close)
)
ORDER BY open_time
