"""Recorders on the realistic load in alternating rounds: a before/after, or a ratio to the
peers, that one sequential run cannot give on a machine whose speed drifts by 10-20 %.

    PYTHONPATH=. .venv/bin/python tests/bench/alternate.py [--window 60] [--rounds 2] [--plain]
        SUBJECT ...

SUBJECT is `store`, `naive`, `cryptofeed` or `lean`, or NAME=DIR[+PATCH...]: the store of the
source tree DIR (`git archive COMMIT | tar -x -C DIR`) with `variant.py`'s patches, as
`store@NAME`. Each is measured as part `realistic` measures it (`load.measure`: 100 symbols,
2,000 ticks/s, a fresh exchange and database), over TLS unless --plain; round 1 in the order
given, round 2 in reverse, and so on. Prints µs of CPU per stored tick of each round, the means,
and each mean over the first subject's; then the same of the bytes each sent to the disk.
With --where SECONDS, perf then watches each recorder for that long (`where.py`): system calls
and µs of CPU by library, per stored tick.
"""

import argparse
import sys
from pathlib import Path
from statistics import mean

import load
import peers
import where
from common import say


def parse(spec: str, tls: bool) -> tuple[str, dict]:
    """(subject, measure's keyword arguments) of one SUBJECT."""
    suffix = load.TLS if tls else ""
    name, _, tree = spec.partition("=")
    if not tree:
        if name not in load.RECORDERS:
            raise SystemExit(f"unknown recorder {name}; wanted one of {load.RECORDERS} or NAME=DIR")
        return name + suffix, {}
    folder, *patches = tree.split("+")
    if not (Path(folder) / "tickd" / "app.py").is_file():
        raise SystemExit(f"{spec}: {folder} holds no tickd/app.py")
    return f"store@{name}{suffix}", {"tree": Path(folder).resolve(), "patches": patches}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", type=float, default=60.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--plain", action="store_true", help="ws:// and http://, not TLS")
    parser.add_argument(
        "--where",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after each window, perf watches the recorder this long (where.py)",
    )
    parser.add_argument("subjects", nargs="+", metavar="SUBJECT")
    args = parser.parse_args()
    if args.where and not where.available():
        raise SystemExit("--where needs Linux's perf tool")
    subjects = dict(parse(spec, not args.plain) for spec in args.subjects)
    for name in ("naive", "cryptofeed"):
        if any(load.recorder(s) == name for s in subjects):
            peers.venv(name)
    results: dict[str, list[float]] = {s: [] for s in subjects}
    disk: dict[str, list[float]] = {s: [] for s in subjects}
    found: dict[str, list[dict]] = {s: [] for s in subjects}
    for round_ in range(args.rounds):
        order = list(subjects) if round_ % 2 == 0 else list(reversed(subjects))
        for subject in order:
            figures = load.measure(
                subject, args.window, where_seconds=args.where, **subjects[subject]
            )
            results[subject].append(figures["us_per_tick"])
            disk[subject].append(figures["disk_per_tick"] / 1e3)
            if "where" in figures:
                found[subject].append(figures["where"])
    for title, table in (
        ("µs of CPU per stored tick", results),
        ("kB sent to the disk per stored tick", disk),
    ):
        base = mean(next(iter(table.values())))
        print(f"\n{title}, each round; mean; mean over the first subject's")
        for subject, values in table.items():
            rounds = " / ".join(f"{v:.1f}" for v in values)
            print(f"  {subject:28} {rounds:28} {mean(values):7.1f}  {mean(values) / base:.2f} x")
    if args.where:
        report_where(found)
    say("alternate: done")
    return 0


def report_where(found: dict[str, list[dict]]) -> None:
    """Means over the rounds: system calls per tick, and µs per tick of each library group."""
    groups = sorted({g for runs in found.values() for run in runs for g in run["us"]})
    print("\nsystem calls per stored tick (perf stat, after each window; means of the rounds)")
    print(f"  {'':28} {'all':>6} " + " ".join(f"{n:>10}" for n in where.SYSCALLS))
    for subject, runs in found.items():
        cells = [mean(r["syscalls"][n] for r in runs) for n in where.SYSCALLS]
        row = f"{mean(r['all_syscalls'] for r in runs):6.2f} "
        print(f"  {subject:28} {row}" + " ".join(f"{c:10.2f}" for c in cells))
    print("\nµs of CPU per stored tick, by library (perf record's shares x the window's figure)")
    print(f"  {'':28} " + " ".join(f"{g:>10}" for g in groups))
    for subject, runs in found.items():
        cells = [mean(r["us"].get(g, 0.0) for r in runs) for g in groups]
        print(f"  {subject:28} " + " ".join(f"{c:10.1f}" for c in cells))


if __name__ == "__main__":
    sys.exit(main())
