"""A naive aggTrade recorder, the kind a user would write instead of the store.

One asyncio task per symbol, websockets + sqlite3, one commit per tick, the
store's DDL and pragmas (WAL, synchronous NORMAL). No reconnect, no repair.
Usage: naive_recorder.py DB_PATH WS_BASE_URL SYMBOL...
"""
import asyncio
import json
import sqlite3
import sys

import websockets


def main():
    path, base, symbols = sys.argv[1], sys.argv[2], sys.argv[3:]
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    for s in symbols:
        con.execute(f'CREATE TABLE IF NOT EXISTS "prices_{s}" ('
                    'id INTEGER PRIMARY KEY AUTOINCREMENT, '
                    'timestamp INTEGER NOT NULL, price REAL NOT NULL)')
        con.execute(f'CREATE INDEX IF NOT EXISTS "idx_prices_{s}_timestamp" ON "prices_{s}"(timestamp)')
    con.commit()

    async def record(symbol):
        url = f"{base}/{symbol.lower()}@aggTrade"
        sql = f'INSERT OR IGNORE INTO "prices_{symbol}" (id, timestamp, price) VALUES (?, ?, ?)'
        async with websockets.connect(url, max_size=1 << 20, compression=None) as ws:
            async for msg in ws:
                d = json.loads(msg)
                if d.get("e") != "aggTrade":
                    continue
                con.execute(sql, (d["a"], d["T"], float(d["p"])))
                con.commit()

    async def run():
        await asyncio.gather(*(record(s) for s in symbols))

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    finally:
        con.close()


if __name__ == "__main__":
    main()
