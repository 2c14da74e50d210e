"""Binance's aggTrade wire format: a frame or a REST row in, a Tick out."""

from __future__ import annotations

import json
import math
import re
from typing import NamedTuple

MAX_ID = 2**63 - 1
_PRICE = re.compile(r"\d{1,20}(?:\.\d{1,20})?")


class Tick(NamedTuple):
    """One aggregate trade, in the order of the prices table's columns."""

    id: int  # Binance's aggregate trade id `a`
    timestamp: int  # trade time `T`, ms since the epoch
    price: float  # `p`


class BadFrame(ValueError):
    """A frame the store cannot use; the message says why, briefly and safely."""


def _int(value: object, field: str) -> int:
    # bool is an int in Python, never in Binance's JSON.
    if type(value) is not int or not 0 < value <= MAX_ID:
        raise BadFrame(f"field {field} is not a positive integer")
    return value


def _price(value: object) -> float:
    if type(value) is not str or not _PRICE.fullmatch(value):
        raise BadFrame("field p is not a decimal string")
    price = float(value)
    if not (price > 0 and math.isfinite(price)):
        raise BadFrame("field p is not a positive price")
    return price


def tick_from(fields: dict) -> Tick:
    """The Tick in a decoded aggTrade object or REST row (keys `a`, `T`, `p`)."""
    try:
        return Tick(_int(fields["a"], "a"), _int(fields["T"], "T"), _price(fields["p"]))
    except KeyError as exc:
        raise BadFrame(f"field {exc.args[0]} is missing") from None


def parse_frame(data: bytes | str, symbol: str) -> Tick | None:
    """The Tick carried by one raw-stream frame of `symbol`'s aggTrade stream.

    Returns None for frames that are not trades but are expected on the socket (the
    answers to subscription requests, `{"result": null, "id": 1}`). Raises BadFrame for
    anything else: not JSON, another event, another symbol, a missing or invalid field.
    Unknown fields are ignored: Binance adds some from time to time.
    """
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadFrame("not JSON") from None
    if type(obj) is not dict:
        raise BadFrame("not a JSON object")
    event = obj.get("e")
    if event != "aggTrade":
        if event is None and "result" in obj:
            return None
        raise BadFrame("not an aggTrade event")
    if obj.get("s") != symbol:
        raise BadFrame("trade of another symbol")
    return tick_from(obj)
