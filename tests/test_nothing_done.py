"""Nothing done never looks like success: each case says what happened and what would work."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, PROGRAM_OUTPUT, call_graph, ftpatch, run

PROG = FIXTURES / "prog.c"


def copies(tmp: Path, names: list[str]) -> list[Path]:
    return [Path(shutil.copy(FIXTURES / name, tmp / f"{i}-{name}")) for i, name in enumerate(names)]


def test_a_glob_that_matches_nothing_in_the_whole_run_is_said_once(tmp: Path) -> None:
    # fib is in the three fixtures, lonely in one object of its own: most files not matching is normal.
    paths = copies(tmp, ["x86_64-pie.o", "x86_64-nopie.o", "i386-pic.o"])
    (tmp / "lonely.c").write_text("int lonely(int x) { return x + 1; }\n")
    run("gcc", "-O2", "-pg", "-c", tmp / "lonely.c", "-o", tmp / "lonely.o")
    paths.append(tmp / "lonely.o")
    globs = ["--only", "fib", "--only", "lonely", "--except", "fibb", "--except", "lonely"]
    proc = ftpatch("nop", "--in-place", "-j", "2", *globs, *paths)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("ftpatch: warning:")]
    assert warnings == [
        "ftpatch: warning: --except 'fibb' matched no function with a site in any of the 4 files; a glob matches a "
        "function's symbol, its demangled name, or that name without parameters (`ftpatch scan --json` lists both)"
    ]
    # With --json: the same warning in the report, and on stderr.
    proc = ftpatch("call", "--in-place", "--json", "--only", "fibb", *paths)
    assert proc.returncode == 0
    report = json.loads(proc.stdout)
    assert report["warnings"] == [w.removeprefix("ftpatch: warning: ") for w in proc.stderr.splitlines()]
    assert report["warnings"][0].startswith("--only 'fibb' matched no function with a site in any of the 4 files;")
    assert report["summary"]["patched"] == 0 and report["summary"]["filtered"] == 3 * 8 + 1
    # One file: said of the file. Every file failing: their errors say it all.
    proc = ftpatch("nop", "--only", "Fib", FIXTURES / "x86_64-pie.o", "-o", tmp / "out.o")
    assert "warning: --only 'Fib' matched no function with a site in the file;" in proc.stderr
    text = tmp / "text.o"
    text.write_text("not elf")
    proc = ftpatch("nop", "--only", "Fib", text, "-o", tmp / "out.o")
    assert proc.returncode == 1 and "warning" not in proc.stderr


def test_scan_previews_what_only_and_except_choose(tmp: Path) -> None:
    fentry = FIXTURES / "x86_64-fentry.o"
    globs = ["--only", "*s*", "--only", "fib", "--except", "next_*"]
    proc = ftpatch("scan", *globs, fentry)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{fentry}: x86_64 ET_REL, 4 sites (4 call, 0 not), 4 filtered out"
    chosen = ["checksum.constprop.0", "fib", "is_prime", "sort_values"]
    assert sorted(line.split()[-1] for line in lines[2:]) == chosen
    doc = json.loads(ftpatch("scan", "--json", *globs, fentry).stdout)
    assert sorted(s["function"] for s in doc["files"][0]["sites"]) == chosen
    assert doc["files"][0]["filtered"] == 4 and doc["warnings"] == []
    nopped = ftpatch("nop", *globs, fentry, "-o", tmp / "some.o")
    assert f"{fentry} -> {tmp / 'some.o'}: 4 patched, 0 already nop, 4 filtered out" in nopped.stdout
    proc = ftpatch("scan", "--except", "nothing_here", fentry)
    assert (
        proc.returncode == 0
        and "warning: --except 'nothing_here' matched no function with a site in the file" in proc.stderr
    )


@pytest.fixture(scope="module")
def lto(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("lto")
    run("gcc", "-O2", "-pg", "-flto", "-c", PROG, "-o", tmp / "slim.o")
    run("gcc", "-O2", "-pg", "-flto", "-ffat-lto-objects", "-c", PROG, "-o", tmp / "fat.o")
    return tmp


def test_a_slim_lto_object_is_refused_and_the_linked_program_is_patched(lto: Path, tmp: Path) -> None:
    slim = lto / "slim.o"
    said = (
        f"ftpatch: error: {slim}: a slim LTO object (gcc -flto): it holds GIMPLE, not machine code, so no profiling "
        "call is here to patch; the link compiles it, so patch the linked program"
    )
    for argv in (["nop", slim, "-o", tmp / "n.o"], ["call", slim, "-o", tmp / "c.o"], ["scan", slim]):
        proc = ftpatch(*argv)
        assert proc.returncode == 1 and said in proc.stderr.splitlines(), (argv, proc.stderr)
    assert not (tmp / "n.o").exists()
    # What it points to works: the program the link compiled holds the sites.
    run("gcc", "-O2", "-pg", "-flto", slim, "-o", tmp / "prog")
    proc = ftpatch("nop", tmp / "prog", "-o", tmp / "prog-nop")
    assert proc.returncode == 0 and " 0 patched" not in proc.stdout, proc.stdout
    out = subprocess.run([tmp / "prog-nop"], cwd=tmp, capture_output=True, text=True, check=True).stdout
    assert out == PROGRAM_OUTPUT


def test_a_fat_lto_object_is_patched_with_a_warning(lto: Path, tmp: Path) -> None:
    fat = lto / "fat.o"
    said = (
        f"ftpatch: warning: {fat}: a fat LTO object (gcc -flto -ffat-lto-objects): a link with -flto compiles its "
        "GIMPLE again and does not use this machine code, so patching it changes nothing in that program; patch the "
        "linked program"
    )
    proc = ftpatch("nop", fat, "-o", tmp / "fat-nop.o")
    assert proc.returncode == 0 and "8 patched" in proc.stdout
    assert proc.stderr.splitlines() == [said]
    proc = ftpatch("call", "--json", tmp / "fat-nop.o", "-o", tmp / "fat-back.o")
    assert json.loads(proc.stdout)["files"][0]["warnings"] == [said.split(": ", 3)[3]]
    assert (tmp / "fat-back.o").read_bytes() == fat.read_bytes()
    assert said in ftpatch("scan", fat).stderr.splitlines()


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang is installed by .ci/run")
def test_a_clang_lto_object_is_bitcode_and_refused(tmp: Path) -> None:
    for mode in ("full", "thin"):
        bitcode = tmp / f"{mode}.o"
        run("clang", "-O2", "-pg", f"-flto={mode}", "-c", PROG, "-o", bitcode)
        proc = ftpatch("nop", bitcode, "-o", tmp / "out.o")
        assert proc.returncode == 1
        assert proc.stderr.strip() == (
            f"ftpatch: error: {bitcode}: an LLVM bitcode (clang -flto) object, not machine code: patch the linked program"
        )


def test_call_on_a_program_linked_from_nopped_objects_says_to_relink(tmp: Path) -> None:
    (tmp / "main.c").write_text("int fib(int);\nint main(void) { return fib(10) != 55; }\n")
    (tmp / "fib.c").write_text("int fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }\n")
    objects = [tmp / "main.o", tmp / "fib.o"]
    for obj in objects:
        run("gcc", "-O2", "-pg", "-c", obj.with_suffix(".c"), "-o", obj)
    assert ftpatch("nop", "--in-place", *objects).returncode == 0
    run("gcc", "-pg", *objects, "-o", tmp / "prog")
    proc = ftpatch("call", tmp / "prog", "-o", tmp / "prog-call")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"ftpatch: error: {tmp / 'prog'}: holds 2 nops where profiling calls were, but nothing in it calls mcount, "
        "_mcount or __fentry__ any more (no PLT entry, GOT slot or definition): it was linked from objects whose "
        "sites were nop'd, so there is no call to restore here; run `ftpatch call` on the objects and link again"
    )
    assert not (tmp / "prog-call").exists()
    # What it points to works.
    assert ftpatch("call", "--in-place", *objects).returncode == 0
    run("gcc", "-pg", *objects, "-o", tmp / "prog")
    sites = json.loads(ftpatch("scan", "--json", tmp / "prog").stdout)["files"][0]["sites"]
    assert {s["function"]: s["state"] for s in sites} == {"main": "call", "fib": "call"}


def test_a_nopped_pg_program_still_writes_gmon_out(tmp: Path) -> None:
    run("gcc", "-O2", "-pg", PROG, "-o", tmp / "prog")
    assert ftpatch("nop", "--in-place", tmp / "prog").returncode == 0
    out = subprocess.run([tmp / "prog"], cwd=tmp, capture_output=True, text=True, check=True).stdout
    assert out == PROGRAM_OUTPUT
    assert (tmp / "gmon.out").exists()  # gcrt1 started the profiler, as in any -pg program
    flat = subprocess.run(["gprof", "-b", "-p", tmp / "prog", tmp / "gmon.out"], capture_output=True, text=True)
    assert "Flat profile:" in flat.stdout and "calls" in flat.stdout
    assert "gmon.out file is missing call-graph data" in call_graph(tmp / "prog").stderr
    # The objects nop'd and linked without -pg: no gcrt1, no gmon.out.
    (tmp / "gmon.out").unlink()
    run("gcc", "-O2", "-pg", "-c", PROG, "-o", tmp / "prog.o")
    assert ftpatch("nop", "--in-place", tmp / "prog.o").returncode == 0
    run("gcc", tmp / "prog.o", "-o", tmp / "plain")
    subprocess.run([tmp / "plain"], cwd=tmp, capture_output=True, check=True)
    assert not (tmp / "gmon.out").exists()
