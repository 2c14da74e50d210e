"""All SQL: the store's one SQLite connection (`Database`), the schema, tick writes, the
reads of the status page, and the statements `tickd.admin` runs on a plain connection,
the history import's among them (its paced bulk writes, `Pacer`, and the id checks).

The module-level functions take any connection opened with `isolation_level=None`; they
wait in SQLite as long as that connection's busy timeout says (admin's waits, the store's
is 0), and `Database` calls them only inside its cooperative retry.

gevent runs every greenlet on one thread, so a C call that waits freezes them all. The
connection therefore never waits inside SQLite: its busy timeout is 0, a statement that
meets another program's lock is retried with gevent.sleep (up to `lock_wait` in all), and
WAL checkpoints, which fsync, run on a second connection in gevent's thread pool.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import gevent
from gevent.lock import Semaphore

from .logs import Throttle, kv
from .metrics import WRITE_BUCKETS, Latency, file_size
from .wire import MAX_ID, Tick

log = logging.getLogger(__name__)

SETTINGS_DDL = (
    "CREATE TABLE IF NOT EXISTS symbol_settings (\n"
    "    symbol  TEXT PRIMARY KEY,\n"
    "    enabled INTEGER DEFAULT 1\n"
    ")"
)
PRICES_DDL = (
    "CREATE TABLE IF NOT EXISTS {table} (\n"
    "    id        INTEGER PRIMARY KEY AUTOINCREMENT,\n"
    "    timestamp INTEGER NOT NULL,\n"
    "    price     REAL NOT NULL\n"
    ")"
)
INDEX_DDL = "CREATE INDEX IF NOT EXISTS {index} ON {table}(timestamp)"

# Statements are prepared once per SQL text and cached by the sqlite3 module; each symbol
# has its own INSERT, so the cache must hold one per symbol or they are re-prepared per tick.
STATEMENT_CACHE = 4096
_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
WAL_LIMIT = 64 << 20  # bytes the WAL file is cut back to after a checkpoint
# How far ahead of the highest id stored the store keeps a table's `seq` in sqlite_sequence.
# AUTOINCREMENT makes an INSERT whose id passes `seq` rewrite that row, so each tick's commit
# wrote three pages to the WAL (the table's leaf, the index's, sqlite_sequence's) where two
# do; an id at or below `seq` leaves it alone. A million ids is hours of the busiest symbol's
# trades, years of a quiet one's. `seq` stays above every id, as AUTOINCREMENT needs, but is
# no longer the highest id: that is `MAX(id)`.
SEQ_LEAD = 1_000_000
SEQ_AHEAD = "UPDATE sqlite_sequence SET seq = ? WHERE name = ? AND seq < ?"


def sync_file(path: str) -> None:
    """fdatasync the file at `path`, if there is one. Meant for a WAL: SQLite takes no POSIX
    lock on it (they are on the database and the -shm), so closing our descriptor of it
    releases none of theirs, as it would for the database file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _identity(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def quote(identifier: str) -> str:
    """`identifier` as an SQL identifier: double-quoted, embedded quotes doubled."""
    return '"' + identifier.replace('"', '""') + '"'


def is_busy(exc: sqlite3.Error) -> bool:
    """True if `exc` says another connection holds a lock we need."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _BUSY_CODES


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction around the block: BEGIN IMMEDIATE (raises at once, before the
    block, if the write lock cannot be had), COMMIT after it, ROLLBACK if anything raises,
    COMMIT included; a transaction SQLite has already rolled back is left as it is."""
    conn.execute("BEGIN IMMEDIATE")
    with committed(conn):
        yield


@contextlib.contextmanager
def committed(conn: sqlite3.Connection) -> Iterator[None]:
    """COMMIT the transaction already begun after the block; ROLLBACK if anything raises,
    COMMIT included (a transaction SQLite has already rolled back is left as it is)."""
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    """True if the file has a table called exactly `name`."""
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return found.fetchone() is not None


def read_settings(conn: sqlite3.Connection) -> list[tuple[object, object]]:
    """Rows of symbol_settings as (symbol, enabled), in insertion order, raw as stored.
    Raises sqlite3.OperationalError if there is no such table."""
    return conn.execute("SELECT symbol, enabled FROM symbol_settings ORDER BY rowid").fetchall()


def add_symbol(conn: sqlite3.Connection, symbol: str) -> bool:
    """Add `symbol` to symbol_settings, enabled, or enable the row that has it (creating the
    table if missing); True if it was listed already. Run it inside `transaction`."""
    conn.execute(SETTINGS_DDL)
    found = conn.execute("SELECT 1 FROM symbol_settings WHERE symbol = ?", (symbol,))
    listed = found.fetchone() is not None
    conn.execute(
        "INSERT INTO symbol_settings (symbol, enabled) VALUES (?, 1) "
        "ON CONFLICT(symbol) DO UPDATE SET enabled = 1",
        (symbol,),
    )
    return listed


def set_enabled(conn: sqlite3.Connection, names: Iterable[object], on: bool) -> None:
    """Set `enabled` of the symbol_settings rows whose text is exactly one of `names`."""
    conn.executemany(
        "UPDATE symbol_settings SET enabled = ? WHERE symbol = ?",
        [(int(on), name) for name in names],
    )


def remove_symbols(conn: sqlite3.Connection, names: Iterable[object]) -> None:
    """Delete the symbol_settings rows whose text is exactly one of `names` (matched with ?,
    never pasted into the SQL)."""
    conn.executemany("DELETE FROM symbol_settings WHERE symbol = ?", [(name,) for name in names])


def day_query(symbol: str) -> str:
    """The ticks of one time range, by time, along the timestamp index (which ends in the
    id, so the ORDER BY needs no sort). Parameters: start and end in ms, end excluded."""
    return (
        f"SELECT id, timestamp, price FROM {quote('prices_' + symbol)} "
        "WHERE timestamp >= ? AND timestamp < ? ORDER BY timestamp, id"
    )


def backup(conn: sqlite3.Connection, path: str) -> list[str]:
    """Copy the database of `conn` into the (new, empty) file at `path`, as one
    self-contained file; returns SQLite's integrity check of the copy, `["ok"]` if sound."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as copy:
        # In one step: the copy is one read snapshot, which in WAL mode never blocks the
        # store's writes. Copied in steps, it would start over after every commit the
        # store makes meanwhile, and never end while ticks arrive.
        conn.backup(copy)
        copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        return [row[0] for row in copy.execute("PRAGMA integrity_check")]


# -- the history import (tickd.history, run by tickd.admin) ------------------------------

HISTORY_DDL = (
    "CREATE TABLE IF NOT EXISTS history_import (\n"
    "    symbol   TEXT NOT NULL,\n"
    "    period   TEXT NOT NULL,\n"
    "    first_id INTEGER NOT NULL,\n"
    "    last_id  INTEGER NOT NULL,\n"
    "    source   TEXT NOT NULL,\n"
    "    sha256   TEXT,\n"
    "    PRIMARY KEY (symbol, period)\n"
    ")"
)
# The store waits for the write lock in steps that double up to 100 ms (Handle.run): a pause
# longer than that lets every writer in that has been waiting, whatever its step.
STORE_RETRY_STEP = 0.1


def create_prices(conn: sqlite3.Connection, symbol: str) -> None:
    """Create `prices_<symbol>` and its timestamp index if missing, as the store does, and the
    history import's own table. Run it inside `transaction`."""
    table = quote("prices_" + symbol)
    conn.execute(PRICES_DDL.format(table=table))
    conn.execute(INDEX_DDL.format(index=quote(f"idx_prices_{symbol}_timestamp"), table=table))
    conn.execute(HISTORY_DDL)


def tick_before(conn: sqlite3.Connection, symbol: str, ms: int) -> tuple[int, int] | None:
    """(id, timestamp) of the last stored tick traded before `ms`; one step down the
    timestamp index (which ends in the id)."""
    return conn.execute(
        f"SELECT id, timestamp FROM {quote('prices_' + symbol)} "
        "WHERE timestamp < ? ORDER BY timestamp DESC, id DESC LIMIT 1",
        (ms,),
    ).fetchone()


def tick_since(conn: sqlite3.Connection, symbol: str, ms: int) -> tuple[int, int] | None:
    """(id, timestamp) of the first stored tick traded at `ms` or later."""
    return conn.execute(
        f"SELECT id, timestamp FROM {quote('prices_' + symbol)} "
        "WHERE timestamp >= ? ORDER BY timestamp, id LIMIT 1",
        (ms,),
    ).fetchone()


def tick_at(conn: sqlite3.Connection, symbol: str, trade_id: int) -> tuple[int, int] | None:
    """(id, timestamp) of the stored tick with that id, None if there is none."""
    return conn.execute(
        f"SELECT id, timestamp FROM {quote('prices_' + symbol)} WHERE id = ?", (trade_id,)
    ).fetchone()


def id_below(conn: sqlite3.Connection, symbol: str, trade_id: int) -> int | None:
    """The highest stored id below `trade_id`, None if there is none."""
    return conn.execute(
        f"SELECT max(id) FROM {quote('prices_' + symbol)} WHERE id < ?", (trade_id,)
    ).fetchone()[0]


def last_tick(conn: sqlite3.Connection, symbol: str) -> tuple[int, int] | None:
    """(id, timestamp) of the stored tick with the highest id, None if the table is empty."""
    return conn.execute(
        f"SELECT id, timestamp FROM {quote('prices_' + symbol)} ORDER BY id DESC LIMIT 1"
    ).fetchone()


def count_ids(conn: sqlite3.Connection, symbol: str, first: int, last: int) -> int:
    """How many ids from `first` to `last` (both included) are stored: a range of the
    primary key, counted in SQLite. Equal to last - first + 1 when none is missing."""
    return conn.execute(
        f"SELECT count(*) FROM {quote('prices_' + symbol)} WHERE id BETWEEN ? AND ?",
        (first, last),
    ).fetchone()[0]


def missing_ids(
    conn: sqlite3.Connection, symbol: str, first: int, last: int, chunk: int = 20_000
) -> Iterator[tuple[int, int]]:
    """The ranges (from, to, both included) of ids from `first` to `last` that are not
    stored, in order, by walking the primary key `chunk` ids at a time (as Database.holes
    does); each chunk's cursor is closed before its ranges are yielded, so the caller may
    write between them."""
    table = quote("prices_" + symbol)
    sql = f"SELECT id FROM {table} WHERE id >= ? AND id <= ? ORDER BY id LIMIT ?"
    previous = first - 1
    while True:
        found, count = [], 0
        for (current,) in conn.execute(sql, (previous + 1, last, chunk)):
            if current > previous + 1:
                found.append((previous + 1, current - 1))
            previous, count = current, count + 1
        yield from found
        if count < chunk:
            break
    if previous < last:
        yield previous + 1, last


def id_ends(conn: sqlite3.Connection, symbol: str) -> tuple[int | None, int | None]:
    """(lowest, highest) stored id, (None, None) for an empty table. Two subqueries, each
    one lookup at an end of the primary key; `SELECT min(id), max(id)` scans the whole table
    (4 s for 20 M rows)."""
    table = quote("prices_" + symbol)
    return conn.execute(
        f"SELECT (SELECT min(id) FROM {table}), (SELECT max(id) FROM {table})"
    ).fetchone()


RUN_WINDOW = 32_768  # ids counted per query when looking for a hole (about 2 ms of SQLite)


def run_start(
    count: Callable[[int, int], int],
    top: int,
    bottom: int,
    known: tuple[int, int] | None = None,
    window: int = RUN_WINDOW,
) -> int:
    """The first id of the continuous run of stored ids that ends at `top`, the highest
    stored id; `bottom` is the lowest. `count(a, b)` says how many ids from a to b are
    stored. `known` = (first, last), a run found complete earlier, is taken as it is (rows
    are never deleted): only the ids after it, and those below it, are counted.

    Walks down `window` ids per count; a window with a hole is bisected. The first call on
    a table of n ids makes about n / window counts, a later one with `known` two or three."""
    start = top
    if known is not None:
        first, last = known
        if bottom <= first <= last <= top and (last == top or count(last + 1, top) == top - last):
            start = first
    while start > bottom and count(start - 1, start - 1):
        low, high = max(bottom, start - window), start - 1
        if count(low, high) == high - low + 1:
            start = low
            continue
        # A hole in low..high: the least s with every id from s to high stored.
        low += 1
        while low < start:
            middle = (low + start) // 2
            if count(middle, high) == high - middle + 1:
                start = middle
            else:
                low = middle + 1
        return start
    return start


def continuous_run(
    conn: sqlite3.Connection, symbol: str, known: tuple[int, int] | None = None
) -> tuple[int, int, int] | None:
    """(first id, its timestamp, last id) of the continuous run of ids that ends at the
    newest tick of `symbol`; None if the table is empty. See `run_start`."""
    bottom, top = id_ends(conn, symbol)
    if top is None:
        return None
    first = run_start(lambda a, b: count_ids(conn, symbol, a, b), top, bottom, known)
    return first, tick_at(conn, symbol, first)[1], top


def imported(conn: sqlite3.Connection, symbol: str, period: str) -> tuple[int, int] | None:
    """(first id, last id) recorded by `record_import` for `period` of `symbol`, None if
    there is none (or no history_import table)."""
    if not has_table(conn, "history_import"):
        return None
    return conn.execute(
        "SELECT first_id, last_id FROM history_import WHERE symbol = ? AND period = ?",
        (symbol, period),
    ).fetchone()


def record_import(
    conn: sqlite3.Connection,
    symbol: str,
    period: str,
    ids: tuple[int, int],
    *,
    source: str,
    sha256: str | None = None,
) -> None:
    """Note that every id of `period` (a UTC day `YYYY-MM-DD` or month `YYYY-MM`) of
    `symbol`, `ids` = (first, last), is stored, and where they came from."""
    with transaction(conn):
        conn.execute(
            "INSERT OR REPLACE INTO history_import "
            "(symbol, period, first_id, last_id, source, sha256) VALUES (?, ?, ?, ?, ?, ?)",
            (symbol, period, *ids, source, sha256),
        )


def imported_sha256(conn: sqlite3.Connection, symbol: str, period: str) -> str | None:
    """The sha256 recorded for `period` of `symbol` if it was stored from an archive file;
    None if it came from REST or is not recorded."""
    if not has_table(conn, "history_import"):
        return None
    row = conn.execute(
        "SELECT sha256 FROM history_import WHERE symbol = ? AND period = ?", (symbol, period)
    ).fetchone()
    return row[0] if row else None


MAX_GATHER = 1 << 17  # rows taken from the source for one transaction, at most


class Pacer:
    """Writes ticks into `prices_<symbol>` on a plain connection (busy timeout about 5 s)
    in transactions of about `seconds` each (time-bounded), beside another program (the
    store) that writes the same file, and gives way to it.

    The store waits for the lock cooperatively, retrying after 1 ms, then 2, 4 ... up to
    STORE_RETRY_STEP, for 5 s before it skips a tick (Handle.run). So:

    - while another connection has committed within the last `quiet` seconds (PRAGMA
      data_version), each pause is as long as the transaction before it: a write that
      began waiting during it retries within that time, and the store keeps up to about
      half the file's write capacity (the import then runs at about half speed);
    - otherwise the pause is `pause`, and after each `idle` seconds of holding the lock
      STORE_RETRY_STEP and a half, longer than the store's slowest retry step: a store
      that starts writing waits at most about `idle` seconds before it is seen.

    A lock held by another program past the busy timeout is waited for again, for
    `lock_wait` seconds in all, then raises. Ticks already stored are ignored (INSERT OR
    IGNORE), in any order; with `correct` (an archive file Binance replaced), a tick
    overwrites the stored row of its id where the timestamp or price differs, nothing is
    deleted, and conn.total_changes grows by one for each tick added or changed.
    """

    __slots__ = (
        "_clock",
        "_conn",
        "_held",
        "_others",
        "_sleep",
        "_sql",
        "_version",
        "chunk",
        "idle",
        "lock_wait",
        "pause",
        "quiet",
        "seconds",
    )

    def __init__(
        self,
        conn: sqlite3.Connection,
        symbol: str,
        *,
        seconds: float = 0.05,
        pause: float = 0.001,
        idle: float = 2.5,
        quiet: float = 5.0,
        chunk: int = 1000,
        lock_wait: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
        correct: bool = False,
    ):
        self._conn = conn
        table = quote("prices_" + symbol)
        self._sql = f"INSERT OR IGNORE INTO {table} VALUES (?, ?, ?)"
        if correct:
            self._sql = (
                f"INSERT INTO {table} VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE "
                "SET timestamp = excluded.timestamp, price = excluded.price "
                "WHERE timestamp != excluded.timestamp OR price != excluded.price"
            )
        self.seconds, self.pause, self.chunk, self.lock_wait = seconds, pause, chunk, lock_wait
        self.idle, self.quiet = idle, quiet
        self._clock, self._sleep = clock, sleep
        self._held = 0.0  # seconds the lock was held since the last long pause
        self._version = self._data_version()
        self._others = -math.inf  # when another connection was last seen committing

    def write(
        self,
        ticks: Iterable[tuple[int, int, float]],
        progress: Callable[[int, tuple | None], object] | None = None,
    ) -> int:
        """Store `ticks` (id, timestamp, price); returns how many it gave. The rows of a
        transaction are taken from the iterable before it begins, as many as the last one
        stored in its time, so the lock is never held while the iterable waits (for its
        reader, or for a sort). `progress(given, last tick)` is called after each commit.
        Raises sqlite3.Error; an exception of the iterable stops before its rows are written.
        """
        source, sql, chunk, clock = iter(ticks), self._sql, self.chunk, self._clock
        given, pending, wanted, exhausted = 0, [], chunk, False
        while True:
            if not exhausted and len(pending) < wanted:
                more = list(itertools.islice(source, wanted - len(pending)))
                exhausted = len(more) < wanted - len(pending)
                pending += more
            if not pending:
                return given
            self._begin()
            start = clock()
            with committed(self._conn):
                done = 0
                while done < len(pending) and (not done or clock() - start < self.seconds):
                    self._conn.executemany(sql, pending[done : done + chunk])
                    done = min(done + chunk, len(pending))
            held = clock() - start
            given, last = given + done, pending[done - 1]
            del pending[:done]
            if progress is not None:
                progress(given, last)
            # As many rows as this transaction's pace stores in `seconds`, within limits.
            wanted = min(MAX_GATHER, max(chunk, int(done * self.seconds / max(held, 1e-4))))
            self._rest(held)

    def _begin(self) -> None:
        deadline = self._clock() + self.lock_wait
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")  # waits up to the busy timeout
                return
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or self._clock() > deadline:
                    raise
            self._sleep(self.pause)

    def _data_version(self) -> int:
        return self._conn.execute("PRAGMA data_version").fetchone()[0]

    def _rest(self, held: float) -> None:
        now, version = self._clock(), self._data_version()
        if version != self._version:  # another connection committed since we last looked
            self._version, self._others = version, now
        if now - self._others < self.quiet:
            self._held = 0.0
            self._sleep(held + 2 * self.pause)  # a retry step may come late by a timer's slack
            return
        self._held += held
        if self._held >= self.idle:
            self._held = 0.0
            self._sleep(STORE_RETRY_STEP * 1.5)
        else:
            self._sleep(self.pause)


class _Tables:
    """The SQL texts of one symbol's table, built once."""

    __slots__ = (
        "after",
        "before",
        "create",
        "first_last",
        "ids_from",
        "index",
        "insert",
        "lead_at",
        "max_id",
        "since",
        "symbol",
    )

    def __init__(self, symbol: str):
        self.symbol = symbol
        table = quote("prices_" + symbol)
        self.create = PRICES_DDL.format(table=table)
        self.index = INDEX_DDL.format(index=quote(f"idx_prices_{symbol}_timestamp"), table=table)
        self.insert = f"INSERT OR IGNORE INTO {table} (id, timestamp, price) VALUES (?, ?, ?)"
        # Two subqueries, each one lookup at an end of the timestamp index;
        # `SELECT MIN(timestamp), MAX(timestamp)` in one query scans the whole table.
        self.first_last = (
            f"SELECT (SELECT MIN(timestamp) FROM {table}), (SELECT MAX(timestamp) FROM {table})"
        )
        self.max_id = f"SELECT MAX(id) FROM {table}"
        self.before = f"SELECT timestamp FROM {table} WHERE id < ? ORDER BY id DESC LIMIT 1"
        self.after = f"SELECT timestamp FROM {table} WHERE id > ? ORDER BY id LIMIT 1"
        self.since = f"SELECT id FROM {table} WHERE timestamp >= ? ORDER BY timestamp LIMIT 1"
        self.ids_from = f"SELECT id FROM {table} WHERE id > ? ORDER BY id LIMIT ?"
        self.lead_at = 0  # an id from which a write moves `seq` ahead again (0: unknown)


class Handle:
    """The store's SQLite file through one connection, shared by greenlets behind a
    Semaphore: opening it in WAL mode, the cooperative lock wait (`run`), checkpoints in the
    thread pool, and noticing the file replaced or deleted under us (`moved`, `reopen`)."""

    def __init__(self, path: str, lock_wait: float, sleep: Callable, clock: Callable[[], float]):
        self.path = path
        self.lock_wait = lock_wait
        self._sleep = sleep
        self._clock = clock
        self._semaphore = Semaphore()
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file opened
        self._sidecars: dict[str, tuple[int, int]] = {}  # the same of its -wal and -shm

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection, for an operation given to `run` (which holds the Semaphore)."""
        if self._conn is None:
            raise sqlite3.ProgrammingError("database is closed")
        return self._conn

    # -- opening and closing -------------------------------------------------------------

    def open(self) -> None:
        """Open the file, set WAL mode and create symbol_settings.

        Raises sqlite3.DatabaseError if the file is not a usable SQLite database.
        """
        # Used only under the Semaphore; a thread touches it only in `reopen`, while the
        # Semaphore keeps every greenlet away.
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            cached_statements=STATEMENT_CACHE,
            check_same_thread=False,
        )
        self._conn = conn
        try:
            self.run(self._setup, conn)
            self._identity = _identity(self.path)
            self._sidecars = {
                name: _identity(name)
                for name in (self.path + "-wal", self.path + "-shm")
                if os.path.exists(name)
            }
            # Checkpoints copy the WAL into the database and fsync: never on the hub.
            self._checkpointer = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
            # Its waits block only its worker thread; short, so that a TRUNCATE gives up
            # rather than hold our writers back when another program is writing.
            self._checkpointer.execute("PRAGMA busy_timeout = 100")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _setup(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA busy_timeout = 0")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.DatabaseError(f"cannot use WAL journal mode (got {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        # After a checkpoint resets the WAL, truncate it to this size, so one long reader
        # elsewhere does not leave a huge file behind for good.
        conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
        conn.execute(SETTINGS_DDL)

    def close(self) -> None:
        """Wait for the statement in flight, then close (SQLite checkpoints and removes the WAL)."""
        with self._semaphore:
            for conn in (self._checkpointer, self._conn):
                if conn is not None:
                    conn.close()
            self._conn = self._checkpointer = None

    def moved(self) -> str | None:
        """None while DB_PATH still names the file this connection has open; else
        "deleted" or "replaced". Writes to a file no longer at the path are lost at the
        next start, so the caller reopens (see `reopen`)."""
        try:
            now = _identity(self.path)
        except FileNotFoundError:
            return "deleted"
        return None if now == self._identity else "replaced"

    def reopen(self, rescue: bool) -> str | None:
        """Close the file we have open and open whatever DB_PATH names now.

        With `rescue` (the file was deleted under us), what it holds, still readable through
        our connection, is first copied to a new file at DB_PATH, so nothing stored is lost.
        Returns the path of the copy, or None. Raises sqlite3.Error or OSError; the
        database is then closed.
        """
        copy = None
        with self._semaphore:
            conn = self._conn
            if conn is not None and rescue and not os.path.exists(self.path):
                copy = f"{self.path}.rescued-{int(time.time())}"

                def save() -> None:
                    with contextlib.closing(sqlite3.connect(copy, isolation_level=None)) as out:
                        conn.backup(out)  # one step: one read snapshot

                # A copy of gigabytes takes seconds: off the hub, while the Semaphore keeps
                # every greenlet away from the connection.
                try:
                    gevent.get_hub().threadpool.apply(save)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.remove(copy)
                    raise
            olds, self._conn, self._checkpointer = (self._checkpointer, conn), None, None
            for old in olds:
                if old is not None:
                    old.close()
            # SQLite leaves the WAL of a file that has moved where it is: the -wal and -shm
            # beside DB_PATH are still the old file's, and opened with the new one they would
            # lay the old pages over it. Ours go (a deleted file's content is in the copy).
            for name, identity in self._sidecars.items():
                with contextlib.suppress(FileNotFoundError):
                    if _identity(name) == identity:
                        os.remove(name)
            if copy is not None and not os.path.exists(self.path):
                os.replace(copy, self.path)
                copy = self.path
        self.open()
        return copy

    @property
    def busy(self) -> bool:
        """A greenlet (or the checkpoint) is using the connection: `run` would wait."""
        return self._semaphore.locked()

    def checkpoint(self) -> tuple[int, int, int]:
        """Copy committed WAL frames into the database, in a worker thread.

        PASSIVE never waits for readers or writers. When it has copied everything and the WAL
        file is over the size limit (after a long reader elsewhere, it can be gigabytes), a
        TRUNCATE empties it: that makes writers wait only for an instant, and ours wait
        cooperatively. Returns SQLite's (busy, wal frames, frames checkpointed) of the PASSIVE.

        The store's own statements wait (cooperatively) while it runs: no commit of ours
        lands during the copy, so it copies every frame and the next commit starts the WAL
        again from its beginning. Copying while commits went on never caught up: the WAL grew
        to the size limit, and each tick cost 8-18 % more CPU (docs/BENCHMARKS.md).

        Most of a checkpoint's time is the fsync of the WAL it starts with (at 10,000 ticks
        a second, 120 MB of new frames): that is done first, while commits go on, so that
        under the lock only the frames of that last moment are left to sync.
        """
        conn = self._checkpointer
        if conn is None:
            raise sqlite3.ProgrammingError("database is closed")
        pool = gevent.get_hub().threadpool
        pool.apply(sync_file, (self.path + "-wal",))

        def run() -> tuple[int, int, int]:
            busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if busy == 0 and frames == done and file_size(self.path + "-wal") > WAL_LIMIT:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return busy, frames, done

        with self._semaphore:
            return pool.apply(run)

    # -- the cooperative lock wait -------------------------------------------------------

    def run(self, operation: Callable, *args: object):
        """Run `operation(*args)` under the Semaphore; retry it while another program holds
        a lock, sleeping cooperatively (1 ms doubling to 100 ms), for at most `lock_wait`."""
        deadline = self._clock() + self.lock_wait
        delay = 0.001
        while True:
            with self._semaphore:
                if self._conn is None:
                    raise sqlite3.ProgrammingError("database is closed")
                try:
                    return operation(*args)
                except sqlite3.OperationalError as exc:
                    if not is_busy(exc) or self._clock() + delay > deadline:
                        raise
            self._sleep(delay)
            delay = min(delay * 2, 0.1)


class Database:
    """The store's SQL, run through one `Handle` on its file: tables, tick writes, and the
    reads of the status page, the audits and the repair.

    Methods take only normalised symbols (symbols.normalise). Reads raise sqlite3.Error;
    writes log and return False instead (the spec's "log and skip").
    """

    def __init__(
        self,
        path: str,
        *,
        lock_wait: float = 5.0,
        sleep: Callable[[float], object] = gevent.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.file = Handle(path, lock_wait, sleep, clock)
        self.path = path
        self._sleep = sleep
        self._retry = self.file.run
        self._audit_turn = Semaphore()
        self._tables: dict[str, _Tables] = {}
        self._throttle = Throttle(60.0, clock)
        self.write_latency = Latency(WRITE_BUCKETS)  # each write, lock waits included
        # What the status page shows, kept so that it need not read the file: [first, last]
        # tick time per symbol (None: no rows), kept up to date by our writes, and the
        # prices_ tables; forgotten when another connection commits (`refresh`).
        self._spans: dict[str, list[int] | None] = {}
        self._names: list[str] | None = None
        self._seen: tuple[sqlite3.Connection, int] | None = None

    def open(self) -> None:
        """Open the file (see `Handle.open`). Raises sqlite3.DatabaseError if unusable."""
        self.file.open()

    def close(self) -> None:
        self.file.close()

    # -- writes --------------------------------------------------------------------------

    def _sql(self, symbol: str) -> _Tables:
        tables = self._tables.get(symbol)
        if tables is None:
            tables = self._tables[symbol] = _Tables(symbol)
        return tables

    def ensure_table(self, symbol: str) -> None:
        """Create `prices_<symbol>` and its timestamp index if missing. Raises sqlite3.Error."""
        self._retry(self._create, self._sql(symbol))

    def _create(self, tables: _Tables) -> None:
        conn = self.file.conn
        with transaction(conn):
            conn.execute(tables.create)
            conn.execute(tables.index)
        tables.lead_at = 0  # a table made again starts without its sqlite_sequence row
        if self._names is not None and tables.symbol not in self._names:
            bisect.insort(self._names, tables.symbol)

    def insert(self, symbol: str, tick: Tick) -> bool:
        """Store one tick in its own transaction; False (logged) if it could not be written.

        A tick already stored (same id) is ignored. A table dropped by another program
        is created again.
        """
        return self.insert_many(symbol, (tick,))

    def insert_many(self, symbol: str, ticks: Sequence[Tick]) -> bool:
        """Store ticks in one transaction; False (logged) if they could not be written."""
        tables = self._sql(symbol)
        start = time.perf_counter()
        try:
            try:
                self._retry(self._write, tables, ticks)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_ERROR:
                    raise
                # The usual cause is a table dropped by hand; CREATE ... IF NOT EXISTS is
                # harmless if it was something else, and the retry then fails again.
                self._retry(self._create, tables)
                self._retry(self._write, tables, ticks)
            self.write_latency.observe(time.perf_counter() - start)
            if symbol in self._spans:
                self._widen(symbol, ticks)
            top = ticks[0][0] if len(ticks) == 1 else max(tick[0] for tick in ticks)
            if top >= tables.lead_at:
                self._lead(tables, top)
            return True
        except sqlite3.Error as exc:
            self._log_write_error(symbol, len(ticks), exc)
            return False

    def _write(self, tables: _Tables, ticks: Sequence[Tick]) -> None:
        conn = self.file.conn
        if len(ticks) == 1:
            # The per-tick path: one INSERT commits on its own, no BEGIN/COMMIT round trips.
            conn.execute(tables.insert, ticks[0])
            return
        with transaction(conn):
            conn.executemany(tables.insert, ticks)

    def _lead(self, tables: _Tables, top: int) -> None:
        """Put the table's `seq` SEQ_LEAD ids past `top`, the highest id just stored."""
        seq = min(top + SEQ_LEAD, MAX_ID)
        name = "prices_" + tables.symbol
        try:
            self._retry(lambda: self.file.conn.execute(SEQ_AHEAD, (seq, name, seq)))
        except sqlite3.Error as exc:  # it only costs the page it would spare: later, again
            tables.lead_at = top + SEQ_LEAD // 100
            held = self._throttle.allow((tables.symbol, "lead"))
            if held is not None:
                log.warning(
                    "cannot move sqlite_sequence ahead %s",
                    kv(symbol=tables.symbol, error=exc, suppressed=held),
                )
        else:
            tables.lead_at = seq

    def _widen(self, symbol: str, ticks: Sequence[Tick]) -> None:
        span = self._spans[symbol]
        if span is None:
            span = self._spans[symbol] = [ticks[0][1], ticks[0][1]]
        for tick in ticks:
            if tick[1] > span[1]:
                span[1] = tick[1]
            elif tick[1] < span[0]:
                span[0] = tick[1]

    def _log_write_error(self, symbol: str, count: int, exc: sqlite3.Error) -> None:
        name = getattr(exc, "sqlite_errorname", type(exc).__name__)
        held = self._throttle.allow((symbol, name))
        if held is not None:
            log.error(
                "write failed, ticks skipped %s",
                kv(symbol=symbol, ticks=count, error=name, detail=exc, suppressed=held),
            )

    # -- reads ---------------------------------------------------------------------------

    def settings(self) -> list[tuple[object, object]]:
        """Rows of symbol_settings as (symbol, enabled), in insertion order, raw as stored.

        A symbol_settings dropped by another program is created again (empty).
        """
        try:
            return self._retry(self._read_settings)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_ERROR:
                raise
            self._retry(lambda: self.file.conn.execute(SETTINGS_DDL))
            log.warning("symbol_settings was missing and has been created again")
            return self._retry(self._read_settings)

    def _read_settings(self) -> list[tuple[object, object]]:
        return read_settings(self.file.conn)

    def price_tables(self) -> list[str]:
        """Symbols that have a prices_ table, as named in the file, sorted. Read once, then
        kept (with the tables we create) until `refresh` finds another writer."""
        if self._names is None:
            rows = self._retry(
                lambda: self.file.conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name LIKE 'prices!_%' ESCAPE '!' ORDER BY name"
                ).fetchall()
            )
            self._names = [name[len("prices_") :] for (name,) in rows]
        return list(self._names)

    def first_last(self, symbol: str) -> tuple[int, int] | None:
        """(first, last) tick timestamp of `symbol`, None if it has no table or no rows.
        Read once, then kept by our own writes until `refresh` finds another writer."""
        if symbol in self._spans:
            span = self._spans[symbol]
            return None if span is None else (span[0], span[1])
        try:
            first, last = self._retry(
                lambda: self.file.conn.execute(self._sql(symbol).first_last).fetchone()
            )
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_ERROR:
                raise
            first = last = None  # no such table
        self._spans[symbol] = None if first is None else [first, last]
        return None if first is None else (first, last)

    def refresh(self, wait: bool = True) -> None:
        """Forget what `first_last` and `price_tables` keep if another connection has
        committed since the last call (an import, a row deleted by hand, a table dropped)
        or the file was reopened: they read the file again next time. With `wait` False,
        if the connection is in use (a checkpoint holds it for tens of milliseconds a
        second), do nothing: the status page answers from memory and the next one checks."""
        if not wait and self.file.busy:
            return

        def version() -> tuple[sqlite3.Connection, int]:
            conn = self.file.conn
            return conn, conn.execute("PRAGMA data_version").fetchone()[0]

        seen = self._retry(version)  # connections compare by identity
        if seen != self._seen:
            self._spans.clear()
            self._names = None
            self._seen = seen

    def reorder_sequence(self, plan: Callable[[list[object]], list[int] | None]) -> bool:
        """Put sqlite_sequence's rows in the order `plan` gives: called with the table names
        in rowid order, it returns their new order as indexes into that list, or None to
        leave it. Names and values are kept as they are; only the rowids change. One write
        transaction; returns whether it rewrote the table. Raises sqlite3.Error, and
        ValueError if the plan is not an order of every row."""

        def rewrite() -> bool:
            conn = self.file.conn
            if not has_table(conn, "sqlite_sequence"):  # no AUTOINCREMENT table yet
                return False
            with transaction(conn):
                read = "SELECT name, seq FROM sqlite_sequence ORDER BY rowid"
                rows = conn.execute(read).fetchall()
                order = plan([name for name, _ in rows])
                if order is None:
                    return False
                if sorted(order) != list(range(len(rows))):
                    raise ValueError("not an order of sqlite_sequence's rows")
                conn.execute("DELETE FROM sqlite_sequence")
                conn.executemany(
                    "INSERT INTO sqlite_sequence (rowid, name, seq) VALUES (?, ?, ?)",
                    [(rowid, *rows[i]) for rowid, i in enumerate(order, 1)],
                )
            return True

        return self._retry(rewrite)

    def max_id(self, symbol: str) -> int | None:
        """The highest stored trade id of `symbol`, None if none. Raises sqlite3.Error."""
        return self._retry(lambda: self.file.conn.execute(self._sql(symbol).max_id).fetchone()[0])

    def neighbour_times(self, symbol: str, first: int, last: int) -> tuple[int | None, int | None]:
        """Timestamps of the stored ticks just before id `first` and just after id `last`."""
        sql = self._sql(symbol)

        def read():
            before = self.file.conn.execute(sql.before, (first,)).fetchone()
            after = self.file.conn.execute(sql.after, (last,)).fetchone()
            return (before and before[0]), (after and after[0])

        return self._retry(read)

    def holes(self, symbol: str, since_ms: int, chunk: int = 20_000) -> list[tuple[int, int]]:
        """Missing id ranges among the ticks stored since `since_ms`, by walking the primary key
        in chunks; the Semaphore is released, and other greenlets run, between chunks. One
        walk at a time in the process: after a restart every symbol audits at once."""
        sql = self._sql(symbol)

        def walk(previous: int) -> tuple[list[tuple[int, int]], int, int]:
            # Rows straight from the cursor: a list of 20,000 ids per symbol, for a hundred
            # symbols at once, was 170 MB the allocator then kept.
            found, count = [], 0
            for (current,) in self.file.conn.execute(sql.ids_from, (previous, chunk)):
                if current > previous + 1:
                    found.append((previous + 1, current - 1))
                previous, count = current, count + 1
            return found, previous, count

        with self._audit_turn:
            row = self._retry(lambda: self.file.conn.execute(sql.since, (since_ms,)).fetchone())
            if row is None:
                return []
            holes, previous = [], row[0]
            while True:
                found, previous, count = self._retry(walk, previous)
                holes += found
                if count < chunk:
                    return holes
                self._sleep(0)

    def continuous_run(
        self, symbol: str, known: tuple[int, int] | None = None
    ) -> tuple[int, int, int] | None:
        """`continuous_run` on the store's connection, one count at a time with other
        greenlets run between them: the first look at a table of 100 M ticks is about 3,000
        counts of 2 ms each."""

        def count(first: int, last: int) -> int:
            self._sleep(0)
            return self._retry(count_ids, self.file.conn, symbol, first, last)

        bottom, top = self._retry(id_ends, self.file.conn, symbol)
        if top is None:
            return None
        first = run_start(count, top, bottom, known)
        return first, self._retry(tick_at, self.file.conn, symbol, first)[1], top

    def ping(self) -> None:
        """Raise sqlite3.Error unless the database answers a trivial read."""
        self._retry(
            lambda: self.file.conn.execute("SELECT 1 FROM symbol_settings LIMIT 1").fetchall()
        )

    def ticks(self, symbol: str, first_id: int = 0) -> list[Tick]:
        """Stored ticks of `symbol` with id >= first_id, by id (for tests and tools)."""
        table = quote("prices_" + symbol)
        return self._retry(
            lambda: [
                Tick(*row)
                for row in self.file.conn.execute(
                    f"SELECT id, timestamp, price FROM {table} WHERE id >= ? ORDER BY id",
                    (first_id,),
                )
            ]
        )
