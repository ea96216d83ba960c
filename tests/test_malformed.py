"""A named corpus of malformed inputs: each is a fixture with bytes poked in, and each gets one exact line.

Every case asserts the whole message, `ftpatch: error: <file>: <what>, <where>`,
the exit code, that the input is unchanged and that nothing was written.
The CLI runs in-process (tests/fuzz/mutate.run_cli) to keep this fast.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, run_cli

import ftpatch

PIE = FIXTURES / "x86_64-pie.o"  # 15 sections at 0xba8, .text [1], .rela.text [2], 0xf68 bytes
I386 = FIXTURES / "i386-pic.o"
SHOFF, SHENT = 0xBA8, 64
SH_OFFSET, SH_SIZE, SH_ENTSIZE = 24, 32, 56  # ELF64 section header field offsets


def poke(tmp: Path, name: str, *edits: tuple[int, str, int], src: Path = PIE, size: int | None = None) -> Path:
    """A copy of `src` with struct-packed values written at offsets, optionally truncated to `size`."""
    data = bytearray(src.read_bytes())
    for offset, fmt, value in edits:
        struct.pack_into("<" + fmt, data, offset, value)
    path = tmp / name
    path.write_bytes(bytes(data[:size]))
    return path


def shdr(index: int, field: int) -> int:
    return SHOFF + index * SHENT + field


def fails(path: Path, line: str, code: int = 1, commands: tuple[str, ...] = ("scan", "nop", "call")) -> None:
    """Every command gives exactly `line` and `code`, and leaves the input and the directory as they were."""
    before = path.read_bytes() if path.is_file() else None
    listing = sorted(os.listdir(path.parent))
    for command in commands:
        argv = [command, str(path)] + ([] if command == "scan" else ["-o", str(path.parent / "out.o")])
        got_code, _out, err = run_cli(argv)
        assert (got_code, err.splitlines()) == (code, [f"ftpatch: error: {line}"]), (command, err)
    assert sorted(os.listdir(path.parent)) == listing
    if before is not None:
        assert path.read_bytes() == before


def test_empty_file(tmp: Path) -> None:
    empty = tmp / "empty.o"
    empty.write_bytes(b"")
    fails(empty, f"{empty}: empty file")


def test_text_file(tmp: Path) -> None:
    text = tmp / "notes.txt"
    text.write_text("#!/bin/sh\necho hello\n")
    fails(text, f"{text}: not an ELF file, no ELF magic at offset 0")


def test_elf_magic_only(tmp: Path) -> None:
    magic = tmp / "magic.o"
    magic.write_bytes(b"\x7fELF")
    fails(magic, f"{magic}: truncated ELF header, file is 4 bytes")


def test_truncated_section_header_table(tmp: Path) -> None:
    short = poke(tmp, "short.o", size=SHOFF + 3 * SHENT)
    fails(short, f"{short}: section header table (15 entries at 0xba8) is truncated, file is 0xc68 bytes, e_shnum")


def test_e_shoff_past_eof(tmp: Path) -> None:
    bad = poke(tmp, "shoff.o", (40, "Q", 0x10000))
    fails(bad, f"{bad}: section header table at 0x10000 is past the end of the file (0xf68 bytes), e_shoff")


def test_e_shstrndx_out_of_range(tmp: Path) -> None:
    bad = poke(tmp, "shstrndx.o", (62, "H", 15))
    fails(bad, f"{bad}: section name table index 15 is out of range (15 sections), e_shstrndx")


def test_section_past_eof(tmp: Path) -> None:
    bad = poke(tmp, "past.o", (shdr(1, SH_SIZE), "Q", 0x10000))
    fails(
        bad, f"{bad}: section [1] (offset 0x40, size 0x10000) extends past the end of the file (0xf68 bytes), sh_size"
    )


@pytest.mark.parametrize("entsize", [0, 16])
def test_relocation_entsize_zero_or_wrong(tmp: Path, entsize: int) -> None:
    bad = poke(tmp, "entsize.o", (shdr(2, SH_ENTSIZE), "Q", entsize))
    fails(bad, f"{bad}: relocation section .rela.text has sh_entsize {entsize}, expected 24")


def _first_site(path: Path) -> ftpatch.Site:
    site = ftpatch.scan(str(path)).sites[0]
    assert site.reloc is not None and site.section == ".text"
    return site


def test_relocation_offset_past_its_section(tmp: Path) -> None:
    site = _first_site(PIE)
    assert site.reloc is not None
    entry = site.reloc.info_offset - 8  # r_offset comes just before r_info
    bad = poke(tmp, "roff.o", (entry, "Q", 0x1000))
    fails(
        bad,
        f"{bad}: site .text+0xffe of 6 bytes does not fit in .text (0x1c5 bytes), relocation .rela.text[{site.reloc.index}]",
    )


def test_site_straddling_the_end_of_its_section(tmp: Path) -> None:
    site = _first_site(PIE)
    assert site.reloc is not None
    # The 6-byte site now starts 3 bytes before the end of .text.
    bad = poke(tmp, "straddle.o", (site.reloc.info_offset - 8, "Q", 0x1C5 - 3 + 2))
    fails(
        bad,
        f"{bad}: site .text+0x1c2 of 6 bytes does not fit in .text (0x1c5 bytes), relocation .rela.text[{site.reloc.index}]",
    )


@pytest.mark.parametrize("first", ["type", "offset"])
def test_the_first_bad_entry_in_table_order_is_reported(tmp: Path, first: str) -> None:
    # x86_64-fentry.o's .rela.text (at 0x618, 24-byte entries): [3] and [4] are R_X86_64_PLT32 against __fentry__.
    fentry = FIXTURES / "x86_64-fentry.o"
    entry = {i: 0x618 + 24 * i for i in (3, 4)}
    not_a_call = 0xB_0000_0001  # R_X86_64_64 against symbol 11, __fentry__
    type_at, offset_at = (3, 4) if first == "type" else (4, 3)
    bad = poke(tmp, "two.o", (entry[type_at] + 8, "Q", not_a_call), (entry[offset_at], "Q", 0x1000), src=fentry)
    if first == "type":
        fails(
            bad,
            f"{bad}: R_X86_64_64 against __fentry__ at .text+0x31 is not a call ftpatch patches (-mcmodel=large, "
            "or a reference that is no call), relocation .rela.text[3]",
        )
    else:
        fails(bad, f"{bad}: site .text+0xfff of 5 bytes does not fit in .text (0x19d bytes), relocation .rela.text[3]")


def test_64_bit_class_with_32_bit_machine(tmp: Path) -> None:
    bad = poke(tmp, "mixed.o", (18, "H", 3))
    fails(bad, f"{bad}: ELFCLASS64 with machine EM_386 (3) is not supported, e_ident[4]")


def test_big_endian(tmp: Path) -> None:
    bad = poke(tmp, "be.o", (5, "B", 2))
    fails(bad, f"{bad}: not little-endian (EI_DATA 2, x86 ELF is ELFDATA2LSB), e_ident[5]")


@pytest.mark.parametrize(
    ("src", "machine", "name"),
    [(I386, 40, "EM_ARM"), (PIE, 183, "EM_AARCH64"), (PIE, 243, "EM_RISCV")],
)
def test_other_machines(tmp: Path, src: Path, machine: int, name: str) -> None:
    bad = poke(tmp, f"{name}.o", (18, "H", machine), src=src)
    fails(bad, f"{bad}: unsupported machine {name} ({machine}), e_machine")


def test_directory(tmp: Path) -> None:
    d = tmp / "dir.o"
    d.mkdir()
    fails(d, f"{d}: is a directory")


def test_nonexistent(tmp: Path) -> None:
    fails(tmp / "nope.o", f"{tmp / 'nope.o'}: no such file")


def test_fifo_does_not_block(tmp: Path) -> None:
    # In a process of its own, with a timeout: a blocking open would hang forever, nobody writes the FIFO.
    fifo = tmp / "fifo.o"
    os.mkfifo(fifo)
    for command in (["scan", fifo], ["nop", fifo, "-o", tmp / "out.o"], ["nop", "--in-place", fifo]):
        proc = subprocess.run(
            [sys.executable, "-m", "ftpatch", *map(str, command)], capture_output=True, text=True, timeout=20
        )
        assert (proc.returncode, proc.stderr) == (1, f"ftpatch: error: {fifo}: not a regular file\n")
    assert sorted(os.listdir(tmp)) == ["fifo.o"]


def test_symlink_reads_through_but_in_place_refuses(tmp: Path) -> None:
    real = tmp / "real.o"
    shutil.copy(PIE, real)
    link = tmp / "link.o"
    link.symlink_to(real)
    assert run_cli(["scan", str(link)])[0] == 0
    assert run_cli(["nop", str(link), "-o", str(tmp / "out.o")])[0] == 0
    code, _, err = run_cli(["nop", "--in-place", str(link)])
    assert (code, err) == (1, f"ftpatch: error: {link}: is a symbolic link, give --in-place the file it points to\n")
    assert link.is_symlink() and real.read_bytes() == PIE.read_bytes()


def test_unreadable_file(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root reads anything, so the EACCES is injected where ftpatch opens its input.
    locked = tmp / "locked.o"
    shutil.copy(PIE, locked)
    real_open = os.open

    def deny(path, flags, *args, **kwargs):
        if os.fspath(path) == str(locked) and not flags & os.O_WRONLY:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    fails(locked, f"{locked}: permission denied, reading")


@pytest.fixture
def mount(tmp: Path):
    """mount(options) -> a fresh tmpfs directory with those options; skips where mounting is not allowed."""
    mounted: list[Path] = []

    def make(options: str) -> Path:
        where = tmp / f"mnt{len(mounted)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


def test_read_only_output_directory(tmp: Path, mount) -> None:
    ro = mount("ro,size=1m")
    out = ro / "out.o"
    code, _, err = run_cli(["nop", str(PIE), "-o", str(out)])
    assert (code, err) == (1, f"ftpatch: error: {out}: read-only file system, writing\n")
    assert os.listdir(ro) == []


def test_full_filesystem(tmp: Path, mount) -> None:
    full = mount("size=64k")
    fd = os.open(full / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    out = full / "out.o"
    code, _, err = run_cli(["nop", str(PIE), "-o", str(out)])
    assert (code, err) == (1, f"ftpatch: error: {out}: no space left on device, writing\n")
    assert os.listdir(full) == ["filler"]


def test_full_filesystem_injected_in_place(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ENOSPC halfway through the temporary's write: the original stays, and so does its mtime.
    target = tmp / "t.o"
    shutil.copy(PIE, target)
    os.utime(target, ns=(10**9, 10**9))

    def enospc(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", enospc)
    code, _, err = run_cli(["nop", "--in-place", str(target)])
    assert (code, err) == (1, f"ftpatch: error: {target}: no space left on device, writing\n")
    assert target.read_bytes() == PIE.read_bytes() and target.stat().st_mtime_ns == 10**9
    assert os.listdir(tmp) == ["t.o"]


MANY_SECTIONS = 70_000


@pytest.fixture(scope="module")
def many_sections(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An object with 70,000+ sections, so e_shnum is 0, e_shstrndx SHN_XINDEX and symbols use .symtab_shndx."""
    d = tmp_path_factory.mktemp("xindex")
    body = "".join(f'"\\t.section .s{i},\\"a\\"\\n\\t.byte {i % 256}\\n"\n' for i in range(MANY_SECTIONS))
    source = d / "many.c"
    # The -pg functions come after the 70,000 sections, so their section indices are above 65,279.
    source.write_text(
        f"__asm__(\n{body});\nint many_f(int x) {{ return x * 3 + 1; }}\nint many_g(int x) {{ return many_f(x) - 2; }}\n"
    )
    obj = d / "many.o"
    subprocess.run(["gcc", "-c", "-O1", "-pg", "-ffunction-sections", source, "-o", obj], check=True)
    return obj


def test_more_than_65535_sections_work(tmp: Path, many_sections: Path) -> None:
    data = many_sections.read_bytes()
    assert struct.unpack_from("<HH", data, 60) == (0, 0xFFFF)  # e_shnum 0, e_shstrndx SHN_XINDEX
    result = ftpatch.scan(str(many_sections))
    assert [(s.function, s.section, s.state.value) for s in result.sites] == [
        ("many_f", ".text.many_f", "call"),
        ("many_g", ".text.many_g", "call"),
    ]
    nopped, back = tmp / "nop.o", tmp / "back.o"
    code, _out, err = run_cli(["nop", str(many_sections), "-o", str(nopped)])
    assert (code, err) == (0, ""), err
    assert [s.state.value for s in ftpatch.scan(str(nopped)).sites] == ["nop", "nop"]
    assert run_cli(["call", str(nopped), "-o", str(back)])[0] == 0
    assert back.read_bytes() == data
    # readelf agrees the nop'd file is still well formed, with the same 70,000+ sections.
    headers = subprocess.run(["readelf", "-h", nopped], capture_output=True, text=True, check=True).stdout
    assert f"Number of section headers:         0 ({MANY_SECTIONS + 16})" in headers


if sys.platform != "linux":  # pragma: no cover - FIFOs, tmpfs and flock are Linux here
    pytestmark = pytest.mark.skip("Linux only")
