"""Thin archives (`ar rcT`, `ar --thin`): scanned member by member, patched where each member lies, and still
linked by ld; `-o`, which cannot write the members, is refused."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from conftest import FIXTURES, PROGRAM_OUTPUT, ftpatch, run

import ftpatch as lib

LONG = "a_member_name_longer_than_sixteen.o"


def thin_archive(tmp: Path) -> tuple[Path, list[Path]]:
    """A thin archive in tmp naming two -pg objects in tmp/objs: prog.c's, and one with a name too long for a header."""
    objs = tmp / "objs"
    objs.mkdir()
    (tmp / "extra.c").write_text("int twice(int x) { return 2 * x; }\nint thrice(int x) { return 3 * x; }\n")
    members = [objs / "prog.o", objs / LONG]
    run("gcc", "-O2", "-pg", "-fno-pie", "-c", FIXTURES / "prog.c", "-o", members[0])
    run("gcc", "-O2", "-pg", "-fno-pie", "-c", tmp / "extra.c", "-o", members[1])
    archive = tmp / "libthin.a"
    run("ar", "rcT", archive, "objs/prog.o", f"objs/{LONG}", cwd=tmp)
    assert archive.read_bytes().startswith(b"!<thin>\n")
    return archive, members


def link_and_run(tmp: Path, archive: Path) -> tuple[str, str]:
    """The program linked against the archive: what it prints, and its disassembly."""
    exe = tmp / "prog"
    run("gcc", "-pg", "-no-pie", archive, "-o", exe)
    workdir = tmp / "run"
    workdir.mkdir(exist_ok=True)
    out = subprocess.run([exe], capture_output=True, text=True, check=True, cwd=workdir).stdout
    return out, run("objdump", "-d", exe)


def header_sizes(archive: Path) -> dict[str, int]:
    """Member file name -> the size its header holds, as `ar tv` prints it (the whole path, for a thin archive)."""
    sizes = {}
    for line in run("ar", "tv", archive).splitlines():
        m = re.match(r"\S+ \d+/\d+\s+(\d+) .* (\S+)$", line)
        assert m, line
        sizes[Path(m[2]).name] = int(m[1])
    return sizes


def test_thin_archive_scan_nop_in_place_link_and_call(tmp: Path) -> None:
    archive, members = thin_archive(tmp)
    pristine = [m.read_bytes() for m in members]
    thin = archive.read_bytes()
    proc = ftpatch("scan", archive)
    assert proc.returncode == 0, proc.stderr
    summaries = [line for line in proc.stdout.splitlines() if not line.startswith(" ")]
    assert summaries == [
        f"{archive}(objs/prog.o): x86_64 ET_REL, 8 sites (8 call, 0 not)",
        f"{archive}(objs/{LONG}): x86_64 ET_REL, 2 sites (2 call, 0 not)",
    ]
    proc = ftpatch("nop", "--in-place", archive)
    assert proc.returncode == 0 and proc.stdout == f"{archive}: 10 patched, 0 already nop, 0 filtered out\n"
    assert archive.read_bytes() == thin  # a nop changes no member's size: the archive stays as it was
    assert all(m.read_bytes() != p for m, p in zip(members, pristine, strict=True))
    out, code = link_and_run(tmp, archive)
    assert out == PROGRAM_OUTPUT and "mcount" not in code
    proc = ftpatch("call", "--in-place", archive)
    assert proc.returncode == 0 and "10 patched" in proc.stdout
    assert [m.read_bytes() for m in members] == pristine
    out, code = link_and_run(tmp, archive)
    assert out == PROGRAM_OUTPUT and "call   401" in code and "<mcount@plt>" in code


def test_record_grows_the_members_and_rewrites_the_headers(tmp: Path) -> None:
    archive, members = thin_archive(tmp)
    assert header_sizes(archive) == {m.name: m.stat().st_size for m in members}
    proc = ftpatch("record", "--in-place", archive)
    assert proc.returncode == 0 and "10 sites recorded in __mcount_loc" in proc.stdout, proc.stderr
    assert all("__mcount_loc" in run("readelf", "-SW", m) for m in members)
    assert header_sizes(archive) == {m.name: m.stat().st_size for m in members}
    out, _ = link_and_run(tmp, archive)
    assert out == PROGRAM_OUTPUT
    # The linked program lists its sites: prog.o's 8 (extra.o's functions are not linked).
    assert "8 sites (8 call, 0 not)" in ftpatch("scan", tmp / "prog").stdout
    # nop --record on a member already recorded leaves the table as it is, and the headers still say its size.
    proc = ftpatch("nop", "--record", "--in-place", archive)
    assert proc.returncode == 0 and "10 patched" in proc.stdout and "2 objects already have __mcount_loc" in proc.stdout
    assert header_sizes(archive) == {m.name: m.stat().st_size for m in members}


def test_output_on_a_thin_archive_is_refused(tmp: Path) -> None:
    archive, members = thin_archive(tmp)
    before = [m.read_bytes() for m in members]
    for action in ("nop", "call", "record"):
        proc = ftpatch(action, archive, "-o", tmp / "out.a")
        assert proc.returncode == 1
        assert proc.stderr == (
            f"ftpatch: error: {archive}: is a thin archive: its members live in other files, which -o cannot write "
            "beside a new archive; use --in-place, which patches each member where the archive points\n"
        )
    assert not (tmp / "out.a").exists() and [m.read_bytes() for m in members] == before


def test_a_member_that_fails_leaves_every_member_as_it_was(tmp: Path) -> None:
    """Every member is verified before any is written: garbage at a site of the second leaves the first as it was."""
    archive, members = thin_archive(tmp)
    site = lib.scan(str(members[1])).sites[0]
    data = bytearray(members[1].read_bytes())
    data[site.file_offset : site.file_offset + 5] = bytes.fromhex("0f0b0f0b90")
    members[1].write_bytes(data)
    before = [m.read_bytes() for m in members]
    proc = ftpatch("nop", "--in-place", archive)
    assert proc.returncode == 3 and f"{archive}(objs/{LONG}): {site.where}: expected e8:00:00:00:00" in proc.stderr
    assert [m.read_bytes() for m in members] == before
    # A member whose file no longer has the size the archive says is refused: the archive is stale.
    shutil.copy(FIXTURES / "x86_64-nopie.o", members[1])
    proc = ftpatch("scan", archive)
    assert proc.returncode == 1 and f"member objs/{LONG} is " in proc.stderr and "make it again (ar rcT)" in proc.stderr
