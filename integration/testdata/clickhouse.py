"""Load klagg's kline records into the repository's ClickHouse tables with
chdb (embedded ClickHouse) and print the ReplacingMergeTree's rows, FINAL,
as JSON lines.

usage: clickhouse.py SQL_DIR RECORDS_FILE REGISTRY_URL

SQL_DIR is deploy/clickhouse: its files run in name order. The Kafka engine
table is created as written except for its engine: chdb has no Kafka
consumer running, so the same columns get ENGINE = Null and the records are
inserted into it, which fires the repository's materialized view exactly as
the Kafka engine's reads would. RECORDS_FILE holds the topic's record
values back to back, each Confluent-framed (magic byte, schema id, Avro
body); ClickHouse's AvroConfluent input fetches the schema from
REGISTRY_URL by id.
"""
import os
import sys
import tempfile

from chdb import session


def statements(text):
    lines = [l for l in text.splitlines() if not l.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def main():
    sql_dir, records, registry = sys.argv[1:4]
    with tempfile.TemporaryDirectory() as data:
        s = session.Session(data)
        kafka_tables = 0
        for name in sorted(os.listdir(sql_dir)):
            if not name.endswith(".sql"):
                continue
            with open(os.path.join(sql_dir, name)) as f:
                text = f.read()
            for stmt in statements(text):
                if "ENGINE = Kafka" in stmt:
                    stmt = stmt[: stmt.index("ENGINE = Kafka")] + "ENGINE = Null"
                    kafka_tables += 1
                s.query(stmt)
        if kafka_tables != 1:
            sys.exit(f"want one Kafka engine table in {sql_dir}, found {kafka_tables}")
        s.query(
            f"INSERT INTO klagg.klines_queue SELECT * FROM file('{records}', 'AvroConfluent') "
            f"SETTINGS format_avro_schema_registry_url = '{registry}'"
        )
        out = s.query(
            "SELECT symbol, period, toUnixTimestamp64Milli(open_time) AS open_time, "
            "toUnixTimestamp64Milli(close_time) AS close_time, open, high, low, close, volume, "
            "quote_volume, trade_count, taker_buy_volume, taker_buy_quote_volume, "
            "first_trade_id, last_trade_id, is_final, version "
            "FROM klagg.klines FINAL ORDER BY symbol, period, open_time "
            "SETTINGS output_format_json_quote_64bit_integers = 0, output_format_json_quote_decimals = 1, "
            "output_format_decimal_trailing_zeros = 1",
            "JSONEachRow",
        )
        sys.stdout.write(out.data())


if __name__ == "__main__":
    main()
