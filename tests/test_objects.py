"""Objects: nop then call gives back the identical file, for every compiler, flag, nop style and strip.

The objects are built here from fixtures/prog.c with gcc 12 and clang 14. A nop'd object must carry everything
`call` needs, whatever was nop'd and whatever is left in its symbol table (docs/forms-and-nops.md, "How a nop'd object keeps its
relocation"), and must still link with bfd, gold and lld, as PIE, -no-pie, -shared and -static, and run.
"""

from __future__ import annotations

import itertools
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, HIDES_A_NOP, PROGRAM_OUTPUT, ftpatch, nop_as_before_records, readelf_relocs, run

import ftpatch as lib
from ftpatch.elf import ElfFile
from ftpatch.scan import scan_data
from ftpatch.x86 import ARCHES, styles_for

SOURCE = FIXTURES / "prog.c"
# name -> flags; each is built by gcc and by clang.
FLAGS = {
    "pie": [],
    "nopie": ["-fno-pie"],
    "pic": ["-fPIC"],
    "fentry": ["-mfentry"],
    "fentry-nopie": ["-mfentry", "-fno-pie"],
    "cet": ["-fcf-protection", "-mfentry", "-fno-pie"],
    "unrelaxed": ["-Wa,-mrelax-relocations=no"],
    "m32-nopie": ["-m32", "-fno-pie"],
    "m32-pic": ["-m32", "-fPIC"],
    "m32-unrelaxed": ["-m32", "-Wa,-mrelax-relocations=no"],
}
BUILDS = [(cc, name) for cc in ("gcc", "clang") for name in FLAGS]
STRIPS = {"as-built": None, "strip-unneeded": ["strip", "--strip-unneeded"], "debug": None}


def build(tmp: Path, cc: str, name: str, strip: str) -> Path:
    obj = tmp / f"{cc}-{name}-{strip}.o"
    run(cc, "-O2", "-pg", *(["-g"] if strip == "debug" else []), *FLAGS[name], "-c", SOURCE, "-o", obj)
    if command := STRIPS[strip]:
        run(*command, obj)
    return obj


def nopped(data: bytes, path: str, style: str, only: list[str] = []) -> bytes:  # noqa: B006 - never mutated
    (result,) = scan_data(path, data)
    return lib.apply(data, lib.plan(result, lib.Action.NOP, nop=style, only=only))


def restored(data: bytes, path: str) -> bytes:
    (result,) = scan_data(path, data)
    return lib.apply(data, lib.plan(result, lib.Action.CALL))


@pytest.mark.parametrize("strip", STRIPS)
@pytest.mark.parametrize(("cc", "name"), BUILDS, ids=[f"{cc}-{name}" for cc, name in BUILDS])
def test_call_gives_back_the_identical_object(tmp: Path, cc: str, name: str, strip: str) -> None:
    obj = build(tmp, cc, name, strip)
    data = obj.read_bytes()
    (result,) = lib.scan_path(str(obj))
    assert len(result.sites) == 8 and {s.state for s in result.sites} == {lib.State.CALL}
    types = {t for _, _, t, sym in readelf_relocs(obj) if sym in ("mcount", "__fentry__")}
    for style in styles_for(result.arch):
        for only in ([], ["fib", "main"]):  # every site, and a part: the rest stay live
            nop = nopped(data, str(obj), style.name, only)
            (again,) = scan_data(str(obj), nop)
            assert sum(s.state is lib.State.NOP for s in again.sites) == (2 if only else 8)
            assert {t for _, _, t, sym in readelf_relocs_of(tmp, nop) if sym in ("mcount", "__fentry__")} <= types
            assert restored(nop, str(obj)) == data, (style.name, only)


def readelf_relocs_of(tmp: Path, data: bytes) -> list[tuple[str, int, str, str]]:
    path = tmp / "readelf.o"
    path.write_bytes(data)
    return readelf_relocs(path)


LINKS = {
    "x86_64": {"pie": ["-pie"], "no-pie": ["-no-pie"], "static": ["-static"]},
    "i386": {"pie": ["-m32", "-pie"], "no-pie": ["-m32", "-no-pie"], "static": ["-m32", "-static"]},
}


@pytest.mark.parametrize("linker", ["bfd", "gold", "lld"])
@pytest.mark.parametrize(("cc", "name"), [("gcc", "pie"), ("clang", "pie"), ("gcc", "m32-pic"), ("clang", "m32-pic")])
def test_nopped_objects_link_everywhere_and_run(tmp: Path, cc: str, name: str, linker: str) -> None:
    """Every nop style, linked by each linker as PIE, -no-pie and -static, and into a shared library."""
    obj = build(tmp, cc, name, "as-built")
    arch = "i386" if name.startswith("m32") else "x86_64"
    for style in styles_for(next(a for a in ARCHES.values() if a.name == arch)):
        nop = tmp / f"{style.name}.o"
        nop.write_bytes(nopped(obj.read_bytes(), str(obj), style.name))
        for link, flags in LINKS[arch].items():
            exe, workdir = tmp / f"{style.name}-{link}", tmp / f"run-{style.name}-{link}"
            proc = subprocess.run(
                [cc, "-pg", f"-fuse-ld={linker}", *flags, nop, "-o", exe], capture_output=True, text=True
            )
            assert proc.returncode == 0 and proc.stderr == "", (style.name, link, proc.stderr)
            workdir.mkdir()
            assert run(exe, cwd=workdir) == PROGRAM_OUTPUT
        library = tmp / f"lib{style.name}.so"
        flags = ["-m32"] if arch == "i386" else []
        proc = subprocess.run(
            [cc, *flags, "-shared", f"-fuse-ld={linker}", nop, "-o", library], capture_output=True, text=True
        )
        assert proc.returncode == 0 and proc.stderr == "", (style.name, proc.stderr)
        assert "TEXTREL" not in run("readelf", "-d", library)


def test_entries_zeroed_without_a_record_are_refused_not_guessed(tmp: Path) -> None:
    """An entry with r_info 0 and addend -4 (RELA), or r_info 0 and an untagged nop (REL), says nothing of the
    call it was: no release of ftpatch writes one, so `call` and `scan` refuse it, naming it, and write nothing."""
    for name in ("x86_64-pie.o", "x86_64-nopie.o", "x86_64-fentry.o", "i386-nopie.o", "i386-pic.o"):
        for style, only in itertools.product(("p6", "o16", "jmp"), (None, {1, 4})):
            old, out = tmp / f"old-{name}", tmp / f"out-{name}"
            nop_as_before_records(FIXTURES / name, old, style, only)
            (result,) = lib.scan_path(str(old))
            assert len(result.strays) == (len(only) if only else 8), (name, style, only)
            assert all("which `call` cannot restore exactly; rebuild the object" in s for s in result.strays)
            proc = ftpatch("call", old, "-o", out)
            assert proc.returncode == 3 and "cannot restore exactly; rebuild the object" in proc.stderr
            assert proc.stderr.count("\n") == 1 and not out.exists()
            assert ftpatch("scan", old).returncode == 3


def test_clang_i386_plt32_comes_back_as_plt32_and_links_as_pie(tmp: Path) -> None:
    """Before records, a fully nop'd clang -m32 object came back with gcc's R_386_PC32, which makes bfd write a
    DT_TEXTREL into a PIE and lld refuse the link."""
    obj = build(tmp, "clang", "m32-pic", "as-built")
    back = tmp / "back.o"
    assert ftpatch("nop", obj, "-o", tmp / "nop.o").returncode == 0
    assert ftpatch("call", tmp / "nop.o", "-o", back).returncode == 0
    assert back.read_bytes() == obj.read_bytes()
    assert {t for _, _, t, sym in readelf_relocs(back) if sym == "mcount"} == {"R_386_PLT32"}
    for linker in ("bfd", "lld"):
        proc = subprocess.run(
            ["clang", "-m32", "-pg", f"-fuse-ld={linker}", back, "-o", tmp / f"prog-{linker}"],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert "TEXTREL" not in run("readelf", "-d", tmp / f"prog-{linker}")


@pytest.mark.parametrize("linker", ["bfd", "lld"])
def test_a_partial_link_keeps_what_call_needs(tmp: Path, linker: str) -> None:
    """bfd's and lld's `ld -r` keep the NONE entries and their addends: call restores the partially linked object
    to what `ld -r` makes of the original objects."""
    a, b = tmp / "a.o", tmp / "b.o"
    run("gcc", "-O2", "-pg", "-c", SOURCE, "-o", a)
    (tmp / "b.c").write_text("int twice(int x) { return 2 * x; }\n")
    run("gcc", "-O2", "-pg", "-c", tmp / "b.c", "-o", b)
    for obj in (a, b):
        assert ftpatch("nop", "--in-place", obj).returncode == 0
    partial, back = tmp / "partial.o", tmp / "back.o"
    run(f"ld.{linker}", "-r", a, b, "-o", partial)
    assert ftpatch("call", partial, "-o", back).returncode == 0
    for obj in (a, b):
        assert ftpatch("call", "--in-place", obj).returncode == 0
    reference = tmp / "reference.o"
    run(f"ld.{linker}", "-r", a, b, "-o", reference)
    assert readelf_relocs(back) == readelf_relocs(reference)
    assert back.read_bytes() == reference.read_bytes()


def test_a_partial_link_by_gold_has_lost_what_call_needs(tmp: Path) -> None:
    """gold's `ld -r` drops NONE entries: the nops are still there, their relocations are not; call refuses."""
    obj, partial = tmp / "a.o", tmp / "partial.o"
    run("gcc", "-O2", "-pg", "-mfentry", "-c", SOURCE, "-o", obj)
    assert ftpatch("nop", "--in-place", obj).returncode == 0
    run("ld.gold", "-r", obj, "-o", partial)
    assert not [r for r in readelf_relocs(partial) if r[2] == "R_X86_64_NONE"]
    proc = ftpatch("call", partial, "-o", tmp / "back.o")
    assert proc.returncode == 3
    assert "a nop ftpatch writes, with no relocation entry to restore" in proc.stderr
    assert not (tmp / "back.o").exists()


@pytest.mark.parametrize(
    ("flags", "emulation", "nop"),
    [
        (["-pg"], "elf_x86_64", "66:0f:1f:44:00:f2"),  # ff 15 after the prologue
        (["-pg", "-fno-pie"], "elf_x86_64", "0f:1f:44:00:f1"),  # e8 after the prologue
        (["-m32", "-pg"], "elf_i386", "66:26:8d:74:66:00"),  # ff 93, lea with its tag
        (["-pg", "-mfentry"], "elf_x86_64", "0f:1f:44:00:08"),  # at the entry
    ],
)
def test_call_after_gold_dropped_the_entries_refuses_and_says_what_works(
    tmp: Path, flags: list[str], emulation: str, nop: str
) -> None:
    """A library's objects nop'd, then partially linked by gold: every nop of ftpatch's is still there and its
    entry is gone. `call` must not report success over them: it refuses, names what was lost, and what works."""
    objects = []
    for source, extra in ((SOURCE, []), (FIXTURES / "forms.c", ["-Dmain=forms_main"])):
        obj = tmp / f"{source.stem}.o"
        run("gcc", "-O2", *flags, *extra, "-c", source, "-o", obj)
        objects.append(obj)
    sites = sum(len(lib.scan(str(obj)).sites) for obj in objects)
    assert ftpatch("nop", "--in-place", *objects).returncode == 0
    partial = tmp / "partial.o"
    run("ld.gold", "-m", emulation, "-r", *objects, "-o", partial)
    assert not [r for r in readelf_relocs(partial) if r[2] in ("R_X86_64_NONE", "R_386_NONE")]
    assert run("objdump", "-d", partial).count(nop.replace(":", " ")) == sites
    proc = ftpatch("call", partial, "-o", tmp / "back.o")
    assert proc.returncode == 3 and not (tmp / "back.o").exists()
    (line,) = proc.stderr.splitlines()
    assert f"holds {nop}" in line and "a nop ftpatch writes, with no relocation entry to restore" in line
    assert "a partial link by gold (`ld.gold -r`) drops the NONE entries" in line
    assert "run `ftpatch call` on the objects before the partial link, or link them with bfd (`ld -r`)" in line
    assert line.endswith(f"(and {sites - 1} more sites)")
    # What the message says works does.
    for obj in objects:
        assert ftpatch("call", "--in-place", obj).returncode == 0
    run("ld.gold", "-m", emulation, "-r", *objects, "-o", partial)
    assert ftpatch("scan", partial).returncode == 0


@pytest.mark.parametrize(("cc", "r_type"), [("gcc", "R_X86_64_PLTOFF64"), ("clang", "R_X86_64_GOT64")])
def test_the_large_code_model_is_refused_as_unsupported(tmp: Path, cc: str, r_type: str) -> None:
    obj = tmp / "large.o"
    run(cc, "-O2", "-pg", "-mcmodel=large", "-c", SOURCE, "-o", obj)
    for action in ("nop", "call"):
        proc = ftpatch(action, obj, "-o", tmp / "out.o")
        assert proc.returncode == 1
        assert f"{r_type} against mcount at .text+" in proc.stderr
        assert "is not a call ftpatch patches (-mcmodel=large" in proc.stderr
    assert not (tmp / "out.o").exists()


def test_nop_bytes_across_two_instructions_are_no_lost_site(tmp: Path) -> None:
    """An object whose code holds ftpatch's nop across two instructions restores: only a nop that decoding lands
    on, with no relocation entry, is a site whose entry was lost."""
    (tmp / "hides.c").write_text(HIDES_A_NOP)
    obj = tmp / "hides.o"
    run("gcc", "-m32", "-O2", "-pg", "-c", tmp / "hides.c", "-o", obj)
    nop, back = tmp / "nop.o", tmp / "back.o"
    assert ftpatch("nop", obj, "-o", nop).returncode == 0
    proc = ftpatch("call", nop, "-o", back)
    assert proc.returncode == 0, proc.stderr
    assert back.read_bytes() == obj.read_bytes()


def test_reread_keeps_the_headers_only_where_their_bytes_are_unchanged(tmp: Path) -> None:
    """The proof reads a plan's new bytes with ElfFile.reread: the section headers are the original's when the
    bytes they were read from are the same (a nop changes only code), and are read again when they differ."""
    obj = build(tmp, "gcc", "pie", "as-built")
    data = obj.read_bytes()
    elf = ElfFile(data)
    nop = elf.reread(nopped(data, str(obj), "p6"))
    assert nop.data != data
    assert nop.sections is elf.sections
    assert (nop.e_type, nop.arch) == (elf.e_type, elf.arch)

    # A section's name changed in .shstrtab, one of the bytes the headers were read from: read again.
    names = next(s for s in elf.sections if s.name == ".shstrtab")
    at = data.index(b".text\0", names.sh_offset, names.sh_offset + names.sh_size)
    renamed = data[:at] + b".tezt" + data[at + 5 :]
    again = elf.reread(renamed)
    assert again.sections is not elf.sections
    assert ".tezt" in [s.name for s in again.sections]

    # Bytes whose headers no longer check are refused as ElfFile refuses them.
    moved = bytearray(data)
    struct.pack_into("<Q", moved, 0x28, len(data))  # e_shoff of ELFCLASS64: past the end of the file
    with pytest.raises(lib.InputError, match=r"section header table at 0x[0-9a-f]+ is past the end of the file"):
        elf.reread(bytes(moved))
