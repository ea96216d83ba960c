#!/usr/bin/env python3
"""One `ftpatch nop` as a per-object build step, against compiling that object; then a tree built both ways.

Part 1, paired runs: `gcc -O2 -pg -c bench/small.c` (12 functions) and, in turn with it,
`ftpatch nop small.o -o out.o`, the same on the nop'd object, and `ftpatch --help`.
Prints the median wall and CPU time of each (CPU: user + system of the process and
what it waited for, from wait4) and the median of the per-pair ratios to the compile.

Part 2, a tree: every source compiled one after the other (the build), then with
`ftpatch nop --in-place` after each compile (the per-object rule), then with one
`ftpatch nop --in-place` over all the objects at the end (one batch run), each
with --no-fsync if asked, as the README suggests for build trees. Default
tree: bench/small.c compiled as 15 objects; --sources DIR takes every *.c of DIR,
such as zlib's 15 (`apt-get source zlib`).

A benchmark, not a test: it asserts nothing. ftpatch is run as FTPATCH_CMD says
(split like a shell; default: this Python's -m ftpatch). An editable install (pip
install -e) adds its import finder to every Python start: time a `pip install .`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(argv: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of argv, which must succeed."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            sys.exit(f"{shlex.join(argv)} exited {proc.returncode}: {err.read().decode(errors='replace')}")
    return wall, usage.ru_utime + usage.ru_stime


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def paired(cc: list[str], ftpatch: list[str], runs: int, work: Path) -> None:
    shutil.copy(HERE / "small.c", work / "small.c")
    compile_ = [*cc, "-c", "small.c", "-o", "small.o"]
    subprocess.run(compile_, cwd=work, check=True)
    subprocess.run([*ftpatch, "nop", "small.o", "-o", "nopped.o"], cwd=work, check=True, stdout=subprocess.DEVNULL)
    commands = {
        "compile": compile_,
        "nop": [*ftpatch, "nop", "small.o", "-o", "out.o"],
        "nop, already nop'd": [*ftpatch, "nop", "nopped.o", "-o", "out2.o"],
        "--help": [*ftpatch, "--help"],
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for argv in commands.values():  # a warm-up run each, not counted
        timed(argv, work)
    for _ in range(runs):
        for name, argv in commands.items():
            times[name].append(timed(argv, work))
    print(f"median of {runs} runs, each command in turn with `{shlex.join(compile_)}`:")
    print(f"  {'':20} {'wall':>10} {'cpu':>10}   {'wall/compile':>12} {'cpu/compile':>12}")
    base = times["compile"]
    for name, pairs in times.items():
        wall = statistics.median(w for w, _ in pairs)
        cpu = statistics.median(c for _, c in pairs)
        ratios = ""
        if name != "compile":
            rw = statistics.median(w / b[0] for (w, _), b in zip(pairs, base, strict=True))
            rc = statistics.median(c / b[1] for (_, c), b in zip(pairs, base, strict=True))
            ratios = f"   {rw:11.2f}x {rc:11.2f}x"
        print(f"  {name:20} {ms(wall)} {ms(cpu)}{ratios}")


def tree(cc: list[str], ftpatch: list[str], options: list[str], sources: list[Path], runs: int, work: Path) -> None:
    objects = [f"o{i}_{src.stem}.o" for i, src in enumerate(sources)]
    includes = sorted({f"-I{src.parent}" for src in sources})

    def build(rule: bool, batch: bool) -> tuple[float, float]:
        wall = cpu = 0.0
        for src, obj in zip(sources, objects, strict=True):
            for argv in [[*cc, *includes, "-c", str(src), "-o", obj]] + (
                [[*ftpatch, "nop", "--in-place", *options, obj]] if rule else []
            ):
                w, c = timed(argv, work)
                wall, cpu = wall + w, cpu + c
        if batch:
            w, c = timed([*ftpatch, "nop", "--in-place", "-q", *options, *objects], work)
            wall, cpu = wall + w, cpu + c
        return wall, cpu

    ways = {"build": (False, False), "per-object rule": (True, False), "one batch run": (False, True)}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for _ in range(runs):
        for name, (rule, batch) in ways.items():
            times[name].append(build(rule, batch))
    print(f"\n{len(sources)} objects compiled one after the other, median of {runs} runs:")
    print(f"  {'':20} {'wall':>10} {'cpu':>10}   {'over the build (wall, cpu)':>26}")
    base_wall = statistics.median(w for w, _ in times["build"])
    base_cpu = statistics.median(c for _, c in times["build"])
    for name, pairs in times.items():
        wall = statistics.median(w for w, _ in pairs)
        cpu = statistics.median(c for _, c in pairs)
        over = "" if name == "build" else f"   {wall / base_wall - 1:+12.0%} {cpu / base_cpu - 1:+12.0%}"
        print(f"  {name:20} {ms(wall)} {ms(cpu)}{over}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="paired runs of each command (default 21)")
    parser.add_argument("--tree-runs", type=int, default=5, help="builds of the tree each way (default 5)")
    parser.add_argument("--sources", type=Path, help="a directory whose *.c files make the tree")
    parser.add_argument("--no-fsync", action="store_true", help="the tree's ftpatch runs get --no-fsync")
    parser.add_argument("--cc", default="gcc -O2 -pg", help="the compiler and flags (default: gcc -O2 -pg)")
    args = parser.parse_args()
    ftpatch = shlex.split(os.environ.get("FTPATCH_CMD", "")) or [sys.executable, "-m", "ftpatch"]
    cc = shlex.split(args.cc)
    if args.sources:
        sources = sorted(args.sources.resolve().glob("*.c"))
        if not sources:
            print(f"no *.c in {args.sources}", file=sys.stderr)
            return 1
    else:
        sources = [HERE / "small.c"] * 15
    print(f"ftpatch: {shlex.join(ftpatch)}")
    with tempfile.TemporaryDirectory(prefix="ftpatch-per-object-") as tmp:
        paired(cc, ftpatch, args.runs, Path(tmp))
        tree(cc, ftpatch, ["--no-fsync"] if args.no_fsync else [], sources, args.tree_runs, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
