"""record writes the table gcc -mrecord-mcount writes, into gcc and clang objects alike, and changes nothing else.

Objects are built here from fixtures/prog.c. Each recorded object is read back
with pyelftools, readelf, eu-elflint, ld -r and lief, never with ftpatch alone.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, PROGRAM_OUTPUT, call_places, ftpatch, run, run_cli, table_places

import ftpatch as lib
from ftpatch.record import record_data

# name -> (compiler, flags). "-nounwind" builds have no .eh_frame, so gas and clang leave each function's
# section without a section symbol: record creates them, and renumbers every global symbol.
BUILDS = {
    "gcc-pie": ("gcc", ["-pg"]),
    "gcc-nopie": ("gcc", ["-pg", "-fno-pie"]),
    "gcc-fentry": ("gcc", ["-pg", "-mfentry"]),
    "gcc-fentry-nopie": ("gcc", ["-pg", "-mfentry", "-fno-pie"]),
    "gcc-fentry-cet": ("gcc", ["-pg", "-mfentry", "-fno-pie", "-fcf-protection"]),
    "gcc-fsections": ("gcc", ["-pg", "-ffunction-sections"]),
    "gcc-fsections-nounwind": ("gcc", ["-pg", "-ffunction-sections", "-fno-asynchronous-unwind-tables"]),
    "gcc-i386-nopie": ("gcc", ["-m32", "-pg", "-fno-pie"]),
    "gcc-i386-pic": ("gcc", ["-m32", "-pg", "-fPIC"]),
    "gcc-i386-fsections-nounwind": ("gcc", ["-m32", "-pg", "-ffunction-sections", "-fno-asynchronous-unwind-tables"]),
    "clang-pie": ("clang", ["-pg"]),
    "clang-nopie": ("clang", ["-pg", "-fno-pie"]),
    "clang-fentry": ("clang", ["-pg", "-mfentry"]),
    "clang-fsections": ("clang", ["-pg", "-ffunction-sections"]),
    "clang-fsections-nounwind": ("clang", ["-pg", "-ffunction-sections", "-fno-asynchronous-unwind-tables"]),
    "clang-i386": ("clang", ["-m32", "-pg"]),
    "clang-i386-pic": ("clang", ["-m32", "-pg", "-fPIC"]),
}
GCC = [name for name, (cc, _) in BUILDS.items() if cc == "gcc"]
CREATES_SYMBOLS = [name for name in BUILDS if name.endswith("-nounwind")]


def build(out: Path, cc: str, flags: list[str], *extra: str) -> Path:
    run(cc, "-O2", "-c", *flags, *extra, FIXTURES / "prog.c", "-o", out)
    return out


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (the object as compiled, the same recorded by `ftpatch record -o`)."""
    d = tmp_path_factory.mktemp("record")
    built = {}
    for name, (cc, flags) in BUILDS.items():
        original = build(d / f"{name}.o", cc, flags)
        recorded = d / f"{name}-rec.o"
        proc = ftpatch("record", original, "-o", recorded)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert proc.stdout == f"{original} -> {recorded}: 8 sites recorded in __mcount_loc\n"
        built[name] = (original, recorded)
    return built


@pytest.mark.parametrize("name", GCC)
def test_table_equals_gcc_record_mcount(tmp: Path, objects: dict[str, tuple[Path, Path]], name: str) -> None:
    cc, flags = BUILDS[name]
    gcc_recorded = build(tmp / "gcc.o", cc, flags, "-mrecord-mcount")
    _, recorded = objects[name]
    assert table_places(recorded) == table_places(gcc_recorded)
    assert len(table_places(recorded) or []) == 8


@pytest.mark.parametrize("name", BUILDS)
def test_table_lists_every_call_relocation_site(objects: dict[str, tuple[Path, Path]], name: str) -> None:
    original, recorded = objects[name]
    assert table_places(recorded) == call_places(original)
    # and ftpatch's own scan of the recorded object still finds the same 8 sites, as calls
    sites = lib.scan(str(recorded)).sites
    assert sorted((s.section, s.offset) for s in sites) == call_places(original)
    assert {s.state for s in sites} == {lib.State.CALL}


def elf_layout(data: bytes) -> tuple[int, int, int]:
    """(offset of e_shoff, its size, offset of e_shnum) in this file's ELF header."""
    return (0x28, 8, 0x3C) if data[4] == 2 else (0x20, 4, 0x30)


@pytest.mark.parametrize("name", BUILDS)
def test_no_existing_byte_changes_but_the_header_table_pointer(
    objects: dict[str, tuple[Path, Path]], name: str
) -> None:
    """Every byte of the input stays where it was, sites included; only e_shoff and e_shnum point at the new table."""
    original, recorded = objects[name]
    old, new = original.read_bytes(), recorded.read_bytes()
    at, size, shnum = elf_layout(old)
    assert len(new) > len(old)
    changed = [i for i in range(len(old)) if old[i] != new[i]]
    assert changed and set(changed) <= set(range(at, at + size)) | {shnum, shnum + 1}
    assert struct.unpack_from("<H", new, shnum)[0] == struct.unpack_from("<H", old, shnum)[0] + 2


@pytest.mark.parametrize("name", BUILDS)
def test_readelf_elflint_and_ld_r_accept_it(tmp: Path, objects: dict[str, tuple[Path, Path]], name: str) -> None:
    original, recorded = objects[name]
    proc = subprocess.run(["readelf", "-aW", recorded], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "__mcount_loc" in proc.stdout
    # eu-elflint knows no clang .llvm_addrsig section and says so of the input too: nothing new may appear.
    before = subprocess.run(["eu-elflint", "--gnu-ld", original], capture_output=True, text=True).stdout
    after = subprocess.run(["eu-elflint", "--gnu-ld", recorded], capture_output=True, text=True).stdout
    assert set(after.replace(str(recorded), "X").splitlines()) <= set(before.replace(str(original), "X").splitlines())
    if BUILDS[name][0] == "gcc":
        assert after == "No errors\n"
    # ld -r, as kernel modules are put together, keeps the table.
    emulation = "elf_x86_64" if "i386" not in name else "elf_i386"
    proc = subprocess.run(["ld", "-m", emulation, "-r", recorded, "-o", tmp / "r.o"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert table_places(tmp / "r.o") == table_places(recorded)


@pytest.mark.filterwarnings("ignore:.* is not a valid TYPE")  # lief 1.0 has no name for R_386_GOT32X
@pytest.mark.parametrize("name", BUILDS)
def test_lief_sees_the_same_object_plus_the_table(objects: dict[str, tuple[Path, Path]], name: str) -> None:
    """Sections, symbols and relocations read by lief: the input's, plus the table and any section symbol created."""
    import lief

    original, recorded = objects[name]
    a, b = lief.parse(str(original)), lief.parse(str(recorded))
    section_type = lief.ELF.Symbol.TYPE.SECTION
    grown = (int(lief.ELF.Section.TYPE.SYMTAB), int(lief.ELF.Section.TYPE.STRTAB))  # new names, new symbols

    def sections(binary: lief.ELF.Binary) -> list[tuple[str, int, int, int]]:
        return [(s.name, int(s.type), int(s.flags), 0 if int(s.type) in grown else s.size) for s in binary.sections]

    def contents(binary: lief.ELF.Binary) -> dict[str, bytes]:
        return {s.name: bytes(s.content) for s in binary.sections if int(s.type) == int(lief.ELF.Section.TYPE.PROGBITS)}

    def symbols(binary: lief.ELF.Binary) -> list[tuple[str, int, int, str, str, str]]:
        return [
            (
                s.name,
                s.value,
                s.size,
                str(s.type),
                str(s.binding),
                binary.sections[s.shndx].name if 0 < s.shndx < 0xFF00 else str(s.shndx),
            )
            for s in binary.symtab_symbols
            if s.type != section_type
        ]

    def section_symbols(binary: lief.ELF.Binary) -> set[str]:
        return {binary.sections[s.shndx].name for s in binary.symtab_symbols if s.type == section_type}

    def relocations(binary: lief.ELF.Binary) -> list[tuple[str, int, int, str, int]]:
        return sorted(
            (r.section.name if r.section else "", r.address, int(r.type), r.symbol.name if r.symbol else "", r.addend)
            for r in binary.object_relocations
        )

    word = 8 if b.header.identity_class == lief.ELF.Header.CLASS.ELF64 else 4
    rel = ("rela", lief.ELF.Section.TYPE.RELA, 3) if word == 8 else ("rel", lief.ELF.Section.TYPE.REL, 2)
    assert sections(b) == [
        *sections(a),
        ("__mcount_loc", int(lief.ELF.Section.TYPE.PROGBITS), 0x3, 8 * word),  # SHF_WRITE | SHF_ALLOC
        (f".{rel[0]}__mcount_loc", int(rel[1]), 0x40, 8 * rel[2] * word),  # SHF_INFO_LINK
    ]
    loc = b.get_section("__mcount_loc")
    assert loc.entry_size == loc.alignment == word
    assert {k: v for k, v in contents(b).items() if k != "__mcount_loc"} == contents(a)
    assert symbols(b) == symbols(a)
    # every site's section has a section symbol now; only those that lacked one got a new one
    assert section_symbols(b) == section_symbols(a) | {place[0] for place in call_places(original)}
    assert (section_symbols(b) != section_symbols(a)) == (name in CREATES_SYMBOLS)
    new = [r for r in relocations(b) if r[0] == "__mcount_loc"]
    assert [r for r in relocations(b) if r[0] != "__mcount_loc"] == relocations(a)
    absolute = lief.ELF.Relocation.TYPE.X86_64_64 if word == 8 else lief.ELF.Relocation.TYPE.X86_32
    assert len(new) == 8 and {r[2] for r in new} == {int(absolute)}
    assert {r[3] for r in new} <= {""} | section_symbols(b)  # lief names a section symbol by its section, or not


@pytest.mark.parametrize("name", CREATES_SYMBOLS)
def test_created_section_symbols_keep_every_reference(objects: dict[str, tuple[Path, Path]], name: str) -> None:
    """Section symbols were missing: each created one is local, before the first global (sh_info), and every
    relocation that named a global names the same symbol after the renumbering."""
    original, recorded = objects[name]
    assert table_places(recorded) == call_places(original)
    symbols = [line.split() for line in run("readelf", "-sW", recorded).splitlines() if line.strip()[:1].isdigit()]
    first_global = next(int(s[0].rstrip(":")) for s in symbols if s[4] != "LOCAL")
    assert all(s[4] == "LOCAL" for s in symbols[:first_global]) and all(s[4] != "LOCAL" for s in symbols[first_global:])
    info = run("readelf", "-SW", recorded).split("] .symtab ")[1].splitlines()[0].split()
    assert int(info[-2]) == first_global  # sh_info: the first global

    # readelf prints the symbol each relocation names, by name: the same before and after
    def entries(path: Path) -> list[list[str]]:
        return [line.split()[2:] for line in run("readelf", "-rW", path).splitlines() if line[:1] in "0123456789abcdef"]

    assert entries(recorded)[: len(entries(original))] == entries(original)
    if BUILDS[name][0] == "clang":
        # clang's .llvm_addrsig lists address-taken symbols by index: renumbered too.
        def addrsig(path: Path) -> list[str]:
            return [
                line.split()[-1] for line in run("llvm-readelf", "--addrsig", path).splitlines()[2:] if line.strip()
            ]

        assert addrsig(recorded) == addrsig(original) and addrsig(original)


def test_sites_already_nopped_are_sites(tmp: Path, objects: dict[str, tuple[Path, Path]]) -> None:
    """A nop'd site goes in the table: nop then record gives what record then nop gives.

    Byte for byte, unless section symbols were created: then record copies only the
    relocation tables that name a global symbol, and a nop'd site's entry names none.
    """
    for name, (original, recorded) in objects.items():
        nopped, nop_rec, rec_nop = tmp / f"{name}-n.o", tmp / f"{name}-nr.o", tmp / f"{name}-rn.o"
        assert run_cli(["nop", str(original), "-o", str(nopped)])[0] == 0
        assert run_cli(["record", str(nopped), "-o", str(nop_rec)])[0] == 0
        assert run_cli(["nop", str(recorded), "-o", str(rec_nop)])[0] == 0
        assert table_places(nop_rec) == table_places(rec_nop) == call_places(original)
        if name in CREATES_SYMBOLS:
            listing = [re.sub(r"at offset 0x[0-9a-f]+", "", run("readelf", "-rsW", p)) for p in (nop_rec, rec_nop)]
            assert listing[0] == listing[1]
        else:
            assert nop_rec.read_bytes() == rec_nop.read_bytes(), name
        # and call restores the recorded object as exactly as it restores the object itself: clang -m32's
        # R_386_PLT32 comes back as gcc's R_386_PC32 once every site is nop'd (docs/facts.md, "Linking a patched object").
        back, plain = tmp / f"{name}-back.o", tmp / f"{name}-plain.o"
        assert run_cli(["call", str(rec_nop), "-o", str(back)])[0] == 0
        assert run_cli(["call", str(nopped), "-o", str(plain)])[0] == 0
        assert (back.read_bytes() == recorded.read_bytes()) == (plain.read_bytes() == original.read_bytes()), name


def test_recorded_and_mnop_mcount_objects_are_left_and_counted(
    tmp: Path, objects: dict[str, tuple[Path, Path]]
) -> None:
    _, recorded = objects["gcc-pie"]
    work = [Path(shutil.copy(recorded, tmp / "a.o")), Path(shutil.copy(FIXTURES / "x86_64-nop-mcount.o", tmp / "b.o"))]
    work.append(Path(shutil.copy(FIXTURES / "x86_64-nopg.o", tmp / "c.o")))
    before = [(p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in work]
    proc = ftpatch("record", "--in-place", *work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"{work[0]}: already has __mcount_loc, left as it was",
        f"{work[1]}: already has __mcount_loc, left as it was",
        f"{work[2]}: no profiling call sites, left as it was",
    ]
    assert proc.stderr.startswith(
        "ftpatch record: 3 files, 0 sites recorded, 2 objects already had __mcount_loc, 0 failed, "
    )
    assert [(p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in work] == before


def test_json_report(tmp: Path) -> None:
    import json

    work = [Path(shutil.copy(FIXTURES / n, tmp / n)) for n in ("x86_64-pie.o", "x86_64-nop-mcount.o", "i386-pic.o")]
    (tmp / "bad.o").write_bytes(b"\x7fELF")
    proc = ftpatch("record", "--in-place", "--json", "-j", "2", *work, tmp / "bad.o")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["action"] == "record"
    assert [(f["status"], f.get("recorded"), f.get("already_recorded")) for f in doc["files"]] == [
        ("recorded", 8, 0),
        ("unchanged", 0, 1),
        ("recorded", 8, 0),
        ("failed", None, None),
    ]
    assert set(doc["files"][0]) == {"path", "output", "status", "recorded", "already_recorded", "warnings"}
    assert doc["summary"] == {"files": 4, "recorded": 16, "already_recorded": 1, "failed": 1}
    assert doc["files"][3]["exit_code"] == 1


def test_output_is_deterministic_and_the_same_whatever_j(tmp: Path) -> None:
    names = ["x86_64-pie.o", "x86_64-fsections.o", "i386-pic.o", "i386-nopie.o", "x86_64-fentry.o"]
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    a = [Path(shutil.copy(FIXTURES / n, tmp / "a" / n)) for n in names]
    b = [Path(shutil.copy(FIXTURES / n, tmp / "b" / n)) for n in names]
    assert ftpatch("record", "--in-place", "-j", "1", *a).returncode == 0
    assert ftpatch("record", "--in-place", "-j", "2", *b).returncode == 0
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    data = (FIXTURES / "x86_64-pie.o").read_bytes()
    assert record_data("x", data)[1] == record_data("y", data)[1]


def test_garbage_at_a_site_fails_verification_and_writes_nothing(tmp: Path) -> None:
    site = next(s for s in lib.scan(str(FIXTURES / "x86_64-pie.o")).sites if s.function == "fib")
    data = bytearray((FIXTURES / "x86_64-pie.o").read_bytes())
    data[site.file_offset : site.file_offset + 6] = bytes.fromhex("0f0b90909090")
    bad = tmp / "bad.o"
    bad.write_bytes(data)
    proc = ftpatch("record", bad, "-o", tmp / "out.o")
    assert proc.returncode == 3
    assert proc.stderr == (
        f"ftpatch: error: {bad}: fib (.text+{site.offset:#x}): expected ff:15:00:00:00:00 or a nop, "
        "actual 0f:0b:90:90:90:90 (ud2; nop; nop; nop; nop)\n"
    )
    assert not (tmp / "out.o").exists()
    proc = ftpatch("record", "--in-place", bad)
    assert proc.returncode == 3 and bad.read_bytes() == data


def test_a_zeroed_relocation_without_its_nop_fails_verification(tmp: Path) -> None:
    """A site ftpatch nop'd and something else overwrote: call refuses it, and record does not leave it out."""
    nopped = tmp / "nop.o"
    assert ftpatch("nop", FIXTURES / "x86_64-nopie.o", "-o", nopped).returncode == 0
    site = next(s for s in lib.scan(str(nopped)).sites if s.function == "fib")
    data = bytearray(nopped.read_bytes())
    data[site.file_offset : site.file_offset + 5] = bytes.fromhex("cccccccccc")
    nopped.write_bytes(data)
    proc = ftpatch("record", nopped, "-o", tmp / "out.o")
    assert proc.returncode == 3
    # The entry's record says an e8 site was there.
    assert proc.stderr == (
        f"ftpatch: error: {nopped}: fib (.text+{site.offset:#x}): expected e8:00:00:00:00 or a nop, "
        "actual cc:cc:cc:cc:cc (int3; int3; int3; int3; int3)\n"
    )
    assert not (tmp / "out.o").exists()


def test_linked_files_are_refused(tmp: Path) -> None:
    exe = tmp / "prog"
    run("gcc", "-O2", "-pg", FIXTURES / "prog.c", "-o", exe)
    proc = ftpatch("record", exe, "-o", tmp / "out")
    assert proc.returncode == 1
    assert proc.stderr == (
        f"ftpatch: error: {exe}: is a linked file (ET_DYN): record writes __mcount_loc into relocatable "
        "objects (ET_REL), before the link, as recordmcount does\n"
    )
    assert not (tmp / "out").exists()


@pytest.mark.parametrize(
    ("poke", "message"),
    [
        # .symtab's sh_info (first global) past its end, in an object that needs a section symbol created
        ("sh_info", "symbol table .symtab has {n} symbols but sh_info 4096, sh_info"),
        ("truncate", "section header table ({n} entries at {shoff:#x}) is truncated, file is {size:#x} bytes, e_shnum"),
    ],
)
def test_malformed_objects_give_one_line_and_no_output(
    tmp: Path, objects: dict[str, tuple[Path, Path]], poke: str, message: str
) -> None:
    original, _ = objects["gcc-fsections-nounwind"]
    data = bytearray(original.read_bytes())
    shoff, shnum = struct.unpack_from("<Q", data, 0x28)[0], struct.unpack_from("<H", data, 0x3C)[0]
    symtab = next(i for i in range(shnum) if struct.unpack_from("<I", data, shoff + i * 64 + 4)[0] == 2)
    n = struct.unpack_from("<Q", data, shoff + symtab * 64 + 32)[0] // 24
    if poke == "sh_info":
        struct.pack_into("<I", data, shoff + symtab * 64 + 44, 4096)
    else:
        data = data[: shoff + 64 * 3]
    bad = tmp / "bad.o"
    bad.write_bytes(data)
    proc = ftpatch("record", bad, "-o", tmp / "out.o")
    assert (proc.returncode, proc.stderr) == (
        1,
        f"ftpatch: error: {bad}: {message.format(n=n, shoff=shoff, size=len(data))}\n",
    )
    assert not (tmp / "out.o").exists()
    assert sorted(p.name for p in tmp.iterdir()) == ["bad.o"]


def test_record_links_and_runs_with_a_gcc_recorded_object(tmp: Path, objects: dict[str, tuple[Path, Path]]) -> None:
    """ld -r merges ftpatch's writable table with gcc's read-only one without a word; the program runs."""
    gcc_recorded = build(tmp / "gcc.o", "gcc", ["-pg", "-fno-pie"], "-mrecord-mcount")
    other = tmp / "other.c"
    other.write_text("int other(int x) { return x + 1; }\n")
    run("gcc", "-O2", "-pg", "-fno-pie", "-c", other, "-o", tmp / "other.o")
    assert ftpatch("record", "--in-place", tmp / "other.o").returncode == 0
    proc = subprocess.run(
        ["ld", "-r", gcc_recorded, tmp / "other.o", "-o", tmp / "both.o"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stderr == ""
    assert len(table_places(tmp / "both.o") or []) == 9
    proc = subprocess.run(["gcc", "-pg", "-no-pie", tmp / "both.o", "-o", tmp / "prog"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == ""
    out = subprocess.run([tmp / "prog"], cwd=tmp, capture_output=True, text=True, check=True).stdout
    assert out == PROGRAM_OUTPUT


def many_sections(directory: Path, count: int, tail: str, cc: str = "gcc", *flags: str) -> Path:
    """An object with `count` one-byte data sections first, then `tail` (C), built -pg without unwind tables."""
    body = "".join(f'"\\t.section .s{i},\\"a\\"\\n\\t.byte {i % 256}\\n"\n' for i in range(count))
    source = directory / f"many-{cc}-{count}.c"
    source.write_text(f"__asm__(\n{body});\n{tail}")
    obj = source.with_suffix(".o")
    run(cc, "-c", "-O1", "-pg", "-fno-asynchronous-unwind-tables", *flags, source, "-o", obj)
    return obj


def readelf_places(path: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(where __mcount_loc's entries point, where the calls to the targets start), as sorted (section, offset), read
    from `readelf -rW` of an x86-64 object: pyelftools takes seconds to walk 70,000 sections, readelf milliseconds.
    Entries name section symbols, which readelf prints as the section's name; the addend is the offset."""
    table, calls, section = [], [], ""
    for line in run("readelf", "-rW", path).splitlines():
        if m := re.match(r"Relocation section '\.rela([^']+)'", line):
            section = m.group(1)
        elif m := re.match(r"([0-9a-f]{16})\s+[0-9a-f]+\s+(R_\w+)\s+[0-9a-f]+\s+(\S+) ([+-]) ([0-9a-f]+)", line):
            offset, r_type, symbol = int(m.group(1), 16), m.group(2), m.group(3)
            addend = int(m.group(5), 16) * (-1 if m.group(4) == "-" else 1)
            if section == "__mcount_loc":
                table.append((symbol, addend))
            elif symbol in ("mcount", "__fentry__"):
                calls.append((section, offset - (1 if r_type in ("R_X86_64_PLT32", "R_X86_64_PC32") else 2)))
    return sorted(table), sorted(calls)


def section_count(path: Path) -> int:
    line = next(x for x in run("readelf", "-hW", path).splitlines() if "Number of section headers" in x)
    return int(line.split("(")[1].rstrip(")")) if "(" in line else int(line.split(":")[1])


# Functions in sections numbered above 65,279: their section symbols are created with st_shndx SHN_XINDEX.
HIGH_FUNCTIONS = (
    "int many_f(int x) { return x * 3 + 1; }\n"
    "static __attribute__((noinline)) int many_h(int x) { return x - 5; }\n"
    "int many_g(int x) { return many_f(x) - 2 + many_h(x); }\n"
)
# A call to mcount in a section above 65,279 that holds no symbol at all, so nothing in the file needs
# .symtab_shndx: clang makes none, and record must make one for the section symbol it creates.
HIGH_ASM = '__asm__(".section .text.hi,\\"ax\\",@progbits\\n\\tcall mcount\\n\\tret\\n\\t.text\\n");\nint low(int x) { return x + 1; }\n'


@pytest.fixture(scope="module")
def xindex(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("xindex")
    built = {
        "gcc": many_sections(d, 70_000, HIGH_FUNCTIONS, "gcc", "-ffunction-sections"),
        # -fno-addrsig: eu-elflint knows no .llvm_addrsig, and must check all the rest
        "clang": many_sections(d, 70_000, HIGH_ASM, "clang", "-fno-addrsig"),
    }
    # One more section would need extended numbering; record adds two.
    first = many_sections(d, 65_200, HIGH_ASM)
    built["threshold"] = many_sections(d, 65_200 + 0xFEFF - section_count(first), HIGH_ASM)
    return built


def test_more_than_65280_sections_work(tmp: Path, xindex: dict[str, Path]) -> None:
    """Extended numbering (e_shnum 0, e_shstrndx SHN_XINDEX), section symbols with st_shndx SHN_XINDEX, an existing
    .symtab_shndx that grows (gcc) and one that must be made (clang), and an object that crosses into it."""
    for name, original in xindex.items():
        recorded = tmp / f"{name}.o"
        code, _, err = run_cli(["record", str(original), "-o", str(recorded)])
        assert (code, err) == (0, ""), err
        table, calls = readelf_places(recorded)
        assert table == calls == readelf_places(original)[1] and calls, name
        made = name == "clang"  # clang made no .symtab_shndx: record appends one
        assert section_count(recorded) == section_count(original) + 2 + made
        header = run("readelf", "-hW", recorded)
        assert f"Number of section headers:         0 ({section_count(recorded)})" in header
        proc = subprocess.run(["readelf", "-aW", recorded], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert run("eu-elflint", "--gnu-ld", recorded) == "No errors\n"
        relocatable = tmp / f"{name}-r.o"
        run("ld", "-r", recorded, "-o", relocatable)
        assert readelf_places(relocatable)[0] == table
        if name != "threshold":
            assert run("readelf", "-SW", recorded).count(".symtab_shndx") == 1
            # the created symbols name sections above 65,279: their st_shndx is SHN_XINDEX
            assert any(
                int(line.split()[6]) >= 0xFF00
                for line in run("readelf", "-sW", recorded).splitlines()
                if " SECTION " in line
            )
    assert "Number of section headers:         65279" in run("readelf", "-hW", xindex["threshold"])


def archive_members(path: Path) -> dict[str, bytes]:
    return {name: run_bytes("ar", "p", path, name) for name in run("ar", "t", path).split()}


def run_bytes(*cmd: str | Path) -> bytes:
    return subprocess.run(list(map(str, cmd)), capture_output=True, check=True).stdout


def armap(path: Path) -> list[str]:
    """The archive's symbol index as nm reads it: each symbol and the member its offset names."""
    out = run("nm", "--print-armap", path)
    return out.split("\n\n", 1)[0].splitlines()


def sym64(data: bytes) -> bytes:
    """The archive with its 32-bit symbol index `/` written as the 64-bit `/SYM64/`, every offset moved to match."""
    assert data[8:24].rstrip() == b"/"
    size = int(data[56:66])
    body = data[68 : 68 + size]
    count = int.from_bytes(body[:4], "big")
    offsets = [int.from_bytes(body[4 + 4 * i : 8 + 4 * i], "big") for i in range(count)]
    names = body[4 + 4 * count :]
    new_size = 8 + 8 * count + len(names)
    shift = (new_size + new_size % 2) - (size + size % 2)
    new_body = count.to_bytes(8, "big") + b"".join((o + shift).to_bytes(8, "big") for o in offsets) + names
    header = b"/SYM64/".ljust(16) + data[24:56] + str(new_size).encode().ljust(10) + b"`\n"
    rest = data[68 + size + size % 2 :]
    return data[:8] + header + new_body + b"\n" * (new_size % 2) + rest


@pytest.mark.parametrize("index", ["/", "/SYM64/"])
def test_archive_is_recorded_member_by_member_and_links(tmp: Path, index: str) -> None:
    """Members grow; the headers' sizes and the symbol index follow, so nm reads the same index and ld links."""
    names = {
        "x86_64-pie.o": "pie.o",
        "x86_64-nop-mcount.o": "recorded.o",
        "x86_64-nopg.o": "nopg.o",
        "x86_64-nopie.o": "a_member_name_longer_than_sixteen.o",
    }
    for fixture, member in names.items():
        shutil.copy(FIXTURES / fixture, tmp / member)
    (tmp / "notes.txt").write_text("not an ELF member, kept as it is\n")
    lib = tmp / "libprog.a"
    run("ar", "rcsD", lib, *[tmp / m for m in names.values()], tmp / "notes.txt")
    if index == "/SYM64/":
        lib.write_bytes(sym64(lib.read_bytes()))
        assert b"/SYM64/" in lib.read_bytes()[:80]
    before = armap(lib)
    assert any(" in a_member_name_longer_than_sixteen.o" in line for line in before)
    out = tmp / "librec.a"
    code, stdout, err = run_cli(["record", str(lib), "-o", str(out)])
    assert (code, err) == (0, "")
    assert (
        stdout
        == f"{lib} -> {out}: 16 sites recorded in __mcount_loc, 1 objects already had __mcount_loc and were left as they were\n"
    )
    assert run("ar", "t", out) == run("ar", "t", lib)
    assert armap(out) == before
    members, recorded = archive_members(lib), archive_members(out)
    for member, data in members.items():
        alone = record_data(member, data)[1] if data.startswith(b"\x7fELF") else None
        assert recorded[member] == (data if alone is None else alone), member
    if index == "/":
        # ranlib writes the same index over the recorded archive: ours is the one binutils would write
        again = tmp / "again.a"
        shutil.copy(out, again)
        run("ranlib", "-D", again)
        assert again.read_bytes() == out.read_bytes()
    # ld finds main through the index of the recorded archive; the program runs and its table lists the sites
    workdir = tmp / "run"
    workdir.mkdir()
    one = tmp / "libone.a"
    run("ar", "rcsD", one, tmp / "notes.txt", tmp / "a_member_name_longer_than_sixteen.o")
    if index == "/SYM64/":
        one.write_bytes(sym64(one.read_bytes()))
    assert run_cli(["record", "--in-place", str(one)])[0] == 0
    run("gcc", "-pg", "-no-pie", "-Wl,-u,main", one, "-o", workdir / "prog")
    assert (
        subprocess.run([workdir / "prog"], cwd=workdir, capture_output=True, text=True, check=True).stdout
        == PROGRAM_OUTPUT
    )
    assert (
        len(
            table_places(
                tmp / "a_member_name_longer_than_sixteen.o", archive_members(one)["a_member_name_longer_than_sixteen.o"]
            )
            or []
        )
        == 8
    )
    assert int(run("readelf", "-SW", workdir / "prog").split("] __mcount_loc ")[1].split()[3], 16) == 64


def test_a_bad_member_leaves_the_whole_archive(tmp: Path) -> None:
    site = next(s for s in lib.scan(str(FIXTURES / "x86_64-nopie.o")).sites if s.function == "fib")
    data = bytearray((FIXTURES / "x86_64-nopie.o").read_bytes())
    data[site.file_offset : site.file_offset + 5] = bytes.fromhex("0f0b909090")
    (tmp / "bad.o").write_bytes(data)
    shutil.copy(FIXTURES / "x86_64-pie.o", tmp / "good.o")
    archive = tmp / "lib.a"
    run("ar", "rcsD", archive, tmp / "good.o", tmp / "bad.o")
    before = archive.read_bytes()
    code, _, err = run_cli(["record", "--in-place", str(archive)])
    assert code == 3
    assert (
        err
        == f"ftpatch: error: {archive}(bad.o): fib (.text+{site.offset:#x}): expected e8:00:00:00:00 or a nop, actual 0f:0b:90:90:90 (ud2; nop; nop; nop)\n"
    )
    assert archive.read_bytes() == before


def test_nop_record_is_record_then_nop_in_one_pass(tmp: Path, objects: dict[str, tuple[Path, Path]]) -> None:
    """nop --record writes what record then nop write, in one read, one verification and one write."""
    for name, (original, recorded) in objects.items():
        both, then = tmp / f"{name}-both.o", tmp / f"{name}-then.o"
        code, out, err = run_cli(["nop", "--record", str(original), "-o", str(both)])
        assert (code, err) == (0, "")
        assert (
            out == f"{original} -> {both}: 8 patched, 0 already nop, 0 filtered out; 8 sites recorded in __mcount_loc\n"
        )
        assert run_cli(["nop", str(recorded), "-o", str(then)])[0] == 0
        if name in CREATES_SYMBOLS:  # see test_sites_already_nopped_are_sites
            assert table_places(both) == table_places(then)
        else:
            assert both.read_bytes() == then.read_bytes(), name


def test_nop_record_reports_both(tmp: Path) -> None:
    import json

    work = [Path(shutil.copy(FIXTURES / n, tmp / n)) for n in ("x86_64-pie.o", "x86_64-nop-mcount.o", "x86_64-nopg.o")]
    code, out, err = run_cli(["nop", "--record", "--in-place", "--json", *map(str, work)])
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert [(f["status"], f["patched"], f["recorded"], f["already_recorded"]) for f in doc["files"]] == [
        ("patched", 8, 8, 0),
        ("unchanged", 0, 0, 1),
        ("unchanged", 0, 0, 0),
    ]
    assert doc["summary"] == {
        "files": 3,
        "patched": 8,
        "already": 8,
        "filtered": 0,
        "recorded": 8,
        "already_recorded": 1,
        "failed": 0,
    }
    # a linked file gets no table: nop --record refuses it whole, as record does
    exe = tmp / "prog"
    run("gcc", "-O2", "-pg", FIXTURES / "prog.c", "-o", exe)
    code, _, err = run_cli(["nop", "--record", str(exe), "-o", str(tmp / "out")])
    assert code == 1 and "is a linked file (ET_DYN)" in err and not (tmp / "out").exists()


def test_record_writes_as_nop_and_call_do(tmp: Path) -> None:
    """The same write path: -o only reads the input; --in-place keeps the mode, replaces the inode, refuses a
    symbolic link, sweeps a dead run's temporary, and leaves a file it does not change untouched, mtime included."""
    from ftpatch.write import _temp_prefix

    source = FIXTURES / "x86_64-pie.o"
    work = Path(shutil.copy(source, tmp / "t.o"))
    os_stat = work.stat()
    # made first: a process lists a directory's stale temporaries once a minute at most
    stale = tmp / f"{_temp_prefix(str(work))}999999999-1-deadbeef"  # a PID no process has
    stale.write_bytes(b"half")
    assert run_cli(["record", str(work), "-o", str(tmp / "o.o")])[0] == 0
    assert work.read_bytes() == source.read_bytes() and work.stat().st_mtime_ns == os_stat.st_mtime_ns
    work.chmod(0o751)
    link = tmp / "link.o"
    link.symlink_to(work)
    code, _, err = run_cli(["record", "--in-place", str(link)])
    assert (code, err) == (1, f"ftpatch: error: {link}: is a symbolic link, give --in-place the file it points to\n")
    assert run_cli(["record", "--in-place", str(work)])[0] == 0
    assert work.stat().st_ino != os_stat.st_ino and work.stat().st_mode & 0o7777 == 0o751
    assert work.read_bytes() == (tmp / "o.o").read_bytes() and not stale.exists()
    again = work.stat()
    assert run_cli(["record", "--in-place", str(work)])[0] == 0
    assert (work.stat().st_ino, work.stat().st_mtime_ns) == (again.st_ino, again.st_mtime_ns)
