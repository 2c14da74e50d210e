"""The frame parser against Binance's recorded frames, malformed input and generated input."""

import json
import math
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tickd.wire import BadFrame, Tick, parse_frame, tick_from

DATA = Path(__file__).parent / "data"
RECORDED = [
    json.loads(line)["data"]
    for line in (DATA / "ws_aggtrade_envelope.jsonl").read_text().split("\n")
    if line
]
GOOD = (
    '{"e":"aggTrade","E":1791382992488,"a":3477868433,"s":"BTCUSDT","p":"83091.70","q":"0.022",'
    '"nq":"0.022","f":8153634393,"l":8153634394,"T":1791382992338,"m":false,"st":1}'
)


@pytest.mark.parametrize("trade", RECORDED, ids=lambda t: f"{t['s']}-{t['a']}")
def test_recorded_frames_parse_to_their_id_time_and_price(trade):
    raw = json.dumps(trade, separators=(",", ":"))
    assert parse_frame(raw, trade["s"]) == Tick(trade["a"], trade["T"], float(trade["p"]))
    assert parse_frame(raw.encode(), trade["s"]) == parse_frame(raw, trade["s"])


def test_rest_rows_parse_with_the_same_rules():
    rows = json.loads((DATA / "rest_aggtrades.json").read_text())
    assert [tick_from(row) for row in rows] == [
        Tick(3477868380, 1791382990569, 83084.3),
        Tick(3477868381, 1791382990794, 83084.4),
        Tick(3477868382, 1791382990860, 83084.3),
    ]


def test_answers_to_requests_are_not_trades():
    assert parse_frame('{"result":null,"id":1}', "BTCUSDT") is None


def _with(**changes):
    trade = json.loads(GOOD)
    for key, value in changes.items():
        if value is ...:
            del trade[key]
        else:
            trade[key] = value
    return json.dumps(trade)


BAD = {
    "empty": "",
    "not json": "{nope",
    "truncated": GOOD[:-5],
    "array": "[1,2,3]",
    "string": '"aggTrade"',
    "invalid utf-8": b'{"e":"aggTrade","s":"\xff"}',
    "deeply nested": "[" * 100_000 + "]" * 100_000,
    "other event": _with(e="markPriceUpdate"),
    "no event": _with(e=...),
    "other symbol": _with(s="ETHUSDT"),
    "lower-case symbol": _with(s="btcusdt"),
    "no id": _with(a=...),
    "no time": _with(T=...),
    "no price": _with(p=...),
    "id as string": _with(a="3477868433"),
    "id as float": _with(a=3477868433.0),
    "id as bool": _with(a=True),
    "id zero": _with(a=0),
    "id negative": _with(a=-1),
    "id beyond int64": _with(a=2**63),
    "time negative": _with(T=-5),
    "price as number": _with(p=83091.7),
    "price zero": _with(p="0"),
    "price zero decimals": _with(p="0.000"),
    "price negative": _with(p="-1.5"),
    "price NaN": _with(p="NaN"),
    "price Infinity": _with(p="Infinity"),
    "price exponent": _with(p="1e5"),
    "price underscore": _with(p="1_000"),
    "price spaces": _with(p=" 1.5"),
    "price huge": _with(p="9" * 400),
    "price null": _with(p=None),
}


@pytest.mark.parametrize("frame", BAD.values(), ids=BAD.keys())
def test_bad_frames_raise_bad_frame(frame):
    with pytest.raises(BadFrame):
        parse_frame(frame, "BTCUSDT")


def test_unknown_fields_are_ignored_and_field_order_does_not_matter():
    trade = json.loads(GOOD)
    shuffled = dict(reversed(list(trade.items())), zz={"new": [1, 2]}, X=None)
    assert parse_frame(json.dumps(shuffled), "BTCUSDT") == Tick(3477868433, 1791382992338, 83091.7)


@given(st.one_of(st.text(), st.binary()))
@example(GOOD)
@example(GOOD.encode())
def test_any_input_is_a_tick_none_or_bad_frame(data):
    try:
        result = parse_frame(data, "BTCUSDT")
    except BadFrame:
        return
    assert result is None or (
        isinstance(result, Tick)
        and result.id > 0
        and math.isfinite(result.price)
        and result.price > 0
    )


prices = st.decimals(min_value="0.00000001", max_value="99999999", places=8).map(
    lambda d: format(d, "f")
)
trades = st.fixed_dictionaries(
    {
        "e": st.just("aggTrade"),
        "E": st.integers(1, 2**53),
        "a": st.integers(1, 2**63 - 1),
        "s": st.sampled_from([t["s"] for t in RECORDED]),
        "p": prices,
        "q": st.text(max_size=5),
        "T": st.integers(1, 2**63 - 1),
        "m": st.booleans(),
    },
    optional={"nq": st.text(max_size=5), "st": st.integers(), "unknown": st.none()},
)


@given(trades)
def test_every_valid_trade_parses_to_exactly_its_fields(trade):
    tick = parse_frame(json.dumps(trade), trade["s"])
    assert tick == Tick(trade["a"], trade["T"], float(trade["p"]))
