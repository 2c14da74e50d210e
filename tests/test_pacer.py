"""database.Pacer, the history import's writer: bounded transactions, the lock never held
while its source waits, corrections of a replaced file."""

import contextlib
import itertools
import sqlite3

import pytest

from tickd.database import Pacer, create_prices


@pytest.fixture
def conn(tmp_path):
    with contextlib.closing(sqlite3.connect(tmp_path / "ticks.db", isolation_level=None)) as c:
        c.execute("PRAGMA journal_mode = WAL")
        create_prices(c, "BTCUSDT")
        yield c


def stored(conn):
    return conn.execute('SELECT id, timestamp, price FROM "prices_BTCUSDT" ORDER BY id').fetchall()


def ticks(ids):
    return [(i, 1_700_000_000_000 + i, 100.0 + i) for i in ids]


def test_the_source_is_read_outside_transactions_and_every_row_is_stored(conn):
    during = []

    def source():
        for tick in ticks(range(1, 5001)):
            during.append(conn.in_transaction)  # what another program would meet: the lock
            yield tick

    clock = itertools.count(0, 0.01).__next__  # each look at the clock: 10 ms later
    commits = []
    pacer = Pacer(conn, "BTCUSDT", chunk=100, clock=clock, sleep=lambda _: None)
    given = pacer.write(source(), lambda n, last: commits.append((n, last[0])))
    assert given == 5000 and stored(conn) == ticks(range(1, 5001))
    assert not any(during)
    assert len(commits) > 1 and commits[-1] == (5000, 5000)
    assert [n for n, _ in commits] == sorted({n for n, _ in commits})


def test_a_source_that_fails_stops_the_write_and_keeps_what_was_committed(conn):
    def source():
        yield from ticks(range(1, 301))
        raise ValueError("line 301: not an aggTrade row")

    pacer = Pacer(conn, "BTCUSDT", chunk=100, sleep=lambda _: None)
    with pytest.raises(ValueError, match="line 301"):
        pacer.write(source())
    assert not conn.in_transaction
    assert all(row in ticks(range(1, 301)) for row in stored(conn))


def test_a_replaced_file_corrects_rows_and_counts_only_real_changes(conn):
    Pacer(conn, "BTCUSDT", sleep=lambda _: None).write(ticks(range(1, 11)))
    corrected = ticks(range(1, 12))
    corrected[2] = (3, corrected[2][1], 999.5)  # a price Binance corrected
    before = conn.total_changes
    Pacer(conn, "BTCUSDT", sleep=lambda _: None, correct=True).write(corrected)
    assert stored(conn) == corrected
    assert conn.total_changes - before == 2  # id 3 changed, id 11 added
    # Without `correct`, a stored row is left as it is.
    Pacer(conn, "BTCUSDT", sleep=lambda _: None).write(ticks([3]))
    assert stored(conn)[2] == (3, corrected[2][1], 999.5)
