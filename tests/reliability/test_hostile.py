"""Hostile input: names in symbol_settings and frames on the socket. Nothing is created for a
refused name, nothing breaks, and nothing can be forged on the status page or in the log."""

import json
import re

import pytest

from helpers import complete, enable, wait_connected, wait_for

pytestmark = pytest.mark.slow

NAMES = [
    "BTC\nStatus:     hacked",
    "BTC\r\n2026-11-30T00:00:00.000Z INFO forged line",
    'BTC"; DROP TABLE symbol_settings;--',
    "BTC'; DELETE FROM symbol_settings;--",
    "A\x00B",
    "\x1b[31mRED",
    "BTC\u202eTDSU",
    "X" * 10_000,
    "",
    "   ",
    "BTC USDT",
    "../../etc/passwd",
    "😀USDT",
]
VALID_BUT_ODD = ["select", "sqlite_master", "drop", "prices_BTCUSDT"]  # no validation: tried


def test_hostile_names_create_nothing_and_forge_nothing(fake, make_store):
    store = make_store().start()
    enable(store, *NAMES)
    store.sql("INSERT INTO symbol_settings (symbol) VALUES (12.5), (NULL), (x'00ff')")
    enable(store, *VALID_BUT_ODD, fake=fake)
    wait_connected(fake, *(n.upper() for n in VALID_BUT_ODD))
    wait_for(lambda: store.log().count("invalid symbol ignored") >= len(NAMES) + 3, 5)
    tables = {n for (n,) in store.sql("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"symbol_settings", "sqlite_sequence"} | {
        f"prices_{n.upper()}" for n in VALID_BUT_ODD
    }
    assert store.sql("SELECT COUNT(*) FROM symbol_settings") == [(len(NAMES) + 3 + 4,)]
    code, page = store.get("/status")
    assert code == 200
    lines = page.split("\n")
    assert lines[2] == "Status:     running"
    assert sum(line.startswith("Status:") for line in lines) == 1
    body = lines[5:-1]
    assert len(body) == len(NAMES) + 3 + len(VALID_BUT_ODD)
    assert all(line.isprintable() for line in body)
    for line in store.lines:  # every log line is one of ours: a timestamp, a level
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING|ERROR) ", line)
        assert line.isprintable()


def trade_frame(**changes):
    frame = {"e": "aggTrade", "E": 2, "a": 5, "s": "BTCUSDT", "p": "1.5", "q": "1", "T": 1}
    frame.update(changes)
    return json.dumps(frame)


FRAMES = {
    "nested": "[" * 100_000 + "]" * 100_000,
    "nested object": '{"a":' * 50_000 + "1" + "}" * 50_000,
    "id beyond 64 bits": trade_frame(a=2**64),
    "time as huge float": trade_frame(T=1e400).replace("Infinity", "1e400"),
    "price NaN": trade_frame(p="NaN"),
    "price Infinity": trade_frame(p="Infinity"),
    "price zero": trade_frame(p="0"),
    "price negative": trade_frame(p="-3"),
    "price 400 digits": trade_frame(p="9" * 400),
    "bare NaN": '{"e":"aggTrade","s":"BTCUSDT","a":5,"T":1,"p":NaN}',
    "binary": b"\x00\x01\x02",
    "invalid utf-8": b'{"e":"aggTrade","s":"\xc3\x28"}',
    "null": "null",
    "empty": "",
}


def test_hostile_frames_are_skipped_and_the_connection_kept(fake, make_store):
    store = make_store().start()
    enable(store, "BTCUSDT", fake=fake)
    wait_connected(fake, "BTCUSDT")
    fake.trade("BTCUSDT")
    for frame in FRAMES.values():
        fake.send_raw("BTCUSDT", frame)
    fake.trade("BTCUSDT")
    wait_for(lambda: complete(store, fake, "BTCUSDT"), 10)
    assert len(fake.handshakes()) == 1
    assert store.proc.poll() is None
    assert len(store.sql('SELECT * FROM "prices_BTCUSDT"')) == 2
