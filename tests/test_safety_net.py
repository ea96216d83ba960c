"""The check on the new bytes runs on every path that writes a file, whatever the scan concluded.

The scanners are complete on every corpus we know, so these tests make one
miss a site (fault injection): the CLI runs as a user runs it, in a process of
its own, with `ftpatch.scan.scan_elf` wrapped to drop or falsify a site before
the plan is made. After `nop` the independent search must find the call left
live; after `call`, a site written wrong. Either way: exit 1 and nothing written.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, run

# Wraps the scanner, then runs the command line exactly as `python -m ftpatch` does.
INJECT = """
import dataclasses, importlib, sys

scan = importlib.import_module("ftpatch.scan")  # the module, not the function ftpatch exports by that name

mode = sys.argv.pop(1)
real = scan.scan_elf


def faulty(*args, **kwargs):
    result = real(*args, **kwargs)
    if not result.groups or mode not in ("drop", "falsify"):
        return result
    first, *rest = result.groups
    if mode == "drop":  # the scanner misses the first site of its first group
        first = first.subset([i != 0 for i in range(len(first))])
    elif first.rels:  # an object: the entry to restore names the wrong symbol
        word = result.arch.word
        wrong = (int.from_bytes(first.call_entry[:word], "little") ^ (1 << result.arch.r_sym_shift)).to_bytes(word, "little")
        first = dataclasses.replace(first, call_entry=wrong + first.call_entry[word:])
    else:  # a linked file: the call to restore goes one byte too far
        calls = tuple(c[:-4] + (int.from_bytes(c[-4:], "little") + 1).to_bytes(4, "little") for c in first.calls)
        first = dataclasses.replace(first, calls=calls)
    return dataclasses.replace(result, groups=(first, *rest))


scan.scan_elf = faulty
from ftpatch.cli import main

sys.argv[0] = "ftpatch"
main()
"""


def faulty_ftpatch(mode: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", INJECT, mode, *map(str, args)], capture_output=True, text=True)


OBJECT, PROGRAM = FIXTURES / "x86_64-pie.o", FIXTURES / "x86_64-pie-prog"
I386 = FIXTURES / "i386-pic.o"


@pytest.mark.parametrize("fixture", [OBJECT, I386, PROGRAM], ids=lambda p: p.name)
def test_a_site_the_scanner_missed_is_caught_after_the_nop(tmp_path: Path, fixture: Path) -> None:
    out = tmp_path / "out"
    proc = faulty_ftpatch("drop", "nop", fixture, "-o", out)
    assert proc.returncode == 1, proc.stderr
    assert "would stay live after the nop; nothing was written" in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"ftpatch: error: {fixture}: ")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_in_place_batches_and_archive_members_are_checked_too(tmp_path: Path) -> None:
    """--in-place over several files in parallel workers, and an archive whose members are each checked."""
    copies = [tmp_path / f"{i}-{p.name}" for i, p in enumerate((OBJECT, PROGRAM, I386))]
    for src, dst in zip((OBJECT, PROGRAM, I386), copies, strict=True):
        shutil.copyfile(src, dst)
    archive = tmp_path / "libsites.a"
    run("ar", "rcs", archive, FIXTURES / "x86_64-nopie.o", FIXTURES / "x86_64-fentry.o")
    before = {p: p.read_bytes() for p in [*copies, archive]}
    proc = faulty_ftpatch("drop", "nop", "--in-place", "-j", "2", *copies, archive)
    assert proc.returncode == 1
    assert proc.stderr.count("would stay live after the nop; nothing was written") == 4, proc.stderr
    assert f"{archive}(x86_64-nopie.o): " in proc.stderr
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.parametrize("fixture", [OBJECT, I386, PROGRAM], ids=lambda p: p.name)
def test_a_call_written_wrong_is_caught_before_the_file_is(tmp_path: Path, fixture: Path) -> None:
    """After `call`, every restored site must be a live call to a target when the new bytes are read again."""
    nopped, out = tmp_path / "nopped", tmp_path / "out"
    assert faulty_ftpatch("none", "nop", fixture, "-o", nopped).returncode == 0  # an unknown mode injects nothing
    proc = faulty_ftpatch("falsify", "call", nopped, "-o", out)
    assert proc.returncode == 1, proc.stderr
    assert "is not a live call to a profiling target when the file is read again" in proc.stderr
    assert "; nothing was written" in proc.stderr and not out.exists()


def test_without_a_fault_the_same_runs_succeed(tmp_path: Path) -> None:
    """The injection itself changes nothing but the scan: the same commands pass without it."""
    for fixture in (OBJECT, I386, PROGRAM):
        nopped, back = tmp_path / f"{fixture.name}.nop", tmp_path / f"{fixture.name}.back"
        assert faulty_ftpatch("none", "nop", fixture, "-o", nopped).returncode == 0
        assert faulty_ftpatch("none", "call", nopped, "-o", back).returncode == 0
        assert back.read_bytes() == fixture.read_bytes()
