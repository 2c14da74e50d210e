"""The fake Binance speaks the real wire format and fails on demand."""

import datetime
import hashlib
import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from urllib.parse import quote

import gevent
import pytest
import websocket
from websocket import ABNF

from helpers import wait_for
from tickd.fakebinance import (
    EXCHANGE_INFO,
    FakeBinance,
    archive_path,
    lower_ascii,
    stream_name,
)

WS_FIELDS = ["e", "E", "a", "s", "p", "q", "nq", "f", "l", "T", "m", "st"]
REST_FIELDS = ["a", "p", "q", "nq", "f", "l", "T", "m"]
SILENCE = 0.3  # long enough for a frame to cross loopback many times over


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def start_fake():
    fakes = []

    def start(**options):
        fake = FakeBinance(**options)
        fake.start()
        fakes.append(fake)
        return fake

    yield start
    for fake in fakes:
        fake.stop()


@pytest.fixture
def fake(start_fake):
    return start_fake()


@pytest.fixture
def connect(start_fake):
    """Open websocket-client connections; all are closed (before the fakes stop) at teardown."""
    clients = []

    def open_(url, **options):
        ws = websocket.create_connection(url, timeout=5, **options)
        clients.append(ws)
        return ws

    yield open_
    for ws in clients:
        ws.close(timeout=1)
        ws.shutdown()


def subscribe(fake, connect, symbol, **options):
    """List `symbol` and open a connection to its stream."""
    fake.list_symbol(symbol)
    ws = connect(f"{fake.ws_url}/{quote(stream_name(symbol), safe='@')}", **options)
    wait_for(lambda: fake.connections(symbol) == 1)
    return ws


def assert_silent(ws):
    ws.settimeout(SILENCE)
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv_data_frame(True)


def get(url):
    """GET url: (status, headers, body), whatever the status."""
    try:
        response = urllib.request.urlopen(url, timeout=5)
    except urllib.error.HTTPError as error:
        response = error
    with response:
        return response.status, response.headers, response.read()


def rest(fake, query, path="/fapi/v1/aggTrades"):
    """GET path?query: (status, headers, decoded JSON body)."""
    status, headers, body = get(f"{fake.rest_url}{path}?{query}")
    return status, headers, json.loads(body)


@pytest.mark.parametrize(
    ("symbol", "stream"),
    [
        ("BTCUSDT", "btcusdt@aggTrade"),
        ("1000PEPEUSDT", "1000pepeusdt@aggTrade"),
        ("BTCUSDT_261225", "btcusdt_261225@aggTrade"),
        ("币安人生USDT", "币安人生usdt@aggTrade"),
        ("ÄUSDT", "Äusdt@aggTrade"),
    ],
    ids=["plain", "digits", "quarterly", "chinese", "non-ascii-letter-kept"],
)
def test_stream_name_lowers_ascii_only(symbol, stream):
    assert stream_name(symbol) == stream
    assert lower_ascii(symbol) + "@aggTrade" == stream


def test_trades_arrive_byte_exact_in_field_order(fake, connect):
    fake.list_symbol("BTCUSDT", first_id=3477868433)
    ws = subscribe(fake, connect, "BTCUSDT")
    first = fake.trade("BTCUSDT", price="83091.70", time_ms=1791382992338)
    second = fake.trade("BTCUSDT")
    frames = [ws.recv(), ws.recv()]

    assert frames == [json.dumps(t, separators=(",", ":")) for t in (first, second)]
    assert frames[0].startswith('{"e":"aggTrade","E":1791382992')
    assert '"a":3477868433,"s":"BTCUSDT","p":"83091.70",' in frames[0]
    decoded = [json.loads(frame) for frame in frames]
    assert [list(d) for d in decoded] == [WS_FIELDS, WS_FIELDS]
    assert [d["a"] for d in decoded] == [3477868433, 3477868434]
    assert decoded[0]["T"] < decoded[0]["E"]
    assert decoded[0]["f"] <= decoded[0]["l"] < decoded[1]["f"] <= decoded[1]["l"]
    assert decoded[1]["T"] >= int(time.time() * 1000) - 5000
    assert fake.history("BTCUSDT") == [first, second]


def test_each_symbol_gets_only_its_own_trades_with_ids_plus_one(fake, connect):
    btc = subscribe(fake, connect, "BTCUSDT")
    eth = subscribe(fake, connect, "ETHUSDT")
    for _ in range(3):
        fake.trade("BTCUSDT")
        fake.trade("ETHUSDT")
    btc_ids = [json.loads(btc.recv())["a"] for _ in range(3)]
    eth_frames = [json.loads(eth.recv()) for _ in range(3)]
    assert btc_ids == [btc_ids[0], btc_ids[0] + 1, btc_ids[0] + 2]
    assert {f["s"] for f in eth_frames} == {"ETHUSDT"}
    assert btc_ids[0] != eth_frames[0]["a"]


def test_skip_ids_leaves_a_hole_in_the_stream(fake, connect):
    ws = subscribe(fake, connect, "BTCUSDT")
    first = fake.trade("BTCUSDT")
    fake.skip_ids("BTCUSDT", 2)
    fake.trade("BTCUSDT")
    assert [json.loads(ws.recv())["a"] for _ in range(2)] == [first["a"], first["a"] + 3]


def test_chinese_symbol_is_served_on_its_percent_encoded_path(fake, connect):
    fake.list_symbol("币安人生USDT")
    url = f"{fake.ws_url}/%E5%B8%81%E5%AE%89%E4%BA%BA%E7%94%9Fusdt@aggTrade"
    ws = connect(url)
    wait_for(lambda: fake.connections("币安人生USDT") == 1)
    made = fake.trade("币安人生USDT", price="0.1234")

    frame = ws.recv()
    assert json.loads(frame)["s"] == "币安人生USDT"
    assert frame == json.dumps(made, separators=(",", ":"), ensure_ascii=False)
    assert fake.handshakes()[-1][1] == "/market/ws/币安人生usdt@aggTrade"
    status, _, rows = rest(fake, "symbol=" + quote("币安人生usdt"))
    assert (status, [r["a"] for r in rows]) == (200, [made["a"]])


@pytest.mark.parametrize(
    ("route", "stream"),
    [
        ("/market/ws", "BTCUSDT@aggTrade"),
        ("/market/ws", "btcusdt@aggtrade"),
        ("/market/ws", "xyzusdt@aggTrade"),
        ("/ws", "btcusdt@aggTrade"),
    ],
    ids=["upper-case-symbol", "lower-case-event", "unlisted-symbol", "old-route"],
)
def test_wrong_streams_are_accepted_then_silent(start_fake, connect, route, stream):
    fake = start_fake(ping_interval=0.05)
    fake.list_symbol("BTCUSDT")
    ws = connect(f"{fake.rest_url.replace('http', 'ws')}{route}/{stream}")
    wait_for(lambda: fake.subscriptions() == [f"{route}/{stream}"])
    fake.trade("BTCUSDT")

    assert_silent(ws)  # neither the trade nor a ping
    assert fake.connections("BTCUSDT") == 0
    assert ws.connected


def test_other_paths_are_not_found(fake, connect):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(f"{fake.rest_url.replace('http', 'ws')}/stream")
    assert refused.value.status_code == 404
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{fake.rest_url}/fapi/v1/trades", timeout=5)
    missing.value.close()
    assert missing.value.code == 404


def test_drop_cuts_the_socket_without_close_frame(fake, connect):
    ws = subscribe(fake, connect, "BTCUSDT")
    made = fake.trade("BTCUSDT")
    fake.drop("BTCUSDT")
    fake.trade("BTCUSDT")  # made after the drop: in history only

    assert json.loads(ws.recv())["a"] == made["a"]  # frames queued before the drop still arrive
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        ws.recv_data_frame(True)
    wait_for(lambda: fake.connections("BTCUSDT") == 0)
    assert len(fake.history("BTCUSDT")) == 2


def test_close_sends_the_code_then_hangs_up(fake, connect):
    ws = subscribe(fake, connect, "BTCUSDT")
    fake.close("BTCUSDT", 1008, "Too many requests")
    opcode, frame = ws.recv_data_frame(True)

    assert opcode == ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 1008
    assert frame.data[2:] == b"Too many requests"
    wait_for(lambda: fake.connections("BTCUSDT") == 0)


def test_client_close_is_answered_and_forgotten(fake, connect):
    ws = subscribe(fake, connect, "BTCUSDT")
    ws.close(status=1000, timeout=2)
    assert ws.close_frame is not None
    assert int.from_bytes(ws.close_frame.data[:2], "big") == 1000
    wait_for(lambda: fake.connections("BTCUSDT") == 0)


def test_stall_stops_delivery_while_history_grows(start_fake, connect):
    fake = start_fake(ping_interval=0.05)
    ws = subscribe(fake, connect, "BTCUSDT")
    fake.stall("BTCUSDT")
    fake.trade("BTCUSDT")
    fake.trade("BTCUSDT")

    assert_silent(ws)  # no trade and no ping
    assert len(fake.history("BTCUSDT")) == 2
    assert fake.connections("BTCUSDT") == 1

    fake.stall("BTCUSDT", on=False)
    made = fake.trade("BTCUSDT")
    while (frame := ws.recv()) == "":  # skip the pings that resume with the trade
        pass
    assert json.loads(frame)["a"] == made["a"]


def test_pings_carry_milliseconds_and_pongs_are_counted(start_fake, connect):
    fake = start_fake(ping_interval=0.05)
    ws = subscribe(fake, connect, "BTCUSDT")
    opcode, frame = ws.recv_data_frame(True)  # websocket-client answers the ping itself

    assert opcode == ABNF.OPCODE_PING
    assert frame.data.isdigit()
    assert abs(int(frame.data) - time.time() * 1000) < 5000
    wait_for(lambda: fake.pongs("BTCUSDT") >= 1)
    assert fake.pongs("ETHUSDT") == 0


def test_client_pings_are_answered(fake, connect):
    ws = subscribe(fake, connect, "BTCUSDT")
    ws.ping("hello")
    opcode, frame = ws.recv_data_frame(True)
    assert (opcode, frame.data) == (ABNF.OPCODE_PONG, b"hello")


def test_send_raw_sends_any_payload(fake, connect):
    ws = subscribe(fake, connect, "BTCUSDT", skip_utf8_validation=True)
    huge = "x" * 300_000
    fake.send_raw("BTCUSDT", '{"result":null,"id":1}')
    fake.send_raw("BTCUSDT", b"\xff\xfe not utf-8")
    fake.send_raw("BTCUSDT", b"\x00\x01", binary=True)
    fake.send_raw("BTCUSDT", huge)

    assert ws.recv_data() == (ABNF.OPCODE_TEXT, b'{"result":null,"id":1}')
    assert ws.recv_data() == (ABNF.OPCODE_TEXT, b"\xff\xfe not utf-8")
    assert ws.recv_data() == (ABNF.OPCODE_BINARY, b"\x00\x01")
    assert ws.recv() == huge


def test_a_client_that_does_not_read_blocks_nobody(fake, connect):
    slow = subscribe(fake, connect, "ETHUSDT")
    fast = subscribe(fake, connect, "BTCUSDT")
    for _ in range(4):  # far more than loopback's socket buffers hold
        fake.send_raw("ETHUSDT", b"x" * 8_000_000)
    made = fake.trade("BTCUSDT")
    assert json.loads(fast.recv())["a"] == made["a"]
    slow.shutdown()
    wait_for(lambda: fake.connections("ETHUSDT") == 0)


def test_refused_handshakes_get_an_http_error(start_fake, connect):
    clock = Clock(1_000_000.0)
    fake = start_fake(clock=clock)
    fake.refuse_handshakes(1, 503)
    url = f"{fake.ws_url}/btcusdt@aggTrade"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(url)
    assert refused.value.status_code == 503

    clock.now += 5
    connect(url)
    wait_for(lambda: fake.connections("BTCUSDT") == 1)
    path = "/market/ws/btcusdt@aggTrade"
    assert fake.handshakes() == [(1_000_000.0, path), (1_000_005.0, path)]


def test_stop_hangs_up_every_client_and_is_idempotent(fake, connect):
    ws = subscribe(fake, connect, "BTCUSDT")
    silent = connect(f"{fake.ws_url}/BTCUSDT@aggTrade")
    fake.stop()
    for client in (ws, silent):
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            client.recv_data_frame(True)
    fake.stop()
    assert fake.connections("BTCUSDT") == 0


def test_run_market_trades_until_stopped(fake, connect):
    ws = subscribe(fake, connect, "ETHUSDT")
    fake.run_market(["BTCUSDT", "ETHUSDT"], rate=400)
    wait_for(lambda: min(len(fake.history(s)) for s in ("BTCUSDT", "ETHUSDT")) >= 5)
    fake.stop_market()
    made = len(fake.history("BTCUSDT"))
    fake.trade("BTCUSDT")

    ids = [t["a"] for t in fake.history("BTCUSDT")]
    assert len(ids) == made + 1
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert json.loads(ws.recv())["s"] == "ETHUSDT"


def rest_ids(fake, symbol, first, last):
    """Page through REST from `first` (1000 a call) until `last`: every id it served."""
    ids = []
    while not ids or ids[-1] < last:
        status, _, rows = rest(
            fake, f"symbol={symbol}&fromId={ids[-1] + 1 if ids else first}&limit=1000"
        )
        assert status == 200 and rows, (status, rows)
        ids += [row["a"] for row in rows]
    return ids


def test_a_burst_trades_consecutive_ids_at_its_rate(start_fake, connect):
    fake = start_fake(weight_limit=10**9)
    ws = subscribe(fake, connect, "AUSDT")
    symbols = ["AUSDT", "BUSDT", "CUSDT"]
    burst = fake.burst(symbols, rate=20_000, seconds=0.5)
    frames = []
    while len(frames) < 3334:  # AUSDT's share, read while the burst goes on
        frames.append(json.loads(ws.recv()))
    result = burst.get(timeout=5)

    # Made on schedule: a fake that fell behind would have made fewer by the end.
    assert result.trades == 10_000
    assert result.seconds >= 0.5  # and not ahead of it
    assert sorted(last - first + 1 for first, last in result.ids.values()) == [3333, 3333, 3334]
    for symbol, (first, last) in result.ids.items():
        assert [t["a"] for t in fake.history(symbol)] == list(range(first, last + 1))
        assert rest_ids(fake, symbol, first, last) == list(range(first, last + 1))
    assert frames == fake.history("AUSDT")
    assert_silent(ws)  # nothing after the burst
    assert fake.slow_consumers() == []


def test_a_burst_ends_with_stop_market(fake):
    burst = fake.burst(["AUSDT"], rate=1000, seconds=60)
    wait_for(lambda: len(fake.history("AUSDT")) >= 10)
    fake.stop_market()
    assert burst.dead
    made = len(fake.history("AUSDT"))
    gevent.sleep(0.05)  # long enough for a live burst to make 50 more
    assert len(fake.history("AUSDT")) == made


@pytest.mark.parametrize(
    ("symbols", "rate", "seconds"),
    [([], 100, 1), (["AUSDT"], 0, 1), (["AUSDT"], 100, 0)],
    ids=["no-symbol", "no-rate", "no-length"],
)
def test_a_burst_needs_symbols_a_rate_and_a_length(fake, symbols, rate, seconds):
    with pytest.raises(ValueError, match="a burst needs"):
        fake.burst(symbols, rate, seconds)


def test_a_client_that_falls_behind_is_closed_with_1008(start_fake, connect):
    fake = start_fake(max_backlog=50, send_buffer=8192)
    small = ((socket.SOL_SOCKET, socket.SO_RCVBUF, 8192),)
    ws = subscribe(fake, connect, "BTCUSDT", sockopt=small)
    other = subscribe(fake, connect, "ETHUSDT")
    made = []

    def flooded():  # the writer drains between rounds until the client's buffers are full
        made.extend(fake.trade("BTCUSDT")["a"] for _ in range(20))
        return fake.slow_consumers()

    wait_for(flooded, timeout=10)
    [(_, path, dropped)] = fake.slow_consumers()
    assert (path, dropped) == ("/market/ws/btcusdt@aggTrade", 50)
    assert fake.connections("BTCUSDT") == 0  # on its way out: gets nothing more
    eth = fake.trade("ETHUSDT")
    assert json.loads(other.recv())["a"] == eth["a"]  # other clients are not affected

    received = []
    while (frame := ws.recv_data_frame(True))[0] != ABNF.OPCODE_CLOSE:
        received.append(json.loads(frame[1].data)["a"])
    assert int.from_bytes(frame[1].data[:2], "big") == 1008
    # What was sent before the cut, in order; the dropped backlog and later trades never.
    assert received == made[: len(received)]
    assert 0 < len(received) <= len(made) - 50
    wait_for(lambda: fake.subscriptions() == ["/market/ws/ethusdt@aggTrade"])
    assert [t["a"] for t in fake.history("BTCUSDT")] == made


def test_without_a_bound_a_backlog_is_kept(start_fake, connect):
    fake = start_fake(send_buffer=8192)
    ws = subscribe(fake, connect, "BTCUSDT", sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 8192),))
    made = [fake.trade("BTCUSDT")["a"] for _ in range(5000)]  # far more than the buffers hold
    assert [json.loads(ws.recv())["a"] for _ in made] == made
    assert fake.slow_consumers() == []


def test_rest_pages_from_id_and_skips_holes(fake):
    fake.list_symbol("BTCUSDT", first_id=100)
    for _ in range(10):
        fake.trade("BTCUSDT")
    fake.skip_ids("BTCUSDT", 5)
    for _ in range(3):
        fake.trade("BTCUSDT")
    by_id = {t["a"]: t for t in fake.history("BTCUSDT")}

    def ids(query):
        status, _, rows = rest(fake, query)
        assert status == 200
        assert all(list(r) == REST_FIELDS for r in rows)
        assert all(r == {k: by_id[r["a"]][k] for k in REST_FIELDS} for r in rows)
        return [r["a"] for r in rows]

    assert ids("symbol=BTCUSDT&fromId=100&limit=4") == [100, 101, 102, 103]
    assert ids("symbol=btcusdt&fromId=108&limit=4") == [108, 109, 115, 116]
    assert ids("symbol=BTCUSDT&fromId=111&limit=2") == [115, 116]
    assert ids("symbol=BTCUSDT&fromId=118") == []
    assert ids("symbol=BTCUSDT&limit=2") == [116, 117]
    assert len(ids("symbol=BTCUSDT")) == 13


def test_rest_raw_body_matches_binance(fake):
    fake.list_symbol("BTCUSDT", first_id=3477868380)
    made = fake.trade("BTCUSDT", price="83084.30", time_ms=1791382990569)
    url = f"{fake.rest_url}/fapi/v1/aggTrades?symbol=BTCUSDT&limit=3"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = response.read().decode()
    m = json.dumps(made["m"])
    assert body.startswith('[{"a":3477868380,"p":"83084.30","q":"')
    assert body.endswith(f',"T":1791382990569,"m":{m}}}]')


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("symbol=NOPEUSDT", -1121),
        ("limit=5", -1121),
        ("symbol=BTCUSDT&limit=1001", -1130),
        ("symbol=BTCUSDT&limit=0", -1130),
        ("symbol=BTCUSDT&fromId=abc", -1100),
    ],
    ids=["unknown-symbol", "no-symbol", "limit-over-1000", "limit-zero", "bad-from-id"],
)
def test_rest_rejects_bad_requests(fake, query, code):
    fake.trade("BTCUSDT")
    status, headers, body = rest(fake, query)
    assert (status, body["code"]) == (400, code)
    assert headers["X-MBX-USED-WEIGHT-1M"] == "20"


def test_rest_unknown_symbol_body_is_binance_s(fake):
    assert rest(fake, "symbol=NOPEUSDT")[2] == {"code": -1121, "msg": "Invalid symbol."}


def test_rest_refuses_ids_older_than_retention(start_fake):
    fake = start_fake(retention=5)
    fake.list_symbol("BTCUSDT", first_id=100)
    for _ in range(10):
        fake.trade("BTCUSDT")

    status, _, body = rest(fake, "symbol=BTCUSDT&fromId=104")
    assert status == 400
    assert body == {"code": -4166, "msg": "Search window is restricted to recent 2 days only."}
    assert [r["a"] for r in rest(fake, "symbol=BTCUSDT&fromId=105")[2]] == list(range(105, 110))
    assert [r["a"] for r in rest(fake, "symbol=BTCUSDT")[2]] == list(range(105, 110))
    assert len(fake.history("BTCUSDT")) == 10


def test_rest_weight_429_then_418_ban(start_fake):
    clock = Clock(60 * 1000 + 45.0)  # 45 s into a minute
    fake = start_fake(clock=clock, weight_limit=60)
    fake.list_symbol("BTCUSDT")

    def call():
        status, headers, body = rest(fake, "symbol=BTCUSDT")
        return status, headers["X-MBX-USED-WEIGHT-1M"], headers["Retry-After"], body

    assert [call()[:3] for _ in range(3)] == [
        (200, "20", None),
        (200, "40", None),
        (200, "60", None),
    ]
    status, used, retry_after, body = call()
    assert (status, used, retry_after, body["code"]) == (429, "80", "15", -1003)
    status, used, retry_after, body = call()
    assert (status, used, retry_after, body["code"]) == (418, "100", "120", -1003)

    clock.now += 60  # a new minute, still banned
    assert call()[:3] == (418, "20", "60")
    clock.now += 60  # the ban is over
    assert call()[:3] == (200, "20", None)
    assert len(fake.rest_calls()) == 7
    assert fake.rest_calls()[0] == (60 * 1000 + 45.0, {"symbol": "BTCUSDT"})


def test_rest_fault_answers_on_demand(fake):
    fake.trade("BTCUSDT")
    fake.rest_fault(500, 2)
    fake.rest_fault(429, 1, retry_after=7)

    assert [rest(fake, "symbol=BTCUSDT")[0] for _ in range(2)] == [500, 500]
    status, headers, body = rest(fake, "symbol=BTCUSDT&fromId=1")
    assert (status, headers["Retry-After"], body["code"]) == (429, "7", -1003)
    assert rest(fake, "symbol=BTCUSDT")[0] == 200
    assert [query for _, query in fake.rest_calls()][2] == {"symbol": "BTCUSDT", "fromId": "1"}


def test_exchange_info_lists_the_listed_symbols_at_weight_one(start_fake):
    clock = Clock(1_791_382_992.5)
    fake = start_fake(clock=clock)
    fake.list_symbol("BTCUSDT", price="83091.7")
    fake.list_symbol("BTCUSDT_261225")
    fake.list_symbol("1000PEPEUSDT", price="5")
    fake.run_market(["1000PEPEUSDT", "币安人生USDT"], rate=1)
    fake.stop_market()

    status, headers, body = rest(fake, "", path=EXCHANGE_INFO)
    assert (status, headers["X-MBX-USED-WEIGHT-1M"]) == (200, "1")
    assert headers["Content-Type"] == "application/json"

    def info(symbol, pair, contract, base, tick):
        return {
            "symbol": symbol,
            "pair": pair,
            "contractType": contract,
            "status": "TRADING",
            "baseAsset": base,
            "quoteAsset": "USDT",
            "filters": [{"filterType": "PRICE_FILTER", "tickSize": tick}],  # first, as Binance's
        }

    assert body == {
        "timezone": "UTC",
        "serverTime": 1_791_382_992_500,
        "symbols": [
            info("BTCUSDT", "BTCUSDT", "PERPETUAL", "BTC", "0.1"),
            info("BTCUSDT_261225", "BTCUSDT", "CURRENT_QUARTER", "BTC", "0.01"),
            info("1000PEPEUSDT", "1000PEPEUSDT", "PERPETUAL", "1000PEPE", "1"),
            info("币安人生USDT", "币安人生USDT", "PERPETUAL", "币安人生", "0.01"),
        ],
    }
    # One budget for both calls: aggTrades costs 20, exchangeInfo 1; each call is recorded.
    assert rest(fake, "symbol=BTCUSDT")[1]["X-MBX-USED-WEIGHT-1M"] == "21"
    assert rest(fake, "", path=EXCHANGE_INFO)[1]["X-MBX-USED-WEIGHT-1M"] == "22"
    assert fake.exchange_info_calls() == [1_791_382_992.5, 1_791_382_992.5]
    assert len(fake.rest_calls()) == 1


def test_exchange_info_raw_body_and_faults(start_fake):
    fake = start_fake(weight_limit=2)
    fake.list_symbol("币安人生USDT")
    fake.rest_fault(503, path=EXCHANGE_INFO)
    fake.rest_fault(500)  # an aggTrades fault is not used up by exchangeInfo

    assert rest(fake, "", path=EXCHANGE_INFO)[0] == 503
    with urllib.request.urlopen(f"{fake.rest_url}{EXCHANGE_INFO}", timeout=5) as response:
        raw = response.read().decode()
    assert raw.startswith('{"timezone":"UTC","serverTime":')
    assert '"symbols":[{"symbol":"币安人生USDT","pair":"币安人生USDT",' in raw  # UTF-8, unescaped
    assert rest(fake, "symbol=" + quote("币安人生USDT"))[0] == 500
    status, headers, body = rest(fake, "", path=EXCHANGE_INFO)  # weight 23 > 2: refused
    assert (status, headers["X-MBX-USED-WEIGHT-1M"], body["code"]) == (429, "23", -1003)


class Counter:
    """A tape that keeps nothing: trade `i` costs `i`.00, and REST serves every id made."""

    def __init__(self, symbol, first_id, price):
        self.symbol, self.first_id, self.next_id = symbol, first_id, first_id
        self.listed_at = price

    def add(self, rng, time_ms, price):
        i, self.next_id = self.next_id, self.next_id + 1
        trade = {"e": "aggTrade", "a": i, "s": self.symbol, "p": f"{i}.00", "T": time_ms}
        return json.dumps(trade, separators=(",", ":")).encode()

    def page(self, from_id, limit, oldest):
        start = max(self.next_id - limit, self.first_id) if from_id is None else from_id
        ids = range(max(start, self.first_id, oldest or 0), self.next_id)[:limit]
        return json.dumps([{"a": i, "p": f"{i}.00"} for i in ids]).encode()


def test_a_tape_makes_the_trades_and_serves_them_over_rest(start_fake, connect):
    tapes = {}

    def tape(symbol, first_id, price):
        tapes[symbol] = Counter(symbol, first_id, price)
        return tapes[symbol]

    fake = start_fake(tape=tape, retention=4)
    fake.list_symbol("BTCUSDT", first_id=100, price="83091.70")
    ws = subscribe(fake, connect, "BTCUSDT")
    first = fake.trade("BTCUSDT", time_ms=1791382992338)
    fake.skip_ids("BTCUSDT", 2)  # never streamed; this tape still serves them over REST
    last = fake.trade("BTCUSDT", time_ms=1791382992339)

    assert (tapes["BTCUSDT"].listed_at, tapes["BTCUSDT"].next_id) == ("83091.70", 104)
    assert first == {"e": "aggTrade", "a": 100, "s": "BTCUSDT", "p": "100.00", "T": 1791382992338}
    assert [json.loads(ws.recv()) for _ in range(2)] == [first, last]
    assert last["a"] == 103
    status, headers, rows = rest(fake, "symbol=BTCUSDT&limit=3")
    assert (status, [r["a"] for r in rows]) == (200, [101, 102, 103])
    assert headers["X-MBX-USED-WEIGHT-1M"] == "20"  # weighed and recorded like any call
    assert rest(fake, "symbol=BTCUSDT&fromId=99")[2]["code"] == -4166  # retention still applies
    assert len(fake.rest_calls()) == 2
    with pytest.raises(TypeError, match="keeps no history"):
        fake.history("BTCUSDT")


def test_routes_answer_json_before_the_exchange_and_without_weight(start_fake):
    asked = []

    def state(query):
        asked.append(query)
        return {"open": 0, "query": query}

    fake = start_fake(routes={"/bench/state": state, EXCHANGE_INFO: lambda query: {"x": 1}})
    status, headers, body = rest(fake, "a=1&b=two", path="/bench/state")
    assert (status, headers["Content-Type"], body) == (
        200,
        "application/json",
        {"open": 0, "query": {"a": "1", "b": "two"}},
    )
    assert rest(fake, "", path=EXCHANGE_INFO)[2] == {"x": 1}
    assert "X-MBX-USED-WEIGHT-1M" not in headers
    assert (fake.rest_calls(), fake.exchange_info_calls()) == ([], [])


def test_a_combined_stream_gets_each_of_its_streams_in_an_envelope(fake, connect):
    fake.list_symbol("BTCUSDT")
    fake.list_symbol("ETHUSDT")
    base = fake.rest_url.replace("http", "ws")
    combined = connect(f"{base}/market/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade")
    raw = connect(f"{fake.ws_url}/btcusdt@aggTrade")
    wait_for(lambda: fake.connections("BTCUSDT") == 2 and fake.connections("ETHUSDT") == 1)
    btc = fake.trade("BTCUSDT")
    eth = fake.trade("ETHUSDT")
    burst = fake.burst(["ETHUSDT"], rate=1000, seconds=0.01).get(timeout=5)

    def enveloped(stream, trade):
        return f'{{"stream":"{stream}","data":{json.dumps(trade, separators=(",", ":"))}}}'

    assert raw.recv() == json.dumps(btc, separators=(",", ":"))
    assert combined.recv() == enveloped("btcusdt@aggTrade", btc)
    assert combined.recv() == enveloped("ethusdt@aggTrade", eth)
    made = fake.history("ETHUSDT")[1:]
    assert len(made) == burst.trades == 10
    assert [combined.recv() for _ in made] == [enveloped("ethusdt@aggTrade", t) for t in made]
    assert fake.subscriptions() == ["/market/stream", "/market/ws/btcusdt@aggTrade"]
    fake.close("ETHUSDT")  # a fault on one of its streams reaches the whole connection
    opcode, frame = combined.recv_data_frame(True)
    assert (opcode, int.from_bytes(frame.data[:2], "big")) == (ABNF.OPCODE_CLOSE, 1001)
    wait_for(lambda: fake.connections("BTCUSDT") == 1)


def drain(ws):
    """Every trade frame `ws` receives until it falls silent, decoded."""
    frames = []
    ws.settimeout(SILENCE)
    with pytest.raises(websocket.WebSocketTimeoutException):
        while True:
            frames.append(json.loads(ws.recv()))
    return frames


def test_the_firehose_trades_as_fast_as_each_client_reads(start_fake, connect):
    fake = start_fake(send_buffer=8192)  # small buffers: little in flight when it stops
    small = ((socket.SOL_SOCKET, socket.SO_RCVBUF, 8192),)
    btc = subscribe(fake, connect, "BTCUSDT", sockopt=small)
    eth = subscribe(fake, connect, "ETHUSDT", sockopt=small)
    fake.firehose()
    first = [json.loads(btc.recv()) for _ in range(100)]
    fake.close("ETHUSDT", 1001)  # queued frames go out first, firehose or not
    while (frame := eth.recv_data_frame(True))[0] != ABNF.OPCODE_CLOSE:
        pass
    assert int.from_bytes(frame[1].data[:2], "big") == 1001
    fake.firehose(on=False)
    trades = first + drain(btc)

    assert len(trades) >= 100 and len(trades) % 32 == 0  # made and written 32 at a time
    assert [t["a"] for t in trades] == list(range(trades[0]["a"], trades[0]["a"] + len(trades)))
    assert trades == fake.history("BTCUSDT")  # every trade made was written, none twice
    made = fake.trade("BTCUSDT")
    assert json.loads(btc.recv()) == made  # and trading goes on as before


def test_sends_note_when_each_watched_trade_is_written(start_fake, connect):
    clock = Clock(1_791_382_992.5)
    fake = start_fake(clock=clock)
    btc = subscribe(fake, connect, "BTCUSDT")
    eth = subscribe(fake, connect, "ETHUSDT")
    fake.watch_sends(["BTCUSDT"])
    made = fake.trade("BTCUSDT")
    clock.now += 1  # the write comes after the trade, at the fake's clock
    fake.trade("ETHUSDT")
    btc.recv()
    eth.recv()
    assert fake.sends() == [("BTCUSDT", made["a"], 1_791_382_993.5)]
    assert fake.sends() == []  # forgotten once read
    fake.watch_sends([])
    fake.trade("BTCUSDT")
    btc.recv()
    assert fake.sends() == []


# -- the archive (data.binance.vision)

COLUMNS = "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker"
DAILY = "/data/futures/um/daily/aggTrades"
Day = datetime.date


def utc(*when):
    """A clock reading (seconds) at a UTC date and time."""
    return datetime.datetime(*when, tzinfo=datetime.UTC).timestamp()


def start_archive(start_fake, **options):
    """A fake at 2022-08-14 12:00 UTC whose BTCUSDT has 100 trades a day from 2022-08-09 to
    2022-08-12 archived (ids 3477868033 .. 3477868432), and no live trade yet."""
    clock = Clock(utc(2022, 8, 14, 12))
    fake = start_fake(clock=clock, **options)
    fake.archive("BTCUSDT", Day(2022, 8, 9), Day(2022, 8, 12))
    return fake, clock


def download(fake, symbol, period, suffix=""):
    """GET an archive file: (status, headers, body)."""
    return get(fake.archive_url + archive_path(symbol, period) + suffix)


def unzip(data):
    """(member name, CSV lines) of an archive zip holding one member."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        [name] = archive.namelist()
        return name, archive.read(name).decode().splitlines()


def rows_of(data):
    """The data rows of an archive zip (without its header row, if it has one)."""
    lines = unzip(data)[1]
    return lines[1:] if lines[0] == COLUMNS else lines


def triples(lines):
    """(agg_trade_id, transact_time, price) of CSV rows, as `FakeBinance.archived` gives them."""
    return [(int(r[0]), int(r[5]), r[1]) for r in (line.split(",") for line in lines)]


def ms(day):
    """Midnight UTC of a day, in ms."""
    return int(utc(day.year, day.month, day.day) * 1000)


def archived_between(fake, symbol, first, end):
    """`fake.archived(symbol)` traded from day `first` until day `end` (exclusive)."""
    return [t for t in fake.archived(symbol) if ms(first) <= t[1] < ms(end)]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"{DAILY}/BTCUSDT/BTCUSDT-aggTrades-2022-08-12.zip", 200),
        (f"{DAILY}/BTCUSDT/BTCUSDT-aggTrades-2022-08-12.zip.CHECKSUM", 200),
        (f"{DAILY}/BTCUSDT/BTCUSDT-aggTrades-2022-08-09.zip", 200),
        (f"{DAILY}/BTCUSDT/BTCUSDT-aggTrades-2022-08-08.zip", 404),
        (f"{DAILY}/BTCUSDT/BTCUSDT-aggTrades-2022-08-13.zip.CHECKSUM", 404),
        (f"{DAILY}/ETHUSDT/ETHUSDT-aggTrades-2022-08-12.zip", 404),
        (f"{DAILY}/btcusdt/btcusdt-aggTrades-2022-08-12.zip", 404),
        (f"{DAILY}/BTCUSDT/ETHUSDT-aggTrades-2022-08-12.zip", 404),
        (f"{DAILY}/BTCUSDT/BTCUSDT-aggTrades-2022-08-32.zip", 404),
        (f"{DAILY}/BTCUSDT/BTCUSDT-aggTrades-2022-08.zip", 404),
        (f"{DAILY}/BTCUSDT/BTCUSDT-trades-2022-08-12.zip", 404),
        ("/data/spot/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2022-08-12.zip", 404),
        ("/data/futures/um/monthly/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2022-08.zip", 404),
        ("/data/futures/um/monthly/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2022-07.zip", 404),
    ],
    ids=[
        "daily",
        "checksum",
        "first-day",
        "before-the-archive",
        "after-the-archive",
        "unknown-symbol",
        "lower-case-symbol",
        "another-symbol-s-name",
        "no-such-date",
        "month-under-daily",
        "trades-not-aggtrades",
        "spot",
        "month-not-over",
        "month-not-archived",
    ],
)
def test_the_archive_answers_binance_s_paths_and_404_for_unknown_files(start_fake, path, status):
    fake, _ = start_archive(start_fake)
    assert fake.archive_url == fake.rest_url
    answer, headers, body = get(fake.archive_url + path)
    assert answer == status
    if status == 404:
        assert b"<Code>NoSuchKey</Code>" in body
        assert headers["Content-Type"] == "application/xml"


def test_a_zip_is_served_with_its_type_and_length(start_fake):
    fake, _ = start_archive(start_fake)
    status, headers, body = download(fake, "BTCUSDT", "2022-08-12")
    assert (status, headers["Content-Type"]) == (200, "application/zip")
    assert int(headers["Content-Length"]) == len(body)
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        [info] = archive.infolist()
    assert info.compress_type == zipfile.ZIP_DEFLATED


def test_the_checksum_is_sha256sum_output_of_the_zip(start_fake):
    fake, _ = start_archive(start_fake)
    for period in ("2022-08-10", "2022-08-11"):
        _, _, data = download(fake, "BTCUSDT", period)
        status, headers, checksum = download(fake, "BTCUSDT", period, ".CHECKSUM")
        assert (status, headers["Content-Type"]) == (200, "text/plain")
        text = checksum.decode()
        assert re.fullmatch(rf"[0-9a-f]{{64}}  BTCUSDT-aggTrades-{period}\.zip\n", text)
        assert text.split()[0] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("day", "header"),
    [(Day(2022, 8, 10), False), (Day(2022, 8, 11), True)],
    ids=["no-header-before-2022-08-11", "header-from-2022-08-11"],
)
def test_a_day_s_csv_holds_its_trades_with_a_header_by_date(start_fake, day, header):
    fake, _ = start_archive(start_fake)
    _, _, data = download(fake, "BTCUSDT", day.isoformat())
    name, lines = unzip(data)

    assert name == f"BTCUSDT-aggTrades-{day}.csv"
    assert (lines[0] == COLUMNS) is header
    rows = lines[1:] if header else lines
    assert lines[0][0].isdigit() is not header  # how an importer tells them apart
    assert len(rows) == 100
    fields = [row.split(",") for row in rows]
    assert {len(f) for f in fields} == {7}
    assert {f[6] for f in fields} <= {"true", "false"}
    assert all(re.fullmatch(r"[0-9]+\.[0-9]{2}", f[1]) for f in fields)  # as listed: 100.00
    assert all(re.fullmatch(r"0\.[0-9]{3}", f[2]) for f in fields)
    assert all(int(f[3]) <= int(f[4]) for f in fields)
    times = [int(f[5]) for f in fields]
    assert times == sorted(times)
    next_day = day + datetime.timedelta(days=1)
    assert ms(day) <= times[0] and times[-1] < ms(next_day)
    assert times[-1] - times[0] > 20 * 3600 * 1000  # spread over the day, in ms
    assert triples(rows) == archived_between(fake, "BTCUSDT", day, next_day)


def test_ids_run_on_across_days_and_into_the_live_stream(start_fake, connect):
    clock = Clock(utc(2022, 8, 14, 12))
    fake = start_fake(clock=clock)
    fake.list_symbol("BTCUSDT", first_id=5000)
    fake.archive("BTCUSDT", Day(2022, 8, 10), Day(2022, 8, 12), per_day=300)
    ws = subscribe(fake, connect, "BTCUSDT")
    rows = []
    for day in ("2022-08-10", "2022-08-11", "2022-08-12"):
        rows += rows_of(download(fake, "BTCUSDT", day)[2])
    live = fake.trade("BTCUSDT")

    ids = [int(row.split(",")[0]) for row in rows]
    assert ids == list(range(4100, 5000))
    assert triples(rows) == fake.archived("BTCUSDT")
    assert json.loads(ws.recv())["a"] == live["a"] == 5000
    assert int(rows[-1].split(",")[4]) < live["f"]  # the trade ids inside do not go back either
    assert fake.history("BTCUSDT") == [live]  # history is what was traded live


def test_an_archive_of_a_symbol_not_listed_lists_it(start_fake):
    fake, _ = start_archive(start_fake)
    first = fake.archived("BTCUSDT")[0][0]
    assert fake.trade("BTCUSDT")["a"] == fake.archived("BTCUSDT")[-1][0] + 1 == first + 400
    assert [s["symbol"] for s in rest(fake, "", path=EXCHANGE_INFO)[2]["symbols"]] == ["BTCUSDT"]


@pytest.mark.parametrize(
    ("before", "arguments", "message"),
    [
        (lambda fake: fake.trade("BTCUSDT"), (Day(2022, 8, 1), Day(2022, 8, 2)), "before any"),
        (lambda fake: fake.skip_ids("BTCUSDT", 1), (Day(2022, 8, 1), Day(2022, 8, 2)), "before"),
        (
            lambda fake: fake.archive("BTCUSDT", Day(2022, 7, 1), Day(2022, 7, 2)),
            (Day(2022, 8, 1), Day(2022, 8, 2)),
            "already has an archive",
        ),
        (lambda fake: None, (Day(2022, 8, 2), Day(2022, 8, 1)), "start <= end"),
        (lambda fake: None, (Day(2022, 8, 1), Day(2022, 8, 1), 0), "per_day >= 1"),
        (
            lambda fake: fake.list_symbol("BTCUSDT", first_id=150),
            (Day(2022, 8, 1), Day(2022, 8, 2)),
            "no room",
        ),
    ],
    ids=["after-a-trade", "after-skipped-ids", "twice", "backwards", "no-trades", "ids-below-0"],
)
def test_an_archive_must_come_first_and_make_sense(fake, before, arguments, message):
    before(fake)
    with pytest.raises(ValueError, match=message):
        fake.archive("BTCUSDT", *arguments)


@pytest.mark.parametrize("lag", [1, 2], ids=["next-day", "two-days-late"])
def test_a_day_is_published_archive_lag_days_after_it(start_fake, lag):
    clock = Clock(utc(2022, 8, 14, 23, 59))
    fake = start_fake(clock=clock, archive_lag_days=lag)
    fake.archive("BTCUSDT", Day(2022, 8, 10), Day(2022, 8, 14))

    def published():
        days = [f"2022-08-{d}" for d in range(10, 15)]
        return [day for day in days if download(fake, "BTCUSDT", day)[0] == 200]

    assert published()[-1] == f"2022-08-{14 - lag}"
    clock.now += 60  # 2022-08-15 00:00:59
    assert published()[-1] == f"2022-08-{15 - lag}"
    assert len(published()) == 6 - lag


def test_a_month_is_published_once_over_holding_its_archived_days(start_fake):
    clock = Clock(utc(2022, 8, 31, 12))
    fake = start_fake(clock=clock)
    fake.archive("BTCUSDT", Day(2022, 7, 30), Day(2022, 9, 1), per_day=10)

    def month(period):
        status, _, data = download(fake, "BTCUSDT", period)
        if status != 200:
            return status
        name, lines = unzip(data)
        assert name == f"BTCUSDT-aggTrades-{period}.csv"
        return lines

    def archived(first, end):
        return archived_between(fake, "BTCUSDT", first, end)

    assert (month("2022-08"), month("2022-09")) == (404, 404)
    july = month("2022-07")  # the archive starts on the 30th: two days, no header (before 08-11)
    assert triples(july) == archived(Day(2022, 7, 30), Day(2022, 8, 1))
    assert len(july) == 20

    clock.now = utc(2023, 3, 1, 12)
    august = month("2022-08")
    assert august[0] != COLUMNS  # dated by its first day: 2022-08-01
    assert triples(august) == archived(Day(2022, 8, 1), Day(2022, 9, 1))
    assert len(august) == 310
    september = month("2022-09")  # one archived day, and a header
    assert september[0] == COLUMNS
    assert triples(september[1:]) == archived(Day(2022, 9, 1), Day(2022, 9, 2))
    assert month("2022-10") == 404
    status, _, checksum = download(fake, "BTCUSDT", "2022-09", ".CHECKSUM")
    assert (status, checksum.decode()[64:]) == (200, "  BTCUSDT-aggTrades-2022-09.zip\n")


def test_missing_answers_404_for_good(start_fake):
    fake, clock = start_archive(start_fake)
    fake.archive_fault("missing", "BTCUSDT", "2022-08-11")
    clock.now += 30 * 86400
    for _ in range(2):
        assert download(fake, "BTCUSDT", "2022-08-11")[0] == 404
        assert download(fake, "BTCUSDT", "2022-08-11", ".CHECKSUM")[0] == 404
    assert download(fake, "BTCUSDT", "2022-08-12")[0] == 200
    assert download(fake, "BTCUSDT", "2022-08")[0] == 200  # the month is another file


def test_corrupt_downloads_fail_the_checksum_count_times(start_fake):
    fake, _ = start_archive(start_fake)
    _, _, good = download(fake, "BTCUSDT", "2022-08-11")
    fake.archive_fault("corrupt", "BTCUSDT", "2022-08-11", count=2)
    _, _, checksum = download(fake, "BTCUSDT", "2022-08-11", ".CHECKSUM")
    assert checksum.split()[0].decode() == hashlib.sha256(good).hexdigest()  # not damaged

    for _ in range(2):
        status, headers, bad = download(fake, "BTCUSDT", "2022-08-11")
        assert (status, int(headers["Content-Length"]), len(bad)) == (200, len(good), len(good))
        assert hashlib.sha256(bad).hexdigest() != checksum.split()[0].decode()
        with pytest.raises((zipfile.BadZipFile, zlib.error)):
            unzip(bad)
    assert download(fake, "BTCUSDT", "2022-08-11")[2] == good
    assert download(fake, "BTCUSDT", "2022-08-12")[0] == 200


def test_no_header_leaves_the_header_out_of_a_file_that_should_have_it(start_fake):
    fake, _ = start_archive(start_fake)
    _, _, good = download(fake, "BTCUSDT", "2022-08-12")
    fake.archive_fault("no_header", "BTCUSDT", "2022-08-12")
    _, _, data = download(fake, "BTCUSDT", "2022-08-12")
    _, _, checksum = download(fake, "BTCUSDT", "2022-08-12", ".CHECKSUM")

    assert unzip(good)[1][0] == COLUMNS
    assert unzip(data)[1] == unzip(good)[1][1:]
    assert checksum.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_shuffled_puts_the_rows_out_of_order(start_fake):
    fake, _ = start_archive(start_fake)
    _, _, good = download(fake, "BTCUSDT", "2022-08-12")
    fake.archive_fault("shuffled", "BTCUSDT", "2022-08-12")
    _, _, data = download(fake, "BTCUSDT", "2022-08-12")

    lines, shuffled = unzip(good)[1], unzip(data)[1]
    assert shuffled[0] == COLUMNS
    assert shuffled != lines
    assert sorted(shuffled[1:]) == sorted(lines[1:])
    assert download(fake, "BTCUSDT", "2022-08-12")[2] == data  # the same order each time


def test_lagging_answers_404_for_count_requests_then_publishes(start_fake):
    fake, _ = start_archive(start_fake)
    fake.archive_fault("lagging", "BTCUSDT", "2022-08-12", count=2)
    assert download(fake, "BTCUSDT", "2022-08-12", ".CHECKSUM")[0] == 404
    assert download(fake, "BTCUSDT", "2022-08-12")[0] == 404
    assert download(fake, "BTCUSDT", "2022-08-11")[0] == 200  # other days are on time
    assert download(fake, "BTCUSDT", "2022-08-12", ".CHECKSUM")[0] == 200
    assert download(fake, "BTCUSDT", "2022-08-12")[0] == 200


def test_replaced_changes_the_bytes_and_the_checksum_but_not_the_rows(start_fake):
    fake, _ = start_archive(start_fake)
    _, _, first = download(fake, "BTCUSDT", "2022-08-12")
    _, _, first_checksum = download(fake, "BTCUSDT", "2022-08-12", ".CHECKSUM")
    fake.archive_fault("replaced", "BTCUSDT", "2022-08-12")
    _, _, second = download(fake, "BTCUSDT", "2022-08-12")
    _, _, second_checksum = download(fake, "BTCUSDT", "2022-08-12", ".CHECKSUM")

    assert second != first
    assert second_checksum != first_checksum
    assert second_checksum.split()[0].decode() == hashlib.sha256(second).hexdigest()
    assert unzip(second) == unzip(first)


@pytest.mark.parametrize(
    ("kind", "period", "message"),
    [
        ("truncated", "2022-08-12", "unknown archive fault"),
        ("missing", "2022-8-12", "YYYY-MM-DD or YYYY-MM"),
        ("missing", "20220812", "YYYY-MM-DD or YYYY-MM"),
        ("missing", "2022-13", "month"),
    ],
    ids=["unknown-kind", "short-month", "no-dashes", "no-such-month"],
)
def test_archive_fault_refuses_what_it_cannot_do(fake, kind, period, message):
    with pytest.raises(ValueError, match=message):
        fake.archive_fault(kind, "BTCUSDT", period)


def test_rest_serves_archived_trades_within_rest_window_only(start_fake):
    fake, _ = start_archive(start_fake)  # now 2022-08-14 12:00: the window opens 08-12 12:00
    made = [fake.trade("BTCUSDT") for _ in range(2)]
    archived = fake.archived("BTCUSDT")
    august_12 = archived[300:]
    recent = next(i for i, t in enumerate(august_12) if t[1] >= ms(Day(2022, 8, 12)) + 43200000)

    def served(query):
        status, _, rows = rest(fake, "symbol=BTCUSDT&" + query)
        assert status == 200, rows
        assert all(list(row) == REST_FIELDS for row in rows)
        return [(r["a"], r["T"], r["p"]) for r in rows]

    old = august_12[recent - 1][0]
    for too_old in (archived[0][0], old, archived[0][0] - 10):
        status, _, body = rest(fake, f"symbol=BTCUSDT&fromId={too_old}")
        assert (status, body) == (
            400,
            {"code": -4166, "msg": "Search window is restricted to recent 2 days only."},
        )
    live = [(t["a"], t["T"], t["p"]) for t in made]
    assert served(f"fromId={old + 1}&limit=1000") == august_12[recent:] + live
    assert served(f"fromId={old + 1}&limit=3") == august_12[recent : recent + 3]
    assert served("limit=4") == august_12[-2:] + live
    assert served("limit=1000") == august_12[recent:] + live  # the latest: none too old


def test_rest_window_is_how_far_back_rest_serves_the_archive(start_fake):
    fake, _ = start_archive(start_fake, rest_window=10 * 86400.0)
    status, _, rows = rest(fake, "symbol=BTCUSDT&fromId=0&limit=2")
    assert (status, [(r["a"], r["T"], r["p"]) for r in rows]) == (200, fake.archived("BTCUSDT")[:2])
    rows = rest(fake, "symbol=BTCUSDT&limit=1000")[2]
    assert [r["a"] for r in rows] == [t[0] for t in fake.archived("BTCUSDT")]


def test_archive_requests_lists_every_archive_path_in_order(start_fake):
    fake, _ = start_archive(start_fake)
    paths = [
        archive_path("BTCUSDT", "2022-08-12") + ".CHECKSUM",
        archive_path("BTCUSDT", "2022-08-12"),
        archive_path("BTCUSDT", "2022-08-13"),
        "/data/nothing",
        archive_path("BTCUSDT", "2022-08-12"),
    ]
    assert fake.archive_requests() == []
    for path in paths:
        get(fake.archive_url + path)
    rest(fake, "symbol=BTCUSDT")
    assert fake.archive_requests() == paths
    assert fake.archive_requests()[0] == (
        "/data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2022-08-12.zip.CHECKSUM"
    )


def test_the_same_arguments_give_the_same_archive(start_fake):
    one, _ = start_archive(start_fake)
    two, _ = start_archive(start_fake)
    other, _ = start_archive(start_fake)
    other.archive("ETHUSDT", Day(2022, 8, 9), Day(2022, 8, 12))

    def served(fake, symbol="BTCUSDT"):
        files = [download(fake, symbol, "2022-08-11" + suffix)[2] for suffix in ("", ".CHECKSUM")]
        return files, rest(fake, f"symbol={symbol}&limit=50")[2], fake.archived(symbol)

    assert served(one) == served(two)
    eth = served(other, "ETHUSDT")
    assert [t[0] for t in eth[2]] != [t[0] for t in one.archived("BTCUSDT")]
    assert [t[2] for t in eth[2]] != [t[2] for t in one.archived("BTCUSDT")]  # its own walk


def test_runs_on_its_own_and_stops_on_sigterm(connect):
    command = [sys.executable, "-m", "tickd.fakebinance", "--port", "0", "--symbols", "BTCUSDT"]
    command += ["--archive-days", "3", "--archive-per-day", "50"]
    root = Path(__file__).resolve().parent.parent
    with subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True) as process:
        try:
            line = process.stdout.readline()
            ws_url, rest_url = (part.split("=", 1)[1] for part in line.split())
            assert line.startswith("BINANCE_WS_URL=ws://127.0.0.1:")
            assert rest_url.startswith("http://127.0.0.1:")
            ws = connect(f"{ws_url}/btcusdt@aggTrade")
            assert json.loads(ws.recv())["s"] == "BTCUSDT"

            archive_url = process.stdout.readline().strip().removeprefix("BINANCE_ARCHIVE_URL=")
            assert archive_url == rest_url
            two_days_ago = datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=2)
            status, _, data = get(archive_url + archive_path("BTCUSDT", two_days_ago.isoformat()))
            assert status == 200
            assert len(rows_of(data)) == 50
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
        finally:
            process.kill()
