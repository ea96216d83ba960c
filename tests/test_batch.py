"""Build-pipeline mode: many files, lists, parallel workers, JSON reports, archives, examples."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    DOC_PAGES,
    FIXTURES,
    PG_OBJECTS,
    PROGRAM_OUTPUT,
    RELOCATED,
    ROOT,
    call_graph,
    ftpatch,
    read_terminal,
    run,
)


def tree(tmp: Path, copies: int = 3) -> list[Path]:
    """Copies of every fixture, as a build tree holds them."""
    paths = []
    for i in range(copies):
        d = tmp / f"dir{i}"
        d.mkdir()
        for name in [*PG_OBJECTS, "x86_64-nopg.o"]:
            paths.append(Path(shutil.copy(FIXTURES / name, d / name)))
    return paths


def digest(paths: list[Path]) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()


def test_files_from_stdin_parallel_json(tmp: Path) -> None:
    paths = tree(tmp)
    listing = "".join(f"{p}\n" for p in paths)
    proc = subprocess.run(
        [sys.executable, "-m", "ftpatch", "nop", "--in-place", "--json", "-j", "2", "--files-from", "-"],
        input=listing,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["action"] == "nop"
    assert [f["path"] for f in doc["files"]] == [str(p) for p in paths]
    assert doc["summary"] == {"files": 27, "patched": 7 * 8 * 3, "already": 8 * 3, "filtered": 0, "failed": 0}
    statuses = {Path(f["path"]).name: f["status"] for f in doc["files"]}
    assert statuses["x86_64-nopg.o"] == statuses["x86_64-nop-mcount.o"] == "unchanged"
    assert statuses["x86_64-pie.o"] == "patched"
    first = doc["files"][0]
    assert set(first) == {"path", "output", "status", "patched", "already", "filtered", "warnings"}


def test_parallel_and_serial_give_the_same_bytes(tmp: Path) -> None:
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    a, b = tree(tmp / "a"), tree(tmp / "b")
    ra = ftpatch("nop", "--in-place", "--json", "-j", "1", *a)
    rb = ftpatch("nop", "--in-place", "--json", "-j", "2", *b)
    assert ra.returncode == rb.returncode == 0
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    # The report holds no timestamps: it is a function of the inputs alone.
    norm = [json.loads(r.stdout.replace(str(tmp / d), "X")) for r, d in ((ra, "a"), (rb, "b"))]
    assert norm[0] == norm[1]
    before = digest(a)
    assert ftpatch("nop", "--in-place", *a).returncode == 0  # again: nothing changes
    assert digest(a) == before


def test_a_failed_file_is_left_untouched_and_others_proceed(tmp: Path) -> None:
    paths = tree(tmp, copies=1)
    bad = paths[0]
    data = bytearray(bad.read_bytes())
    data[0x10D] = 0xCC
    bad.write_bytes(data)
    proc = ftpatch("nop", "--in-place", "--json", "-j", "2", *paths)
    assert proc.returncode == 3
    doc = json.loads(proc.stdout)
    failed = [f for f in doc["files"] if f["status"] == "failed"]
    assert [(f["path"], f["exit_code"]) for f in failed] == [(str(bad), 3)]
    assert "expected ff:15:00:00:00:00, actual cc:15:00:00:00:00" in failed[0]["error"]
    assert bad.read_bytes() == data
    assert doc["summary"]["failed"] == 1 and doc["summary"]["files"] == len(paths)


def test_fail_fast_stops_at_the_first_failure(tmp: Path) -> None:
    paths = tree(tmp, copies=1)
    text = tmp / "text.o"
    text.write_text("not elf")
    proc = ftpatch("nop", "--in-place", "--fail-fast", "-j", "1", text, *paths)
    assert proc.returncode == 1
    assert all(p.read_bytes() == (FIXTURES / p.name).read_bytes() for p in paths)


def test_files_from_a_list_and_quiet(tmp: Path) -> None:
    paths = tree(tmp, copies=1)
    listing = tmp / "list.txt"
    listing.write_text("\n".join(map(str, paths)) + "\n")
    proc = ftpatch("nop", "--in-place", "-q", "--files-from", listing)
    assert proc.returncode == 0
    assert proc.stdout == ""
    assert proc.stderr.startswith("ftpatch nop: 9 files, 56 sites patched, 8 already nop, 0 filtered out, 0 failed, ")
    assert ftpatch("nop", "--files-from", tmp / "missing.txt", "--in-place").returncode == 2


def test_archive_scan_nop_call_and_link(tmp: Path) -> None:
    for name in RELOCATED:
        shutil.copy(FIXTURES / name, tmp / name)
    lib = tmp / "libprog.a"
    x64 = [n for n in RELOCATED if n.startswith("x86_64") and n != "x86_64-pie.o"]
    long_name = tmp / "a_member_name_longer_than_sixteen.o"
    shutil.copy(FIXTURES / "x86_64-nopie.o", long_name)
    run("ar", "rcs", lib, *[tmp / n for n in x64], long_name)
    scan = json.loads(ftpatch("scan", "--json", lib).stdout)["files"]
    assert [f["path"] for f in scan] == [f"{lib}({n})" for n in x64] + [f"{lib}(a_member_name_longer_than_sixteen.o)"]
    assert all(len(f["sites"]) == 8 for f in scan)
    nopped, back = tmp / "libnop.a", tmp / "libback.a"
    proc = ftpatch("nop", lib, "-o", nopped)
    assert proc.returncode == 0, proc.stderr
    assert f"{8 * len(scan)} patched" in proc.stdout
    assert run("ar", "t", nopped) == run("ar", "t", lib)
    assert nopped.stat().st_size == lib.stat().st_size
    # ld links against the nop'd archive, through its symbol index; main comes from the archive.
    workdir = tmp / "run"
    workdir.mkdir()
    run("ar", "rcs", tmp / "libone.a", long_name)
    one_nop = tmp / "libone-nop.a"
    assert ftpatch("nop", tmp / "libone.a", "-o", one_nop).returncode == 0
    run("gcc", "-pg", "-no-pie", "-Wl,-u,main", one_nop, "-o", workdir / "prog")
    out = subprocess.run([workdir / "prog"], cwd=workdir, capture_output=True, text=True, check=True).stdout
    assert out == PROGRAM_OUTPUT
    assert "gmon.out file is missing call-graph data" in call_graph(workdir / "prog").stderr
    assert ftpatch("call", nopped, "-o", back).returncode == 0
    assert back.read_bytes() == lib.read_bytes()


def test_help_and_version_do_not_import_lief_or_capstone() -> None:
    code = (
        "import sys, runpy\nsys.argv = ['ftpatch', '{}']\n"
        "try:\n    runpy.run_module('ftpatch', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('lief', 'capstone', 'elftools', 'rich') if m in sys.modules))"
    )
    for flag in ("--help", "--version"):
        out = subprocess.run([sys.executable, "-c", code.format(flag)], capture_output=True, text=True, cwd=ROOT).stdout
        assert out.strip().endswith("HEAVY []"), out


def test_one_object_imports_only_what_it_needs(tmp: Path) -> None:
    """The per-object build step: nop a C object (all of it, or with --only), nop it again, call it
    back, as one process each. None decodes an instruction, reads a linked file or demangles a name,
    so none imports capstone, pyelftools, the linked-file scanner, multiprocessing, json or ctypes;
    and no typer that imports pydantic is installed."""
    code = (
        "import sys, runpy\nsys.argv = ['ftpatch', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('ftpatch', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = ('capstone', 'elftools', 'ftpatch.linked', 'multiprocessing', 'pydantic', 'json', 'ctypes')\n"
        "print(code, sorted(m for m in heavy if m in sys.modules), file=sys.stderr)"
    )
    shutil.copy(FIXTURES / "x86_64-pie.o", tmp / "a.o")
    runs = (["nop", "a.o", "-o", "b.o"], ["nop", "--only", "fib", "a.o", "-o", "e.o"], ["nop", "b.o", "-o", "c.o"])
    for args in (*runs, ["call", "b.o", "-o", "d.o"]):
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp)
        assert proc.stderr.splitlines()[-1] == "0 []", (args, proc.stderr)
    assert (tmp / "d.o").read_bytes() == (tmp / "a.o").read_bytes()
    # A batch of objects in -j workers: the parent forks them without capstone or pyelftools.
    args = ["call", "--in-place", "-j", "2", "b.o", "c.o", "e.o"]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp)
    assert proc.stderr.splitlines()[-1] == "0 ['multiprocessing']", proc.stderr


def assert_runs_nopped(exe: Path, scanned: Path) -> None:
    """`scanned` holds prog.c's 8 sites, all nop'd, and `exe` prints its output without calling mcount."""
    sites = json.loads(ftpatch("scan", "--json", scanned).stdout)["files"][0]["sites"]
    assert len(sites) == 8 and {s["state"] for s in sites} == {"nop"}
    out = subprocess.run([exe], cwd=exe.parent, capture_output=True, text=True, check=True).stdout
    assert out == PROGRAM_OUTPUT
    assert "gmon.out file is missing call-graph data" in call_graph(exe).stderr


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is installed by .ci/run")
def test_cmake_post_build_example(tmp: Path) -> None:
    build = tmp / "build"
    wrapper = tmp / "ftpatch"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m ftpatch "$@"\n')
    wrapper.chmod(0o755)
    run("cmake", "-S", ROOT / "examples" / "cmake", "-B", build, f"-DFTPATCH={wrapper}")
    log = run("cmake", "--build", build)
    assert "ftpatch: profiling calls in prog -> nops" in log
    assert_runs_nopped(build / "prog", scanned=build / "prog")


def test_make_example(tmp: Path) -> None:
    work = tmp / "examples" / "make"
    shutil.copytree(ROOT / "examples" / "make", work)
    (tmp / "fixtures").mkdir()
    shutil.copy(FIXTURES / "prog.c", tmp / "fixtures" / "prog.c")
    ftp = f"PYTHONPATH={ROOT} {sys.executable} -m ftpatch"
    run("make", "-C", work, f"FTPATCH={ftp}")
    assert_runs_nopped(work / "prog", scanned=work / "prog.o")


def test_progress_bar_only_on_a_terminal(tmp: Path) -> None:
    import os
    import pty

    paths = tree(tmp, copies=2)
    for p in paths:  # many sites' worth of work, so the bar is drawn at least once
        p.write_bytes((FIXTURES / "x86_64-pie.o").read_bytes())
    main, sub = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftpatch", "nop", "--in-place", "-q", "-j", "1", *map(str, paths)],
        stdout=subprocess.PIPE,
        stderr=sub,
        cwd=ROOT,
    )
    os.close(sub)
    text = read_terminal(main)
    assert proc.wait() == 0
    assert proc.stdout is not None and proc.stdout.read() == b""  # the bar goes to stderr only
    assert "patching" in text  # the bar's label, drawn on the terminal
    assert "ftpatch nop: 18 files, 144 sites patched" in text
    # Not a terminal: no bar, only the summary.
    again = ftpatch("call", "--in-place", "-q", *paths)
    assert again.returncode == 0
    assert again.stderr.splitlines() == [
        line for line in again.stderr.splitlines() if line.startswith("ftpatch call: 18 files")
    ]


def test_docs_show_the_examples_as_they_are() -> None:
    import re

    examples = {
        "cmake": ["examples/cmake/CMakeLists.txt"],
        "make": ["examples/make/Makefile", "examples/record/Makefile"],
    }
    for lang, paths in examples.items():
        snippets = [s for page in DOC_PAGES for s in re.findall(rf"```{lang}\n(.*?)```", page.read_text(), re.S)]
        assert len(snippets) == len(paths)
        for snippet, path in zip(snippets, paths, strict=True):
            assert snippet in (ROOT / path).read_text(), path
