"""A naive aggTrade recorder, the peer of the realistic load: asyncio, `websockets`, sqlite3.

    python naive_recorder.py DB_PATH WS_BASE SYMBOL [SYMBOL ...]

What a Python programmer writes in an afternoon: one websocket per symbol on the raw stream
route, `json.loads` per message, one INSERT OR IGNORE per tick in its own transaction
(autocommit), WAL with synchronous=NORMAL. No reconnect, no gap handling, no status page. The
bench copies this file into a temporary folder and runs it with a virtualenv of its own that
holds only `websockets`; the tables already exist (created by the bench with the store's DDL).
"""

import asyncio
import json
import sqlite3
import sys

import websockets


async def record(url: str, conn: sqlite3.Connection, insert: str) -> None:
    async with websockets.connect(url, max_size=1 << 20) as ws:
        async for message in ws:
            trade = json.loads(message)
            conn.execute(insert, (trade["a"], trade["T"], float(trade["p"])))


async def main() -> None:
    db_path, base, *symbols = sys.argv[1:]
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    await asyncio.gather(
        *(
            record(
                f"{base}/{symbol.lower()}@aggTrade",
                conn,
                f'INSERT OR IGNORE INTO "prices_{symbol}" (id, timestamp, price) VALUES (?, ?, ?)',
            )
            for symbol in symbols
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
