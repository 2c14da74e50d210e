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
  recv_into          the frame reader reads into one preallocated 64 KiB buffer (recv_into)
                     instead of asking for a new 64 KiB bytes object per read, and copies only
                     what arrived: over TLS, `SSLSocket.recv` allocates what it is asked for.
  wait_readable      the frame reader waits until the socket is readable (its own watcher)
                     before reading, unless TLS has decrypted bytes pending, instead of reading
                     first: no read that fails with EAGAIN, no exception per wake-up
                     (SSLWantReadError over TLS, BlockingIOError plain).
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sqlite3  # noqa: E402
import ssl  # noqa: E402 (gevent's SSLSocket, once patched)
import sys  # noqa: E402

import gevent  # noqa: E402

from tickd import database  # noqa: E402
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


def _reader(*, into: bool, wait: bool):
    """A frames.Reader.read: reading into one shared buffer (`into`), and waiting until the
    socket is readable before each read (`wait`)."""
    from tickd import frames  # noqa: PLC0415 (the batch reader, absent from older trees)

    scratch = memoryview(bytearray(frames.RECV_SIZE))  # copied out before any other greenlet

    def read(self):
        sock, buffer = self._sock, self._buffer
        tls = isinstance(sock, ssl.SSLSocket)  # (getattr(sock, "pending") raises when plain)
        while True:
            # An SSLSocket's pending(): bytes it has decrypted and not handed out yet.
            if wait and not (tls and sock.pending()):
                sock._wait(sock._read_event)  # gevent's own watcher of this socket
            if into:
                n = sock.recv_into(scratch)
                if not n:
                    raise ConnectionResetError("connection closed without a close frame")
                buffer += scratch[:n]
            else:
                data = sock.recv(frames.RECV_SIZE)
                if not data:
                    raise ConnectionResetError("connection closed without a close frame")
                buffer += data
            batch, used = frames.split(buffer, self._limit)
            if batch:
                del buffer[:used]
                return batch

    frames.Reader.read = read


_READ = {"into": False, "wait": False}  # the reader's changes asked for so far: they combine


def recv_into() -> None:
    _READ["into"] = True
    _reader(**_READ)


def wait_readable() -> None:
    _READ["wait"] = True
    _reader(**_READ)


PATCHES = {
    "checkpoint_locked": checkpoint_locked,
    "lean_insert": lean_insert,
    "yield_batches": yield_batches,
    "slow_checkpoint": slow_checkpoint,
    "sqlite_autocheckpoint": sqlite_autocheckpoint,
    "no_write": no_write,
    "recv_into": recv_into,
    "wait_readable": wait_readable,
}


def main() -> int:
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
