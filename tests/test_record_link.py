"""Recorded objects link with bfd, gold and lld, without a warning or a text relocation, and run the same;
the linked program's __mcount_loc gives ftpatch every site, stripped or not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, PROGRAM_OUTPUT, run, run_cli

import ftpatch

# name -> (compiler, flags); the object is compiled -fPIC for -shared.
BUILDS = {
    "gcc": ("gcc", ["-pg"]),
    "gcc-fentry": ("gcc", ["-pg", "-mfentry"]),
    "gcc-nopie": ("gcc", ["-pg", "-fno-pie"]),
    "gcc-nounwind": ("gcc", ["-pg", "-ffunction-sections", "-fno-asynchronous-unwind-tables"]),
    "clang": ("clang", ["-pg"]),
    "clang-fentry": ("clang", ["-pg", "-mfentry"]),
    "gcc-i386": ("gcc", ["-m32", "-pg"]),
    "clang-i386": ("clang", ["-m32", "-pg"]),
}
LINKERS = ["bfd", "gold", "lld"]
MODES = {"pie": ["-pie"], "no-pie": ["-no-pie"], "static": ["-static"], "shared": ["-shared"]}
MAIN = "int prog_main(void);\nint main(void) { return prog_main(); }\n"


def link(tmp: Path, name: str, linker: str, mode: str) -> tuple[Path, str]:
    """Compile prog.c as `name` says, record it, link it with `linker` as `mode` says; (program, linker stderr).
    For -shared, prog.c's main becomes the library's prog_main and a small program calls it."""
    cc, flags = BUILDS[name]
    m32 = ["-m32"] if "-m32" in flags else []
    obj = tmp / "prog.o"
    if mode == "shared":
        run(cc, "-O2", "-c", *flags, "-fPIC", "-Dmain=prog_main", FIXTURES / "prog.c", "-o", obj)
    else:
        run(cc, "-O2", "-c", *flags, FIXTURES / "prog.c", "-o", obj)
    assert run_cli(["record", "--in-place", str(obj)])[0] == 0
    exe = tmp / "prog"
    if mode == "shared":
        lib = tmp / "libprog.so"
        proc = subprocess.run(
            [cc, *m32, "-shared", f"-fuse-ld={linker}", obj, "-o", lib], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        (tmp / "main.c").write_text(MAIN)
        run(cc, *m32, "-pg", f"-fuse-ld={linker}", tmp / "main.c", lib, f"-Wl,-rpath,{tmp}", "-o", exe)
        return lib, proc.stderr
    proc = subprocess.run(
        [cc, *m32, "-pg", *MODES[mode], f"-fuse-ld={linker}", obj, "-o", exe], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return exe, proc.stderr


# -fno-pie code links into no PIE and no shared library, recorded or not.
CASES = [
    (n, ld, m) for n in BUILDS for ld in LINKERS for m in MODES if not (n.endswith("nopie") and m in ("pie", "shared"))
]


@pytest.mark.parametrize(("name", "linker", "mode"), CASES)
def test_links_cleanly_and_runs(tmp: Path, name: str, linker: str, mode: str) -> None:
    linked, stderr = link(tmp, name, linker, mode)
    assert stderr == ""
    assert "TEXTREL" not in run("readelf", "-dW", linked)
    out = subprocess.run([tmp / "prog"], cwd=tmp, capture_output=True, text=True, check=True).stdout
    assert out == PROGRAM_OUTPUT
    # The linked file's table lists the 8 sites, which ftpatch finds through it: all calls.
    sites = ftpatch.scan(str(linked)).sites
    assert len(sites) == 8 and {s.state for s in sites} == {ftpatch.State.CALL}
    assert int(run("readelf", "-SW", linked).split("] __mcount_loc ")[1].split()[3], 16) == 8 * (
        4 if "i386" in name else 8
    )


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        (n, m)
        for n in ("gcc", "gcc-nopie", "clang", "gcc-i386", "clang-i386")
        for m in ("pie", "no-pie", "shared")
        if not (n.endswith("nopie") and m != "no-pie")
    ],
)
def test_stripped_program_nop_call_round_trip(tmp: Path, name: str, mode: str) -> None:
    """strip, then nop and call: the identical file, every site listed, from __mcount_loc alone."""
    linked, _ = link(tmp, name, "bfd", mode)
    stripped, nopped, back = tmp / "stripped", tmp / "nopped", tmp / "back"
    run("strip", linked, "-o", stripped)
    result = ftpatch.scan(str(stripped))
    assert len(result.sites) == 8 and {s.state for s in result.sites} == {ftpatch.State.CALL}
    assert run_cli(["nop", str(stripped), "-o", str(nopped)])[:2] == (
        0,
        f"{stripped} -> {nopped}: 8 patched, 0 already nop, 0 filtered out\n",
    )
    assert {s.state for s in ftpatch.scan(str(nopped)).sites} == {ftpatch.State.NOP}
    assert run_cli(["call", str(nopped), "-o", str(back)])[0] == 0
    assert back.read_bytes() == stripped.read_bytes()


def test_garbage_at_a_site_of_a_stripped_program_is_caught(tmp: Path) -> None:
    """__mcount_loc gives exact addresses: a site holding anything but its call or a nop fails verification."""
    linked, _ = link(tmp, "gcc", "bfd", "pie")
    stripped = tmp / "stripped"
    run("strip", linked, "-o", stripped)
    site = ftpatch.scan(str(stripped)).sites[3]
    data = bytearray(stripped.read_bytes())
    data[site.file_offset : site.file_offset + site.length] = bytes.fromhex("0f0b") + bytes(site.length - 2)
    stripped.write_bytes(data)
    code, _, err = run_cli(["nop", str(stripped), "-o", str(tmp / "out")])
    assert code == 3 and f"{site.section}+{site.offset:#x}: expected ff:15:" in err, err
    assert not (tmp / "out").exists()


def test_stripped_static_program_nops_but_call_needs_symbols(tmp: Path) -> None:
    """A stripped static program names mcount nowhere: its live calls at the listed sites say where it is,
    so nop works, and once they are nops nothing does; call refuses, as docs/linked.md says."""
    linked, _ = link(tmp, "gcc", "bfd", "static")
    stripped, nopped = tmp / "stripped", tmp / "nopped"
    run("strip", linked, "-o", stripped)
    assert len(ftpatch.scan(str(stripped)).sites) == 8
    assert run_cli(["nop", str(stripped), "-o", str(nopped)])[0] == 0
    code, _, err = run_cli(["call", str(nopped), "-o", str(tmp / "back")])
    assert code == 1 and "is a stripped static program" in err


@pytest.mark.parametrize("linker", LINKERS)
def test_gcc_record_mcount_needs_a_text_relocation(tmp: Path, linker: str) -> None:
    """Why ftpatch's __mcount_loc is writable: gcc's own, read-only, makes bfd warn and create DT_TEXTREL in a PIE,
    gold create one without a word, and lld refuse the link (docs/facts.md)."""
    obj = tmp / "prog.o"
    run("gcc", "-O2", "-c", "-pg", "-mrecord-mcount", FIXTURES / "prog.c", "-o", obj)
    proc = subprocess.run(["gcc", "-pg", f"-fuse-ld={linker}", obj, "-o", tmp / "prog"], capture_output=True, text=True)
    if linker == "lld":
        assert proc.returncode != 0 and "relocation R_X86_64_64 cannot be used against local symbol" in proc.stderr
        return
    assert proc.returncode == 0
    assert ("relocation in read-only section `__mcount_loc'" in proc.stderr) == (linker == "bfd")
    assert "TEXTREL" in run("readelf", "-dW", tmp / "prog")


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_make_record_example(tmp: Path, cc: str) -> None:
    """examples/record: record is each object's step after the compiler, as recordmcount is kbuild's; the program
    links, runs, and lists its 8 sites in __mcount_loc, with clang as with gcc."""
    import shutil
    import sys

    from conftest import ROOT

    work = tmp / "examples" / "record"
    shutil.copytree(ROOT / "examples" / "record", work)
    (tmp / "fixtures").mkdir()
    shutil.copy(FIXTURES / "prog.c", tmp / "fixtures" / "prog.c")
    log = run("make", "-C", work, f"CC={cc}", f"FTPATCH=PYTHONPATH={ROOT} {sys.executable} -m ftpatch")
    assert "prog.o: 8 sites recorded in __mcount_loc" in log
    out = subprocess.run([work / "prog"], cwd=work, capture_output=True, text=True, check=True).stdout
    assert out == PROGRAM_OUTPUT
    assert int(run("readelf", "-SW", work / "prog").split("] __mcount_loc ")[1].split()[3], 16) == 64
    assert len(ftpatch.scan(str(work / "prog")).sites) == 8


CPP_A = """template <class T> struct S { T v; int get() const { return (int)v * 3; } };
inline int inl(int x) { return x + 7; }
int use_a(int x) { S<int> s{x}; return s.get() + inl(x); }
"""
CPP_B = """#include <cstdio>
template <class T> struct S { T v; int get() const { return (int)v * 3; } };
inline int inl(int x) { return x + 7; }
int use_a(int x);
int main() { S<int> s{4}; std::printf("%d %d\\n", s.get() + inl(2), use_a(3)); }
"""


@pytest.mark.parametrize("mode", ["pie", "no-pie", "static"])
@pytest.mark.parametrize("linker", LINKERS)
def test_cpp_inline_functions_keep_one_entry_each(tmp: Path, linker: str, mode: str) -> None:
    """Both objects hold inl() and S<int>::get() in COMDAT groups, and the linker keeps one copy of each: their
    entries are in tables that join their groups, so the discarded copy's entries go with it. (gcc's own
    -mrecord-mcount table stays outside the groups, and every linker refuses it.)"""
    (tmp / "a.cc").write_text(CPP_A)
    (tmp / "b.cc").write_text(CPP_B)
    objects = [tmp / "a.o", tmp / "b.o"]
    for obj in objects:
        run("g++", "-O1", "-pg", "-fno-inline", "-c", obj.with_suffix(".cc"), "-o", obj)
    assert run_cli(["record", "--in-place", *map(str, objects)])[0] == 0
    assert "COMDAT group section [    1] `.group' [_Z3inli] contains 4 sections:" in run("readelf", "-gW", objects[0])
    assert run("eu-elflint", "--gnu-ld", objects[0]) == "No errors\n"
    exe = tmp / "prog"
    proc = subprocess.run(
        ["g++", "-pg", *MODES[mode], f"-fuse-ld={linker}", *objects, "-o", exe], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert subprocess.run([exe], cwd=tmp, capture_output=True, text=True, check=True).stdout == "21 19\n"
    sites = ftpatch.scan(str(exe)).sites  # use_a, main, and one inl and one S<int>::get
    assert len(sites) == 4 and {s.state for s in sites} == {ftpatch.State.CALL}
    assert int(run("readelf", "-SW", exe).split("] __mcount_loc ")[1].split()[3], 16) == 4 * 8
    if mode == "pie":
        for obj in objects:
            run("g++", "-O1", "-pg", "-fno-inline", "-mrecord-mcount", "-c", obj.with_suffix(".cc"), "-o", obj)
        proc = subprocess.run(["g++", "-pg", f"-fuse-ld={linker}", *objects, "-o", exe], capture_output=True, text=True)
        assert proc.returncode != 0 and "discarded section" in proc.stderr
