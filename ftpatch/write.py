"""Writing: put new bytes at a path atomically, or not at all.

The bytes go to a hidden temporary file, `.NAME.ftpatch-PID-START-XXXXXXXX`, in
the target's directory, which is fsynced and then renamed over the target with
os.replace, so a reader sees the old file or the new one and never a mix.
os.replace renames over a symbolic link itself and never writes through it.
Every error and every interruption that Python sees (the command line turns
SIGTERM and SIGINT into exceptions) removes the temporary. Only SIGKILL or a
crash can leave one behind. The next write to the same target removes the
target's stale temporaries, and so does the next in-place run on it, whether
it then writes, finds nothing to change or refuses the file.

A temporary is stale when its writer can no longer write: its PID names no
process, or a zombie (SIGKILLed workers stay zombies until init reaps them,
and an init that never reaps keeps them forever), or a process that started
at another time than START, the writer's start time in clock ticks since
boot from /proc/self/stat (the PID was reused). Names without START,
`.NAME.ftpatch-PID-XXXXXXXX`, come from earlier versions, which ignore the
newer names; they are judged by PID alone. Where /proc is missing or shows
another pid namespace, START is left out and a PID that exists counts as
alive, zombie or not.

In-place patching holds an exclusive flock(2) on the input while it reads,
verifies and replaces it (`locked_input`), so two ftpatch processes on the
same file take turns, and the second one reads the first one's result.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import stat
from collections.abc import Callable, Iterator
from time import monotonic
from typing import NamedTuple, TypeVar

from .archive import read_thin, resized_thin
from .errors import InputError, OutputError
from .read import open_input, read_fd, read_input

_MARK = ".ftpatch-"

# How long a directory's list of stale temporaries is trusted. A batch writes thousands of files
# into one directory and lists it once, not once a file; a process that writes there for hours
# still finds, a minute later at most, what the runs killed meanwhile left.
LISTING_TTL = 60.0


def _temp_prefix(target: str) -> str:
    return f".{os.path.basename(target)}{_MARK}"


class _ProcStat(NamedTuple):
    """The fields of /proc/PID/stat that tell whether a process may still write (proc(5) numbers them)."""

    pid: int  # 1
    state: str  # 3
    num_threads: int  # 20
    starttime: int  # 22, clock ticks since boot


def _parse_stat(line: bytes) -> _ProcStat | None:
    """A /proc/PID/stat line's fields, or None if it is not one."""
    # comm, field 2, is in parentheses and may itself hold spaces and ')': only the last ')' ends it.
    head, _, tail = line.rpartition(b")")
    pid = head.partition(b" (")[0]
    fields = tail.split()
    if not pid.isdigit() or len(fields) < 20 or not fields[17].isdigit() or not fields[19].isdigit():
        return None
    return _ProcStat(int(pid), fields[0].decode("ascii", "replace"), int(fields[17]), int(fields[19]))


def _read_stat(pid: int | str) -> _ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return _parse_stat(f.read())
    except OSError:  # no such process, no /proc, or a process /proc hides from us (hidepid)
        return None


@functools.lru_cache(maxsize=1)
def _own_start(pid: int) -> int | None:
    """The start time of this process, `pid`, or None if /proc does not show this process's pid namespace.

    Called with os.getpid(), so that a forked worker reads its own.
    """
    me = _read_stat("self")
    return me.starttime if me is not None and me.pid == pid else None


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _writer_alive(pid: int, start: int | None) -> bool:
    """Whether the writer a temporary names, by `pid` and `start` (None in older names), may still write to it.

    A zombie never writes again. One with threads left is not a zombie: its
    first thread returned, and /proc shows that thread's state.
    """
    if _own_start(os.getpid()) is not None:
        stat = _read_stat(pid)
        if stat is not None:
            gone = stat.state == "X" or (stat.state == "Z" and stat.num_threads <= 1)
            return not gone and start in (None, stat.starttime)
    # /proc cannot tell: a PID that exists counts as alive, zombie or reused.
    return _pid_exists(pid)


def _writer_of(name: str) -> tuple[str, int, int | None] | None:
    """The prefix naming the target, and the PID and start time, in a temporary's name; None if it is not one."""
    prefix, mark, rest = name.rpartition(_MARK)
    *ids, token = rest.split("-")
    if not (mark and name.startswith(".") and len(token) == 8 and len(ids) in (1, 2) and all(map(str.isdigit, ids))):
        return None
    return prefix + _MARK, int(ids[0]), int(ids[1]) if len(ids) == 2 else None


def _temp_name(target: str) -> str:
    pid = os.getpid()
    start = _own_start(pid)
    writer = f"{pid}-{start}" if start is not None else f"{pid}"
    # What secrets.token_hex reads, without importing secrets (hmac, hashlib): 5% of a one-object run.
    return f"{_temp_prefix(target)}{writer}-{os.urandom(4).hex()}"


# Per directory, when it was listed and the stale temporaries found there, by the prefix naming their target.
_stale: dict[str, tuple[float, dict[str, list[str]]]] = {}


def _dead_temporaries(directory: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    try:
        names = [e.name for e in os.scandir(directory) if _MARK in e.name]
    except OSError:
        return found
    for name in names:
        writer = _writer_of(name)
        if writer is None:
            continue
        prefix, pid, start = writer
        if not _writer_alive(pid, start):
            found.setdefault(prefix, []).append(name)
    return found


def sweep_stale(target: str) -> list[str]:
    """Remove the temporaries of `target` left by ftpatch processes that can no longer write."""
    directory = os.path.dirname(os.path.abspath(target))
    now = monotonic()
    listed = _stale.get(directory)
    if listed is None or now - listed[0] > LISTING_TTL:
        listed = _stale[directory] = (now, _dead_temporaries(directory))
    removed = []
    for name in listed[1].pop(_temp_prefix(target), []):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))
            removed.append(name)
    return removed


def sync_directory(directory: str) -> None:
    """Make the renames into `directory` durable."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise OutputError(directory, f"{(e.strerror or str(e)).lower()}, syncing the directory") from None


def write_atomic(target: str, data: bytes | bytearray, mode: int, *, sync_dir: bool = True, fsync: bool = True) -> None:
    """Replace (or create) `target` with `data` and permission bits `mode`, atomically.

    The file is fsynced before the rename and its directory after it. With
    sync_dir False the caller syncs the directory itself, once for a whole
    batch; with fsync False neither is synced: the replace is still atomic for
    every reader, but a power loss may undo it.
    """
    directory = os.path.dirname(os.path.abspath(target))
    sweep_stale(target)
    temp = ""
    try:
        while True:
            temp = os.path.join(directory, _temp_name(target))
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                break
            except FileExistsError:
                temp = ""
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
        temp = ""
    except OSError as e:
        raise OutputError(target, f"{(e.strerror or str(e)).lower()}, writing") from None
    finally:
        if temp:
            # Best effort: it may never have been created (EROFS, EACCES) or already be renamed.
            with contextlib.suppress(OSError):
                os.unlink(temp)
    if sync_dir and fsync:
        sync_directory(directory)


@contextlib.contextmanager
def locked_input(path: str) -> Iterator[tuple[bytes, int]]:
    """The bytes and permission bits of `path`, under an exclusive flock held until the block ends.

    After the lock is granted, `path` must still name the inode that was
    locked: if another process replaced it meanwhile, lock the new file instead.
    """
    while True:
        fd = open_input(path)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                    raise InputError(path, f"{(e.strerror or str(e)).lower()}, locking") from None
            st = os.fstat(fd)
            try:
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                raise InputError(path, "no such file") from None
            if stat.S_ISLNK(now.st_mode):
                raise InputError(path, "is a symbolic link, give --in-place the file it points to")
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                continue  # replaced while we waited: lock what the path names now
            # Whatever then becomes of the file (written, unchanged, refused), what killed runs left beside
            # it goes. Under the lock no in-place run on it is midway through a write, not even one in
            # another pid namespace, whose PID means nothing here.
            sweep_stale(path)
            yield read_fd(path, fd), st.st_mode & 0o7777
            return
        finally:
            os.close(fd)


T = TypeVar("T")


def rewrite(
    path: str,
    output: str | None,
    change: Callable[[bytes], tuple[T, bytes | bytearray | None]],
    *,
    sync_dir: bool = True,
    fsync: bool = True,
) -> T:
    """Read `path`, let `change` say what it becomes, and write that atomically; return what `change` reported.

    `change` gives the new bytes, or None when the file stays as it is. With
    `output`, the result is written there either way (the input's own bytes if
    nothing changed) and the input is only read; without it, `path` is replaced
    only if it changed, and stays locked from the read to the rename, so
    concurrent runs take turns (locked_input sweeps what killed runs left beside
    it, whatever becomes of it). sync_dir, fsync: see write_atomic.
    """
    if output is None and os.path.islink(path):
        raise InputError(path, "is a symbolic link, give --in-place the file it points to")
    if output is not None:
        data = read_input(path)
        report, new = change(data)
        write_atomic(
            output, data if new is None else new, os.stat(path).st_mode & 0o7777, sync_dir=sync_dir, fsync=fsync
        )
        return report
    with locked_input(path) as (data, mode):
        report, new = change(data)
        if new is not None:
            write_atomic(path, new, mode, sync_dir=sync_dir, fsync=fsync)
    return report


THIN_OUTPUT = (
    "is a thin archive: its members live in other files, which -o cannot write beside a new archive; "
    "use --in-place, which patches each member where the archive points"
)


def rewrite_thin(
    path: str,
    output: str | None,
    change: Callable[[bytes, str], tuple[T, bytes | bytearray | None]],
    *,
    fsync: bool = True,
) -> list[T]:
    """rewrite() for a thin archive, whose members live in other files: what `change` reports of each ELF
    member, given its bytes and its name (`lib.a(member.o)`).

    Every member is read and changed before any is written, under the archive's lock, so that a member that
    fails leaves every file as it was. Each changed member is then replaced atomically where it lies, after a
    check under its own lock that it still holds the bytes that were changed; where a member's size changed,
    the archive is replaced too, its headers' sizes written again. Members are files of their own: an error
    while writing one leaves those written before it patched. The directories written to are synced at the end.
    """
    if output is not None:
        raise InputError(path, THIN_OUTPUT)
    if os.path.islink(path):
        raise InputError(path, "is a symbolic link, give --in-place the file it points to")
    reports: list[T] = []
    written: set[str] = set()
    with locked_input(path) as (data, mode):
        changed = []
        for member, file, held in read_thin(path, data):
            report, new = change(held, f"{path}({member.name})")
            reports.append(report)
            if new is not None:
                changed.append((member, file, held, new))
        for _member, file, held, new in changed:
            with locked_input(file) as (now, member_mode):
                if now != held:
                    raise InputError(
                        file, f"changed while ftpatch patched {path}, which names it; it was left as it is"
                    )
                write_atomic(file, new, member_mode, sync_dir=False, fsync=fsync)
            written.add(os.path.dirname(os.path.abspath(file)))
        sizes = {member.offset: len(new) for member, _file, _held, new in changed if len(new) != member.size}
        if sizes:
            write_atomic(path, resized_thin(path, data, sizes), mode, sync_dir=False, fsync=fsync)
            written.add(os.path.dirname(os.path.abspath(path)))
    if fsync:
        for directory in sorted(written):
            sync_directory(directory)
    return reports
