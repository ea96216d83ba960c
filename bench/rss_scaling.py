#!/usr/bin/env python3
"""Peak RSS of `ftpatch nop --in-place -j 2` as the number of files grows, the file held constant.

Prints one row per file count: copies of one kernel module (the corpus from
prepare.sh, or any ELF object given with --object), patched in one run under
GNU time. Flat figures mean memory depends on the largest file, not on how
many there are. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("FTPATCH_BENCH_CACHE", "/var/tmp/ftpatch-bench"))
DEFAULT_OBJECT = CACHE / "modules-pristine/kernel/fs/nfs/nfs.ko"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--object", type=Path, default=DEFAULT_OBJECT)
    parser.add_argument("--counts", default="10,100,1000,4000")
    # This interpreter rather than a `ftpatch` on PATH, which may be a pyenv shim (65 ms a start).
    parser.add_argument("--ftpatch", default=f"{sys.executable} -m ftpatch")
    args = parser.parse_args()
    if not args.object.exists():
        print(f"no {args.object}: run bench/prepare.sh, or give --object", file=sys.stderr)
        return 1
    gnu_time = shutil.which("time", path="/usr/bin")
    if gnu_time is None:
        print("needs GNU time (/usr/bin/time, Debian package time)", file=sys.stderr)
        return 1
    size = args.object.stat().st_size
    print(f"object: {args.object} ({size / 1e6:.2f} MB); ftpatch nop --in-place --files-from LIST -j 2 --json")
    print(f"{'files':>6} {'wall':>9} {'peak RSS':>10}")
    for count in map(int, args.counts.split(",")):
        with tempfile.TemporaryDirectory(dir=CACHE if CACHE.exists() else None) as tmp:
            listing = Path(tmp) / "list"
            paths = []
            for i in range(count):
                path = Path(tmp) / f"m{i}.ko"
                shutil.copyfile(args.object, path)
                paths.append(str(path))
            listing.write_text("\n".join(paths) + "\n")
            rss = Path(tmp) / "rss"
            started = time.monotonic()
            subprocess.run(
                [
                    gnu_time,
                    "-q",
                    "-f",
                    "%M",
                    "-o",
                    str(rss),
                    *args.ftpatch.split(),
                    "nop",
                    "--in-place",
                    "--files-from",
                    str(listing),
                    "-j",
                    "2",
                    "--json",
                ],
                stdout=subprocess.DEVNULL,
                check=True,
            )
            wall = time.monotonic() - started
            print(f"{count:>6} {wall:>8.2f}s {int(rss.read_text()) / 1024:>8.1f}MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
