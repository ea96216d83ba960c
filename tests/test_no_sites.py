"""Files that cannot hold a profiling call are 0 sites, with exit 0, and only truly undecidable ones are refused.

A linked file can call a profiling target only if it imports one (.dynsym), defines one (named in .symtab or
.dynsym), or, stripped, has one inside the profiling runtime linked into it, which glibc's gmon says is there
(README, "Linked files": how ftpatch decides). Every ELF file of this machine under /usr is such a file, and
so are the ones built here: a -nostdlib shared library, a data-only one, -static and -static-pie programs
built without -pg. A stripped -pg -static program, which holds glibc's mcount with no name, stays refused.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, ftpatch, run

LIBRARY = "int twice(int x) { return 2 * x; }\nint square(int x) { return x * x; }\n"
DATA = 'const unsigned table[4] = {2, 3, 5, 7};\nconst char name[] = "primes";\n'
# Machines and classes ftpatch does not patch: their files are refused, and say so.
UNSUPPORTED = ("unsupported machine", "is not supported, e_ident[4]")


def _elf_files(top: Path) -> list[str]:
    found = []
    for path in top.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                with path.open("rb") as f:
                    if f.read(4) == b"\x7fELF":
                        found.append(str(path))
        except OSError:  # unreadable, or gone while we walked
            continue
    return sorted(found)


def test_every_elf_file_under_usr_is_no_sites(tmp: Path) -> None:
    """No package of this machine is built with -pg: each of its ELF files scans with 0 sites and no error,
    x32's (/usr/libx32, gcc's x32 start files) included, but those of machines ftpatch does not support, which
    are named as such."""
    files = _elf_files(Path("/usr"))
    assert len(files) > 500, "too few ELF files under /usr for this test to say anything"
    # Two scans at once, each over half the list, as a pipeline would split it.
    halves = [files[0::2], files[1::2]]
    procs = []
    for i, half in enumerate(halves):
        listing = tmp / f"files-{i}.txt"
        listing.write_text("\n".join(half) + "\n")
        cmd = [sys.executable, "-m", "ftpatch", "scan", "--files-from", listing]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(proc, *proc.communicate()) for proc in procs]
    summaries, errors = [], []
    for _proc, out, err in results:
        summaries += [line for line in out.splitlines() if not line.startswith(" ")]
        errors += [line for line in err.splitlines() if line.startswith("ftpatch: error: ")]
    unsupported = [e for e in errors if any(u in e for u in UNSUPPORTED)]
    assert [e for e in errors if e not in unsupported] == []
    assert all(proc.returncode == (1 if unsupported else 0) for proc, _, _ in results)
    assert len(summaries) + len(unsupported) == len(files)
    with_sites = [line for line in summaries if ", 0 sites (0 call, 0 not)" not in line]
    assert with_sites == []
    x32 = [line for line in summaries if ": x32 " in line]
    if Path("/usr/libx32").is_dir():  # gcc-multilib's x32 glibc: its libraries, start files and ld-linux-x32.so.2
        assert len(x32) >= len(_elf_files(Path("/usr/libx32"))) > 0
    assert not [e for e in unsupported if "libx32" in e or "/x32/" in e]


@pytest.fixture(scope="module")
def stripped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files built here, each stripped: name -> path."""
    out = tmp_path_factory.mktemp("no-sites")
    (out / "lib.c").write_text(LIBRARY)
    (out / "data.c").write_text(DATA)
    prog = FIXTURES / "prog.c"
    builds = {
        "nostdlib.so": ["-O2", "-fPIC", "-shared", "-nostdlib", out / "lib.c"],
        "data.so": ["-fPIC", "-shared", "-nostdlib", out / "data.c"],
        "static-pie": ["-O2", "-static-pie", prog],
        "static": ["-O2", "-static", prog],
        "m32-static": ["-m32", "-O2", "-static", prog],
        # What the rule must not take for files without sites.
        "pg-nostdlib.so": ["-O2", "-pg", "-fPIC", "-shared", "-nostdlib", out / "lib.c"],
        "pg-static": ["-O2", "-pg", "-static", prog],
        "pg-static-pie": ["-O2", "-pg", "-static-pie", prog],
        "m32-pg-static": ["-m32", "-O2", "-pg", "-static", prog],
    }
    files = {}
    for name, flags in builds.items():
        files[name] = out / name
        run("gcc", *flags, "-o", files[name])
        run("strip", files[name])
    return files


@pytest.mark.parametrize("name", ["nostdlib.so", "data.so", "static-pie", "static", "m32-static"])
def test_a_stripped_file_without_profiling_is_no_sites(stripped: dict[str, Path], name: str) -> None:
    path = stripped[name]
    before = path.read_bytes()
    proc = ftpatch("scan", path)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.endswith(", 0 sites (0 call, 0 not)\n"), proc.stdout
    # A pipeline's `nop --in-place` over its whole tree passes over it.
    for action in ("nop", "call"):
        proc = ftpatch(action, "--in-place", path)
        assert proc.returncode == 0 and "0 patched, 0 already" in proc.stdout, proc.stderr
    assert path.read_bytes() == before


def test_a_stripped_pg_library_without_dt_needed_keeps_its_sites(stripped: dict[str, Path]) -> None:
    """No DT_NEEDED says nothing: -pg -nostdlib code imports mcount, and its calls are found."""
    assert "DT_NEEDED" not in run("readelf", "-d", stripped["pg-nostdlib.so"])
    proc = ftpatch("scan", stripped["pg-nostdlib.so"])
    assert proc.returncode == 0 and ", 2 sites (2 call, 0 not)" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ["pg-static", "pg-static-pie", "m32-pg-static"])
def test_a_stripped_pg_static_program_is_still_refused(stripped: dict[str, Path], tmp: Path, name: str) -> None:
    """glibc's mcount is linked in, and no symbol names it: its calls cannot be told from others."""
    for action in (["scan"], ["nop", "-o", tmp / "out"]):
        proc = ftpatch(action[0], stripped[name], *action[1:])
        assert proc.returncode == 1
        assert "is a stripped static program: no symbol is left to say where mcount" in proc.stderr
        assert "glibc's profiling runtime (gmon: __monstartup, _mcleanup) is linked in" in proc.stderr
    assert not (tmp / "out").exists()
