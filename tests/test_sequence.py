"""sqlite_sequence in the order of the ticks each table takes: the plan, the rewrite (which
keeps every name and value), and the look every few minutes."""

import contextlib
import logging
import sqlite3
from types import SimpleNamespace

import pytest

from helpers import wait_connected, wait_for
from tickd import config as configuration
from tickd import database
from tickd.app import App
from tickd.sequence import SequenceOrder, plan, rows_read
from tickd.wire import Tick


def test_rows_read_counts_each_insert_up_to_its_tables_row():
    assert rows_read(["a", "b", "c"], {"a": 1, "c": 10}) == 1 * 1 + 10 * 3


@pytest.mark.parametrize(
    ("names", "counts", "order"),
    [
        (["a", "b", "c"], {"c": 10, "b": 1}, [2, 1, 0]),
        (["a", "b", "c", "d"], {"d": 5, "b": 5}, [1, 3, 0, 2]),  # ties and the rest: as were
        (["a", "b", "c"], {"a": 10, "c": 1}, None),  # already best
        (["a", "b"], {"b": 10, "a": 9}, None),  # 28 rows read against 29: not worth it
        (["a", "b"], {}, None),  # nothing counted
        ([], {"a": 3}, None),
    ],
    ids=["busiest-first", "stable", "in-order", "small-gain", "no-counts", "no-rows"],
)
def test_plan_puts_the_busiest_first_when_it_saves_a_fifth(names, counts, order):
    assert plan(names, counts) == order


def sequence(db):
    return db.file.conn.execute("SELECT name, seq FROM sqlite_sequence ORDER BY rowid").fetchall()


def stored(db, symbol, last):
    db.ensure_table(symbol)
    assert db.insert_many(symbol, [Tick(i, i, 1.0) for i in range(1, last + 1)])


def test_the_rewrite_keeps_every_name_and_value_and_autoincrement_goes_on(db):
    for symbol, last in (("AUSDT", 5), ("BUSDT", 7), ("CUSDT", 9)):
        stored(db, symbol, last)
    before = sequence(db)
    assert db.reorder_sequence(lambda names: [2, 0, 1])
    assert sequence(db) == [before[2], before[0], before[1]]
    seqs = dict(before)  # the store keeps them ahead of the ids (database.SEQ_LEAD)
    assert seqs["prices_BUSDT"] == 7 + database.SEQ_LEAD
    with contextlib.closing(sqlite3.connect(db.path, isolation_level=None)) as other:
        other.execute('INSERT INTO "prices_BUSDT" (timestamp, price) VALUES (8, 1.0)')
        next_id = seqs["prices_BUSDT"] + 1
        assert other.execute('SELECT MAX(id) FROM "prices_BUSDT"').fetchone() == (next_id,)
        assert other.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert db.insert("AUSDT", Tick(6, 6, 1.0)) and db.max_id("AUSDT") == 6
    assert ("prices_AUSDT", seqs["prices_AUSDT"]) in sequence(db)


def test_a_plan_that_is_not_an_order_of_the_rows_changes_nothing(db):
    stored(db, "AUSDT", 3)
    stored(db, "BUSDT", 4)
    before = sequence(db)
    with pytest.raises(ValueError, match="not an order"):
        db.reorder_sequence(lambda names: [0, 0])
    assert sequence(db) == before
    assert not db.reorder_sequence(lambda names: None)
    assert sequence(db) == before


def test_without_an_autoincrement_table_there_is_nothing_to_reorder(db):
    asked = []
    assert not db.reorder_sequence(asked.append)
    assert asked == []


def test_each_look_orders_by_the_ticks_taken_since_the_one_before(db, caplog):
    caplog.set_level(logging.INFO, logger="tickd")
    for symbol in ("AUSDT", "BUSDT", "CUSDT"):
        stored(db, symbol, 1)
    taken = {"AUSDT": 100, "BUSDT": 0, "CUSDT": 0}

    def streams():  # as the watcher's: symbol -> stream, with the ticks it took
        return {s: SimpleNamespace(intake=SimpleNamespace(trades=n)) for s, n in taken.items()}

    order = SequenceOrder(db, streams, sleep=None)
    assert not order.look()  # since the start: A first, as it is
    taken.update(AUSDT=110, CUSDT=500)  # since: A 10, C 500
    assert order.look()
    assert [name for name, _ in sequence(db)] == ["prices_CUSDT", "prices_AUSDT", "prices_BUSDT"]
    assert "sqlite_sequence reordered" in caplog.text
    assert "rows_read_per_insert=3.0->1.0" in caplog.text  # (10 + 500 * 3) / 510, then 520 / 510
    # A stream started again counts from 0: what it counts now is what it took.
    taken.update(AUSDT=2000, CUSDT=3)
    assert order.look()
    assert sequence(db)[0][0] == "prices_AUSDT"
    assert not order.look()  # nothing taken since


class Stop(Exception):
    pass


def test_a_look_that_fails_is_logged_and_the_next_one_comes(db, caplog):
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        if len(slept) == 3:
            raise Stop

    db.close()  # every look fails
    with pytest.raises(Stop):
        SequenceOrder(db, dict, first=2.0, interval=7.0, sleep=sleep).run()
    assert slept == [2.0, 7.0, 7.0]
    assert caplog.text.count("cannot reorder sqlite_sequence") == 2
    assert "database is closed" in caplog.text


def test_the_running_store_puts_its_busiest_table_first(tmp_path, fake):
    """The store's own look (called here rather than waited for) counts its streams' ticks."""
    env = {
        "DB_PATH": str(tmp_path / "ticks.db"),
        "HTTP_PORT": "0",
        "BINANCE_WS_URL": fake.ws_url,
        "BINANCE_REST_URL": fake.rest_url,
        "SETTINGS_POLL_INTERVAL": "100ms",
    }
    app = App(configuration.load(env))
    app.start()
    try:
        for symbol in ("AUSDT", "BUSDT"):
            fake.list_symbol(symbol)
            app.db.ensure_table(symbol)
        with contextlib.closing(sqlite3.connect(app.db.path, isolation_level=None)) as other:
            other.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('prices_AUSDT', 0)")
            other.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('prices_BUSDT', 0)")
            other.execute("INSERT INTO symbol_settings (symbol) VALUES ('AUSDT'), ('BUSDT')")
        wait_connected(fake, "AUSDT", "BUSDT")
        for _ in range(20):
            fake.trade("BUSDT")
        fake.trade("AUSDT")
        wait_for(lambda: rows_of(app.db, "BUSDT") == 20 and rows_of(app.db, "AUSDT") == 1, 10)
        assert app.sequence.look()
        assert [name for name, _ in sequence(app.db)] == ["prices_BUSDT", "prices_AUSDT"]
    finally:
        app.stop()


def rows_of(db, symbol):
    return len(db.ticks(symbol))
