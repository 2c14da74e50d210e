"""Every trade stored, once, whatever happens to the connection, the process or the disk.

Each test breaks something while the fake exchange keeps trading, then checks the table id by
id against what the exchange generated after the first stored tick.
"""

import signal
import sqlite3
import time

import gevent
import pytest

from conftest import rows, wait_complete, wait_for
from tickd.fakebinance import FakeBinance

pytestmark = pytest.mark.slow


def trade(fake, symbol, n):
    return [fake.trade(symbol) for _ in range(n)]


def start_recording(store, fake, symbol="BTCUSDT"):
    """Start `store`, enable `symbol`, and wait until its first trades are stored."""
    fake.list_symbol(symbol)
    store.start()
    store.sql("INSERT INTO symbol_settings (symbol) VALUES (?)", (symbol,))
    wait_for(lambda: fake.connections(symbol) == 1, 5, "a connection")
    trade(fake, symbol, 5)
    wait_for(lambda: len(rows(store, symbol)) == 5, 5, "the first trades")
    return store


@pytest.mark.parametrize("fault", ["drop", "close 1001", "close 1008", "refused handshakes"])
def test_trades_missed_while_disconnected_are_repaired(fake, make_store, fault):
    store = start_recording(make_store(), fake)
    if fault == "drop":
        fake.drop("BTCUSDT")
    elif fault == "refused handshakes":
        fake.refuse_handshakes(2)
        fake.drop("BTCUSDT")
    else:
        fake.close("BTCUSDT", int(fault.split()[1]))
    trade(fake, "BTCUSDT", 300)  # while the store reconnects
    wait_for(lambda: fake.connections("BTCUSDT") == 1, 10, "the reconnection")
    trade(fake, "BTCUSDT", 5)
    wait_complete(store, fake, "BTCUSDT")
    assert "gap found symbol=BTCUSDT" in store.log() or len(rows(store, "BTCUSDT")) == 310


def test_a_stall_is_detected_and_its_trades_repaired(fake, make_store):
    store = start_recording(make_store(STREAM_STALE_TIMEOUT="1s"), fake)
    fake.stall("BTCUSDT")
    trade(fake, "BTCUSDT", 1500)
    wait_for(lambda: len(fake.handshakes()) == 2, 5, "a new connection")
    trade(fake, "BTCUSDT", 5)
    wait_complete(store, fake, "BTCUSDT")
    assert "gap found symbol=BTCUSDT ids=" in store.log()
    assert "count=1500" in store.log()


def test_a_silent_connection_is_found_by_the_silence_check(fake, make_store):
    # The stale timeout is long: only the REST check can tell this socket is dead.
    store = start_recording(
        make_store(STREAM_STALE_TIMEOUT="60s", STREAM_SILENCE_TIMEOUT="1s"), fake
    )
    fake.stall("BTCUSDT")
    trade(fake, "BTCUSDT", 20)
    wait_for(lambda: len(fake.handshakes()) == 2, 10, "the silence check to reconnect")
    wait_complete(store, fake, "BTCUSDT")
    assert "stream silent while Binance trades, reconnecting" in store.log()


def test_killed_and_restarted_loses_nothing(fake, make_store):
    store = start_recording(make_store(), fake)
    fake.run_market(["BTCUSDT"], 200)
    for _ in range(3):
        wait_for(lambda: len(rows(store, "BTCUSDT")) > 50, 5)
        store.proc.send_signal(signal.SIGKILL)
        assert store.wait() == -signal.SIGKILL
        gevent.sleep(0.3)  # the market goes on while the store is down
        store.start()
        wait_for(lambda: fake.connections("BTCUSDT") == 1, 5)
    fake.stop_market()
    trade(fake, "BTCUSDT", 1)
    wait_complete(store, fake, "BTCUSDT", 20)
    assert store.sql("PRAGMA integrity_check") == [("ok",)]


def test_a_restart_gap_on_a_quiet_market_is_found_without_a_new_trade(fake, make_store):
    store = start_recording(make_store(STREAM_SILENCE_TIMEOUT="1s"), fake)
    assert store.terminate() == 0
    trade(fake, "BTCUSDT", 30)  # the last trades of the day, while the store is down
    store.start()
    wait_complete(store, fake, "BTCUSDT", 10)
    assert "by='silence check'" in store.log()


def test_writes_locked_out_by_another_program_are_repaired(fake, make_store):
    store = start_recording(make_store(), fake)
    fake.run_market(["BTCUSDT"], 100)
    other = sqlite3.connect(store.db_path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        wait_for(lambda: store.find("write failed, ticks skipped"), 10, "a skipped write")
        start = time.monotonic()
        code, _ = store.get("/status")
        assert code == 200 and time.monotonic() - start < 0.1
    finally:
        other.execute("COMMIT")
        other.close()
    gevent.sleep(0.5)
    fake.stop_market()
    trade(fake, "BTCUSDT", 1)
    wait_complete(store, fake, "BTCUSDT", 20)
    assert "SQLITE_BUSY" in store.log()


def test_rotation_opens_the_new_connection_first_and_leaves_no_gap(fake, make_store):
    store = start_recording(make_store(STREAM_MAX_AGE="1s"), fake)
    fake.run_market(["BTCUSDT"], 100)
    wait_for(lambda: len(fake.handshakes()) >= 4, 10, "three rotations")
    fake.stop_market()
    trade(fake, "BTCUSDT", 1)
    wait_complete(store, fake, "BTCUSDT")
    assert "stream rotating symbol=BTCUSDT" in store.log()
    assert "gap found" not in store.log()
    assert "stream reconnecting" not in store.log()


def test_ids_older_than_the_rest_window_are_reported_and_the_rest_repaired(make_store, tmp_path):
    with FakeBinance(retention=1000, ping_interval=1.0) as fake:
        store = make_store(
            BINANCE_WS_URL=fake.ws_url, BINANCE_REST_URL=fake.rest_url, STREAM_STALE_TIMEOUT="1s"
        )
        start_recording(store, fake)
        fake.stall("BTCUSDT")
        trade(fake, "BTCUSDT", 2500)  # more than the window holds
        wait_for(lambda: len(fake.handshakes()) == 2, 5)
        trade(fake, "BTCUSDT", 1)
        wait_for(lambda: store.find("unfillable gap"), 10, "the unfillable gap")
        history = fake.history("BTCUSDT")
        lost = history[5 : len(history) - 1000]
        wait_for(lambda: len(rows(store, "BTCUSDT")) == len(history) - len(lost), 10)
        assert rows(store, "BTCUSDT") == [
            (t["a"], t["T"], float(t["p"])) for t in history if t not in lost
        ]
        assert f"ids={lost[0]['a']}-{lost[-1]['a']} count={len(lost)}" in store.find("unfillable")
        store.close()


def test_connection_attempts_are_limited_across_symbols(fake, make_store):
    symbols = [f"S{i:02d}USDT" for i in range(35)]
    store = make_store().start()
    store.sql(
        "INSERT INTO symbol_settings (symbol) VALUES " + ",".join("(?)" for _ in symbols),
        tuple(symbols),
    )
    wait_for(lambda: len(fake.handshakes()) == 35, 10, "35 connections")
    times = sorted(t for t, _ in fake.handshakes())
    assert all(times[i + 10] - times[i] >= 1.0 for i in range(len(times) - 10))


def test_rest_calls_wait_out_a_429(fake, make_store):
    store = start_recording(make_store(STREAM_STALE_TIMEOUT="1s"), fake)
    fake.rest_fault(429, 1, retry_after=2)
    fake.stall("BTCUSDT")
    trade(fake, "BTCUSDT", 10)
    wait_for(lambda: len(fake.handshakes()) == 2, 5)
    trade(fake, "BTCUSDT", 1)
    wait_complete(store, fake, "BTCUSDT", 15)
    first, second = (t for t, _ in fake.rest_calls()[:2])
    assert second - first >= 2.0


def test_holes_left_by_an_interrupted_repair_are_found_by_the_audit_at_start(fake, make_store):
    store = start_recording(make_store(), fake)
    trade(fake, "BTCUSDT", 100)
    wait_complete(store, fake, "BTCUSDT")
    assert store.terminate() == 0
    ids = [t["a"] for t in fake.history("BTCUSDT")]
    store.sql('DELETE FROM "prices_BTCUSDT" WHERE id BETWEEN ? AND ?', (ids[40], ids[59]))
    store.sql('DELETE FROM "prices_BTCUSDT" WHERE id = ?', (ids[80],))
    store.start()  # no new trade: only the audit can find these
    wait_complete(store, fake, "BTCUSDT")
    assert f"ids={ids[40]}-{ids[59]} count=20 by=audit" in store.log()
    assert f"ids={ids[80]}-{ids[80]} count=1 by=audit" in store.log()


def test_an_unlisted_symbol_is_reported_by_the_silence_check_and_kept(fake, make_store):
    store = make_store(STREAM_SILENCE_TIMEOUT="1s").start()
    store.sql("INSERT INTO symbol_settings (symbol) VALUES ('NOPEUSDT')")
    wait_for(lambda: store.find("symbol not listed on Binance USD-M futures symbol=NOPEUSDT"), 5)
    wait_for(lambda: len(fake.rest_calls()) >= 3, 5, "more checks")
    assert store.log().count("symbol not listed") == 1  # at most once an hour
    assert fake.connections("NOPEUSDT") == 1  # no validation: it keeps listening
