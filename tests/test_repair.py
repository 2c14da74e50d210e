"""Gap repair: the queue of missing ids, and the worker against the fake exchange's REST side."""

import itertools
import logging
import time

import gevent
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import wait_for
from tickd.database import Database
from tickd.fakebinance import FakeBinance
from tickd.limits import WeightLimiter
from tickd.repair import Gaps, Repair, Stats
from tickd.rest import Rest, RestError
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
