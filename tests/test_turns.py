"""The readers' share of each turn of the event loop: how much runs in one turn, in what
order the rest comes back, and that nothing is dropped. A fake clock counts work in units."""

import itertools

import gevent
import pytest

from tickd.turns import Turns

pytestmark = pytest.mark.timeout(10)


class Work:
    """A fake clock that only moves when a reader works: one unit per piece of work."""

    def __init__(self):
        self.now = 0.0
        self.done = []  # (loop iteration, reader, piece)

    def clock(self):
        return self.now

    def piece(self, reader, number, units=1):
        self.now += units
        self.done.append((gevent.get_hub().loop.iteration, reader, number))


@pytest.fixture
def work():
    return Work()


@pytest.fixture
def turns(work):
    made = Turns(budget=3, clock=work.clock)
    yield made
    made.close()


def reader(turns, work, name, pieces, units=1):
    for number in range(pieces):
        turns.take()
        work.piece(name, number, units)


def per_turn(work):
    turns = {}
    for iteration, name, _ in work.done:
        turns.setdefault(iteration, []).append(name)
    return list(turns.values())


def test_a_turn_starts_at_most_its_share_and_nothing_is_dropped(turns, work):
    readers = [gevent.spawn(reader, turns, work, name, 5) for name in "abcd"]
    gevent.joinall(readers, timeout=5, raise_error=True)
    for name in "abcd":  # every piece done, each reader's in its order
        assert [n for _, r, n in work.done if r == name] == list(range(5))
    assert max(len(names) for names in per_turn(work)) == 3  # the budget: three units
    assert turns.deferred > 0


def test_readers_that_waited_go_first_in_the_order_they_came(turns, work):
    # Pieces as long as the share: each turn runs one, and the readers take turns.
    readers = [gevent.spawn(reader, turns, work, name, 3, units=3) for name in "abcd"]
    gevent.joinall(readers, timeout=5, raise_error=True)
    # "a" had the share of the turn they started in; then each goes in its place in the queue.
    assert per_turn(work) == [[name] for name in "a" + "abcd" + "abcd" + "bcd"]


def test_a_turn_starts_with_those_that_waited(turns, work):
    first = gevent.spawn(reader, turns, work, "busy", 6)
    gevent.sleep(0)  # it starts, uses the turn's share and queues
    assert len(work.done) == 3
    late = gevent.spawn(reader, turns, work, "late", 1)
    gevent.joinall([first, late], timeout=5, raise_error=True)
    # The busy reader waited first: the next turn's share is its, the late one's piece after.
    assert per_turn(work) == [["busy"] * 3, ["busy"] * 3, ["late"]]


def test_other_greenlets_run_between_the_readers_turns(turns, work):
    """What the share is for: a greenlet that is not a reader (the status page, a timer)
    waits for one turn of reader work at most, however much the readers have."""
    seen = []  # pieces done when the other greenlet ran

    def other():
        while len(work.done) < 40:
            seen.append(len(work.done))
            gevent.sleep(0)

    readers = [gevent.spawn(reader, turns, work, name, 10) for name in "abcd"]
    watcher = gevent.spawn(other)
    gevent.joinall([*readers, watcher], timeout=5, raise_error=True)
    assert len(work.done) == 40
    assert max(b - a for a, b in itertools.pairwise(seen)) <= 3


def test_time_spent_waiting_for_the_network_is_not_counted():
    """The share runs from the end of the loop's wait, not from before it: a reader woken
    after a quiet second goes on at once."""
    turns = Turns(budget=0.05)  # the real clock
    try:

        def quiet():
            for _ in range(3):
                gevent.sleep(0.06)  # longer than the budget, spent in the loop's wait
                turns.take()

        gevent.spawn(quiet).join(timeout=5)
        assert turns.deferred == 0
    finally:
        turns.close()


def test_the_loop_does_not_sleep_while_readers_wait(work):
    """A queued reader is resumed at the next turn even when nothing else is ready: the
    loop polls without blocking. (A blocked poll would sleep until its next event, here a
    timer 3 s away, once for every turn the reader waits.)"""
    turns = Turns(budget=1, clock=work.clock)
    fired = []
    later = gevent.get_hub().loop.timer(3.0)
    later.start(lambda: fired.append(True))
    try:
        gevent.spawn(reader, turns, work, "a", 4).join(timeout=5)
        assert len(work.done) == 4 and turns.deferred == 3
        assert not fired  # done before the timer: no turn waited for it
    finally:
        later.stop()
        turns.close()


def test_close_lets_queued_readers_go_on(work):
    turns = Turns(budget=1, clock=work.clock)
    readers = [gevent.spawn(reader, turns, work, name, 3) for name in "ab"]
    gevent.sleep(0)  # each has done its first piece or queued
    turns.close()
    gevent.joinall(readers, timeout=5, raise_error=True)
    assert len(work.done) == 6
    assert turns.deadline == float("inf")


def test_a_killed_reader_leaves_the_queue_harmlessly(turns, work):
    victim = gevent.spawn(reader, turns, work, "victim", 10)
    other = gevent.spawn(reader, turns, work, "other", 10)
    gevent.sleep(0)
    victim.kill()
    other.join(timeout=5)
    assert [n for _, r, n in work.done if r == "other"] == list(range(10))
    assert victim.dead


def test_each_turn_resumes_at_least_one_reader(work):
    """Even with no share left (a stalled machine, or none at all), readers make progress."""
    turns = Turns(budget=0, clock=work.clock)
    try:
        readers = [gevent.spawn(reader, turns, work, name, 3) for name in "ab"]
        gevent.joinall(readers, timeout=5, raise_error=True)
        assert per_turn(work) == [[name] for name in "ababab"]
    finally:
        turns.close()
