"""Part `checkpoint`: how much of a WAL checkpoint is the fsync of the WAL it starts with.

    PYTHONPATH=. .venv/bin/python tests/bench/run.py [--quick] checkpoint

On a file of 600 prices_ tables (the store's DDL and pragmas), one commit per tick with the
whole market's mix, then a PASSIVE checkpoint on a second connection, as the store's thread
does: timed alone, and timed after `database.sync_file` has synced the WAL (which the store
does before the checkpoint takes the connection, while its commits go on). Rounds alternate
the two, at a second of the whole market's base rate and of its spikes (2,000 and 10,000
commits). No commit runs during the checkpoint here: what it shows is the share of the sync.
"""

import os
import sqlite3
import tempfile
import time

from common import create_prices, figure, percentile, say
from sequence import mix

from tickd.database import sync_file

SYMBOLS = 600


def run(quick: bool) -> dict:
    rounds = 3 if quick else 8
    say(f"checkpoint: {SYMBOLS} tables, {rounds} rounds of each")
    out = {}
    with tempfile.TemporaryDirectory(prefix="tickd-bench-checkpoint-") as folder:
        path = os.path.join(folder, "ticks.db")
        conn = sqlite3.connect(path, isolation_level=None, cached_statements=4096)
        checkpointer = sqlite3.connect(path, isolation_level=None)
        try:
            for pragma in ("journal_mode = WAL", "synchronous = NORMAL", "wal_autocheckpoint = 0"):
                conn.execute(f"PRAGMA {pragma}")
            writer = Writer(conn)
            for commits in (2000, 10000):
                out[commits] = ms = measure(path, writer, checkpointer, commits, rounds)
                note = f"median of {rounds}, {commits:,} commits"
                name = f"checkpoint {commits}:"
                figure(f"{name} PASSIVE alone", round(ms["alone"], 1), "ms", note)
                figure(f"{name} the sync first", round(ms["sync"], 1), "ms", note)
                figure(f"{name} PASSIVE after it", round(ms["synced"], 1), "ms", note)
                ratio = round(ms["synced"] / ms["alone"], 2)
                figure(f"{name} after / alone", ratio, "x", "the time the connection is held")
        finally:
            checkpointer.close()
            conn.close()
    return out


class Writer:
    """One commit per tick into 600 tables, ids going up per table."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn
        self._sql = {}
        self._ids = {}
        for k in range(SYMBOLS):
            symbol = f"S{k:04d}USDT"
            table = create_prices(conn, symbol)
            self._sql[symbol] = f"INSERT OR IGNORE INTO {table} VALUES (?, ?, ?)"
            self._ids[symbol] = 0

    def commits(self, count: int, seed: int) -> None:
        for symbol in mix(SYMBOLS, count, seed):
            self._ids[symbol] += 1
            tick = self._ids[symbol]
            self._conn.execute(self._sql[symbol], (tick, tick, 1.0))


def measure(path, writer: Writer, checkpointer, commits: int, rounds: int) -> dict[str, float]:
    """Median ms of: the PASSIVE alone, the sync before it, the PASSIVE after the sync."""
    times: dict[str, list[float]] = {"alone": [], "synced": [], "sync": []}
    for r in range(rounds):
        for presync in (False, True):
            writer.commits(commits, 100 * r + presync)
            start = time.perf_counter()
            if presync:
                sync_file(path + "-wal")
                times["sync"].append(time.perf_counter() - start)
            began = time.perf_counter()
            checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            times["synced" if presync else "alone"].append(time.perf_counter() - began)
    return {k: percentile(v, 0.5) * 1000 for k, v in times.items()}
