"""Follows one symbol's 1m candles with ccxt.pro's binance exchange,
configured as the README says, until it has seen candles close, and
prints the candles it holds as JSON.

usage: ccxtpro_watch.py BASE_URL SYMBOL CLOSED
"""
import asyncio
import json
import sys

import ccxt.pro as ccxtpro


async def main(base, symbol, closed):
    exchange = ccxtpro.binance({
        "urls": {"api": {"public": base + "/api/v3", "ws": {"spot": base.replace("http", "ws", 1) + "/ws"}}},
        "options": {"fetchMarkets": {"types": ["spot"]}},
    })
    updates, held = 0, {}
    try:
        while len(held) <= closed:
            # ccxt.pro returns the candles updated since the last call.
            for c in await asyncio.wait_for(exchange.watch_ohlcv(symbol, "1m"), 30):
                updates += 1
                held[c[0]] = c
    finally:
        await exchange.close()
    print(json.dumps({"updates": updates, "candles": [held[t] for t in sorted(held)]}))


asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
