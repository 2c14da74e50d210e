"""Gap repair: the queue of missing ids, and the worker against the fake exchange's REST side."""

import itertools
import logging
import sqlite3
import time

import gevent
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import wait_for
from tickd.database import Database
from tickd.fakebinance import FakeBinance
from tickd.ledger import Ranges as Gaps
from tickd.limits import WeightLimiter
from tickd.repair import EMPTY_ANSWERS, RETRY_CAP, Repair, Stats
from tickd.rest import PAGE, Rest, RestError
from tickd.wire import Tick

spans = st.tuples(st.integers(0, 60), st.integers(0, 8)).map(lambda t: (t[0], t[0] + t[1]))


@given(st.lists(st.tuples(st.booleans(), spans), max_size=30))
def test_gaps_behave_like_a_set_of_ids(operations):
    gaps, model = Gaps(), set()
    for adding, (first, last) in operations:
        ids = set(range(first, last + 1))
        if adding:
            gaps.add(first, last)
            model |= ids
        else:
            gaps.remove(first, last)
            model -= ids
        ranges = list(gaps)
        assert {i for a, b in ranges for i in range(a, b + 1)} == model
        assert gaps.count() == len(model)
        # disjoint, sorted, and not touching (touching ranges are merged)
        assert all(b1 + 1 < a2 for (_, b1), (a2, _) in itertools.pairwise(ranges))


@pytest.fixture
def db(tmp_path):
    database = Database(str(tmp_path / "ticks.db"))
    database.open()
    database.ensure_table("BTCUSDT")
    yield database
    database.close()


@pytest.fixture
def repair(db, fake):
    rest = Rest(fake.rest_url, WeightLimiter(2400))
    worker = Repair("BTCUSDT", db, rest, Stats())
    greenlet = gevent.spawn(worker.run)
    yield worker
    greenlet.kill()


def as_rows(trades):
    return [Tick(t["a"], t["T"], float(t["p"])) for t in trades]


def test_a_gap_is_filled_page_by_page_in_order(db, fake, repair, caplog):
    caplog.set_level(logging.INFO, logger="tickd")
    trades = [fake.trade("BTCUSDT") for _ in range(2500)]
    repair.add(trades[1]["a"], trades[-2]["a"])
    wait_for(lambda: not repair.gaps, 10, "the gap to be filled")
    # Whole pages are stored: the last one runs on to the newest trade.
    assert db.ticks("BTCUSDT") == as_rows(trades[1:])
    assert repair.stats.ids_repaired == 2498
    assert [q["fromId"] for _, q in fake.rest_calls()] == [
        str(trades[1]["a"]),
        str(trades[1001]["a"]),
        str(trades[2001]["a"]),
    ]
    assert "gap filled symbol=BTCUSDT ids=2498" in caplog.text


def test_one_page_closes_every_gap_it_covers(db, fake, repair):
    trades = [fake.trade("BTCUSDT") for _ in range(100)]
    for i in (5, 20, 21, 60):
        repair.add(trades[i]["a"], trades[i]["a"])
    wait_for(lambda: not repair.gaps, 5)
    assert len(fake.rest_calls()) == 1


def test_binance_own_holes_are_not_missing(db, fake, repair):
    before = [fake.trade("BTCUSDT") for _ in range(3)]
    fake.skip_ids("BTCUSDT", 5)
    after = [fake.trade("BTCUSDT") for _ in range(3)]
    repair.add(before[-1]["a"] + 1, after[-1]["a"])
    wait_for(lambda: not repair.gaps, 5)
    assert db.ticks("BTCUSDT", before[-1]["a"]) == as_rows(after)
    assert len(fake.rest_calls()) == 1


def test_ids_older_than_the_rest_window_are_given_up_and_the_rest_repaired(tmp_path, caplog):
    with FakeBinance(retention=1000) as exchange:
        database = Database(str(tmp_path / "w.db"))
        database.open()
        database.ensure_table("BTCUSDT")
        worker = Repair("BTCUSDT", database, Rest(exchange.rest_url, WeightLimiter(2400)), Stats())
        greenlet = gevent.spawn(worker.run)
        try:
            trades = [exchange.trade("BTCUSDT") for _ in range(3000)]
            database.insert("BTCUSDT", as_rows(trades[:1])[0])
            database.insert("BTCUSDT", as_rows(trades[-1:])[0])
            worker.add(trades[1]["a"], trades[-2]["a"])
            wait_for(lambda: not worker.gaps, 10)
            stored = database.ticks("BTCUSDT")
            # Binance serves the last 1000 ids: ids 1..1999 are lost, the rest are back.
            assert stored == as_rows(trades[:1] + trades[2000:])
            assert worker.stats.ids_unfillable == 1999
            (line,) = [r.message for r in caplog.records if "unfillable gap" in r.message]
            assert f"ids={trades[1]['a']}-{trades[1999]['a']}" in line and "count=1999" in line
            assert len(exchange.rest_calls()) < 20  # a bisection, not a walk
        finally:
            greenlet.kill()
            database.close()


def test_an_unlisted_symbol_is_logged_once_and_retried(db, fake, caplog):
    worker = Repair("NOPEUSDT", db, Rest(fake.rest_url, WeightLimiter(2400)), Stats())
    db.ensure_table("NOPEUSDT")
    greenlet = gevent.spawn(worker.run)
    try:
        worker.add(1, 10)
        wait_for(lambda: len(fake.rest_calls()) >= 2, 5, "a retry")
        assert caplog.text.count("symbol not listed on Binance USD-M futures") == 1
        assert worker.gaps.count() == 10  # never dropped while it may be filled
    finally:
        greenlet.kill()


def test_a_429_blocks_every_call_until_retry_after(fake):
    limiter = WeightLimiter(2400)
    rest = Rest(fake.rest_url, limiter)
    fake.trade("BTCUSDT")
    fake.rest_fault(429, 1, retry_after=1)
    with pytest.raises(RestError) as info:
        rest.agg_trades("BTCUSDT", from_id=1)
    assert info.value.status == 429
    rest.agg_trades("BTCUSDT", limit=1)
    (first, _), (second, _) = fake.rest_calls()
    assert second - first >= 1.0
    assert limiter.total == 40


def test_a_418_stops_every_call_for_two_minutes_at_least(fake):
    limiter = WeightLimiter(2400)
    rest = Rest(fake.rest_url, limiter)
    fake.rest_fault(418, 1, retry_after=5)
    with pytest.raises(RestError) as info:
        rest.agg_trades("BTCUSDT", limit=1)
    assert info.value.status == 418
    assert limiter.delay(time.time(), 20) >= 119


class Delays:
    """A sleep that takes no time and remembers what it was asked for."""

    def __init__(self):
        self.asked = []

    def __call__(self, seconds):
        self.asked.append(seconds)
        gevent.sleep(0)


def test_a_write_that_fails_is_retried_and_never_called_unfillable(tmp_path, fake, caplog):
    path = tmp_path / "locked.db"
    db = Database(str(path), lock_wait=0.01)
    db.open()
    db.ensure_table("BTCUSDT")
    # Another program holds the write lock, as the sqlite3 shell in a transaction would.
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN EXCLUSIVE")
    delays = Delays()
    worker = Repair("BTCUSDT", db, Rest(fake.rest_url, WeightLimiter(2400)), Stats(), sleep=delays)
    greenlet = gevent.spawn(worker.run)
    try:
        trades = [fake.trade("BTCUSDT") for _ in range(20)]
        worker.add(trades[1]["a"], trades[-2]["a"])
        wait_for(
            lambda: worker.stats.write_errors > EMPTY_ANSWERS + 2 or not worker.gaps,
            10,
            "failed writes",
        )
        assert worker.gaps.count() == 18  # still queued
        assert worker.stats.ids_unfillable == 0
        assert "unfillable" not in caplog.text
        # Retried with the doubling delay, capped, for as long as it takes.
        assert delays.asked[:12] == [2**n for n in range(9)] + [RETRY_CAP] * 3
        other.execute("ROLLBACK")
        wait_for(lambda: not worker.gaps, 10, "the gap to be filled")
        assert db.ticks("BTCUSDT") == as_rows(trades[1:])
        assert not greenlet.dead
    finally:
        greenlet.kill()
        other.close()
        db.close()


class FailingRest:
    """The real Rest, but the calls numbered in `failures` raise what is given instead."""

    def __init__(self, rest, failures):
        self.rest = rest
        self.failures = failures
        self.calls = 0

    def agg_trades(self, symbol, from_id=None, limit=PAGE):
        self.calls += 1
        failure = self.failures.pop(self.calls, None)
        if failure is not None:
            raise failure
        return self.rest.agg_trades(symbol, from_id, limit)


class FailingNeighbours:
    """The real Database, but neighbour_times fails the first `count` times."""

    def __init__(self, db, count):
        self.db = db
        self.count = count

    def __getattr__(self, name):
        return getattr(self.db, name)

    def neighbour_times(self, symbol, first, last):
        if self.count:
            self.count -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return self.db.neighbour_times(symbol, first, last)


@pytest.mark.parametrize(
    ("rest_failures", "neighbour_failures", "error"),
    [
        ({1: OverflowError("cannot convert float infinity to integer")}, 0, "OverflowError"),
        ({2: ValueError("invalid literal")}, 0, "ValueError"),  # the first bisection probe
        ({}, 1, "OperationalError: disk I/O error"),
    ],
    ids=["page", "bisection", "neighbour_times"],
)
def test_the_worker_outlives_an_unexpected_error(
    tmp_path, caplog, rest_failures, neighbour_failures, error
):
    with FakeBinance(retention=1000) as exchange:
        database = Database(str(tmp_path / "w.db"))
        database.open()
        database.ensure_table("BTCUSDT")
        rest = FailingRest(Rest(exchange.rest_url, WeightLimiter(2400)), rest_failures)
        db = FailingNeighbours(database, neighbour_failures)
        delays = Delays()
        worker = Repair("BTCUSDT", db, rest, Stats(), sleep=delays)
        greenlet = gevent.spawn(worker.run)
        try:
            trades = [exchange.trade("BTCUSDT") for _ in range(1500)]
            worker.add(trades[1]["a"], trades[-2]["a"])
            wait_for(lambda: greenlet.dead or not worker.gaps, 10)
            assert not greenlet.dead
            # Only the ids older than the window are given up, once; the rest are stored.
            assert database.ticks("BTCUSDT") == as_rows(trades[500:])
            assert worker.stats.ids_unfillable == 499
            assert caplog.text.count("unfillable gap") == 1
            (line,) = [r for r in caplog.records if "unexpectedly" in r.message]
            assert line.levelname == "ERROR" and line.exc_info is None  # one line, no traceback
            assert line.message.startswith("repair failed unexpectedly, retrying symbol=BTCUSDT")
            assert error in line.message
            assert delays.asked == [1]
        finally:
            greenlet.kill()
            database.close()
