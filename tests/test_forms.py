"""Every form gcc 12 and clang 14 write for -pg, linked by bfd, gold and lld: fixtures/forms.c built at test time.

forms.c has one function per prologue that once hid a site (`add $-128,%rsp`, a stack-clash probe loop, spilled
and moved arguments, a `.cold` piece). Each build's sites must be exactly the calls that objdump and readelf alone
show (tests/oracles/groundtruth.py); the nop'd program must hold none of them and print the same; `call` must give back
the identical file. The cases a site cannot be found or restored in are refused, each with its reason.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, HIDES_A_NOP, execute, ftpatch, run
from oracles.groundtruth import ground_truth

import ftpatch as lib

FORMS = FIXTURES / "forms.c"
OUTPUT = "-9632 0 50 42 6765\n"

# variant -> compiler flags; every variant is built by gcc and clang and linked by bfd, gold and lld, but where noted.
VARIANTS = {
    "pie": ["-O2", "-pg"],
    "nopie": ["-O2", "-pg", "-fno-pie", "-no-pie"],
    "shared-code-nopie": ["-O2", "-pg", "-no-pie"],  # PIE code linked -no-pie: ff 15 through a GLOB_DAT slot
    "fentry": ["-O2", "-pg", "-mfentry"],
    "fentry-nopie": ["-O2", "-pg", "-mfentry", "-fno-pie", "-no-pie"],
    "O0": ["-O0", "-pg"],
    "O1": ["-O1", "-pg"],
    "O3": ["-O3", "-pg"],
    "Os": ["-Os", "-pg"],
    "stack-clash": ["-O2", "-pg", "-fstack-clash-protection"],
    "gc-sections": ["-O2", "-pg", "-ffunction-sections", "-Wl,--gc-sections"],
    "lto": ["-O2", "-pg", "-flto"],
    "static": ["-O2", "-pg", "-static"],
    "static-fentry": ["-O2", "-pg", "-mfentry", "-fno-pie", "-static"],  # glibc's .cold pieces start with a call
    "cet": ["-O2", "-pg", "-fcf-protection", "-fno-pie", "-no-pie"],  # IBT PLT: -z ibtplt (bfd), -z force-ibt (lld)
    "m32": ["-m32", "-O2", "-pg"],  # clang: call .+5; pop %ebx before the site
    "m32-nopie": ["-m32", "-O2", "-pg", "-fno-pie", "-no-pie"],
    "m32-O0": ["-m32", "-O0", "-pg"],
    "m32-static": ["-m32", "-O2", "-pg", "-static"],  # gold and lld keep ff 93 through a .got slot
}
CET_PLT = {"bfd": ["-Wl,-z,ibtplt"], "gold": [], "lld": ["-Wl,-z,force-ibt"]}
BUILDS = [
    (variant, cc, ld)
    for variant in VARIANTS
    for cc in ("gcc", "clang")
    for ld in ("bfd", "gold", "lld")
    # gcc's LTO plugin speaks to bfd and gold only; clang's -mfentry has no -fno-pie twin worth a second build.
    if not (variant == "lto" and cc == "gcc" and ld == "lld")
]


def build(out: Path, variant: str, cc: str, ld: str, source: Path = FORMS, extra: tuple[str, ...] = ()) -> Path:
    exe = out / f"{variant}-{cc}-{ld}"
    flags = [*VARIANTS[variant], f"-fuse-ld={ld}", *(CET_PLT[ld] if variant == "cet" else []), *extra]
    run(cc, *flags, source, "-o", exe)
    return exe


def site_addresses(result: lib.ScanResult) -> set[int]:
    return {
        section.sh_addr + start
        for group in result.groups
        for section, start in zip(group.sections, group.starts, strict=True)
    }


def nop_and_back(exe: Path, tmp: Path) -> tuple[Path, Path]:
    nopped, back = tmp / f"{exe.name}.nop", tmp / f"{exe.name}.back"
    proc = ftpatch("nop", exe, "-o", nopped)
    assert proc.returncode == 0, proc.stderr
    proc = ftpatch("call", nopped, "-o", back)
    assert proc.returncode == 0, proc.stderr
    return nopped, back


@pytest.mark.parametrize(("variant", "cc", "ld"), BUILDS, ids=["-".join(b) for b in BUILDS])
def test_every_site_found_nopped_and_restored(variant: str, cc: str, ld: str, tmp: Path) -> None:
    exe = build(tmp, variant, cc, ld)
    truth = ground_truth(exe)
    assert truth.sites, "the ground truth found no call to a profiling target"
    (result,) = lib.scan_path(str(exe))
    assert site_addresses(result) == truth.addresses
    assert {s.state for s in result.sites} == {lib.State.CALL}
    assert (result.findings, result.strays) == ((), ())
    # (LTO folds many_args, whose arguments are all constants, into main.)
    assert {"frame128", "big_frame", "main"} <= {s.function for s in result.sites}

    nopped, back = nop_and_back(exe, tmp)
    assert ground_truth(nopped).sites == []
    assert execute(nopped, tmp / "nopped") == execute(exe, tmp / "original") == OUTPUT
    assert back.read_bytes() == exe.read_bytes()


def test_gprof_loses_and_regains_the_call_graph(tmp: Path) -> None:
    exe = build(tmp, "stack-clash", "gcc", "bfd")
    nopped, back = nop_and_back(exe, tmp)
    for program, graphed in ((nopped, False), (back, True)):
        workdir = tmp / program.name.replace(".", "-")
        assert execute(program, workdir) == OUTPUT
        graph = subprocess.run(["gprof", "-q", "-b", program, workdir / "gmon.out"], capture_output=True, text=True)
        if graphed:
            assert graph.returncode == 0 and "big_frame" in graph.stdout
        else:
            assert "gmon.out file is missing call-graph data" in graph.stderr


def test_inlined_mcount_calls_of_clang_lto_are_sites(tmp: Path) -> None:
    """clang's LTO inlines a function together with its mcount call: a site deep in another function."""
    (tmp / "a.c").write_text(
        "#include <stdio.h>\nint helper(int);\nint main(int c, char **v) { int s = 0; (void)v;\n"
        '  for (int i = 0; i < c * 1000; i++) s += helper(i);\n  printf("%d\\n", s); return 0; }\n'
    )
    (tmp / "b.c").write_text("int helper(int x) { return x * 3 + 1; }\n")
    exe = tmp / "lto"
    run("clang", "-O2", "-pg", "-flto", "-fuse-ld=lld", tmp / "a.c", tmp / "b.c", "-o", exe)
    truth = ground_truth(exe)
    (result,) = lib.scan_path(str(exe))
    assert len(truth.sites) == 2 and site_addresses(result) == truth.addresses
    assert [s.function for s in result.sites] == ["main", "main"]
    nopped, back = nop_and_back(exe, tmp)
    assert ground_truth(nopped).sites == []
    assert execute(nopped, tmp / "n") == execute(exe, tmp / "o") == "1499500\n"
    assert back.read_bytes() == exe.read_bytes()


def test_a_tail_jump_to_mcount_of_clang_lto_becomes_a_return(tmp: Path) -> None:
    """clang's LTO makes an empty function's mcount call a tail call, `jmp mcount@plt`: the call and the return at
    once. Its nop is the return alone (`c3`, then filler that never runs), and call makes it the jmp again."""
    (tmp / "tail.c").write_text(
        "#include <stdio.h>\nstatic void noop(int x) { (void)x; }\nvoid (*volatile hook)(int) = noop;\n"
        'int main(void) { hook(1); puts("ok"); return 0; }\n'
    )
    exe = tmp / "tail"
    run("clang", "-O2", "-pg", "-flto", "-fuse-ld=lld", tmp / "tail.c", "-o", exe)
    truth = ground_truth(exe)
    (result,) = lib.scan_path(str(exe))
    assert site_addresses(result) == truth.addresses and len(truth.sites) == 2
    assert {(s.function, s.form) for s in result.sites} == {("main", lib.Form.REL32), ("noop", lib.Form.TAIL)}
    nopped, back = nop_and_back(exe, tmp)
    (tail,) = [s for s in lib.scan_path(str(nopped))[0].sites if s.form is lib.Form.TAIL]
    assert tail.code == bytes.fromhex("c3ccccccf1")
    assert ground_truth(nopped).sites == []
    assert execute(nopped, tmp / "n") == execute(exe, tmp / "o") == "ok\n"
    assert back.read_bytes() == exe.read_bytes()


def test_program_linked_from_nopped_fentry_pie_objects_is_traced_by_uftrace(tmp: Path) -> None:
    """A nop'd 6-byte entry site is `0f 1f 44 00 00` and a one-byte nop, which uftrace's `record -P` patches."""
    obj = tmp / "forms.o"
    run("gcc", "-O2", "-pg", "-mfentry", "-c", FORMS, "-o", obj)
    assert ftpatch("nop", "--in-place", obj).returncode == 0
    exe = tmp / "forms"
    run("gcc", "-pg", obj, "-o", exe)
    assert execute(exe, tmp / "run") == OUTPUT
    data = tmp / "uftrace.data"
    subprocess.run(["uftrace", "record", "-P", ".", "-d", data, exe], capture_output=True, check=True, cwd=tmp)
    report = run("uftrace", "report", "-d", data)
    assert {"frame128", "big_frame", "many_args", "cold_path", "fib", "main"} <= set(report.split())


def test_a_call_no_decoding_reaches_is_reported_and_nop_refuses(tmp: Path) -> None:
    """The bytes of a call to mcount inside another instruction: the byte search sees it, no decoding does."""
    (tmp / "hidden.c").write_text(
        "long hidden(void) { long x;\n"
        '  __asm__ volatile (".byte 0x48, 0xb8\\n\\tcall mcount@PLT\\n\\t.byte 0, 0, 0" : "=a"(x));\n'
        "  return x; }\n"
    )
    (tmp / "main.c").write_text('#include <stdio.h>\nlong hidden(void);\nint main(void) { puts("ok"); return 0; }\n')
    exe = tmp / "hidden"
    run("gcc", "-O2", "-pg", tmp / "main.c", tmp / "hidden.c", "-o", exe)
    proc = ftpatch("scan", "--json", exe)
    assert proc.returncode == 1
    (unclassified,) = json.loads(proc.stdout)["files"][0]["unclassified"]
    assert "to mcount: a call to a profiling target that is not at a site ftpatch knows" in unclassified
    assert unclassified in proc.stderr
    proc = ftpatch("nop", exe, "-o", tmp / "out")
    assert proc.returncode == 1 and "; nothing was written" in proc.stderr
    assert not (tmp / "out").exists()


def test_nop_checks_its_output_for_live_calls(tmp: Path) -> None:
    """The plan is checked on the new bytes by the byte search, whatever the scan concluded."""
    exe = build(tmp, "pie", "gcc", "bfd")
    (result,) = lib.scan_path(str(exe))
    fewer = dataclasses.replace(result, groups=result.groups[:0])  # as if the walk had found nothing
    with pytest.raises(lib.InputError, match="would stay live after the nop"):
        lib.apply(result.data, lib.plan(fewer, lib.Action.NOP))


def test_a_nop_call_could_not_restore_is_refused(tmp: Path) -> None:
    """i386 -static by gold: mcount is defined and reached through a .got slot, so a 6-byte site could have been
    `67 e8` or `ff 93`. lea and p6 say which in the nop; o16 cannot, and nop refuses it before writing."""
    exe = build(tmp, "m32-static", "gcc", "gold")
    proc = ftpatch("nop", "--nop", "o16", exe, "-o", tmp / "out")
    assert proc.returncode == 1
    assert "the o16 nop would not read back as ff:93:" in proc.stderr and "choose another --nop" in proc.stderr
    assert not (tmp / "out").exists()
    nop_and_back(exe, tmp)


def test_stripped_program_exporting_a_function_round_trips(tmp: Path) -> None:
    """.dynsym names one function (the program defines `error`); the unwind tables name every one."""
    (tmp / "error.c").write_text(
        "#include <stdio.h>\nvoid error(int status, int errnum, const char *format, ...) { puts(format); }\n"
    )
    exe = tmp / "program"
    run("gcc", "-O2", "-pg", FORMS, tmp / "error.c", "-o", exe)
    strip_and_round_trip(exe, tmp, sites=7)


def test_stripped_shared_library_round_trips(tmp: Path) -> None:
    library = tmp / "libforms.so"
    run("clang", "-O2", "-pg", "-fPIC", "-shared", FORMS, "-fuse-ld=lld", "-o", library)
    strip_and_round_trip(library, tmp, sites=6)


def strip_and_round_trip(unstripped: Path, tmp: Path, sites: int) -> None:
    """The stripped copy's sites are all found (the unstripped file names them for the ground truth), none is left
    live after nop, and call gives back the stripped copy byte for byte."""
    stripped = tmp / f"stripped-{unstripped.name}"
    run("strip", unstripped, "-o", stripped)
    truth = ground_truth(stripped, reference=unstripped)
    (result,) = lib.scan_path(str(stripped))
    assert len(truth.sites) == sites and site_addresses(result) == truth.addresses
    nopped, back = nop_and_back(stripped, tmp)
    assert ground_truth(nopped, reference=unstripped).sites == []
    assert back.read_bytes() == stripped.read_bytes()


def test_stripped_static_program_is_refused(tmp: Path) -> None:
    exe = build(tmp, "static", "gcc", "bfd")
    run("strip", exe)
    for action in (["scan"], ["nop", "-o", tmp / "n"], ["call", "-o", tmp / "c"]):
        proc = ftpatch(action[0], exe, *action[1:])
        assert proc.returncode == 1
        assert "is a stripped static program: no symbol is left to say where mcount" in proc.stderr
    assert not (tmp / "n").exists() and not (tmp / "c").exists()


def test_stripped_static_program_with_mcount_loc_nops_and_call_says_why_not(tmp: Path) -> None:
    exe = build(tmp, "static", "gcc", "bfd", extra=("-mrecord-mcount",))
    run("strip", exe)
    nopped = tmp / "nopped"
    proc = ftpatch("nop", exe, "-o", nopped)
    assert proc.returncode == 0 and "6 patched" in proc.stdout
    assert "warning:" in proc.stderr and "`ftpatch call` will refuse this file" in proc.stderr
    assert execute(nopped, tmp / "run") == OUTPUT
    proc = ftpatch("call", nopped, "-o", tmp / "back")
    assert proc.returncode == 1 and "`call` needs the unstripped program" in proc.stderr


def test_nop_mcount_program_lists_its_sites_as_nops(tmp: Path) -> None:
    exe = tmp / "nop-mcount"
    run("gcc", "-O2", "-pg", "-mfentry", "-mrecord-mcount", "-mnop-mcount", "-fno-pie", "-no-pie", FORMS, "-o", exe)
    (result,) = lib.scan_path(str(exe))
    assert len(result.sites) == 6
    assert {(s.form, s.state) for s in result.sites} == {(lib.Form.RECORDED, lib.State.NOP)}
    proc = ftpatch("nop", "--in-place", exe)
    assert proc.returncode == 0 and "0 patched, 6 already nop" in proc.stdout
    proc = ftpatch("call", exe, "-o", tmp / "back")
    assert proc.returncode == 1 and "nothing in the file calls mcount, _mcount or __fentry__" in proc.stderr


def test_call_on_a_program_linked_from_nopped_objects_says_to_relink(tmp: Path) -> None:
    obj = tmp / "forms.o"
    run("gcc", "-O2", "-pg", "-c", FORMS, "-o", obj)
    assert ftpatch("nop", "--in-place", obj).returncode == 0
    exe = tmp / "forms"
    run("gcc", "-pg", obj, "-o", exe)
    proc = ftpatch("call", exe, "-o", tmp / "back")
    assert proc.returncode == 1
    assert "holds 6 nops where profiling calls were" in proc.stderr
    assert "run `ftpatch call` on the objects and link again" in proc.stderr


def test_nop_bytes_across_two_instructions_are_no_site(tmp: Path) -> None:
    """Found by their bytes, ftpatch's nops count only where decoding lands on them: in a -pg program they are no
    stray that makes call refuse, and in a program built without -pg no sign that it was linked from nop'd objects."""
    (tmp / "hides.c").write_text(HIDES_A_NOP)
    (tmp / "main.c").write_text("#include <stdio.h>\nint hides(int);\nint main(void) { return hides(41) != 42; }\n")
    for name, flags in (("pg", ["-pg"]), ("plain", [])):
        exe = tmp / name
        run("gcc", "-m32", "-O2", *flags, tmp / "main.c", tmp / "hides.c", "-o", exe)
        assert exe.read_bytes().count(bytes.fromhex("b02e8d742600")) == 1
        if flags:
            _, back = nop_and_back(exe, tmp)
            assert back.read_bytes() == exe.read_bytes()
        else:
            for action in ("nop", "call"):
                proc = ftpatch(action, exe, "-o", tmp / f"{action}-out")
                assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_calls_the_dynamic_loader_writes_are_refused(tmp: Path) -> None:
    """-fno-pie i386 code linked -pie: each call to mcount is a text relocation, written at every start."""
    obj, exe = tmp / "forms.o", tmp / "forms"
    run("gcc", "-m32", "-O2", "-pg", "-fno-pie", "-c", FORMS, "-o", obj)
    run("gcc", "-m32", "-pg", "-pie", obj, "-o", exe)  # ld warns: creating DT_TEXTREL in a PIE
    for action in (["scan"], ["nop", "-o", tmp / "n"], ["call", "-o", tmp / "c"]):
        proc = ftpatch(action[0], exe, *action[1:])
        assert proc.returncode == 1
        assert "has 6 calls to mcount that the dynamic loader writes at every start (text relocations" in proc.stderr
    assert not (tmp / "n").exists() and not (tmp / "c").exists()
