#!/usr/bin/env python3
"""Time `nop` on linked programs inside one process, and the share of the check that no call is left behind.

For each file: the median of --repeat runs of scan (which walks each function and runs the byte search
once), plan, and apply (which runs the byte search again, on the new bytes), and of the byte search alone,
so the figures say what the completeness check costs beside the rest. Then the same whole `nop` as a
process, against a second checkout of ftpatch (--vs DIR, for example a `git worktree` of an older commit),
paired run by run, with the ratio. A benchmark, not a test: it asserts nothing.

Default files: the corpus's sqlite3 built `-O2 -pg` (PIE) and `-O0 -pg` by gcc and bfd (bench/corpus.py build).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORPUS = Path(os.environ.get("FTPATCH_CORPUS_CACHE", "/var/tmp/ftpatch-corpus")) / "builds" / "sqlite3"
DEFAULT = [CORPUS / "pie-gcc-bfd" / "sqlite3", CORPUS / "O0-gcc-bfd" / "sqlite3"]
ROOT = Path(__file__).resolve().parent.parent


def in_process(path: Path, repeat: int) -> None:
    import ftpatch
    from ftpatch.read import read_input
    from ftpatch.scan import scan_data

    steps: dict[str, list[float]] = {"scan": [], "plan": [], "apply": [], "total": [], "byte search": []}
    sites = 0
    for _ in range(repeat):
        data = read_input(str(path))
        t0 = time.perf_counter()
        (result,) = scan_data(str(path), data)
        t1 = time.perf_counter()
        plan = ftpatch.plan(result, ftpatch.Action.NOP)
        t2 = time.perf_counter()
        ftpatch.apply(data, plan)
        t3 = time.perf_counter()
        result.checks.live_calls(data)
        t4 = time.perf_counter()
        for name, (a, b) in zip(steps, ((t0, t1), (t1, t2), (t2, t3), (t0, t3), (t3, t4)), strict=True):
            steps[name].append(b - a)
        sites = len(result.sites)
    medians = {name: statistics.median(times) * 1000 for name, times in steps.items()}
    print(f"{path}: {sites} sites, median of {repeat} runs in one process, imports excluded")
    for name, ms in medians.items():
        print(f"  {name:12} {ms:8.1f} ms")
    check = 2 * medians["byte search"]
    print(f"  the check (the byte search, on the input and on the output): {check:.1f} ms, "
          f"{check / medians['total']:.0%} of the total")  # fmt: skip


def paired(path: Path, other: Path, repeat: int) -> None:
    """Whole `ftpatch nop` processes, this checkout's and `other`'s in turn, the ratio taken pair by pair."""
    times: dict[str, list[float]] = {"this": [], "other": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat):
            for name, root in (("this", ROOT), ("other", other)):
                env = {**os.environ, "PYTHONPATH": str(root)}
                t0 = time.perf_counter()
                # Run from an empty directory: `-m` puts the current directory first on sys.path.
                proc = subprocess.run(
                    [sys.executable, "-m", "ftpatch", "nop", str(path), "-o", f"{tmp}/{name}"],
                    env=env,
                    capture_output=True,
                    text=True,
                    cwd=tmp,
                )
                times[name].append(time.perf_counter() - t0)
                if proc.returncode:
                    print(f"  {name}: exit {proc.returncode}: {proc.stderr.strip()[:200]}")
    ratios = sorted(a / b for a, b in zip(times["this"], times["other"], strict=True))
    print(
        f"  whole process, median of {repeat}: this {statistics.median(times['this']):.3f} s, "
        f"{other} {statistics.median(times['other']):.3f} s, ratio {statistics.median(ratios):.2f} "
        f"(min {ratios[0]:.2f}, max {ratios[-1]:.2f})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, default=DEFAULT)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--vs", type=Path, help="another checkout of ftpatch to time the whole process against")
    args = parser.parse_args()
    missing = [f for f in args.files if not f.exists()]
    if missing:
        print(f"no {missing[0]}: run bench/corpus.py build, or name the files", file=sys.stderr)
        return 1
    sys.path.insert(0, str(ROOT))
    for path in args.files:
        in_process(path, args.repeat)
        if args.vs:
            paired(path, args.vs, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
