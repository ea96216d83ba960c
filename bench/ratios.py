#!/usr/bin/env python3
"""The paired ratios of issue 20, in one run, with the machine's load average.

Each pair runs its two commands in turn (A B A B ...), after a warm-up of each, and
prints the min / median / max of A's and B's wall time and of the per-pair ratio A/B:

1. `ftpatch nop small.o -o out.o` against `gcc -O2 -pg -c bench/small.c` (12 functions);
2. `ftpatch --help` against the same compile;
3. a C project's sources compiled one after the other with `ftpatch-cc gcc -O2 -pg -c`
   against `gcc -O2 -pg -c` (--project DIR: every *.c under DIR; default Lua 5.4's src/,
   where tests/oracles/corpus.py's fetch(['lua5.4']) unpacks it), and how many of the launcher's objects
   are byte-identical to `ftpatch nop` of the plain build's;
4. `ftpatch nop` of a PIE of 50,000 small -pg functions against its own link (`gcc -pg big.o`);
5. `ftpatch scan` of that object (text, then --json) against `ftpatch nop` of it;
6. with --batch, the batch figures against recordmcount: it runs bench/bench_recordmcount.py.

A benchmark, not a test: it asserts nothing. ftpatch is run as FTPATCH_CMD says (split like a shell;
default: the `ftpatch` next to this Python, which is how a build finds it), ftpatch-cc as FTPATCH_CC_CMD.
An editable install (pip install -e) adds its import finder to every start: time a `pip install .`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("FTPATCH_BENCH_CACHE", "/var/tmp/ftpatch-bench"))
LUA = Path(os.environ.get("FTPATCH_CORPUS_CACHE", "/var/tmp/ftpatch-corpus")) / "src"


def tool(env: str, name: str) -> list[str]:
    if env in os.environ:
        return shlex.split(os.environ[env])
    beside = Path(sys.executable).parent / name
    return [str(beside if beside.exists() else shutil.which(name) or name)]


def run(argv: list[str], cwd: Path) -> float:
    """Wall seconds of one run of argv, which must succeed; its output is thrown away."""
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{shlex.join(argv)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    return wall


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def spread(xs: list[float], unit: Callable[[float], str]) -> str:
    return f"{unit(min(xs))} / {unit(statistics.median(xs))} / {unit(max(xs))}"


def ms(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 10 else f"{s:.1f} s"


def ratio(x: float) -> str:
    return f"{x:.2f}x"


def paired(name: str, a: Callable[[], float], b: Callable[[], float], runs: int, goal: str) -> None:
    a(), b()  # warm-up
    ta, tb = [], []
    for _ in range(runs):
        ta.append(a())
        tb.append(b())
    rs = [x / y for x, y in zip(ta, tb, strict=True)]
    print(f"{name}  ({runs} pairs, {load()})")
    print(f"  A        {spread(ta, ms)}   (min / median / max)")
    print(f"  B        {spread(tb, ms)}")
    print(f"  A/B      {spread(rs, ratio)}   goal {goal}", flush=True)


def big_source(n: int) -> str:
    """n small -pg functions that the linker keeps, and a main that calls some."""
    lines = ["volatile int sink;"]
    lines += [f"__attribute__((noinline)) int f{i}(int x) {{ sink = x; return x * {i % 97 + 1}; }}" for i in range(n)]
    calls = "".join(f"    s += f{i}(c);\n" for i in range(0, n, 500))
    lines.append(
        f"int main(int c, char **v) {{\n  (void)v; int s = 0;\n  if (c > 100) {{\n{calls}  }}\n  return s & 1;\n}}"
    )
    return "\n".join(lines) + "\n"


def big(work: Path, n: int) -> tuple[Path, Path]:
    """big.o (n sites) and big, its PIE, built once into the cache."""
    obj, exe = work / f"big{n // 1000}k.o", work / f"big{n // 1000}k"
    if not exe.exists():
        src = obj.with_suffix(".c")
        src.write_text(big_source(n))
        print(f"building {obj} ({n} functions, once)...", flush=True)
        subprocess.run(["gcc", "-O2", "-pg", "-c", src.name, "-o", obj.name], cwd=work, check=True)
        subprocess.run(["gcc", "-pg", obj.name, "-o", exe.name], cwd=work, check=True)
    return obj, exe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15, help="pairs for the small commands (default %(default)s)")
    ap.add_argument("--big-runs", type=int, default=5, help="pairs for the big files and the project (default 5)")
    ap.add_argument("--functions", type=int, default=50_000, help="functions of the big file (default 50,000)")
    ap.add_argument("--project", type=Path, help="a C project's directory: its *.c are compiled (default Lua's src/)")
    ap.add_argument("--only", help="comma-separated parts to run: small,help,cc,linked,scan,batch")
    ap.add_argument("--batch", action="store_true", help="also run bench/bench_recordmcount.py (minutes)")
    args = ap.parse_args()
    parts = set(args.only.split(",")) if args.only else {"small", "help", "cc", "linked", "scan"}
    if args.batch:
        parts.add("batch")
    ftpatch, ftpatch_cc = tool("FTPATCH_CMD", "ftpatch"), tool("FTPATCH_CC_CMD", "ftpatch-cc")
    work = CACHE / "ratios"
    work.mkdir(parents=True, exist_ok=True)
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} CPUs, {load()}, ftpatch: {shlex.join(ftpatch)}")

    shutil.copy(HERE / "small.c", work / "small.c")
    compile_small = ["gcc", "-O2", "-pg", "-c", "small.c", "-o", "small.o"]
    subprocess.run(compile_small, cwd=work, check=True)
    if "small" in parts:
        paired(
            "1. A: ftpatch nop small.o -o out.o   B: gcc -O2 -pg -c small.c",
            lambda: run([*ftpatch, "nop", "small.o", "-o", "out.o"], work),
            lambda: run(compile_small, work),
            args.runs,
            "<= 1.0",
        )
    if "help" in parts:
        paired(
            "2. A: ftpatch --help   B: gcc -O2 -pg -c small.c",
            lambda: run([*ftpatch, "--help"], work),
            lambda: run(compile_small, work),
            args.runs,
            "<= 1.0",
        )
    if "cc" in parts:
        project = args.project or next(iter(sorted(LUA.glob("lua5.4-*/src"))), None)
        if project is None:
            print(
                "3. skipped: no --project, and no Lua sources (give --project DIR: the sources of `apt-get source lua5.4`, for one)"
            )
        else:
            sources = sorted(str(p) for p in project.rglob("*.c"))
            # Debian's Lua includes a header its build generates: the one line it holds.
            (work / "include").mkdir(exist_ok=True)
            (work / "include" / "lua5.4-deb-multiarch.h").write_text('#define DEB_HOST_MULTIARCH "x86_64-linux-gnu"\n')
            includes = [*sorted({f"-I{Path(s).parent}" for s in sources}), f"-I{work / 'include'}"]
            cc_flags = ["-O2", "-pg", *includes, "-c"]
            outs = {name: work / "project" / name for name in ("launched", "plain", "nopped")}
            for out in outs.values():
                out.mkdir(parents=True, exist_ok=True)

            def build(cc: list[str], out: Path) -> Callable[[], float]:
                def go() -> float:
                    start = time.perf_counter()
                    for i, s in enumerate(sources):
                        run([*cc, *cc_flags, s, "-o", str(out / f"{i}.o")], work)
                    return time.perf_counter() - start

                return go

            paired(
                f"3. A: {len(sources)} files of {project} with ftpatch-cc gcc   B: with gcc",
                build([*ftpatch_cc, "gcc"], outs["launched"]),
                build(["gcc"], outs["plain"]),
                args.big_runs,
                "<= 1.25",
            )
            # The launcher's objects must be what `ftpatch nop` makes of the plain build's.
            names = [f"{i}.o" for i in range(len(sources))]
            for name in names:
                shutil.copy(outs["plain"] / name, outs["nopped"] / name)
            run([*ftpatch, "nop", "--in-place", *names], outs["nopped"])
            same = sum((outs["launched"] / n).read_bytes() == (outs["nopped"] / n).read_bytes() for n in names)
            print(
                f"  the launcher's objects byte-identical to `ftpatch nop` of the plain build's: {same} of {len(names)}"
            )
    if parts & {"linked", "scan"}:
        obj, exe = big(work, args.functions)
    if "linked" in parts:
        paired(
            f"4. A: ftpatch nop {exe.name} -o out (a PIE, {args.functions} sites)   B: gcc -pg {obj.name} (its link)",
            lambda: run([*ftpatch, "nop", exe.name, "-o", "big-out"], work),
            lambda: run(["gcc", "-pg", obj.name, "-o", "big-link"], work),
            args.big_runs,
            "<= 1.0",
        )
    if "scan" in parts:
        for flags in ([], ["--json"]):
            paired(
                f"5. A: ftpatch scan {' '.join([*flags, obj.name])}   B: ftpatch nop {obj.name} -o out.o",
                lambda flags=flags: run([*ftpatch, "scan", *flags, obj.name], work),
                lambda: run([*ftpatch, "nop", obj.name, "-o", "big-out.o"], work),
                args.big_runs,
                "about 1",
            )
    if "batch" in parts:
        print(f"6. batch: bench/bench_recordmcount.py ({load()})", flush=True)
        subprocess.run([sys.executable, str(HERE / "bench_recordmcount.py")], check=False)
    print(f"done, {load()}")


if __name__ == "__main__":
    main()
