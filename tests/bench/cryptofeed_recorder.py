"""cryptofeed recording Binance USD-M futures trades into the store's schema, pointed at the fake.

    python cryptofeed_recorder.py DB_PATH WS_BASE REST_BASE SYMBOL [SYMBOL ...]

cryptofeed as its users run it: a FeedHandler, its BinanceFutures feed (symbols from
/fapi/v1/exchangeInfo, one combined stream `/market/stream?streams=...` for up to 200
symbols, yapic.json, uvloop), and a trade callback that makes one INSERT OR IGNORE per trade in
its own transaction, WAL with synchronous=NORMAL, into tables the bench created with the store's
DDL. Two changes point it at the local fake, and nothing else: a subclass of BinanceFutures
whose endpoints are WS_BASE (`ws://host:port/market`, or `wss://` over TLS) and REST_BASE, and
a connection class that also accepts `ws://` (cryptofeed refuses any address that is not
`wss://`), so that it runs on the same plain transport as the store. Over TLS nothing else
changes: its websocket (websockets) trusts SSL_CERT_FILE, its REST calls (requests, which would
use certifi's bundle) REQUESTS_CA_BUNDLE; the bench sets both to the exchange's CA.
"""

import sqlite3
import sys
from typing import ClassVar

import cryptofeed.feed
from cryptofeed import FeedHandler
from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint, WSAsyncConn
from cryptofeed.defines import TRADES
from cryptofeed.exchanges import BinanceFutures


class LocalConn(WSAsyncConn):
    def __init__(self, address: str, *args, **kwargs):
        super().__init__(address.replace("ws://", "wss://", 1), *args, **kwargs)
        self.address = address


def main() -> None:
    db_path, ws_base, rest_base, *symbols = sys.argv[1:]
    cryptofeed.feed.WSAsyncConn = LocalConn

    class LocalFutures(BinanceFutures):
        websocket_endpoints: ClassVar = [WebsocketEndpoint(ws_base, options={"compression": None})]
        rest_endpoints: ClassVar = [
            RestEndpoint(
                rest_base,
                routes=Routes(
                    "/fapi/v1/exchangeInfo",
                    l2book="/fapi/v1/depth?symbol={}&limit={}",
                    authentication="/fapi/v1/listenKey",
                    open_interest="/fapi/v1/openInterest?symbol={}",
                ),
            )
        ]

    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    inserts = {
        s: f'INSERT OR IGNORE INTO "prices_{s}" (id, timestamp, price) VALUES (?, ?, ?)'
        for s in symbols
    }

    async def trade(t, receipt_timestamp):
        conn.execute(inserts[t.raw["s"]], (int(t.id), round(t.timestamp * 1000), float(t.price)))

    handler = FeedHandler(config={"log": {"filename": "/dev/null", "level": "WARNING"}})
    names = [f"{s.removesuffix('USDT')}-USDT-PERP" for s in symbols]
    handler.add_feed(LocalFutures(symbols=names, channels=[TRADES], callbacks={TRADES: trade}))
    handler.run()


if __name__ == "__main__":
    main()
