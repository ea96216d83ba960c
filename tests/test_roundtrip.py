"""nop then call gives back the identical file, and nop changes only sites and their relocation entries."""

from __future__ import annotations

import hashlib
from pathlib import Path

import capstone
import pytest
from conftest import FIXTURES, OBJECTS, PG_OBJECTS, RELOCATED, TARGETS, ftpatch, readelf_relocs
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

STYLES = ["p6", "o16", "jmp", "lea"]


def styles_for(name: str) -> list[str]:
    x86_64, _ = OBJECTS[name]
    return [s for s in STYLES if not (x86_64 and s == "lea")]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def allowed_ranges(path: Path) -> tuple[list[range], list[range]]:
    """Site bytes, and the r_info (with the r_addend on RELA) of every target relocation, found with
    pyelftools, not ftpatch."""
    sites, infos = [], []
    with path.open("rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        info_at = 8 if elf.elfclass == 64 else 4
        for rel in elf.iter_sections():
            if not isinstance(rel, RelocationSection):
                continue
            target = elf.get_section(rel["sh_info"])
            for i, r in enumerate(rel.iter_relocations()):
                if symtab.get_symbol(r["r_info_sym"]).name not in TARGETS:
                    continue
                disp = 1 if r["r_info_type"] in (2, 4) else 2  # PC32/PLT32: e8; GOT forms: ff 15 / ff 93
                start = target["sh_offset"] + r["r_offset"] - disp
                sites.append(range(start, start + disp + 4))
                entry = rel["sh_offset"] + i * rel["sh_entsize"] + info_at
                infos.append(range(entry, entry + info_at * (2 if rel.is_RELA() else 1)))
    return sites, infos


def nop_cases() -> list[tuple[str, str]]:
    return [(name, style) for name in PG_OBJECTS for style in styles_for(name)]


@pytest.mark.parametrize(("name", "style"), nop_cases())
def test_round_trip_is_identical(tmp: Path, name: str, style: str) -> None:
    original = FIXTURES / name
    before = sha256(original)
    nopped, back = tmp / "nop.o", tmp / "back.o"
    proc = ftpatch("nop", "--nop", style, original, "-o", nopped)
    assert proc.returncode == 0, proc.stderr
    if name == "x86_64-nop-mcount.o":
        assert "0 patched, 8 already nop" in proc.stdout
        assert nopped.read_bytes() == original.read_bytes()
        return
    assert "8 patched, 0 already nop, 0 filtered out" in proc.stdout
    proc = ftpatch("call", nopped, "-o", back)
    assert proc.returncode == 0, proc.stderr
    assert "8 patched, 0 already call" in proc.stdout
    assert sha256(back) == before
    assert sha256(original) == before  # the input is never written


@pytest.mark.parametrize(("name", "style"), [(n, s) for n, s in nop_cases() if n in RELOCATED])
def test_only_sites_and_their_entries_change(tmp: Path, name: str, style: str) -> None:
    original = FIXTURES / name
    nopped = tmp / "nop.o"
    assert ftpatch("nop", "--nop", style, original, "-o", nopped).returncode == 0
    sites, infos = allowed_ranges(original)
    a, b = original.read_bytes(), nopped.read_bytes()
    assert len(a) == len(b)
    changed = [i for i in range(len(a)) if a[i] != b[i]]
    assert changed
    allowed = set().union(*sites, *infos)
    assert set(changed) <= allowed
    # Every site and every entry changed: all r_info are zero now (type NONE, symbol 0), and on RELA the
    # r_addend holds ftpatch's record, "FT" in its top 16 bits.
    for r in infos:
        word = len(r) // (2 if OBJECTS[name][0] else 1)
        assert b[r.start : r.start + word] == bytes(word)
        if OBJECTS[name][0]:
            assert b[r.stop - 2 : r.stop] == b"TF"
    for r in sites:
        assert a[r.start : r.stop] != b[r.start : r.stop]


@pytest.mark.parametrize(("name", "style"), [(n, s) for n, s in nop_cases() if n in RELOCATED])
def test_every_nop_decodes_to_one_nop(tmp: Path, name: str, style: str) -> None:
    x86_64, _ = OBJECTS[name]
    nopped = tmp / "nop.o"
    assert ftpatch("nop", "--nop", style, FIXTURES / name, "-o", nopped).returncode == 0
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if x86_64 else capstone.CS_MODE_32)
    data = nopped.read_bytes()
    sites, _ = allowed_ranges(FIXTURES / name)
    for r in sites:
        code = data[r.start : r.stop]
        first = next(md.disasm(code, 0))
        if style == "jmp":
            assert (first.mnemonic, int(first.op_str, 16)) == ("jmp", len(code)), code.hex()
        else:
            assert first.size == len(code), code.hex()
            assert first.mnemonic == "nop" or (first.mnemonic, first.op_str) in (
                ("lea", "esi, ds:[esi]"),
                ("lea", "esi, [esi]"),
                ("lea", "esi, cs:[esi]"),  # inside a function
                ("lea", "si, es:[esi]"),  # inside a function: it writes %si with what it holds
                ("lea", "si, ss:[esi]"),
            ), f"{first.mnemonic} {first.op_str}"


@pytest.mark.parametrize("name", RELOCATED)
def test_readelf_sees_r_none_after_nop(tmp: Path, name: str) -> None:
    nopped = tmp / "nop.o"
    assert ftpatch("nop", FIXTURES / name, "-o", nopped).returncode == 0
    before = readelf_relocs(FIXTURES / name)
    after = readelf_relocs(nopped)
    none = "R_X86_64_NONE" if OBJECTS[name][0] else "R_386_NONE"
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert len(changed) == 8
    for (sec, off, _, sym), (sec2, off2, type2, sym2) in changed:
        assert sym in TARGETS and (sec2, off2, type2, sym2) == (sec, off, none, "")


@pytest.mark.parametrize("name", RELOCATED)
def test_nop_twice_changes_nothing(tmp: Path, name: str) -> None:
    once, twice = tmp / "once.o", tmp / "twice.o"
    assert ftpatch("nop", FIXTURES / name, "-o", once).returncode == 0
    proc = ftpatch("nop", once, "-o", twice)
    assert proc.returncode == 0
    assert "0 patched, 8 already nop" in proc.stdout
    assert once.read_bytes() == twice.read_bytes()
    proc = ftpatch("call", FIXTURES / name, "-o", twice)
    assert "0 patched, 8 already call" in proc.stdout
    assert twice.read_bytes() == (FIXTURES / name).read_bytes()


def test_in_place_several_files(tmp: Path) -> None:
    names = ["x86_64-pie.o", "i386-pic.o", "x86_64-fentry.o"]
    for n in names:
        (tmp / n).write_bytes((FIXTURES / n).read_bytes())
        (tmp / n).chmod(0o640)
    proc = ftpatch("nop", "--in-place", *names, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("8 patched") == 3
    for n in names:
        assert (tmp / n).read_bytes() != (FIXTURES / n).read_bytes()
        assert (tmp / n).stat().st_mode & 0o777 == 0o640
    assert ftpatch("call", "--in-place", *names, cwd=tmp).returncode == 0
    for n in names:
        assert (tmp / n).read_bytes() == (FIXTURES / n).read_bytes()
    assert sorted(p.name for p in tmp.iterdir()) == sorted(names)  # no temporaries left


def test_in_place_without_changes_keeps_mtime(tmp: Path) -> None:
    obj = tmp / "a.o"
    obj.write_bytes((FIXTURES / "x86_64-nopg.o").read_bytes())
    stamp = 1_000_000_000
    import os

    os.utime(obj, (stamp, stamp))
    assert ftpatch("nop", "--in-place", obj).returncode == 0
    assert obj.stat().st_mtime == stamp


def test_only_and_except(tmp: Path) -> None:
    out = tmp / "some.o"
    proc = ftpatch(
        "nop",
        "--only",
        "fib",
        "--only",
        "is_*",
        "--only",
        "sort_*",
        "--except",
        "sort_values",
        FIXTURES / "x86_64-pie.o",
        "-o",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 patched, 0 already nop, 6 filtered out" in proc.stdout
    import json

    sites = json.loads(ftpatch("scan", "--json", out).stdout)["files"][0]["sites"]
    assert {s["function"] for s in sites if s["state"] == "nop"} == {"fib", "is_prime"}
    # The remaining live sites tell call how to restore; the result is the original again.
    back = tmp / "back.o"
    assert "2 patched, 6 already call" in ftpatch("call", out, "-o", back).stdout
    assert back.read_bytes() == (FIXTURES / "x86_64-pie.o").read_bytes()


def lief_view(path: Path) -> dict[str, object]:
    """What an independent ELF loader sees of a file: everything but relocation types and code."""
    import lief

    lief.logging.disable()
    binary = lief.ELF.parse(str(path))
    assert binary is not None
    return {
        "header": (binary.header.file_type, binary.header.machine_type, binary.header.entrypoint),
        "sections": [(s.name, s.type, s.offset, s.size, s.flags, s.link, s.information) for s in binary.sections],
        "segments": [(s.type, s.file_offset, s.physical_size, s.virtual_address, s.flags) for s in binary.segments],
        "symbols": [(s.name, s.value, s.size, s.type, s.binding, s.shndx) for s in binary.symtab_symbols],
        "dynamic": [(d.tag, d.value) for d in binary.dynamic_entries],
        "dynsyms": [(s.name, s.value, s.size) for s in binary.dynamic_symbols],
        "notes": [(n.type, bytes(n.description)) for n in binary.notes],
        "relocations": len(binary.relocations),
    }


@pytest.mark.parametrize("name", PG_OBJECTS)
def test_lief_sees_the_same_object(tmp: Path, name: str) -> None:
    nopped = tmp / "nop.o"
    assert ftpatch("nop", FIXTURES / name, "-o", nopped).returncode == 0
    assert lief_view(nopped) == lief_view(FIXTURES / name)


@pytest.mark.parametrize("flags", [["-pg"], ["-pg", "-mfentry", "-fcf-protection"], ["-pg", "-fno-pie", "-no-pie"]])
def test_lief_sees_the_same_program(tmp: Path, flags: list[str]) -> None:
    import subprocess

    exe, nopped = tmp / "prog", tmp / "prog-nop"
    subprocess.run(["gcc", "-O2", *flags, FIXTURES / "prog.c", "-o", exe], check=True)
    proc = ftpatch("nop", exe, "-o", nopped)
    assert proc.returncode == 0 and "8 patched" in proc.stdout, proc.stderr
    assert lief_view(nopped) == lief_view(exe)
