"""Every example in README.md is true: the commands run, and the library snippet works."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT

README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def shell(tmp: Path) -> dict[str, str]:
    """A PATH whose `ftpatch` is this checkout, run by the interpreter running the tests."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ftpatch"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m ftpatch "$@"\n')
    wrapper.chmod(0o755)
    # A script, not a symlink: started through a symlink in another directory, Python misses the
    # venv's pyvenv.cfg and runs the base interpreter, which on a fresh machine has none of our packages.
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    shutil.copytree(FIXTURES, tmp / "fixtures")
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}


def test_setup_command_runs_on_a_shipped_fixture(tmp_path: Path) -> None:
    first = blocks("sh")[0].strip()
    install, _, command = first.partition(" && ")
    assert install == "pip install ."
    env = shell(tmp_path)
    proc = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "prog-nop.o").exists()


def test_test_command_is_what_ci_runs() -> None:
    assert blocks("sh")[1].strip() in (ROOT / ".ci" / "run").read_text()


def test_usage_lines_run(tmp_path: Path) -> None:
    env = shell(tmp_path)
    lines = [line.split("  #")[0].strip() for line in blocks("sh")[2].splitlines() if line.strip()]
    assert len(lines) >= 8
    for line in lines:
        proc = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, (line, proc.stdout, proc.stderr)
        assert "ftpatch: warning:" not in proc.stderr, (line, proc.stderr)  # every glob shown matches something


def test_pipeline_example_runs_on_copies(tmp_path: Path) -> None:
    import json

    env = shell(tmp_path)
    for line in blocks("sh")[3].splitlines():
        command = line.split("  #")[0].strip()
        proc = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, (command, proc.stderr)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"]["files"] == 7 and report["summary"]["failed"] == 0
    assert (tmp_path / "fixtures" / "x86_64-pie.o").read_bytes() != (FIXTURES / "x86_64-pie.o").read_bytes()


def test_record_lines_run(tmp_path: Path) -> None:
    """The clang example of "Recording __mcount_loc": the program's 8 sites come from the table, stripped too."""
    import json

    env = shell(tmp_path)
    block = next(b for b in blocks("sh") if "ftpatch record --in-place prog-clang.o" in b)
    for line in block.splitlines():
        command = line.split("  #")[0].strip()
        proc = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, (command, proc.stderr)
    proc = subprocess.run(["readelf", "-SW", "prog-clang"], cwd=tmp_path, capture_output=True, text=True)
    assert "__mcount_loc" in proc.stdout and ".symtab" not in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "ftpatch", "scan", "--json", "prog-clang"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    sites = json.loads(proc.stdout)["files"][0]["sites"]
    assert len(sites) == 8 and {s["state"] for s in sites} == {"call"}


def test_library_snippet_runs(tmp_path: Path) -> None:
    env = shell(tmp_path)
    code = blocks("python")[0]
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.o").read_bytes() != (FIXTURES / "x86_64-pie.o").read_bytes()
    *sites, patches = proc.stdout.splitlines()
    assert len(sites) == 8 and "fib (.text+0xcd) gotpcrel call" in sites
    # fib's call becomes the o16 nop, and its relocation's r_info becomes 0 and its r_addend the record of the
    # call (R_X86_64_GOTPCRELX, 41, against mcount); the bytes are checked against the file.
    count, listed = patches.split(" ", 1)
    (site, old, new), (info, entry, nopped) = ast.literal_eval(listed)
    original = (FIXTURES / "x86_64-pie.o").read_bytes()
    assert count == "1" and site == hex(0x40 + 0xCD)  # .text starts at file offset 0x40
    assert bytes.fromhex(old) == original[0x10D : 0x10D + 6] == bytes.fromhex("ff1500000000")
    assert bytes.fromhex(new) == bytes.fromhex("666666666690")  # o16, 6 bytes
    assert bytes.fromhex(entry) == original[int(info, 16) : int(info, 16) + 16]
    record = 0x4654 << 48 | 41 << 32 | zlib.crc32(b"mcount")
    assert bytes.fromhex(nopped) == bytes(8) + record.to_bytes(8, "little")


def test_error_example_is_what_ftpatch_prints(tmp_path: Path) -> None:
    example = next(line for line in README.splitlines() if line.startswith("ftpatch: error: bad.o"))
    data = bytearray((FIXTURES / "x86_64-pie.o").read_bytes())
    data[0x10D : 0x10D + 6] = bytes.fromhex("0f0b90909090")
    (tmp_path / "bad.o").write_bytes(data)
    proc = subprocess.run(
        [sys.executable, "-m", "ftpatch", "nop", "bad.o", "-o", "x.o"],
        cwd=tmp_path,
        env=shell(tmp_path),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 3
    assert proc.stderr.strip() == example


def test_json_example_matches(tmp_path: Path) -> None:
    import json

    example = json.loads(blocks("json")[0])
    proc = subprocess.run(
        [sys.executable, "-m", "ftpatch", "scan", "--json", "fixtures/x86_64-pie.o"],
        cwd=tmp_path,
        env=shell(tmp_path),
        capture_output=True,
        text=True,
    )
    real = json.loads(proc.stdout)
    assert real.keys() == example.keys()
    assert real["files"][0]["sites"][0] == example["files"][0]["sites"][0]
    assert {k: v for k, v in real["files"][0].items() if k != "sites"} == {
        k: v for k, v in example["files"][0].items() if k != "sites"
    }


def test_nops_table_matches_ftpatch_nops() -> None:
    from ftpatch.x86 import NOP_STYLES

    for style in NOP_STYLES.values():
        row = f"| `{style.name}` | `{style.nop5.hex(' ')}` | `{style.nop6.hex(' ')}` |"
        assert row in README


def test_what_the_examples_write_at_the_top_is_ignored_by_git() -> None:
    """A user who runs the README from the top of a clone sees no untracked outputs in `git status`."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    written = set()
    for block in blocks("sh") + blocks("python"):
        for line in block.splitlines():
            command = line.split("  #")[0]
            written |= set(re.findall(r"(?:-o\s+|>\s*|output=\")([\w.-]+)", command))
    written |= {"gmon.out"}
    assert {"prog-nop.o", "report.json", "out.o"} <= written
    proc = subprocess.run(
        ["git", "check-ignore", "--no-index", *sorted(written)], cwd=ROOT, capture_output=True, text=True
    )
    assert set(proc.stdout.split()) == written
