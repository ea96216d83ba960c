"""Killed runs: what a SIGKILLed run leaves behind, the next run removes at once.

A SIGKILLed worker stays a zombie until its parent, or init, reaps it; in a
container whose PID 1 never reaps, it stays one for ever. The kill test makes
this process a child subreaper that reaps nothing until the test ends, so the
killed runs' workers are zombies under it when the next run starts, as under
such an init. See docs/guarantees.md.
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import FIXTURES, RELOCATED, ftpatch, temporaries

from ftpatch import Action, patch_file, scan, write

PIE = FIXTURES / "x86_64-pie.o"
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h

# A process whose first thread returns while a second one runs on: /proc shows it as a zombie.
FIRST_THREAD_RETURNS = """
import ctypes, threading, time
threading.Thread(target=time.sleep, args=(60,)).start()
ctypes.CDLL(None).pthread_exit(None)
"""


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3, the state, on (comm ends at the last ')'); None once the process is reaped."""
    try:
        line = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return line.rpartition(b")")[2].decode().split()


def start_time(pid: int) -> int:
    fields = stat_fields(pid)
    assert fields is not None, f"process {pid} is gone"
    return int(fields[19])


def processes(where: Callable[[list[str]], bool]) -> dict[int, str]:
    """The state of every process whose /proc/PID/stat fields (from field 3 on) satisfy `where`."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat_fields(int(entry))) is not None and where(fields):
            found[int(entry)] = fields[0]
    return found


def our_zombies() -> set[int]:
    """The children of this process that have exited and that nothing has reaped."""
    return {pid for pid, state in processes(lambda f: int(f[1]) == os.getpid()).items() if state == "Z"}


def wait_until(done: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.005)


def zombie() -> subprocess.Popen[bytes]:
    """A child that has exited, which nothing reaps until the caller waits for it."""
    child = subprocess.Popen(["true"])
    wait_until(lambda: (stat_fields(child.pid) or ["?"])[0] == "Z", "a zombie")
    return child


def temp_name(target: str, pid: int, start: int | None = None, token: str = "deadbeef") -> str:
    """A temporary's name as ftpatch writes it; without `start`, as versions before the start time wrote it."""
    writer = f"{pid}" if start is None else f"{pid}-{start}"
    return f".{target}.ftpatch-{writer}-{token}"


def writer_ids(name: str) -> list[int]:
    """The PID, and the start time if the name holds one, of a temporary's writer."""
    return [int(i) for i in name.rpartition(".ftpatch-")[2].split("-")[:-1]]


@pytest.fixture
def subreaper() -> Iterator[list[subprocess.Popen[bytes]]]:
    """This process as the reaper of its orphaned descendants, reaping none of them until the test ends.

    The test puts the runs it kills in the list: held there, their Popen
    objects do not reap them behind the test's back.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0, os.strerror(ctypes.get_errno())
    killed: list[subprocess.Popen[bytes]] = []
    try:
        yield killed
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        groups = {proc.pid for proc in killed}
        for proc in killed:
            proc.kill()
            proc.wait()
        # The killed runs' workers, which were reparented here.
        for pid in processes(lambda f: int(f[1]) == os.getpid() and int(f[2]) in groups):
            os.waitpid(pid, 0)


def group_states(pgid: int) -> dict[int, str]:
    return processes(lambda f: int(f[2]) == pgid)


def kill_mid_batch(argv: list[str], build: Path, rng: random.Random, killed: list[subprocess.Popen[bytes]]) -> int:
    """Start `ftpatch argv` as a process group of its own, SIGKILL the group at a random moment once it writes
    in `build`, and wait until every process in it has died; return the group's id."""
    before = set(temporaries(build))
    proc = subprocess.Popen([sys.executable, "-m", "ftpatch", *argv], stderr=subprocess.DEVNULL, start_new_session=True)
    killed.append(proc)
    wait_until(lambda: set(temporaries(build)) - before, "the batch to write")
    time.sleep(rng.uniform(0, 0.25))
    os.killpg(proc.pid, signal.SIGKILL)
    wait_until(lambda: set(group_states(proc.pid).values()) == {"Z"}, "the killed group to die")
    return proc.pid


def test_killed_batches_leave_nothing_to_the_next_run(tmp: Path, subreaper: list[subprocess.Popen[bytes]]) -> None:
    old = {name: (FIXTURES / name).read_bytes() for name in RELOCATED}
    new = {}
    for name in RELOCATED:
        patch_file(str(FIXTURES / name), Action.NOP, output=str(tmp / name))
        new[name] = (tmp / name).read_bytes()
    build = tmp / "build"
    build.mkdir()
    kinds = {}
    for i in range(100):
        for name in RELOCATED:
            kinds[build / f"m{i:03}-{name}"] = name
            shutil.copy(FIXTURES / name, build / f"m{i:03}-{name}")
    files = list(kinds)
    rng = random.Random()
    history: list[str] = []  # what each kill left behind, for the failure messages
    deadline = time.monotonic() + 30
    while True:
        # nop and call in turn, so that every run finds files to write.
        action = ("nop", "call")[len(subreaper) % 2]
        group = kill_mid_batch([action, "-q", "--in-place", "-j", "2", *files], build, rng, subreaper)
        assert all(f.read_bytes() in (old[kinds[f]], new[kinds[f]]) for f in files), "a file is a mix"
        zombies = our_zombies()
        left = temporaries(build)
        of_zombies = [name for name in left if writer_ids(name)[0] in zombies]
        history.append(f"{action} killed: {len(zombies)} zombies, {len(of_zombies)} of {len(left)} temporaries theirs")
        if (len(subreaper) >= 8 and of_zombies) or time.monotonic() > deadline:
            break
    assert zombies >= group_states(group).keys(), "a killed process was reaped before the next run"
    assert of_zombies, f"no kill left the next run a zombie's temporary: {history}"
    for name in of_zombies:
        pid, start = writer_ids(name)
        assert start == start_time(pid), f"{name} does not name its writer's start time"
    # The next run, while the killed workers are still zombies.
    final = ftpatch("nop", "-q", "--in-place", "-j", "2", *files)
    assert final.returncode == 0, final.stderr
    assert temporaries(build) == [], history
    assert all(f.read_bytes() == new[kinds[f]] for f in files)
    assert our_zombies() >= zombies, "the zombies were reaped: the run did not face them"


def test_zombies_and_reused_pids_are_gone_live_writers_stay(tmp: Path) -> None:
    target = tmp / "t.o"
    shutil.copy(PIE, target)
    dead = zombie()
    # A comm that misleads a parser splitting /proc/PID/stat at the first ')': it is asleep, not a zombie.
    odd = tmp / "a) Z 1 2 (b"
    odd.symlink_to(shutil.which("sleep") or "/bin/sleep")
    live = [subprocess.Popen(["sleep", "60"]), subprocess.Popen([odd, "60"])]
    threads_left = subprocess.Popen([sys.executable, "-c", FIRST_THREAD_RETURNS])
    try:
        wait_until(lambda: (stat_fields(threads_left.pid) or ["?"])[0] == "Z", "the first thread to return")
        wait_until(lambda: all((stat_fields(p.pid) or ["?"])[0] == "S" for p in live), "sleep to sleep")
        assert Path(f"/proc/{live[1].pid}/comm").read_text() == f"{odd.name}\n"
        gone = [
            temp_name("t.o", dead.pid),
            temp_name("t.o", dead.pid, start_time(dead.pid)),
            temp_name("t.o", live[0].pid, start_time(live[0].pid) + 1),  # its PID, another process
        ]
        stay = [
            *(temp_name("t.o", p.pid) for p in live),
            *(temp_name("t.o", p.pid, start_time(p.pid), "cafebabe") for p in live),
            temp_name("t.o", threads_left.pid, start_time(threads_left.pid)),
            temp_name("t.o", os.getpid(), start_time(os.getpid())),
            ".t.o.ftpatch-12x-deadbeef",  # not a name ftpatch writes
        ]
        for name in gone + stay:
            (tmp / name).write_bytes(b"half")
        result = ftpatch("nop", "--in-place", target)
        assert result.returncode == 0, result.stderr
        assert temporaries(tmp) == sorted(stay)
    finally:
        for proc in [dead, *live, threads_left]:
            proc.kill()
            proc.wait()


def test_without_proc_a_pid_that_exists_is_alive(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As when /proc is missing or shows another pid namespace: only the PID is written and judged.
    monkeypatch.setattr(write, "_own_start", lambda pid: None)
    target = tmp / "t.o"
    shutil.copy(PIE, target)
    dead, gone = zombie(), subprocess.Popen(["true"])
    gone.wait()
    try:
        stay = temp_name("t.o", dead.pid)
        for name in (stay, temp_name("t.o", gone.pid)):
            (tmp / name).write_bytes(b"half")
        written = []
        replace = os.replace

        def recording(src: str, dst: str) -> None:
            written.append(Path(src).name)
            replace(src, dst)

        monkeypatch.setattr(os, "replace", recording)
        patch_file(str(target), Action.NOP)
        assert temporaries(tmp) == [stay]
        assert [len(writer_ids(name)) for name in written] == [1], written
    finally:
        dead.wait()


@pytest.mark.parametrize("action", ["nop", "call"])
def test_every_file_given_is_swept_whatever_becomes_of_it(tmp: Path, action: str) -> None:
    nopped = tmp / "nopped.o"
    patch_file(str(PIE), Action.NOP, output=str(nopped))
    before, after = (PIE, nopped) if action == "nop" else (nopped, PIE)
    build = tmp / "build"
    build.mkdir()
    fib = next(site for site in scan(str(before)).sites if site.function == "fib")
    refused = bytearray(before.read_bytes())
    refused[fib.file_offset + 2] = 0xCC  # fib's site holds neither its call nor a nop: verification fails
    files = {
        "written.o": before.read_bytes(),
        "already.o": after.read_bytes(),
        "refused.o": bytes(refused),
        "not-elf.o": b"not an object\n",
    }
    for name, data in files.items():
        (build / name).write_bytes(data)
    out = tmp / "out"
    out.mkdir()
    dead = zombie()
    try:
        for directory, name in [*((build, name) for name in files), (out, "o.o")]:
            (directory / temp_name(name, dead.pid)).write_bytes(b"half")
            (directory / temp_name(name, dead.pid, start_time(dead.pid))).write_bytes(b"half")
        result = ftpatch(action, "--in-place", "-j", "2", *(build / name for name in files))
        assert result.returncode == 3, result.stderr
        assert temporaries(build) == []
        assert (build / "refused.o").read_bytes() == files["refused.o"]
        assert (build / "written.o").read_bytes() == after.read_bytes()
        result = ftpatch(action, before, "-o", out / "o.o")
        assert result.returncode == 0, result.stderr
        assert temporaries(out) == []
    finally:
        dead.wait()


def test_long_lived_process_sweeps_again(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(write, "monotonic", lambda: clock[0])
    target = tmp / "t.o"
    shutil.copy(PIE, target)
    dead = []
    try:
        for hour in range(3):
            clock[0] = hour * 3600.0
            patch_file(str(target), Action.NOP)  # lists the directory
            dead.append(zombie())
            stale = tmp / temp_name("t.o", dead[-1].pid, start_time(dead[-1].pid))
            stale.write_bytes(b"half")  # left after the listing
            clock[0] += write.LISTING_TTL / 2
            patch_file(str(target), Action.CALL)
            assert stale.exists(), "the listing was not kept: this test no longer controls when it is made"
            clock[0] += write.LISTING_TTL
            patch_file(str(target), Action.NOP)
            assert temporaries(tmp) == [], f"hour {hour}"
    finally:
        for proc in dead:
            proc.wait()
