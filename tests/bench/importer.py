"""Part `import`: how fast the history import stores an archive file, against a bare
`executemany` of the same rows into the same table; its memory; its rerun; how it gives way to
another program writing the same file; and what it does to a live store beside it.

    PYTHONPATH=. .venv/bin/python tests/bench/importer.py [--quick] [--rows N] [--shuffled]
        [--no-live]
    PYTHONPATH=. .venv/bin/python tests/bench/importer.py --rss-sizes 2000000,20000000,100000000

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
RSS             peak (VmHWM) of the command, and of its file reader, from /proc every 20 ms;
                and the fake's own peak once it has built the file (it builds zips in memory).
rerun           the same command again on the finished database: it downloads nothing.
beside a writer the import once more, while a thread of this process commits a tick every
                2 ms into another table the way the store does (busy timeout 0, retries after
                1, 2, 4 ... 100 ms, gives up after 5 s): the import's rows/s, and the writer's
                waits for the lock.
live store      the real store (`python -m tickd`, as tests/bench/variant.py with no patch, on
                its own database) records BTCUSDT, ETHUSDT, SOLUSDT and BNBUSDT from a second
                fake: exchange.py's `Bench` (paced Poisson trades, 400/s in all, send times
                noted) in a child process, whose BTCUSDT also has an archive from the first day
                of the previous calendar month to yesterday, N rows per month (ids ending where
                the live ids start; --shuffled: the monthly file's rows in a random order, as
                above). Before the first trade, 5,000 BTCUSDT ids are skipped (made,
                never streamed, served by REST): the trades made before the store connected.
                The monthly zip is built (CHECKSUM asked) before the store starts (on another
                day than the 1st, this month's daily files are built during the import, each
                a short pause of the fake's hub, hence of its live trades). Then, under
                the live load, three windows: `before` (30 s; --quick 10 s), `import` (the
                whole `python -m tickd.admin import BTCUSDT <first day of last month>`, no TO:
                the monthly file, any daily files of this month, REST up to the live edge,
                into the store's database while it writes), and `after` (as long as the
                import took, once the store holds the live edge again). In each window:
                /status every 100 ms (p50, p99, max), send-to-visible latency of every live
                tick (the fake notes each frame's write time, tests/bench/visible.py polls
                MAX(id) every 0.5 ms in its own process; it is told its length up front, so
                it runs in overlapping 20 s segments and the earliest sighting counts), the
                store's write-duration histogram (/metrics, lock waits included),
                `tickstore_write_errors_total` (must stay 0), the store's and the fake's CPU,
                the -wal file's size. At the end: the import exited 0, every live id of every
                symbol is stored (count, min and max equal to the fake's), and BTCUSDT's table
                holds every id from the month's first to the live edge.
RSS by size     (--rss-sizes N,N,...: this round alone.) For each size, a monthly file of
                2024-02 with N rows, the rows the fake would serve (its own generator), written
                to disk as a stream by this process and served by `python -m http.server`: the
                fake builds each zip in memory (every CSV line as a string, the text, the zip:
                some hundreds of bytes a row), so it cannot serve 100 M rows. The import on an
                empty database; its rows/s, and the peak RSS of the command and of its reader.

Every process is stopped and the temporary folder removed at the end, also on failure.
"""

import argparse
import calendar
import contextlib
import csv
import datetime
import hashlib
import io
import itertools
import json
import math
import os
import queue
import re
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

from common import (  # noqa: E402
    BENCH,
    PYTHON,
    Child,
    Exchange,
    Store,
    figure,
    file_size,
    get_seconds,
    percentile,
    say,
    table_stats,
    tree_state,
    workdir,
)

from tickd.database import INDEX_DDL, PRICES_DDL, SETTINGS_DDL, quote  # noqa: E402

SYMBOL = "BTCUSDT"
MONTH, FIRST, LAST, DAYS = "2024-02", "2024-02-01", "2024-02-29", 29
ARCHIVE = "/data/futures/um/monthly/aggTrades/{symbol}/{symbol}-aggTrades-{month}.zip"

# The live-store round.
LIVE_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT")  # the first is imported
LIVE_RATE = 400.0  # trades per second in all, Poisson
SKIPPED = 5_000  # BTCUSDT ids made before the store's first tick: the import's REST part
STATUS_EVERY = 0.1  # seconds between /status requests
SEGMENT, OVERLAP, TAIL = 20.0, 2.0, 3.0  # seconds: visible.py runs, their overlap, the tail
METRIC = re.compile(r"^(\w+)(?:\{([^}]*)\})? (\S+)$")


def serve(per_day: int, shuffled: bool) -> None:
    """The child: a fake exchange with the archive, until SIGTERM; prints its base URL.
    It alone is gevent-patched, before it imports gevent's users: the bench is not."""
    from gevent import monkey  # noqa: PLC0415

    monkey.patch_all()
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


def serve_live(per_day: int, first: str, last: str, shuffled: bool) -> None:
    """The child of the live round: exchange.py's Bench (the counting tape, paced trades,
    its /bench/ control API) over LIVE_SYMBOLS, BTCUSDT with an archive of `per_day` trades
    a day from day `first` to day `last` (`shuffled`: its monthly file's rows in a random
    order); prints `listening port=` and runs until SIGTERM."""
    from gevent import monkey  # noqa: PLC0415

    monkey.patch_all()
    import exchange  # noqa: PLC0415 (it patches too, on import)
    import gevent  # noqa: PLC0415
    import gevent.event  # noqa: PLC0415

    stop = gevent.event.Event()
    bench = exchange.Bench(LIVE_SYMBOLS)
    days = datetime.date.fromisoformat(first), datetime.date.fromisoformat(last)
    bench.fake.archive(SYMBOL, *days, per_day=per_day)
    if shuffled:
        bench.fake.archive_fault("shuffled", SYMBOL, first[:7])
    bench.start()
    try:
        print(f"listening port={bench.fake.port}", flush=True)
        gevent.signal_handler(signal.SIGTERM, stop.set)
        stop.wait()
    finally:
        bench.stop()


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


def run_import(
    path: Path, url: str, log: Path, first: str = FIRST, last: str | None = LAST
) -> tuple[float, float, float, int]:
    """(seconds, peak RSS of the command, peak RSS of its file reader (a forked child), in
    MB, exit status) of the import as a child process; `last` None: up to the live edge."""
    env = {
        **os.environ,
        "DB_PATH": str(path),
        "BINANCE_ARCHIVE_URL": url,
        "BINANCE_REST_URL": url,
        "PYTHONPATH": str(ROOT),
    }
    argv = [sys.executable, "-m", "tickd.admin", "import", SYMBOL, first, *([last] if last else [])]
    peak, reader = 0.0, 0.0
    with open(log, "a") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None:
                # A zombie keeps its status file until reaped: the last reading is the peak.
                peak = max(peak, peak_rss_mb(proc.pid))
                for child in children(proc.pid):
                    reader = max(reader, peak_rss_mb(child))
                time.sleep(0.02)
        finally:
            if proc.poll() is None:  # the bench failed or was interrupted meanwhile
                proc.kill()
                proc.wait()
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


def check(path: Path, total: int, integrity: bool = True) -> None:
    conn = sqlite3.connect(path)
    try:
        count = conn.execute(f"SELECT count(*) FROM prices_{SYMBOL}").fetchone()[0]
        ok = conn.execute("PRAGMA integrity_check").fetchone()[0] if integrity else "ok"
    finally:
        conn.close()
    if count != total or ok != "ok":
        raise RuntimeError(f"stored {count} of {total} rows, integrity {ok}")


def remove(path: Path) -> None:
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        name.unlink(missing_ok=True)


@contextlib.contextmanager
def started(child: Child):
    """`with started(child)`: like `with child`, but the process is stopped also when its
    start fails after it was launched (a line it never printed, a wrong tree)."""
    try:
        yield child.start()
    finally:
        child.stop()


def run(
    quick: bool = False, rows: int | None = None, shuffled: bool = False, live: bool = True
) -> dict:
    """Rounds of (bare, import), the import's rerun, the import beside a writer; the medians.
    A shared machine's noise moves single figures by a third: the ratio is of medians of the
    same rounds. Then, unless `live` is False, the live-store round (`live_round`)."""
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
            path = url + ARCHIVE.format(symbol=SYMBOL, month=MONTH).removesuffix(".zip")
            say(f"import: the fake builds {SYMBOL}-aggTrades-{MONTH}.zip, {total:,} rows, {order}")
            fetch(path + ".zip.CHECKSUM")  # built now, kept for the downloads that follow
            fake_rss = peak_rss_mb(child.pid)
            data = fetch(path + ".zip")
            zip_mb = len(data) / 1e6
            say(f"import: {zip_mb:.1f} MB zip, {rounds} rounds of bare, import")
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
            del trades
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
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            child.stdout.close()
    imported, floor = total / statistics.median(imports), total / statistics.median(bares)
    note = f"{total:,} rows, one monthly file, {order}; median of {rounds}"
    figure("import: rows per second (whole command)", imported, "rows/s", note)
    figure("import: bare executemany, same rows and DDL", floor, "rows/s", "one transaction")
    figure("import: ratio to the bare executemany", imported / floor, "x", "target >= 0.5")
    figure("import: peak RSS of the import process", max(rss), "MB", "target well under 150")
    figure("import: peak RSS of its file reader (child)", max(readers), "MB", "forked per file")
    figure(
        "import: peak RSS of the fake once it built the zip",
        fake_rss,
        "MB",
        f"{zip_mb:.1f} MB zip, built in memory",
    )
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
    result = {
        "rows": total,
        "import": imported,
        "bare": floor,
        "ratio": imported / floor,
        "rss": max(rss),
        "reader_rss": max(readers),
        "fake_rss": fake_rss,
        "rerun": again,
        "beside_writer": total / beside,
        "writer_max_wait": max(waits),
        "writer_skipped": writer.skipped,
    }
    if live:
        result["live"] = live_round(total, quick, shuffled)
    return result


# -- the live-store round ----------------------------------------------------------------


class ArchiveExchange(Exchange):
    """`serve_live` (this file, --serve-live) as a Child: common.Exchange's control calls,
    over exchange.py's Bench, whose BTCUSDT also has an archive."""

    def __init__(
        self, folder: Path, per_day: int, first: datetime.date, last: datetime.date, shuffled
    ):
        super().__init__(folder, len(LIVE_SYMBOLS))
        spec = f"{per_day},{first},{last},{int(shuffled)}"
        self.argv = [str(a) for a in (PYTHON, __file__, "--serve-live", spec)]


class Visibility:
    """When each live tick becomes visible to another connection: tests/bench/visible.py,
    which is told how long to run and writes what it saw only at its end, run in segments of
    SEGMENT seconds, each started OVERLAP seconds before the last one ends, until `stop()`
    and TAIL seconds beyond. A tick seen by two segments keeps the earlier time."""

    def __init__(self, folder: Path, db_path: Path, symbols):
        self.folder, self.db_path, self.symbols = folder, db_path, list(symbols)
        self.segments: list[tuple[Child, Path]] = []
        self._stop = threading.Event()
        self._stop_at = math.inf
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Visibility":
        self._thread.start()
        return self

    def _launch(self) -> None:
        out = self.folder / f"visible{len(self.segments)}.json"
        argv = [PYTHON, BENCH / "visible.py", self.db_path, out, SEGMENT, *self.symbols]
        self.segments.append((Child(argv, self.folder / "visible.log").start(), out))

    def _run(self) -> None:
        while True:
            began = time.monotonic()
            self._launch()
            ends = began + SEGMENT
            if self._stop.wait(SEGMENT - OVERLAP) and ends >= self._stop_at + TAIL:
                return
            if self._stop.is_set():  # one more segment covers the tail
                time.sleep(max(0.0, ends - OVERLAP - time.monotonic()))

    def stop(self) -> dict[tuple[str, int], float]:
        """{(symbol, id): the wall-clock time it was first seen}, once every segment ended."""
        self._stop_at = time.monotonic()
        self._stop.set()
        self._thread.join(SEGMENT + 10)
        seen: dict[tuple[str, int], float] = {}
        for child, out in self.segments:
            if child.proc.wait(timeout=SEGMENT + 30) != 0:
                raise RuntimeError(f"visible.py failed: {child.log()[-2000:]}")
            for symbol, pairs in json.loads(out.read_text()).items():
                for trade_id, at in pairs:
                    key = (symbol, trade_id)
                    seen[key] = min(at, seen.get(key, math.inf))
        return seen

    def close(self) -> None:
        """Stop every segment still running (after a failure); idempotent."""
        self._stop_at = -math.inf  # no segment for the tail: nobody reads it any more
        self._stop.set()
        self._thread.join(SEGMENT + 10)
        for child, _ in self.segments:
            child.stop()


class Poller(threading.Thread):
    """GET /status every STATUS_EVERY seconds until `halt`: (wall-clock time, seconds or None
    for a failure or a 10 s timeout, -wal bytes) per request."""

    def __init__(self, url: str, wal: Path):
        super().__init__(daemon=True)
        self.url, self.wal = url, wal
        self.samples: list[tuple[float, float | None, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        due = time.monotonic()
        while not self.halt.is_set():
            at = time.time()
            try:
                took = get_seconds(self.url, timeout=10.0)
            except OSError:
                took = None
            self.samples.append((at, took, file_size(self.wal)))
            due = max(due + STATUS_EVERY, time.monotonic())
            self.halt.wait(max(0.0, due - time.monotonic()))


def scrape(url: str) -> dict:
    """From the store's /metrics: the write-duration histogram (cumulative buckets by upper
    bound, count, sum) and tickstore_write_errors_total summed over symbols."""
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    out = {"buckets": {}, "count": 0.0, "sum": 0.0, "errors": 0.0}
    for line in text.splitlines():
        match = METRIC.match(line)
        if match is None:
            continue
        name, labels, value = match[1], match[2] or "", float(match[3])
        if name == "tickstore_write_duration_seconds_bucket":
            out["buckets"][float(re.search(r'le="([^"]+)"', labels)[1])] = value
        elif name == "tickstore_write_duration_seconds_count":
            out["count"] = value
        elif name == "tickstore_write_duration_seconds_sum":
            out["sum"] = value
        elif name == "tickstore_write_errors_total":
            out["errors"] += value
    return out


class Window:
    """One stretch of the live round: its wall-clock bounds, and the store's /metrics, the
    store's and the fake's CPU at both ends."""

    def __init__(self, name: str, store: Store, fake: Exchange):
        self.name, self.store, self.fake = name, store, fake
        self.metrics = [scrape(store.url("/metrics"))]
        self.cpu = [(store.cpu(), fake.cpu())]
        self.start = time.time()
        self.end = math.inf

    def close(self) -> "Window":
        self.end = time.time()
        self.cpu.append((self.store.cpu(), self.fake.cpu()))
        self.metrics.append(scrape(self.store.url("/metrics")))
        return self

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def has(self, at: float) -> bool:
        return self.start <= at < self.end


def writes_text(before: dict, after: dict) -> tuple[str, float]:
    """The store's writes between two scrapes, from the histogram's buckets: upper bounds of
    the p50, p99 and slowest bucket, those over 25 and 100 ms, the mean; and the errors."""
    n = after["count"] - before["count"]
    errors = after["errors"] - before["errors"]
    if n <= 0:
        return "no writes", errors
    counts = [(b, after["buckets"][b] - before["buckets"].get(b, 0.0)) for b in after["buckets"]]
    counts.sort()

    def bound(fraction: float) -> str:
        limit = next(b for b, c in counts if c >= fraction * n)
        return "> 5 s" if math.isinf(limit) else f"<= {limit * 1000:g} ms"

    over = {ms: n - dict(counts)[ms / 1000] for ms in (25, 100)}
    mean = (after["sum"] - before["sum"]) / n * 1000
    text = (
        f"p50 {bound(0.5)}, p99 {bound(0.99)}, max {bound(1.0)}; over 25 ms {over[25]:.0f}, "
        f"over 100 ms {over[100]:.0f}; mean {mean:.2f} ms ({n:,.0f} writes)"
    )
    return text, errors


def ms_text(seconds: list[float], unit: str, missing: int = 0) -> str:
    """`p50 1.23 ms, p99 4.5 ms, max 6.7 ms (n unit)` of durations in seconds."""
    if not seconds:
        return f"none ({missing} {unit} failed or never seen)"
    ms = [s * 1000 for s in seconds]
    lost = f", {missing} failed or never seen" if missing else ""
    return (
        f"p50 {statistics.median(ms):.2f} ms, p99 {percentile(ms, 0.99):.1f} ms, "
        f"max {max(ms):.1f} ms ({len(ms):,} {unit}{lost})"
    )


def archive_span(today: datetime.date) -> tuple[datetime.date, datetime.date, int]:
    """(first day, last day, days of the month): the live round's archive runs from the first
    day of the previous calendar month to yesterday; the month's length sizes it."""
    first = (today.replace(day=1) - datetime.timedelta(days=1)).replace(day=1)
    return (
        first,
        today - datetime.timedelta(days=1),
        calendar.monthrange(first.year, first.month)[1],
    )


def wait_edge(fake: Exchange, db_path: Path, timeout: float) -> dict:
    """Wait until every live table holds the last id the fake made when this began; the
    fake's counts then."""
    counts = fake.call("counts")
    deadline = time.monotonic() + timeout
    while True:
        have = table_stats(db_path, LIVE_SYMBOLS)
        if all((have[s][2] or 0) >= counts[s][1] for s in LIVE_SYMBOLS):
            return counts
        if time.monotonic() > deadline:
            raise TimeoutError(f"the store holds {have}, the fake made {counts}")
        time.sleep(0.2)


def live_round(total: int, quick: bool, shuffled: bool = False) -> dict:
    """The import of a month into the database of a store that records live trades: the
    store's /status, send-to-visible latency, writes and lock errors before, during and
    after it, and completeness at the end. See the module's docstring."""
    today = datetime.datetime.now(datetime.UTC).date()
    first, last, month_days = archive_span(today)
    per_day = -(-total // month_days)
    days = (last - first).days + 1
    archived = per_day * days
    month = first.strftime("%Y-%m")
    before_seconds = 10.0 if quick else 30.0
    order = "shuffled" if shuffled else "in id order"
    say(
        f"import live: {len(LIVE_SYMBOLS)} symbols at {LIVE_RATE:g} trades/s; {SYMBOL} archive "
        f"{first} .. {last} ({per_day:,} a day, {archived:,} trades; monthly file {month}, "
        f"{order})"
    )
    with (
        workdir("import-live") as folder,
        started(ArchiveExchange(folder, per_day, first, last, shuffled)) as fake,
    ):
        url = fake.rest_url
        fetch(url + ARCHIVE.format(symbol=SYMBOL, month=month) + ".CHECKSUM")  # builds the zip
        env = {"BINANCE_WS_URL": fake.ws_url, "BINANCE_REST_URL": fake.rest_url}
        log = folder / "import.log"
        with started(Store(folder, env, db_path=folder / "live.db")) as store:
            store.enable(LIVE_SYMBOLS)
            fake.wait_subscribed(len(LIVE_SYMBOLS), 60, store)
            fake.call("skip", symbol=SYMBOL, n=SKIPPED)
            fake.call("probes", symbols=",".join(LIVE_SYMBOLS))
            seen = Visibility(folder, store.db_path, LIVE_SYMBOLS)
            poller = Poller(store.url(), Path(f"{store.db_path}-wal"))
            try:
                seen.start()
                poller.start()
                fake.call("paced", rate=LIVE_RATE)
                time.sleep(5.0)  # the load settles before the first window, as in load.py
                before = Window("before", store, fake)
                time.sleep(before_seconds)
                before.close()
                say(f"import live: {SYMBOL} {first} .. now, into the store's database")
                during = Window("import", store, fake)
                seconds, peak, reader, status = run_import(
                    store.db_path, url, log, first.isoformat(), None
                )
                during.close()
                if status != 0:
                    raise RuntimeError(f"the import beside the store failed: {log.read_text()}")
                wait_edge(fake, store.db_path, 60)
                after = Window("after", store, fake)
                time.sleep(during.seconds)
                after.close()
                fake.call("paced", rate=0)
                visible = seen.stop()
            finally:
                poller.halt.set()
                poller.join(15)
                seen.close()
            sent = fake.call("sent")
            counts = wait_edge(fake, store.db_path, 60)
            stats = table_stats(store.db_path, LIVE_SYMBOLS)
            final = scrape(store.url("/metrics"))
            failed_lines = len(store.lines("write failed"))
            gaps = len(store.lines("gap found"))
        summary = log.read_text()
    say(f"import live: {summary.strip().splitlines()[-1]}")
    windows = (before, during, after)
    # Completeness: every live id of every symbol; BTCUSDT from the month's first id on.
    month_first = counts[SYMBOL][0] - archived
    expected = {s: tuple(counts[s][k] for k in (2, 0, 1)) for s in LIVE_SYMBOLS}
    edge = counts[SYMBOL][1]
    expected[SYMBOL] = (edge - month_first + 1, month_first, edge)
    wrong = [s for s in LIVE_SYMBOLS if tuple(stats[s]) != expected[s]]
    live_made = sum(counts[s][2] for s in LIVE_SYMBOLS)
    rest = re.search(r"([\d,]+) trades from REST", summary)
    rest_rows = int(rest[1].replace(",", "")) if rest else 0

    figure(
        "import live: the load",
        f"{len(LIVE_SYMBOLS)} symbols, {LIVE_RATE:g} trades/s in all",
        "",
        f"windows: before {before.seconds:.0f} s, import {during.seconds:.1f} s, "
        f"after {after.seconds:.1f} s",
    )
    figure(
        "import live: the import beside the store",
        f"{seconds:.1f} s, {archived / seconds:,.0f} rows/s",
        "",
        f"{archived:,} archived trades ({month} monthly file, {order}"
        f"{f' + {days - month_days} daily files' if days > month_days else ''})"
        f" + {rest_rows:,} from REST; exit {status}",
    )
    figure("import live: peak RSS of the import, of its reader", f"{peak:.1f}, {reader:.1f}", "MB")
    out = {"seconds": seconds, "rows_per_s": archived / seconds, "rss": peak, "rows": archived}
    for w in windows:
        statuses = [t for at, t, _ in poller.samples if w.has(at) and t is not None]
        failed = sum(1 for at, t, _ in poller.samples if w.has(at) and t is None)
        wal = [b for at, _, b in poller.samples if w.has(at)]
        cuts = sum(1 for x, y in itertools.pairwise(wal) if y < x / 2)  # the store's TRUNCATE
        lags = [visible[(s, i)] - at for s, i, at in sent if w.has(at) and (s, i) in visible]
        unseen = sum(1 for s, i, at in sent if w.has(at) and (s, i) not in visible)
        writes, errors = writes_text(*w.metrics)
        store_cpu = (w.cpu[1][0] - w.cpu[0][0]) / w.seconds * 100
        fake_cpu = (w.cpu[1][1] - w.cpu[0][1]) / w.seconds * 100
        figure(f"import live: /status, {w.name}", ms_text(statuses, "requests", failed))
        figure(f"import live: send to visible, {w.name}", ms_text(lags, "ticks", unseen))
        figure(f"import live: store writes (histogram), {w.name}", writes)
        figure(
            f"import live: errors, CPU, WAL, {w.name}",
            f"{errors:.0f} write errors; store {store_cpu:.1f} %, fake {fake_cpu:.1f} % of a core;"
            f" WAL max {max(wal, default=0) / 1e6:.1f} MB, truncated {cuts} times",
        )
        out[w.name] = {
            "status": statuses,
            "status_failed": failed,
            "lags": lags,
            "unseen": unseen,
            "errors": errors,
            "writes": writes,
        }
    figure(
        "import live: write errors since the store started",
        f"{final['errors']:.0f}",
        "",
        f"{failed_lines} 'write failed' log lines, {gaps} 'gap found'; must be 0",
    )
    figure(
        "import live: completeness",
        f"{sum(stats[s][0] for s in LIVE_SYMBOLS):,} stored",
        "",
        f"{len(wrong)} tables off; {live_made:,} live ids made ({SKIPPED:,} of {SYMBOL}'s "
        f"never streamed); {SYMBOL} ids {month_first}..{edge}: {stats[SYMBOL][0]:,} of "
        f"{edge - month_first + 1:,}",
    )
    if wrong or final["errors"]:
        raise RuntimeError(
            f"live round incomplete: tables {wrong}: {stats} against {expected}; "
            f"{final['errors']:.0f} write errors"
        )
    out.update(complete=not wrong, write_errors=final["errors"])
    return out


# -- peak RSS by size ----------------------------------------------------------------------


def build_month(www: Path, per_day: int) -> Path:
    """SYMBOL's monthly file of MONTH, `per_day` trades a day (the rows the fake's archive
    makes: its own generator), written as a stream under `www` as the archive lays it out,
    with its CHECKSUM; the zip's path. The fake would hold the whole file in memory."""
    from tickd.fakebinance import (  # noqa: PLC0415 (private: the fake's row generator)
        _CSV_ROW,
        ARCHIVE_COLUMNS,
        FIRST_ID,
        _Archive,
    )

    name = f"{SYMBOL}-aggTrades-{MONTH}"
    path = www / ARCHIVE.format(symbol=SYMBOL, month=MONTH).lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    first = datetime.date.fromisoformat(FIRST)
    archive = _Archive(
        SYMBOL, first, DAYS, per_day, first_id=FIRST_ID - DAYS * per_day, price="100.00"
    )
    rows = map(_CSV_ROW.__mod__, archive.rows(archive.first_id, archive.end_id))
    blocks: queue.Queue = queue.Queue(maxsize=4)
    failed: list[BaseException] = []

    def deflate(member) -> None:  # zlib lets go of the GIL: the rows are made meanwhile
        try:
            while (block := blocks.get()) is not None:
                member.write(block)
        except BaseException as exc:  # handed to the caller
            failed.append(exc)
            while blocks.get() is not None:  # let the producer finish
                pass

    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zipped,
        zipped.open(name + ".csv", "w", force_zip64=True) as member,
    ):
        worker = threading.Thread(target=deflate, args=(member,))
        worker.start()
        try:
            blocks.put((ARCHIVE_COLUMNS + "\n").encode())
            while block := "".join(itertools.islice(rows, 100_000)):
                blocks.put(block.encode())
        finally:
            blocks.put(None)
            worker.join()
    if failed:
        raise failed[0]
    digest = hashlib.sha256()
    with open(path, "rb") as zipped_file:
        while chunk := zipped_file.read(1 << 20):
            digest.update(chunk)
    Path(f"{path}.CHECKSUM").write_text(f"{digest.hexdigest()}  {name}.zip\n")
    return path


def rss_sizes(sizes: list[int]) -> list[dict]:
    """For each size, the import of one monthly file of that many rows on an empty database:
    seconds, rows/s, peak RSS of the command and of its reader."""
    out = []
    with workdir("import-rss") as folder:
        www, db, log = folder / "www", folder / "rss.db", folder / "import.log"
        for size in sizes:
            per_day = -(-size // DAYS)
            total = per_day * DAYS
            say(f"import rss: writing a monthly file of {total:,} rows")
            began = time.monotonic()
            path = build_month(www, per_day)
            say(
                f"import rss: {path.stat().st_size / 1e6:,.0f} MB zip in "
                f"{time.monotonic() - began:.0f} s; the import"
            )
            argv = [PYTHON, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"]
            server = Child([*argv, "--directory", www], folder / f"http-{size}.log")
            with started(server):
                port = server.wait_for_line(r"port (\d+)")[1]
                remove(db)
                new_database(db).close()
                seconds, peak, reader, status = run_import(db, f"http://127.0.0.1:{port}", log)
            if status != 0:
                raise RuntimeError(f"the import of {total:,} rows failed: {log.read_text()}")
            check(db, total, integrity=False)  # the import's own audit walked every id
            say(f"import rss: {total:,} rows in {seconds:.1f} s")
            remove(db)
            path.unlink()
            out.append({"rows": total, "seconds": seconds, "rss": peak, "reader_rss": reader})
            figure(
                f"import rss: {total:,} rows",
                f"{peak:.1f} MB, reader {reader:.1f} MB",
                "",
                f"{total / seconds:,.0f} rows/s, {seconds:.0f} s; target < 150 MB at 100 M",
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="300,000 rows")
    parser.add_argument("--rows", type=int, help="rows in the monthly file (default 2,000,000)")
    parser.add_argument("--shuffled", action="store_true", help="rows in a random order")
    parser.add_argument("--no-live", action="store_true", help="leave out the live-store round")
    parser.add_argument(
        "--rss-sizes", help="only the peak RSS at these sizes (rows, comma-separated)"
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the fake, as a child
    parser.add_argument("--serve-live", help=argparse.SUPPRESS)  # the live round's fake
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.shuffled)
        return 0
    if args.serve_live:
        per_day, first, last, shuffled = args.serve_live.split(",")
        serve_live(int(per_day), first, last, shuffled == "1")
        return 0
    say(f"import: tickd under test: {tree_state()}")
    if args.rss_sizes:
        rss_sizes([int(n) for n in args.rss_sizes.replace("_", "").split(",")])
    else:
        run(args.quick, args.rows, args.shuffled, live=not args.no_live)
    say(f"import: tickd under test at the end: {tree_state()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
