"""Symbol names: normalisation, refusal of impossible names, and stream paths."""

from __future__ import annotations

import string
from urllib.parse import quote

MAX_LENGTH = 32

_TO_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)
_TO_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


class InvalidSymbol(ValueError):
    """A name that cannot be a Binance symbol; the message is safe to log and display."""


def normalise(raw: object) -> str:
    """The symbol as stored and shown: trimmed, ASCII letters upper-cased.

    Raises InvalidSymbol unless the result is 1-32 characters of letters (any script),
    ASCII digits and `_`: such a name never reaches SQL or a URL.
    """
    if not isinstance(raw, str):
        raise InvalidSymbol(f"symbol is not text: {type(raw).__name__}")
    name = raw.strip().translate(_TO_UPPER)
    if not name:
        raise InvalidSymbol("symbol is empty")
    if len(name) > MAX_LENGTH:
        raise InvalidSymbol(f"symbol is longer than {MAX_LENGTH} characters")
    for char in name:
        if not (char.isalpha() or char in string.digits or char == "_"):
            raise InvalidSymbol(f"symbol has a character Binance never uses: {char!r}")
    return name


def stream_path(symbol: str) -> str:
    """The path segment of a symbol's raw aggTrade stream, e.g. `btcusdt@aggTrade`.

    Binance wants the name lower-cased, but only its ASCII letters; anything else is
    percent-encoded as UTF-8.
    """
    return quote(symbol.translate(_TO_LOWER) + "@aggTrade", safe="@")


def display(raw: str, limit: int = 40) -> str:
    """A name as it may appear in a log line or on the status page: one printable line."""
    shown = ascii(raw[:limit])[1:-1] if not raw.isprintable() else raw[:limit]
    return shown + ("..." if len(raw) > limit else "")
