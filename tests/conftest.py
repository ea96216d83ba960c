"""Shared helpers: the fixtures, the real toolchain, and ftpatch run as a user runs it."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from oracles import elfsites
from oracles.groundtruth import relocations
from oracles.groundtruth import run as run  # the tests run every tool through it

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
# The documentation: the front page, then the pages it links to. tests/test_readme.py runs their examples.
DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Object fixture -> (is x86-64, how to link it into the program; see fixtures/README.md).
OBJECTS = {
    "x86_64-pie.o": (True, ["-pg"]),
    "x86_64-nopie.o": (True, ["-pg", "-no-pie"]),
    "x86_64-fentry.o": (True, ["-pg", "-no-pie"]),
    "x86_64-fentry-cet.o": (True, ["-pg", "-no-pie"]),
    "x86_64-fsections.o": (True, ["-pg"]),
    "x86_64-nop-mcount.o": (True, ["-pg", "-no-pie"]),
    "i386-nopie.o": (False, ["-m32", "-pg", "-no-pie"]),
    "i386-pic.o": (False, ["-m32", "-pg"]),
    "x86_64-nopg.o": (True, []),
}
PG_OBJECTS = [name for name in OBJECTS if name != "x86_64-nopg.o"]
RELOCATED = [name for name in PG_OBJECTS if name != "x86_64-nop-mcount.o"]
PROGRAM_OUTPUT = "fib      6765\nprimes   1\ngcd      1\nmin      45\nmax      988\nchecksum 3832465409\n"
TARGETS = ("mcount", "_mcount", "__fentry__")


def ftpatch(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own, exactly as a user runs it."""
    return subprocess.run([sys.executable, "-m", "ftpatch", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def temporaries(directory: Path) -> list[str]:
    """The names of ftpatch's temporary files in `directory`, sorted."""
    return sorted(name for name in os.listdir(directory) if ".ftpatch-" in name)


def readelf_relocs(path: Path) -> list[tuple[str, int, str, str]]:
    """(relocation section, r_offset, type, symbol) for every entry `readelf -rW` prints."""
    return [(r.section, r.offset, r.type, r.symbol) for r in relocations(path)]


def code_and_relocations(obj: Path) -> str:
    """objdump -dr of an object, without the line that names the file."""
    return run("objdump", "-dr", obj).split("\n", 2)[2]


def execute(exe: Path, workdir: Path) -> str:
    """The program's output, run in its own directory (a -pg program writes gmon.out where it runs)."""
    workdir.mkdir(exist_ok=True)
    return subprocess.run([exe], capture_output=True, text=True, check=True, cwd=workdir).stdout


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """ftpatch.cli.main in this process, as `ftpatch argv...`: (exit code, stdout, stderr). `ftpatch()` runs it
    in a process of its own, as a user does; this is for the many runs a test makes on one file."""
    from ftpatch import cli

    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = ["ftpatch", *argv]
    code: int | str | None = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main()
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = saved
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGHUP):
        # The CLI turned a signal meant for this process into an exit code: pass it on.
        raise KeyboardInterrupt(err.getvalue())
    return (code if isinstance(code, int) else 1 if code else 0), out.getvalue(), err.getvalue()


def read_terminal(main: int) -> str:
    """Everything written to a pseudo-terminal until its other side closes (`main` is the controlling end)."""
    import os

    seen = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the terminal closed when the process exited
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    return seen.decode("utf-8", "replace")


def call_graph(exe: Path, workdir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """gprof's call graph of the run of `exe` in `workdir` (by default beside it), where gmon.out lies."""
    gmon = (workdir or exe.parent) / "gmon.out"
    return subprocess.run(["gprof", "-q", "-b", exe, gmon], capture_output=True, text=True)


HIDES_A_NOP = (
    "int hides(int x) {\n"
    "  /* mov $0x2e,%al; lea 0x0(%esi,%eiz,1),%esi: the bytes 2e 8d 74 26 00, a nop ftpatch writes inside a\n"
    "     function, lie across two instructions, as gcc's own `eb 2e` and gas's padding put them. */\n"
    '  __asm__ volatile (".byte 0xb0, 0x2e, 0x8d, 0x74, 0x26, 0x00" ::: "eax", "esi");\n'
    "  return x + 1; }\n"
)


# What ftpatch wrote at a site before its nops carried records: the style's plain member of the site's length.
BEFORE_RECORDS = {
    ("p6", 5): "0f1f440000",
    ("p6", 6): "660f1f440000",
    ("o16", 5): "6666666690",
    ("o16", 6): "666666666690",
    ("jmp", 5): "eb03cccccc",
    ("jmp", 6): "eb04cccccccc",
    ("lea", 5): "3e8d742600",
    ("lea", 6): "8db600000000",
}


def nop_as_before_records(src: Path, dst: Path, style: str = "p6", only: set[int] | None = None) -> None:
    """`src` nop'd as ftpatch did before records: each target relocation's r_info zeroed, its r_addend left
    (-4 on RELA), the style's plain nop over the site. Found and written with pyelftools, not ftpatch.
    `only`: the indices, in table order, of the target relocations to nop (default all)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection

    data = bytearray(src.read_bytes())
    with src.open("rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        word = 8 if elf.elfclass == 64 else 4
        n = 0
        for rel in elf.iter_sections():
            if not isinstance(rel, RelocationSection) or rel.name.endswith("__mcount_loc"):
                continue
            text = elf.get_section(rel["sh_info"])
            for i, r in enumerate(rel.iter_relocations()):
                if symtab.get_symbol(r["r_info_sym"]).name not in TARGETS:
                    continue
                n += 1
                if only is not None and n - 1 not in only:
                    continue
                length = 5 if r["r_info_type"] in (2, 4) else 6  # PC32/PLT32: e8; the GOT forms: ff 15 / ff 93
                start = text["sh_offset"] + r["r_offset"] + 4 - length
                data[start : start + length] = bytes.fromhex(BEFORE_RECORDS[style, length])
                info = rel["sh_offset"] + i * rel["sh_entsize"] + word
                data[info : info + word] = bytes(word)
    dst.write_bytes(data)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


def _loose_files() -> set[Path]:
    """The files at the top of the checkout and in docs/, fixtures/ and tests/: where a stray gmon.out or output
    would land."""
    return {p for d in (ROOT, ROOT / "docs", FIXTURES, ROOT / "tests") for p in d.iterdir() if p.is_file()}


@pytest.fixture(scope="session", autouse=True)
def checkout_stays_clean() -> Iterator[None]:
    """Every test writes in its own temporary directory: a -pg program run elsewhere leaves gmon.out behind."""
    before = _loose_files()
    yield
    left = sorted(str(p.relative_to(ROOT)) for p in _loose_files() - before)
    assert not left, f"the tests left files in the checkout: {left}"


def table_places(path: Path, data: bytes | None = None) -> list[tuple[str, int]] | None:
    """Where the entries of __mcount_loc point, as sorted (section name, offset), read by tests/oracles/elfsites.py,
    not ftpatch; None if the object has no __mcount_loc. `data`, if given, is read instead of the file."""
    return elfsites.mcount_loc_places(elfsites.Elf(data if data is not None else path.read_bytes()))


def call_places(path: Path) -> list[tuple[str, int]]:
    """Where the calls to mcount, _mcount and __fentry__ start, as sorted (section name, offset), from the call
    relocations, read by tests/oracles/elfsites.py, not ftpatch."""
    return elfsites.call_places(elfsites.Elf(path.read_bytes()))


def debian_source(package: str) -> Path:
    """A Debian source package, fetched once (tests/oracles/corpus.py caches it); a skip that says why if it cannot be."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-source"):
        pytest.skip(f"needs apt-get and dpkg-source to fetch {package}")
    from oracles.corpus import fetch

    try:
        return fetch([package], log=lambda _: None)[package]
    except (OSError, subprocess.CalledProcessError, AssertionError) as e:  # no network, no deb-src: say so
        pytest.skip(f"cannot fetch {package}: {e}")


@pytest.fixture(scope="session")
def zlib_source() -> Path:
    """Debian's zlib source, for the tests that build it their way."""
    return debian_source("zlib")
