"""How values are shown: display widths, escaped names, times, the symbol columns."""

import io
import logging

import pytest

from tickd.logs import setup
from tickd.text import format_time, iso_time, name_column, quoted, symbol_line, width

MIDNIGHT = 1_795_996_800_000  # 2026-11-30T00:00:00Z in ms


def test_width_counts_wide_characters_twice_and_marks_not_at_all():
    assert width("BTC") == 3
    assert width("币安") == 4
    assert width("e\u0301") == 1


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("BTC/USDT", '"BTC/USDT"'),
        ('BTC"; DROP TABLE x', '"BTC\\"; DROP TABLE x"'),
        ('a\\"b', '"a\\\\\\"b"'),
        ("A\nB\u202e", '"A\\nB\\u202e"'),
        (" 币安 usdt ", '" 币安 usdt "'),
        ("x" * 41, '"' + "x" * 40 + '"...'),
    ],
    ids=["plain", "quote", "backslash-then-quote", "unprintable", "wide", "long"],
)
def test_a_quoted_name_reads_one_way_only(name, shown):
    assert quoted(name) == shown


def test_iso_time_keeps_milliseconds():
    assert iso_time(MIDNIGHT + 5) == "2026-11-30T00:00:00.005Z"
    assert iso_time(MIDNIGHT - 1) == "2026-11-29T23:59:59.999Z"


def test_format_time_is_utc_to_the_second():
    assert format_time(MIDNIGHT + 999) == "2026-11-30 00:00:00"
    assert format_time(MIDNIGHT - 1) == "2026-11-29 23:59:59"


def test_log_lines_start_with_the_utc_time_to_the_millisecond():
    logger = logging.getLogger("tickd")
    saved = logger.handlers[:], logger.level, logger.propagate
    try:
        handler = setup(logging.INFO, io.StringIO())
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    record = logging.LogRecord("tickd", logging.INFO, __file__, 1, "stream connected", (), None)
    record.created, record.msecs = (MIDNIGHT + 5) / 1000, 5.0
    assert handler.format(record) == "2026-11-30T00:00:00.005Z INFO stream connected"


def test_columns_start_at_twelve_and_widen_for_a_long_or_wide_name():
    assert name_column(["BTCUSDT"]) == 12
    assert name_column(["BTCUSDT", "币安人生USDT"]) == width("币安人生USDT") + 2
    column = name_column([])
    assert symbol_line("SYMBOL", "STATE", "", column) == "SYMBOL      STATE"
    assert symbol_line("BTCUSDT", "on", "", column) == "BTCUSDT     on"
    assert (
        symbol_line("币安", "off", "(no data yet)", column) == "币安        off     (no data yet)"
    )
