"""The status page: its shape against the spec's example, widths, uptime, hostile names."""

import calendar
import time
from pathlib import Path

import pytest

from tickd.database import Database
from tickd.status import Row, collect, format_uptime, render, render_stopped
from tickd.text import width
from tickd.wire import Tick

DATA = Path(__file__).parent / "data"


def ms(text):
    """Milliseconds since the epoch of a `YYYY-MM-DD HH:MM:SS` UTC time."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S")) * 1000


def test_page_matches_the_spec_example_byte_for_byte():
    rows = [
        Row("BTCUSDT", True, (ms("2024-01-15 08:32:01"), ms("2024-12-21 14:23:45") + 999)),
        Row("ETHUSDT", True, (ms("2024-01-15 08:32:05"), ms("2024-12-21 14:23:44"))),
        Row("SOLUSDT", False, (ms("2024-03-01 12:00:00"), ms("2024-06-15 18:30:22"))),
        Row("ADAUSDT", True, None),
    ]
    uptime = 2 * 86400 + 14 * 3600 + 32 * 60 + 59
    assert render(uptime, rows) == (DATA / "status_example.txt").read_text()


def test_stopped_page():
    assert render_stopped() == "Binance Tick Store\n\nStatus:     stopped (connection refused)\n"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0m"), (59, "0m"), (60, "1m"), (3600, "1h 0m"), (86400, "1d 0h 0m"), (90061, "1d 1h 1m")],
)
def test_uptime_leaves_out_leading_zero_units(seconds, shown):
    assert format_uptime(seconds) == shown


def test_columns_stay_aligned_for_long_and_wide_names():
    rows = [
        Row("BTCUSDT", True, None),
        Row("币安人生USDT", True, None),
        Row("BTCUSDT_261225ABCDEF", False, None),
    ]
    lines = render(0, rows).splitlines()[5:]
    state_columns = {width(line[: line.index("o")]) for line in lines}
    assert len(state_columns) == 1
    assert state_columns.pop() == width("BTCUSDT_261225ABCDEF") + 2


def test_refused_names_are_escaped_and_cannot_add_lines():
    rows = [
        Row("BTCUSDT", True, None),
        Row("EVIL\nStatus:     hacked\u202e", False, invalid=True),
    ]
    page = render(0, rows)
    assert page.count("\n") == 7
    assert "Status:     hacked" not in page.splitlines()
    assert page.splitlines()[-1].endswith("off     (invalid symbol, ignored)")


def test_a_quote_in_a_refused_name_is_escaped_on_the_page():
    rows = [Row("BTCUSDT", True, None), Row('BTC"; DROP TABLE x', False, invalid=True)]
    lines = render(0, rows).splitlines()[5:]
    assert lines == [
        "BTCUSDT                on      (no data yet)",
        '"BTC\\"; DROP TABLE x"  off     (invalid symbol, ignored)',
    ]


def test_an_empty_table_without_a_settings_row_is_not_listed(tmp_path):
    db = Database(str(tmp_path / "ticks.db"))
    db.open()
    try:
        for symbol in ("BTCUSDT", "BTCUSD", "ETHUSDT", "SOLUSDT"):
            db.ensure_table(symbol)
        assert db.insert("ETHUSDT", Tick(7, ms("2026-11-30 04:56:16"), 3000.5))
        rows = collect(db, {"SOLUSDT": True}, ['x"y'], lambda symbol: symbol == "SOLUSDT")
    finally:
        db.close()
    assert rows == [
        Row("SOLUSDT", True, None),  # listed in symbol_settings: shown, empty or not
        Row('x"y', False, invalid=True),
        Row("ETHUSDT", False, (ms("2026-11-30 04:56:16"), ms("2026-11-30 04:56:16"))),
    ]  # BTCUSDT and BTCUSD: empty tables, no settings row: nothing to say
