"""Read kline record bodies with fastavro, as a Python consumer of the
klines topic does, and print each decimal field as Python's Decimal prints
it in fixed-point notation ("0.00000000", not "0E-8"), with its type.

usage: fastavro_klines.py KLINE_AVSC < hex bodies, one per line
"""
import io
import json
import sys

import fastavro

with open(sys.argv[1]) as f:
    schema = fastavro.parse_schema(json.load(f))
for line in sys.stdin:
    rec = fastavro.schemaless_reader(io.BytesIO(bytes.fromhex(line.strip())), schema)
    out = {}
    for k, v in rec.items():
        if k in ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_volume", "taker_buy_quote_volume"):
            out[k] = [type(v).__module__ + "." + type(v).__name__, format(v, "f")]
    print(json.dumps(out, sort_keys=True))
