"""Writing: put new bytes at a path atomically, or not at all.

The bytes go to a hidden temporary file, `.NAME.ftpatch-PID-XXXXXXXX`, in the
target's directory, which is fsynced and then renamed over the target with
os.replace, so a reader sees the old file or the new one and never a mix.
os.replace renames over a symbolic link itself and never writes through it.
Every error and every interruption that Python sees (the command line turns
SIGTERM and SIGINT into exceptions) removes the temporary. Only SIGKILL or a
crash can leave one behind: the next write to the same target removes the
temporaries of that target whose process is gone.

In-place patching holds an exclusive flock(2) on the input while it reads,
verifies and replaces it (`locked_input`), so two ftpatch processes on the
same file take turns, and the second one reads the first one's result.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Iterator

from .elf import open_input, read_fd
from .errors import InputError, OutputError

_MARK = ".ftpatch-"


def _temp_prefix(target: str) -> str:
    return f".{os.path.basename(target)}{_MARK}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Per directory, the stale temporaries found there, by the target they were for. A batch
# writes thousands of files into one directory: it is listed once per process, not once a file.
_stale: dict[str, dict[str, list[str]]] = {}


def _dead_temporaries(directory: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    try:
        names = [e.name for e in os.scandir(directory) if _MARK in e.name]
    except OSError:
        return found
    for name in names:
        prefix, _, rest = name.rpartition(_MARK)
        pid, _, token = rest.partition("-")
        if not (name.startswith(".") and pid.isdigit() and len(token) == 8):
            continue
        if int(pid) != os.getpid() and not _pid_alive(int(pid)):
            found.setdefault(prefix + _MARK, []).append(name)
    return found


def sweep_stale(target: str) -> list[str]:
    """Remove the temporaries of `target` left by ftpatch processes that no longer exist."""
    directory = os.path.dirname(os.path.abspath(target))
    if directory not in _stale:
        _stale[directory] = _dead_temporaries(directory)
    removed = []
    for name in _stale[directory].pop(_temp_prefix(target), []):
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
            temp = os.path.join(directory, f"{_temp_prefix(target)}{os.getpid()}-{secrets.token_hex(4)}")
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
            yield read_fd(path, fd), st.st_mode & 0o7777
            return
        finally:
            os.close(fd)
