"""The process-wide limits, on an injected clock: exact timelines, no window over its limit."""

import math

import gevent
import gevent.event
import gevent.pool
import pytest

from tickd.limits import ATTEMPT_WINDOWS, MAX_BLOCK, AttemptLimiter, WeightLimiter


class FakeTime:
    """A clock that only moves when a greenlet sleeps on it: the earliest sleeper wakes first."""

    def __init__(self, start=1_000_000.0):
        self.now = start
        self._sleepers = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        event = gevent.event.Event()
        self._sleepers.append((self.now + seconds, id(event), event))
        event.wait()

    def run(self, group, limit=100_000):
        """Run `group` to the end, moving the clock to the earliest sleeper whenever every
        greenlet is asleep."""
        for _ in range(limit):
            gevent.sleep(0)
            if not any(not g.dead for g in group):
                return
            if self._sleepers:
                self._sleepers.sort()
                wake_at, _, event = self._sleepers.pop(0)
                self.now = max(self.now, wake_at)
                event.set()
        raise AssertionError("still busy")


def test_400_symbols_at_once_get_exactly_the_allowed_timeline():
    t = FakeTime()
    limiter = AttemptLimiter(clock=t.clock, sleep=t.sleep)
    admitted = []
    group = gevent.pool.Group()
    start = t.now
    for n in range(400):
        group.spawn(lambda n=n: (limiter.acquire(), admitted.append((t.now - start, n))))
    t.run(group)
    times = [when for when, _ in admitted]
    assert [n for _, n in admitted] == list(range(400))  # first come, first served
    # 10 per 1.1 s ...
    assert times[:10] == [0.0] * 10
    assert times[10:20] == [pytest.approx(1.1)] * 10
    # ... until 300 in the 5-minute window; the 301st waits for the first to leave it.
    assert times[299] < 302
    assert times[300] == pytest.approx(302.0)
    for limit, seconds in ATTEMPT_WINDOWS:
        for i in range(len(times) - limit):
            assert times[i + limit] - times[i] >= seconds - 1e-9


def test_an_attempt_after_a_quiet_spell_goes_at_once():
    t = FakeTime()
    limiter = AttemptLimiter(clock=t.clock, sleep=t.sleep)
    for _ in range(10):
        limiter.acquire()
    t.now += 5
    limiter.acquire()  # would block (and fail the test by hanging) if it had to wait


def test_weight_budget_per_utc_minute():
    t = FakeTime(start=60_000.0 + 10)  # 10 s into a UTC minute
    limiter = WeightLimiter(100, clock=t.clock, sleep=t.sleep)
    started = []
    group = gevent.pool.Group()
    for _ in range(12):
        group.spawn(lambda: (limiter.acquire(20), started.append(t.now)))
    t.run(group)
    assert started[:5] == [60_010.0] * 5  # 5 x 20 = the budget of 100
    assert started[5:10] == [60_060.0] * 5  # the next minute
    assert started[10:] == [60_120.0] * 2
    assert limiter.total == 240


def test_no_call_in_the_last_second_of_a_minute():
    t = FakeTime(start=60_059.5)
    limiter = WeightLimiter(1200, clock=t.clock, sleep=t.sleep)
    group = gevent.pool.Group()
    group.spawn(limiter.acquire, 20)
    t.run(group)
    assert t.now == 60_060.0


def test_binance_count_and_blocks_are_honoured():
    t = FakeTime(start=60_000.0)
    limiter = WeightLimiter(1200, clock=t.clock, sleep=t.sleep)
    limiter.observe(1190)  # other programs on this IP spent most of the minute
    assert limiter.delay(t.now, 20) == 60.0
    t.now = 60_060.0
    limiter.block(130)  # a 418 ban
    assert limiter.delay(t.now, 20) == 130.0


@pytest.mark.parametrize(
    ("seconds", "delay"),
    [
        (130.0, 130.0),
        (1e9, MAX_BLOCK),  # Binance's longest ban is 3 days
        (math.inf, 0.0),  # a number that cannot be trusted blocks nothing
        (math.nan, 0.0),
        (-5.0, 0.0),
        (-math.inf, 0.0),
    ],
    ids=["130", "1e9", "inf", "nan", "-5", "-inf"],
)
def test_a_block_lasts_three_days_at_most(seconds, delay):
    t = FakeTime(start=60_010.0)
    limiter = WeightLimiter(1200, clock=t.clock, sleep=t.sleep)
    limiter.block(seconds)
    assert limiter.delay(t.now, 20) == delay
    assert MAX_BLOCK == 3 * 24 * 3600


def test_a_garbled_block_does_not_shorten_a_real_one():
    t = FakeTime(start=60_000.0)
    limiter = WeightLimiter(1200, clock=t.clock, sleep=t.sleep)
    limiter.block(130)
    for seconds in (math.nan, -1.0, math.inf, 0.0):
        limiter.block(seconds)
    assert limiter.delay(t.now, 20) == 130.0
