-- The klines topic, read as klagg writes it: Confluent-framed Avro, the
-- schema fetched from the registry by id. Its columns are klagg.klines's,
-- which are kline.avsc's fields, by name. Broker, topic and registry are
-- compose.yaml's services.
CREATE TABLE IF NOT EXISTS klagg.klines_queue AS klagg.klines
ENGINE = Kafka
SETTINGS
    kafka_broker_list = 'kafka:9092',
    kafka_topic_list = 'klines',
    kafka_group_name = 'clickhouse-klines',
    kafka_format = 'AvroConfluent',
    format_avro_schema_registry_url = 'http://schema-registry:8081',
    kafka_num_consumers = 1;
