"""What the tests share besides fixtures: polling, the store as a child process, and what it
stored against what the fake exchange made.

Fixtures stay in conftest.py (pytest finds them there); they, and the tests, import these.
The test process is monkey-patched by conftest.py before this module is imported.
"""

import contextlib
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import gevent

ROOT = Path(__file__).resolve().parent.parent
# make reliability: every scenario at full length (and many more property examples).
FULL = os.environ.get("RELIABILITY_FULL") == "1"
# Seconds a /status request may take while another program holds the write lock: far inside
# the 5 s the store's writes wait for that lock, which a hub blocked by the wait would add to
# the answer. A bound for failing, not the latency target: `tests/bench/hub.py` (make bench-hub,
# part `hub` of make bench) measures that, against the 100 ms of docs/BENCHMARKS.md.
LOCKED_STATUS_TIMEOUT = 2.0


def wait_for(predicate, timeout=5.0, what="condition"):
    """Poll `predicate` until it returns something truthy, and return that; fail after
    `timeout` seconds (a bound for failing, not a performance claim)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        gevent.sleep(0.02)


class Store:
    """`python -m tickd` as a child process, with its log lines collected as they come."""

    def __init__(self, db_path, env):
        self.db_path = str(db_path)
        self.env = {
            **os.environ,
            "DB_PATH": self.db_path,
            "HTTP_PORT": "0",
            "SETTINGS_POLL_INTERVAL": "200ms",
            **env,
        }
        self.lines: list[str] = []
        self.proc = None
        self.port = None
        self._reader = None

    def start(self, wait=True):
        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tickd"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = gevent.spawn(self._read, self.proc)
        if wait:
            line = wait_for(lambda: self.find("http listening"), 10, "the store to listen")
            self.port = int(re.search(r"port=(\d+)", line).group(1))
        return self

    def _read(self, proc):
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def find(self, text):
        return next((line for line in self.lines if text in line), None)

    def log(self):
        return "\n".join(self.lines)

    def wait(self, timeout=10):
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def terminate(self, timeout=10):
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if self._reader:
            self._reader.join(timeout=5)  # the pipe is at its end once the process is gone
            self._reader.kill()
        if self.proc:
            self.proc.stdout.close()

    def get(self, path, timeout=5):
        """(status, body) of an HTTP GET to the store."""
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read().decode()

    def sql(self, statement, params=()):
        """Run SQL as another program would; retried cooperatively while the store writes."""
        conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=0)
        try:
            deadline = time.monotonic() + 5
            while True:
                try:
                    return conn.execute(statement, params).fetchall()
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorname != "SQLITE_BUSY" or time.monotonic() > deadline:
                        raise
                    gevent.sleep(0.005)
        finally:
            conn.close()

    def rows(self, symbol):
        table = '"prices_' + symbol.replace('"', '""') + '"'
        return self.sql(f"SELECT id, timestamp, price FROM {table} ORDER BY id")


@contextlib.contextmanager
def stores_against(folder, exchange, **fixed):
    """Yields `make(**env)`, which builds Stores on `folder`/ticks.db pointed at `exchange`
    (with `fixed` in their environment too); every one built is closed at the end."""
    stores = []

    def make(**env):
        urls = {"BINANCE_WS_URL": exchange.ws_url, "BINANCE_REST_URL": exchange.rest_url}
        store = Store(folder / "ticks.db", {**urls, **fixed, **env})
        stores.append(store)
        return store

    try:
        yield make
    finally:
        for store in stores:
            store.close()


def enable(store, *symbols, fake=None):
    """Insert `symbols` into symbol_settings, in one statement, as a user would; with `fake`,
    list them at the exchange first."""
    if fake is not None:
        for symbol in symbols:
            fake.list_symbol(symbol)
    store.sql(
        "INSERT INTO symbol_settings (symbol) VALUES " + ",".join("(?)" for _ in symbols),
        symbols,
    )


def wait_connected(fake, *symbols, timeout=60):
    """Wait until each symbol has exactly one open stream at the exchange."""
    wait_for(
        lambda: all(fake.connections(s) == 1 for s in symbols), timeout, "every stream to connect"
    )


def rows(store, symbol):
    """The stored (id, timestamp, price) of `symbol`, by id; [] if it has no table yet."""
    try:
        return store.rows(symbol)
    except sqlite3.OperationalError:
        return []


def expected(fake, symbol, since=None):
    """What the store should hold of `symbol`: (id, timestamp, price) of every trade the
    exchange made, from id `since` on (all of them if None)."""
    return [
        (t["a"], t["T"], float(t["p"]))
        for t in fake.history(symbol)
        if since is None or t["a"] >= since
    ]


def complete(store, fake, symbol):
    """True if `symbol`'s table holds exactly the exchange's trades from its first stored id."""
    stored = rows(store, symbol)
    return bool(stored) and stored == expected(fake, symbol, since=stored[0][0])


def wait_complete(store, fake, symbol, timeout=15):
    wait_for(lambda: complete(store, fake, symbol), timeout, f"every id of {symbol}")


def process_usage(pid):
    """(resident memory in bytes, open descriptors) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    return rss_kb * 1024, len(os.listdir(f"/proc/{pid}/fd"))


class Lines(logging.Handler):
    """The store's log lines (messages only), for a test to read."""

    def __init__(self, level=logging.INFO):
        super().__init__(level)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def find(self, text):
        return next((line for line in self.lines if text in line), None)


def query(path, sql, params=()):
    """Rows of `sql` on the database at `path`, as another program reads them."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()
