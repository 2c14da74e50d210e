"""Every trade stored, once, by `python -m tickd`: a cut connection, SIGKILL, the attempt limit.

Each test breaks something while the fake exchange keeps trading, then checks the table id by
id against what the exchange generated after the first stored tick. The stream's own rules
are tested in process, faster, in tests/test_stream.py.
"""

import signal

import gevent
import pytest

from helpers import enable, rows, wait_complete, wait_for

pytestmark = pytest.mark.slow


def trade(fake, symbol, n):
    return [fake.trade(symbol) for _ in range(n)]


def start_recording(store, fake, symbol="BTCUSDT"):
    """Start `store`, enable `symbol`, and wait until its first trades are stored."""
    store.start()
    enable(store, symbol, fake=fake)
    wait_for(lambda: fake.connections(symbol) == 1, 5, "a connection")
    trade(fake, symbol, 5)
    wait_for(lambda: len(rows(store, symbol)) == 5, 5, "the first trades")
    return store


def test_trades_missed_while_disconnected_are_repaired(fake, make_store):
    # The other faults (drops, stalls, refusals, silence, rotation, locks, the REST window)
    # are tested on a Stream in process: tests/test_stream.py. This is the wiring, end to end.
    store = start_recording(make_store(), fake)
    fake.close("BTCUSDT", 1008)
    missed = trade(fake, "BTCUSDT", 300)  # made at once: none reaches the closing connection
    wait_for(lambda: fake.connections("BTCUSDT") == 1, 10, "the reconnection")
    trade(fake, "BTCUSDT", 5)
    wait_complete(store, fake, "BTCUSDT")
    assert len(rows(store, "BTCUSDT")) == 310
    # Found by the first trade of the new connection, and filled from REST, not streamed.
    gap = f"ids={missed[0]['a']}-{missed[-1]['a']} count=300"
    assert f"gap found symbol=BTCUSDT {gap} by=stream" in store.log()
    wait_for(lambda: store.find("gap filled symbol=BTCUSDT ids=300 "), 5, "the repair's report")
    assert store.log().count("gap found") == 1


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


def test_connection_attempts_are_limited_across_symbols(fake, make_store):
    symbols = [f"S{i:02d}USDT" for i in range(35)]
    store = make_store().start()
    enable(store, *symbols)
    wait_for(lambda: len(fake.handshakes()) == 35, 10, "35 connections")
    times = sorted(t for t, _ in fake.handshakes())
    assert all(times[i + 10] - times[i] >= 1.0 for i in range(len(times) - 10))
