"""Configuration from the environment: parsed once at start into a frozen Config."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A variable has a value the store cannot use; the message names both."""


@dataclass(frozen=True, slots=True)
class Config:
    db_path: str = "./.data/ticks.db"
    http_port: int = 8080
    ws_url: str = "wss://fstream.binance.com/market/ws"
    rest_url: str = "https://fapi.binance.com"
    archive_url: str = "https://data.binance.vision"  # the history import's public archive
    poll_interval: float = 60.0
    stale_timeout: float = 300.0
    max_age: float = 23 * 3600.0 + 50 * 60.0
    silence_timeout: float = 300.0
    rest_weight: int = 1200
    log_level: int = logging.INFO


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `500ms`, `90s`, `5m` or `23h50m`; ValueError if malformed."""
    text = text.strip()
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"not a duration: {text!r} (use e.g. 500ms, 90s, 5m, 23h50m)")
    return total


def _port(text: str) -> int:
    if not text.strip().isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError("not a port number (0-65535)")
    return int(text)


def _positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


def _weight(text: str) -> int:
    # One aggTrades call weighs 20; Binance allows 2400 per minute per IP, for everything.
    if not text.strip().isdigit() or not 20 <= int(text) <= 2400:
        raise ValueError("not a whole number from 20 to 2400")
    return int(text)


def _url(*schemes: str):
    def parse(text: str) -> str:
        parts = urlsplit(text.strip())
        if parts.scheme not in schemes or not parts.netloc:
            raise ValueError(f"not a {'/'.join(schemes)} URL")
        return text.strip().rstrip("/")

    return parse


def _level(text: str) -> int:
    try:
        return _LEVELS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"not one of {', '.join(sorted(_LEVELS))}") from None


def _db_path(text: str) -> str:
    if not text.strip():
        raise ValueError("empty path")
    return text


_FIELDS = {
    "DB_PATH": ("db_path", _db_path),
    "HTTP_PORT": ("http_port", _port),
    "BINANCE_WS_URL": ("ws_url", _url("ws", "wss")),
    "BINANCE_REST_URL": ("rest_url", _url("http", "https")),
    "BINANCE_ARCHIVE_URL": ("archive_url", _url("http", "https")),
    "SETTINGS_POLL_INTERVAL": ("poll_interval", _positive_duration),
    "STREAM_STALE_TIMEOUT": ("stale_timeout", _positive_duration),
    "STREAM_MAX_AGE": ("max_age", _positive_duration),
    "STREAM_SILENCE_TIMEOUT": ("silence_timeout", _positive_duration),
    "REST_WEIGHT_PER_MINUTE": ("rest_weight", _weight),
    "LOG_LEVEL": ("log_level", _level),
}


def load(environ: Mapping[str, str]) -> Config:
    """Build the Config from `environ`; unset or empty variables keep their defaults.

    Raises ConfigError naming the variable and its value if one cannot be used.
    """
    values = {}
    for name, (field, parse) in _FIELDS.items():
        raw = environ.get(name, "")
        if raw == "":
            continue
        try:
            values[field] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"invalid {name}={raw!r}: {exc}") from None
    return Config(**values)


def prepare_db_dir(config: Config) -> None:
    """Create the directory of DB_PATH; ConfigError naming it if it cannot be made or written."""
    directory = os.path.dirname(os.path.abspath(config.db_path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"invalid DB_PATH={config.db_path!r}: cannot create its directory "
            f"{exc.filename or directory}: {exc.strerror}"
        ) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(
            f"invalid DB_PATH={config.db_path!r}: directory {directory} is not writable"
        )
