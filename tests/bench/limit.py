"""Part `limit`: the fastest one-commit-per-tick loop stdlib sqlite3 allows, the store's schema.

A bare loop, in this process, over 100 tables made with the store's own DDL strings
(tickd.database.PRICES_DDL, INDEX_DDL, quote, through common.create_prices), in WAL mode with
synchronous=NORMAL, one row per transaction (autocommit), tables in round robin, ids
consecutive per table. Everything else is SQLite's default (the WAL is checkpointed
automatically every 1,000 pages). No network, no parsing, no greenlet: what one commit per
tick costs at the least.
"""

import sqlite3
import time
from pathlib import Path

from common import create_prices, figure, say, symbol_names, workdir

TABLES = 100


def bare_loop(
    folder: Path, seconds: float, or_ignore: bool = True, autoincrement: bool = True
) -> tuple[float, float]:
    """(rows per second, µs of CPU per row) of the bare loop run for `seconds`.

    autoincrement=False drops AUTOINCREMENT from the DDL (not the spec's schema: a measure of
    what the sqlite_sequence update costs each commit)."""
    path = folder / f"limit-{time.monotonic_ns()}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        verb = "INSERT OR IGNORE" if or_ignore else "INSERT"
        inserts = []
        for symbol in symbol_names(TABLES):
            table = create_prices(conn, symbol, autoincrement)
            inserts.append(f"{verb} INTO {table} (id, timestamp, price) VALUES (?, ?, ?)")
        ids = [6_512_345_679 + i * 100_000_000 for i in range(TABLES)]
        timestamp = 1_795_000_000_000
        rows = 0
        wall0, cpu0 = time.perf_counter(), time.process_time()
        end = wall0 + seconds
        while time.perf_counter() < end:
            for _ in range(10):
                for table in range(TABLES):
                    conn.execute(inserts[table], (ids[table], timestamp, 83091.7))
                    ids[table] += 1
                timestamp += 7
            rows += 10 * TABLES
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return rows / wall, cpu / rows * 1e6


def run(quick: bool) -> dict:
    seconds = 3.0 if quick else 10.0
    say(f"limit: bare loop, {TABLES} tables, one row per commit, {seconds:g} s each")
    out = {}
    with workdir("limit") as folder:
        for or_ignore in (False, True):
            rate, cpu = bare_loop(folder, seconds, or_ignore)
            verb = "INSERT OR IGNORE" if or_ignore else "INSERT"
            figure(f"limit {verb}: rows/s", round(rate), "rows/s")
            figure(f"limit {verb}: CPU per row", round(cpu, 1), "µs")
            out[verb] = (rate, cpu)
        rate, cpu = bare_loop(folder, seconds, True, autoincrement=False)
        figure(
            "limit INSERT OR IGNORE, no AUTOINCREMENT",
            round(rate),
            "rows/s",
            f"{cpu:.1f} µs CPU/row; not the spec's DDL, for comparison only",
        )
        out["no autoincrement"] = (rate, cpu)
    return out
