#!/usr/bin/env python3
"""The atomic-replace floor: what replacing every file of a list costs in Python, with no ftpatch work at all.

Each file is read, its bytes written to a new file beside it (fsynced unless --no-fsync), and that file renamed
over it: what `ftpatch ... --in-place` does to every file it changes, without the lock, the scan, the plan or the
proof. The directories are fsynced once each at the end, as a batch of ftpatch's does. With -j N, N forked
workers share the list as ftpatch's batch shares it (multiprocessing's imap, the same chunks). Started by
bench_recordmcount.py's `floor-*` variants, with the Python that runs ftpatch; prints nothing.
"""

import argparse
import multiprocessing
import os

FSYNC = True


def replace(path: str) -> str:
    with open(path, "rb") as f:
        data, mode = f.read(), os.fstat(f.fileno()).st_mode & 0o7777
    temp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.floor-{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)
        if FSYNC:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    return os.path.dirname(path)


def main() -> None:
    global FSYNC
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files-from", required=True)
    ap.add_argument("-j", type=int, default=1)
    ap.add_argument("--no-fsync", action="store_true")
    a = ap.parse_args()
    FSYNC = not a.no_fsync
    with open(a.files_from) as f:
        paths = [line.rstrip("\n") for line in f if line.strip()]
    if a.j > 1:
        chunk = max(1, min(64, len(paths) // (a.j * 8)))  # batch.py's chunks
        with multiprocessing.get_context("fork").Pool(a.j) as pool:
            directories = set(pool.imap(replace, paths, chunksize=chunk))
    else:
        directories = set(map(replace, paths))
    if FSYNC:
        for directory in sorted(directories):
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


if __name__ == "__main__":
    main()
