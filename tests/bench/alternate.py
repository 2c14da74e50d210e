"""Recorders on the realistic load in alternating rounds: a before/after, or a ratio to the
peers, that one sequential run cannot give on a machine whose speed drifts by 10-20 %.

    PYTHONPATH=. .venv/bin/python tests/bench/alternate.py [--window 60] [--rounds 2] [--plain]
        SUBJECT ...

SUBJECT is `store`, `naive`, `cryptofeed` or `lean`, or NAME=DIR[+PATCH...]: the store of the
source tree DIR (`git archive COMMIT | tar -x -C DIR`) with `variant.py`'s patches, as
`store@NAME`. Each is measured as part `realistic` measures it (`load.measure`: 100 symbols,
2,000 ticks/s, a fresh exchange and database), over TLS unless --plain; round 1 in the order
given, round 2 in reverse, and so on. Prints µs of CPU per stored tick of each round, the means,
and each mean over the first subject's.
"""

import argparse
import sys
from pathlib import Path

import load
import peers
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
    parser.add_argument("subjects", nargs="+", metavar="SUBJECT")
    args = parser.parse_args()
    subjects = dict(parse(spec, not args.plain) for spec in args.subjects)
    for name in ("naive", "cryptofeed"):
        if any(load.recorder(s) == name for s in subjects):
            peers.venv(name)
    results: dict[str, list[float]] = {s: [] for s in subjects}
    for round_ in range(args.rounds):
        order = list(subjects) if round_ % 2 == 0 else list(reversed(subjects))
        for subject in order:
            figures = load.measure(subject, args.window, **subjects[subject])
            results[subject].append(figures["us_per_tick"])
    first = next(iter(results))
    base = sum(results[first]) / len(results[first])
    print("\nµs of CPU per stored tick, each round; mean; mean over the first subject's")
    for subject, values in results.items():
        mean = sum(values) / len(values)
        rounds = " / ".join(f"{v:.1f}" for v in values)
        print(f"  {subject:28} {rounds:28} {mean:7.1f}  {mean / base:.2f} x")
    say("alternate: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
