"""Memory at start with full tables: every symbol audits its last 48 hours at once."""

import sqlite3
import time

import pytest

from helpers import process_usage, wait_for
from tickd.database import INDEX_DDL, PRICES_DDL, SETTINGS_DDL, quote

pytestmark = pytest.mark.slow


def test_a_restart_over_full_tables_stays_small(make_store, tmp_path):
    symbols = [f"M{i:02d}USDT" for i in range(60)]
    now_ms = int(time.time() * 1000)
    conn = sqlite3.connect(tmp_path / "ticks.db")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(SETTINGS_DDL)
    for symbol in symbols:
        table = quote(f"prices_{symbol}")
        conn.execute(PRICES_DDL.format(table=table))
        conn.execute(INDEX_DDL.format(index=quote(f"idx_prices_{symbol}_timestamp"), table=table))
        conn.executemany(
            f"INSERT INTO {table} VALUES (?, ?, 1.5)",
            ((i, now_ms - 3_600_000 + i * 10) for i in range(1, 30_001)),
        )
        conn.execute("INSERT INTO symbol_settings (symbol) VALUES (?)", (symbol,))
    conn.commit()
    conn.close()
    # Streams cannot connect (nothing listens there): what is measured is the start itself.
    store = make_store(BINANCE_WS_URL="ws://127.0.0.1:9/market/ws").start()
    wait_for(lambda: store.log().count("stream connect failed") >= len(symbols), 30)
    rss, _ = process_usage(store.proc.pid)
    print(f"RSS after start with {len(symbols)} x 30,000 ids audited: {rss >> 20} MiB")
    assert rss < 80 << 20  # 60 audits each holding 20,000 ids at once: 119 MiB
