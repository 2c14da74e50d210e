"""The fake Binance speaks the real wire format and fails on demand."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import gevent
import pytest
import websocket
from websocket import ABNF

from helpers import wait_for
from tickd.fakebinance import EXCHANGE_INFO, FakeBinance, lower_ascii, stream_name

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


def rest(fake, query, path="/fapi/v1/aggTrades"):
    """GET path?query: (status, headers, decoded JSON body)."""
    try:
        response = urllib.request.urlopen(f"{fake.rest_url}{path}?{query}", timeout=5)
    except urllib.error.HTTPError as error:
        response = error
    with response:
        return response.status, response.headers, json.loads(response.read())


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


def test_runs_on_its_own_and_stops_on_sigterm(connect):
    command = [sys.executable, "-m", "tickd.fakebinance", "--port", "0", "--symbols", "BTCUSDT"]
    root = Path(__file__).resolve().parent.parent
    with subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True) as process:
        try:
            line = process.stdout.readline()
            ws_url, rest_url = (part.split("=", 1)[1] for part in line.split())
            assert line.startswith("BINANCE_WS_URL=ws://127.0.0.1:")
            assert rest_url.startswith("http://127.0.0.1:")
            ws = connect(f"{ws_url}/btcusdt@aggTrade")
            assert json.loads(ws.recv())["s"] == "BTCUSDT"
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
        finally:
            process.kill()
