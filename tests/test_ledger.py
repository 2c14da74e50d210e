"""The ledger's rule, without sockets or clocks: whatever connections deliver, in whatever
interleaving, every id they did not deliver is reported missing, and only those."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickd import ledger as ledger_module
from tickd.ledger import Ledger, dead


def covered(ranges):
    return {i for first, last in ranges for i in range(first, last + 1)}


@st.composite
def sessions(draw):
    """A market of consecutive ids 1..n, a stored MAX(id), and a script of events on at most
    two connections at once (a rotation): open, deliver, close. A connection subscribes at
    the live edge (it delivers only ids traded after it opened), may lag behind the market,
    and may skip ids; its ids increase. Returns (stored, events)."""
    n = draw(st.integers(1, 40))
    stored = draw(st.none() | st.integers(1, n))
    market = stored or 0  # the highest id traded so far
    events, open_now, next_name = [], {}, 0
    for _ in range(draw(st.integers(1, 60))):
        choices = ["open"] if len(open_now) < 2 else []
        choices += ["deliver", "close"] if open_now else []
        action = draw(st.sampled_from(choices))
        if action == "open":
            open_now[next_name] = market
            events.append(("open", next_name))
            next_name += 1
            continue
        name = draw(st.sampled_from(sorted(open_now)))
        if action == "close":
            del open_now[name]
            events.append(("close", name))
            continue
        previous = open_now[name]
        if previous >= n:
            continue
        trade_id = draw(st.integers(previous + 1, n))
        open_now[name] = trade_id
        market = max(market, trade_id)
        events.append(("deliver", name, trade_id))
    events += [("close", name) for name in sorted(open_now)]
    return stored, events


def replay(stored, events):
    """Run the script through a Ledger: (ids delivered, ranges reported, whether two
    connections were ever open at once)."""
    ledger = Ledger()
    ledger.resume(stored)
    seen, delivered, reported, overlap = {}, set(), [], False
    for event in events:
        if event[0] == "open":
            seen[event[1]] = ledger.open()
            overlap = overlap or len(seen) == 2
        elif event[0] == "close":
            reported += ledger.close(seen.pop(event[1]))
        else:
            _, name, trade_id = event
            delivered.add(trade_id)
            found = ledger.trade(seen[name], trade_id)
            reported += [found] if found else []
    return delivered, reported, overlap


@settings(deadline=None)  # examples: the profile's (100; 20,000 in make reliability)
@given(sessions())
def test_every_id_nobody_delivered_is_reported_and_nothing_else(script):
    stored, events = script
    delivered, reported, overlap = replay(stored, events)
    if not delivered:
        assert not reported
        return
    # An empty table starts at the first trade taken: ids below it are history, not gaps.
    first = next(event[2] for event in events if event[0] == "deliver")
    start = stored + 1 if stored is not None else first
    top = max(delivered)
    missing = covered(reported)
    # Nothing lost: from what was stored to the highest id seen, every id came or is queued.
    assert set(range(start, top + 1)) <= delivered | missing
    # Nothing invented: only ids below the highest seen, and none below every id known.
    assert missing <= set(range(min(start, *delivered), top))
    wanted = set(range(start, top + 1))
    if not overlap:
        # One connection at a time: exactly the ids that never came.
        assert missing & wanted == wanted - delivered
    else:
        # In a rotation the two connections are judged apart: an id one of them skipped may
        # come on the other a moment later, and is then fetched once more, harmlessly.
        assert (missing - delivered) & wanted == wanted - delivered


def test_a_reconnect_reveals_what_the_drop_lost():
    ledger = Ledger()
    ledger.resume(100)
    first = ledger.open()
    assert ledger.trade(first, 101) is None
    assert ledger.trade(first, 104) == (102, 103)
    assert ledger.close(first) == []
    second = ledger.open()
    assert ledger.trade(second, 110) == (105, 109)
    assert ledger.last == 110


def test_the_new_connection_of_a_rotation_is_judged_when_the_old_one_closes():
    ledger = Ledger()
    ledger.resume(10)
    old = ledger.open()
    ledger.trade(old, 11)
    new = ledger.open()
    assert ledger.trade(new, 20) is None  # the old one may still deliver 12..19
    assert ledger.trade(old, 14) is None  # judged with the other connection's ids
    assert ledger.close(old) == [(12, 13), (15, 19)]


def test_a_pause_is_neither_missing_nor_audited():
    ledger = Ledger()
    ledger.resume(50, after_pause=True)
    seen = ledger.open()
    assert ledger.trade(seen, 90) is None
    assert not ledger.wanted(51, 89)
    assert ledger.wanted(40, 45)
    assert ledger.trade(seen, 93) == (91, 92)
    assert ledger.wanted(91, 92)


@pytest.mark.parametrize(
    ("known", "trade_id", "plausible"),
    [(None, 10**15, True), (100, 100 + 100_000, True), (100, 100 + 100_001, False)],
    ids=["nothing known", "at the limit", "past it"],
)
def test_an_id_far_past_every_id_known_is_implausible(known, trade_id, plausible):
    assert ledger_module.MAX_JUMP == 100_000
    ledger = Ledger()
    ledger.resume(known)
    assert ledger.plausible(ledger.open(), trade_id) is plausible


def test_the_silence_check_queues_up_to_binances_latest():
    ledger = Ledger()
    ledger.resume(7)
    assert ledger.latest(7) is None
    assert ledger.latest(12) == (8, 12)
    assert ledger.last == 12


@pytest.mark.parametrize(
    ("latest_id", "latest_ms", "is_dead"),
    [(6, 5_000, True), (5, 5_000, False), (6, 500, False), (6, 9_000, False)],
    ids=["missed", "delivered", "before it opened", "still in flight"],
)
def test_a_connection_is_dead_when_it_missed_an_old_enough_trade(latest_id, latest_ms, is_dead):
    ledger = Ledger()
    ledger.resume(None)
    seen = ledger.open()
    ledger.trade(seen, 5)
    assert dead(seen, 1_000, latest_id, latest_ms, now_ms=10_000) is is_dead
