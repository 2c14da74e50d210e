"""The REST client against a hostile server, and the repair worker behind it.

A tiny local HTTP server plays the answers: whatever it sends (status, headers, body, pace),
a call returns trades or raises RestError, no block lasts for ever, and the repair worker
stores every id it can, gives up only what Binance truly no longer serves, and lives on.
"""

import contextlib
import json
import logging
import re
import ssl
import tempfile
import time
from pathlib import Path

import gevent
import pytest
from gevent.pywsgi import WSGIServer
from gevent.server import StreamServer
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from helpers import Lines, wait_for
from tickd.database import Database
from tickd.limits import MAX_BLOCK, WeightLimiter
from tickd.repair import EMPTY_ANSWERS, Repair, Stats
from tickd.rest import MAX_BODY, OUT_OF_WINDOW, Rest, RestError, tls_context

SYMBOL = "BTCUSDT"
MINUTE = 60_000.0  # a clock reading at the start of a UTC minute
ROW = {"a": 7, "p": "100.5", "q": "0.001", "nq": "0.001", "f": 70, "l": 70, "T": 1, "m": False}


@contextlib.contextmanager
def serving(app):
    """`app` served on 127.0.0.1 (port 0) for the block; yields the base URL."""
    server = WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.stop(timeout=1)


def answering(status, headers=(), body=b""):
    """A WSGI app that gives every request the same answer; `body` is bytes or an iterable."""

    def app(environ, start_response):
        start_response(f"{status} Answer", list(headers))
        return [body] if isinstance(body, bytes) else body

    return app


def fixed_clock(now=MINUTE + 10):
    return lambda: now


# -- one answer at a time -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"code":-4166,"msg":"Search window is restricted to recent 2 days only."}', -4166),
        (b'{"code":1e999,"msg":"x"}', 0),
        (b'{"code":-1e999}', 0),
        (b'{"code":NaN}', 0),
        (b'{"code":-4166.5}', 0),
        (b'{"code":1e300}', 0),
        (b'{"code":' + b"9" * 400 + b"}", 0),
        (b'{"code":' + b"9" * 5000 + b"}", 0),
        (b'{"code":"x"}', 0),
        (b'{"code":"-4166"}', 0),
        (b'{"code":true}', 0),
        (b'{"code":[1]}', 0),
        (b"[]", 0),
        (b'"text"', 0),
        (b"null", 0),
        (b'{"code":-41', 0),
        (b"\xff\xfe\x00garbage", 0),
        (b"[" * 100_000, 0),
    ],
    ids=[
        "window",
        "inf",
        "-inf",
        "nan",
        "float",
        "1e300",
        "400-digits",
        "5000-digits",
        "string",
        "numeric-string",
        "bool",
        "list",
        "empty-list",
        "json-string",
        "null",
        "truncated",
        "garbage",
        "deep",
    ],
)
def test_an_error_answer_of_any_shape_is_a_rest_error(body, code):
    with serving(answering(400, [("Content-Type", "application/json")], body)) as url:
        rest = Rest(url, WeightLimiter(2400))
        with pytest.raises(RestError) as info:
            rest.agg_trades(SYMBOL, from_id=1)
    assert (info.value.status, info.value.code) == (400, code)


@pytest.mark.parametrize(
    ("value", "counted"),
    [
        ("1190", 1190),
        ("²", 20),
        ("9" * 5000, 20),
        ("99999999999", 20),
        ("-1", 20),
        ("1e3", 20),
        (" 12", 20),
    ],
    ids=["count", "superscript", "5000-digits", "11-digits", "negative", "float", "space"],
)
@pytest.mark.parametrize("status", [200, 500])
def test_a_weight_header_that_is_no_count_is_ignored(status, value, counted):
    limiter = WeightLimiter(2400, clock=fixed_clock())
    headers = [("X-MBX-USED-WEIGHT-1M", value)]
    with serving(answering(status, headers, json.dumps([ROW]).encode())) as url:
        rest = Rest(url, limiter)
        if status == 200:
            assert [tick.id for tick in rest.agg_trades(SYMBOL, from_id=7)] == [7]
        else:
            with pytest.raises(RestError):
                rest.agg_trades(SYMBOL, from_id=7)
    assert limiter.used == counted  # our own 20, or Binance's count where it is one


@pytest.mark.parametrize(
    ("status", "retry_after", "blocked"),
    [
        (429, "7", 7.0),
        (429, "inf", 50.0),  # the rest of the minute, as with no Retry-After
        (429, "1e999", 50.0),
        (429, "nan", 50.0),
        (429, "-5", 50.0),
        (429, "1e9", MAX_BLOCK),
        (418, "300", 300.0),
        (418, "inf", 120.0),  # a ban lasts two minutes at least
        (418, "nan", 120.0),
        (418, "1e9", MAX_BLOCK),
    ],
    ids=str,
)
def test_retry_after_never_blocks_for_ever(status, retry_after, blocked):
    limiter = WeightLimiter(2400, clock=fixed_clock())
    app = answering(status, [("Retry-After", retry_after)], b"{}")
    with serving(app) as url, pytest.raises(RestError):
        Rest(url, limiter).agg_trades(SYMBOL, from_id=1)
    assert limiter.delay(MINUTE + 10, 20) == blocked


def big_list(chunks):
    """A valid, empty JSON list padded with whitespace to `chunks` x 64 KiB."""
    yield b"["
    for _ in range(chunks):
        yield b" " * 65536
    yield b"]"


@pytest.mark.parametrize("length", ["content-length", "chunked"])
def test_an_answer_over_4_mib_is_refused(length):
    chunks = 5 * 16  # 5 MiB
    body = big_list(chunks)
    app = answering(200, body=b"".join(body) if length == "content-length" else body)
    with serving(app) as url, pytest.raises(RestError, match="larger than"):
        Rest(url, WeightLimiter(2400)).agg_trades(SYMBOL, from_id=1)
    assert MAX_BODY == 4 << 20


def test_an_endless_answer_is_read_no_further_than_the_limit():
    sent, ended = [], []

    def endless():
        try:
            for part in big_list(1024):  # 64 MiB
                sent.append(len(part))
                yield part
        finally:
            ended.append(True)

    with serving(answering(200, body=endless())) as url:
        with pytest.raises(RestError, match="larger than"):
            Rest(url, WeightLimiter(2400)).agg_trades(SYMBOL, from_id=1)
        # The server stops when we hang up; what it sent beyond 4 MiB sat in socket buffers.
        wait_for(lambda: ended, 5, "the server to stop sending")
    assert MAX_BODY < sum(sent) < 32 << 20


def test_a_dripped_answer_ends_at_the_deadline():
    def drip():
        yield b"["
        for _ in range(500):  # 10 s, each byte well within the per-read timeout
            gevent.sleep(0.02)
            yield b" "
        yield b"]"

    with serving(answering(200, body=drip())) as url:
        rest = Rest(url, WeightLimiter(2400), timeout=5, concurrency=1, deadline=0.5)
        start = time.monotonic()
        with pytest.raises(RestError, match=r"no complete answer within 0\.5s"):
            rest.agg_trades(SYMBOL, from_id=1)
        assert time.monotonic() - start < 3
        assert rest._slots.counter == 1  # the slot is free again


def test_a_redirect_to_nowhere_is_a_rest_error():
    app = answering(302, [("Location", "http://[::1")])
    with serving(app) as url, pytest.raises(RestError, match="network"):
        Rest(url, WeightLimiter(2400)).agg_trades(SYMBOL, from_id=1)


def test_rows_out_of_id_order_are_a_rest_error():
    rows = [dict(ROW, a=8), dict(ROW, a=7)]
    app = answering(200, body=json.dumps(rows).encode())
    with serving(app) as url, pytest.raises(RestError, match="order"):
        Rest(url, WeightLimiter(2400)).agg_trades(SYMBOL, from_id=7)


def test_https_calls_use_the_context_given():
    """The context's ALPN protocol shows in the TLS ClientHello the server receives."""
    hellos = []

    def handle(sock, _address):
        data = b""
        with contextlib.suppress(OSError):
            sock.settimeout(5)
            while b"tickd-probe" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        hellos.append(data)
        sock.close()

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    try:
        context = tls_context()
        context.set_alpn_protocols(["tickd-probe"])
        rest = Rest(
            f"https://127.0.0.1:{server.server_port}", WeightLimiter(2400), ssl_context=context
        )
        with pytest.raises(RestError, match="network"):
            rest.agg_trades(SYMBOL, from_id=1)
        wait_for(lambda: hellos, 5)
    finally:
        server.stop(timeout=1)
    assert b"tickd-probe" in hellos[0]


def test_the_tls_context_checks_the_server():
    context = tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


# -- the repair worker against a hostile exchange -----------------------------------------

FIXED_BODIES = [
    b'{"code":1e999}',
    b'{"code":-1e999,"msg":"x"}',
    b'{"code":NaN}',
    b'{"code":"x"}',
    b'{"code":"-4166"}',
    b'{"code":true}',
    b'{"code":' + b"9" * 400 + b"}",
    b'{"code":' + b"9" * 5000 + b"}",
    b'{"code":-1121,"msg":"Invalid symbol."}',
    b'{"code":-1003,"msg":"Too many requests."}',
    b"[]",
    b"{}",
    b"null",
    b'"text"',
    b"42",
    b"[1,2]",
    b'[{"a":"x"}]',
    b"[" * 100_000,
    b"",
]
EMPTY_PAGE = FIXED_BODIES.index(b"[]")
WEIRD_VALUES = ["²", "inf", "-inf", "nan", "1e999", "-1", "-5", "0", "1e9", "9" * 30, "9" * 5000]
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_categories=("Cc",)),
    max_size=12,
)
headers = st.lists(
    st.tuples(
        st.sampled_from(["Retry-After", "X-MBX-USED-WEIGHT-1M", "Content-Type"]),
        st.sampled_from(WEIRD_VALUES) | header_text,
    ),
    max_size=3,
)
bodies = st.one_of(
    st.just(("honest", 0)),  # the true answer, under whatever status
    st.tuples(st.just("short"), st.integers(1, 999)),  # the true page, cut to n rows
    st.tuples(st.just("truncated"), st.integers(0, 999)),  # the true body cut at n per mille
    st.tuples(st.just("fixed"), st.integers(0, len(FIXED_BODIES) - 1)),
    st.tuples(st.just("garbage"), st.binary(max_size=64)),
)
answers = st.tuples(st.sampled_from([200, 400, 403, 404, 418, 429, 500, 502, 503]), headers, bodies)


@st.composite
def markets(draw):
    """(history, oldest, gap): consecutive trades, perhaps with a hole in Binance's own
    history; REST serves ids from `oldest` on; the repair is asked for ids `gap`."""
    first = 1_000_000
    count = draw(st.integers(1, 2300))
    hole_at = draw(st.integers(1, max(count - 1, 1)))
    hole = draw(st.integers(0, 5))
    ids = [first + i + (hole if i >= hole_at else 0) for i in range(count)]
    history = [
        {
            "a": a,
            "p": f"{100 + i % 7}.5",
            "q": "0.001",
            "nq": "0.001",
            "f": 10 * a,
            "l": 10 * a,
            "T": 1_700_000_000_000 + i,
            "m": i % 2 == 0,
        }
        for i, a in enumerate(ids)
    ]
    oldest = draw(st.integers(ids[0], ids[-1]))
    gap_first = draw(st.integers(ids[0], ids[-1]))
    gap_last = draw(st.integers(gap_first, ids[-1]))
    return history, oldest, (gap_first, gap_last)


class Exchange:
    """Binance's aggTrades as a model, behind scripted hostile answers played first."""

    def __init__(self, history, oldest, script):
        self.history = history
        self.ids = [t["a"] for t in history]
        self.oldest = oldest
        self.script = list(script)

    def honest(self, query):
        """(status, body, rows) of Binance's true answer: rows None for an error."""
        from_id, limit = int(query["fromId"]), int(query["limit"])
        if from_id < self.oldest:
            body = {"code": OUT_OF_WINDOW, "msg": "Search window is restricted to recent 2 days."}
            return 400, json.dumps(body).encode(), None
        start = next((i for i, a in enumerate(self.ids) if a >= from_id), len(self.ids))
        rows = self.history[start : start + limit]
        return 200, json.dumps(rows).encode(), rows

    def __call__(self, environ, start_response):
        query = dict(p.split("=", 1) for p in environ["QUERY_STRING"].split("&"))
        status, body, rows = self.honest(query)
        headers = []
        if self.script:
            status, headers, (kind, arg) = self.script.pop(0)
            if kind == "short" and rows is not None:
                body = json.dumps(rows[:arg]).encode()
            elif kind == "truncated":
                body = body[: len(body) * arg // 1000]
            elif kind == "fixed":
                body = FIXED_BODIES[arg]
            elif kind == "garbage":
                body = arg
        start_response(f"{status} Answer", headers)
        return [body]


class FakeTime:
    """Time that passes only when slept: back-off, blocks and bans take no real time."""

    def __init__(self, now=MINUTE + 10):
        self.now = now

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds
        gevent.sleep(0)


# Each example runs a server, a database and a worker: 40 in `make test`; the "full"
# profile of `make reliability` raises it (to 1000 at most: about a minute).
EXAMPLES = 40 if settings.default.max_examples <= 100 else min(settings.default.max_examples, 1000)


@settings(max_examples=EXAMPLES, deadline=None)
@given(markets(), st.lists(answers, max_size=25))
def test_repair_stores_every_id_whatever_rest_answers(market, script):
    history, oldest, (gap_first, gap_last) = market
    # An empty page is the one lie that cannot be told from the truth: enough of them in a
    # row and the ids are given up, rightly as far as the worker can know.
    assume(sum(s == 200 and body == ("fixed", EMPTY_PAGE) for s, _, body in script) < EMPTY_ANSWERS)
    exchange = Exchange(history, oldest, script)
    t = FakeTime()
    lines = Lines(logging.WARNING)
    logger = logging.getLogger("tickd")
    logger.addHandler(lines)
    with (
        serving(exchange) as url,
        tempfile.TemporaryDirectory() as folder,
        contextlib.closing(Database(str(Path(folder) / "ticks.db"))) as db,
    ):
        db.open()
        db.ensure_table(SYMBOL)
        rest = Rest(url, WeightLimiter(2400, clock=t.clock, sleep=t.sleep), deadline=10)
        worker = Repair(SYMBOL, db, rest, Stats(), clock=t.clock, sleep=t.sleep)
        greenlet = gevent.spawn(worker.run)
        try:
            worker.add(gap_first, gap_last)
            wait_for(lambda: greenlet.dead or not worker.gaps, 20, "the gap to be worked off")
            assert not greenlet.dead, greenlet.exception
            stored = {tick.id for tick in db.ticks(SYMBOL)}
        finally:
            greenlet.kill()
            logger.removeHandler(lines)
    in_gap = range(gap_first, gap_last + 1)
    exists = set(exchange.ids)
    assert {a for a in in_gap if a >= oldest and a in exists} <= stored
    assert all(a >= oldest for a in stored)  # nothing stored that Binance did not serve
    unfillable = [line for line in lines.lines if "unfillable gap" in line]
    given_up = set()
    for line in unfillable:
        assert 'reason="older than Binance\'s REST window"' in line, line
        first, last = map(int, re.search(r"ids=(\d+)-(\d+)", line).groups())
        given_up.update(range(first, last + 1))
    assert given_up == {a for a in in_gap if a < oldest}
    assert worker.stats.ids_unfillable == len(given_up)
    assert not [line for line in lines.lines if "serves no trade" in line]


def test_the_repair_outlives_answers_that_broke_it(tmp_path):
    """Each of these answers used to end the worker greenlet; honest pages follow them."""
    history = [dict(ROW, a=a, T=a) for a in range(1, 11)]
    script = [
        (400, [], ("fixed", FIXED_BODIES.index(b'{"code":1e999}'))),
        (200, [("X-MBX-USED-WEIGHT-1M", "²")], ("truncated", 500)),
        (429, [("Retry-After", "inf")], ("fixed", 0)),
    ]
    exchange = Exchange(history, 1, script)
    t = FakeTime()
    with serving(exchange) as url, contextlib.closing(Database(str(tmp_path / "t.db"))) as db:
        db.open()
        db.ensure_table(SYMBOL)
        rest = Rest(url, WeightLimiter(2400, clock=t.clock, sleep=t.sleep))
        worker = Repair(SYMBOL, db, rest, Stats(), clock=t.clock, sleep=t.sleep)
        greenlet = gevent.spawn(worker.run)
        try:
            worker.add(2, 9)
            wait_for(lambda: greenlet.dead or not worker.gaps, 10)
            assert not greenlet.dead, greenlet.exception
            assert [tick.id for tick in db.ticks(SYMBOL)] == list(range(2, 11))
            assert not exchange.script
            assert t.now < MINUTE + 3600  # no block of days, let alone for ever
        finally:
            greenlet.kill()
