"""How fast does a -pg build run once ftpatch nops its profiling calls?

Builds one call-heavy C program three ways -- with -pg, the same -pg build
nop'd by ftpatch, and without -pg -- runs each several times and prints the
median wall-clock time. It needs gcc; it is a measurement, not a test.

    python bench/fullspeed.py [--runs N] [--flags '-pg -mfentry']
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

ROOT = Path(__file__).resolve().parent.parent

# Many tiny calls: every function is kept out of line, so each call pays for its profiling call.
SOURCE = r"""
#include <stdio.h>
#define NOINLINE __attribute__((noinline))
NOINLINE unsigned fib(unsigned n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
NOINLINE unsigned mix(unsigned h, unsigned v) { return (h ^ v) * 16777619u; }
NOINLINE unsigned step(unsigned x) { return x * 1103515245u + 12345u; }
int main(void)
{
	unsigned h = 2166136261u, x = 1;
	for (int i = 0; i < 100000000; i++) {
		x = step(x);
		h = mix(h, x);
	}
	printf("%u %u\n", fib(32), h);
	return 0;
}
"""


def timed(exe: Path, workdir: Path) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run([exe], cwd=workdir, capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--flags", default="-pg", help="the profiling flags (default: -pg)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = work / "calls.c"
        src.write_text(SOURCE)
        pg, nopped, plain = work / "calls-pg", work / "calls-pg-nop", work / "calls"
        subprocess.run(["gcc", "-O2", *args.flags.split(), str(src), "-o", str(pg)], check=True)
        subprocess.run(["gcc", "-O2", str(src), "-o", str(plain)], check=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-m", "ftpatch", "nop", str(pg), "-o", str(nopped)], check=True, env=env)
        builds = [
            (f"gcc -O2 {args.flags}", pg),
            (f"gcc -O2 {args.flags}, nop'd by ftpatch", nopped),
            ("gcc -O2", plain),
        ]
        outputs = set()
        medians = {}
        for label, exe in builds:
            times = []
            for _ in range(args.runs):
                seconds, out = timed(exe, work)
                times.append(seconds)
                outputs.add(out)
            medians[label] = statistics.median(times)
        if len(outputs) != 1:
            sys.exit(f"the builds disagree: {sorted(outputs)}")
        base = medians["gcc -O2"]
        print(f"{args.runs} runs each, median wall-clock time; {os.cpu_count()} CPUs")
        print("| build | median (s) | vs. without -pg |")
        print("|---|---|---|")
        for label, _ in builds:
            print(f"| {label} | {medians[label]:.3f} | {medians[label] / base:.2f}x |")


if __name__ == "__main__":
    main()
