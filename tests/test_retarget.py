"""`call --target NAME`: every chosen site becomes a call to NAME, in objects and in linked files.

fixtures/prog.c and Debian's zlib are built with gcc and clang, every way the issue names (PIE, -no-pie,
static, i386, a shared library, the __fentry__ and the mcount forms), and linked with the counting hook of
examples/hook/hook.c. The hook's count is the measure: the objects retargeted then linked must count exactly
what the linked program retargeted counts, and the program must print what it printed. objdump, not
ftpatch, says that every site of the original calls the hook; `--target <the original>` gives the file back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, PROGRAM_OUTPUT, ROOT, code_and_relocations, ftpatch
from oracles.groundtruth import ground_truth

HOOK_SOURCE = ROOT / "examples" / "hook" / "hook.c"
PROG = FIXTURES / "prog.c"
HOOK = "profile_hook"
_COUNT = re.compile(r"^profile_hook: (\d+) calls$", re.M)

# name -> (compile flags, link flags); every one is built by gcc and clang.
BUILDS = {
    "pie": (["-O2", "-pg"], []),
    "nopie": (["-O2", "-pg", "-fno-pie"], ["-no-pie"]),
    "fentry": (["-O2", "-pg", "-mfentry"], []),
    "fentry-nopie": (["-O2", "-pg", "-mfentry", "-fno-pie"], ["-no-pie"]),
    "static": (["-O2", "-pg"], ["-static"]),
    "m32": (["-m32", "-O2", "-pg"], ["-m32"]),
    "m32-nopie": (["-m32", "-O2", "-pg", "-fno-pie"], ["-m32", "-no-pie"]),
    "m32-static": (["-m32", "-O2", "-pg"], ["-m32", "-static"]),
}
LINKERS = {"pie": "bfd", "nopie": "gold", "fentry": "lld", "fentry-nopie": "bfd", "static": "bfd"}
CASES = [(build, cc) for build in BUILDS for cc in ("gcc", "clang") if not (cc == "clang" and "fentry" in build)]


def sh(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout}\n{proc.stderr}"
    return proc


def ok(*args: str | Path) -> subprocess.CompletedProcess[str]:
    proc = ftpatch(*args)
    assert proc.returncode == 0, proc.stderr
    return proc


def hook_object(tmp: Path, cc: str, flags: list[str]) -> Path:
    obj = tmp / "hook.o"
    bits = ["-m32"] if "-m32" in flags else []
    sh(cc, *bits, "-O2", "-fPIC", "-mgeneral-regs-only", "-c", HOOK_SOURCE, "-o", obj, cwd=tmp)
    return obj


def counted(exe: Path, cwd: Path) -> tuple[str, int]:
    """What the program printed, and the hook's count."""
    proc = sh(exe, cwd=cwd)
    m = _COUNT.search(proc.stderr)
    assert m, proc.stderr
    return proc.stdout, int(m.group(1))


def calls_to(exe: Path, name: str) -> set[int]:
    """The addresses of the calls and jmps to `name` that objdump and readelf show: direct (`<name>`,
    `<name@plt>`), through its GOT slot (`ff 15` RIP-relative, i386 `ff 93` off the GOT base)."""
    relocs = subprocess.run(["readelf", "-rW", exe], capture_output=True, text=True).stdout
    slots = {int(line.split()[0], 16) for line in relocs.splitlines() if re.search(rf"\s{name}(@\S*)?\s", line + " ")}
    symbols = subprocess.run(["readelf", "-sW", exe], capture_output=True, text=True).stdout
    got = [int(line.split()[1], 16) for line in symbols.splitlines() if line.endswith(" _GLOBAL_OFFSET_TABLE_")]
    found = set()
    for line in subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", exe], capture_output=True, text=True
    ).stdout.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(?:addr(?:16|32) )?(call|jmp)\S*\s+(.*)", line)
        if not m:
            continue
        va, operand = int(m.group(1), 16), m.group(3)
        if re.search(rf"<{name}(@plt)?>", operand):
            found.add(va)
        elif (
            (rip := re.search(r"# (?:0x)?([0-9a-f]+)", operand))
            and "%rip" in operand
            and int(rip.group(1), 16) in slots
        ):
            found.add(va)
        elif (ebx := re.match(r"\*(-?0x[0-9a-f]+)\(%ebx\)", operand)) and got:
            if (got[0] + int(ebx.group(1), 16)) & 0xFFFFFFFF in slots:
                found.add(va)
    return found


@pytest.mark.parametrize(("build", "cc"), CASES, ids=[f"{b}-{c}" for b, c in CASES])
def test_objects_and_programs_call_the_hook(tmp_path: Path, build: str, cc: str) -> None:
    cflags, lflags = BUILDS[build]
    ld = [f"-fuse-ld={LINKERS.get(build, 'bfd')}"]
    obj, hook = tmp_path / "prog.o", hook_object(tmp_path, cc, cflags)
    sh(cc, *cflags, "-c", PROG, "-o", obj, cwd=tmp_path)

    # The program linked as built, then retargeted.
    exe = tmp_path / "prog"
    sh(cc, *lflags, *ld, "-pg", obj, hook, "-o", exe, cwd=tmp_path)
    printed, none = counted(exe, tmp_path)
    assert (printed, none) == (PROGRAM_OUTPUT, 0)
    hooked = tmp_path / "prog-hooked"
    done = ok("call", "--target", HOOK, exe, "-o", hooked)
    sites = ground_truth(exe).addresses
    assert f": {len(sites)} patched, 0 already" in done.stdout
    assert calls_to(hooked, HOOK) == sites  # objdump finds a call to the hook at every site, and nowhere else
    printed, from_program = counted(hooked, tmp_path)
    assert printed == PROGRAM_OUTPUT and from_program > 1000

    # The objects retargeted, then linked: the same count, a call at the same sites.
    hooked_obj = tmp_path / "prog-hooked.o"
    ok("call", "--target", HOOK, obj, "-o", hooked_obj)
    from_objects_exe = tmp_path / "prog-from-objects"
    sh(cc, *lflags, *ld, "-pg", hooked_obj, hook, "-o", from_objects_exe, cwd=tmp_path)
    assert counted(from_objects_exe, tmp_path) == (PROGRAM_OUTPUT, from_program)
    assert len(calls_to(from_objects_exe, HOOK)) == len(sites)

    # In any order: nop'd, the hook counts nothing; pointed at the hook again, the same file; back at the
    # original target, the original file.
    nopped = tmp_path / "prog-hooked-nop"
    ok("nop", "--symbol", HOOK, hooked, "-o", nopped)
    assert counted(nopped, tmp_path) == (PROGRAM_OUTPUT, 0)
    again = tmp_path / "prog-hooked-again"
    ok("call", "--target", HOOK, nopped, "-o", again)
    assert again.read_bytes() == hooked.read_bytes()
    original = "__fentry__" if "fentry" in build else "mcount"
    back = tmp_path / "prog-back"
    # Sites are known by what they call: the hook's are found when it is named.
    ok("call", "--target", original, "--symbol", HOOK, hooked, "-o", back)
    assert back.read_bytes() == exe.read_bytes()
    ok("call", "--target", original, nopped, "-o", back)
    assert back.read_bytes() == exe.read_bytes()

    # --only narrows the count: fib is most of the calls, but not all of them.
    only = tmp_path / "prog-fib"
    ok("call", "--target", HOOK, "--only", "fib", exe, "-o", only)
    assert 0 < counted(only, tmp_path)[1] < from_program
    assert len(calls_to(only, HOOK)) == 1


@pytest.mark.parametrize("cc", ["gcc", "clang"])
@pytest.mark.parametrize("bits", [[], ["-m32"]], ids=["x86_64", "i386"])
def test_an_object_comes_back_with_its_code_and_relocations(tmp_path: Path, cc: str, bits: list[str]) -> None:
    """Objects of every PIC form (gotpcrel, got-ebx, rel32): objdump -dr of the object pointed at the hook and
    back, or nop'd in between, is the original's; only the symbol ftpatch added stays."""
    # (gcc -m32 has -mfentry without -fpic only.)
    for flags in (["-fpie"], ["-fno-pie"], ["-mfentry", "-fno-pie"] if cc == "gcc" else ["-fpic"]):
        obj = tmp_path / "prog.o"
        sh(cc, *bits, "-O2", "-pg", *flags, "-c", PROG, "-o", obj, cwd=tmp_path)
        original = code_and_relocations(obj)
        hooked, nopped, back = tmp_path / "h.o", tmp_path / "n.o", tmp_path / "b.o"
        ok("call", "--target", HOOK, obj, "-o", hooked)
        relocations = code_and_relocations(hooked)
        assert relocations.count(f"\t{HOOK}") == original.count("\tmcount") + original.count("\t__fentry__") > 5
        assert "mcount" not in relocations and "__fentry__" not in relocations
        ok("nop", "--symbol", HOOK, hooked, "-o", nopped)
        ok("call", "--target", HOOK, nopped, "-o", back)
        assert back.read_bytes() == hooked.read_bytes()
        target = "__fentry__" if "-mfentry" in flags else "mcount"
        for source in (hooked, nopped):
            ok("call", "--target", target, "--symbol", HOOK, source, "-o", back)
            assert code_and_relocations(back) == original
        # The symbol ftpatch added is an undefined global, the object's last.
        last = sh("readelf", "-sW", hooked, cwd=tmp_path).stdout.strip().splitlines()[-1].split()
        assert last[3:] == ["NOTYPE", "GLOBAL", "DEFAULT", "UND", HOOK]


def test_scan_shows_the_target_each_site_calls(tmp_path: Path) -> None:
    obj = tmp_path / "hooked.o"
    ok("call", "--target", HOOK, "--except", "main", FIXTURES / "x86_64-pie.o", "-o", obj)
    proc = ftpatch("scan", "--json", "--symbol", HOOK, obj)
    sites = json.loads(proc.stdout)["files"][0]["sites"]
    assert {(s["function"] == "main", s["target"]) for s in sites} == {(True, "mcount"), (False, HOOK)}
    text = ok("scan", "--symbol", HOOK, obj).stdout
    assert re.search(rf"gotpcrel\s+{HOOK}\s+call\s+fib", text)
    # Without the hook's name the sites are not found, and scan says why rather than report a clean file.
    proc = ok("scan", obj)
    assert "1 sites (1 call, 0 not)" in proc.stdout and not proc.stderr  # main's still calls mcount
    hooked_all = tmp_path / "all.o"
    ok("call", "--target", HOOK, FIXTURES / "x86_64-pie.o", "-o", hooked_all)
    proc = ok("scan", hooked_all)
    assert "0 sites" in proc.stdout and "name that one with --symbol NAME" in proc.stderr


def test_already_calling_the_target_is_counted_not_changed(tmp_path: Path) -> None:
    obj = tmp_path / "hooked.o"
    ok("call", "--target", HOOK, FIXTURES / "x86_64-fentry.o", "-o", obj)
    before = obj.read_bytes()
    proc = ok("call", "--target", HOOK, "--in-place", obj)
    assert ": 0 patched, 8 already call" in proc.stdout
    assert obj.read_bytes() == before


def test_a_file_with_no_sites_gains_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.o"
    proc = ok("call", "--target", HOOK, FIXTURES / "x86_64-nopg.o", "-o", out)
    assert ": 0 patched, 0 already" in proc.stdout and not proc.stderr
    assert out.read_bytes() == (FIXTURES / "x86_64-nopg.o").read_bytes()


def test_a_function_is_not_pointed_at_itself(tmp_path: Path) -> None:
    """The hook built with -pg in the same object: its own site would call it forever."""
    (tmp_path / "both.c").write_text(
        "unsigned long n;\nvoid profile_hook(void) { n++; }\nint main(void) { return 0; }\n"
    )
    obj = tmp_path / "both.o"
    sh("gcc", "-O2", "-pg", "-mfentry", "-c", "both.c", "-o", obj, cwd=tmp_path)
    proc = ftpatch("call", "--target", HOOK, obj, "-o", tmp_path / "out.o")
    assert proc.returncode == 1 and not (tmp_path / "out.o").exists()
    assert f"profile_hook (.text+0x0): is in {HOOK} itself, whose call to {HOOK} would recurse forever" in proc.stderr
    ok("call", "--target", HOOK, "--except", HOOK, obj, "-o", tmp_path / "out.o")
    sh("gcc", "-pg", tmp_path / "out.o", "-o", tmp_path / "prog", cwd=tmp_path)
    exe = tmp_path / "prog-fentry"
    sh("gcc", "-pg", obj, "-o", exe, cwd=tmp_path)
    proc = ftpatch("call", "--target", HOOK, exe, "-o", tmp_path / "out")
    assert proc.returncode == 1 and "would recurse forever" in proc.stderr and not (tmp_path / "out").exists()


def test_bad_targets_are_refused_with_what_would_work(tmp_path: Path) -> None:
    exe = tmp_path / "prog"
    sh("gcc", "-O2", "-pg", PROG, "-o", exe, cwd=tmp_path)
    out = tmp_path / "out"
    proc = ftpatch("call", "--target", "no_such_hook", exe, "-o", out)
    assert proc.returncode == 1 and not out.exists()
    assert proc.stderr.count("\n") == 1
    assert "no_such_hook: not a function this file defines or reaches through a PLT entry or a GOT slot" in proc.stderr
    assert "link a definition of it in" in proc.stderr
    proc = ftpatch("call", "--target", "state", FIXTURES / "x86_64-pie.o", "-o", out)  # a static variable
    assert proc.returncode == 1 and "state: symbol" in proc.stderr and "is not a function" in proc.stderr
    assert not out.exists()
    proc = ftpatch("call", "--target", "", exe, "-o", out)
    assert proc.returncode == 2 and "--target needs a function's name" in proc.stderr


def test_i386_objects_say_which_call_only_when_asked(tmp_path: Path) -> None:
    """An i386 REL nop names no symbol: after a retarget, plain `call` cannot tell the hook from mcount, and
    says so; `call --target` is exact either way."""
    hooked, nopped, out = tmp_path / "h.o", tmp_path / "n.o", tmp_path / "out.o"
    ok("call", "--target", HOOK, FIXTURES / "i386-pic.o", "-o", hooked)
    ok("nop", "--symbol", HOOK, hooked, "-o", nopped)
    proc = ok("scan", "--symbol", HOOK, nopped)
    assert (
        "could have replaced a call to any of mcount, profile_hook: say which with `call --target NAME`" in proc.stderr
    )
    proc = ftpatch("call", "--symbol", HOOK, nopped, "-o", out)
    assert proc.returncode == 3 and "say which with `call --target NAME`" in proc.stderr and not out.exists()
    ok("call", "--target", HOOK, nopped, "-o", out)
    assert out.read_bytes() == hooked.read_bytes()
    ok("call", "--target", "mcount", nopped, "-o", out)
    assert code_and_relocations(out) == code_and_relocations(FIXTURES / "i386-pic.o")


@pytest.mark.parametrize(("cc", "flags"), [("gcc", "-O2 -pg -mfentry"), ("clang", "-O2 -pg")])
def test_zlib(tmp_path: Path, zlib_source: Path, cc: str, flags: str) -> None:
    """zlib's own build with -pg, its `example` test program: the static library's members retargeted, then
    linked, count what the linked program retargeted counts; a shared libz.so retargeted counts them too."""
    hook = hook_object(tmp_path, cc, [])
    tree = tmp_path / "zlib"
    shutil.copytree(zlib_source, tree, symlinks=True)
    env = {**os.environ, "CC": cc, "CFLAGS": flags, "LDFLAGS": f"-pg {hook}"}
    sh("./configure", cwd=tree, env=env)
    sh("make", "example", "examplesh", "libz.a", cwd=tree, env=env)
    printed, none = counted(tree / "example", tree)
    assert none == 0 and "zlib version" in printed
    hooked = tmp_path / "example-hooked"
    ok("call", "--target", HOOK, tree / "example", "-o", hooked)
    assert calls_to(hooked, HOOK) == ground_truth(tree / "example").addresses
    hooked_printed, from_program = counted(hooked, tree)
    assert hooked_printed == printed and from_program > 1000

    ok("call", "--target", HOOK, "--in-place", tree / "libz.a", tree / "example.o")
    relinked = tmp_path / "example-relinked"
    sh(cc, "-pg", tree / "example.o", tree / "libz.a", hook, "-o", relinked, cwd=tree)
    assert counted(relinked, tree) == (printed, from_program)

    # The shared library defines the hook (LDFLAGS linked it in), so it can call it; examplesh calls libz.so.
    library = next(p for p in tree.glob("libz.so.*.*") if not p.is_symlink())
    ok("call", "--target", HOOK, "--in-place", library)
    env = {**os.environ, "LD_LIBRARY_PATH": str(tree)}
    proc = sh(tree / "examplesh", cwd=tree, env=env)
    library_calls = [int(n) for n in _COUNT.findall(proc.stderr)]
    assert proc.stdout == printed and library_calls and 0 < max(library_calls) < from_program


def test_listed_sites_calling_the_hook_are_refused_until_it_is_named(tmp_path: Path) -> None:
    """With __mcount_loc the sites are where the table says: holding a call to an unnamed hook, they are
    neither a call to a target nor a nop, and every command says so, with what to do."""
    hook = hook_object(tmp_path, "gcc", [])
    exe = tmp_path / "prog"
    sh("gcc", "-O2", "-pg", "-mfentry", "-mrecord-mcount", "-no-pie", "-fno-pie", PROG, hook, "-o", exe, cwd=tmp_path)
    hooked = tmp_path / "hooked"
    ok("call", "--target", HOOK, exe, "-o", hooked)
    for command in ("scan", "nop"):
        proc = ftpatch(command, hooked, *(["-o", tmp_path / "out"] if command == "nop" else []))
        assert proc.returncode == 3, proc.stderr
        assert (
            "it calls another function: if `call --target NAME` pointed it there, name it with --symbol NAME"
            in proc.stderr
        )
    assert not (tmp_path / "out").exists()
    ok("nop", "--symbol", HOOK, hooked, "-o", tmp_path / "out")
    assert counted(tmp_path / "out", tmp_path) == (PROGRAM_OUTPUT, 0)
