"""Part `profile`: where the store's CPU goes per tick, and what the proposals would save.

1. py-spy (its own virtualenv, see peers.py) records the store under the realistic load
   (`py-spy record --nonblocking --format raw`: the store is never paused, so its timing is
   untouched; py-spy's idle filter drops threads waiting in the kernel). Self time is the
   innermost Python frame of each sample: time in C called from Python (SQLite's step and
   commit, a socket recv) counts for the Python function that called it, and time in gevent's
   C event loop counts for `Hub.run`. Top 15, as percentages of all samples.
2. Except with --quick, the store and its variants (variant.py) one after the other on the
   same realistic load, 25 s windows, CPU per tick and the WAL's size; baseline first and last,
   so that drift of the shared machine shows.
"""

import re
from collections import Counter

import load
from common import figure, say

VARIANTS = (
    (),
    ("checkpoint_locked",),
    ("lean_insert",),
    ("checkpoint_locked", "lean_insert"),
    ("slow_checkpoint",),
    ("sqlite_autocheckpoint",),
    ("no_write",),
    (),
)
WINDOW = 25.0


def self_time(raw: str) -> tuple[Counter, int]:
    """Samples per innermost frame (`function (file)`, line numbers dropped), and the total."""
    counts: Counter = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        leaf = re.sub(r":\d+\)$", ")", stack.split(";")[-1])
        leaf = re.sub(r"\(/.*?site-packages/", "(", leaf)
        counts[leaf] += int(n)
        total += int(n)
    return counts, total


def run(quick: bool) -> dict:
    if not load.PROFILES:
        say("profile: the store under the realistic load, with py-spy")
        load.measure("store", 5.0, profile_seconds=10.0 if quick else 20.0)
    counts, total = self_time(load.PROFILES[-1])
    top = counts.most_common(15)
    out = {"top": [(name, n / max(total, 1)) for name, n in top], "samples": total}
    print(f"  py-spy, {total} samples; self time, top 15:", flush=True)
    for rank, (name, n) in enumerate(top, 1):
        figure(f"profile #{rank:<2} {name}", round(n / total * 100, 1), "%")
    if quick:
        say("profile: variants skipped with --quick")
        return out
    say(f"profile: variants on the realistic load, {WINDOW:g} s each")
    results = []
    for patches in VARIANTS:
        try:
            results.append(load.measure("store", WINDOW, patches=patches))
        except Exception as exc:
            say(f"profile: variant {patches} failed: {exc!r}")
    baseline = [r for r in results if r["label"] == "store"]
    base = sum(r["us_per_tick"] for r in baseline) / max(len(baseline), 1)
    for r in results:
        figure(
            f"variant {r['label']}",
            round(r["us_per_tick"], 1),
            "µs/tick",
            f"{r['us_per_tick'] / base:.2f} x baseline mean; WAL max {r['wal_max'] / 1e6:.0f} MB",
        )
    out["variants"] = results
    return out
