"""Crash safety: SIGKILL at random moments under load, and SIGTERM under load.

After every kill the file must be intact (`PRAGMA integrity_check`), still in WAL mode, and after
restart and repair every generated id must be stored exactly once.
"""

import random
import signal
import sqlite3
import time

import gevent
import pytest

from helpers import FULL, complete, enable, rows, wait_connected, wait_for

pytestmark = pytest.mark.slow

SYMBOLS = [f"K{i:02d}USDT" for i in range(50 if FULL else 10)]
KILLS = 50 if FULL else 2


def check_file(path):
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


def finish_and_check(store, fake, symbols, timeout):
    """Stop trading, trade once more per symbol (revealing any gap), wait for every id."""
    fake.stop_market()
    for symbol in symbols:
        fake.trade(symbol)
    wait_for(lambda: all(complete(store, fake, s) for s in symbols), timeout, "every id")
    checked = sum(len(rows(store, s)) for s in symbols)
    print(f"ticks checked={checked} lost=0")
    return checked


def test_sigkill_at_random_moments(fake, make_store):
    store = make_store(REST_WEIGHT_PER_MINUTE="2400").start()
    enable(store, *SYMBOLS, fake=fake)
    wait_connected(fake, *SYMBOLS)
    fake.run_market(SYMBOLS, 500)
    rng = random.Random(7)
    for _ in range(KILLS):
        gevent.sleep(rng.uniform(0.5, 3.0))  # a random moment to strike, not a synchronisation
        store.proc.send_signal(signal.SIGKILL)
        assert store.wait() == -signal.SIGKILL
        check_file(store.db_path)
        store.start()
    finish_and_check(store, fake, SYMBOLS, 120 if not FULL else 600)
    check_file(store.db_path)


@pytest.mark.parametrize("locked", [False, True], ids=["free", "write lock held elsewhere"])
def test_sigterm_under_load_is_clean(fake, make_store, tmp_path, locked):
    store = make_store().start()
    enable(store, *SYMBOLS, fake=fake)
    wait_connected(fake, *SYMBOLS)
    fake.run_market(SYMBOLS, 500)
    wait_for(lambda: len(rows(store, SYMBOLS[0])) > 10, 10)
    other = sqlite3.connect(store.db_path, isolation_level=None)
    try:
        if locked:
            other.execute("BEGIN EXCLUSIVE")
            wait_for(lambda: store.find("write failed"), 10, "a write to wait")
        start = time.monotonic()
        assert store.terminate(timeout=12) == 0
        took = time.monotonic() - start
        assert took < 10, took
        print(f"SIGTERM exit in {took * 1000:.0f} ms")
    finally:
        if locked:
            other.execute("COMMIT")
        other.close()
    if not locked:
        assert not (tmp_path / "ticks.db-wal").exists()
    check_file(store.db_path)
    store.start()
    wait_connected(fake, *SYMBOLS)
    finish_and_check(store, fake, SYMBOLS, 120)
