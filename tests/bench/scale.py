"""Parts `status` and `disk`: the status page over a big file, and the bytes a tick takes.

Rows are generated straight into SQLite with executemany, one transaction per table, into
the store's schema (tickd.database's DDL strings), 100 symbols: consecutive ids from
6,512,345,679 (5-byte varints, as Binance's), ms timestamps rising by 0 to 150 ms per trade,
prices like 83091.7 moving by 0.1. symbol_settings lists the 100 symbols with enabled = 0, so
the store, started on the file, opens no connection (BINANCE_WS_URL points at a closed port).

status  20 k rows and 20 M rows (2 M with --quick), a store on each, both running; /status
        asked of one then the other, 20 ms apart, after 10 warm-up requests each: p50, p99
        and the ratio big / small.
disk    the big file after the store's clean stop (WAL folded in): file size / rows, and the
        table / index shares from SQLite's dbstat. Experiments at 2 M rows, not applied to the
        store: page_size 8192 and 16384, and VACUUM after the load.
"""

import itertools
import operator
import random
import socket
import sqlite3
import statistics
import time
import urllib.request
from pathlib import Path

from common import (
    Store,
    create_prices,
    figure,
    file_size,
    get_seconds,
    percentile,
    say,
    symbol_names,
    workdir,
)

from tickd.database import SETTINGS_DDL

SYMBOLS = 100


def rows(seed: int, count: int):
    """`count` realistic (id, timestamp, price) rows of one symbol."""
    rng = random.Random(seed)
    first = 6_512_345_679 + seed * 100_000_000
    steps = rng.choices(range(151), k=count)
    moves = rng.choices((-1, 0, 0, 1), k=count)
    times = itertools.accumulate(steps, initial=1_795_000_000_000 + seed)
    tenths = itertools.accumulate(moves, initial=830_917 + seed * 10)
    prices = map(operator.truediv, tenths, itertools.repeat(10))
    return zip(range(first, first + count), times, prices, strict=False)  # times: count + 1


def generate(path: Path, per_symbol: int, *, page_size: int | None = None, vacuum=False) -> int:
    """A store file with SYMBOLS tables of `per_symbol` rows each; returns the row count."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        if page_size:
            conn.execute(f"PRAGMA page_size = {page_size}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute(SETTINGS_DDL)
        symbols = symbol_names(SYMBOLS)
        conn.executemany(
            "INSERT INTO symbol_settings (symbol, enabled) VALUES (?, 0)", [(s,) for s in symbols]
        )
        for seed, symbol in enumerate(symbols):
            conn.execute("BEGIN")
            table = create_prices(conn, symbol)
            conn.executemany(
                f"INSERT INTO {table} (id, timestamp, price) VALUES (?, ?, ?)",
                rows(seed, per_symbol),
            )
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if vacuum:
            conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return SYMBOLS * per_symbol


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def footprint(path: Path, rows_total: int) -> dict:
    """Bytes per row: the whole file, and the prices tables and their indexes (dbstat)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        parts = conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall()
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    table = sum(size for name, size in parts if name.startswith("prices_"))
    index = sum(size for name, size in parts if name.startswith("idx_prices_"))
    return {
        "file": file_size(path) / rows_total,
        "table": table / rows_total,
        "index": index / rows_total,
        "wal": file_size(Path(f"{path}-wal")),
        "page_size": page_size,
    }


def status_latency(small: Path, big: Path, rounds: int, folder: Path) -> tuple[list, list]:
    nowhere = f"127.0.0.1:{closed_port()}"
    env = {"BINANCE_WS_URL": f"ws://{nowhere}/market/ws", "BINANCE_REST_URL": f"http://{nowhere}"}
    with (
        Store(folder, env, name="store-small", db_path=small) as a,
        Store(folder, env, name="store-big", db_path=big) as b,
    ):
        for _ in range(10):
            get_seconds(a.url())
            get_seconds(b.url())
        lat_a, lat_b = [], []
        for _ in range(rounds):
            lat_a.append(get_seconds(a.url()))
            time.sleep(0.02)
            lat_b.append(get_seconds(b.url()))
            time.sleep(0.02)
        with urllib.request.urlopen(b.url(), timeout=30) as response:
            page = response.read().decode()
    spans = sum(1 for line in page.splitlines() if "  ->  " in line)
    say(f"status: the big file's page lists {spans} symbols with first and last tick times")
    return lat_a, lat_b


def run(quick: bool, do_status: bool, do_disk: bool) -> dict:
    big_per_symbol = 20_000 if quick else 200_000
    out: dict = {}
    with workdir("scale") as folder:
        small, big = folder / "small.db", folder / "big.db"
        start = time.monotonic()
        small_rows = generate(small, 200)
        big_rows = generate(big, big_per_symbol)
        took = time.monotonic() - start
        say(f"scale: generated {small_rows:,} and {big_rows:,} rows in {took:.0f} s")
        if do_status:
            rounds = 100 if quick else 300
            lat_small, lat_big = status_latency(small, big, rounds, folder)
            for lat, n in ((lat_small, small_rows), (lat_big, big_rows)):
                figure(
                    f"status: /status, 100 symbols, {n:,} rows",
                    f"p50 {statistics.median(lat) * 1000:.2f} ms, "
                    f"p99 {percentile(lat, 0.99) * 1000:.2f} ms",
                    "",
                    f"max {max(lat) * 1000:.1f} ms, {len(lat)} requests",
                )
            ratio = statistics.median(lat_big) / statistics.median(lat_small)
            ratio99 = percentile(lat_big, 0.99) / percentile(lat_small, 0.99)
            target = "status: big / small, p50 (target <= 2)"
            figure(target, round(ratio, 2), "x", f"p99 {ratio99:.2f} x")
            out["status"] = {"small": lat_small, "big": lat_big, "ratio": ratio}
        if do_disk:
            fp = footprint(big, big_rows)
            figure(
                f"disk: bytes per tick at {big_rows / 1e6:g} M ticks (target <= 45)",
                round(fp["file"], 2),
                "B",
                f"table {fp['table']:.2f} B + index {fp['index']:.2f} B; WAL {fp['wal']} B",
            )
            out["disk"] = fp
            experiments = {}
            for name, options in (
                ("4 KiB pages (the store's)", {}),
                ("8 KiB pages", {"page_size": 8192}),
                ("16 KiB pages", {"page_size": 16384}),
                ("4 KiB pages, VACUUM after the load", {"vacuum": True}),
            ):
                path = folder / f"exp-{len(experiments)}.db"
                n = generate(path, 20_000, **options)
                experiments[name] = footprint(path, n)
                path.unlink()
            base = experiments["4 KiB pages (the store's)"]["file"]
            for name, fp in experiments.items():
                figure(
                    f"disk, 2 M ticks: {name}",
                    round(fp["file"], 2),
                    "B/tick",
                    f"table {fp['table']:.2f} + index {fp['index']:.2f}; {fp['file'] / base:.3f} x",
                )
            out["experiments"] = experiments
    return out
