"""The store with changes patched in at start, to measure a proposal before anyone writes it.

    PYTHONPATH=. .venv/bin/python tests/bench/variant.py [PATCH ...]

Runs `tickd.app.run(os.environ)` like `python -m tickd`, after replacing one function per
PATCH; with no PATCH it is the store as shipped (the bench starts every store this way).
Nothing in tickd/ is edited; the bench compares variants in one run on the same load.
A patch whose target no longer exists in tickd stops the process with exit code 3 and says so.

  checkpoint_locked  the WAL checkpoint (PASSIVE, in the thread pool, every second) holds the
                     database Semaphore while it runs, so no commit of the store lands during
                     it: it then copies every frame, and the next commit restarts the WAL from
                     its start (journal_size_limit trims the file). Replaces the store's own
                     checkpoint, which copies while commits go on, so the WAL is never
                     restarted: it grows until a TRUNCATE cuts it past 64 MiB.
  lean_insert        a tick's INSERT runs directly under the Semaphore when nobody holds it,
                     without the latency histogram, the retry closure and the one-tick tuple;
                     any error falls back to the full path (retry, re-create, log).
  yield_batches      the stream reader yields to the hub (gevent.sleep(0)) before each read
                     of the socket, so a stream whose socket always has data (a burst, a
                     backlog after a stall) cannot keep timers, /status and the other streams
                     from running.
  slow_checkpoint    the checkpoint runs every 5 s instead of every second: a leaf page that
                     100 commits rewrote is copied to the database file once, not five times.
  sqlite_autocheckpoint
                     SQLite's default instead of the checkpoint thread: the store's own
                     connection checkpoints after the commit that takes the WAL past 1,000
                     pages, on the hub (its fsync stalls every greenlet). What the thread costs.
  no_write           the INSERT is skipped (nothing stored): what reading, parsing and the
                     hub cost without the commit. Not a proposal, a measure of the floor.
  page_cache         the store's connection keeps 64 MiB of pages instead of SQLite's 2 MB:
                     the pages each INSERT reads (two B-tree paths per table: rows and the
                     timestamp index) of hundreds of tables stay in memory.
  page_1k, page_2k   a new database file gets pages of 1,024 or 2,048 bytes instead of 4,096:
                     each commit writes (and checksums) two pages to the WAL, a table leaf and
                     an index leaf, so a smaller page is fewer bytes per tick. Readers of the
                     file then walk more, smaller pages.
  mmap               SQLite reads the database file through a 256 MiB memory map (mmap_size)
                     instead of read() into its page cache.
  libuv              gevent's libuv loop instead of libev (GEVENT_LOOP=libuv does the same).

With BENCH_TURNS=PREFIX in the environment (not a patch: it changes nothing the store does), the
store also times the turns of its event loop (a prepare watcher: from one turn's start to the
next), each /status page's collect and render, and each checkpoint, and writes the turns of over
10 ms, every page and every checkpoint to PREFIX.PID.json when it stops; `turns.py` summarises.
With BENCH_CALLS=PREFIX, the store runs under cProfile and writes PREFIX.PID.prof when it stops:
its times are cProfile's (slowed, and greenlet switches blur them), its call counts exact.
"""

from gevent import monkey

monkey.patch_all()

import cProfile  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sqlite3  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

from tickd import app, database  # noqa: E402
from tickd.app import run  # noqa: E402

Database = database.Database
# The class that holds the connection: `Handle` since the split, `Database` before it.
File = getattr(database, "Handle", Database)


def _file(db):
    return getattr(db, "file", db)


def checkpoint_locked() -> None:
    def checkpoint(self):
        conn = self._checkpointer
        if conn is None:
            raise sqlite3.ProgrammingError("database is closed")
        pool = gevent.get_hub().threadpool
        with self._semaphore:
            r = pool.apply(lambda: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
            if os.environ.get("BENCH_DEBUG"):
                print("ckpt", r, flush=True)
            return r

    File.checkpoint = checkpoint


def lean_insert() -> None:
    full = Database.insert

    def insert(self, symbol, tick):
        tables = self._tables.get(symbol)
        handle = _file(self)
        semaphore = handle._semaphore
        if tables is not None and handle._conn is not None and not semaphore.locked():
            with semaphore:
                try:
                    handle._conn.execute(tables.insert, tick)
                    return True
                except sqlite3.Error:
                    pass
        return full(self, symbol, tick)

    Database.insert = insert


def yield_batches() -> None:
    from tickd import frames  # noqa: PLC0415 (the batch reader, absent from older trees)

    read = frames.Reader.read

    def yielding_read(self):
        gevent.sleep(0)  # let timers, /status and the other streams run between batches
        return read(self)

    frames.Reader.read = yielding_read


def slow_checkpoint() -> None:
    from tickd import app  # noqa: PLC0415

    app.CHECKPOINT_INTERVAL = 5.0


def sqlite_autocheckpoint() -> None:
    setup = File._setup

    def autocheckpoint_setup(conn):
        setup(conn)
        conn.execute("PRAGMA wal_autocheckpoint = 1000")

    File._setup = staticmethod(autocheckpoint_setup)
    File.checkpoint = lambda self: (0, 0, 0)


def no_write() -> None:
    Database.insert = lambda self, symbol, tick: True


def _pragma(statement: str) -> None:
    setup = File._setup

    def setup_with(conn):
        setup(conn)
        conn.execute(statement)

    File._setup = staticmethod(setup_with)


def _page_size(size: int) -> None:
    setup = File._setup

    def setup_with(conn):
        # Before WAL mode: a new file's page size is fixed when its header is first written.
        conn.execute(f"PRAGMA page_size = {size}")
        setup(conn)

    File._setup = staticmethod(setup_with)


def page_1k() -> None:
    _page_size(1024)


def page_2k() -> None:
    _page_size(2048)


def page_cache() -> None:
    _pragma("PRAGMA cache_size = -65536")


def mmap() -> None:
    _pragma("PRAGMA mmap_size = 268435456")


def libuv() -> None:
    gevent.config.loop = "libuv"
    loop = gevent.get_hub().loop  # made now, unless a hub existed already
    if "libuv" not in type(loop).__module__:
        raise AttributeError(f"the hub runs {type(loop).__module__} already")


PATCHES = {
    "checkpoint_locked": checkpoint_locked,
    "lean_insert": lean_insert,
    "yield_batches": yield_batches,
    "slow_checkpoint": slow_checkpoint,
    "sqlite_autocheckpoint": sqlite_autocheckpoint,
    "no_write": no_write,
    "page_cache": page_cache,
    "page_1k": page_1k,
    "page_2k": page_2k,
    "mmap": mmap,
    "libuv": libuv,
}


class Turns:
    """BENCH_TURNS: the loop's turns of over 10 ms, every page and every checkpoint, each as
    (wall-clock time it ended, seconds it took); a checkpoint also with the seconds it held the
    connection (all but the WAL's sync before it, where the tree has that)."""

    LONG = 0.010

    def __init__(self):
        self.turns: list = []
        self.pages: list = []
        self.checkpoints: list = []
        self._last = None
        self._watcher = gevent.get_hub().loop.prepare(ref=False)
        self._watcher.start(self._turn)
        app.App._page = self._timed(app.App._page, self.pages)
        self._synced = 0.0  # seconds the checkpoint in progress spent in sync_file
        File.checkpoint = self._checkpoint(File.checkpoint)
        if hasattr(database, "sync_file"):
            database.sync_file = self._sync(database.sync_file)

    def _turn(self) -> None:
        now = time.perf_counter()
        if self._last is not None and now - self._last > self.LONG:
            self.turns.append((time.time(), now - self._last))
        self._last = now

    @staticmethod
    def _timed(function, out: list):
        def timed(*args):
            start = time.perf_counter()
            try:
                return function(*args)
            finally:
                out.append((time.time(), time.perf_counter() - start))

        return timed

    def _checkpoint(self, function):
        def timed(*args):
            self._synced, start = 0.0, time.perf_counter()
            try:
                return function(*args)
            finally:
                took = time.perf_counter() - start
                self.checkpoints.append((time.time(), took, took - self._synced))

        return timed

    def _sync(self, function):
        def timed(*args):
            start = time.perf_counter()
            try:
                return function(*args)
            finally:
                self._synced += time.perf_counter() - start

        return timed

    def write(self, prefix: str) -> None:
        self._watcher.stop()
        figures = {"turns": self.turns, "pages": self.pages, "checkpoints": self.checkpoints}
        with open(f"{prefix}.{os.getpid()}.json", "w") as out:
            json.dump(figures, out)


def main() -> int:
    turns = Turns() if os.environ.get("BENCH_TURNS") else None
    profile = cProfile.Profile() if os.environ.get("BENCH_CALLS") else None
    if profile is not None:
        profile.enable()
    try:
        return store()
    finally:
        if turns is not None:
            turns.write(os.environ["BENCH_TURNS"])
        if profile is not None:
            profile.disable()
            profile.dump_stats(f"{os.environ['BENCH_CALLS']}.{os.getpid()}.prof")


def store() -> int:
    probe = Database(":memory:") if sys.argv[1:] else None
    for name in sys.argv[1:]:
        try:
            for attribute in ("insert", "_tables"):
                getattr(probe, attribute)
            for attribute in ("checkpoint", "_setup", "_semaphore", "_conn"):
                getattr(_file(probe), attribute)
            PATCHES[name]()
        except (AttributeError, ImportError) as exc:
            print(f"variant {name} does not apply to this tickd: {exc}", flush=True)
            return 3
    # Which tickd runs: the bench checks it (a Store may run another tree's, on PYTHONPATH).
    print(f"variant: tickd from {os.path.dirname(os.path.realpath(database.__file__))}", flush=True)
    return run(os.environ, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
