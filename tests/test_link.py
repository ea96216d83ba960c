"""nop'd objects link with gcc and run the same; gprof proves mcount is no longer called."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, OBJECTS, PG_OBJECTS, PROGRAM_OUTPUT, call_graph, ftpatch, run

# glibc's __fentry__ records arcs as mcount does; -mnop-mcount programs never call either.
GPROF_OBJECTS = [name for name in PG_OBJECTS if name != "x86_64-nop-mcount.o"]


def link_and_run(obj: Path, name: str, workdir: Path) -> tuple[Path, str]:
    """Link like fixtures/README.md says, run in `workdir` (where gmon.out lands), return stdout."""
    _, flags = OBJECTS[name]
    workdir.mkdir()
    exe = workdir / "prog"
    run("gcc", *flags, obj, "-o", exe)
    return exe, subprocess.run([exe], capture_output=True, text=True, check=True, cwd=workdir).stdout


@pytest.mark.parametrize("name", PG_OBJECTS)
def test_nopped_object_links_and_runs(tmp: Path, name: str) -> None:
    nopped = tmp / "nop.o"
    assert ftpatch("nop", FIXTURES / name, "-o", nopped).returncode == 0
    _, out = link_and_run(nopped, name, tmp / "run")
    assert out == PROGRAM_OUTPUT


@pytest.mark.parametrize("name", GPROF_OBJECTS)
def test_gprof_loses_then_regains_the_call_graph(tmp: Path, name: str) -> None:
    exe, _ = link_and_run(FIXTURES / name, name, tmp / "original")
    graph = call_graph(exe)
    assert graph.returncode == 0 and "fib" in graph.stdout

    nopped, back = tmp / "nop.o", tmp / "back.o"
    assert ftpatch("nop", FIXTURES / name, "-o", nopped).returncode == 0
    exe, out = link_and_run(nopped, name, tmp / "nopped")
    assert out == PROGRAM_OUTPUT
    graph = call_graph(exe)
    assert graph.returncode != 0 and "gmon.out file is missing call-graph data" in graph.stderr

    assert ftpatch("call", nopped, "-o", back).returncode == 0
    assert back.read_bytes() == (FIXTURES / name).read_bytes()
    exe, out = link_and_run(back, name, tmp / "restored")
    assert out == PROGRAM_OUTPUT
    graph = call_graph(exe)
    assert graph.returncode == 0
    # fib(20) recurses 10945 times below its one call from main.
    assert any(line.startswith("[") and line.split()[-3:-1] == ["1+10945", "fib"] for line in graph.stdout.splitlines())
