"""Linked programs, shared libraries and static executables, built from fixtures/prog.c at test time.

Each build is checked against objdump (one site per function), then run nop'd (same output, gprof has
no call graph, uftrace sees nothing) and restored (byte-identical, the call graph is back).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, PROGRAM_OUTPUT, call_graph, execute, ftpatch, run

FUNCTIONS = {"next_rand", "gcd", "report", "checksum.constprop.0", "fib", "is_prime", "sort_values", "main"}
STATIC_FUNCTIONS = {"next_rand", "gcd", "report", "checksum.constprop.0"}  # no endbr64 under -fcf-protection

# name -> gcc flags (besides -O2), and the form of its sites.
BUILDS = {
    "pie": (["-pg"], "gotpcrel"),
    "nopie": (["-pg", "-fno-pie", "-no-pie"], "rel32"),  # e8 to mcount@plt
    "nopie-pic-code": (["-pg", "-no-pie"], "gotpcrel"),  # Debian still compiles PIE code: ff 15 to a GOT slot
    "fentry-pie": (["-pg", "-mfentry"], "gotpcrel"),
    "fentry-nopie": (["-pg", "-mfentry", "-fno-pie", "-no-pie"], "rel32"),
    "fentry-cet": (["-pg", "-mfentry", "-fcf-protection", "-fno-pie", "-no-pie"], "rel32"),
    "nopie-ibt-plt": (
        ["-pg", "-fno-pie", "-no-pie", "-fcf-protection", "-Wl,-z,ibtplt"],
        "rel32",
    ),  # mcount@plt in .plt.sec
    "fentry-recorded": (["-pg", "-mfentry", "-mrecord-mcount"], "gotpcrel"),  # __mcount_loc, RELATIVE addends
    "static": (["-pg", "-static"], "addr32-rel32"),
    "static-emit-relocs": (["-pg", "-static", "-Wl,--emit-relocs"], "addr32-rel32"),  # ld retypes to R_X86_64_PC32
    # A dynamic program's .symtab names the target mcount@GLIBC_2.2.5 (mcount@GLIBC_2.0 on i386).
    "pie-emit-relocs": (["-pg", "-Wl,--emit-relocs"], "gotpcrel"),
    "nopie-emit-relocs": (["-pg", "-fno-pie", "-no-pie", "-Wl,--emit-relocs"], "rel32"),
    "i386-pie-emit-relocs": (["-m32", "-pg", "-Wl,--emit-relocs"], "got-ebx"),
    "i386-pie": (["-m32", "-pg"], "got-ebx"),
    "i386-nopie": (["-m32", "-pg", "-fno-pie", "-no-pie"], "rel32"),
}
CALL_TARGET = re.compile(
    r"call\s.*(<_?mcount>|<mcount@plt>|<__fentry__@plt>|[<@ ]_?_?(mcount|fentry__)@GLIBC|\(%ebx\))"
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("linked")
    exes = {}
    for name, (flags, _) in BUILDS.items():
        exes[name] = out / name
        run("gcc", "-O2", *flags, FIXTURES / "prog.c", "-o", exes[name])
    exes["stripped"] = out / "stripped"
    shutil.copy(exes["nopie"], exes["stripped"])
    run("strip", exes["stripped"])
    return exes


def objdump_sites(exe: Path) -> set[int]:
    """Addresses of the calls objdump shows going to mcount / _mcount / __fentry__ (i386: through %ebx)."""
    sites = set()
    for line in run("objdump", "-d", exe).splitlines():
        if CALL_TARGET.search(line) and "get_pc_thunk" not in line:
            sites.add(int(line.split(":")[0], 16))
    return sites


def section_addresses(exe: Path) -> dict[str, int]:
    out = {}
    for line in run("readelf", "-SW", exe).splitlines():
        if m := re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]+)", line):
            out[m.group(1)] = int(m.group(2), 16)
    return out


def scan_json(path: Path) -> list[dict[str, object]]:
    proc = ftpatch("scan", "--json", path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["files"][0]["sites"]


def uftraced(exe: Path, workdir: Path, *options: str) -> set[str]:
    """The program's own functions that `uftrace record` + `uftrace report` list."""
    data = workdir / f"uftrace-{exe.name}"
    subprocess.run(["uftrace", "record", *options, "-d", data, exe], capture_output=True, check=True, cwd=workdir)
    report = run("uftrace", "report", "-d", data)
    return {line.split()[-1] for line in report.splitlines()[2:] if line.strip()} & FUNCTIONS


@pytest.mark.parametrize("name", BUILDS)
def test_scan_finds_one_site_per_function(built: dict[str, Path], name: str) -> None:
    exe = built[name]
    sites = scan_json(exe)
    assert sorted(s["function"] for s in sites) == sorted(FUNCTIONS)
    assert {s["form"] for s in sites} == {BUILDS[name][1]}
    assert {s["state"] for s in sites} == {"call"}
    addresses = section_addresses(exe)
    assert {addresses[s["section"]] + s["offset"] for s in sites} == objdump_sites(exe)


@pytest.mark.parametrize("name", [name for name in BUILDS if name.endswith("emit-relocs")])
def test_sites_are_located_by_the_relocations_emit_relocs_kept(built: dict[str, Path], name: str) -> None:
    proc = ftpatch("scan", "--json", built[name])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["files"][0]["located"] == "emit-relocs"


@pytest.mark.parametrize("name", BUILDS)
def test_nop_runs_without_profiling_and_call_restores_exactly(built: dict[str, Path], name: str, tmp: Path) -> None:
    nopped, back = tmp / "nopped", tmp / "back"
    assert ftpatch("nop", built[name], "-o", nopped).returncode == 0
    assert {s["state"] for s in scan_json(nopped)} == {"nop"}
    assert execute(nopped, tmp / "n") == PROGRAM_OUTPUT
    graph = call_graph(nopped, tmp / "n")
    assert graph.returncode != 0 and "gmon.out file is missing call-graph data" in graph.stderr

    assert ftpatch("call", nopped, "-o", back).returncode == 0
    assert back.read_bytes() == built[name].read_bytes()
    assert execute(back, tmp / "b") == PROGRAM_OUTPUT
    graph = call_graph(back, tmp / "b")
    assert graph.returncode == 0
    # fib(20) recurses 10945 times below its one call from main.
    assert any(line.startswith("[") and line.split()[-3:-1] == ["1+10945", "fib"] for line in graph.stdout.splitlines())


@pytest.mark.parametrize("name", ["pie", "nopie"])
def test_uftrace_sees_nothing_after_nop_and_everything_after_call(built: dict[str, Path], name: str, tmp: Path) -> None:
    nopped, back = tmp / "nopped", tmp / "back"
    assert ftpatch("nop", built[name], "-o", nopped).returncode == 0
    assert ftpatch("call", nopped, "-o", back).returncode == 0
    assert uftraced(nopped, tmp) == set()
    assert uftraced(back, tmp) == FUNCTIONS


# What `uftrace record -P .` (uftrace 0.13's dynamic patcher) traces in a nop'd -mfentry program: it patches
# 0f 1f 44 00 00 at a function's first byte, never a 6-byte nop, so ftpatch writes a 6-byte entry site (PIE,
# ff 15) as that nop and a one-byte one; and not a nop behind endbr64 (-fcf-protection: only the static
# functions, which have no endbr64).
@pytest.mark.parametrize(
    ("name", "traced"), [("fentry-nopie", FUNCTIONS), ("fentry-cet", STATIC_FUNCTIONS), ("fentry-pie", FUNCTIONS)]
)
def test_uftrace_patches_nopped_fentry_sites(built: dict[str, Path], name: str, traced: set[str], tmp: Path) -> None:
    nopped = tmp / "nopped"
    assert ftpatch("nop", built[name], "-o", nopped).returncode == 0
    assert uftraced(nopped, tmp, "-P", ".") == traced


def test_shared_library_round_trip(tmp: Path) -> None:
    (tmp / "lib.c").write_text(
        "unsigned long lib_fib(unsigned n) { return n < 2 ? n : lib_fib(n - 1) + lib_fib(n - 2); }\n"
        "int lib_square(int x) { return x * x; }\n"
        "static __attribute__((noinline)) int lib_twice(int x) { return 2 * x; }\n"
        "int lib_quad(int x) { return lib_twice(lib_twice(x)); }\n"
    )
    (tmp / "main.c").write_text(
        "#include <stdio.h>\nunsigned long lib_fib(unsigned); int lib_square(int); int lib_quad(int);\n"
        'int main(void) { printf("%lu %d %d\\n", lib_fib(20), lib_square(7), lib_quad(3)); return 0; }\n'
    )
    lib = tmp / "libt.so"
    run("gcc", "-O2", "-pg", "-fPIC", "-shared", tmp / "lib.c", "-o", lib)
    run("gcc", "-O2", "-pg", tmp / "main.c", f"-L{tmp}", "-lt", "-Wl,-rpath,$ORIGIN", "-o", tmp / "main")
    sites = scan_json(lib)
    assert sorted(s["function"] for s in sites) == ["lib_fib", "lib_quad", "lib_square", "lib_twice"]
    addresses = section_addresses(lib)
    assert {addresses[s["section"]] + s["offset"] for s in sites} == objdump_sites(lib)
    original = lib.read_bytes()
    assert ftpatch("nop", "--in-place", lib).returncode == 0
    assert lib.read_bytes() != original
    assert execute(tmp / "main", tmp / "run") == "6765 49 12\n"
    assert ftpatch("call", "--in-place", lib).returncode == 0
    assert lib.read_bytes() == original


def test_stripped_program_round_trips(built: dict[str, Path], tmp: Path) -> None:
    """strip keeps the unwind tables, and they say where every function starts."""
    stripped = built["stripped"]
    sites = scan_json(stripped)
    assert len(sites) == 8 and {s["function"] for s in sites} == {None}
    addresses = section_addresses(stripped)
    assert {addresses[s["section"]] + s["offset"] for s in sites} == objdump_sites(built["nopie"])
    nopped, back = tmp / "nopped", tmp / "back"
    assert ftpatch("nop", stripped, "-o", nopped).returncode == 0
    assert execute(nopped, tmp) == PROGRAM_OUTPUT
    assert [s["state"] for s in scan_json(nopped)] == ["nop"] * 8
    proc = ftpatch("call", nopped, "-o", back)
    assert proc.returncode == 0, proc.stderr
    assert back.read_bytes() == stripped.read_bytes()


def refuses_overwritten_site(exe: Path, site: dict, garbage: str, decoded: str, tmp: Path, hint: str = "") -> None:
    """With `garbage` over `site`'s 6 bytes, nop fails verification quoting both (and `hint`), and writes nothing."""
    bad = tmp / f"{exe.name}.bad"
    data = bytearray(exe.read_bytes())
    good = bytes(data[site["file_offset"] : site["file_offset"] + 6])
    data[site["file_offset"] : site["file_offset"] + 6] = bytes.fromhex(garbage)
    bad.write_bytes(data)
    proc = ftpatch("nop", bad, "-o", tmp / "out")
    assert proc.returncode == 3
    assert proc.stderr == (
        f"ftpatch: error: {bad}: {site['function']} (.text+{site['offset']:#x}): expected {good.hex(':')}, "
        f"actual {bytes.fromhex(garbage).hex(':')} ({decoded}){hint}\n"
    )
    assert not (tmp / "out").exists()


def test_site_calling_elsewhere_fails_verification(built: dict[str, Path], tmp: Path) -> None:
    """Where a relocation kept by --emit-relocs says a site is, a call to somewhere else is no site but garbage."""
    exe = built["static-emit-relocs"]
    main = next(s for s in scan_json(exe) if s["function"] == "main")
    hint = "; it calls another function: if `call --target NAME` pointed it there, name it with --symbol NAME"
    refuses_overwritten_site(exe, main, "67e800000000", "call 6", tmp, hint)


def test_recorded_site_overwritten_with_garbage_fails_verification(tmp: Path) -> None:
    exe = tmp / "prog"
    run("gcc", "-O2", "-pg", "-mfentry", "-mrecord-mcount", FIXTURES / "prog.c", "-o", exe)
    fib = next(s for s in scan_json(exe) if s["function"] == "fib")
    refuses_overwritten_site(exe, fib, "0f0b90909090", "ud2; nop; nop; nop; nop", tmp)


@pytest.mark.parametrize(
    ("name", "style"),
    [("i386-pie", s) for s in ("o16", "jmp", "lea")] + [("fentry-cet", s) for s in ("o16", "jmp")],
)
def test_every_nop_style_is_found_again(built: dict[str, Path], name: str, style: str, tmp: Path) -> None:
    nopped, back = tmp / "nopped", tmp / "back"
    assert ftpatch("nop", "--nop", style, built[name], "-o", nopped).returncode == 0
    assert sorted(s["function"] for s in scan_json(nopped) if s["state"] == "nop") == sorted(FUNCTIONS)
    assert execute(nopped, tmp) == PROGRAM_OUTPUT
    assert ftpatch("call", nopped, "-o", back).returncode == 0
    assert back.read_bytes() == built[name].read_bytes()


def test_program_without_pg_has_no_sites(tmp: Path) -> None:
    exe = tmp / "prog"
    run("gcc", "-O2", FIXTURES / "prog.c", "-o", exe)
    assert scan_json(exe) == []
    before = exe.stat().st_mtime_ns
    for action in ("nop", "call"):
        proc = ftpatch(action, "--in-place", exe)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"{exe}: 0 patched, 0 already {action}, 0 filtered out\n"
    assert exe.stat().st_mtime_ns == before
