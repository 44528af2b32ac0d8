"""Runs deploy/clickhouse/queries/fill-gaps.sql with chdb over candles
given as JSON lines, in the repository's own klines table, and prints its
rows as JSON lines.

usage: fill_gaps.py SQL_DIR QUERY_FILE SYMBOL PERIOD STEP_SECONDS < candles.jsonl
"""
import os
import sys
import tempfile

from chdb import session


def main():
    sql_dir, query_file, symbol, period, step = sys.argv[1:6]
    with tempfile.TemporaryDirectory() as data:
        s = session.Session(data)
        with open(os.path.join(sql_dir, "01-klines.sql")) as f:
            for stmt in f.read().split(";"):
                body = "\n".join(l for l in stmt.splitlines() if not l.lstrip().startswith("--")).strip()
                if body:
                    s.query(body)
        rows = os.path.join(data, "rows.jsonl")
        with open(rows, "w") as f:
            f.write(sys.stdin.read())
        s.query(f"INSERT INTO klagg.klines SELECT * FROM file('{rows}', 'JSONEachRow')")
        with open(query_file) as f:
            query = f.read()
        # Decimals as strings with all eight places, as klagg prints them.
        query = query.rstrip().rstrip(";") + (
            "\nSETTINGS output_format_json_quote_decimals = 1, output_format_decimal_trailing_zeros = 1")
        out = s.query(query, "JSONEachRow",
                      params={"symbol": symbol, "period": period, "step_seconds": step})
        sys.stdout.write(out.data())


if __name__ == "__main__":
    main()
