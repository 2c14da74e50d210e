"""The status page: its shape against the spec's example, widths, uptime, hostile names."""

import calendar
import os
import sqlite3
import time
from pathlib import Path

import gevent
import pytest

from tickd.database import Database
from tickd.status import Row, collect, format_uptime, render, render_stopped
from tickd.text import width
from tickd.wire import Tick

DATA = Path(__file__).parent / "data"


def ms(text):
    """Milliseconds since the epoch of a `YYYY-MM-DD HH:MM:SS` UTC time."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S")) * 1000


def test_page_matches_the_spec_example_byte_for_byte():
    rows = [
        Row("BTCUSDT", True, (ms("2024-01-15 08:32:01"), ms("2024-12-21 14:23:45") + 999)),
        Row("ETHUSDT", True, (ms("2024-01-15 08:32:05"), ms("2024-12-21 14:23:44"))),
        Row("SOLUSDT", False, (ms("2024-03-01 12:00:00"), ms("2024-06-15 18:30:22"))),
        Row("ADAUSDT", True, None),
    ]
    uptime = 2 * 86400 + 14 * 3600 + 32 * 60 + 59
    assert render(uptime, rows) == (DATA / "status_example.txt").read_text()


def test_stopped_page():
    assert render_stopped() == "Binance Tick Store\n\nStatus:     stopped (connection refused)\n"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0m"), (59, "0m"), (60, "1m"), (3600, "1h 0m"), (86400, "1d 0h 0m"), (90061, "1d 1h 1m")],
)
def test_uptime_leaves_out_leading_zero_units(seconds, shown):
    assert format_uptime(seconds) == shown


def test_columns_stay_aligned_for_long_and_wide_names():
    rows = [
        Row("BTCUSDT", True, None),
        Row("币安人生USDT", True, None),
        Row("BTCUSDT_261225ABCDEF", False, None),
    ]
    lines = render(0, rows).splitlines()[5:]
    state_columns = {width(line[: line.index("o")]) for line in lines}
    assert len(state_columns) == 1
    assert state_columns.pop() == width("BTCUSDT_261225ABCDEF") + 2


def test_refused_names_are_escaped_and_cannot_add_lines():
    rows = [
        Row("BTCUSDT", True, None),
        Row("EVIL\nStatus:     hacked\u202e", False, invalid=True),
    ]
    page = render(0, rows)
    assert page.count("\n") == 7
    assert "Status:     hacked" not in page.splitlines()
    assert page.splitlines()[-1].endswith("off     (invalid symbol, ignored)")


def test_a_quote_in_a_refused_name_is_escaped_on_the_page():
    rows = [Row("BTCUSDT", True, None), Row('BTC"; DROP TABLE x', False, invalid=True)]
    lines = render(0, rows).splitlines()[5:]
    assert lines == [
        "BTCUSDT                on      (no data yet)",
        '"BTC\\"; DROP TABLE x"  off     (invalid symbol, ignored)',
    ]


def test_an_empty_table_without_a_settings_row_is_not_listed(tmp_path):
    db = Database(str(tmp_path / "ticks.db"))
    db.open()
    try:
        for symbol in ("BTCUSDT", "BTCUSD", "ETHUSDT", "SOLUSDT"):
            db.ensure_table(symbol)
        assert db.insert("ETHUSDT", Tick(7, ms("2026-11-30 04:56:16"), 3000.5))
        rows = collect(db, {"SOLUSDT": True}, ['x"y'], lambda symbol: symbol == "SOLUSDT")
    finally:
        db.close()
    assert rows == [
        Row("SOLUSDT", True, None),  # listed in symbol_settings: shown, empty or not
        Row('x"y', False, invalid=True),
        Row("ETHUSDT", False, (ms("2026-11-30 04:56:16"), ms("2026-11-30 04:56:16"))),
    ]  # BTCUSDT and BTCUSD: empty tables, no settings row: nothing to say


def spans(db, *symbols):
    return {row.name: row.span for row in collect(db, dict.fromkeys(symbols, True), (), bool)}


def test_the_page_follows_our_own_writes_without_reading_the_tables(db):
    db.insert_many("BTCUSDT", [Tick(5, 5000, 1.0), Tick(6, 6000, 1.0)])
    assert spans(db, "BTCUSDT") == {"BTCUSDT": (5000, 6000)}
    statements = []
    db.file.conn.set_trace_callback(statements.append)
    try:
        db.insert("BTCUSDT", Tick(7, 7000, 1.0))
        db.insert("BTCUSDT", Tick(4, 4000, 1.0))  # a repaired older tick
        db.insert("BTCUSDT", Tick(7, 7000, 1.0))  # already stored: changes nothing
        assert spans(db, "BTCUSDT") == {"BTCUSDT": (4000, 7000)}
    finally:
        db.file.conn.set_trace_callback(None)
    assert not [s for s in statements if "MIN(timestamp)" in s], "no table read again"


@pytest.mark.parametrize(
    ("change", "after"),
    [
        ("INSERT INTO prices_BTCUSDT VALUES (1, 1000, 1.0)", (1000, 6000)),  # an import
        ("DELETE FROM prices_BTCUSDT WHERE id = 6", (5000, 5000)),  # rows removed by hand
        ("DROP TABLE prices_BTCUSDT", None),
    ],
)
def test_another_programs_commit_shows_on_the_next_page(db, change, after):
    db.insert_many("BTCUSDT", [Tick(5, 5000, 1.0), Tick(6, 6000, 1.0)])
    assert spans(db, "BTCUSDT") == {"BTCUSDT": (5000, 6000)}
    other = sqlite3.connect(db.path, isolation_level=None)
    try:
        other.execute(change)
    finally:
        other.close()
    assert spans(db, "BTCUSDT") == {"BTCUSDT": after}


def test_a_reopened_file_is_read_again(db, tmp_path):
    db.insert_many("BTCUSDT", [Tick(5, 5000, 1.0)])
    assert spans(db, "BTCUSDT") == {"BTCUSDT": (5000, 5000)}
    other = sqlite3.connect(tmp_path / "other.db", isolation_level=None)
    try:
        other.execute("CREATE TABLE prices_BTCUSDT (id INTEGER PRIMARY KEY, timestamp, price)")
        other.execute("INSERT INTO prices_BTCUSDT VALUES (9, 9000, 1.0)")
    finally:
        other.close()
    os.replace(tmp_path / "other.db", db.path)
    db.file.reopen(rescue=False)
    assert spans(db, "BTCUSDT") == {"BTCUSDT": (9000, 9000)}


def test_a_symbol_without_ticks_is_not_read_again_and_its_first_tick_shows(db):
    assert spans(db, "ETHUSDT") == {"ETHUSDT": None}  # no table yet
    statements = []
    db.file.conn.set_trace_callback(statements.append)
    try:
        db.ensure_table("ETHUSDT")
        db.insert("ETHUSDT", Tick(1, 1000, 1.0))
        assert spans(db, "ETHUSDT") == {"ETHUSDT": (1000, 1000)}
    finally:
        db.file.conn.set_trace_callback(None)
    assert not [s for s in statements if "MIN(timestamp)" in s or "sqlite_master" in s]


def test_a_table_another_program_fills_is_listed_on_the_next_page(db):
    assert spans(db) == {}
    other = sqlite3.connect(db.path, isolation_level=None)
    try:
        other.execute("CREATE TABLE prices_XRPUSDT (id INTEGER PRIMARY KEY, timestamp, price)")
        other.execute("INSERT INTO prices_XRPUSDT VALUES (3, 3000, 1.0)")
    finally:
        other.close()
    assert spans(db) == {"XRPUSDT": (3000, 3000)}


def test_the_page_does_not_wait_while_the_connection_is_held(db):
    db.insert_many("BTCUSDT", [Tick(5, 5000, 1.0)])
    assert spans(db, "BTCUSDT") == {"BTCUSDT": (5000, 5000)}
    holder = gevent.spawn(db.file.run, gevent.sleep, 30)  # as a checkpoint holds it
    try:
        gevent.sleep(0)
        assert db.file.busy
        page = gevent.spawn(spans, db, "BTCUSDT")
        assert page.get(timeout=2) == {"BTCUSDT": (5000, 5000)}
        assert not holder.dead
    finally:
        holder.kill()
