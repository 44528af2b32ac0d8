-- The klines topic, read as klagg writes it: Confluent-framed Avro, the
-- schema fetched from the registry by id. The columns are kline.avsc's
-- fields, by name. Broker, topic and registry are compose.yaml's services.
CREATE TABLE IF NOT EXISTS klagg.klines_queue
(
    symbol                 String,
    period                 String,
    open_time              DateTime64(3, 'UTC'),
    close_time             DateTime64(3, 'UTC'),
    open                   Float64,
    high                   Float64,
    low                    Float64,
    close                  Float64,
    volume                 Float64,
    quote_volume           Float64,
    trade_count            UInt64,
    taker_buy_volume       Float64,
    taker_buy_quote_volume Float64,
    first_trade_id         Int64,
    last_trade_id          Int64,
    is_final               Bool,
    version                UInt64
)
ENGINE = Kafka
SETTINGS
    kafka_broker_list = 'kafka:9092',
    kafka_topic_list = 'klines',
    kafka_group_name = 'clickhouse-klines',
    kafka_format = 'AvroConfluent',
    format_avro_schema_registry_url = 'http://schema-registry:8081',
    kafka_num_consumers = 1;
