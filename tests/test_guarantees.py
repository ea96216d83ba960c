"""The no-loss guarantees: inputs untouched, in-place replacement atomic under failure, signals and races.

See docs/guarantees.md: each guarantee there names its test here.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, PG_OBJECTS, ROOT, run_cli, temporaries

import ftpatch

PIE = FIXTURES / "x86_64-pie.o"


def nopped_bytes(tmp: Path) -> bytes:
    out = tmp / "reference-nop.o"
    ftpatch.patch_file(str(PIE), ftpatch.Action.NOP, output=str(out))
    data = out.read_bytes()
    out.unlink()
    return data


def spawn(*args: str | Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "ftpatch", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.parametrize("name", PG_OBJECTS)
def test_input_untouched_without_in_place(tmp: Path, name: str) -> None:
    src = tmp / name
    shutil.copy(FIXTURES / name, src)
    os.utime(src, ns=(10**9, 10**9))
    before = src.read_bytes()
    for argv in (["scan", src], ["nop", src, "-o", tmp / "n.o"], ["call", src, "-o", tmp / "c.o"]):
        assert run_cli(list(map(str, argv)))[0] == 0
    # A failure as well: the output's directory does not exist.
    assert run_cli(["nop", str(src), "-o", str(tmp / "no" / "x.o")])[0] == 1
    assert src.read_bytes() == before and src.stat().st_mtime_ns == 10**9
    assert temporaries(tmp) == []


def test_failed_in_place_leaves_file_and_mtime(tmp: Path) -> None:
    bad = tmp / "bad.o"
    data = bytearray(PIE.read_bytes())
    data[0x10D] = 0x90  # fib's site no longer holds its call: verification fails
    bad.write_bytes(data)
    os.utime(bad, ns=(10**9, 10**9))
    inode = bad.stat().st_ino
    assert run_cli(["nop", "--in-place", str(bad)])[0] == 3
    assert bad.read_bytes() == data and bad.stat().st_mtime_ns == 10**9 and bad.stat().st_ino == inode
    assert temporaries(tmp) == []


def test_in_place_keeps_mode_and_replaces_inode(tmp: Path) -> None:
    target = tmp / "t.o"
    shutil.copy(PIE, target)
    target.chmod(0o751)
    inode = target.stat().st_ino
    assert run_cli(["nop", "--in-place", str(target)])[0] == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o751
    assert target.stat().st_ino != inode  # a new file renamed over the old, never rewritten in place
    assert target.read_bytes() == nopped_bytes(tmp)


def test_fsync_before_rename_unless_no_fsync(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    fsync = os.fsync

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    files = [tmp / f"{i}.o" for i in range(3)]
    for f in files:
        shutil.copy(PIE, f)
    assert run_cli(["nop", "--in-place", "-j", "1", *map(str, files)])[0] == 0
    # Each new file under its temporary name, before the rename; the directory once, after all of them.
    assert [Path(p).name.split(".ftpatch-")[0] for p in synced] == [".0.o", ".1.o", ".2.o", tmp.name]
    assert synced[-1] == str(tmp)
    synced.clear()
    for f in files:
        shutil.copy(PIE, f)
    assert run_cli(["nop", "--in-place", "-j", "1", "--no-fsync", *map(str, files)])[0] == 0
    assert synced == []
    assert all(f.read_bytes() == nopped_bytes(tmp) for f in files)


def test_hard_link_in_place_keeps_other_names(tmp: Path) -> None:
    a, b = tmp / "a.o", tmp / "b.o"
    shutil.copy(PIE, a)
    os.link(a, b)
    assert run_cli(["nop", "--in-place", str(a)])[0] == 0
    # Like sed -i: the path given gets a new inode, the other name keeps the old bytes.
    assert a.read_bytes() == nopped_bytes(tmp)
    assert b.read_bytes() == PIE.read_bytes()
    assert a.stat().st_nlink == 1 and b.stat().st_nlink == 1


def test_output_symlink_is_replaced_not_followed(tmp: Path) -> None:
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    precious = elsewhere / "precious"
    precious.write_bytes(b"not yours to write\n")
    out = tmp / "out"
    out.mkdir()
    link = out / "link.o"
    link.symlink_to(precious)
    assert run_cli(["nop", str(PIE), "-o", str(link)])[0] == 0
    assert not link.is_symlink() and link.read_bytes() == nopped_bytes(tmp)
    assert precious.read_bytes() == b"not yours to write\n"
    assert os.listdir(elsewhere) == ["precious"]


def test_output_path_never_comes_from_the_file(tmp: Path) -> None:
    # A section named like a path and a symbol named like one change nothing about where ftpatch writes.
    data = bytearray(PIE.read_bytes())
    shstrtab = data.find(b".text.startup\0")
    data[shstrtab : shstrtab + 13] = b"/../../etc/x\0"
    src = tmp / "src.o"
    src.write_bytes(data)
    work = tmp / "work"
    work.mkdir()
    assert run_cli(["nop", str(src), "-o", str(work / "out.o")])[0] == 0
    assert sorted(os.listdir(tmp)) == ["src.o", "work"] and os.listdir(work) == ["out.o"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_batch_leaves_old_or_new(tmp: Path, signum: int) -> None:
    new = nopped_bytes(tmp)
    old = PIE.read_bytes()
    files = [tmp / f"f{i:03}.o" for i in range(300)]
    for f in files:
        f.write_bytes(old)
    proc = spawn("nop", "--in-place", *files)
    deadline = time.monotonic() + 30
    while files[0].read_bytes() == old and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=30)
    states = [f.read_bytes() for f in files]
    assert all(s in (old, new) for s in states), "a file is neither the old nor the new one"
    assert states[0] == new
    # The signal lands mid-batch: some files are done, the rest untouched.
    assert new in states and old in states, "the batch was not interrupted midway"
    if signum == signal.SIGKILL:
        assert proc.returncode == -signum
    else:
        assert proc.returncode == 128 + signum, stderr
        assert stderr.splitlines()[-1] == f"ftpatch: error: interrupted by {signal.Signals(signum).name}"
    if signum != signal.SIGKILL:
        assert temporaries(tmp) == []
    # Whatever happened, running again finishes the batch and sweeps what SIGKILL may have left.
    proc = spawn("nop", "--in-place", *files)
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    assert all(f.read_bytes() == new for f in files)
    assert temporaries(tmp) == []


def test_stale_temporaries_of_dead_processes_are_swept(tmp: Path) -> None:
    target = tmp / "t.o"
    shutil.copy(PIE, target)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp / f".t.o.ftpatch-{dead.pid}-deadbeef"
    live = tmp / f".t.o.ftpatch-{os.getpid()}-cafebabe"  # this test process is alive: not ours to remove
    other = tmp / f".other.o.ftpatch-{dead.pid}-deadbeef"  # another target's: left for its own run
    for p in (stale, live, other):
        p.write_bytes(b"half")
    proc = spawn("nop", "--in-place", target)
    assert proc.wait(timeout=30) == 0
    assert temporaries(tmp) == sorted([live.name, other.name])
    # A run with nothing to write sweeps as well.
    stale.write_bytes(b"half")
    proc = spawn("nop", "--in-place", target)
    assert proc.wait(timeout=30) == 0
    assert not stale.exists()


def test_in_place_waits_for_the_lock(tmp: Path) -> None:
    target = tmp / "t.o"
    shutil.copy(PIE, target)
    with open(target, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = spawn("nop", "--in-place", target)
        time.sleep(1.0)
        assert proc.poll() is None, "ftpatch did not wait for the lock"
        assert target.read_bytes() == PIE.read_bytes()
    assert proc.wait(timeout=30) == 0
    assert target.read_bytes() == nopped_bytes(tmp)


LOOP = """
import sys
import ftpatch
for _ in range(int(sys.argv[3])):
    ftpatch.patch_file(sys.argv[1], ftpatch.Action(sys.argv[2]))
"""


def test_concurrent_nop_and_call_never_corrupt(tmp: Path) -> None:
    target = tmp / "t.o"
    shutil.copy(PIE, target)
    old, new = PIE.read_bytes(), nopped_bytes(tmp)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", LOOP, str(target), action, "40"], env=env, stderr=subprocess.PIPE)
        for action in ("nop", "call")
    ]
    while any(p.poll() is None for p in procs):
        assert target.read_bytes() in (old, new), "a reader saw a file that is neither state"
    for p in procs:
        assert p.wait() == 0, p.stderr.read() if p.stderr else ""
    assert target.read_bytes() in (old, new)
    assert temporaries(tmp) == []


def test_docs_guarantees_name_real_tests() -> None:
    """docs/guarantees.md names a test for each guarantee, and every test any page names exists."""
    import re

    from conftest import DOC_PAGES

    refs = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", (ROOT / "docs" / "guarantees.md").read_text())
    assert len(refs) >= 10
    for page in DOC_PAGES:
        refs += re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", page.read_text())
    for path, name in refs:
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), f"{path}::{name}"
