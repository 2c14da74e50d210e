"""A share of each turn of the event loop for the stream readers, so that no turn runs long.

Every greenlet of the store runs on one thread, one turn of gevent's loop at a time: in each
turn the loop wakes what became ready (sockets, timers, released locks) and runs each until it
waits again. When the whole market's spikes outrun the store, or a checkpoint has held the
database for a few hundred milliseconds, hundreds of readers are ready at once and one turn
runs them all: the status page, the timers and the repair wait behind it.

Readers call `Turns.take()` before each frame. Within the first BUDGET seconds of a turn it
returns at once; later, the reader waits in a first-in, first-out queue, and the next turn
starts with the queue (before anything else, and again only for BUDGET seconds). A turn then
holds about BUDGET of reader work plus what else became ready; the work not done waits in
the queue and in the kernel's socket buffers, and no trade is dropped. While readers wait,
the loop polls without blocking, so they lose no time when nothing else is ready.

A turn's share starts when the loop's wait for the network ends: a check watcher at the
highest priority, which libev (gevent's default loop, the store's) runs after the poll and
before what the poll found ready. Under libuv check watchers run after the sockets' callbacks,
so the share would be coarser there; the store does not use it.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

import gevent
from gevent.hub import Waiter

BUDGET = 0.005  # seconds of reader work a turn starts; a trade takes about 0.1 ms


class Turns:
    """The readers' share of each turn of the hub's loop. `close()` stops its watchers."""

    __slots__ = ("_budget", "_check", "_clock", "_idle", "_queue", "deadline", "deferred")

    def __init__(self, budget: float = BUDGET, clock: Callable[[], float] = time.monotonic):
        self._budget = budget
        self._clock = clock
        self.deadline = clock() + budget  # readers start work before it, else they queue
        self.deferred = 0  # frames left for a later turn (a measure of overload)
        self._queue: collections.deque[Waiter] = collections.deque()
        loop = gevent.get_hub().loop
        # After every poll, ahead of the sockets and timers it found ready. (gevent's own
        # callbacks, the waiters of released locks among them, run at the turn's end.)
        self._check = loop.check(ref=False, priority=loop.MAXPRI)
        self._check.start(self._turn)
        self._idle = loop.idle(ref=False)  # active while readers queue: the poll does not block

    def take(self) -> None:
        """Before a frame: go on if this turn's share lasts, else wait for a later turn."""
        if self._clock() >= self.deadline:
            self._wait()

    def close(self) -> None:
        """Stop the watchers and let every queued reader go on."""
        self._check.stop()
        self._idle.stop()
        self.deadline = float("inf")
        queue, self._queue = self._queue, collections.deque()
        hub = gevent.get_hub()
        for waiter in queue:
            hub.loop.run_callback(waiter.switch, None)

    def _wait(self) -> None:
        self.deferred += 1
        waiter = Waiter()
        self._queue.append(waiter)
        if not self._idle.active:
            self._idle.start(_nothing)
        waiter.get()  # the hub runs on; `_turn` switches back here

    def _turn(self) -> None:
        """A turn starts: the queue first, within the budget (and at least one reader)."""
        clock, queue = self._clock, self._queue
        self.deadline = clock() + self._budget
        while queue:
            queue.popleft().switch(None)  # runs the reader until it waits again
            if clock() >= self.deadline:
                break
        if not queue and self._idle.active:
            self._idle.stop()


def _nothing() -> None:
    pass


class Unlimited:
    """No share: every reader goes on at once (a stream used alone, in tests and tools)."""

    __slots__ = ()
    deferred = 0

    def take(self) -> None:
        pass

    def close(self) -> None:
        pass
