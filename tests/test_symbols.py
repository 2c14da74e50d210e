"""Symbol normalisation, refusal, quoting and stream paths."""

import sqlite3

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tickd import symbols
from tickd.database import quote


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("BTCUSDT", "BTCUSDT"),
        ("btcusdt", "BTCUSDT"),
        ("  ethUsdt\t\n", "ETHUSDT"),
        ("BTCUSDT_261225", "BTCUSDT_261225"),
        ("1000pepeusdt", "1000PEPEUSDT"),
        ("币安人生usdt", "币安人生USDT"),
        ("straße", "STRAßE"),  # only ASCII letters change case
    ],
)
def test_normalise(raw, expected):
    assert symbols.normalise(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        'BTC"; DROP TABLE symbol_settings;--',
        "BTC USDT",
        "BTC-USDT",
        "BTC\nUSDT",
        "BTC\x00USDT",
        "A" * 33,
        "A" * 10_000,
        "BTC\u202eUSDT",  # right-to-left override
        "BTC\u0301USDT",  # combining accent
        "BTC\uff11",  # full-width digit one
        None,
        42,
    ],
)
def test_impossible_names_are_refused(raw):
    with pytest.raises(symbols.InvalidSymbol):
        symbols.normalise(raw)


@pytest.mark.parametrize(
    ("symbol", "path"),
    [
        ("BTCUSDT", "btcusdt@aggTrade"),
        ("BTCUSDT_261225", "btcusdt_261225@aggTrade"),
        ("币安人生USDT", "%E5%B8%81%E5%AE%89%E4%BA%BA%E7%94%9Fusdt@aggTrade"),
    ],
)
def test_stream_path_lower_cases_ascii_and_percent_encodes_the_rest(symbol, path):
    assert symbols.stream_path(symbol) == path


names = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40)


@given(names)
@example('BTC"; DROP TABLE symbol_settings;--')
@example(" 币安人生usdt ")
def test_a_name_is_refused_or_safe_everywhere(raw):
    try:
        symbol = symbols.normalise(raw)
    except symbols.InvalidSymbol as exc:
        assert str(exc).isprintable()
        return
    assert symbols.normalise(symbol) == symbol
    assert 1 <= len(symbol) <= symbols.MAX_LENGTH
    assert all(c.isalnum() or c == "_" for c in symbol)
    assert "/" not in symbols.stream_path(symbol)
    assert symbols.display(symbol) == symbol


@given(st.text(max_size=50))
@example('a"b')
@example('"; DROP TABLE x; --')
def test_quote_makes_any_text_one_identifier(name):
    if "\x00" in name:
        return  # SQLite identifiers end at NUL; normalise() refuses such names first
    table = "prices_" + name  # as the store names tables: never a reserved sqlite_ name
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE TABLE {quote(table)} (x)")
    assert [row[0] for row in conn.execute("SELECT name FROM sqlite_master")] == [table]
    conn.close()


@pytest.mark.parametrize(
    ("raw", "shown"),
    [("BTCUSDT", "BTCUSDT"), ("a\nb", "a\\nb"), ("x" * 50, "x" * 40 + "...")],
)
def test_display_keeps_a_name_on_one_line(raw, shown):
    assert symbols.display(raw) == shown
