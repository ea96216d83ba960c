"""gcc -mnop-mcount -mrecord-mcount: `call` turns each nop __mcount_loc lists into the call gcc writes without
-mnop-mcount, with its relocation entry and symbol, so that the object is the build without the option.

Objects of fixtures/prog.c and of Debian's zlib (its own build) are compared with `objdump -dr` against the
same source built without -mnop-mcount; the program linked with -pg from the restored objects fills gprof's
call graph. A linked -mnop-mcount program calls no target: `call` says to restore the objects, and
`call --target NAME` points its sites at a function it defines.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES, PROGRAM_OUTPUT, call_graph, code_and_relocations, ftpatch
from test_retarget import HOOK, counted, hook_object, ok, sh

PROG = FIXTURES / "prog.c"


@pytest.mark.parametrize("bits", [[], ["-m32"]], ids=["x86_64", "i386"])
@pytest.mark.parametrize("fentry", [[], ["-mfentry"]], ids=["mcount", "fentry"])
def test_call_gives_the_build_without_mnop_mcount(tmp_path: Path, bits: list[str], fentry: list[str]) -> None:
    flags = [*bits, "-O2", "-pg", *fentry, "-mrecord-mcount", "-fno-pie"]
    nopped, plain, called = tmp_path / "nopped.o", tmp_path / "plain.o", tmp_path / "called.o"
    sh("gcc", *flags, "-mnop-mcount", "-c", PROG, "-o", nopped, cwd=tmp_path)
    sh("gcc", *flags, "-c", PROG, "-o", plain, cwd=tmp_path)
    proc = ok("call", nopped, "-o", called)
    assert ": 8 patched, 0 already call" in proc.stdout
    assert code_and_relocations(called) == code_and_relocations(plain)
    # The symbol is added where the object has none, as gas makes it.
    symbol = "__fentry__" if fentry else "mcount"
    last = sh("readelf", "-sW", called, cwd=tmp_path).stdout.strip().splitlines()[-1].split()
    assert last[3:] == ["NOTYPE", "GLOBAL", "DEFAULT", "UND", symbol]
    # nop takes it back to nops, and call again gives the same object.
    again, back = tmp_path / "again.o", tmp_path / "back.o"
    ok("nop", called, "-o", again)
    assert sh("objdump", "-d", again, cwd=tmp_path).stdout.count(f"<{symbol}>") == 0
    ok("call", again, "-o", back)
    assert back.read_bytes() == called.read_bytes()
    # Linked with -pg, the restored object fills gprof's call graph.
    exe = tmp_path / "prog"
    sh("gcc", *bits, "-pg", "-no-pie", called, "-o", exe, cwd=tmp_path)
    assert sh(exe, cwd=tmp_path).stdout == PROGRAM_OUTPUT
    graph = call_graph(exe, tmp_path)
    assert graph.returncode == 0 and "fib" in graph.stdout and "[1]" in graph.stdout, graph.stderr


def test_only_some_sites_and_any_target(tmp_path: Path) -> None:
    nopped = FIXTURES / "x86_64-nop-mcount.o"
    some, hooked = tmp_path / "some.o", tmp_path / "hooked.o"
    ok("call", "--only", "fib", nopped, "-o", some)
    relocations = code_and_relocations(some)
    assert relocations.count("__fentry__") == 1 and "<fib>:\n" in relocations
    proc = ok("scan", some)
    assert "8 sites (1 call, 7 not)" in proc.stdout
    ok("call", "--target", HOOK, nopped, "-o", hooked)
    assert code_and_relocations(hooked).count(f"R_X86_64_PLT32\t{HOOK}-0x4") == 8


def test_a_program_calls_what_it_defines_or_reaches(tmp_path: Path) -> None:
    """A -mnop-mcount program calls no target: `call` says what would work, `call --target` a function it has."""
    hook = hook_object(tmp_path, "gcc", [])
    exe = tmp_path / "prog"
    flags = ["-O2", "-pg", "-mfentry", "-mnop-mcount", "-mrecord-mcount", "-fno-pie", "-no-pie"]
    sh("gcc", *flags, PROG, hook, "-o", exe, cwd=tmp_path)
    proc = ftpatch("call", exe, "-o", tmp_path / "out")
    assert proc.returncode == 1 and "`ftpatch call --target NAME`" in proc.stderr
    assert not (tmp_path / "out").exists()
    ok("call", "--target", HOOK, exe, "-o", tmp_path / "hooked")
    printed, count = counted(tmp_path / "hooked", tmp_path)
    assert printed == PROGRAM_OUTPUT and count > 1000
    # One object that calls __fentry__ is enough for the program to reach it: then `call` makes every site its call.
    (tmp_path / "other.c").write_text("int other(int x) { return x + 1; }\n")
    sh("gcc", "-O2", "-pg", "-mfentry", "-mrecord-mcount", "-fno-pie", "-c", "other.c", "-o", "other.o", cwd=tmp_path)
    sh("gcc", *flags, PROG, "other.o", "-o", exe, cwd=tmp_path)
    proc = ok("call", exe, "-o", tmp_path / "called")
    assert ": 8 patched, 1 already call" in proc.stdout
    assert sh(tmp_path / "called", cwd=tmp_path).stdout == PROGRAM_OUTPUT
    assert "fib" in call_graph(tmp_path / "called", tmp_path).stdout


def test_zlib(tmp_path: Path, zlib_source: Path) -> None:
    """zlib's own build twice, with and without -mnop-mcount: every object of the first after `call` is the
    second's, and `example` linked from them with -pg prints what it prints and fills gprof's call graph."""
    trees = {}
    for name, extra in (("nopped", " -mnop-mcount"), ("plain", "")):
        tree = tmp_path / name
        shutil.copytree(zlib_source, tree, symlinks=True)
        flags = f"-O2 -pg -mfentry -mrecord-mcount -fno-pie{extra}"
        env = {**os.environ, "CC": "gcc", "CFLAGS": flags, "LDFLAGS": "-pg -no-pie"}
        sh("./configure", "--static", cwd=tree, env=env)
        sh("make", "example", "libz.a", cwd=tree, env=env)
        trees[name] = tree
    objects = sorted(p.name for p in trees["nopped"].glob("*.o"))
    assert len(objects) > 10
    ok("call", "--in-place", *(trees["nopped"] / o for o in objects))
    for o in objects:
        assert code_and_relocations(trees["nopped"] / o) == code_and_relocations(trees["plain"] / o), o
    tree = trees["nopped"]
    exe = tree / "example-called"
    sh(
        "gcc",
        "-pg",
        "-no-pie",
        "example.o",
        *(o for o in objects if o != "example.o" and not o.startswith("mini")),
        "-o",
        exe,
        cwd=tree,
    )
    assert sh(exe, cwd=tree).stdout == sh(trees["plain"] / "example", cwd=trees["plain"]).stdout
    graph = call_graph(exe, tree)
    assert "deflate" in graph.stdout and "inflate" in graph.stdout, graph.stderr
