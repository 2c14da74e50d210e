"""One symbol's Stream in this process, against the in-process fake exchange: what it trusts,
what it finds missing and what it asks REST for, each in a second or two."""

import itertools
import json
import logging
import sqlite3
import time

import pytest
from gevent.pool import Group

from helpers import Lines, wait_for
from tickd import ledger
from tickd import stream as stream_module
from tickd.database import Database
from tickd.fakebinance import FakeBinance
from tickd.limits import AttemptLimiter, WeightLimiter
from tickd.rest import Rest
from tickd.stream import Stream
from tickd.turns import Turns
from tickd.wire import parse_frame

pytestmark = pytest.mark.timeout(30)

SYMBOL = "BTCUSDT"


class Recorder:
    """Streams of one database, run in a Group; everything is stopped by the fixture."""

    def __init__(self, fake, path):
        self.fake = fake
        self.db = Database(path)
        self.db.open()
        self.rest = Rest(fake.rest_url, WeightLimiter(2400))
        self.group = Group()
        self.streams = []
        self.log = Lines()
        self.offset = 0.0  # seconds added to the streams' wall clock
        self._logger = logging.getLogger("tickd")
        self._level = self._logger.level
        self._logger.addHandler(self.log)
        self._logger.setLevel(logging.INFO)

    def start(self, symbol=SYMBOL, *, wait=True, listed=True, **options):
        if listed:
            self.fake.list_symbol(symbol)
        self.db.ensure_table(symbol)
        settings = {
            "stale_timeout": 60.0,
            "max_age": 3600.0,
            "silence_timeout": 3600.0,
            "backoff": stream_module.Backoff(first=0.05, cap=0.2),  # after a dial that failed
            "wall": lambda: time.time() + self.offset,
        }
        stream = Stream(
            symbol,
            base_url=self.fake.ws_url,
            db=self.db,
            rest=self.rest,
            attempts=AttemptLimiter(),
            **{**settings, **options},
        )
        self.streams.append(stream)
        self.group.spawn(stream.run)
        if wait:
            wait_for(lambda: stream.connected, 5, "the stream to connect")
        return stream

    def ids(self, symbol=SYMBOL):
        return [tick.id for tick in self.db.ticks(symbol)]

    def close(self):
        for stream in self.streams:
            stream.stop()
        self.group.join(timeout=5)
        self.group.kill()
        self.db.close()
        self._logger.removeHandler(self.log)
        self._logger.setLevel(self._level)


@pytest.fixture
def recorder(fake, tmp_path):
    recorder = Recorder(fake, str(tmp_path / "ticks.db"))
    try:
        yield recorder
    finally:
        recorder.close()


def recording(recorder, **options):
    """A started stream with its first five trades stored; their ids."""
    stream = recorder.start(**options)
    ids = trade(recorder.fake, 5)
    wait_for(lambda: recorder.ids() == ids, 5, "the first trades")
    return stream, ids


def trade(fake, n, symbol=SYMBOL):
    return [fake.trade(symbol)["a"] for _ in range(n)]


def made_since(fake, first, symbol=SYMBOL):
    return [t["a"] for t in fake.history(symbol) if t["a"] >= first]


def frame(trade_id, symbol=SYMBOL):
    """A well-formed aggTrade frame, as Binance sends it, for an id of the test's choice."""
    now = int(time.time() * 1000)
    return json.dumps(
        {
            "e": "aggTrade",
            "E": now,
            "a": trade_id,
            "s": symbol,
            "p": "83091.70",
            "q": "0.022",
            "nq": "0.022",
            "f": 1,
            "l": 2,
            "T": now,
            "m": False,
            "st": 1,
        },
        separators=(",", ":"),
    )


def test_an_absurd_id_is_neither_stored_nor_trusted(fake, recorder):
    stream, ids = recording(recorder)
    fake.send_raw(SYMBOL, frame(ids[-1] + 10**12))
    wait_for(lambda: recorder.log.find("implausible trade id skipped"), 5, "the rejection")
    ids += trade(fake, 5)
    wait_for(lambda: recorder.ids() == ids, 5, "the later trades, all of them")
    assert stream.ledger.last == ids[-1]
    assert recorder.db.max_id(SYMBOL) == ids[-1]
    assert not stream.repair.gaps


def test_a_real_jump_is_confirmed_over_rest_and_its_gap_repaired(fake, recorder, monkeypatch):
    monkeypatch.setattr(ledger, "MAX_JUMP", 100)
    first = fake.trade(SYMBOL)
    recorder.db.insert(SYMBOL, parse_frame(json.dumps(first).encode(), SYMBOL))
    trade(fake, 300)  # while the store was down
    recorder.start()
    trade(fake, 5)
    wait_for(
        lambda: recorder.ids() == made_since(fake, first["a"]), 10, "every id after the restart"
    )
    assert recorder.log.find("trade id jump confirmed")
    assert not recorder.log.find("implausible")


def test_frames_left_for_later_turns_are_all_stored_in_order(fake, recorder):
    """With no share at all, every frame waits for a turn of its own: slower, nothing lost."""
    turns = Turns(budget=0)
    try:
        stream, ids = recording(recorder, turns=turns)
        ids += trade(fake, 30)
        wait_for(lambda: recorder.ids() == ids, 5, "every trade")
        assert turns.deferred >= len(ids)
        assert not stream.repair.gaps
    finally:
        turns.close()


def test_a_hole_across_the_rotation_is_queued_when_the_old_connection_closes(fake, recorder):
    """The old connection stalls before the 24-hour rotation: the trades it never delivered
    are not delivered by the new one either, whose first trade came while both were open."""
    stream, ids = recording(recorder, max_age=0.5)
    fake.stall(SYMBOL)  # the old connection: open, silent
    trade(fake, 50)  # never sent to it
    wait_for(lambda: fake.connections(SYMBOL) == 2, 5, "the replacement connection")
    trade(fake, 5)  # delivered by the replacement while the old one is still open
    wait_for(lambda: fake.connections(SYMBOL) == 1, 10, "the old connection to close")
    wait_for(lambda: recorder.ids() == made_since(fake, ids[0]), 10, "the hole of the rotation")
    assert recorder.log.find("by=rotation")
    assert stream.connected


def test_a_stream_resumed_after_a_pause_does_not_fetch_the_paused_period(fake, recorder):
    first = fake.trade(SYMBOL)
    recorder.db.insert(SYMBOL, parse_frame(json.dumps(first).encode(), SYMBOL))
    trade(fake, 20)  # while paused
    stream = recorder.start(after_pause=True)
    later = trade(fake, 5)
    wait_for(lambda: recorder.ids() == [first["a"], *later], 5, "the resumed trades")
    calls = len(fake.rest_calls())
    wait_for(lambda: stream.intake.trades == 5, 5, "the trades to be counted")
    assert not stream.repair.gaps
    assert len(fake.rest_calls()) == calls == 0
    assert not recorder.log.find("gap found")


class FailingOnce(Database):
    """A database whose next insert fails with an exception nobody expects (a bug)."""

    fail = False

    def insert(self, symbol, tick):
        if self.fail:
            self.fail = False
            raise RuntimeError("a bug in the write path")
        return super().insert(symbol, tick)


def test_a_reader_that_fails_is_logged_on_one_line_and_its_trade_repaired(fake, recorder):
    db = FailingOnce(recorder.db.path)
    recorder.db.close()
    recorder.db = db
    db.open()
    stream = recorder.start()
    ids = trade(fake, 3)
    wait_for(lambda: recorder.ids() == ids, 5, "the first trades")
    db.fail = True
    ids += trade(fake, 3)  # the first of these meets the bug
    wait_for(lambda: recorder.log.find("stream reader failed"), 5, "the failure's line")
    line = recorder.log.find("stream reader failed")
    assert "RuntimeError: a bug in the write path at test_stream.py:" in line
    wait_for(lambda: stream.connected, 5, "the redial")
    ids += trade(fake, 3)
    wait_for(lambda: recorder.ids() == made_since(fake, ids[0]), 10, "every id, the failed one too")


# -- connections: drops, closes, stalls, refusals, rotation -------------------------------


def test_a_dropped_connection_is_redialled_at_once_and_what_it_missed_repaired(fake, recorder):
    stream, ids = recording(recorder)
    fake.drop(SYMBOL)
    missed = trade(fake, 300)  # made at once: none reaches the dropped connection
    wait_for(lambda: len(fake.handshakes()) == 2 and stream.connected, 5, "the redial")
    trade(fake, 5)
    wait_for(lambda: recorder.ids() == made_since(fake, ids[0]), 5, "every id")
    assert recorder.log.find("stream disconnected symbol=BTCUSDT code=1006")
    assert recorder.log.find("stream reconnecting symbol=BTCUSDT delay=0s")
    gap = f"ids={missed[0]}-{missed[-1]} count=300 by=stream"
    assert [line for line in recorder.log.lines if "gap found" in line] == [
        f"gap found symbol=BTCUSDT {gap}"
    ]
    wait_for(lambda: recorder.log.find("gap filled symbol=BTCUSDT ids=300 "), 5, "the report")


@pytest.mark.parametrize("code", [1000, 1001, 1008])
def test_a_close_frame_is_logged_with_its_code_and_the_stream_redials(fake, recorder, code):
    recorder.start()
    fake.close(SYMBOL, code, "Too many requests")
    wait_for(lambda: recorder.log.find(f"code={code}"), 5, "the close")
    wait_for(lambda: len(fake.handshakes()) == 2, 5, "the redial")


def test_refused_handshakes_back_off_doubling(fake, recorder):
    fake.refuse_handshakes(3)
    recorder.start(backoff=stream_module.Backoff(first=0.05, cap=0.1), wait=False)
    wait_for(lambda: fake.connections(SYMBOL) == 1, 5, "the fourth attempt")
    times = [t for t, _ in fake.handshakes()]
    assert len(times) == 4
    waits = [b - a for a, b in itertools.pairwise(times)]
    assert all(w >= d for w, d in zip(waits, (0.05, 0.1, 0.1), strict=True)), waits
    delays = [line.split("delay=")[1] for line in recorder.log.lines if "reconnecting" in line]
    assert delays == ["0.05s", "0.1s", "0.1s"]


def test_a_stalled_socket_is_cut_after_the_stale_timeout_and_its_trades_repaired(fake, recorder):
    _, ids = recording(recorder, stale_timeout=0.3)
    fake.stall(SYMBOL)
    trade(fake, 1500)
    wait_for(lambda: len(fake.handshakes()) == 2, 5, "a new connection")
    assert recorder.log.find("nothing received for 0.3s")
    trade(fake, 5)
    wait_for(lambda: recorder.ids() == made_since(fake, ids[0]), 5, "every id")
    assert recorder.log.find("count=1500 by=stream")


def test_a_silent_connection_is_found_by_the_silence_check(fake, recorder):
    # The stale timeout is long (pings keep the socket fresh): only REST can tell.
    _, ids = recording(recorder, silence_timeout=0.3)
    fake.stall(SYMBOL)
    trade(fake, 20)
    recorder.offset = 5.0  # the trades are old enough to have arrived, had the socket lived
    wait_for(lambda: len(fake.handshakes()) == 2, 5, "the silence check to reconnect")
    wait_for(lambda: recorder.ids() == made_since(fake, ids[0]), 5, "every id")
    assert recorder.log.find("stream silent while Binance trades, reconnecting")


def test_a_restart_gap_on_a_quiet_market_is_found_without_a_new_trade(fake, recorder):
    first = fake.trade(SYMBOL)
    recorder.db.insert(SYMBOL, parse_frame(json.dumps(first).encode(), SYMBOL))
    trade(fake, 30)  # the last trades of the day, while the store was down
    recorder.start(silence_timeout=0.2)
    wait_for(lambda: recorder.ids() == made_since(fake, first["a"]), 5, "every id")
    assert recorder.log.find("by='silence check'")


def test_the_rotation_opens_the_new_connection_first_and_leaves_no_gap(fake, recorder):
    recorder.start(max_age=0.3)
    ids = trade(fake, 1)
    fake.run_market([SYMBOL], 200)
    wait_for(lambda: len(fake.handshakes()) >= 4, 5, "three rotations")
    fake.stop_market()
    trade(fake, 1)
    wait_for(lambda: recorder.ids() == made_since(fake, ids[0]), 5, "every id")
    assert recorder.log.find("stream rotating symbol=BTCUSDT")
    assert not recorder.log.find("gap found")
    assert not recorder.log.find("stream reconnecting")


def test_pings_are_answered(tmp_path):
    with FakeBinance(ping_interval=0.1) as fake:
        recorder = Recorder(fake, str(tmp_path / "ticks.db"))
        try:
            recorder.start()
            wait_for(lambda: fake.pongs(SYMBOL) >= 2, 5, "two pongs")
        finally:
            recorder.close()


# -- frames ------------------------------------------------------------------------------


def test_bad_frames_are_skipped_and_the_connection_kept(fake, recorder):
    recorder.start()
    for garbage in [
        "{nope",
        '{"e":"aggTrade","s":"ETHUSDT","a":1,"T":1,"p":"1"}',
        '{"result":null,"id":1}',
        b"\xff\xfe",
        '{"e":"aggTrade","s":"BTCUSDT","a":5,"T":1,"p":"NaN"}',
    ]:
        fake.send_raw(SYMBOL, garbage)
    ids = trade(fake, 1)
    wait_for(lambda: recorder.ids() == ids, 5, "the real trade")
    assert len(fake.handshakes()) == 1
    assert recorder.log.find("frame skipped symbol=BTCUSDT error='not JSON'")
    assert recorder.log.find("trade of another symbol")


def test_an_oversized_frame_closes_the_connection(fake, recorder):
    recorder.start()
    fake.send_raw(SYMBOL, "x" * (2 << 20))
    wait_for(lambda: len(fake.handshakes()) == 2, 5, "a new connection")
    assert recorder.log.find("frame of 2097152 bytes")
    ids = trade(fake, 1)
    wait_for(lambda: recorder.ids() == ids, 5, "the next trade")


# -- repair: locks, the REST window, 429, audits, unlisted symbols ------------------------


def test_writes_locked_out_by_another_program_are_repaired(fake, recorder):
    recorder.db.file.lock_wait = 0.1
    recorder.start()
    ids = trade(fake, 1)
    wait_for(lambda: recorder.ids() == ids, 5, "the first trade")
    other = sqlite3.connect(recorder.db.path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        trade(fake, 20)
        wait_for(lambda: recorder.log.find("write failed, ticks skipped"), 5, "a skipped write")
    finally:
        other.execute("COMMIT")
        other.close()
    trade(fake, 1)
    wait_for(lambda: recorder.ids() == made_since(fake, ids[0]), 10, "every id")
    assert "SQLITE_BUSY" in recorder.log.find("write failed")


def test_ids_older_than_the_rest_window_are_reported_and_the_rest_repaired(tmp_path):
    with FakeBinance(retention=1000, ping_interval=1.0) as fake:
        recorder = Recorder(fake, str(tmp_path / "ticks.db"))
        try:
            recorder.start(stale_timeout=0.3)
            first = trade(fake, 5)
            wait_for(lambda: recorder.ids() == first, 5, "the first trades")
            fake.stall(SYMBOL)
            lost_and_kept = trade(fake, 2500)  # more than the window holds
            wait_for(lambda: len(fake.handshakes()) == 2, 5, "a new connection")
            last = trade(fake, 1)
            kept = lost_and_kept[-999:]
            lost = lost_and_kept[:-999]
            wait_for(lambda: recorder.ids() == first + kept + last, 10, "the ids still served")
            wait_for(lambda: recorder.log.find("unfillable gap"), 5, "the report")
            line = recorder.log.find("unfillable gap")
            assert f"ids={lost[0]}-{lost[-1]} count={len(lost)}" in line
            assert "older than Binance's REST window" in line
        finally:
            recorder.close()


def test_rest_calls_wait_out_a_429(fake, recorder):
    fake.rest_fault(429, 1, retry_after=1)
    recorder.start(stale_timeout=0.3)
    ids = trade(fake, 1)
    wait_for(lambda: recorder.ids() == ids, 5, "the first trade")
    fake.stall(SYMBOL)
    trade(fake, 10)
    wait_for(lambda: len(fake.handshakes()) == 2, 5, "a new connection")
    trade(fake, 1)
    wait_for(lambda: recorder.ids() == made_since(fake, ids[0]), 5, "every id")
    first, second = (t for t, _ in fake.rest_calls()[:2])
    assert second - first >= 1.0


def test_holes_left_by_an_interrupted_repair_are_found_by_the_audit_at_start(fake, recorder):
    made = [fake.trade(SYMBOL) for _ in range(100)]
    holes = set(range(40, 60)) | {80}
    recorder.db.ensure_table(SYMBOL)
    recorder.db.insert_many(
        SYMBOL,
        [parse_frame(json.dumps(t).encode(), SYMBOL) for i, t in enumerate(made) if i not in holes],
    )
    recorder.start()  # no new trade: only the audit can find these
    wait_for(lambda: recorder.ids() == [t["a"] for t in made], 5, "every id")
    ids = [t["a"] for t in made]
    assert recorder.log.find(f"ids={ids[40]}-{ids[59]} count=20 by=audit")
    assert recorder.log.find(f"ids={ids[80]}-{ids[80]} count=1 by=audit")


def test_an_unlisted_symbol_is_reported_once_and_kept(fake, recorder):
    recorder.start("NOPEUSDT", silence_timeout=0.1, listed=False)
    wait_for(lambda: recorder.log.find("symbol not listed"), 5, "the report")
    wait_for(lambda: len(fake.rest_calls()) >= 3, 5, "more checks")
    reports = [line for line in recorder.log.lines if "symbol not listed" in line]
    assert reports == ["symbol not listed on Binance USD-M futures symbol=NOPEUSDT"]
    assert fake.connections("NOPEUSDT") == 1  # no validation: it keeps listening
