"""`python -m tickd` against the fake exchange: what a user sees, through SQL and HTTP only."""

import sqlite3
import urllib.error
import urllib.request

import pytest

from helpers import LOCKED_STATUS_TIMEOUT, enable, expected, rows, wait_connected, wait_for

pytestmark = pytest.mark.slow

SYMBOLS = {  # as typed into symbol_settings -> as stored
    "BTCUSDT": "BTCUSDT",
    "ethusdt": "ETHUSDT",
    "  solusdt ": "SOLUSDT",
    "币安人生usdt": "币安人生USDT",
    "BTCUSDT_261225": "BTCUSDT_261225",
}
HOSTILE = 'X"; DROP TABLE symbol_settings;--'


def connected(make_store, fake, **env):
    """A started store with BTCUSDT enabled, once its stream is open at the exchange."""
    store = make_store(**env).start()
    enable(store, "BTCUSDT")
    wait_connected(fake, "BTCUSDT", timeout=5)
    return store


def test_every_streamed_trade_is_stored_exactly(fake, make_store):
    for symbol in SYMBOLS.values():
        fake.list_symbol(symbol)
    store = make_store().start()
    enable(store, *SYMBOLS, HOSTILE)
    for symbol in SYMBOLS.values():
        wait_for(lambda s=symbol: fake.connections(s) == 1, 5, f"a connection for {symbol}")
    for _ in range(40):
        for symbol in SYMBOLS.values():
            fake.trade(symbol)
    for symbol in SYMBOLS.values():
        wait_for(lambda s=symbol: len(rows(store, s)) == 40, 5, f"40 ticks of {symbol}")
        assert rows(store, symbol) == expected(fake, symbol)
    tables = {name for (name,) in store.sql("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"symbol_settings", "sqlite_sequence"} | {
        f"prices_{s}" for s in SYMBOLS.values()
    }
    code, page = store.get("/status")
    assert code == 200
    lines = page.splitlines()
    assert lines[:3] == ["Binance Tick Store", "", "Status:     running"]
    for symbol in SYMBOLS.values():
        (row,) = [line for line in lines if line.startswith(symbol + " ")]
        assert " on " in row and "  ->  " in row
    assert any("(invalid symbol, ignored)" in line and line.startswith('"X') for line in lines)
    assert "invalid symbol ignored" in store.log()


def test_disable_and_delete_stop_the_stream_at_the_next_poll(fake, make_store):
    store = make_store(SETTINGS_POLL_INTERVAL="300ms").start()
    enable(store, "BTCUSDT", "ETHUSDT")
    wait_for(lambda: fake.connections("BTCUSDT") == 1 and fake.connections("ETHUSDT") == 1)
    wait_for(lambda: " on " in store.get("/status")[1])
    store.sql("UPDATE symbol_settings SET enabled = 0 WHERE symbol = 'BTCUSDT'")
    store.sql("DELETE FROM symbol_settings WHERE symbol = 'ETHUSDT'")
    wait_for(lambda: fake.connections("BTCUSDT") == 0 and fake.connections("ETHUSDT") == 0, 10)
    # Stopped by the poll that read the change (its log lines), and the process went on.
    assert "symbol disabled symbol=BTCUSDT" in store.log()
    assert "symbol removed symbol=ETHUSDT" in store.log()
    assert store.proc.poll() is None
    page = store.get("/status")[1]
    assert "BTCUSDT     off     (no data yet)" in page
    # ETHUSDT's empty table stays, but without a settings row or a tick it says nothing.
    assert "ETHUSDT" not in page
    assert "prices_ETHUSDT" in {n for (n,) in store.sql("SELECT name FROM sqlite_master")}
    store.sql("UPDATE symbol_settings SET enabled = 1 WHERE symbol = 'BTCUSDT'")
    wait_for(lambda: fake.connections("BTCUSDT") == 1, 2)
    fake.trade("BTCUSDT")
    wait_for(lambda: rows(store, "BTCUSDT") == expected(fake, "BTCUSDT"))


def test_status_answers_while_another_program_holds_the_write_lock(fake, make_store):
    store = connected(make_store, fake)
    fake.trade("BTCUSDT")
    wait_for(lambda: len(rows(store, "BTCUSDT")) == 1)
    other = sqlite3.connect(store.db_path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        fake.trade("BTCUSDT")  # its write now waits for the lock
        for _ in range(20):
            code, page = store.get("/status", timeout=LOCKED_STATUS_TIMEOUT)  # raises if later
            assert code == 200 and "BTCUSDT     on" in page
    finally:
        other.execute("COMMIT")
        other.close()
    wait_for(lambda: rows(store, "BTCUSDT") == expected(fake, "BTCUSDT"), 5)


def test_healthz_and_unknown_routes(make_store):
    store = make_store().start()
    assert store.get("/healthz") == (200, "ok\n")
    assert store.get("/nope")[0] == 404
    assert store.get("/status/../etc")[0] == 404
    request = urllib.request.Request(
        f"http://127.0.0.1:{store.port}/status", data=b"x", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 405
    info.value.close()


def test_sigterm_stops_cleanly_with_close_frames(fake, make_store, tmp_path):
    store = connected(make_store, fake)
    fake.trade("BTCUSDT")
    wait_for(lambda: len(rows(store, "BTCUSDT")) == 1)
    assert store.terminate(timeout=10) == 0  # raises if it takes longer
    assert fake.connections("BTCUSDT") == 0
    assert "store stopped" in store.log()
    assert not (tmp_path / "ticks.db-wal").exists()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HTTP_PORT": "abc"}, "invalid HTTP_PORT='abc'"),
        ({"STREAM_STALE_TIMEOUT": "soon"}, "invalid STREAM_STALE_TIMEOUT='soon'"),
        ({"BINANCE_WS_URL": "http://x"}, "invalid BINANCE_WS_URL='http://x'"),
    ],
)
def test_a_bad_setting_exits_1_with_one_line(make_store, env, message):
    store = make_store(**env).start(wait=False)
    assert store.wait() == 1
    assert len(store.lines) == 1 and message in store.lines[0]


def test_a_file_that_is_not_a_database_exits_1_and_is_left_alone(make_store, tmp_path):
    garbage = b"not a database at all" * 100
    (tmp_path / "ticks.db").write_bytes(garbage)
    store = make_store().start(wait=False)
    assert store.wait() == 1
    assert "cannot open database" in store.log()
    assert (tmp_path / "ticks.db").read_bytes() == garbage
