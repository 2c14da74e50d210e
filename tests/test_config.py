"""Configuration from the environment."""

import logging
from dataclasses import replace

import pytest

from tickd.config import Config, ConfigError, load, parse_duration, prepare_db_dir

DEFAULTS = Config(
    db_path="./.data/ticks.db",
    http_port=8080,
    ws_url="wss://fstream.binance.com/market/ws",
    rest_url="https://fapi.binance.com",
    poll_interval=60.0,
    stale_timeout=300.0,
    max_age=85800.0,
    silence_timeout=300.0,
    rest_weight=1200,
    log_level=logging.INFO,
)
VARIABLES = [  # (variable, as set, Config field, as read): one for every field
    ("DB_PATH", "/tmp/x.db", "db_path", "/tmp/x.db"),
    ("HTTP_PORT", "0", "http_port", 0),
    ("BINANCE_WS_URL", "ws://127.0.0.1:9/market/ws/", "ws_url", "ws://127.0.0.1:9/market/ws"),
    ("BINANCE_REST_URL", "http://127.0.0.1:9", "rest_url", "http://127.0.0.1:9"),
    ("SETTINGS_POLL_INTERVAL", "500ms", "poll_interval", 0.5),
    ("STREAM_STALE_TIMEOUT", "90s", "stale_timeout", 90.0),
    ("STREAM_MAX_AGE", "12h", "max_age", 43200.0),
    ("STREAM_SILENCE_TIMEOUT", "2m", "silence_timeout", 120.0),
    ("REST_WEIGHT_PER_MINUTE", "600", "rest_weight", 600),
    ("LOG_LEVEL", "DEBUG", "log_level", logging.DEBUG),
]


def test_defaults():
    assert load({}) == DEFAULTS


@pytest.mark.parametrize(
    ("variable", "text", "field", "value"), VARIABLES, ids=[v[0] for v in VARIABLES]
)
def test_each_variable_sets_its_field_only(variable, text, field, value):
    assert load({variable: text}) == replace(DEFAULTS, **{field: value})


def test_every_variable_is_read():
    config = load({variable: text for variable, text, _, _ in VARIABLES})
    assert config == Config(**{field: value for _, _, field, value in VARIABLES})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("90s", 90),
        ("5m", 300),
        ("23h50m", 85800),
        ("1h30m15s", 5415),
        ("1.5s", 1.5),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HTTP_PORT", "abc"),
        ("HTTP_PORT", "-1"),
        ("HTTP_PORT", "70000"),
        ("SETTINGS_POLL_INTERVAL", "60"),
        ("SETTINGS_POLL_INTERVAL", "0s"),
        ("STREAM_STALE_TIMEOUT", "5 minutes"),
        ("STREAM_STALE_TIMEOUT", "m5"),
        ("BINANCE_WS_URL", "https://fstream.binance.com/market/ws"),
        ("BINANCE_REST_URL", "fapi.binance.com"),
        ("LOG_LEVEL", "loud"),
        ("REST_WEIGHT_PER_MINUTE", "5000"),
        ("REST_WEIGHT_PER_MINUTE", "10"),
        ("STREAM_MAX_AGE", "forever"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_value(name, value):
    with pytest.raises(ConfigError) as info:
        load({name: value})
    message = str(info.value)
    assert name in message and repr(value) in message and "\n" not in message


def test_db_directory_is_created(tmp_path):
    config = load({"DB_PATH": str(tmp_path / "a" / "b" / "ticks.db")})
    prepare_db_dir(config)
    assert (tmp_path / "a" / "b").is_dir()


def test_unusable_db_directory_names_db_path(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="DB_PATH"):
        prepare_db_dir(load({"DB_PATH": str(tmp_path / "file" / "ticks.db")}))


def test_a_db_directory_that_cannot_be_created_is_said_so(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError) as info:
        prepare_db_dir(load({"DB_PATH": str(tmp_path / "file" / "sub" / "ticks.db")}))
    assert "cannot create its directory" in str(info.value)
    assert str(tmp_path / "file") in str(info.value)
