"""-finstrument-functions: __cyg_profile_func_enter and __cyg_profile_func_exit are sites, every call of them.

Built here with gcc and clang, against a counting hook library (tests/cyg/hooks.c): after `nop` the hooks count 0
and the program's output is unchanged, after `call` they count what they counted before, and the file is the
same bytes again. Objects give the same `objdump -dr` after nop and call. zlib, fetched as tests/test_corpus.py
fetches it, is built the same way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import call_places, ftpatch, run_cli, table_places

SRC = Path(__file__).parent / "cyg"
TOOLS = all(shutil.which(t) for t in ("gcc", "clang", "objdump", "ld.gold", "ld.lld"))
pytestmark = pytest.mark.skipif(not TOOLS, reason="needs gcc, clang, objdump, gold and lld")

OBJECT_FLAGS = ["", "-fno-pie", "-fno-plt", "-m32", "-m32 -fno-pie", "-O0"]
# (name, compile flags, link flags, hooks linked in statically)
PROGRAMS = [
    ("pie", "", "", False),
    ("nopie", "-fno-pie", "-no-pie", False),
    ("noplt", "-fno-plt", "", True),  # ff 15 and ff 25 (gcc's tail jmp), relaxed where the hooks are defined
    ("static", "", "-static", True),
    ("static-noplt", "-fno-plt", "-static", True),
    ("m32", "-m32", "-m32", False),
    ("m32-nopie", "-m32 -fno-pie", "-m32 -no-pie", False),
]


def sh(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, f"{cmd}: {done.stderr}"
    return done.stdout


def counts(exe: Path, cwd: Path, preload: Path | None = None) -> tuple[str, str]:
    """(what the hooks counted, what the program printed)."""
    out = cwd / "counts.txt"
    env = {**os.environ, "CYG_COUNTS": str(out), "LD_LIBRARY_PATH": str(cwd)}
    if preload:
        env["LD_PRELOAD"] = str(preload)
    printed = sh(exe, cwd=cwd, env=env)
    return out.read_text().strip(), printed


def nsites(path: Path) -> int:
    code, out, err = run_cli(["scan", "--json", str(path)])
    assert code == 0, err
    import json

    return sum(len(f["sites"]) for f in json.loads(out)["files"])


def objdump_sites(path: Path) -> int:
    """The calls and jmps objdump names as going to a hook, outside the PLT."""
    text = sh("objdump", "-d", "--no-show-raw-insn", path, cwd=path.parent)
    found, plt = 0, False
    for line in text.splitlines():
        if line.startswith("Disassembly of section"):
            plt = ".plt" in line
        elif not plt and ("call" in line or "jmp" in line) and "<__cyg_profile_func_" in line:
            found += 1
    return found


def round_trip(path: Path, exe: Path, cwd: Path, preload: Path | None = None) -> None:
    before = counts(exe, cwd, preload)
    assert not before[0].startswith("enter 0 "), before
    assert nsites(path) > 0
    nopped, back = path.with_name(path.name + ".nop"), path.with_name(path.name + ".back")
    assert ftpatch("nop", path, "-o", nopped).returncode == 0
    original = path.read_bytes()
    shutil.copy(nopped, path)
    assert counts(exe, cwd, preload) == ("enter 0 exit 0", before[1])
    path.write_bytes(original)
    done = ftpatch("call", nopped, "-o", back)
    assert done.returncode == 0, done.stderr
    assert back.read_bytes() == original
    shutil.copy(back, path)
    assert counts(exe, cwd, preload) == before


@pytest.mark.parametrize("flags", OBJECT_FLAGS)
@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_objects_round_trip_with_their_relocations(tmp_path: Path, cc: str, flags: str) -> None:
    for name in ("lib", "main"):
        obj = tmp_path / f"{name}.o"
        sh(cc, "-O2", "-finstrument-functions", *flags.split(), "-c", SRC / f"{name}.c", "-o", obj, cwd=tmp_path)
        relocs = sh("objdump", "-dr", obj, cwd=tmp_path)
        assert nsites(obj) == relocs.count("__cyg_profile_func_") > 0
        assert ftpatch("nop", obj, "-o", tmp_path / "n.o").returncode == 0
        assert "__cyg_profile_func_" not in sh("objdump", "-dr", tmp_path / "n.o", cwd=tmp_path)
        assert ftpatch("call", tmp_path / "n.o", "-o", tmp_path / "b.o").returncode == 0
        assert (tmp_path / "b.o").read_bytes() == obj.read_bytes()
        assert sh("objdump", "-dr", tmp_path / "b.o", cwd=tmp_path).split("\n", 2)[2] == relocs.split("\n", 2)[2]


@pytest.mark.parametrize("linker", ["bfd", "gold", "lld"])
@pytest.mark.parametrize("cc", ["gcc", "clang"])
@pytest.mark.parametrize(("name", "cflags", "lflags", "static_hooks"), PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_programs_count_nothing_nopped_and_everything_again(
    tmp_path: Path, cc: str, linker: str, name: str, cflags: str, lflags: str, static_hooks: bool
) -> None:
    m32 = "-m32" in cflags
    bits = ["-m32"] if m32 else []
    if static_hooks:
        sh("gcc", *bits, "-O2", "-c", SRC / "hooks.c", "-o", tmp_path / "hooks.o", cwd=tmp_path)
        hooks = [str(tmp_path / "hooks.o")]
    else:
        sh("gcc", *bits, "-O2", "-fPIC", "-shared", SRC / "hooks.c", "-o", tmp_path / "libhooks.so", cwd=tmp_path)
        hooks = ["-L.", "-lhooks"]
    exe = tmp_path / "prog"
    sh(
        cc, "-O2", "-finstrument-functions", *cflags.split(), *lflags.split(), f"-fuse-ld={linker}",
        SRC / "main.c", SRC / "lib.c", *hooks, "-o", exe, cwd=tmp_path,
    )  # fmt: skip
    assert nsites(exe) == objdump_sites(exe)
    round_trip(exe, exe, tmp_path)


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_a_shared_library(tmp_path: Path, cc: str) -> None:
    sh("gcc", "-O2", "-fPIC", "-shared", SRC / "hooks.c", "-o", tmp_path / "libhooks.so", cwd=tmp_path)
    lib = tmp_path / "libwork.so"
    sh(cc, "-O2", "-finstrument-functions", "-fPIC", "-shared", SRC / "lib.c", "-o", lib, cwd=tmp_path)
    sh(cc, "-O2", SRC / "main.c", "-L.", "-lwork", "-o", tmp_path / "prog", cwd=tmp_path)
    assert nsites(lib) == objdump_sites(lib)
    round_trip(lib, tmp_path / "prog", tmp_path, preload=tmp_path / "libhooks.so")


def test_gcc_m32_no_plt_calls_through_another_register_are_refused(tmp_path: Path) -> None:
    """gcc -m32 -fno-plt calls the hooks as `ff 97` (the GOT base in %edi), a form ftpatch does not patch:
    `nop` refuses the file rather than leave those calls live."""
    sh("gcc", "-m32", "-O2", "-fPIC", "-shared", SRC / "hooks.c", "-o", tmp_path / "libhooks.so", cwd=tmp_path)
    exe = tmp_path / "prog"
    sh("gcc", "-m32", "-O2", "-finstrument-functions", "-fno-plt", SRC / "main.c", SRC / "lib.c", "-L.", "-lhooks",
       "-o", exe, cwd=tmp_path)  # fmt: skip
    done = ftpatch("nop", exe, "-o", tmp_path / "n")
    assert done.returncode == 1
    assert "a call to a profiling target that is not at a site ftpatch knows" in done.stderr
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_zlib(tmp_path: Path, zlib_source: Path, cc: str) -> None:
    """zlib's own build with -finstrument-functions: its example program against the counting hooks, and every
    object of the build round trips."""
    sh("gcc", "-O2", "-fPIC", "-shared", SRC / "hooks.c", "-o", tmp_path / "libhooks.so", cwd=tmp_path)
    tree = tmp_path / "zlib"
    shutil.copytree(zlib_source, tree, symlinks=True)
    env = {
        **os.environ,
        "CC": cc,
        "CFLAGS": "-O2 -finstrument-functions",
        "LDFLAGS": f"-L{tmp_path} -Wl,-rpath,{tmp_path} -lhooks",
    }
    sh("./configure", "--static", cwd=tree, env=env)
    sh("make", "example", cwd=tree, env=env)
    exe = tree / "example"
    assert nsites(exe) == objdump_sites(exe) > 100
    round_trip(exe, exe, tree)
    for obj in sorted(tree.glob("*.o")):
        relocs = sh("objdump", "-dr", obj, cwd=tree)
        assert nsites(obj) == relocs.count("__cyg_profile_func_")
        assert ftpatch("nop", obj, "-o", tmp_path / "n.o").returncode == 0
        assert ftpatch("call", tmp_path / "n.o", "-o", tmp_path / "b.o").returncode == 0
        assert (tmp_path / "b.o").read_bytes() == obj.read_bytes(), obj.name


# (compiler, flags) of objects that call mcount or __fentry__ and the hooks.
BOTH = [("gcc", "-pg"), ("gcc", "-pg -mfentry"), ("gcc", "-m32 -pg"), ("clang", "-pg"), ("clang", "-m32 -pg")]


@pytest.mark.parametrize(("cc", "flags"), BOTH, ids=[f"{cc}{flags.replace(' ', '')}" for cc, flags in BOTH])
def test_record_lists_mcount_and_fentry_sites_never_the_hooks(tmp_path: Path, cc: str, flags: str) -> None:
    """The kernel and uftrace take every __mcount_loc entry for a call of mcount or __fentry__: `record` and
    `nop --record` list those alone, as gcc -mrecord-mcount does, and nothing for an object that calls only the
    hooks."""
    for name in ("lib", "main"):
        obj = tmp_path / f"{name}.o"
        sh(cc, "-O2", "-finstrument-functions", *flags.split(), "-c", SRC / f"{name}.c", "-o", obj, cwd=tmp_path)
        assert "__cyg_profile_func_" in sh("objdump", "-r", obj, cwd=tmp_path)
        mcount = call_places(obj)
        assert mcount and nsites(obj) > len(mcount)  # the hooks' sites are sites, but not for the table
        assert ftpatch("record", obj, "-o", tmp_path / "r.o").returncode == 0
        assert table_places(tmp_path / "r.o") == mcount
        assert ftpatch("nop", "--record", obj, "-o", tmp_path / "nr.o").returncode == 0
        assert table_places(tmp_path / "nr.o") == mcount
        if cc == "gcc":
            ref = tmp_path / "gcc.o"
            sh(cc, "-O2", "-finstrument-functions", *flags.split(), "-mrecord-mcount", "-c", SRC / f"{name}.c",
               "-o", ref, cwd=tmp_path)  # fmt: skip
            assert table_places(ref) == mcount
    hooks_only = tmp_path / "hooks-only.o"
    bits = ["-m32"] if "-m32" in flags else []
    sh(cc, "-O2", "-finstrument-functions", *bits, "-c", SRC / "lib.c", "-o", hooks_only, cwd=tmp_path)
    assert nsites(hooks_only) > 0
    done = ftpatch("record", hooks_only, "-o", tmp_path / "r.o")
    assert done.returncode == 0, done.stderr
    assert table_places(tmp_path / "r.o") is None


# (name, compile flags, link flags, how the table is made: gcc's -mrecord-mcount or ftpatch record)
TABLED = [
    ("gcc", "", "", "gcc"),
    ("gcc", "", "", "ftpatch"),
    ("gcc", "-mfentry -fno-pie", "-no-pie", "gcc"),
    ("gcc", "-m32", "-m32", "ftpatch"),
    ("clang", "", "", "ftpatch"),
    ("clang", "-m32", "-m32", "ftpatch"),
]


@pytest.mark.parametrize(
    ("cc", "cflags", "lflags", "table"), TABLED, ids=[f"{c[0]}{c[1].replace(' ', '')}-{c[3]}" for c in TABLED]
)
def test_programs_with_mcount_loc_and_the_hooks(tmp_path: Path, cc: str, cflags: str, lflags: str, table: str) -> None:
    """A program whose __mcount_loc lists its mcount sites and not the hooks': the hooks' sites are found as in a
    program without the table, and nop and call round trip all of them."""
    bits = ["-m32"] if "-m32" in cflags else []
    sh("gcc", *bits, "-O2", "-fPIC", "-shared", SRC / "hooks.c", "-o", tmp_path / "libhooks.so", cwd=tmp_path)
    objects = []
    for name in ("main", "lib"):
        obj = tmp_path / f"{name}.o"
        extra = ["-mrecord-mcount"] if table == "gcc" else []
        sh(cc, "-O2", "-pg", "-finstrument-functions", *cflags.split(), *extra, "-c", SRC / f"{name}.c", "-o", obj,
           cwd=tmp_path)  # fmt: skip
        if table == "ftpatch":
            assert ftpatch("record", "--in-place", obj).returncode == 0
        objects.append(obj)
    exe = tmp_path / "prog"
    sh(cc, "-pg", *lflags.split(), *objects, "-L.", "-lhooks", "-o", exe, cwd=tmp_path)
    assert sh("readelf", "-SW", exe, cwd=tmp_path).count("__mcount_loc") == 1
    assert nsites(exe) == objdump_sites(exe) + sum(len(call_places(o)) for o in objects)
    round_trip(exe, exe, tmp_path)
