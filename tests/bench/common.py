"""What every part of `make bench` shares: child processes, /proc readings, figures, SQL counts.

Every process a part starts goes through `Child` (or one of its subclasses), which a part opens
in a `with` block: leaving it, normally or by an exception, terminates the process (SIGTERM,
then SIGKILL after 15 s). Temporary folders come from `workdir()`, removed the same way.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tickd.database import INDEX_DDL, PRICES_DDL, quote

ROOT = Path(__file__).resolve().parent.parent.parent
BENCH = ROOT / "tests" / "bench"
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
DATE = "2026-11-30"


def symbol_names(count: int) -> list[str]:
    """The bench's symbols: S0000USDT, S0001USDT, ... (the exchange launcher uses the same)."""
    return [f"S{i:04d}USDT" for i in range(count)]


# -- figures ------------------------------------------------------------------------------

FIGURES: list[dict] = []


def figure(name: str, value, unit: str = "", note: str = "") -> None:
    """Record a figure and print it as one `name value unit  (note)` line."""
    entry = {"name": name, "value": value, "unit": unit, "note": note}
    FIGURES.append(entry)
    print(line(entry), flush=True)


def line(entry: dict) -> str:
    """One figure as `  name  value unit  (note)`."""
    value = entry["value"]
    if isinstance(value, float):
        value = f"{value:,.2f}"
    elif isinstance(value, int):
        value = f"{value:,}"
    text = f"  {entry['name']:<52} {value} {entry['unit']}".rstrip()
    return text + (f"  ({entry['note']})" if entry["note"] else "")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def percentile(values, fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank); nan if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary_ms(seconds) -> str:
    """`p50 1.2 ms, p99 3.4 ms, max 5.6 ms (n)` of durations in seconds."""
    ms = [s * 1000 for s in seconds]
    return (
        f"p50 {statistics.median(ms):.2f} ms, p99 {percentile(ms, 0.99):.2f} ms, "
        f"max {max(ms):.2f} ms ({len(ms)} requests)"
    )


def tree_state(root: Path = ROOT) -> str:
    """The commit, and a digest of tickd/*.py as they are on disk (others may be editing).
    A tree that is not a git checkout (a `git archive`) has no commit: only the digest."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", root, *args], check=False, capture_output=True, text=True
        ).stdout

    commit, changed = "", []
    if git("rev-parse", "--show-toplevel").strip() == str(root):
        commit = git("rev-parse", "--short", "HEAD").strip()
        changed = git("status", "--short", "--", "tickd").split()[1::2]
    digest = hashlib.sha256()
    for path in sorted((root / "tickd").glob("*.py")):
        digest.update(path.read_bytes())
    dirty = f", uncommitted: {' '.join(changed)}" if changed else ""
    where = f"commit {commit}{dirty}" if commit else f"{root} (no git)"
    return f"{where}; tickd/*.py sha256 {digest.hexdigest()[:12]}"


# -- temporary folders and processes --------------------------------------------------------


def add_also_tree(parser, what: str = "") -> None:
    """--also-tree DIR=NAME (repeatable): the store of another source tree, as store@NAME."""
    parser.add_argument(
        "--also-tree",
        action="append",
        default=[],
        metavar="DIR=NAME",
        help=f"{what}also the store of the source tree DIR, as store@NAME",
    )


def also_trees(parser, specs) -> dict[str, Path]:
    """{NAME: DIR} of the --also-tree arguments; a DIR without tickd/app.py is an error."""
    trees = {}
    for spec in specs:
        folder, _, name = spec.rpartition("=")
        if not (folder and name and (Path(folder) / "tickd" / "app.py").is_file()):
            parser.error(f"--also-tree {spec}: wanted DIR=NAME, DIR holding tickd/app.py")
        trees[name] = Path(folder).resolve()
    return trees


@contextlib.contextmanager
def workdir(prefix: str):
    path = Path(tempfile.mkdtemp(prefix=f"tickd-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, every thread included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def steal_ticks() -> tuple[int, int]:
    """(stolen, all) clock ticks of this machine's CPUs since boot, from /proc/stat: time the
    hypervisor gave to other machines while ours wanted to run. A window with more of it
    stretches every latency without adding to any process's CPU time."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[7], sum(fields[:8])


def disk_bytes(pid: int) -> int:
    """Bytes a process (every thread) sent to storage so far: /proc's write_bytes, counted as
    pages are dirtied (a page rewritten before it reached the disk counts once)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise ValueError(f"/proc/{pid}/io has no write_bytes")


def rss_mb(pid: int) -> float:
    """Resident set size in MB (10^6 bytes)."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * PAGE / 1e6


def threads(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[17])


class Child:
    """A child process whose output goes to a log file; `with` terminates it."""

    def __init__(self, argv, log_path: Path, *, env=None, cwd=ROOT):
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the bench reaches only the bench
            )
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self, phrase: str) -> list[str]:
        return [line for line in self.log().splitlines() if phrase in line]

    def wait_for_line(self, pattern: str, timeout: float = 30.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log())
            if match:
                return match
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[:3]} exited: {self.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {pattern!r} in {self.log_path}: {self.log()[-2000:]}")
            time.sleep(0.05)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> float:
        return rss_mb(self.pid)

    def disk(self) -> int:
        return disk_bytes(self.pid)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`; the exit status."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


class Store(Child):
    """The store (`variant.py`: `python -m tickd`, with patches if any) on a file in `folder`;
    with `tree`, the tickd of that source tree (another commit, `git archive`d) instead of
    the repository's."""

    def __init__(
        self, folder: Path, env: dict, *, name="store", patches=(), db_path=None, tree=None
    ):
        self.db_path = Path(db_path or folder / "ticks.db")
        self.tree = Path(tree or ROOT).resolve()
        # variant.py with no patch is `python -m tickd` (monkey.patch_all, then
        # tickd.app.run(os.environ)) under a command line that does not say "tickd", so that
        # another program's `pkill -f "python -m tickd"` on this shared machine spares it.
        argv = [PYTHON, BENCH / "variant.py", *patches]
        base = {
            "DB_PATH": str(self.db_path),
            "HTTP_PORT": "0",
            "SETTINGS_POLL_INTERVAL": "1s",
            "PYTHONPATH": str(self.tree),
        }
        super().__init__(argv, folder / f"{name}.log", env={**base, **env})
        self.port: int | None = None

    def start(self):
        super().start()
        self.port = int(self.wait_for_line(r"http listening port=(\d+)")[1])
        found = Path(self.wait_for_line(r"variant: tickd from (\S+)")[1])
        if found != self.tree / "tickd":
            raise RuntimeError(f"the store imported {found}, not {self.tree / 'tickd'}")
        return self

    def url(self, path: str = "/status") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def enable(self, symbols, enabled: int = 1) -> None:
        """Insert symbol_settings rows; the store picks them up at its next poll (1 s)."""
        conn = sqlite3.connect(self.db_path, timeout=10, isolation_level=None)
        try:
            conn.executemany(
                "INSERT INTO symbol_settings (symbol, enabled) VALUES (?, ?)",
                [(s, enabled) for s in symbols],
            )
        finally:
            conn.close()


class Exchange(Child):
    """The fake exchange launcher (`exchange.py`) in its own process, driven over HTTP.

    With `tls`, over TLS only (`wss://`, `https://`, the control API too): the exchange makes a
    CA at start and writes its certificate to `ca_file`, in `folder`, which clients trust
    through `trust_env()` (verification stays on everywhere)."""

    # Class defaults, for a subclass that calls Child.__init__ itself: a plain exchange.
    ca_file: Path | None = None
    _context: ssl.SSLContext | None = None

    def __init__(
        self,
        folder: Path,
        count: int,
        *,
        name="exchange",
        weight_limit=2400,
        symbols=(),
        tls=False,
    ):
        argv = [PYTHON, BENCH / "exchange.py", "--count", count, "--weight-limit", weight_limit]
        if symbols:
            argv += ["--symbols", ",".join(symbols)]
        self.ca_file = Path(folder) / f"{name}-ca.pem" if tls else None
        if self.ca_file:
            argv += ["--tls", "--ca-file", self.ca_file]
        super().__init__(argv, folder / f"{name}.log")
        self.port: int | None = None

    def start(self):
        super().start()
        self.port = int(self.wait_for_line(r"listening port=(\d+)")[1])
        if self.ca_file:
            self._context = ssl.create_default_context(cafile=self.ca_file)
        return self

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.ca_file else 'ws'}://127.0.0.1:{self.port}/market/ws"

    @property
    def rest_url(self) -> str:
        return f"{'https' if self.ca_file else 'http'}://127.0.0.1:{self.port}"

    def trust_env(self, ca_file: Path | None = None) -> dict[str, str]:
        """The environment by which a client trusts `ca_file` (default: this exchange's CA),
        and only it: SSL_CERT_FILE (OpenSSL's default CA file, which Python's
        `ssl.create_default_context()` loads: the store, websockets, websocket-client, aiohttp)
        and REQUESTS_CA_BUNDLE (requests, which cryptofeed calls REST with, would take
        certifi's bundle otherwise). Empty for a plain exchange."""
        ca_file = ca_file or self.ca_file
        if not ca_file:
            return {}
        return {"SSL_CERT_FILE": str(ca_file), "REQUESTS_CA_BUNDLE": str(ca_file)}

    def call(self, action: str, **params):
        query = "&".join(f"{k}={v}" for k, v in params.items())
        url = f"{self.rest_url}/bench/{action}" + (f"?{query}" if query else "")
        with urllib.request.urlopen(url, timeout=60, context=self._context) as response:
            return json.loads(response.read())

    def wait_subscribed(self, count: int, timeout: float, client: Child | None = None) -> float:
        """Wait until `count` symbols have an open stream; the seconds it took. Raises if
        `client` (the recorder) exits meanwhile."""
        start = time.monotonic()
        while self.call("state")["subscribed"] < count:
            if client is not None and client.proc.poll() is not None:
                raise RuntimeError(f"{client.argv[:3]} exited: {client.log()[-2000:]}")
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{self.call('state')} after {timeout} s, wanted {count}")
            time.sleep(0.2)
        return time.monotonic() - start


def get_seconds(url: str, timeout: float = 30.0) -> float:
    """Seconds until `url` answered with a whole body."""
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        response.read()
    return time.perf_counter() - start


# -- SQL ---------------------------------------------------------------------------------------


def create_prices(conn: sqlite3.Connection, symbol: str, autoincrement: bool = True) -> str:
    """Create `symbol`'s table and index with the store's own DDL strings; the quoted table."""
    table = quote("prices_" + symbol)
    ddl = PRICES_DDL.format(table=table)
    if not autoincrement:
        ddl = ddl.replace(" AUTOINCREMENT", "")
    conn.execute(ddl)
    conn.execute(INDEX_DDL.format(index=quote(f"idx_prices_{symbol}_timestamp"), table=table))
    return table


# -- SQL counts ------------------------------------------------------------------------------


def table_stats(db_path: Path, symbols) -> dict[str, tuple[int, int, int]]:
    """{symbol: (count, min id, max id)} from another connection; (0, None, None) if none."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        out = {}
        for symbol in symbols:
            try:
                out[symbol] = conn.execute(
                    f'SELECT COUNT(*), MIN(id), MAX(id) FROM "prices_{symbol}"'
                ).fetchone()
            except sqlite3.OperationalError:
                out[symbol] = (0, None, None)
        return out
    finally:
        conn.close()


def stored(db_path: Path, symbols) -> int:
    return sum(count for count, _, _ in table_stats(db_path, symbols).values())


def completeness(db_path: Path, symbols, generated: dict) -> tuple[int, int, int]:
    """(ids generated, ids stored, symbols whose count, min or max differ) against the
    exchange's `counts` answer {symbol: [first id, last id, count]}."""
    have = table_stats(db_path, symbols)
    made = stored_total = wrong = 0
    for symbol in symbols:
        first, last, count = generated[symbol]
        got = have[symbol]
        made += count
        stored_total += got[0]
        if count and tuple(got) != (count, first, last):
            wrong += 1
    return made, stored_total, wrong


def sample_while(seconds: float, every: float, sample) -> list:
    """Call `sample()` every `every` seconds for `seconds`; the list of what it returned."""
    out, end = [], time.monotonic() + seconds
    next_at = time.monotonic()
    while True:
        out.append(sample())
        next_at += every
        if next_at > end:
            break
        time.sleep(max(0.0, next_at - time.monotonic()))
    time.sleep(max(0.0, end - time.monotonic()))
    return out


def file_size(path: Path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
