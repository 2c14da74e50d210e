"""The figures of docs/BENCHMARKS.md, in one run.

    make bench                                   # everything (about 2 hours)
    PYTHONPATH=. .venv/bin/python tests/bench/run.py [--quick] [PART ...]

PART is any of: limit, ingest, realistic, idle, hub, status, disk, repair, import, market,
sequence, checkpoint, profile
(default: all of them, in that order; `idle` runs in the background beside the others, since
it mostly waits for the store's connection-attempt limit). --quick shortens every part to a
smoke run of a few minutes: 1-minute load windows, 300 idle symbols, 2 M rows instead of 20 M, no
lock measurement, no variants of the profile.

--also-tree DIR=NAME (repeatable) adds to `realistic` the store of another source tree, as the
subject `store@NAME` measured right after `store` on the same load, for a before/after in one
run: `git -C . archive 66271f8 | tar -x -C /tmp/bench-before`, then
`run.py realistic --also-tree /tmp/bench-before=before`.

The store (`python -m tickd`), the exchange (`exchange.py`) and the peers run as child
processes; each part stops every process it started and removes its temporary folder, also
when it fails. Peers and py-spy are installed into their own virtualenvs under /tmp, never into
.venv (`peers.py`). Every figure is printed as it is measured, then all again at the end.
"""

import argparse
import resource
import sqlite3
import sys
import threading
import time
import traceback

import backfill
import checkpoint
import common
import hotspots
import idle
import importer
import ingest
import limit
import load
import market
import scale
import sequence

PARTS = (
    "limit",
    "ingest",
    "realistic",
    "idle",
    "hub",
    "status",
    "disk",
    "repair",
    "import",
    "market",
    "sequence",
    "checkpoint",
    "profile",
)


def call(part: str, quick: bool, results: dict, parts=(), trees=None) -> None:
    """Run one part; a failure is printed and recorded as None, and the next part still runs."""
    jobs = {
        "limit": lambda: limit.run(quick),
        "ingest": lambda: ingest.run(quick),
        "realistic": lambda: load.run(quick, profile="profile" in parts, trees=trees),
        "idle": lambda: idle.run(quick),
        "hub": lambda: load.hub(quick),
        "status+disk": lambda: scale.run(quick, "status" in parts, "disk" in parts),
        "repair": lambda: backfill.run(quick),
        "import": lambda: importer.run(quick),
        "market": lambda: market.run(quick, peers=True),
        "sequence": lambda: sequence.run(quick),
        "checkpoint": lambda: checkpoint.run(quick),
        "profile": lambda: hotspots.run(quick),
    }
    start = time.monotonic()
    try:
        results[part] = jobs[part]()
    except Exception:
        common.say(f"{part}: FAILED")
        traceback.print_exc()
        results[part] = None
    common.say(f"{part}: done in {time.monotonic() - start:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    common.add_also_tree(parser, "realistic: ")
    parser.add_argument("parts", nargs="*", metavar="PART", help=", ".join(PARTS))
    args = parser.parse_args()
    trees = common.also_trees(parser, args.also_tree)
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown {', '.join(sorted(unknown))}; parts are {', '.join(PARTS)}")
    parts = [p for p in PARTS if p in args.parts] or list(PARTS)
    if trees and "realistic" not in parts:
        parser.error("--also-tree applies to the part realistic only")
    # 1,000 idle connections, in the store and in the exchange, need more than 1,024 files.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    common.say(
        f"tickd bench {'(quick) ' if args.quick else ''}{' '.join(parts)}: "
        f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, "
        f"{common.os.cpu_count()} cores"
    )
    common.say(f"tickd under test: {common.tree_state()}")
    started = time.monotonic()
    results: dict = {}
    background = None
    if "idle" in parts and len(parts) > 1:
        # Idle connections cost next to no CPU; the wait for the attempt limit is the time.
        background = threading.Thread(target=call, args=("idle", args.quick, results))
        background.start()
    for part in parts:
        if part == "disk" and "status" in parts:
            continue  # done with status, on the same generated file
        name = "status+disk" if part in ("status", "disk") else part
        if name != "idle" or background is None:
            call(name, args.quick, results, parts, trees)
    if background is not None:
        background.join()
    common.say(f"all done in {(time.monotonic() - started) / 60:.1f} min")
    common.say(f"tickd under test at the end: {common.tree_state()}")
    print("\nFigures:")
    for entry in common.FIGURES:
        print(common.line(entry))
    return 1 if any(v is None for v in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
