"""The long fuzz pass: many mutated fixtures through the library and the CLI, in parallel.

    PYTHONPATH=. python tests/fuzz/long_run.py [COUNT] [--jobs N] [--seed S]

COUNT inputs (default 100,000) are split over N worker processes (default:
the number of CPUs). Each input is capped at 2 s (SIGALRM, plus a 10 s
faulthandler watchdog for a hang inside C++). Prints inputs/s, the outcomes by
error kind, and every failure with the mutations that reproduce it; failing
inputs are saved in tests/fuzz/failures/. Exits 1 if there was any failure.
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent))

from fuzz.mutate import Hang, drive, mutate, random_mutations, time_cap  # noqa: E402

FAILURES = HERE / "failures"


def worker(count: int, seed: int, workdir: Path) -> dict:
    rng = random.Random(seed)
    outcomes: collections.Counter[str] = collections.Counter()
    failures = []
    for i in range(count):
        name, muts = random_mutations(rng)
        data = mutate(name, muts)
        (workdir / "current.json").write_text(json.dumps([name, muts]))
        run = workdir / "run"
        run.mkdir(exist_ok=True)
        faulthandler.dump_traceback_later(10, exit=True)
        try:
            with time_cap(2.0):
                outcomes[drive(data, run)] += 1
        except Hang:
            outcomes["FAILURE: hang (> 2 s)"] += 1
            failures.append({"seed": name, "mutations": muts, "error": "hang > 2 s"})
        except Exception as e:  # noqa: BLE001 - every other exception is the finding
            outcomes[f"FAILURE: {type(e).__name__}"] += 1
            tb = traceback.format_exc(limit=-3)
            failures.append({"seed": name, "mutations": muts, "error": f"{type(e).__name__}: {e}", "traceback": tb})
            FAILURES.mkdir(exist_ok=True)
            (FAILURES / f"{seed}-{i}.o").write_bytes(data)
        finally:
            faulthandler.cancel_dump_traceback_later()
        if (i + 1) % 5000 == 0:
            print(f"worker {seed}: {i + 1}/{count}, {sum(outcomes.values()) - outcomes['ok']} errors", file=sys.stderr)
        shutil.rmtree(run)
    return {"outcomes": outcomes, "failures": failures}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("count", nargs="?", type=int, default=100_000)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        count, seed = args.worker
        with tempfile.TemporaryDirectory(prefix="ftpatch-fuzz-") as d:
            result = worker(count, seed, Path(d))
        print(json.dumps(result))
        return 0

    start = time.monotonic()
    shares = [args.count // args.jobs + (i < args.count % args.jobs) for i in range(args.jobs)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", str(n), str(args.seed * 1000 + i)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i, n in enumerate(shares)
    ]
    outcomes: collections.Counter[str] = collections.Counter()
    failures = []
    for i, p in enumerate(procs):
        out, _ = p.communicate()
        if p.returncode != 0:
            failures.append({"worker": i, "error": f"worker died with status {p.returncode} (crash or C-level hang)"})
            outcomes["FAILURE: worker died"] += 1
            continue
        result = json.loads(out)
        outcomes.update(result["outcomes"])
        failures += result["failures"]
    elapsed = time.monotonic() - start
    total = sum(v for k, v in outcomes.items() if k != "FAILURE: worker died")
    print(f"inputs: {total} in {elapsed:.0f} s with {args.jobs} processes: {total / elapsed:.0f} inputs/s")
    print("outcomes:")
    for kind, n in outcomes.most_common():
        print(f"  {n:8d}  {kind}")
    print(f"failures: {len(failures)}")
    seen = set()
    for f in failures:
        if f["error"] not in seen:
            seen.add(f["error"])
            print(json.dumps(f))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
