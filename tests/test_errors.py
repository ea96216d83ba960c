"""Bad input gets one clear line and a documented exit code, and leaves no file behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import FIXTURES, ftpatch, nop_as_before_records

import ftpatch as lib

PIE = FIXTURES / "x86_64-pie.o"


def copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_flipped_site_bytes_fail_verification(tmp: Path) -> None:
    bad = tmp / "bad.o"
    data = bytearray(PIE.read_bytes())
    # fib's site is at file offset 0x10d: ff 15 00 00 00 00 becomes ud2 and nops.
    data[0x10D : 0x10D + 6] = bytes.fromhex("0f0b90909090")
    bad.write_bytes(data)
    out = tmp / "out.o"
    proc = ftpatch("nop", bad, "-o", out)
    assert proc.returncode == 3
    assert one_error_line(proc.stderr) == (
        f"ftpatch: error: {bad}: fib (.text+0xcd): expected ff:15:00:00:00:00, "
        "actual 0f:0b:90:90:90:90 (ud2; nop; nop; nop; nop)"
    )
    assert not out.exists()
    assert list(tmp.iterdir()) == [bad]
    # The other sites were fine, yet none was written: verify every site before changing any.
    proc = ftpatch("nop", "--in-place", bad)
    assert proc.returncode == 3
    assert bad.read_bytes() == data
    # scan shows the site and says what is wrong with it.
    proc = ftpatch("scan", bad)
    assert proc.returncode == 3
    assert "fib" in proc.stdout and "other" in proc.stdout


def int3_over_fib(nopped: Path) -> None:
    """All int3 over fib's nop'd 6-byte site: no known nop."""
    data = bytearray(nopped.read_bytes())
    data[0x10D : 0x10D + 6] = bytes.fromhex("cccccccccccc")
    nopped.write_bytes(data)


def test_call_on_unexpected_bytes(tmp: Path) -> None:
    nopped = tmp / "nop.o"
    assert ftpatch("nop", PIE, "-o", nopped).returncode == 0
    int3_over_fib(nopped)
    # The entry's record says a 6-byte ff 15 site is there: all int3 is neither it nor a nop.
    proc = ftpatch("call", nopped, "-o", tmp / "x.o")
    assert proc.returncode == 3
    assert one_error_line(proc.stderr) == (
        f"ftpatch: error: {nopped}: fib (.text+0xcd): expected ff:15:00:00:00:00, "
        "actual cc:cc:cc:cc:cc:cc (int3; int3; int3; int3; int3; int3)"
    )
    assert not (tmp / "x.o").exists()
    assert ftpatch("scan", nopped).returncode == 3
    assert ftpatch("nop", nopped, "-o", tmp / "y.o").returncode == 3


def test_call_on_unexpected_bytes_nopped_before_records(tmp: Path) -> None:
    """Zeroed entries with addend -4 and no record: each is named, the one with no nop where its displacement
    ends (int3 over fib's site) as such, and call refuses the file."""
    nopped = tmp / "nop.o"
    nop_as_before_records(PIE, nopped)
    int3_over_fib(nopped)
    proc = ftpatch("call", nopped, "-o", tmp / "x.o")
    assert proc.returncode == 3
    assert one_error_line(proc.stderr) == (
        f"ftpatch: error: {nopped}: .text+0x6: relocation .rela.text[0] has r_info 0 and addend -4, and "
        "0f:1f:44:00:00 ends at its displacement: a site nop'd without the record every nop of this ftpatch writes, "
        "which `call` cannot restore exactly; rebuild the object (and 7 more sites)"
    )
    assert not (tmp / "x.o").exists()
    (result,) = lib.scan_path(str(nopped))
    assert (
        ".text+0xcf: relocation .rela.text[7] has r_info 0 and addend -4, but no known nop ends at its displacement"
        in result.strays
    )
    assert ftpatch("scan", nopped).returncode == 3
    # nop leaves those relocations alone, so it still works.
    assert ftpatch("nop", nopped, "-o", tmp / "y.o").returncode == 0


def test_not_elf(tmp: Path) -> None:
    text = tmp / "notes.txt"
    text.write_text("hello\n")
    proc = ftpatch("nop", text, "-o", tmp / "out.o")
    assert proc.returncode == 1
    assert one_error_line(proc.stderr) == f"ftpatch: error: {text}: not an ELF file, no ELF magic at offset 0"
    assert not (tmp / "out.o").exists()


def test_arm_elf(tmp: Path) -> None:
    arm = copy(PIE, tmp / "arm.o")
    data = bytearray(arm.read_bytes())
    data[4] = 1  # ELFCLASS32
    data[18:20] = (40).to_bytes(2, "little")  # EM_ARM
    arm.write_bytes(data)
    proc = ftpatch("scan", arm)
    assert proc.returncode == 1
    assert one_error_line(proc.stderr) == f"ftpatch: error: {arm}: unsupported machine EM_ARM (40), e_machine"


def test_truncated(tmp: Path) -> None:
    short = tmp / "short.o"
    short.write_bytes(PIE.read_bytes()[:1000])
    proc = ftpatch("nop", short, "-o", tmp / "out.o")
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert line.startswith(f"ftpatch: error: {short}: section header table at ")
    assert "is past the end of the file (0x3e8 bytes), e_shoff" in line
    assert not (tmp / "out.o").exists()


def test_missing_file(tmp: Path) -> None:
    proc = ftpatch("scan", tmp / "nope.o")
    assert proc.returncode == 1
    assert one_error_line(proc.stderr) == f"ftpatch: error: {tmp / 'nope.o'}: no such file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere; see the injected failure below")
def test_unwritable_output_directory(tmp: Path) -> None:
    locked = tmp / "locked"
    locked.mkdir(mode=0o500)
    proc = ftpatch("nop", PIE, "-o", locked / "out.o")
    assert proc.returncode == 1
    assert list(locked.iterdir()) == []


def test_output_directory_missing(tmp: Path) -> None:
    proc = ftpatch("nop", PIE, "-o", tmp / "no" / "out.o")
    assert proc.returncode == 1
    assert one_error_line(proc.stderr) == f"ftpatch: error: {tmp / 'no' / 'out.o'}: no such file or directory, writing"


def test_read_only_filesystem_output(tmp: Path) -> None:
    # /proc is never writable, even for root: the write itself fails.
    proc = ftpatch("nop", PIE, "-o", "/proc/ftpatch-out.o")
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert line.startswith("ftpatch: error: /proc/ftpatch-out.o: ") and line.endswith(", writing")


def test_usage_errors(tmp: Path) -> None:
    a = copy(PIE, tmp / "a.o")
    for args in (
        ["nop", a],
        ["nop", a, "-o", tmp / "x.o", "--in-place"],
        ["nop", a, a, "-o", tmp / "x.o"],
        ["nop", a, "-o", a],
        ["nop", "--nop", "bogus", a, "--in-place"],
    ):
        proc = ftpatch(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert a.read_bytes() == PIE.read_bytes()


def test_lea_is_refused_on_x86_64(tmp: Path) -> None:
    proc = ftpatch("nop", "--nop", "lea", PIE, "-o", tmp / "x.o")
    assert proc.returncode == 1
    assert "nop style lea is not a nop on x86-64" in one_error_line(proc.stderr)


def test_plan_on_mnop_mcount_needs_a_relocation() -> None:
    """The library's plan takes the file as it is: a -mnop-mcount nop has no entry to make it a call with, which
    `patch_file` (and `ftpatch call`) add first (tests/test_nop_mcount.py)."""
    (result,) = lib.scan_path(str(FIXTURES / "x86_64-nop-mcount.o"))
    with pytest.raises(lib.InputError, match="gcc -mnop-mcount left a nop here and no relocation to restore a call"):
        lib.plan(result, lib.Action.CALL)


def test_worst_exit_code_wins_and_good_files_still_patch(tmp: Path) -> None:
    good = copy(PIE, tmp / "good.o")
    text = tmp / "text.o"
    text.write_text("x")
    bad = copy(PIE, tmp / "bad.o")
    data = bytearray(bad.read_bytes())
    data[0x10D] = 0x90
    bad.write_bytes(data)
    proc = ftpatch("nop", "--in-place", text, bad, good)
    assert proc.returncode == 3
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ftpatch: error: ")]
    assert len(errors) == 2
    assert proc.stderr.splitlines()[-1].startswith(
        "ftpatch nop: 3 files, 8 sites patched, 0 already nop, 0 filtered out, 2 failed, "
    )
    assert good.read_bytes() != PIE.read_bytes()
    assert bad.read_bytes() == data


def test_debug_shows_no_traceback_for_expected_errors(tmp: Path) -> None:
    proc = ftpatch("--debug", "scan", tmp / "nope.o")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


def test_overlapping_patches_are_bad_input() -> None:
    # Overlapping sections (the fuzzer makes them) can put a site on top of another site's r_info.
    import ftpatch as lib

    data = bytes(16)
    rewrites = (lib.Rewrite(bytes(5), b"\x90" * 5, (4,)), lib.Rewrite(bytes(4), b"\x01" * 4, (8,)))
    plan = lib.Plan("x.o", lib.Action.NOP, rewrites, 2, 0, 0)
    with pytest.raises(lib.InputError, match=r"^x\.o: two patches overlap at file offset 0x8: sections overlap$"):
        lib.apply(data, plan)
    twice = lib.Plan("x.o", lib.Action.NOP, (lib.Rewrite(bytes(5), b"\x90" * 5, (2, 4)),), 2, 0, 0)
    with pytest.raises(lib.InputError, match=r"^x\.o: two patches overlap at file offset 0x4: sections overlap$"):
        lib.apply(data, twice)
    stale = lib.Plan("x.o", lib.Action.NOP, (lib.Rewrite(b"\x01", b"\x90", (4,)),), 1, 0, 0)
    with pytest.raises(lib.VerifyError, match="bytes at file offset 0x4 are not the ones verified"):
        lib.apply(data, stale)


def test_library_scan_of_an_archive_points_to_scan_path(tmp: Path) -> None:
    import subprocess

    import ftpatch as lib

    archive = tmp / "lib.a"
    subprocess.run(["ar", "rcs", archive, PIE], check=True)
    with pytest.raises(
        lib.InputError, match=r"a static archive, not an ELF file: read it with scan_path, at offset 0$"
    ):
        lib.scan(str(archive))
    (result,) = lib.scan_path(str(archive))
    assert result.path == f"{archive}(x86_64-pie.o)" and len(result.sites) == 8
