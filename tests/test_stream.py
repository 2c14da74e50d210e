"""One symbol's Stream in this process, against the in-process fake exchange: what it trusts,
what it finds missing and what it asks REST for, each in a second or two."""

import json
import logging
import time

import pytest
from gevent.pool import Group

from conftest import wait_for
from tickd import stream as stream_module
from tickd.database import Database
from tickd.limits import AttemptLimiter, WeightLimiter
from tickd.rest import Rest
from tickd.stream import Stream

pytestmark = pytest.mark.timeout(30)

SYMBOL = "BTCUSDT"


class Lines(logging.Handler):
    """The store's log lines, as text, for the test to read."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def find(self, text):
        return next((line for line in self.lines if text in line), None)


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

    def start(self, symbol=SYMBOL, **options):
        self.fake.list_symbol(symbol)
        self.db.ensure_table(symbol)
        settings = {"stale_timeout": 60.0, "max_age": 3600.0, "silence_timeout": 3600.0}
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


@pytest.fixture
def recorder(fake, tmp_path):
    recorder = Recorder(fake, str(tmp_path / "ticks.db"))
    logger = logging.getLogger("tickd")
    level = logger.level
    logger.addHandler(recorder.log)
    logger.setLevel(logging.INFO)
    try:
        yield recorder
    finally:
        recorder.close()
        logger.removeHandler(recorder.log)
        logger.setLevel(level)


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
    stream = recorder.start()
    ids = trade(fake, 5)
    wait_for(lambda: recorder.ids() == ids, 5, "the first trades")
    fake.send_raw(SYMBOL, frame(ids[-1] + 10**12))
    wait_for(lambda: recorder.log.find("implausible trade id skipped"), 5, "the rejection")
    ids += trade(fake, 5)
    wait_for(lambda: recorder.ids() == ids, 5, "the later trades, all of them")
    assert stream.last == ids[-1]
    assert recorder.db.max_id(SYMBOL) == ids[-1]
    assert not stream.repair.gaps


def test_a_real_jump_is_confirmed_over_rest_and_its_gap_repaired(fake, recorder, monkeypatch):
    monkeypatch.setattr(stream_module, "MAX_JUMP", 100)
    first = fake.trade(SYMBOL)
    recorder.db.insert(SYMBOL, stream_module.parse_frame(json.dumps(first).encode(), SYMBOL))
    trade(fake, 300)  # while the store was down
    recorder.start()
    trade(fake, 5)
    wait_for(
        lambda: recorder.ids() == made_since(fake, first["a"]), 10, "every id after the restart"
    )
    assert recorder.log.find("trade id jump confirmed")
    assert not recorder.log.find("implausible")


def test_a_hole_across_the_rotation_is_queued_when_the_old_connection_closes(fake, recorder):
    """The old connection stalls before the 24-hour rotation: the trades it never delivered
    are not delivered by the new one either, whose first trade came while both were open."""
    stream = recorder.start(max_age=1.0)
    ids = trade(fake, 5)
    wait_for(lambda: recorder.ids() == ids, 5, "the first trades")
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
    recorder.db.insert(SYMBOL, stream_module.parse_frame(json.dumps(first).encode(), SYMBOL))
    trade(fake, 20)  # while paused
    stream = recorder.start(after_pause=True)
    later = trade(fake, 5)
    wait_for(lambda: recorder.ids() == [first["a"], *later], 5, "the resumed trades")
    calls = len(fake.rest_calls())
    wait_for(lambda: stream.trades == 5, 5, "the trades to be counted")
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
