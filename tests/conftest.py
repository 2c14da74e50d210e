"""Shared fixtures; the test process is monkey-patched like the store itself."""

from gevent import monkey

monkey.patch_all()

import gc  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

from tickd.fakebinance import FakeBinance  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# make reliability runs the property tests with many more examples.
settings.register_profile("full", max_examples=20_000, deadline=None)
if os.environ.get("RELIABILITY_FULL") == "1":
    settings.load_profile("full")

# The hub's event loop and thread pool open descriptors once per process, on first use:
# open them now, so the leak check below sees only what a test itself leaves behind.
gevent.get_hub().threadpool.apply(int)
gevent.sleep(0)


def wait_for(predicate, timeout=5.0, what="condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
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


def rows(store, symbol):
    """The stored (id, timestamp, price) of `symbol`, by id; [] if it has no table yet."""
    try:
        return store.rows(symbol)
    except sqlite3.OperationalError:
        return []


def expected_from_first_stored(store, fake, symbol):
    stored = rows(store, symbol)
    if not stored:
        return None
    return [(t["a"], t["T"], float(t["p"])) for t in fake.history(symbol) if t["a"] >= stored[0][0]]


def complete(store, fake, symbol):
    """True if `symbol`'s table holds exactly the exchange's trades from its first stored id."""
    stored = rows(store, symbol)
    return bool(stored) and stored == expected_from_first_stored(store, fake, symbol)


def wait_complete(store, fake, symbol, timeout=15):
    wait_for(lambda: complete(store, fake, symbol), timeout, f"every id of {symbol}")


def _live_greenlets():
    return {g for g in gc.get_objects() if isinstance(g, gevent.Greenlet) and not g.dead}


def _open_fds():
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_leaks():
    """Every test ends with no greenlet of its own alive and no descriptor left open."""
    greenlets, fds = _live_greenlets(), _open_fds()
    yield
    wait_for(lambda: not (_live_greenlets() - greenlets), 3, "the test's greenlets to end")
    try:
        wait_for(lambda: not (_open_fds() - fds), 3, "the test's descriptors to close")
    except AssertionError:
        leaked = [os.readlink(f"/proc/self/fd/{fd}") for fd in _open_fds() - fds]
        raise AssertionError(f"descriptors left open: {leaked}") from None


@pytest.fixture
def fake():
    with FakeBinance(ping_interval=1.0) as exchange:
        yield exchange


def process_usage(pid):
    """(resident memory in bytes, open descriptors) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    return rss_kb * 1024, len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def make_store(tmp_path, fake):
    """Builds Stores pointed at the fake exchange; kills whatever is left at the end."""
    stores = []

    def make(**env):
        env = {"BINANCE_WS_URL": fake.ws_url, "BINANCE_REST_URL": fake.rest_url, **env}
        store = Store(tmp_path / "ticks.db", env)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()
