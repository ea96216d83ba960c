"""-fpatchable-function-entry=N[,M]: its nops, listed in __patchable_function_entries, are sites (form
`patchable`, state nop). `call --target NAME` makes them calls, in objects and linked programs built by gcc 12
and clang 14 and linked by bfd, gold and lld; a counting hook counts as many calls from retargeted objects as
from the retargeted program (PIE, -no-pie, -static, a shared library, a static archive); `nop` gives an object its
compiler's exact code back, and a linked file differs from its original only at the sites. Too few nop bytes, a
call without --target and bad entries are refused."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import PROGRAM_OUTPUT, ftpatch
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from test_retarget import _COUNT, HOOK, HOOK_SOURCE, PROG, counted, hook_object, ok, sh

# name -> (compile flags, link flags, linker)
BUILDS = {
    "pie": (["-O2", "-fpatchable-function-entry=5"], [], "bfd"),
    "nopie": (["-O2", "-fpatchable-function-entry=5", "-fno-pie"], ["-no-pie"], "gold"),
    "cet-before": (["-O2", "-fpatchable-function-entry=8,3", "-fcf-protection"], [], "lld"),
    "cet": (["-O2", "-fpatchable-function-entry=5", "-fcf-protection", "-fno-pie"], ["-no-pie"], "lld"),
    "m32": (["-m32", "-O2", "-fpatchable-function-entry=5"], ["-m32"], "bfd"),
}
CASES = [(build, cc) for build in BUILDS for cc in ("gcc", "clang")]


def code(path: Path) -> dict[str, bytes]:
    """The bytes of every executable section, by name (clang's -ffunction-sections names repeat: numbered)."""
    with path.open("rb") as f:
        elf = ELFFile(f)
        return {
            f"{i}:{s.name}": s.data()
            for i, s in enumerate(elf.iter_sections())
            if s["sh_flags"] & SH_FLAGS.SHF_EXECINSTR and s["sh_type"] != "SHT_NOBITS"
        }


def sites(path: Path, *args: str) -> list[dict[str, object]]:
    doc = json.loads(ok("scan", "--json", *args, path).stdout)
    return [site for f in doc["files"] for site in f["sites"]]


def round_trips(tmp_path: Path, off: Path, program_hooked: Path, obj: Path, hooked: Path) -> None:
    """The nop'd program retargeted again is the retargeted program; the retargeted object nop'd has the
    original's code, byte for byte (an object's nop writes back the compiler's own bytes), and retargeted again
    is the retargeted object."""
    again = tmp_path / "prog-again"
    ok("call", "--target", HOOK, off, "-o", again)
    assert again.read_bytes() == program_hooked.read_bytes()
    nopped = tmp_path / "prog-off.o"
    ok("nop", "--symbol", HOOK, hooked, "-o", nopped)
    assert code(nopped) == code(obj)
    back = tmp_path / "prog-back.o"
    ok("call", "--target", HOOK, nopped, "-o", back)
    assert back.read_bytes() == hooked.read_bytes()


@pytest.mark.parametrize(("build", "cc"), CASES, ids=[f"{b}-{c}" for b, c in CASES])
def test_objects_and_programs_call_the_hook_and_nop_gives_the_code_back(tmp_path: Path, build: str, cc: str) -> None:
    cflags, lflags, linker = BUILDS[build]
    ld = [f"-fuse-ld={linker}"]
    obj, hook = tmp_path / "prog.o", hook_object(tmp_path, cc, cflags)
    sh(cc, *cflags, "-c", PROG, "-o", obj, cwd=tmp_path)
    found = sites(obj)
    assert found and {(s["form"], s["state"], s["length"]) for s in found} == {("patchable", "nop", 5)}

    hooked = tmp_path / "prog-hook.o"
    ok("call", "--target", HOOK, obj, "-o", hooked)
    assert {(s["form"], s["target"], s["state"]) for s in sites(hooked, "--symbol", HOOK)} == {("rel32", HOOK, "call")}
    exe = tmp_path / "from-objects"
    sh(cc, *lflags, *ld, hooked, hook, "-o", exe, cwd=tmp_path)
    printed, from_objects = counted(exe, tmp_path)
    assert printed == PROGRAM_OUTPUT and from_objects > 1000

    program, program_hooked = tmp_path / "prog", tmp_path / "prog-hooked"
    sh(cc, *lflags, *ld, obj, hook, "-o", program, cwd=tmp_path)
    assert counted(program, tmp_path) == (PROGRAM_OUTPUT, 0)
    listed = sites(program)
    assert len(listed) == len(found) and {s["form"] for s in listed} == {"patchable"}
    ok("call", "--target", HOOK, program, "-o", program_hooked)
    assert counted(program_hooked, tmp_path) == (PROGRAM_OUTPUT, from_objects)

    # nop: the program differs from the original only at its sites (clang's x86-64 nop is the one ftpatch writes);
    # call --target gives back the retargeted program exactly.
    off = tmp_path / "prog-off"
    ok("nop", "--symbol", HOOK, program_hooked, "-o", off)
    before, after = program.read_bytes(), off.read_bytes()
    assert len(before) == len(after)
    changed = {i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b}
    at_sites = {int(str(s["file_offset"])) + k for s in listed for k in range(5)}
    assert changed <= at_sites and (changed == set()) == (cc == "clang" and "-m32" not in cflags)
    round_trips(tmp_path, off, program_hooked, obj, hooked)


# clang's nops longer than a call: name -> (compile flags, link flags, linker). clang 14 writes one nop of N-M bytes
# on x86-64 (a 10-byte one first for more), 66 90 pairs on i386.
LONG = {
    "6": (["-fpatchable-function-entry=6"], [], "gold"),
    "8": (["-fpatchable-function-entry=8"], [], "bfd"),
    "16,3": (["-fpatchable-function-entry=16,3"], ["-no-pie"], "lld"),
    "cet-10": (["-fpatchable-function-entry=10", "-fcf-protection"], [], "lld"),
    "m32-8": (["-m32", "-fpatchable-function-entry=8"], ["-m32"], "bfd"),
}


def instructions(obj: Path) -> dict[int, str]:
    """Address -> mnemonic and operands of every instruction objdump -d decodes in an object's .text."""
    found = {}
    for line in sh("objdump", "-d", "-j", ".text", obj, cwd=obj.parent).stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0].strip().endswith(":"):
            found[int(parts[0].strip()[:-1], 16)] = parts[2].strip()
    return found


def is_nop(text: str) -> bool:
    return text.split()[0] in ("nop", "nopl", "nopw") or text.startswith(("cs nopw", "xchg   %ax,%ax"))


@pytest.mark.parametrize("build", LONG)
def test_clang_nops_longer_than_a_call_become_a_call_and_a_filler(tmp_path: Path, build: str) -> None:
    """Each site runs from where the function is entered to the end of the nop a call splits; `call --target`
    writes the call and a nop to that end, so that objdump decodes the rest of the code as it did; the hook counts
    as many calls from the objects as from the program; `nop` gives the object clang's code back, and the program
    differs only at its sites."""
    cflags, lflags, linker = LONG[build]
    obj, hook = tmp_path / "prog.o", hook_object(tmp_path, "clang", cflags)
    sh("clang", "-O2", *cflags, "-c", PROG, "-o", obj, cwd=tmp_path)
    found = sites(obj)
    assert found and {(s["form"], s["state"]) for s in found} == {("patchable", "nop")}
    before = instructions(obj)
    spans = [(int(str(s["offset"])), int(str(s["length"]))) for s in found]
    for start, length in spans:
        # A site longer than a call: the nops from where the function is entered, no instruction ending 5 bytes in.
        assert length > 5 and start in before and start + length in before, (start, length)
        inside = [at for at in before if start <= at < start + length]
        assert all(is_nop(before[at]) for at in inside) and not any(start + 5 <= at for at in inside)

    hooked = tmp_path / "prog-hook.o"
    ok("call", "--target", HOOK, obj, "-o", hooked)
    after = instructions(hooked)
    covered = {at for start, length in spans for at in range(start, start + length)}
    for start, length in spans:
        assert after[start].startswith("call"), after[start]
        assert all(is_nop(after[at]) for at in after if start + 5 <= at < start + length)
        assert start + 5 in after and start + length in after
    assert {a: t for a, t in after.items() if a not in covered} == {a: t for a, t in before.items() if a not in covered}
    exe = tmp_path / "from-objects"
    sh("clang", *lflags, f"-fuse-ld={linker}", hooked, hook, "-o", exe, cwd=tmp_path)
    printed, from_objects = counted(exe, tmp_path)
    assert printed == PROGRAM_OUTPUT and from_objects > 1000

    program, program_hooked, off = tmp_path / "prog", tmp_path / "prog-hooked", tmp_path / "prog-off"
    sh("clang", *lflags, f"-fuse-ld={linker}", obj, hook, "-o", program, cwd=tmp_path)
    listed = sites(program)
    assert sorted(int(str(s["length"])) for s in listed) == sorted(length for _, length in spans)
    ok("call", "--target", HOOK, program, "-o", program_hooked)
    assert counted(program_hooked, tmp_path) == (PROGRAM_OUTPUT, from_objects)
    ok("nop", "--symbol", HOOK, program_hooked, "-o", off)
    assert counted(off, tmp_path) == (PROGRAM_OUTPUT, 0)
    original, nopped_program = program.read_bytes(), off.read_bytes()
    changed = {i for i, (a, b) in enumerate(zip(original, nopped_program, strict=True)) if a != b}
    at_sites = {int(str(s["file_offset"])) + k for s in listed for k in range(int(str(s["length"])))}
    assert len(original) == len(nopped_program) and changed and changed <= at_sites
    # One nop of ftpatch's for each length, the same at every site of it, and a nop by the scan's rule.
    written = {
        (n := int(str(s["length"])), nopped_program[(at := int(str(s["file_offset"]))) : at + n]) for s in listed
    }
    assert len(written) == len({n for n, _ in written})
    assert {s["state"] for s in sites(off)} == {"nop"}
    round_trips(tmp_path, off, program_hooked, obj, hooked)


def test_a_long_nop_clang_does_not_write_is_refused_and_nothing_written(tmp_path: Path) -> None:
    """All of a long nop is compared, not the 5 bytes a call takes: clang's 8-byte nop with another displacement
    is still a nop, but not one `nop` could give back, so `call --target` refuses it with the numbers."""
    obj = tmp_path / "prog.o"
    sh("clang", "-O2", "-fpatchable-function-entry=8", "-c", PROG, "-o", obj, cwd=tmp_path)
    first = sites(obj)[0]
    data = bytearray(obj.read_bytes())
    at = int(str(first["file_offset"]))
    assert data[at + 5] == 0x02  # clang's nopl 0x200(%rax,%rax,1): the sixth byte, past what a call takes
    data[at + 5] = 0x03
    bad, out = tmp_path / "bad.o", tmp_path / "out.o"
    bad.write_bytes(data)
    proc = ftpatch("call", "--target", HOOK, bad, "-o", out)
    assert proc.returncode == 1 and not out.exists(), proc.stderr
    assert "left 8 nop bytes where the function is entered (N-M = 8), but they begin with 0f:1f:84:00:00:03:00:00" in (
        proc.stderr
    )


@pytest.mark.parametrize(
    ("cc", "option", "said"),
    [
        ("gcc", "-fpatchable-function-entry=3", "N-M = 3"),
        ("gcc", "-fpatchable-function-entry=7,4", "N-M = 3"),
        ("clang", "-fpatchable-function-entry=3", "N-M = 3"),
        ("clang", "-fpatchable-function-entry=6,3", "N-M = 3"),
    ],
)
def test_too_few_nop_bytes_are_refused_with_the_numbers(tmp_path: Path, cc: str, option: str, said: str) -> None:
    obj, out = tmp_path / "prog.o", tmp_path / "out.o"
    sh(cc, "-O2", option, "-c", PROG, "-o", obj, cwd=tmp_path)
    proc = ftpatch("call", "--target", HOOK, obj, "-o", out)
    assert proc.returncode == 1 and said in proc.stderr and not out.exists(), proc.stderr
    assert said in ftpatch("scan", obj).stderr  # a warning: nop has nothing to do


def test_call_without_target_says_to_name_one(tmp_path: Path) -> None:
    obj, out = tmp_path / "prog.o", tmp_path / "out.o"
    sh("gcc", "-O2", "-fpatchable-function-entry=5", "-c", PROG, "-o", obj, cwd=tmp_path)
    proc = ftpatch("call", obj, "-o", out)
    assert proc.returncode == 1 and "`call --target NAME`" in proc.stderr and not out.exists()
    assert "0 patched, 8 already nop" in ok("nop", obj, "-o", out).stdout


@pytest.mark.parametrize("kind", ["object", "program"])
def test_garbage_at_a_listed_entry_is_exit_3_nothing_written(tmp_path: Path, kind: str) -> None:
    built = tmp_path / "prog"
    sh(
        "gcc",
        "-O2",
        "-fpatchable-function-entry=5",
        *(["-c"] if kind == "object" else [hook_object(tmp_path, "gcc", [])]),
        PROG,
        "-o",
        built,
        cwd=tmp_path,
    )
    first = sites(built)[0]
    data = bytearray(built.read_bytes())
    at = int(str(first["file_offset"]))
    data[at : at + 5] = bytes.fromhex("0f0b909090")  # ud2 where the nops were
    bad, out = tmp_path / "bad", tmp_path / "out"
    bad.write_bytes(data)
    for args in (["nop"], ["call", "--target", HOOK]):
        proc = ftpatch(*args, bad, "-o", out)
        assert proc.returncode == 3 and not out.exists(), proc.stderr
        assert "expected a nop, actual 0f:0b:90:90:90 (ud2; nop; nop; nop)" in proc.stderr


@pytest.mark.parametrize("kind", ["object", "program"])
def test_an_entry_outside_the_code_is_exit_3_nothing_written(tmp_path: Path, kind: str) -> None:
    """ftrace_bug's one line: what is wrong, then where; nothing is written, by any command."""
    built = tmp_path / "prog"
    link = ["-fno-pie", "-no-pie", hook_object(tmp_path, "gcc", [])] if kind == "program" else ["-c"]
    sh("gcc", "-O2", "-fpatchable-function-entry=5", *link, PROG, "-o", built, cwd=tmp_path)
    data = bytearray(built.read_bytes())
    with built.open("rb") as f:
        elf = ELFFile(f)
        if kind == "object":  # the first entry's addend: past the end of .text
            at = elf.get_section_by_name(".rela__patchable_function_entries")["sh_offset"] + 16
            value = elf.get_section_by_name(".text")["sh_size"] + 0x100
            where = f".text+{value:#x} (relocation .rela__patchable_function_entries[0])"
        else:  # -no-pie: the first entry is the address itself; point it at .rodata
            at = elf.get_section_by_name("__patchable_function_entries")["sh_offset"]
            value = elf.get_section_by_name(".rodata")["sh_addr"]
            where = f"{value:#x}"
    data[at : at + 8] = value.to_bytes(8, "little")
    bad, out = tmp_path / "bad", tmp_path / "out"
    bad.write_bytes(data)
    for args in (["call", "--target", HOOK], ["nop"], ["call"]):
        proc = ftpatch(*args, bad, "-o", out)
        assert proc.returncode == 3 and not out.exists(), proc.stderr
        what = "the object's" if kind == "object" else "the file's"
        assert proc.stderr == (
            f"ftpatch: error: {bad}: an entry of __patchable_function_entries points outside {what} executable "
            f"code, at {where}\n"
        )


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_zlib(tmp_path: Path, zlib_source: Path, cc: str) -> None:
    """zlib's own build with -fpatchable-function-entry=5: its static library's members retargeted, then linked,
    count what the linked `example` retargeted counts; nop gives every member its code back."""
    hook = hook_object(tmp_path, cc, [])
    tree = tmp_path / "zlib"
    shutil.copytree(zlib_source, tree, symlinks=True)
    env = {**os.environ, "CC": cc, "CFLAGS": "-O2 -fpatchable-function-entry=5", "LDFLAGS": str(hook)}
    sh("./configure", "--static", cwd=tree, env=env)
    sh("make", "example", "libz.a", cwd=tree, env=env)
    printed, none = counted(tree / "example", tree)
    assert none == 0 and "zlib version" in printed
    hooked = tmp_path / "example-hooked"
    ok("call", "--target", HOOK, tree / "example", "-o", hooked)
    hooked_printed, from_program = counted(hooked, tree)
    assert hooked_printed == printed and from_program > 1000

    original = {p.name: code(p) for p in tree.glob("*.o")}
    objects = sorted(tree.glob("*.o"))
    ok("call", "--target", HOOK, "--in-place", *objects)
    relinked = tmp_path / "example-relinked"
    members = [p for p in objects if p.name not in ("example.o", "minigzip.o")]
    sh(cc, tree / "example.o", *members, hook, "-o", relinked, cwd=tree)
    assert counted(relinked, tree) == (printed, from_program)
    ok("nop", "--symbol", HOOK, "--in-place", *objects)
    assert {p.name: code(p) for p in objects} == original


def test_x32_objects_and_programs(tmp_path: Path) -> None:
    """x32 (gcc -mx32): 4-byte entries, and a 32-bit r_addend, whose top 16 bits are "FP" as on x86-64.
    This machine's kernel runs no x32 program: their bytes are compared, not run."""
    obj, hooked, nopped = tmp_path / "prog.o", tmp_path / "prog-hook.o", tmp_path / "off.o"
    sh("gcc", "-mx32", "-O2", "-fpatchable-function-entry=5", "-c", PROG, "-o", obj, cwd=tmp_path)
    assert len(sites(obj)) == 8
    ok("call", "--target", HOOK, obj, "-o", hooked)
    assert "R_X86_64_NONE                     46500001" in sh("readelf", "-rW", hooked, cwd=tmp_path).stdout
    ok("nop", "--symbol", HOOK, hooked, "-o", nopped)
    assert code(nopped) == code(obj)
    program, program_hooked, off = tmp_path / "prog", tmp_path / "prog-hooked", tmp_path / "prog-off"
    hook = tmp_path / "hook.o"
    sh("gcc", "-mx32", "-O2", "-fPIC", "-mgeneral-regs-only", "-c", HOOK_SOURCE, "-o", hook, cwd=tmp_path)
    sh("gcc", "-mx32", obj, hook, "-o", program, cwd=tmp_path)
    ok("call", "--target", HOOK, program, "-o", program_hooked)
    ok("nop", "--symbol", HOOK, program_hooked, "-o", off)
    listed = sites(program)
    at_sites = {int(str(s["file_offset"])) + k for s in listed for k in range(5)}
    changed = {i for i, (a, b) in enumerate(zip(program.read_bytes(), off.read_bytes(), strict=True)) if a != b}
    assert changed and changed <= at_sites


@pytest.mark.parametrize("linker", ["bfd", "gold"])
def test_x32_clang_nops_longer_than_a_call(tmp_path: Path, linker: str) -> None:
    """clang -mx32 with N = 8: one 8-byte nop at each entry, as on x86-64. `call --target` writes the call and
    a filler to the nop's end (objdump decodes the rest as before), `nop` gives the object clang's code back, and
    the program linked by bfd or gold differs from the original only inside its sites after `nop`. Compared, not
    run: this machine's kernel runs no x32 program."""
    obj, hooked = tmp_path / "prog.o", tmp_path / "prog-hook.o"
    sh("clang", "-mx32", "-O2", "-fpatchable-function-entry=8", "-c", PROG, "-o", obj, cwd=tmp_path)
    found = sites(obj)
    assert len(found) == 8 and {(s["form"], s["state"], s["length"]) for s in found} == {("patchable", "nop", 8)}
    before = instructions(obj)
    ok("call", "--target", HOOK, obj, "-o", hooked)
    after = instructions(hooked)
    for start in (int(str(s["offset"])) for s in found):
        assert after[start].startswith("call") and is_nop(after[start + 5]) and start + 8 in after, after[start]
    covered = {int(str(s["offset"])) + k for s in found for k in range(8)}
    assert {a: t for a, t in after.items() if a not in covered} == {a: t for a, t in before.items() if a not in covered}

    hook, program = tmp_path / "hook.o", tmp_path / "prog"
    program_hooked, off = tmp_path / "prog-hooked", tmp_path / "prog-off"
    sh("clang", "-mx32", "-O2", "-fPIC", "-mgeneral-regs-only", "-c", HOOK_SOURCE, "-o", hook, cwd=tmp_path)
    sh("clang", "-mx32", f"-fuse-ld={linker}", obj, hook, "-o", program, cwd=tmp_path)
    listed = sites(program)
    assert len(listed) == 8 and {s["length"] for s in listed} == {8}
    ok("call", "--target", HOOK, program, "-o", program_hooked)
    ok("nop", "--symbol", HOOK, program_hooked, "-o", off)
    at_sites = {int(str(s["file_offset"])) + k for s in listed for k in range(8)}
    changed = {i for i, (a, b) in enumerate(zip(program.read_bytes(), off.read_bytes(), strict=True)) if a != b}
    assert changed and changed <= at_sites
    assert {s["state"] for s in sites(off)} == {"nop"}
    round_trips(tmp_path, off, program_hooked, obj, hooked)


# A program for a shared library that holds fixtures/prog.c, its main renamed.
DRIVER = "int prog_main(void);\nint main(void) { return prog_main(); }\n"
OTHER_FORMS = [
    (f, cc, ld, bits)
    for f in ("shared", "static", "archive")
    for cc in ("gcc", "clang")
    for ld, bits in (("bfd", "64"), ("gold", "64"), ("lld", "64"), ("bfd", "m32"), ("lld", "m32"))
]


def table_entries(path: Path) -> int:
    """How many entries the file's __patchable_function_entries sections hold (clang may make several)."""
    with path.open("rb") as f:
        elf = ELFFile(f)
        word = elf.elfclass // 8
        return sum(s["sh_size"] // word for s in elf.iter_sections() if s.name == "__patchable_function_entries")


def differs_only_at_sites(original: Path, changed: Path, listed: list[dict[str, object]]) -> bool:
    before, after = original.read_bytes(), changed.read_bytes()
    at_sites = {int(str(s["file_offset"])) + k for s in listed for k in range(int(str(s["length"])))}
    if len(before) != len(after):
        return False
    return {i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b} <= at_sites


@pytest.mark.parametrize(("form", "cc", "linker", "bits"), OTHER_FORMS, ids=["-".join(c) for c in OTHER_FORMS])
def test_shared_libraries_static_programs_and_archives(
    tmp_path: Path, form: str, cc: str, linker: str, bits: str
) -> None:
    """A shared library (-shared -fPIC, run by a program linked against it), a -static program and a static
    archive of -fpatchable-function-entry=5 objects: scan lists one site per entry of the table; the hook counts
    as many calls from the retargeted file as from the retargeted objects linked the same way; `nop` gives the
    library or the program back but for its sites, the archive's members their code."""
    m32 = ["-m32"] if bits == "m32" else []
    ld, flags = f"-fuse-ld={linker}", [*m32, "-O2", "-fpatchable-function-entry=5"]
    shared = form == "shared"
    hook = tmp_path / "hook.o"
    # An i386 call at a function's entry has no GOT base in %ebx for a PLT entry, so `call --target` writes the
    # R_386_PC32 gas writes outside PIC code: against a hook the library exports, bfd makes that a text relocation
    # and lld refuses it. Hidden, the hook is called directly.
    hidden = ["-fvisibility=hidden"] if m32 and shared else []
    sh(cc, *m32, "-O2", "-fPIC", "-mgeneral-regs-only", *hidden, "-c", HOOK_SOURCE, "-o", hook, cwd=tmp_path)
    obj = tmp_path / "prog.o"
    sh(cc, *flags, *(["-fPIC", "-Dmain=prog_main"] if shared else []), "-c", PROG, "-o", obj, cwd=tmp_path)
    assert len(sites(obj)) == table_entries(obj) > 0
    hooked = tmp_path / "prog-hook.o"
    ok("call", "--target", HOOK, obj, "-o", hooked)
    env = {**os.environ, "LD_LIBRARY_PATH": str(tmp_path)}

    def run(exe: Path) -> int:
        proc = sh(exe, cwd=tmp_path, env=env)
        found = _COUNT.findall(proc.stderr)
        assert proc.stdout == PROGRAM_OUTPUT and len(found) == 1, proc.stderr
        return int(found[0])

    def link(objects: list[Path], out: Path) -> Path:
        """A program of `objects` and the hook, or of a library of them and DRIVER."""
        if not shared:
            sh(cc, *m32, ld, *(["-static"] if form == "static" else []), *objects, hook, "-o", out, cwd=tmp_path)
            return out
        sh(cc, *m32, ld, "-shared", *objects, hook, "-o", tmp_path / "libprog.so", cwd=tmp_path)
        assert "TEXTREL" not in sh("readelf", "-d", tmp_path / "libprog.so", cwd=tmp_path).stdout
        driver = tmp_path / "driver.c"
        driver.write_text(DRIVER)
        sh(cc, *m32, ld, driver, "-L", tmp_path, "-lprog", "-o", out, cwd=tmp_path)
        return tmp_path / "libprog.so"

    exe = tmp_path / "from-objects"
    link([hooked], exe)
    from_objects = run(exe)
    assert from_objects > 1000

    if form == "archive":
        archive, archive_hooked, archive_off = tmp_path / "libx.a", tmp_path / "libx-hook.a", tmp_path / "libx-off.a"
        sh("ar", "rcs", archive, obj, cwd=tmp_path)
        assert len(sites(archive)) == table_entries(obj)
        ok("call", "--target", HOOK, archive, "-o", archive_hooked)
        assert run(link([archive_hooked], tmp_path / "from-archive")) == from_objects
        ok("nop", "--symbol", HOOK, archive_hooked, "-o", archive_off)
        members = tmp_path / "members"
        members.mkdir()
        sh("ar", "x", archive_off, cwd=members)
        assert code(members / "prog.o") == code(obj)
        again = tmp_path / "libx-again.a"
        ok("call", "--target", HOOK, archive_off, "-o", again)
        assert again.read_bytes() == archive_hooked.read_bytes()
        return

    exe = tmp_path / "prog"
    linked = link([obj], exe)  # the program, or the library it runs
    original = tmp_path / "original"
    shutil.copy(linked, original)
    assert run(exe) == 0
    listed = sites(linked)
    assert len(listed) == table_entries(linked) == table_entries(obj)
    ok("call", "--target", HOOK, "--in-place", linked)
    assert run(exe) == from_objects
    retargeted = tmp_path / "retargeted"
    shutil.copy(linked, retargeted)
    ok("nop", "--symbol", HOOK, "--in-place", linked)
    assert run(exe) == 0 and differs_only_at_sites(original, linked, listed)
    ok("call", "--target", HOOK, "--in-place", linked)
    assert linked.read_bytes() == retargeted.read_bytes()


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_i386_objects_keep_the_record_where_rel_has_room_and_partial_links_by_bfd_and_lld_keep_it(
    tmp_path: Path, cc: str
) -> None:
    """REL has no addend: an i386 object's record of the compiler's nop is a second entry with r_info 0, its
    place inside the site naming the nop. `ld -r` by bfd and lld, with another object before it (so every offset
    moves), keeps it: `nop` gives the code back, and `call --symbol` the partial link exactly, and the nop'd
    object links (bfd, gold, lld) and runs without a call. gold's -r drops NONE entries: `nop` refuses, in one
    line that says why and what works, and writes nothing."""
    obj, hooked, other = tmp_path / "prog.o", tmp_path / "prog-hook.o", tmp_path / "other.o"
    sh(cc, "-m32", "-O2", "-fpatchable-function-entry=5", "-c", PROG, "-o", obj, cwd=tmp_path)
    ok("call", "--target", HOOK, obj, "-o", hooked)
    (tmp_path / "other.c").write_text("int other(int x) { return 3 * x + 1; }\n")
    sh(cc, "-m32", "-O2", "-c", tmp_path / "other.c", "-o", other, cwd=tmp_path)
    hook = hook_object(tmp_path, cc, ["-m32"])
    for linker in ("bfd", "lld"):
        part, off, back = (tmp_path / f"{name}-{linker}.o" for name in ("part", "off", "back"))
        sh(f"ld.{linker}", "-m", "elf_i386", "-r", other, hooked, "-o", part, cwd=tmp_path)
        ok("nop", "--symbol", HOOK, part, "-o", off)
        assert {(s["form"], s["state"]) for s in sites(off, "--symbol", HOOK)} == {("rel32", "nop")}
        ok("call", "--symbol", HOOK, off, "-o", back)
        assert back.read_bytes() == part.read_bytes()
        for final in ("bfd", "gold", "lld"):
            exe = tmp_path / f"prog-{linker}-{final}"
            sh(cc, "-m32", f"-fuse-ld={final}", off, hook, "-o", exe, cwd=tmp_path)
            assert counted(exe, tmp_path) == (PROGRAM_OUTPUT, 0)
    part, off = tmp_path / "part-gold.o", tmp_path / "off-gold.o"
    sh("ld.gold", "-m", "elf_i386", "-r", other, hooked, "-o", part, cwd=tmp_path)
    proc = ftpatch("nop", "--symbol", HOOK, part, "-o", off)
    assert proc.returncode == 1 and not off.exists(), proc.stderr
    assert proc.stderr.count("\n") == 1 and "no record of the compiler's nop" in proc.stderr
    assert "ld.gold -r" in proc.stderr and "nop the linked program" in proc.stderr
