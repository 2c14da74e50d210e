"""`python -m tickd` against the fake exchange: what a user sees, through SQL and HTTP only."""

import sqlite3
import time
import urllib.error
import urllib.request

import pytest

from conftest import wait_for

pytestmark = pytest.mark.slow

SYMBOLS = {  # as typed into symbol_settings -> as stored
    "BTCUSDT": "BTCUSDT",
    "ethusdt": "ETHUSDT",
    "  solusdt ": "SOLUSDT",
    "币安人生usdt": "币安人生USDT",
    "BTCUSDT_261225": "BTCUSDT_261225",
}
HOSTILE = 'X"; DROP TABLE symbol_settings;--'


def stored(store, symbol):
    try:
        return store.rows(symbol)
    except sqlite3.OperationalError:
        return []  # no table yet


def expected(fake, symbol):
    return [(t["a"], t["T"], float(t["p"])) for t in fake.history(symbol)]


def enable(store, *names):
    for name in names:
        store.sql("INSERT INTO symbol_settings (symbol) VALUES (?)", (name,))


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
        wait_for(lambda s=symbol: len(stored(store, s)) == 40, 5, f"40 ticks of {symbol}")
        assert stored(store, symbol) == expected(fake, symbol)
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


def test_disable_and_delete_stop_the_stream_within_one_poll(fake, make_store):
    store = make_store(SETTINGS_POLL_INTERVAL="300ms").start()
    enable(store, "BTCUSDT", "ETHUSDT")
    wait_for(lambda: fake.connections("BTCUSDT") == 1 and fake.connections("ETHUSDT") == 1)
    wait_for(lambda: " on " in store.get("/status")[1])
    store.sql("UPDATE symbol_settings SET enabled = 0 WHERE symbol = 'BTCUSDT'")
    store.sql("DELETE FROM symbol_settings WHERE symbol = 'ETHUSDT'")
    start = time.monotonic()
    wait_for(lambda: fake.connections("BTCUSDT") == 0 and fake.connections("ETHUSDT") == 0, 2)
    assert time.monotonic() - start < 0.3 + 1.0
    page = store.get("/status")[1]
    assert "BTCUSDT     off     (no data yet)" in page
    # ETHUSDT's empty table stays, but without a settings row or a tick it says nothing.
    assert "ETHUSDT" not in page
    assert "prices_ETHUSDT" in {n for (n,) in store.sql("SELECT name FROM sqlite_master")}
    store.sql("UPDATE symbol_settings SET enabled = 1 WHERE symbol = 'BTCUSDT'")
    wait_for(lambda: fake.connections("BTCUSDT") == 1, 2)
    fake.trade("BTCUSDT")
    wait_for(lambda: stored(store, "BTCUSDT") == expected(fake, "BTCUSDT"))


def test_a_dropped_connection_is_redialled_at_once(fake, make_store):
    store = make_store().start()
    enable(store, "BTCUSDT")
    wait_for(lambda: fake.connections("BTCUSDT") == 1)
    fake.trade("BTCUSDT")
    wait_for(lambda: len(stored(store, "BTCUSDT")) == 1)
    fake.drop("BTCUSDT")
    wait_for(lambda: len(fake.handshakes()) == 2, 2, "a second handshake")
    wait_for(lambda: fake.connections("BTCUSDT") == 1)
    fake.trade("BTCUSDT")
    wait_for(lambda: stored(store, "BTCUSDT") == expected(fake, "BTCUSDT"))
    assert "stream disconnected symbol=BTCUSDT code=1006" in store.log()
    assert "stream reconnecting symbol=BTCUSDT delay=0s" in store.log()


def test_a_close_frame_code_is_logged_and_the_stream_redials(fake, make_store):
    store = make_store().start()
    enable(store, "BTCUSDT")
    wait_for(lambda: fake.connections("BTCUSDT") == 1)
    fake.close("BTCUSDT", 1008, "Too many requests")
    wait_for(lambda: store.find("stream disconnected symbol=BTCUSDT code=1008"), 2)
    wait_for(lambda: len(fake.handshakes()) == 2, 3)


def test_a_stalled_socket_is_replaced_after_the_stale_timeout(fake, make_store):
    store = make_store(STREAM_STALE_TIMEOUT="1s").start()
    enable(store, "BTCUSDT")
    wait_for(lambda: fake.connections("BTCUSDT") == 1)
    fake.stall("BTCUSDT")
    start = time.monotonic()
    wait_for(lambda: len(fake.handshakes()) == 2, 5, "a new connection")
    assert time.monotonic() - start >= 0.9
    assert "nothing received for 1s" in store.log()
    fake.stall("BTCUSDT", on=False)
    fake.trade("BTCUSDT")
    wait_for(lambda: stored(store, "BTCUSDT") == expected(fake, "BTCUSDT"))


def test_pings_are_answered(fake, make_store):
    fake.list_symbol("BTCUSDT")
    store = make_store().start()
    enable(store, "BTCUSDT")
    wait_for(lambda: fake.pongs("BTCUSDT") >= 2, 5, "two pongs")
    assert store.proc.poll() is None


def test_bad_frames_are_skipped_and_the_connection_kept(fake, make_store):
    store = make_store().start()
    enable(store, "BTCUSDT")
    wait_for(lambda: fake.connections("BTCUSDT") == 1)
    for garbage in [
        "{nope",
        '{"e":"aggTrade","s":"ETHUSDT","a":1,"T":1,"p":"1"}',
        '{"result":null,"id":1}',
        b"\xff\xfe",
        '{"e":"aggTrade","s":"BTCUSDT","a":5,"T":1,"p":"NaN"}',
    ]:
        fake.send_raw("BTCUSDT", garbage)
    fake.trade("BTCUSDT")
    wait_for(lambda: stored(store, "BTCUSDT") == expected(fake, "BTCUSDT"))
    assert len(fake.handshakes()) == 1
    assert "frame skipped symbol=BTCUSDT error='not JSON'" in store.log()
    assert "trade of another symbol" in store.log()


def test_an_oversized_frame_closes_the_connection(fake, make_store):
    store = make_store().start()
    enable(store, "BTCUSDT")
    wait_for(lambda: fake.connections("BTCUSDT") == 1)
    fake.send_raw("BTCUSDT", "x" * (2 << 20))
    wait_for(lambda: len(fake.handshakes()) == 2, 5, "a new connection")
    assert "frame of 2097152 bytes" in store.log()
    fake.trade("BTCUSDT")
    wait_for(lambda: stored(store, "BTCUSDT") == expected(fake, "BTCUSDT"))


def test_refused_handshakes_back_off(fake, make_store):
    fake.refuse_handshakes(2)
    store = make_store().start()
    enable(store, "BTCUSDT")
    wait_for(lambda: fake.connections("BTCUSDT") == 1, 8, "the third attempt")
    times = [t for t, _ in fake.handshakes()]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.9 and times[2] - times[1] >= 1.9
    assert "stream reconnecting symbol=BTCUSDT delay=1s" in store.log()


def test_status_answers_fast_while_another_program_holds_the_write_lock(fake, make_store):
    store = make_store().start()
    enable(store, "BTCUSDT")
    wait_for(lambda: fake.connections("BTCUSDT") == 1)
    fake.trade("BTCUSDT")
    wait_for(lambda: len(stored(store, "BTCUSDT")) == 1)
    other = sqlite3.connect(store.db_path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        fake.trade("BTCUSDT")  # its write now waits for the lock
        latencies = []
        for _ in range(20):
            start = time.monotonic()
            code, page = store.get("/status")
            latencies.append(time.monotonic() - start)
            assert code == 200 and "BTCUSDT     on" in page
        assert max(latencies) < 0.1, latencies
    finally:
        other.execute("COMMIT")
        other.close()
    wait_for(lambda: stored(store, "BTCUSDT") == expected(fake, "BTCUSDT"), 5)


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
    store = make_store().start()
    enable(store, "BTCUSDT")
    wait_for(lambda: fake.connections("BTCUSDT") == 1)
    fake.trade("BTCUSDT")
    wait_for(lambda: len(stored(store, "BTCUSDT")) == 1)
    start = time.monotonic()
    assert store.terminate() == 0
    assert time.monotonic() - start < 10
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
