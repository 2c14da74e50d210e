"""What one symbol has seen, by trade id, and the ids nobody delivered.

A pure rule, with no I/O and no clock: the stream tells the `Ledger` what its connections
delivered (each connection's trades in the order they came), and the ledger answers with the
id ranges that no connection delivered, for the repair queue. Every range is inclusive.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

# A trade this many ids past the last one known is checked over REST before it is trusted:
# one forged or corrupted id would otherwise become MAX(id) for good. A restart after a long
# outage jumps this far too; confirming it costs one REST call.
MAX_JUMP = 100_000
# A trade younger than this (ms) may still be on its way to us.
IN_FLIGHT_MS = 3000

Range = tuple[int, int]


class Ranges:
    """Disjoint, sorted, inclusive id ranges (the repair queue; the ids of a rotation)."""

    __slots__ = ("_firsts", "_lasts")

    def __init__(self) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []

    def __bool__(self) -> bool:
        return bool(self._firsts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._firsts, self._lasts, strict=True))

    def count(self) -> int:
        """How many ids the ranges hold."""
        return sum(last - first + 1 for first, last in self)

    def first(self) -> tuple[int, int]:
        return self._firsts[0], self._lasts[0]

    def add(self, first: int, last: int) -> None:
        """Add ids first..last, merging with ranges they touch or overlap."""
        if first > last:
            return
        i = bisect.bisect_left(self._lasts, first - 1)
        j = bisect.bisect_right(self._firsts, last + 1)
        if i < j:
            first = min(first, self._firsts[i])
            last = max(last, self._lasts[j - 1])
        self._firsts[i:j] = [first]
        self._lasts[i:j] = [last]

    def remove(self, first: int, last: int) -> None:
        """Remove ids first..last, splitting a range that holds them in part."""
        if first > last:
            return
        i = bisect.bisect_left(self._lasts, first)
        j = bisect.bisect_right(self._firsts, last)
        keep_firsts, keep_lasts = [], []
        if i < j and self._firsts[i] < first:
            keep_firsts.append(self._firsts[i])
            keep_lasts.append(first - 1)
        if i < j and self._lasts[j - 1] > last:
            keep_firsts.append(last + 1)
            keep_lasts.append(self._lasts[j - 1])
        self._firsts[i:j] = keep_firsts
        self._lasts[i:j] = keep_lasts

    def outside(self, first: int, last: int) -> list[Range]:
        """The ranges of ids from `first` to `last` that these ranges do not hold."""
        found, start = [], first
        for low, high in self:
            if high < start:
                continue
            if low > last:
                break
            if low > start:
                found.append((start, low - 1))
            start = high + 1
        if start <= last:
            found.append((start, last))
        return found


class Seen:
    """What one connection delivered: its highest trade id (0 until it delivers)."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = 0


class Ledger:
    """The ids of one symbol: `last`, the highest id stored or queued for repair, and the
    connections open now.

    With one connection open, missing ids are found two ways: a trade that jumps over that
    connection's trade before it, and the first trade of a connection (a reconnect, a
    restart) jumping over `last`. While two are open (the 24-hour rotation) either may run
    ahead of the other, so no trade is judged alone: the ids they deliver are gathered, and
    when one closes, the ids from `last` at the rotation's start to the highest delivered
    that neither delivered are missing.

    After a pause (`resume(..., after_pause=True)`), the first trade starts a new run: the
    paused ids, between the stored MAX(id) and that trade, are not missing but unwanted
    (`wanted` says so).
    """

    __slots__ = ("_during", "_floor", "_open", "_paused", "last")

    def __init__(self) -> None:
        self.last: int | None = None
        self._open: list[Seen] = []
        self._during: Ranges | None = None  # ids delivered while two connections are open
        self._floor: int | None = None  # `last` when the second connection opened
        # (last id before a pause, first id after it): the ids between were not wanted.
        self._paused: tuple[int, int | None] | None = None

    def resume(self, stored: int | None, *, after_pause: bool = False) -> None:
        """Start from `stored`, the table's MAX(id) (None if empty): the first trade of the
        connection reveals a restart's gap. After a pause it starts a new run instead."""
        if after_pause:
            self.last = None
            self._paused = None if stored is None else (stored, None)
        else:
            self.last = stored

    def open(self) -> Seen:
        """A connection has opened; what it delivers goes in the Seen returned."""
        seen = Seen()
        self._open.append(seen)
        if len(self._open) == 2:
            self._during, self._floor = Ranges(), self.last
        return seen

    def close(self, seen: Seen) -> list[Range]:
        """A connection has closed: the ids now known to have come on no connection."""
        self._open.remove(seen)
        during = self._during
        if during is None or len(self._open) > 1:
            return []
        self._during = None
        if not during:
            return []
        low, top = during.first()[0], max(last for _, last in during)
        for other in self._open:  # every id up to `top` is accounted for
            other.last = max(other.last, top)
        start = low if self._floor is None else self._floor + 1
        return during.outside(start, top)

    def plausible(self, seen: Seen, trade_id: int) -> bool:
        """False for an id implausibly far past every id known: check it before `trade`."""
        known = max(seen.last, self.last or 0)
        return not known or trade_id <= known + MAX_JUMP

    def trade(self, seen: Seen, trade_id: int) -> Range | None:
        """Connection `seen` delivered `trade_id`: the ids found missing before it, if any."""
        previous, last = seen.last, self.last
        if trade_id > previous:
            seen.last = trade_id
        if last is None or trade_id > last:
            if last is None and self._paused is not None and self._paused[1] is None:
                self._paused = (self._paused[0], trade_id)
            self.last = trade_id
        if self._during is not None:
            self._during.add(trade_id, trade_id)
            return None
        if previous:
            return (previous + 1, trade_id - 1) if trade_id > previous + 1 else None
        if last is not None and trade_id > last + 1:
            return last + 1, trade_id - 1
        return None

    def latest(self, trade_id: int) -> Range | None:
        """Binance says its latest trade is `trade_id` (a silence check): the ids after
        `last` up to it, which no connection delivered."""
        last = self.last
        if last is None or trade_id <= last:
            return None
        self.last = trade_id
        return last + 1, trade_id

    def wanted(self, first: int, last: int) -> bool:
        """False for a range that lies inside a pause."""
        if self._paused is None:
            return True
        after, before = self._paused
        return not (first > after and (before is None or last < before))


def dead(seen: Seen, opened_ms: int, latest_id: int, latest_ms: int, now_ms: int) -> bool:
    """Whether a connection that opened at `opened_ms` is dead, given Binance's latest trade:
    one that happened after it opened, long enough ago to have arrived, and that it never
    delivered."""
    return latest_id > seen.last and opened_ms < latest_ms < now_ms - IN_FLIGHT_MS
