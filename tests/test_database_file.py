"""The database file and the process around it: deleted or replaced under a running store,
claimed by a second store, or never touched when the store cannot start."""

import contextlib
import os
import socket
import sqlite3
import time

import pytest

from helpers import wait_for

pytestmark = pytest.mark.slow

SYMBOL = "BTCUSDT"


def recording(make_store, fake, **env):
    """A running store recording SYMBOL, with its first 5 trades stored."""
    fake.list_symbol(SYMBOL)
    store = make_store(**env).start()
    store.sql("INSERT INTO symbol_settings (symbol) VALUES (?)", (SYMBOL,))
    wait_for(lambda: fake.connections(SYMBOL) == 1, 5, "a connection")
    trade(fake, 5)
    wait_for(lambda: len(store.rows(SYMBOL)) == 5, 5, "the first trades")
    return store


def trade(fake, n):
    return [fake.trade(SYMBOL)["a"] for _ in range(n)]


def reopened_after(change, store, fake, how):
    """Do `change` to the file, wait for the store to reopen DB_PATH and redial (a trade made
    before the new connection reaches nobody, and is revealed only by the next one); the
    seconds from the change to the reopen."""
    start = time.monotonic()
    change()
    wait_for(lambda: store.find("database reopened"), 10, "the reopen")
    took = time.monotonic() - start
    assert store.find(f"database file {how} while the store runs")
    wait_for(lambda: len(fake.handshakes()) == 2 and fake.connections(SYMBOL) == 1, 5, "redial")
    return took


def ids(store):
    return [row[0] for row in store.rows(SYMBOL)]


def every_id(fake):
    return [t["a"] for t in fake.history(SYMBOL)]


def test_a_deleted_database_is_rescued_and_recording_goes_on(fake, make_store):
    store = recording(make_store, fake)
    took = reopened_after(lambda: os.remove(store.db_path), store, fake, "deleted")
    print(f"deleted: reopened {took:.2f} s after the rm")
    trade(fake, 5)
    # The five ticks written before the deletion were copied out of the deleted file.
    wait_for(lambda: ids(store) == every_id(fake), 10, "every id in the file at DB_PATH")
    status, body = store.get("/healthz")
    assert (status, body) == (200, "ok\n")


def test_a_replaced_database_is_reopened_and_its_missing_ticks_repaired(fake, make_store, tmp_path):
    store = recording(make_store, fake)
    restore = str(tmp_path / "restore.db")
    with (
        contextlib.closing(sqlite3.connect(store.db_path)) as live,
        contextlib.closing(sqlite3.connect(restore)) as copy,
    ):
        live.backup(copy)  # the 5 trades so far
    lacked = trade(fake, 5)
    wait_for(lambda: len(store.rows(SYMBOL)) == 10, 5, "the next trades")
    start = time.monotonic()
    # A restore from backup, while the store runs.
    took = reopened_after(lambda: os.replace(restore, store.db_path), store, fake, "replaced")
    print(f"replaced: reopened {took:.2f} s after the mv")
    trade(fake, 3)
    # The new file lacked 5 ticks the old one had: found by id and fetched over REST.
    wait_for(lambda: ids(store) == every_id(fake), 10, "every id in the new file")
    assert store.find(f"gap found symbol=BTCUSDT ids={lacked[0]}-{lacked[-1]} count=5 by=stream")
    print(f"replaced: every id in the new file {time.monotonic() - start:.2f} s after the mv")


def test_a_second_store_on_the_same_database_refuses_to_start(fake, make_store):
    first = recording(make_store, fake)
    second = make_store().start(wait=False)
    assert second.wait() == 1
    assert "another store is running on this database" in second.log()
    trade(fake, 5)
    wait_for(lambda: len(first.rows(SYMBOL)) == 10, 5, "the first store, still recording")
    assert fake.connections(SYMBOL) == 1


def test_a_port_in_use_stops_the_start_before_the_database_is_created(make_store, tmp_path):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # the store binds every address too
        taken.listen()
        store = make_store(HTTP_PORT=str(taken.getsockname()[1])).start(wait=False)
        assert store.wait() == 1
    assert "cannot listen" in store.log()
    assert "store starting" not in store.log()
    assert not os.path.exists(store.db_path)
