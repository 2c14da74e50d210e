"""Part `import`: how fast the history import stores an archive file, against a bare
`executemany` of the same rows into the same table; its memory; its rerun; and how it gives
way to another program writing the same file.

    PYTHONPATH=. .venv/bin/python tests/bench/importer.py [--quick] [--rows N] [--shuffled]

A fake exchange (tickd.fakebinance, in a child process) serves one monthly archive file of
BTCUSDT, 2024-02 (29 days), N rows in all (default 2,000,000; --quick 300,000), with a header,
rows in id order (--shuffled: in a random order, as some of Binance's monthly files are). The
bench asks for its CHECKSUM first, so the fake has built the zip before the clock starts: the
figures are the import's, not the fake's.

bare            the rows, parsed beforehand (not timed), inserted with one `executemany` of
                `INSERT OR IGNORE` in one transaction into the same DDL, WAL, synchronous
                NORMAL, in this process: the floor of what SQLite takes to store them.
import          `python -m tickd.admin import BTCUSDT 2024-02-01 2024-02-29` as a child process
                on an empty database (WAL, as the store leaves it): the wall time of the whole
                command (start-up, download with sha256, the file read by a forked child,
                writes in transactions of about 50 ms, the id checks, the final audit).
                Rows/s = rows / that time. Three rounds of (bare, import), one with --quick;
                the figures are medians and the ratio is of the medians: on a shared machine
                single figures move by a third.
ratio           import rows/s / bare rows/s (target: at least 0.5).
RSS             peak (VmHWM) of the command, and of its file reader, from /proc every 20 ms.
rerun           the same command again on the finished database: it downloads nothing.
beside a writer the import once more, while a thread of this process commits a tick every
                2 ms into another table the way the store does (busy timeout 0, retries after
                1, 2, 4 ... 100 ms, gives up after 5 s): the import's rows/s, and the writer's
                waits for the lock.

Every process is stopped and the temporary folder removed at the end, also on failure.
"""

import argparse
import csv
import io
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import figure, say, workdir  # noqa: E402

from tickd.database import INDEX_DDL, PRICES_DDL, SETTINGS_DDL, quote  # noqa: E402

SYMBOL = "BTCUSDT"
MONTH, FIRST, LAST, DAYS = "2024-02", "2024-02-01", "2024-02-29", 29


def serve(per_day: int, shuffled: bool) -> None:
    """The child: a fake exchange with the archive, until SIGTERM; prints its base URL.
    It alone is gevent-patched, before it imports gevent's users: the bench is not."""
    from gevent import monkey  # noqa: PLC0415

    monkey.patch_all()
    import datetime  # noqa: PLC0415

    import gevent.event  # noqa: PLC0415

    from tickd.fakebinance import FakeBinance  # noqa: PLC0415

    stop = gevent.event.Event()
    with FakeBinance() as fake:
        first = datetime.date.fromisoformat(FIRST)
        fake.archive(SYMBOL, first, first + datetime.timedelta(days=DAYS - 1), per_day=per_day)
        if shuffled:
            fake.archive_fault("shuffled", SYMBOL, MONTH)
        gevent.signal_handler(signal.SIGTERM, stop.set)
        print(fake.archive_url, flush=True)
        stop.wait()


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=600) as response:
        return response.read()


def rows_of(data: bytes) -> list[tuple[int, int, float]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive, archive.open(archive.namelist()[0]) as raw:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        next(reader)  # the header
        return [(int(r[0]), int(r[5]), float(r[1])) for r in reader]


def new_database(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(SETTINGS_DDL)
    return conn


def bare(path: Path, rows: list) -> float:
    """Seconds for one executemany of `rows` into prices_BTCUSDT, in one transaction."""
    conn = new_database(path)
    try:
        table = quote("prices_" + SYMBOL)
        conn.execute(PRICES_DDL.format(table=table))
        conn.execute(INDEX_DDL.format(index=quote(f"idx_prices_{SYMBOL}_timestamp"), table=table))
        start = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(f"INSERT OR IGNORE INTO {table} VALUES (?, ?, ?)", rows)
        conn.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        conn.close()


def peak_rss_mb(pid: int) -> float:
    """The peak resident set of a running process (VmHWM), in MB; 0 once it is gone. Read
    from /proc, not from wait4: a child's ru_maxrss starts from this process's own size at
    the fork, before the exec."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return 0.0


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def run_import(path: Path, url: str, log: Path) -> tuple[float, float, float, int]:
    """(seconds, peak RSS of the command, peak RSS of its file reader (a forked child), in
    MB, exit status) of the import as a child process."""
    env = {
        **os.environ,
        "DB_PATH": str(path),
        "BINANCE_ARCHIVE_URL": url,
        "BINANCE_REST_URL": url,
        "PYTHONPATH": str(ROOT),
    }
    argv = [sys.executable, "-m", "tickd.admin", "import", SYMBOL, FIRST, LAST]
    peak, reader = 0.0, 0.0
    with open(log, "a") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            # A zombie keeps its status file until reaped: the last reading is the peak.
            peak = max(peak, peak_rss_mb(proc.pid))
            for child in children(proc.pid):
                reader = max(reader, peak_rss_mb(child))
            time.sleep(0.02)
        seconds = time.perf_counter() - start
    return seconds, peak, reader, proc.returncode


class Writer(threading.Thread):
    """The store's writes, imitated: one tick every `every` seconds into prices_ETHUSDT, each
    in its own transaction, on a connection that never waits inside SQLite (busy timeout 0)
    but retries after 1 ms, 2, 4 ... up to 100 ms, and gives up after 5 s (Handle.run)."""

    def __init__(self, path: Path, every: float = 0.002):
        super().__init__(daemon=True)
        self.path, self.every = path, every
        self.waits: list[float] = []
        self.skipped = 0
        self.stop = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=0)
        try:
            table = quote("prices_ETHUSDT")
            conn.execute(PRICES_DDL.format(table=table))
            tick = 1
            while not self.stop.is_set():
                start, delay = time.perf_counter(), 0.001
                while True:
                    try:
                        conn.execute(f"INSERT INTO {table} VALUES (?, ?, 1.0)", (tick, tick))
                        break
                    except sqlite3.OperationalError:
                        if time.perf_counter() - start + delay > 5.0:
                            self.skipped += 1
                            break
                        time.sleep(delay)
                        delay = min(delay * 2, 0.1)
                self.waits.append(time.perf_counter() - start)
                tick += 1
                time.sleep(self.every)
        finally:
            conn.close()


def check(path: Path, total: int) -> None:
    conn = sqlite3.connect(path)
    try:
        count = conn.execute(f"SELECT count(*) FROM prices_{SYMBOL}").fetchone()[0]
        ok = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    if count != total or ok != "ok":
        raise RuntimeError(f"stored {count} of {total} rows, integrity {ok}")


def remove(path: Path) -> None:
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        name.unlink(missing_ok=True)


def run(quick: bool = False, rows: int | None = None, shuffled: bool = False) -> dict:
    """Rounds of (bare, import), the import's rerun; the medians. A shared machine's noise
    moves single figures by a third: the ratio is of medians of the same rounds."""
    total = rows or (300_000 if quick else 2_000_000)
    rounds = 1 if quick else 3
    per_day = -(-total // DAYS)
    total = per_day * DAYS
    order = "shuffled" if shuffled else "in id order"
    bares, imports, rss, readers = [], [], [], []
    with workdir("import") as folder:
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(per_day), *(["--shuffled"] * shuffled)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            url = child.stdout.readline().strip()
            if not url:
                raise RuntimeError("the fake exchange did not start")
            path = f"{url}/data/futures/um/monthly/aggTrades/{SYMBOL}/{SYMBOL}-aggTrades-{MONTH}"
            say(f"import: the fake builds {SYMBOL}-aggTrades-{MONTH}.zip, {total:,} rows, {order}")
            fetch(path + ".zip.CHECKSUM")  # built now, kept for the downloads that follow
            data = fetch(path + ".zip")
            say(f"import: {len(data) / 1e6:.1f} MB zip, {rounds} rounds of bare, import")
            trades = rows_of(data)
            del data
            db, log = folder / "ticks.db", folder / "import.log"
            for _ in range(rounds):
                remove(folder / "bare.db")
                bares.append(bare(folder / "bare.db", trades))
                remove(db)
                new_database(db).close()
                seconds, peak, reader, status = run_import(db, url, log)
                if status != 0:
                    raise RuntimeError(f"the import failed: {log.read_text()}")
                check(db, total)
                imports.append(seconds)
                rss.append(peak)
                readers.append(reader)
                say(f"import: bare {bares[-1]:.2f} s, import {seconds:.2f} s")
            before = len(log.read_text())
            again, _, _, status = run_import(db, url, log)
            if status != 0 or "1 periods already stored" not in log.read_text()[before:]:
                raise RuntimeError(f"the rerun failed: {log.read_text()[before:]}")
            say("import: once more, beside a writer committing a tick every 2 ms")
            remove(db)
            new_database(db).close()
            writer = Writer(db)
            writer.start()
            try:
                beside, _, _, status = run_import(db, url, log)
            finally:
                writer.stop.set()
                writer.join(10)
            if status != 0:
                raise RuntimeError(f"the import beside a writer failed: {log.read_text()}")
            check(db, total)
        finally:
            child.terminate()
            child.wait(15)
            child.stdout.close()
    imported, floor = total / statistics.median(imports), total / statistics.median(bares)
    note = f"{total:,} rows, one monthly file, {order}; median of {rounds}"
    figure("import: rows per second (whole command)", imported, "rows/s", note)
    figure("import: bare executemany, same rows and DDL", floor, "rows/s", "one transaction")
    figure("import: ratio to the bare executemany", imported / floor, "x", "target >= 0.5")
    figure("import: peak RSS of the import process", max(rss), "MB", "target well under 150")
    figure("import: peak RSS of its file reader (child)", max(readers), "MB", "forked per file")
    figure("import: rerun of the finished import", again, "s", "downloads nothing")
    waits = writer.waits
    figure("import: rows per second beside a writer", total / beside, "rows/s", "500 ticks/s")
    figure(
        "import: the writer's waits for the lock meanwhile",
        f"p50 {statistics.median(waits) * 1000:.1f} ms, p99 "
        f"{statistics.quantiles(waits, n=100)[98] * 1000:.0f} ms, max {max(waits) * 1000:.0f} ms",
        "",
        f"{len(waits):,} writes, {writer.skipped} given up after 5 s",
    )
    return {
        "rows": total,
        "import": imported,
        "bare": floor,
        "ratio": imported / floor,
        "rss": max(rss),
        "reader_rss": max(readers),
        "rerun": again,
        "beside_writer": total / beside,
        "writer_max_wait": max(waits),
        "writer_skipped": writer.skipped,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="300,000 rows")
    parser.add_argument("--rows", type=int, help="rows in the monthly file (default 2,000,000)")
    parser.add_argument("--shuffled", action="store_true", help="rows in a random order")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the fake, as a child
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.shuffled)
        return 0
    run(args.quick, args.rows, args.shuffled)
    return 0


if __name__ == "__main__":
    sys.exit(main())
