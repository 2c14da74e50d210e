"""Process-wide limits that keep the store inside Binance's per-IP rules: connection attempts
and REST request weight. Waits are cooperative and first come, first served."""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable

import gevent
from gevent.lock import Semaphore

ATTEMPT_WINDOWS = (
    # (attempts, seconds): Binance allows 300 per 5 minutes and 10 per second per IP; the
    # windows are a little longer than Binance's, so clock skew and latency cannot break them.
    (300, 300.0 + 2.0),
    (10, 1.0 + 0.1),
)
# Binance's longest ban (418) is 3 days: no answer of its, true or garbled, stops us longer.
MAX_BLOCK = 3 * 24 * 3600.0


class AttemptLimiter:
    """At most N attempts in any window of each (N, seconds) pair. `acquire()` waits its turn.

    Exact, not a token bucket: it keeps the times of the last attempts (a sliding log), so no
    window of the given length ever holds more than its limit, whatever the arrival pattern.
    """

    def __init__(
        self,
        windows: tuple[tuple[int, float], ...] = ATTEMPT_WINDOWS,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = gevent.sleep,
    ):
        self._windows = windows
        self._clock = clock
        self._sleep = sleep
        self._times: collections.deque[float] = collections.deque(maxlen=max(n for n, _ in windows))
        self._turn = Semaphore()  # gevent wakes waiters in the order they came
        self.total = 0  # attempts since start

    def delay(self, now: float) -> float:
        """Seconds from `now` until one more attempt fits in every window."""
        wait = 0.0
        for limit, seconds in self._windows:
            if len(self._times) >= limit:
                oldest = self._times[-limit]
                wait = max(wait, oldest + seconds - now)
        return wait

    def acquire(self) -> None:
        """Wait until an attempt is allowed, then count it."""
        with self._turn:
            while (wait := self.delay(self._clock())) > 0:
                self._sleep(wait)
            self._times.append(self._clock())
            self.total += 1


class WeightLimiter:
    """REST request weight per UTC clock minute, as Binance counts it per IP.

    `acquire(weight)` waits until the call fits in this minute's budget. `observe(used)`
    takes Binance's own count (header X-MBX-USED-WEIGHT-1M), which includes other programs
    on the same IP. `block(seconds)` stops every call for a while (429 Retry-After, 418 ban).
    No call starts in the last second of a minute, where network delay could move it into
    Binance's next minute.
    """

    def __init__(
        self,
        per_minute: int,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] = gevent.sleep,
    ):
        self.per_minute = per_minute
        self.used = 0  # in the current minute
        self.total = 0  # since start
        self._minute = -1
        self._blocked_until = 0.0
        self._clock = clock
        self._sleep = sleep
        self._turn = Semaphore()

    def _roll(self, now: float) -> None:
        minute = int(now // 60)
        if minute != self._minute:
            self._minute, self.used = minute, 0

    def delay(self, now: float, weight: int) -> float:
        """Seconds from `now` until a call of `weight` may start."""
        if now < self._blocked_until:
            return self._blocked_until - now
        self._roll(now)
        next_minute = (self._minute + 1) * 60
        if next_minute - now < 1.0 or self.used + weight > self.per_minute:
            return next_minute - now
        return 0.0

    def acquire(self, weight: int) -> None:
        with self._turn:
            while (wait := self.delay(self._clock(), weight)) > 0:
                self._sleep(wait)
            self.used += weight
            self.total += weight

    def used_now(self) -> int:
        """Weight counted in the current UTC minute (0 once a quiet minute has begun)."""
        self._roll(self._clock())
        return self.used

    def observe(self, used: int) -> None:
        """Binance says `used` weight was spent this minute (by us and anyone on our IP)."""
        self._roll(self._clock())
        self.used = max(self.used, used)

    def block(self, seconds: float) -> None:
        """No call for `seconds` from now, at most MAX_BLOCK. A value that is not a finite,
        non-negative number (from an answer that cannot be trusted) blocks nothing."""
        if not (math.isfinite(seconds) and seconds >= 0):
            return
        until = self._clock() + min(seconds, MAX_BLOCK)
        self._blocked_until = max(self._blocked_until, until)

    def seconds_to_next_minute(self) -> float:
        now = self._clock()
        return (int(now // 60) + 1) * 60 - now
