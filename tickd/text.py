"""How values are shown to people: display widths, times, escaped names, the symbol columns."""

from __future__ import annotations

import functools
import time
import unicodedata
from collections.abc import Iterable

NAME_WIDTH = 12  # the spec's example: "BTCUSDT" and five spaces
STATE_WIDTH = 8  # "on" and six spaces


def width(text: str) -> int:
    """Columns `text` takes in a terminal: wide East Asian characters count two, marks none."""
    if text.isascii() and text.isprintable():
        return len(text)  # every symbol Binance lists: one column a character
    total = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        total += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return total


def quoted(name: str, limit: int = 40) -> str:
    r"""`name` in double quotes, on one line, readable one way only: `"` and `\` escaped with
    a backslash, anything unprintable as a Python escape (`\n`, `\u202e`); cut after `limit`
    characters, with `...` after the closing quote. How the status page and `tickd.admin`
    show a name as stored that is not a symbol."""
    shown = "".join(_escape(char) for char in name[:limit])
    return f'"{shown}"' + ("..." if len(name) > limit else "")


def _escape(char: str) -> str:
    if char in '"\\':
        return "\\" + char
    return char if char.isprintable() else ascii(char)[1:-1]


def format_time(ms: int) -> str:
    """`2026-11-30 04:56:16` (UTC, to the second) for a time in ms since the epoch."""
    return _format_second(ms // 1000)


@functools.lru_cache(maxsize=4096)  # a status page of 600 symbols shows 1,200 times
def _format_second(second: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))


def iso_time(ms: int) -> str:
    """`2026-11-30T04:56:16.123Z` for a time in ms since the epoch."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def name_column(names: Iterable[str]) -> int:
    """Width of the SYMBOL column: NAME_WIDTH, or the widest of `names` and two spaces."""
    return max([NAME_WIDTH, *(width(name) + 2 for name in names)])


def symbol_line(name: str, state: str, detail: str, column: int) -> str:
    """One `SYMBOL  STATE  detail` line: `name` padded to `column` display columns, `state`
    to STATE_WIDTH, then `detail`; trailing spaces cut."""
    return f"{name}{' ' * (column - width(name))}{state:<{STATE_WIDTH}}{detail}".rstrip()
