"""Every example in README.md and docs/*.md is true: the commands run, and the library snippets work.

Each ```sh block of every page runs line by line in a temporary directory that holds a copy of fixtures/, with
this checkout's `ftpatch` first on PATH, so nothing is written into the checkout. A block that cannot run here says
so just before it, `<!-- not run: REASON -->`, and the reason must be given.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import DOC_PAGES, FIXTURES, ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
# Pages another piece of work adds: the README may link to them before they exist.
PAGES_ADDED_ELSEWHERE = {DOCS / "pipelines-launcher.md"}
_FENCE = re.compile(r"(?:<!--\s*not run(?P<colon>:?)(?P<reason>.*?)-->\n)?```(?P<lang>[\w+-]*)\n(?P<text>.*?)```", re.S)


@dataclass(frozen=True)
class Block:
    page: Path
    index: int  # among the page's blocks of its language
    lang: str
    text: str
    not_run: str | None  # the reason given in <!-- not run: REASON -->, "" when none was given

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.lang}{self.index}"

    def commands(self) -> list[str]:
        return [line.split("  #")[0].strip() for line in self.text.splitlines() if line.strip()]


def page_blocks(page: Path) -> list[Block]:
    found: list[Block] = []
    for m in _FENCE.finditer(page.read_text()):
        lang = m.group("lang")
        index = sum(b.lang == lang for b in found)
        not_run = None if m.group("reason") is None else m.group("reason").strip() if m.group("colon") else ""
        found.append(Block(page, index, lang, m.group("text"), not_run))
    return found


BLOCKS = [block for page in DOC_PAGES for block in page_blocks(page)]


def blocks(lang: str, page: Path = README) -> list[str]:
    return [b.text for b in BLOCKS if b.page == page and b.lang == lang]


def shell(tmp: Path) -> dict[str, str]:
    """A PATH whose `ftpatch` is this checkout, run by the interpreter running the tests."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ftpatch"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m ftpatch "$@"\n')
    wrapper.chmod(0o755)
    launcher = bin_dir / "ftpatch-cc"
    launcher.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m ftpatch.cc "$@"\n')
    launcher.chmod(0o755)
    # A script, not a symlink: started through a symlink in another directory, Python misses the
    # venv's pyvenv.cfg and runs the base interpreter, which on a fresh machine has none of our packages.
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    shutil.copytree(FIXTURES, tmp / "fixtures")
    shutil.copytree(ROOT / "examples", tmp / "examples")
    # ccache's cache, for the launcher's example, in the test's directory rather than the user's.
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "CCACHE_DIR": str(tmp / "ccache"),
    }


# --------------------------------------------------------------------------------------------- set-up commands


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


# ------------------------------------------------------------------------------- every shell block of every page

SETUP = {(README, "sh", 0), (README, "sh", 1)}  # the two set-up commands, tested above
RUN = [b for b in BLOCKS if b.lang == "sh" and b.not_run is None and (b.page, b.lang, b.index) not in SETUP]


def check_usage(tmp: Path, block: Block) -> None:
    assert len(block.commands()) >= 8


def check_pipeline(tmp: Path, block: Block) -> None:
    report = json.loads((tmp / "report.json").read_text())
    assert report["summary"]["files"] == 7 and report["summary"]["failed"] == 0
    assert (tmp / "fixtures" / "x86_64-pie.o").read_bytes() != (FIXTURES / "x86_64-pie.o").read_bytes()


def check_record(tmp: Path, block: Block) -> None:
    """The clang example of record: the program's 8 sites come from the table, stripped too."""
    proc = subprocess.run(["readelf", "-SW", "prog-clang"], cwd=tmp, capture_output=True, text=True)
    assert "__mcount_loc" in proc.stdout and ".symtab" not in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "ftpatch", "scan", "--json", "prog-clang"], cwd=tmp, capture_output=True, text=True
    )
    sites = json.loads(proc.stdout)["files"][0]["sites"]
    assert len(sites) == 8 and {s["state"] for s in sites} == {"call"}


def check_json_reports(tmp: Path, block: Block) -> None:
    nop = json.loads((tmp / "nop.json").read_text())
    assert nop["action"] == "nop" and nop["summary"]["patched"] == 8
    assert set(nop["files"][0]) == {"path", "output", "status", "patched", "already", "filtered", "warnings"}
    record = json.loads((tmp / "record.json").read_text())
    assert record["action"] == "record" and record["summary"]["recorded"] == 8
    assert set(record["files"][0]) == {"path", "output", "status", "recorded", "already_recorded", "warnings"}


def check_hook(tmp: Path, block: Block) -> None:
    """The retargeted object and the retargeted program print what the program prints and count alike; nop'd,
    the hook counts nothing."""
    runs = {
        exe: subprocess.run([f"./{exe}"], cwd=tmp, capture_output=True, text=True)
        for exe in ("prog", "prog-hook", "prog-hook2", "prog-off")
    }
    assert len({r.stdout for r in runs.values()}) == 1
    counts = {exe: re.findall(r"profile_hook: (\d+) calls", r.stderr) for exe, r in runs.items()}
    assert counts["prog-hook"] == counts["prog-hook2"] and int(counts["prog-hook"][0]) > 1000
    assert counts["prog"] == counts["prog-off"] == ["0"]


def check_launcher(tmp: Path, block: Block) -> None:
    """Make's, CMake's and ccache's objects all hold nop'd sites, and nothing else."""
    built = [
        tmp / "examples" / "launcher" / "prog.o",
        tmp / "prog.o",
        *sorted((tmp / "build-launcher").rglob("*.o")),
    ]
    assert len(built) == 4
    for path in built:
        proc = subprocess.run(
            [sys.executable, "-m", "ftpatch", "scan", "--json", path], cwd=tmp, capture_output=True, text=True
        )
        sites = json.loads(proc.stdout)["files"][0]["sites"]
        assert sites and {s["state"] for s in sites} == {"nop"}, path


# What a block must have done beyond exiting 0, keyed by a line it holds.
AFTER: dict[str, Callable[[Path, Block], None]] = {
    "ftpatch nop fixtures/x86_64-pie.o -o prog-nop.o           # every profiling call -> nop": check_usage,
    "ftpatch nop --in-place --files-from objects.txt": check_pipeline,
    "ftpatch record --in-place prog-clang.o": check_record,
    "ftpatch nop --json fixtures/x86_64-pie.o -o nop.o > nop.json": check_json_reports,
    "ftpatch call --target profile_hook prog.o -o prog-hook.o": check_hook,
    'make -C examples/launcher CC="ftpatch-cc gcc"': check_launcher,
}


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_shell_block_runs(tmp_path: Path, block: Block) -> None:
    env = shell(tmp_path)
    for command in block.commands():
        proc = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, (command, proc.stdout, proc.stderr)
        assert "ftpatch: warning:" not in proc.stderr, (command, proc.stderr)  # every glob shown matches something
    for line, check in AFTER.items():
        if line in block.text:
            check(tmp_path, block)


def test_the_checked_blocks_are_there() -> None:
    """Each extra check above finds its block: an example moved or reworded keeps its check."""
    for line in AFTER:
        assert sum(line in b.text for b in RUN) == 1, line
    assert len(RUN) >= 10


def test_a_block_not_run_says_why() -> None:
    not_run = [b for b in BLOCKS if b.not_run is not None]
    assert not_run, "the speed page's benchmarks are marked, and this test checks the marker"
    for b in not_run:
        assert len(b.not_run or "") >= 10, f"{b.id}: `<!-- not run: REASON -->` needs its reason"


def test_every_block_is_checked() -> None:
    """Every fenced block is run (sh, python), compared with the program (json, the error line), or with the file it
    was copied from (cmake, make: tests/test_batch.py)."""
    for b in BLOCKS:
        assert b.lang in ("sh", "python", "json", "cmake", "make", ""), b.id
        if b.lang == "":
            assert b.text.startswith("ftpatch: error: bad.o"), b.id


def test_links_between_pages_resolve() -> None:
    anchors = {page: {anchor(h) for h in re.findall(r"^#+ (.*)$", page.read_text(), re.M)} for page in DOC_PAGES}
    for page in DOC_PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"\w+:", target):
                continue
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if linked in PAGES_ADDED_ELSEWHERE:
                continue
            assert linked.exists(), f"{page.name}: {target}"
            if fragment:
                assert fragment in anchors[linked], f"{page.name}: {target}"


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


# ----------------------------------------------------------------------------------------------- the library


PYTHON = [b for b in BLOCKS if b.lang == "python"]


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_block_runs(tmp_path: Path, block: Block) -> None:
    env = shell(tmp_path)
    proc = subprocess.run([sys.executable, "-c", block.text], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_library_snippet_prints_what_the_file_holds(tmp_path: Path) -> None:
    env = shell(tmp_path)
    (code,) = blocks("python", DOCS / "library.md")
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


# ------------------------------------------------------------------------------------- what the pages show


def test_error_example_is_what_ftpatch_prints(tmp_path: Path) -> None:
    (example,) = blocks("", DOCS / "errors.md")
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
    assert proc.stderr.strip() == example.strip()


def test_json_example_matches(tmp_path: Path) -> None:
    (shown,) = blocks("json", DOCS / "json.md")
    example = json.loads(shown)
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

    page = (DOCS / "forms-and-nops.md").read_text()
    for style in NOP_STYLES.values():
        row = f"| `{style.name}` | `{style.nop5.hex(' ')}` | `{style.nop6.hex(' ')}` |"
        assert row in page


def test_what_the_examples_write_at_the_top_is_ignored_by_git() -> None:
    """A user who runs the examples from the top of a clone sees no untracked outputs in `git status`."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    written = set()
    for block in BLOCKS:
        if block.lang not in ("sh", "python") or block.not_run is not None:
            continue
        for command in block.commands():
            written |= set(re.findall(r"(?:-o\s+|\s>\s*|output=\")([\w.-]+)", command))
            written |= set(re.findall(r"\bar rcs ([\w.-]+)", command))
    written |= {"gmon.out"}
    assert {"prog-nop.o", "report.json", "out.o", "geo.cc"} <= written
    proc = subprocess.run(
        ["git", "check-ignore", "--no-index", *sorted(written)], cwd=ROOT, capture_output=True, text=True
    )
    assert set(proc.stdout.split()) == written
