#!/usr/bin/env python3
"""Time ftpatch inside one process on one object: read, scan, plan and apply (nop), and record; imports excluded.

Prints the median of --repeat runs for each step and `ftpatch --help` wall
time. A benchmark, not a test: it asserts nothing. Default object: big20k.o
from bench/prepare.sh (20,000 __fentry__ sites).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path(os.environ.get("FTPATCH_BENCH_CACHE", "/var/tmp/ftpatch-bench"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("object", nargs="?", type=Path, default=CACHE / "big20k.o")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    if not args.object.exists():
        print(f"no {args.object}: run bench/prepare.sh, or name an object", file=sys.stderr)
        return 1
    import capstone  # noqa: F401 - imports are excluded from the figures

    import ftpatch
    from ftpatch.read import read_input
    from ftpatch.record import record_data
    from ftpatch.scan import scan_data

    steps: dict[str, list[float]] = {"read": [], "scan": [], "plan": [], "apply": [], "total": []}
    sites = 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        data = read_input(str(args.object))
        t1 = time.perf_counter()
        (result,) = scan_data(str(args.object), data)
        t2 = time.perf_counter()
        plan = ftpatch.plan(result, ftpatch.Action.NOP)
        t3 = time.perf_counter()
        ftpatch.apply(data, plan)
        t4 = time.perf_counter()
        for name, (a, b) in zip(steps, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t0, t4)), strict=True):
            steps[name].append(b - a)
        sites = len(result.sites)
    print(f"{args.object}: {sites} sites, median of {args.repeat} runs, in process, imports excluded")
    for name, times in steps.items():
        print(f"  {name:6} {statistics.median(times) * 1000:8.1f} ms")
    # record: the same read and scan, then verify, find or make the section symbols and append the table.
    records: list[float] = []
    recorded = 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        done, _new = record_data(str(args.object), read_input(str(args.object)))
        records.append(time.perf_counter() - t0)
        recorded = done.recorded
    print(f"  record {statistics.median(records) * 1000:8.1f} ms  (read, scan, verify, append: {recorded} sites)")
    helps = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ftpatch", "--help"], stdout=subprocess.DEVNULL, check=True)
        helps.append(time.perf_counter() - t0)
    print(f"  python -m ftpatch --help: {statistics.median(helps) * 1000:.0f} ms (median of 5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
