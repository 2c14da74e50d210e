"""What held the store's event loop: a summary of the files BENCH_TURNS makes (see variant.py).

    BENCH_TURNS=/tmp/turns PYTHONPATH=. .venv/bin/python tests/bench/market.py --quick
    PYTHONPATH=. .venv/bin/python tests/bench/turns.py [--since HH:MM:SS] /tmp/turns.*.json

For each file (one store process): the turns of the loop over 10 ms (how many, p50, p90, p99,
max), how many were over 50 ms and how many of those overlapped the 0.3 s after a checkpoint's
end (the store's commits wait while the checkpoint runs, and catch up at once after it), the
checkpoints' durations (and how long each held the file: without the WAL's sync before
it, where the tree has that), and the status page's own time (collect and render, without the wait
for its turn). A turn is measured from the start of one to the start of the next, so a turn in
which the loop slept waiting for something to happen counts too: --since (UTC) leaves out the
start, where 600 symbols connect and the loop mostly sleeps.
"""

import argparse
import calendar
import json
import time

from common import percentile


def spread(seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    if not ms:
        return "none"
    return (
        f"{len(ms)}: p50 {percentile(ms, 0.5):.0f}, p90 {percentile(ms, 0.9):.0f}, "
        f"p99 {percentile(ms, 0.99):.0f}, max {ms[-1]:.0f} ms"
    )


def summary(figures: dict, since: float) -> list[str]:
    turns = [(end, s) for end, s in figures["turns"] if end >= since]
    checkpoints = [end for end, *_ in figures["checkpoints"]]
    # (end, took) from older trees; (end, took, held) once the WAL's sync came first.
    held = [c[2] for c in figures["checkpoints"] if len(c) > 2 and c[0] >= since]
    long = [(end, s) for end, s in turns if s > 0.05]
    # A turn runs from end - s to end.
    after = sum(1 for end, s in long if any(end >= c > end - s - 0.3 for c in checkpoints))
    return [
        f"turns over 10 ms     {spread([s for _, s in turns])}",
        f"turns over 50 ms     {len(long)}, {after} in the 0.3 s after a checkpoint's end",
        f"checkpoints          {spread([c[1] for c in figures['checkpoints'] if c[0] >= since])}",
        f"  holding the file   {spread(held)}",
        f"/status, own time    {spread([s for end, s in figures['pages'] if end >= since])}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--since", help="UTC HH:MM:SS today: leave out what ended before")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    for path in args.files:
        with open(path) as f:
            figures = json.load(f)
        since = 0.0
        if args.since:
            day = time.strftime("%Y-%m-%d", time.gmtime())
            since = calendar.timegm(time.strptime(f"{day} {args.since}", "%Y-%m-%d %H:%M:%S"))
        elif figures["pages"]:
            since = figures["pages"][0][0]  # the first page: every symbol was connected
        print(path)
        for line in summary(figures, since):
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
