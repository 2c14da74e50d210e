"""Where a recorder's CPU per tick goes, by library, and which system calls it makes per tick:
`perf` watching a running process (Linux's perf tool; not installed by the bench).

`probe(pid, seconds, folder)` runs `perf stat` (system-call tracepoints) and `perf record`
(CPU-clock samples) on the process for `seconds`, at once, and returns the counts and each
library's share of the samples; `per_tick` turns them into figures per stored tick. The
bench calls it after a recorder's measurement window, so perf's own cost stays out of the
CPU-per-tick figure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

SYSCALLS = ("pwrite64", "fcntl", "recvfrom", "epoll_wait", "epoll_ctl", "getpid", "sendto")
# Libraries grouped as the figures name them: the first pattern a library's name matches.
GROUPS = (
    ("python", r"libpython|^python3"),
    ("kernel", r"kernel"),
    ("sqlite", r"libsqlite3|_sqlite3"),
    ("tls", r"libssl|libcrypto|_ssl\."),
    ("libc", r"^libc\.|^ld-linux"),
    ("event loop", r"greenlet|gevent|corecext|_asyncio|uvloop|libev|libuv"),
    ("json", r"_json|yapic"),
)


def available() -> bool:
    return shutil.which("perf") is not None


def probe(pid: int, seconds: float, folder: Path) -> dict:
    """{"syscalls": {name: count}, "all_syscalls": count, "shares": {group: fraction}}.
    perf counts while its `sleep` runs, once it has attached: `seconds`, not the call's time."""
    stat_out, data = folder / "perf-stat.txt", folder / "perf.data"
    events = [f"syscalls:sys_enter_{name}" for name in SYSCALLS] + ["raw_syscalls:sys_enter"]
    pid_arg, sleep = ["-p", str(pid)], ["--", "sleep", f"{seconds:g}"]
    stat = subprocess.Popen(
        ["perf", "stat", "-x", ",", "-o", stat_out, "-e", ",".join(events), *pid_arg, *sleep],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    record = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-o", data]
    try:
        subprocess.run([*record, *pid_arg, *sleep], check=True, capture_output=True)
    finally:
        stat.wait()  # it ends with its own `sleep`: never left running
    counts = {}
    for line in stat_out.read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 2 and "sys_enter" in fields[2] and fields[0].isdigit():
            counts[fields[2].split(":")[-1].removeprefix("sys_enter_")] = int(fields[0])
    report = subprocess.run(
        ["perf", "report", "-i", data, "--sort", "dso", "--stdio", "-q"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    shares: dict[str, float] = {}
    for line in report.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(\S+)", line)
        if match:
            percent, library = float(match[1]), match[2].strip("[]")
            group = next((g for g, pattern in GROUPS if re.search(pattern, library)), "other")
            shares[group] = shares.get(group, 0.0) + percent / 100
    return {
        "syscalls": {name: counts.get(name, 0) for name in SYSCALLS},
        "all_syscalls": counts.get("sys_enter", 0),
        "shares": shares,
    }


def per_tick(found: dict, ticks: float, us_per_tick: float) -> dict:
    """System calls per tick (`probe`'s counts over the `ticks` stored while it watched: the
    paced load's rate times its seconds), and µs per tick of each library group: its share
    of the samples times the recorder's measured CPU per tick."""
    ticks = max(ticks, 1)
    return {
        "syscalls": {name: n / ticks for name, n in found["syscalls"].items()},
        "all_syscalls": found["all_syscalls"] / ticks,
        "us": {group: share * us_per_tick for group, share in found["shares"].items()},
    }
