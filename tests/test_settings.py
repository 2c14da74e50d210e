"""The settings watcher: reading rows, diffs, and streams that follow symbol_settings exactly."""

import logging
import random
import sqlite3

import gevent
import gevent.event
import pytest

from tickd.database import Database
from tickd.settings import Watcher, diff, read_rows


def test_rows_are_normalised_and_refused_names_kept_apart():
    wanted = read_rows(
        [
            ("btcusdt", 1),
            ("ETHUSDT", 0),
            (" solusdt ", None),
            ('BAD"; DROP TABLE x', 1),
            (None, 1),
            ("币安人生usdt", 2),
            ("BTCUSDT", 0),  # the same symbol again: any enabled row enables it
        ]
    )
    assert wanted.symbols == {
        "BTCUSDT": True,
        "ETHUSDT": False,
        "SOLUSDT": False,
        "币安人生USDT": True,
    }
    assert wanted.invalid == ('BAD"; DROP TABLE x', "None")


def test_diff_keeps_order():
    assert diff(["A", "B", "C"], ["C", "D", "A", "E"]) == (["D", "E"], ["B"])


class FakeStream:
    """Stands in for a Stream: counts how many run at once per symbol."""

    def __init__(self, symbol, live, most):
        self.symbol = symbol
        self.live, self.most = live, most
        self.connected = False
        self._stopped = gevent.event.Event()

    def run(self):
        live = self.live
        live[self.symbol] = live.get(self.symbol, 0) + 1
        self.most[self.symbol] = max(self.most.get(self.symbol, 0), live[self.symbol])
        self.connected = True
        try:
            self._stopped.wait()
        finally:
            self.connected = False
            live[self.symbol] -= 1

    def stop(self):
        self._stopped.set()


@pytest.fixture
def setup(tmp_path):
    db = Database(str(tmp_path / "ticks.db"))
    db.open()
    conn = sqlite3.connect(db.path, isolation_level=None)
    live, most = {}, {}
    watcher = Watcher(
        db, lambda symbol, after_pause=False: FakeStream(symbol, live, most), poll_interval=3600
    )
    watcher.live, watcher.most = live, most  # for the tests to read
    yield watcher, conn
    watcher.stop()
    conn.close()
    db.close()


def running(watcher):
    return {symbol for symbol, stream in watcher.streams().items() if stream.connected}


def test_streams_follow_enable_disable_and_delete(setup, caplog):
    caplog.set_level(logging.INFO, logger="tickd")
    watcher, conn = setup
    conn.execute(
        "INSERT INTO symbol_settings (symbol) VALUES ('BTCUSDT'), ('ethusdt'), ('BAD NAME')"
    )
    watcher.sync()
    gevent.sleep(0)  # let the new greenlets start
    assert running(watcher) == {"BTCUSDT", "ETHUSDT"}
    assert "invalid symbol ignored symbol='BAD NAME'" in caplog.text
    assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")} >= {
        "prices_BTCUSDT",
        "prices_ETHUSDT",
    }
    conn.execute("UPDATE symbol_settings SET enabled = 0 WHERE symbol = 'BTCUSDT'")
    conn.execute("DELETE FROM symbol_settings WHERE symbol = 'ethusdt'")
    watcher.sync()
    assert running(watcher) == set()
    assert "symbol disabled symbol=BTCUSDT" in caplog.text
    assert "symbol removed symbol=ETHUSDT" in caplog.text


def test_flapping_never_leaves_two_streams_on_a_symbol(setup):
    watcher, conn = setup
    names = ["AUSDT", "BUSDT", "CUSDT", "cusdt"]
    rng = random.Random(7)
    for _ in range(300):
        action = rng.choice(["insert", "enable", "disable", "delete"])
        name = rng.choice(names)
        if action == "insert":
            conn.execute("INSERT OR IGNORE INTO symbol_settings (symbol) VALUES (?)", (name,))
        elif action == "delete":
            conn.execute("DELETE FROM symbol_settings WHERE symbol = ?", (name,))
        else:
            conn.execute(
                "UPDATE symbol_settings SET enabled = ? WHERE symbol = ?",
                (int(action == "enable"), name),
            )
        watcher.sync()
        gevent.sleep(0)
        enabled = {
            n.upper() for n, on in conn.execute("SELECT symbol, enabled FROM symbol_settings") if on
        }
        assert running(watcher) == enabled
        assert all(count <= 1 for count in watcher.live.values())
    assert max(watcher.most.values()) == 1


def test_unreadable_settings_keep_the_running_streams(setup, caplog):
    watcher, conn = setup
    conn.execute("INSERT INTO symbol_settings (symbol) VALUES ('BTCUSDT')")
    watcher.sync()
    gevent.sleep(0)
    # Another program replaces the table with one the store cannot read.
    conn.execute("DROP TABLE symbol_settings")
    conn.execute("CREATE TABLE symbol_settings (name TEXT)")
    watcher.sync()
    assert running(watcher) == {"BTCUSDT"}
    assert "settings unreadable, streams unchanged" in caplog.text


def test_a_dead_stream_is_restarted_on_the_next_poll(setup, caplog):
    watcher, conn = setup
    conn.execute("INSERT INTO symbol_settings (symbol) VALUES ('BTCUSDT')")
    watcher.sync()
    gevent.sleep(0)
    (greenlet,) = [g for _, g in watcher._streams.values()]
    greenlet.kill()
    watcher.sync()
    gevent.sleep(0)
    assert running(watcher) == {"BTCUSDT"}
    assert "stream ended unexpectedly" in caplog.text


def test_a_symbol_enabled_again_after_a_pause_resumes_without_its_paused_period(tmp_path):
    db = Database(str(tmp_path / "ticks.db"))
    db.open()
    made = []

    def make(symbol, after_pause=False):
        made.append((symbol, after_pause))
        return FakeStream(symbol, {}, {})

    watcher = Watcher(db, make, poll_interval=3600)
    conn = sqlite3.connect(db.path, isolation_level=None)
    try:
        conn.execute("INSERT INTO symbol_settings (symbol) VALUES ('BTCUSDT')")
        watcher.sync()  # enabled at start: a restart, whose gap is repaired
        conn.execute("UPDATE symbol_settings SET enabled = 0")
        watcher.sync()
        conn.execute("UPDATE symbol_settings SET enabled = 1")
        watcher.sync()  # the pause ends
        conn.execute("DELETE FROM symbol_settings")
        watcher.sync()
        conn.execute("INSERT INTO symbol_settings (symbol) VALUES ('BTCUSDT')")
        watcher.sync()  # removed, then added again: not a pause
        assert made == [("BTCUSDT", False), ("BTCUSDT", True), ("BTCUSDT", False)]
    finally:
        watcher.stop()
        conn.close()
        db.close()


def test_enabled_symbols_near_the_descriptor_limit_are_warned_about_once(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="tickd")
    db = Database(str(tmp_path / "ticks.db"))
    db.open()
    watcher = Watcher(
        db, lambda symbol, after_pause=False: FakeStream(symbol, {}, {}), 3600, descriptor_limit=70
    )
    conn = sqlite3.connect(db.path, isolation_level=None)
    try:
        conn.execute("INSERT INTO symbol_settings (symbol) VALUES ('AUSDT'), ('BUSDT')")
        watcher.sync()  # 2 streams: 68 descriptors of 70
        assert "descriptor limit" not in caplog.text
        conn.execute("INSERT INTO symbol_settings (symbol) VALUES ('CUSDT'), ('DUSDT')")
        watcher.sync()
        watcher.sync()
        assert caplog.text.count("descriptor limit close") == 1
        assert "symbols=4 needed=72 limit=70" in caplog.text
    finally:
        watcher.stop()
        conn.close()
        db.close()
