"""scan finds exactly the sites the toolchain says are there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FIXTURES, PG_OBJECTS, RELOCATED, TARGETS, ftpatch, readelf_relocs, run

import ftpatch as lib
from ftpatch.elf import ElfFile


@pytest.mark.parametrize("name", RELOCATED)
def test_sites_match_readelf(name: str) -> None:
    path = FIXTURES / name
    expected = sorted(
        (sec.removeprefix(".rela").removeprefix(".rel"), off, sym)
        for sec, off, _type, sym in readelf_relocs(path)
        if sym in TARGETS
    )
    result = lib.scan(str(path))
    found = sorted((s.section, s.offset + (1 if s.length == 5 else 2), s.target) for s in result.sites)
    assert found == expected
    assert len(found) == 8
    assert all(s.state is lib.State.CALL for s in result.sites)


def test_recorded_sites_match_mcount_loc() -> None:
    path = FIXTURES / "x86_64-nop-mcount.o"
    loc = [r for r in readelf_relocs(path) if r[0] == ".rela__mcount_loc"]
    result = lib.scan(str(path))
    assert len(result.sites) == len(loc) == 8
    assert {s.form for s in result.sites} == {lib.Form.RECORDED}
    assert all(s.state is lib.State.NOP and s.code == bytes.fromhex("0f1f440000") for s in result.sites)


@pytest.mark.parametrize("name", PG_OBJECTS)
def test_functions_are_the_symbols_objdump_names(name: str) -> None:
    path = FIXTURES / name
    result = lib.scan(str(path))
    functions = {s.function for s in result.sites}
    assert functions == {"next_rand", "gcd", "report", "checksum.constprop.0", "fib", "is_prime", "sort_values", "main"}
    disasm = run("objdump", "-d", path)
    for fn in functions:
        assert f"<{fn}>:" in disasm


def test_no_pg_object_has_no_sites() -> None:
    proc = ftpatch("scan", "--json", FIXTURES / "x86_64-nopg.o")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["files"][0]["sites"] == []


def test_json_shape() -> None:
    proc = ftpatch("scan", "--json", FIXTURES / "x86_64-pie.o", FIXTURES / "i386-nopie.o")
    assert proc.returncode == 0, proc.stderr
    files = json.loads(proc.stdout)["files"]
    assert [(f["machine"], f["type"]) for f in files] == [("x86_64", "ET_REL"), ("i386", "ET_REL")]
    site = files[0]["sites"][0]
    assert set(site) == {
        "function",
        "demangled",
        "section",
        "offset",
        "file_offset",
        "length",
        "form",
        "target",
        "state",
    }
    assert site == {
        "function": "next_rand",
        "demangled": "next_rand",  # a C name is its own demangled name
        "section": ".text",
        "offset": 4,
        "file_offset": 0x44,
        "length": 6,
        "form": "gotpcrel",
        "target": "mcount",
        "state": "call",
    }
    data = (FIXTURES / "x86_64-pie.o").read_bytes()
    for s in files[0]["sites"]:
        assert data[s["file_offset"] : s["file_offset"] + 6] == bytes.fromhex("ff1500000000")
    i386 = files[1]["sites"][0]
    assert (i386["form"], i386["length"]) == ("rel32", 5)


def test_table_output() -> None:
    proc = ftpatch("scan", FIXTURES / "x86_64-fentry-cet.o")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{FIXTURES / 'x86_64-fentry-cet.o'}: x86_64 ET_REL, 8 sites (8 call, 0 not)"
    assert lines[1].split() == ["where", "file_offset", "form", "target", "state", "function"]
    # After endbr64 in a global function, at +0 in a static one.
    assert any(line.split()[::5] == [".text+0xb4", "fib"] for line in lines)
    assert any(line.split()[::5] == [".text+0x30", "gcd"] for line in lines)


def test_symbol_option_adds_a_target(tmp) -> None:
    src = tmp / "named.c"
    src.write_text("int f(int x) { return x + 1; }\n")
    obj = tmp / "named.o"
    run("gcc", "-O2", "-c", "-pg", "-mfentry", "-mfentry-name=my_hook", "-fno-pie", src, "-o", obj)
    assert json.loads(ftpatch("scan", "--json", obj).stdout)["files"][0]["sites"] == []
    sites = json.loads(ftpatch("scan", "--json", "--symbol", "my_hook", obj).stdout)["files"][0]["sites"]
    assert [(s["function"], s["target"], s["offset"]) for s in sites] == [("f", "my_hook", 0)]


def test_json_marks_a_refused_file_with_its_error_and_exit_code(tmp) -> None:
    """A JSON consumer must not read a refused file as one without sites: it carries `error` and `exit_code`,
    as a failed file of `nop --json` does, and the good files beside it are reported as ever."""
    stripped = tmp / "pg-static"
    run("gcc", "-O2", "-pg", "-static", FIXTURES / "prog.c", "-o", stripped)
    run("strip", stripped)
    bad = tmp / "bad.o"
    data = bytearray((FIXTURES / "x86_64-pie.o").read_bytes())
    site = lib.scan(str(FIXTURES / "x86_64-pie.o")).sites[2]
    data[site.file_offset : site.file_offset + 6] = bytes.fromhex("0f0b90909090")
    bad.write_bytes(data)
    text = tmp / "text.o"
    text.write_text("not elf")
    good = FIXTURES / "x86_64-nopie.o"
    proc = ftpatch("scan", "--json", stripped, text, bad, good)
    assert proc.returncode == 3
    refused, unreadable, wrong, fine = json.loads(proc.stdout)["files"]
    errors = [line.removeprefix("ftpatch: error: ") for line in proc.stderr.splitlines()]
    assert refused["sites"] == [] and refused["exit_code"] == 1
    assert refused["error"] == errors[0] and "is a stripped static program" in refused["error"]
    assert unreadable == {
        "path": str(text),
        "error": f"{text}: not an ELF file, no ELF magic at offset 0",
        "exit_code": 1,
    }
    assert wrong["exit_code"] == 3 and wrong["error"] == errors[2]
    assert f"{site.where}: holds 0f:0b:90:90:90:90" in wrong["error"]
    assert [s["state"] for s in wrong["sites"]].count("other") == 1
    assert "error" not in fine and "exit_code" not in fine and len(fine["sites"]) == 8


def test_quiet_prints_no_line_per_file(tmp) -> None:
    """-q is quiet: scan prints no table and no line per file, and a run over one file prints no summary."""
    proc = ftpatch("scan", "-q", FIXTURES / "x86_64-pie.o", FIXTURES / "i386-pic.o")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    text = tmp / "text.o"
    text.write_text("not elf")
    proc = ftpatch("scan", "-q", text)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"ftpatch: error: {text}: not an ELF file, no ELF magic at offset 0\n"
    copy = tmp / "one.o"
    copy.write_bytes((FIXTURES / "x86_64-pie.o").read_bytes())
    for action in ("nop", "call"):
        proc = ftpatch(action, "-q", "--in-place", copy)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert copy.read_bytes() == (FIXTURES / "x86_64-pie.o").read_bytes()
    # Over several files, -q still ends with the run's summary (tests/test_batch.py).
    proc = ftpatch("nop", "-q", "--in-place", copy, tmp / "missing.o")
    assert proc.returncode == 1 and "ftpatch nop: 2 files, 8 sites patched" in proc.stderr


FUNCTIONS_SOURCE = r"""
int shared(int x) { return x * 3 + 1; }
int alias_of_shared(int) __attribute__((alias("shared")));
__asm__(".text\n.globl bare\n.type bare, @function\nbare:\n\tnop\n");  /* a function of size 0 */
__attribute__((noinline)) static int helper(int x) { return x ^ 5; }
int outer(int x) { return helper(x) + shared(x); }
"""


def readelf_functions(obj: Path) -> dict[int, list[tuple[int, int, int, str]]]:
    """Section index -> (value, size, symbol index, name) of each STT_FUNC symbol, as readelf lists them."""
    by_section: dict[int, list[tuple[int, int, int, str]]] = {}
    for line in run("readelf", "-sW", obj).splitlines():
        fields = line.split()
        if len(fields) == 8 and fields[0].endswith(":") and fields[3] == "FUNC" and fields[6].isdigit():
            index, value, size, shndx, name = fields[0][:-1], fields[1], fields[2], fields[6], fields[7]
            by_section.setdefault(int(shndx), []).append((int(value, 16), int(size), int(index), name))
    return by_section


@pytest.mark.parametrize(
    "flags", [[], ["-m32"], ["-mx32"], ["-ffunction-sections"]], ids=["x86-64", "i386", "x32", "fsections"]
)
def test_each_address_is_named_by_the_function_readelf_says_holds_it(tmp: Path, flags: list[str]) -> None:
    """SymbolTable.function_names, read from columns of .symtab, against readelf's table: at every offset of every
    code section, the last function (by value, size, index) that starts at or before it and whose extent holds
    it (a size-0 function holds its start), or none."""
    source, obj = tmp / "functions.c", tmp / "functions.o"
    source.write_text(FUNCTIONS_SOURCE)
    run("gcc", "-O1", "-pg", *flags, "-c", source, "-o", obj)
    symbols = ElfFile(obj.read_bytes()).symbols
    functions = readelf_functions(obj)
    named = {name for funcs in functions.values() for *_, name in funcs}
    assert named >= {"shared", "alias_of_shared", "bare", "helper", "outer"}  # i386 adds its PIC thunk
    for shndx, funcs in functions.items():
        funcs.sort()
        offsets = list(range(max(value + max(size, 1) for value, size, _, _ in funcs) + 2))
        expected = []
        for offset in offsets:
            holders = [f for f in funcs if f[0] <= offset]
            last = holders[-1] if holders else None
            expected.append(last[3] if last and offset < last[0] + max(last[1], 1) else None)
        assert symbols.function_names(shndx, offsets) == expected
        assert [f.name if (f := symbols.function_at(shndx, o)) else None for o in offsets] == expected
    assert symbols.function_names(max(functions) + 1, [0, 1]) == [None, None]  # a section with no function
