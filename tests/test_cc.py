"""ftpatch-cc, the compiler launcher: what passes through, what is nop'd, and with Make, CMake and ccache."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, ftpatch, run

DOC = ROOT / "docs" / "pipelines-launcher.md"
SOURCE = "int f(int x) { return x + 1; }\nint g(int x) { return f(x) * 2; }\n"


def launcher_path(tmp: Path) -> dict[str, str]:
    """An environment whose PATH has `ftpatch` and `ftpatch-cc` of this checkout, as scripts (CMake and
    ccache need a program, not a command line)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, module in (("ftpatch", "ftpatch"), ("ftpatch-cc", "ftpatch.cc")):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m {module} "$@"\n')
        script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTPATCH_CC", "CCACHE"))}
    return {**env, "PATH": f"{bin_dir}:{env['PATH']}", "CCACHE_DIR": str(tmp / "ccache")}


def cc(env: dict[str, str], *args: str | Path, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ftpatch-cc", *map(str, args)], cwd=cwd, env={**env, **extra}, capture_output=True, text=True
    )


def states(path: Path) -> list[str]:
    return [s["state"] for s in json.loads(ftpatch("scan", "--json", path).stdout)["files"][0]["sites"]]


def nopped(plain: Path, tmp: Path, *options: str) -> bytes:
    """`ftpatch nop` of `plain`, as bytes."""
    out = tmp / f"{plain.name}.nopped"
    assert ftpatch("nop", *options, plain, "-o", out).returncode == 0
    return out.read_bytes()


def files(directory: Path) -> dict[str, bytes | None]:
    """Each file's bytes; a precompiled header's name only, since gcc writes different bytes each time."""
    return {p.name: None if p.suffix == ".gch" else p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.mark.parametrize(
    "args",
    [
        ["-E", "a.c"],
        ["-E", "a.c", "-o", "a.i"],
        ["-c", "-E", "a.c", "-o", "a.o"],  # -E wins over -c
        ["-M", "a.c"],
        ["-c", "-MM", "a.c", "-o", "a.d"],  # the dependencies go to a.d, no object
        ["-S", "-c", "-pg", "a.c"],
        ["-pg", "a.c", "main.c", "-o", "prog"],  # a link
        ["--version"],
        ["--version", "-c", "-pg", "a.c", "-o", "a.o"],  # compiles nothing
        ["-print-prog-name=as"],
        ["-c", "-pg", "a.c", "-o", "/dev/null"],
        ["-c", "-x", "c-header", "a.c", "-o", "a.gch"],
        ["-c", "-pg", "main.o"],  # only a linker input: -c ignores it
    ],
)
def test_pass_through_is_the_compiler_alone(tmp: Path, args: list[str]) -> None:
    """Same status, output, messages and files as the compiler without the launcher; and FTPATCH_CC_FLAGS, which
    would fail any compile, is never read."""
    env = launcher_path(tmp)
    outcomes = []
    for name, prefix in (("plain", []), ("launched", ["ftpatch-cc"])):
        work = tmp / name
        work.mkdir()
        (work / "a.c").write_text(SOURCE)
        (work / "main.c").write_text("int g(int);\nint main(void) { return g(1) != 4; }\n")
        run("gcc", "-c", "main.c", cwd=work)
        proc = subprocess.run(
            [*prefix, "gcc", *args],
            cwd=work,
            env={**env, "FTPATCH_CC_FLAGS": "--not-an-option"},
            capture_output=True,
            text=True,
        )
        outcomes.append((proc.returncode, proc.stdout, proc.stderr, files(work)))
    assert outcomes[0] == outcomes[1]


def test_pass_through_imports_nothing_of_the_library(tmp: Path) -> None:
    env = launcher_path(tmp)
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ftpatch.cc", "gcc", "--version"],
        cwd=tmp,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("gcc")
    imported = set(re.findall(r"\|\s+(\S+)$", proc.stderr, re.M))
    assert "ftpatch" in imported
    assert {m for m in imported if m.startswith("ftpatch.") or m.split(".")[0] in ("typer", "dataclasses")} == set()


def test_objects_are_ftpatch_nop_of_the_plain_compile(tmp: Path) -> None:
    """-c -o FILE, and -c without -o over several sources (one in a subdirectory): each object is nop'd in
    place, byte for byte what `ftpatch nop` makes of the plain compile's."""
    env = launcher_path(tmp)
    for work in (tmp / "plain", tmp / "launched"):
        (work / "sub").mkdir(parents=True)
        shutil.copy(FIXTURES / "prog.c", work / "prog.c")
        (work / "sub" / "a.c").write_text(SOURCE)
    plain, launched = tmp / "plain", tmp / "launched"
    run("gcc", "-O2", "-pg", "-c", "prog.c", "-o", "one.o", cwd=plain)
    run("gcc", "-O2", "-pg", "-c", "prog.c", "sub/a.c", cwd=plain)
    proc = cc(env, "gcc", "-O2", "-pg", "-c", "prog.c", "-o", "one.o", cwd=launched)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    proc = cc(env, "gcc", "-O2", "-pg", "-c", "prog.c", "sub/a.c", cwd=launched)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    for name in ("one.o", "prog.o", "a.o"):
        assert (launched / name).read_bytes() == nopped(plain / name, tmp), name
    assert states(launched / "prog.o") == ["nop"] * 8


def test_response_file_and_stdin_source(tmp: Path) -> None:
    env = launcher_path(tmp)
    shutil.copy(FIXTURES / "prog.c", tmp / "prog.c")
    (tmp / "inner.rsp").write_text("-O2 -pg\n")
    (tmp / "args.rsp").write_text("@inner.rsp -c prog.c -o 'my prog.o'\n")
    assert cc(env, "gcc", "@args.rsp", cwd=tmp).returncode == 0
    assert states(tmp / "my prog.o") == ["nop"] * 8
    with (tmp / "prog.c").open() as stdin:
        proc = subprocess.run(
            ["ftpatch-cc", "gcc", "-pg", "-x", "c", "-c", "-"], cwd=tmp, env=env, stdin=stdin, capture_output=True
        )
    assert proc.returncode == 0 and states(tmp / "-.o") == ["nop"] * 8


def test_options_come_from_ftpatch_cc_flags(tmp: Path) -> None:
    env = launcher_path(tmp)
    shutil.copy(FIXTURES / "prog.c", tmp / "prog.c")
    run("gcc", "-O2", "-pg", "-c", "prog.c", "-o", "plain.o", cwd=tmp)
    flags = "--no-fsync --only fib --only 'is_*' --nop=o16"
    assert cc(env, "gcc", "-O2", "-pg", "-c", "prog.c", cwd=tmp, FTPATCH_CC_FLAGS=flags).returncode == 0
    expected = nopped(tmp / "plain.o", tmp, "--only", "fib", "--only", "is_*", "--nop", "o16")
    assert (tmp / "prog.o").read_bytes() == expected
    assert states(tmp / "prog.o").count("nop") == 2
    # What nop does not take, or cannot parse, stops the command before the compiler runs: no object.
    (tmp / "prog.o").unlink()
    for bad, message in (
        ("-j 2", "'-j' is not an option ftpatch-cc passes to nop"),
        ("--only", "--only needs a value"),
        ("--nop fast", "--nop 'fast': choose one of p6, o16, jmp, lea"),
        ("--only 'fib", "No closing quotation"),
    ):
        proc = cc(env, "gcc", "-pg", "-c", "prog.c", cwd=tmp, FTPATCH_CC_FLAGS=bad)
        assert proc.returncode == 2, bad
        assert proc.stderr.startswith(f"ftpatch: error: FTPATCH_CC_FLAGS: {message}"), proc.stderr
        assert not (tmp / "prog.o").exists()


def test_failing_compile_is_the_compiler_alone(tmp: Path) -> None:
    """Status and messages unchanged, and no nop tried: FTPATCH_CC_FLAGS asks for a nop that would fail."""
    env = launcher_path(tmp)
    (tmp / "bad.c").write_text("int f(void) { return undeclared; }\n")
    plain = subprocess.run(["gcc", "-pg", "-c", "bad.c", "-o", "bad.o"], cwd=tmp, capture_output=True, text=True)
    launched = cc(env, "gcc", "-pg", "-c", "bad.c", "-o", "bad.o", cwd=tmp, FTPATCH_CC_FLAGS="--nop lea")
    assert plain.returncode == 1 and "undeclared" in plain.stderr
    assert (launched.returncode, launched.stdout, launched.stderr) == (plain.returncode, plain.stdout, plain.stderr)
    assert not (tmp / "bad.o").exists()
    missing = cc(env, "no-such-compiler", "-c", "bad.c", cwd=tmp)
    assert missing.returncode == 127
    assert missing.stderr == "ftpatch: error: no-such-compiler: no such file or directory\n"


def test_failing_nop_removes_the_objects(tmp: Path) -> None:
    env = launcher_path(tmp)
    (tmp / "a.c").write_text(SOURCE)
    shutil.copy(FIXTURES / "prog.c", tmp / "prog.c")
    proc = cc(env, "gcc", "-pg", "-c", "a.c", "prog.c", cwd=tmp, FTPATCH_CC_FLAGS="--nop lea")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"ftpatch: error: {name}: nop style lea is not a nop on x86-64, choose one of p6, o16, jmp"
        for name in ("a.o", "prog.o")
    ]
    assert not (tmp / "a.o").exists() and not (tmp / "prog.o").exists()
    # A slim LTO object holds no machine code: ftpatch refuses it, and the build stops there.
    proc = cc(env, "gcc", "-O2", "-flto", "-pg", "-c", "a.c", "-o", "lto.o", cwd=tmp)
    assert proc.returncode == 1 and proc.stderr.startswith("ftpatch: error: lto.o: a slim LTO object (gcc -flto)")
    assert not (tmp / "lto.o").exists()


def fake_compiler(tmp: Path, body: str) -> Path:
    path = tmp / "fakecc"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_exit_status_and_signals_pass_through(tmp: Path) -> None:
    env = launcher_path(tmp)
    (tmp / "a.c").write_text(SOURCE)
    # A pass-through is the command itself; a compile's status is the compiler's.
    assert cc(env, "sh", "-c", "exit 7", cwd=tmp).returncode == 7
    assert cc(env, fake_compiler(tmp, "exit 5"), "-c", "a.c", cwd=tmp).returncode == 5
    # A compiler killed by a signal: ftpatch-cc dies of it too.
    killed = cc(env, fake_compiler(tmp, "kill -TERM $$"), "-c", "a.c", cwd=tmp)
    assert killed.returncode == -signal.SIGTERM
    # A signal sent to ftpatch-cc reaches the compiler, whose status it then takes.
    fake = fake_compiler(tmp, "trap 'echo got TERM > got; exit 9' TERM\ntouch started\nsleep 30 & wait")
    proc = subprocess.Popen(["ftpatch-cc", str(fake), "-c", "a.c"], cwd=tmp, env=env)
    deadline = time.monotonic() + 30
    while not (tmp / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 9
    assert (tmp / "got").read_text() == "got TERM\n"


def test_make_objects_are_ftpatch_nop_of_the_plain_build(tmp: Path) -> None:
    env = launcher_path(tmp)
    shutil.copytree(ROOT / "examples", tmp / "examples")
    shutil.copytree(FIXTURES, tmp / "fixtures")
    work = tmp / "examples" / "launcher"
    run("make", "-C", work)
    shutil.move(work / "prog.o", tmp / "plain.o")
    run("make", "-C", work, "clean")
    log = subprocess.run(
        ["make", "-C", work, "CC=ftpatch-cc gcc"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "ftpatch-cc gcc -O2 -pg   -c -o prog.o" in log
    assert (work / "prog.o").read_bytes() == nopped(tmp / "plain.o", tmp)
    out = subprocess.run([work / "prog"], cwd=work, capture_output=True, text=True, check=True).stdout
    assert out.startswith("fib      6765\n")


def objects(build: Path) -> dict[str, bytes]:
    return {str(p.relative_to(build)): p.read_bytes() for p in sorted(build.rglob("*.o"))}


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is installed by .ci/run")
@pytest.mark.parametrize(("generator", "program"), [("Unix Makefiles", "make"), ("Ninja", "ninja")])
def test_cmake_launchers_for_c_and_cxx(tmp: Path, generator: str, program: str) -> None:
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed")
    env = launcher_path(tmp)
    source = ROOT / "examples" / "launcher"
    plain, launched = tmp / "plain", tmp / "launched"
    configure = ["cmake", "-G", generator, "-S", source]
    subprocess.run([*configure, "-B", plain], env=env, check=True, capture_output=True)
    subprocess.run(["cmake", "--build", plain], env=env, check=True, capture_output=True)
    launchers = ["-DCMAKE_C_COMPILER_LAUNCHER=ftpatch-cc", "-DCMAKE_CXX_COMPILER_LAUNCHER=ftpatch-cc"]
    subprocess.run([*configure, "-B", launched, *launchers], env=env, check=True, capture_output=True)
    subprocess.run(["cmake", "--build", launched], env=env, check=True, capture_output=True)
    before, after = objects(plain), objects(launched)
    assert sorted(before) == sorted(after) and len(after) == 2
    for name, data in after.items():
        assert data == nopped(plain / name, tmp), name
        assert set(states(launched / name)) == {"nop"}, name
    greet = subprocess.run([launched / "greet", "you"], cwd=tmp, capture_output=True, text=True, check=True).stdout
    assert greet == "hello, you\n"


def ccache_hits(env: dict[str, str]) -> int:
    stats = subprocess.run(["ccache", "--print-stats"], env=env, capture_output=True, text=True, check=True).stdout
    counts = dict(line.split("\t") for line in stats.splitlines())
    return int(counts["direct_cache_hit"]) + int(counts["preprocessed_cache_hit"])


@pytest.mark.skipif(shutil.which("ccache") is None, reason="ccache is installed by .ci/run")
def test_ccache_both_orders(tmp: Path) -> None:
    """`ftpatch-cc ccache gcc` and `ccache ftpatch-cc gcc` each give the nop'd object, on a miss and on a hit."""
    env = launcher_path(tmp)
    shutil.copy(FIXTURES / "prog.c", tmp / "prog.c")
    run("gcc", "-O2", "-pg", "-c", "prog.c", "-o", "plain.o", cwd=tmp)
    expected = nopped(tmp / "plain.o", tmp)
    for order in (["ftpatch-cc", "ccache", "gcc"], ["ccache", "ftpatch-cc", "gcc"]):
        for attempt in range(2):
            hits = ccache_hits(env)
            out = tmp / "prog.o"
            out.unlink(missing_ok=True)
            proc = subprocess.run(
                [*order, "-O2", "-pg", "-c", "prog.c", "-o", out], cwd=tmp, env=env, capture_output=True, text=True
            )
            assert (proc.returncode, proc.stderr) == (0, ""), order
            assert out.read_bytes() == expected, (order, attempt)
            assert ccache_hits(env) == hits + attempt, (order, attempt)  # the second is a hit


def sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S)


def test_doc_examples_run(tmp: Path) -> None:
    env = launcher_path(tmp)
    shutil.copytree(FIXTURES, tmp / "fixtures")
    shutil.copytree(ROOT / "examples", tmp / "examples")
    for block in sh_blocks():
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            proc = subprocess.run(command, shell=True, cwd=tmp, env=env, capture_output=True, text=True)
            assert proc.returncode == 0, (command, proc.stdout, proc.stderr)
            assert "ftpatch: " not in proc.stderr, (command, proc.stderr)
    assert states(tmp / "prog.o") == ["nop"] * 8
    assert states(tmp / "fib-only.o").count("nop") == 1
    assert "fib" in (tmp / "prog.i").read_text()
    assert states(tmp / "examples" / "launcher" / "prog.o") == ["nop"] * 8
    for build in ("build-launcher", "build-ccache"):
        built = objects(tmp / build)
        assert len(built) == 2 and all(set(states(tmp / build / name)) == {"nop"} for name in built), build


def test_doc_outputs_are_ignored_by_git() -> None:
    """A user who runs the doc's examples from the top of a clone sees no untracked outputs in `git status`."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    written = {"examples/launcher/prog", "examples/launcher/prog.o"}
    for block in sh_blocks():
        written |= set(re.findall(r"-o\s+([\w.-]+)", block)) | {f"{d}/" for d in re.findall(r"-B\s+([\w.-]+)", block)}
    assert {"prog.o", "prog.i", "fib-only.o", "build-launcher/", "build-ccache/"} <= written
    proc = subprocess.run(
        ["git", "check-ignore", "--no-index", *sorted(written)], cwd=ROOT, capture_output=True, text=True
    )
    assert set(proc.stdout.split()) == written


def test_zlib_own_build_through_the_launcher(tmp: Path, zlib_source: Path) -> None:
    """zlib's own configure and Makefile, once with CC=gcc and once with CC="ftpatch-cc gcc": every object of
    the launcher's build (libz.a's *.o, and libz.so's -fPIC *.lo) is `ftpatch nop` of the plain build's,
    and zlib's own `make test` passes on the launcher's build: static, shared and 64-bit programs."""
    env = launcher_path(tmp)
    trees = {}
    for name, compiler in (("plain", "gcc"), ("launched", "ftpatch-cc gcc")):
        tree = tmp / name
        shutil.copytree(zlib_source, tree, symlinks=True)
        build = {**env, "CC": compiler, "CFLAGS": "-O2 -pg", "LDFLAGS": "-pg"}
        for argv in (["./configure"], ["make", "-j2"]):
            subprocess.run(argv, cwd=tree, env=build, check=True, capture_output=True)
        trees[name] = tree
    plain, launched = zlib_objects(trees["plain"]), zlib_objects(trees["launched"])
    assert plain.keys() == launched.keys()
    assert sum(name.endswith(".lo") for name in plain) >= 15 and len(plain) >= 30
    assert ftpatch("nop", "--in-place", *(trees["plain"] / name for name in plain)).returncode == 0
    expected = zlib_objects(trees["plain"])
    assert all(expected[name] != plain[name] for name in plain)  # every object had sites to nop
    assert {name for name in plain if launched[name] != expected[name]} == set()
    test = subprocess.run(["make", "test"], cwd=trees["launched"], env=env, capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr
    # Its three pairs of programs: static, shared (libz.so) and with 64-bit offsets.
    assert re.findall(r"\*\*\* zlib (.*)test OK \*\*\*", test.stdout) == ["", "shared ", "64-bit "]


def zlib_objects(tree: Path) -> dict[str, bytes]:
    """zlib's objects: *.o for libz.a and the programs, *.lo (objects its Makefile renames) for libz.so."""
    return {p.name: p.read_bytes() for pattern in ("*.o", "*.lo") for p in sorted(tree.glob(pattern))}
