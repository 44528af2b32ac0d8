"""Pages through klagg serve's candles with ccxt's binance exchange,
configured as the README says, and prints what it got as JSON.

usage: ccxt_ohlcv.py BASE_URL SYMBOL TIMEFRAME SINCE_MS [LIMIT [TIMEZONE]]

With TIMEZONE, each request carries Binance's timeZone parameter (ccxt
passes params through).
"""
import json
import sys

import ccxt

base, symbol, timeframe, since = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
limit = int(sys.argv[5]) if len(sys.argv) > 5 else 1000
params = {"timeZone": sys.argv[6]} if len(sys.argv) > 6 else {}
exchange = ccxt.binance({
    "urls": {"api": {"public": base + "/api/v3"}},
    # Spot markets only: the others live on Binance's futures hosts.
    "options": {"fetchMarkets": {"types": ["spot"]}},
})
markets = exchange.load_markets()
candles, pages = [], 0
while True:
    page = exchange.fetch_ohlcv(symbol, timeframe, since=since, limit=limit, params=params)
    if not page:
        break
    pages += 1
    candles.extend(page)
    since = page[-1][0] + 1
print(json.dumps({"markets": sorted(markets), "pages": pages, "candles": candles}))
