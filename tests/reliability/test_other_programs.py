"""Other programs on the same file: a long write lock, a long reader, tables dropped by hand."""

import os
import sqlite3
import time

import gevent
import pytest

from helpers import (
    FULL,
    LOCKED_STATUS_TIMEOUT,
    complete,
    enable,
    rows,
    wait_connected,
    wait_for,
)

pytestmark = pytest.mark.slow

SYMBOLS = [f"O{i:02d}USDT" for i in range(10)]


def test_a_long_write_lock_keeps_streams_alive_and_loses_nothing(fake, make_store):
    seconds = 30 if FULL else 6  # longer than the store's 5 s lock wait: writes give up
    store = make_store().start()
    enable(store, *SYMBOLS, fake=fake)
    wait_connected(fake, *SYMBOLS)
    fake.run_market(SYMBOLS, 200)
    wait_for(lambda: all(rows(store, s) for s in SYMBOLS), 10)
    handshakes = len(fake.handshakes())
    other = sqlite3.connect(store.db_path, isolation_level=None)
    latencies = []
    try:
        other.execute("BEGIN EXCLUSIVE")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.monotonic()
            code, _ = store.get("/status", timeout=LOCKED_STATUS_TIMEOUT)  # raises if later
            latencies.append(time.monotonic() - start)
            assert code == 200
            gevent.sleep(0.1)
    finally:
        other.execute("COMMIT")
        other.close()
    assert len(fake.handshakes()) == handshakes  # no stream dropped or redialled
    assert store.find("write failed, ticks skipped")  # the writes gave up, the hub went on
    print(f"lock {seconds}s: /status max {max(latencies) * 1000:.1f} ms over {len(latencies)}")
    fake.stop_market()
    for symbol in SYMBOLS:
        fake.trade(symbol)
    wait_for(lambda: all(complete(store, fake, s) for s in SYMBOLS), 60, "every id")


def test_the_wal_shrinks_back_after_a_long_reader(fake, make_store, tmp_path):
    seconds = 180 if FULL else 10
    store = make_store().start()
    enable(store, *SYMBOLS, fake=fake)
    wait_connected(fake, *SYMBOLS)
    fake.run_market(SYMBOLS, 1000)
    wal = tmp_path / "ticks.db-wal"
    reader = sqlite3.connect(store.db_path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM symbol_settings").fetchall()  # holds a snapshot
        gevent.sleep(seconds)  # the reader's length, not a synchronisation
        peak = wal.stat().st_size
    finally:
        reader.execute("COMMIT")
        reader.close()
    # Once the reader is gone a checkpoint completes, the WAL restarts and is cut to 64 MiB.
    wait_for(lambda: wal.stat().st_size <= 64 << 20, 30, "the WAL to shrink")
    after = wal.stat().st_size
    print(f"reader {seconds}s: WAL peak {peak / 2**20:.1f} MiB, after {after / 2**20:.1f} MiB")
    fake.stop_market()
    for symbol in SYMBOLS:
        fake.trade(symbol)
    wait_for(lambda: all(complete(store, fake, s) for s in SYMBOLS), 60, "every id")


def test_tables_dropped_by_hand_are_created_again(fake, make_store):
    store = make_store().start()
    enable(store, "AUSDT", fake=fake)
    wait_connected(fake, "AUSDT")
    fake.run_market(["AUSDT"], 100)
    wait_for(lambda: len(rows(store, "AUSDT")) > 5, 10)
    store.sql('DROP TABLE "prices_AUSDT"')
    dropped_at = fake.history("AUSDT")[-1]["a"]
    wait_for(lambda: len(rows(store, "AUSDT")) > 5, 10, "the table to be created again")
    fake.stop_market()
    fake.trade("AUSDT")
    wait_for(lambda: complete(store, fake, "AUSDT"), 20)
    assert rows(store, "AUSDT")[0][0] > dropped_at - 5  # only what came after the drop
    # symbol_settings dropped: created again, empty, so every stream stops; nothing crashes.
    store.sql("DROP TABLE symbol_settings")
    wait_for(lambda: fake.connections("AUSDT") == 0, 5, "the stream to stop")
    assert store.sql("SELECT COUNT(*) FROM symbol_settings") == [(0,)]
    assert store.get("/healthz") == (200, "ok\n")
    assert store.proc.poll() is None


def test_a_file_replaced_by_garbage_is_refused_at_start_and_left_alone(make_store, tmp_path):
    path = tmp_path / "ticks.db"
    garbage = os.urandom(1 << 16)
    path.write_bytes(garbage)
    store = make_store().start(wait=False)
    assert store.wait() == 1
    assert len(store.lines) == 1 and "cannot open database" in store.lines[0]
    assert path.read_bytes() == garbage
