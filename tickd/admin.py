"""`python -m tickd.admin`: symbol settings, online backups, CSV day exports and the history
import, from the shell."""

from __future__ import annotations

import argparse
import calendar
import contextlib
import csv
import datetime
import http.client
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple, TextIO
from urllib.error import HTTPError, URLError
from urllib.request import pathname2url, urlopen

from . import archive, config, database, history, symbols
from .limits import WeightLimiter
from .rest import Rest, tls_context
from .settings import read_rows
from .text import iso_time, name_column, quoted, symbol_line

BUSY_TIMEOUT = 5.0  # seconds a statement waits for the store's write lock
DAY_MS = 86_400_000
AT_NEXT_POLL = "the store applies it at its next settings poll"
PAUSED = "paused: ticks traded while paused are not recorded"
RESUMED = "from the next streamed trade; the paused time is not fetched"
EXCHANGE_INFO = "/fapi/v1/exchangeInfo"
LISTING_TIMEOUT = 5.0  # seconds the listing check waits (see listing)
LISTING_LIMIT = 8 << 20  # bytes of exchange information read at most (about 1 MiB in 2026)


class Run(NamedTuple):
    """What every command is given besides its arguments."""

    conn: sqlite3.Connection  # the store's database, opened read-write
    cfg: config.Config
    out: TextIO
    err: TextIO


class Failure(Exception):
    """A command that cannot be done: a one-line message for stderr and the exit status."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one command; the exit status: 0 done, 1 failed, 2 bad arguments."""
    environ = os.environ if environ is None else environ
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage or the help
        return exc.code
    try:
        cfg = config.load(environ)
        with contextlib.closing(connect(cfg.db_path)) as conn:
            args.run(Run(conn, cfg, stdout, stderr), args)
    except config.ConfigError as exc:
        print(exc, file=stderr)
        return 2
    except Failure as exc:
        print(exc, file=stderr)
        return exc.status
    except sqlite3.Error as exc:
        print(f"database error: {exc}", file=stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tickd.admin",
        description="Manage the store's symbols, back up its database, export ticks, "
        "import history. "
        "The database is DB_PATH (default ./.data/ticks.db); it must exist. "
        "`add` checks that Binance (BINANCE_REST_URL) lists the symbol.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("symbols", help="list symbol_settings").set_defaults(run=list_symbols)
    for name, run, text in (
        ("add", add, "add a symbol, or enable it again"),
        ("enable", set_enabled, "resume recording a symbol, from its next streamed trade"),
        ("disable", set_enabled, "pause recording a symbol (nothing is recorded while paused)"),
        (
            "remove",
            remove,
            "stop recording a symbol (its table and ticks stay); a refused name is "
            "matched exactly as stored",
        ),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("symbol", metavar="SYMBOL")
        command.set_defaults(run=run)
    command = commands.add_parser("backup", help="a consistent copy, while the store runs")
    command.add_argument("out", metavar="OUT", nargs="?", help="default: backup-<UTC time>.db")
    command.set_defaults(run=backup)
    command = commands.add_parser("export", help="one UTC day of ticks as CSV")
    command.add_argument("symbol", metavar="SYMBOL")
    command.add_argument("day", metavar="DAY", help="YYYY-MM-DD, in UTC")
    command.add_argument("out", metavar="OUT", nargs="?", help="default: standard output")
    command.set_defaults(run=export)
    command = commands.add_parser(
        "import",
        help="fill a symbol's table with every trade from a UTC day on: Binance's public "
        "archive (BINANCE_ARCHIVE_URL), then REST; resumable",
    )
    command.add_argument("symbol", metavar="SYMBOL")
    command.add_argument("first", metavar="FROM", help="YYYY-MM-DD, the first UTC day")
    command.add_argument(
        "last",
        metavar="TO",
        nargs="?",
        help="YYYY-MM-DD, the last UTC day, included (default: up to the ticks the store "
        "has streamed, or REST's latest trade)",
    )
    command.add_argument(
        "--recheck",
        action="store_true",
        help="fetch the CHECKSUM of each file stored earlier again: a file Binance has "
        "replaced since is downloaded again and its rows replace the stored ones",
    )
    command.set_defaults(run=import_history)
    return parser


def connect(path: str) -> sqlite3.Connection:
    """The store's database, opened read-write; Failure if the file is missing (an
    ordinary connect would create an empty database)."""
    uri = "file:" + pathname2url(os.path.abspath(path)) + "?mode=rw"
    try:
        return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None)
    except sqlite3.OperationalError as exc:
        if not os.path.exists(path):
            raise Failure(
                f"no database at {path} (from DB_PATH, default {config.Config().db_path}): "
                "start the store once, or set DB_PATH to the store's database"
            ) from None
        raise Failure(f"cannot open database {path}: {exc}") from None


# -- symbol_settings ---------------------------------------------------------------------


def list_symbols(run: Run, args: argparse.Namespace) -> None:
    rows = _settings(run.conn)
    if not rows:
        print("no symbols", file=run.out)
        return
    lines = [describe(raw, enabled) for raw, enabled in rows]
    column = name_column(name for name, _, _ in lines)
    print(symbol_line("SYMBOL", "STATE", "", column), file=run.out)
    for (name, state, note), (raw, _) in zip(lines, rows, strict=True):
        held = holdings(run.conn, raw)
        detail = "  ".join(part for part in (note, held) if part)
        print(symbol_line(name, state, detail, column), file=run.out)


def holdings(conn: sqlite3.Connection, raw: object) -> str:
    """What the table of the symbol `raw` holds, by id: since when every id is stored, up to
    the newest tick, and where the older ticks stop. Empty if there is no table or no tick."""
    try:
        symbol = symbols.normalise(raw)
    except symbols.InvalidSymbol:
        return ""
    if not database.has_table(conn, "prices_" + symbol):
        return ""
    run = database.continuous_run(conn, symbol)
    if run is None:
        return ""
    first, since, last = run
    text = f"complete since {iso_time(since)} (ids {first}-{last})"
    older = database.id_below(conn, symbol, first)
    if older is not None:
        text += f"; older ticks up to id {older}, ids {older + 1}-{first - 1} missing"
    return text


def describe(raw: object, enabled: object) -> tuple[str, str, str]:
    """(name, on/off, note) of one symbol_settings row, read as the store reads it."""
    wanted = read_rows([(raw, enabled)])
    if wanted.invalid:
        return quoted(wanted.invalid[0]), "off", "(invalid symbol, ignored)"
    ((symbol, on),) = wanted.symbols.items()
    state = "on" if on else "off"
    if symbol == raw:
        return symbol, state, ""
    return quoted(raw), state, f"(recorded as {symbol})"


def add(run: Run, args: argparse.Namespace) -> None:
    symbol = _symbol(args.symbol)
    with database.transaction(run.conn):
        listed = database.add_symbol(run.conn, symbol)
    done = "was listed, now enabled" if listed else "added, enabled"
    print(f"{symbol} {done}; {AT_NEXT_POLL}", file=run.out)
    url = run.cfg.rest_url + EXCHANGE_INFO
    try:
        status = listing(url).get(symbol)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        print(
            f"could not check whether Binance lists {symbol}: {url}: {_reason(exc)}", file=run.err
        )
        return
    warning = listing_warning(symbol, status)
    if warning:
        print(warning, file=run.err)


def set_enabled(run: Run, args: argparse.Namespace) -> None:
    symbol, on = _symbol(args.symbol), args.command == "enable"
    with database.transaction(run.conn):
        database.set_enabled(run.conn, _listed(run.conn, symbol), on)
    done = f"enabled ({RESUMED})" if on else f"disabled ({PAUSED})"
    print(f"{symbol} {done}; {AT_NEXT_POLL}", file=run.out)


def remove(run: Run, args: argparse.Namespace) -> None:
    try:
        symbol = symbols.normalise(args.symbol)
    except symbols.InvalidSymbol as exc:
        # A name the store refuses may still be in the table, inserted with SQL: the row
        # whose text is exactly the argument goes (matched with ?, never pasted).
        with database.transaction(run.conn):
            if args.symbol not in [raw for raw, _ in _settings(run.conn)]:
                raise Failure(
                    f"invalid symbol {args.symbol!r}: {exc}; "
                    "and no symbol_settings row has exactly this text",
                    2,
                ) from None
            database.remove_symbols(run.conn, [args.symbol])
        print(
            f"{quoted(args.symbol)} removed from symbol_settings "
            "(an invalid name: the store never recorded it)",
            file=run.out,
        )
        return
    with database.transaction(run.conn):
        database.remove_symbols(run.conn, _listed(run.conn, symbol))
    print(
        f"{symbol} removed from symbol_settings; {AT_NEXT_POLL}. "
        f"Its table prices_{symbol} and its ticks stay.",
        file=run.out,
    )


def _symbol(raw: str) -> str:
    try:
        return symbols.normalise(raw)
    except symbols.InvalidSymbol as exc:
        raise Failure(f"invalid symbol {raw!r}: {exc}", 2) from None


def _settings(conn: sqlite3.Connection) -> list[tuple[object, object]]:
    if not database.has_table(conn, "symbol_settings"):
        return []
    return database.read_settings(conn)


def _listed(conn: sqlite3.Connection, symbol: str) -> list[object]:
    """The names as stored of every row the store reads as `symbol` (` btcusdt ` is BTCUSDT,
    and the store records while any of them is enabled); Failure if there is none."""
    names = []
    for raw, _ in _settings(conn):
        with contextlib.suppress(symbols.InvalidSymbol):
            if symbols.normalise(raw) == symbol:
                names.append(raw)
    if not names:
        raise Failure(f"{symbol} is not in symbol_settings")
    return names


# -- Binance's listing -------------------------------------------------------------------


def listing(
    url: str, timeout: float = LISTING_TIMEOUT, limit: int = LISTING_LIMIT
) -> dict[str, str]:
    """Binance's exchange information at `url` (`.../fapi/v1/exchangeInfo`): every listed
    symbol and its status (`TRADING`, `SETTLING`, ...).

    Blocks: each socket wait (connect, each read) is limited to `timeout` seconds, and the
    body must be read within `timeout` seconds in all (checked between reads, so one stalled
    read can overrun it by up to one more `timeout`). Raises OSError if it cannot be fetched
    in time (HTTPError for an error status), http.client.HTTPException for a broken answer,
    ValueError if the body is larger than `limit` bytes or not the expected JSON."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http or https URL: {url}")
    deadline = time.monotonic() + timeout
    with urlopen(url, timeout=timeout) as response:  # noqa: S310 (http or https only)
        body = bytearray()
        while chunk := response.read(min(1 << 16, limit + 1 - len(body))):
            body += chunk
            if len(body) > limit:
                raise ValueError(f"the answer is larger than {limit} bytes")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the answer took longer than {timeout:g} s")
    return parse_listing(bytes(body))


def parse_listing(body: bytes) -> dict[str, str]:
    """symbol -> status from exchangeInfo's JSON, `{"symbols": [{"symbol": "BTCUSDT",
    "status": "TRADING", ...}, ...]}`; ValueError if the body is not that."""
    try:
        listed = {entry["symbol"]: entry["status"] for entry in json.loads(body)["symbols"]}
    except (KeyError, TypeError, RecursionError):  # RecursionError: absurdly nested JSON
        listed = None
    if not listed or not all(isinstance(text, str) for pair in listed.items() for text in pair):
        raise ValueError("not exchange information (symbols with their status)")
    return listed


def listing_warning(symbol: str, status: str | None) -> str | None:
    """What to tell the user who added `symbol` when Binance lists it with `status` (None:
    not listed); None if it trades."""
    if status == "TRADING":
        return None
    if status is None:
        listed = f"does not list {symbol} (a typo?)"
    else:
        listed = f"lists {symbol} as {status}, not TRADING"
    return (
        f"warning: Binance USD-M futures {listed}. The store will try it anyway, and records "
        f"nothing while it does not trade. To remove it: make symbol-remove SYMBOL={symbol}"
    )


def _reason(exc: Exception) -> str:
    """The short cause of a failed listing check, for one line."""
    if isinstance(exc, HTTPError):
        return f"HTTP {exc.code}"
    cause = exc.reason if isinstance(exc, URLError) else exc  # reason: an exception or text
    return symbols.display(str(cause) or type(cause).__name__, 200)


# -- backup ------------------------------------------------------------------------------


def backup(run: Run, args: argparse.Namespace) -> None:
    target = args.out or os.path.join(
        os.path.dirname(os.path.abspath(run.cfg.db_path)),
        time.strftime("backup-%Y%m%d-%H%M%S.db", time.gmtime()),
    )
    with _new_file(target, "wb"):
        pass
    try:
        verdict = database.backup(run.conn, target)
    except BaseException:
        os.remove(target)
        raise
    if verdict != ["ok"]:
        raise Failure(f"integrity check of the copy {target} failed (file kept): {verdict[0]}")
    print(f"backup {target} ({os.path.getsize(target)} bytes), integrity ok", file=run.out)


# -- export ------------------------------------------------------------------------------


def export(run: Run, args: argparse.Namespace) -> None:
    symbol = _symbol(args.symbol)
    try:
        start = day_start_ms(args.day)
    except ValueError:
        raise Failure(f"invalid DAY {args.day!r}: use YYYY-MM-DD (a UTC day)", 2) from None
    if not database.has_table(run.conn, "prices_" + symbol):
        raise Failure(f"no table prices_{symbol}: {symbol} has never been recorded")
    rows = run.conn.execute(database.day_query(symbol), (start, start + DAY_MS))
    if args.out is None:
        write_csv(rows, run.out)
        return
    with _new_file(args.out, "w", newline="", encoding="utf-8") as file:
        count = write_csv(rows, file)
    print(f"{count} ticks of {symbol} on {args.day} (UTC) written to {args.out}", file=run.out)


def day_start_ms(day: str) -> int:
    """Milliseconds since the epoch at 00:00 UTC of `day`, written YYYY-MM-DD; ValueError
    for anything else."""
    date = datetime.date.fromisoformat(day)
    if date.isoformat() != day:
        raise ValueError(f"not YYYY-MM-DD: {day!r}")
    return calendar.timegm(date.timetuple()) * 1000


def write_csv(rows: Iterable[tuple[int, int, float]], out: TextIO) -> int:
    """`id,timestamp,price,time` lines, one per tick: the price as repr(float), which reads
    back to the same float, and the time in ISO 8601 UTC. Returns the number of ticks."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("id", "timestamp", "price", "time"))
    count = 0
    for trade_id, ms, price in rows:
        writer.writerow((trade_id, ms, repr(price), iso_time(ms)))
        count += 1
    return count


@contextlib.contextmanager
def _new_file(path: str, mode: str, **options) -> Iterator:
    """`path` opened for writing, created now (never an existing file); removed again if
    the block fails."""
    try:
        file = open(path, mode.replace("w", "x"), **options)  # noqa: SIM115 (closed below)
    except FileExistsError:
        raise Failure(f"{path} exists; choose another OUT") from None
    except OSError as exc:
        raise Failure(f"cannot create {path}: {exc.strerror}") from None
    try:
        with file:
            yield file
    except BaseException:
        os.remove(path)
        raise


# -- history import ----------------------------------------------------------------------


def import_history(run: Run, args: argparse.Namespace) -> None:
    symbol = _symbol(args.symbol)
    today = datetime.datetime.now(datetime.UTC).date()
    first = _day("FROM", args.first, today)
    last = None if args.last is None else _day("TO", args.last, today)
    if last is not None and first > last:
        raise Failure(f"FROM {first} is after TO {last}", 2)
    # WAL without an fsync per commit, as the store writes: a crash loses nothing the
    # rerun does not fetch again.
    run.conn.execute("PRAGMA synchronous = NORMAL")
    # Not gevent-patched: the limiter's waits must block this process, not a hub.
    weight = WeightLimiter(run.cfg.rest_weight, sleep=time.sleep)
    rest = Rest(run.cfg.rest_url, weight, concurrency=1, ssl_context=tls_context())
    progress = history.Progress(run.err, symbol, 0)
    importer = history.Importer(
        run.conn,
        symbol,
        first,
        last,
        db_path=run.cfg.db_path,
        archive_url=run.cfg.archive_url,
        rest=rest,
        progress=progress,
        recheck=args.recheck,
    )
    try:
        report = importer.run()
    except KeyboardInterrupt:
        progress.close()
        raise Failure(
            "interrupted; everything stored stays: run the same command again to go on", 130
        ) from None
    if not report.complete:
        raise Failure(report.failure())
    print(report.summary(), file=run.out)


def _day(name: str, text: str, today: datetime.date) -> datetime.date:
    try:
        day = archive.parse_day(text)
    except ValueError:
        raise Failure(f"invalid {name} {text!r}: use YYYY-MM-DD (a UTC day)", 2) from None
    if day > today:
        raise Failure(f"{name} {day} is in the future (today is {today}, UTC)", 2)
    return day


if __name__ == "__main__":
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `export ... | head` stopped reading: no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 1
    sys.exit(status)
