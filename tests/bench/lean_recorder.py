"""The card's stack at its leanest, the peer that shows what its libraries cost per tick.

    python lean_recorder.py DB_PATH WS_BASE SYMBOL [SYMBOL ...]

After monkey-patching, a gevent Pool runs one greenlet per symbol on the raw stream route:
websocket-client's `create_connection` (with `skip_utf8_validation=True`; its `recv()` reads
the frames and answers pings), `json.loads` per message, and one INSERT OR IGNORE per tick in
its own transaction under a gevent Semaphore, WAL with synchronous=NORMAL, into tables the bench
created with the store's DDL. Nothing else: no reconnect, no gap handling, no status page (DESIGN
section 7's "card's stack at its leanest"). `wss://` trusts what Python's default context does
(SSL_CERT_FILE), verification on. The bench runs a copy of this file with PYTHONPATH emptied.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sqlite3  # noqa: E402
import sys  # noqa: E402

import websocket  # noqa: E402
from gevent.lock import Semaphore  # noqa: E402
from gevent.pool import Pool  # noqa: E402


def record(url: str, conn: sqlite3.Connection, lock: Semaphore, insert: str) -> None:
    ws = websocket.create_connection(url, skip_utf8_validation=True)
    while True:
        trade = json.loads(ws.recv())
        with lock:
            conn.execute(insert, (trade["a"], trade["T"], float(trade["p"])))


def main() -> None:
    db_path, base, *symbols = sys.argv[1:]
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    lock = Semaphore()
    pool = Pool(len(symbols))
    for symbol in symbols:
        insert = f'INSERT OR IGNORE INTO "prices_{symbol}" (id, timestamp, price) VALUES (?, ?, ?)'
        pool.spawn(record, f"{base}/{symbol.lower()}@aggTrade", conn, lock, insert)
    pool.join(raise_error=True)


if __name__ == "__main__":
    main()
