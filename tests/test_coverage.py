"""How far back each table is complete: the id walk, the store's minute look-ups, /metrics and
`tickd.admin symbols` (the /metrics families are in test_metrics.py)."""

import io
import sqlite3
import urllib.request

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from helpers import wait_for
from tickd import admin
from tickd.coverage import Coverage, Run
from tickd.database import create_prices, run_start
from tickd.wire import Tick

T0 = 1_735_689_600_000  # 2025-01-01 00:00:00 UTC, ms


def expected_start(ids):
    start = max(ids)
    while start - 1 in ids:
        start -= 1
    return start


def counter(ids, calls):
    def count(first, last):
        calls.append((first, last))
        return sum(1 for i in ids if first <= i <= last)

    return count


@settings(max_examples=300, deadline=None)
@given(
    st.sets(st.integers(0, 200), min_size=1),
    st.sets(st.integers(0, 200)),
    st.integers(1, 40),
)
def test_the_run_start_is_the_lowest_id_with_every_id_above_it_stored(before, added, window):
    # `before` is what a first look saw; `added` arrives after it (the stream's new ids,
    # repair, an import filling below): rows are only ever added.
    after = before | added
    first = run_start(counter(before, []), max(before), min(before), window=window)
    assert first == expected_start(before)
    known = (first, max(before))
    again = run_start(counter(after, []), max(after), min(after), known, window)
    assert again == expected_start(after)


def test_a_later_look_counts_only_the_new_ids_and_the_one_below():
    ids = set(range(1000, 2000)) | set(range(0, 500))
    first = run_start(counter(ids, []), 1999, 0, window=64)
    assert first == 1000
    ids |= set(range(2000, 2100))  # streamed since
    calls = []
    assert run_start(counter(ids, calls), 2099, 0, (1000, 1999), 64) == 1000
    assert calls == [(2000, 2099), (999, 999)]


def ticks(ids):
    return [Tick(i, T0 + i, 100.0 + i / 100) for i in ids]


def test_coverage_follows_the_table_as_holes_are_filled_and_tables_go(db):
    db.ensure_table("BTCUSDT")
    db.insert_many("BTCUSDT", ticks([*range(100, 200), *range(300, 400)]))
    db.ensure_table("ETHUSDT")  # no ticks: no run
    coverage = Coverage(db)
    coverage.refresh()
    assert coverage.runs == {"BTCUSDT": Run(300, T0 + 300, 399)}

    db.insert_many("BTCUSDT", ticks(range(200, 300)))  # an import, or repair, fills the hole
    db.insert_many("BTCUSDT", ticks(range(400, 450)))  # and the stream goes on
    db.insert_many("ETHUSDT", ticks([7]))
    coverage.refresh()
    assert coverage.runs == {"BTCUSDT": Run(100, T0 + 100, 449), "ETHUSDT": Run(7, T0 + 7, 7)}

    db.insert_many("BTCUSDT", ticks([460]))  # ids 450-459 not (yet) had
    coverage.refresh()
    assert coverage.runs["BTCUSDT"] == Run(460, T0 + 460, 460)

    other = sqlite3.connect(db.path, isolation_level=None)  # another program drops it
    try:
        other.execute('DROP TABLE "prices_ETHUSDT"')
    finally:
        other.close()
    coverage.refresh()
    assert set(coverage.runs) == {"BTCUSDT"}
    coverage.forget()
    assert coverage.runs == {}


def test_a_table_that_cannot_be_read_keeps_its_run_and_says_so(db, caplog):
    db.ensure_table("BTCUSDT")
    db.insert_many("BTCUSDT", ticks(range(5, 10)))
    coverage = Coverage(db)
    coverage.refresh()
    db.close()
    coverage.refresh()
    assert coverage.runs == {"BTCUSDT": Run(5, T0 + 5, 9)}
    assert "cannot tell how far back the table is complete" in caplog.text


def run_admin(path, *argv):
    out, err = io.StringIO(), io.StringIO()
    status = admin.main(list(argv), {"DB_PATH": str(path)}, out, err)
    return status, out.getvalue(), err.getvalue()


def test_symbols_says_how_far_back_each_table_is_complete(tmp_path):
    path = tmp_path / "ticks.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TABLE symbol_settings (symbol TEXT PRIMARY KEY, enabled INTEGER DEFAULT 1)"
    )
    conn.executemany(
        "INSERT INTO symbol_settings VALUES (?, ?)",
        [("BTCUSDT", 1), ("ETHUSDT", 0), ("XRPUSDT", 1)],
    )
    for symbol, ids in (("BTCUSDT", [*range(1, 4), *range(10, 13)]), ("ETHUSDT", range(5, 9))):
        create_prices(conn, symbol)
        conn.executemany(
            f'INSERT INTO "prices_{symbol}" VALUES (?, ?, ?)', [(i, T0 + i, 1.0) for i in ids]
        )
    conn.close()
    status, out, _ = run_admin(path, "symbols")
    assert status == 0
    assert out == (
        "SYMBOL      STATE\n"
        "BTCUSDT     on      complete since 2025-01-01T00:00:00.010Z (ids 10-12); "
        "older ticks up to id 3, ids 4-9 missing\n"
        "ETHUSDT     off     complete since 2025-01-01T00:00:00.005Z (ids 5-8)\n"
        "XRPUSDT     on\n"
    )


@pytest.mark.slow
def test_a_running_store_exports_since_when_tables_are_complete(fake, make_store):
    store = make_store()
    store.sql("CREATE TABLE symbol_settings (symbol TEXT PRIMARY KEY, enabled INTEGER DEFAULT 1)")
    store.sql(
        'CREATE TABLE "prices_BTCUSDT" (id INTEGER PRIMARY KEY AUTOINCREMENT, '
        "timestamp INTEGER NOT NULL, price REAL NOT NULL)"
    )
    for i in (*range(40, 45), *range(50, 60)):  # imported history, a hole, then more
        store.sql('INSERT INTO "prices_BTCUSDT" VALUES (?, ?, 1.5)', (i, T0 + i))
    store.start()

    def metric():
        with urllib.request.urlopen(f"http://127.0.0.1:{store.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }.get(("tickstore_complete_since_id", (("symbol", "BTCUSDT"),)))

    assert wait_for(metric, 10, "the first look at the table") == 50
