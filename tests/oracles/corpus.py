"""ftpatch on real code: Debian's zlib, sqlite3 and tinyxml2, built with -pg in many ways, each linked file checked.

The tests import it (`from oracles import corpus`); `bench/corpus.py` runs it from the command line:

    python3 bench/corpus.py                       # fetch + build (both cached) + check the whole matrix; a table
    python3 bench/corpus.py --packages zlib --compilers clang --variants pie,O0 -j 2
    python3 bench/corpus.py list                  # every cell of the matrix, in or out, and why
    python3 bench/corpus.py fetch | build | check # one step (check always reruns; fetch and build are cached)

Sources come from Debian's archive through a private deb-src list (the system's apt configuration is untouched);
everything is kept in ${FTPATCH_CORPUS_CACHE:-/var/tmp/ftpatch-corpus}: sources, one directory per build keyed by
package, variant, compiler and linker, and the check results (`results/last.json`).

For every linked file (program or shared library) of a build, independently of ftpatch (`groundtruth`):
the call sites objdump and readelf resolve to mcount/_mcount/__fentry__; then `ftpatch scan --json` (sites found),
`ftpatch nop` (exit code; live calls left; bytes changed outside the sites), the package's tests or a workload on
the nop'd build (same output as the original), gprof on that run (no call graph), `ftpatch call` on the nop'd file
(exit code; byte-identical to the original), and gprof on a run of that (call graph back).
Dynamically linked builds also run under an LD_PRELOAD mcount that counts its calls: 0 nop'd, some after `call`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from . import groundtruth

CACHE = Path(os.environ.get("FTPATCH_CORPUS_CACHE", "/var/tmp/ftpatch-corpus"))
DEBIAN_SOURCES = "deb-src http://deb.debian.org/debian bookworm main\n"
# Bump when a recipe changes in a way the flags do not show, so cached builds are redone.
RECIPE_VERSION = 1
PACKAGES = ("zlib", "sqlite3", "tinyxml2")
COMPILERS = ("gcc", "clang")
LINKERS = ("bfd", "gold", "lld")
CXX = {"gcc": "g++", "clang": "clang++"}
WORKLOAD_TIMEOUT = 300


# ----------------------------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Variant:
    name: str
    cflags: tuple[str, ...]  # compile (and link) flags
    ldflags: tuple[str, ...] = ()  # link only
    shared: bool = False  # the package as a shared library, its programs linked against it
    stripped_of: str | None = None  # a copy of that variant's build, every linked file stripped
    lto: bool = False  # the link generates the code (GIMPLE or bitcode objects)
    why: str = ""

    @property
    def static(self) -> bool:
        return "-static" in self.ldflags

    @property
    def m32(self) -> bool:
        return "-m32" in self.cflags

    def lto_effective(self, compiler: str, linker: str) -> bool:
        """Whether the linked code was generated at link time (so the objects' code says nothing about it).
        gcc's fat objects linked by lld are linked as plain code, lld having no GCC plugin."""
        return self.lto and not (compiler == "gcc" and linker == "lld")


O2 = ("-O2", "-pg")
VARIANTS = {
    v.name: v
    for v in [
        Variant("pie", O2, why="Debian's default: PIE code and a PIE link"),
        Variant("fentry", (*O2, "-mfentry"), why="the site is the first instruction"),
        Variant("nopie", (*O2, "-fno-pie"), ("-no-pie",), why="e8 calls to mcount@plt"),
        Variant("m32", (*O2, "-m32"), why="i386 PIE: gcc ff 93 through %ebx, clang call .+5; pop %ebx and e8@plt"),
        Variant("shared", O2, shared=True, why="the library -fPIC -shared, programs linked against it"),
        Variant("m32-shared", (*O2, "-m32"), shared=True, why="i386 shared library: GOT-relative sites, PIC PLT"),
        Variant("static", O2, ("-static",), why="67 e8 / e8 straight to mcount, no dynamic symbols"),
        Variant("m32-static", (*O2, "-m32"), ("-static",), why="gold and lld keep ff 93 through a link-time GOT slot"),
        Variant("O0", ("-O0", "-pg"), why="arguments spilled before the site"),
        Variant("O3", ("-O3", "-pg")),
        Variant("Os", ("-Os", "-pg")),
        Variant("lto", (*O2, "-flto"), lto=True, why="only the link makes machine code"),
        Variant("lto-fat", (*O2, "-flto", "-ffat-lto-objects"), lto=True, why="objects hold code the link discards"),
        Variant("stack-clash", (*O2, "-fstack-clash-protection"), why="probe loops before the site"),
        Variant("gc-sections", (*O2, "-ffunction-sections"), ("-Wl,--gc-sections",), why="dropped functions"),
        Variant("cet", (*O2, "-fcf-protection"), why="endbr64 first; IBT PLT (.plt.sec) with bfd and lld"),
        Variant("cet-nopie", (*O2, "-fcf-protection", "-fno-pie"), ("-no-pie",), why="gcc's e8 into .plt.sec"),
        Variant("fentry-record", (*O2, "-mfentry", "-mrecord-mcount"), why="__mcount_loc lists every site"),
        Variant(
            "nop-mcount",
            (*O2, "-mfentry", "-mnop-mcount", "-mrecord-mcount", "-fno-pie"),
            ("-no-pie",),
            why="gcc wrote the nops itself; nothing refers to __fentry__",
        ),
        Variant("pie-stripped", O2, stripped_of="pie", why="strip: no symbols to find nop'd sites by"),
        Variant("nopie-stripped", (*O2, "-fno-pie"), ("-no-pie",), stripped_of="nopie"),
        Variant("m32-stripped", (*O2, "-m32"), stripped_of="m32"),
        Variant("static-stripped", O2, ("-static",), stripped_of="static", why="strip removes mcount's symbol too"),
        Variant("shared-stripped", O2, shared=True, stripped_of="shared"),
    ]
}


def excluded(package: str, variant: Variant, compiler: str, linker: str) -> str | None:
    """Why a cell of the matrix is left out, or None when it is in."""
    base = VARIANTS[variant.stripped_of] if variant.stripped_of else variant
    if base.name in ("fentry-record", "nop-mcount") and compiler == "clang":
        return "clang refuses -mrecord-mcount and -mnop-mcount on x86"
    if base.name in ("fentry-record", "nop-mcount") and package == "tinyxml2":
        return "C++: gcc's __mcount_loc names COMDAT copies the link discards; bfd, gold and lld refuse it"
    if base.name == "lto" and compiler == "gcc" and linker == "lld":
        return "lld cannot load GCC's LTO plugin: the GIMPLE-only objects hold no code (undefined main)"
    if base.name == "lto-fat" and compiler == "clang":
        return "clang 14 ignores -ffat-lto-objects: the same build as lto"
    return None


def link_flags(variant: Variant, compiler: str, linker: str) -> list[str]:
    flags = [f"-fuse-ld={linker}", *variant.ldflags]
    if "-fcf-protection" in variant.cflags:
        # An IBT PLT puts mcount@plt in .plt.sec; gold has none.
        flags += {"bfd": ["-Wl,-z,ibtplt"], "lld": ["-Wl,-z,force-ibt"], "gold": []}[linker]
    if variant.name == "fentry-record" and linker == "lld":
        # __mcount_loc's R_X86_64_64 entries are text relocations in a PIE, which lld refuses unless told.
        flags.append("-Wl,-z,notext")
    return flags


@dataclass(frozen=True)
class Cell:
    package: str
    variant: str
    compiler: str
    linker: str

    @property
    def key(self) -> str:
        return f"{self.package}/{self.variant}-{self.compiler}-{self.linker}"

    @property
    def v(self) -> Variant:
        return VARIANTS[self.variant]

    def base(self) -> Cell:
        return dataclasses.replace(self, variant=self.v.stripped_of) if self.v.stripped_of else self


def cells(
    packages: list[str] | None = None,
    variants: list[str] | None = None,
    compilers: list[str] | None = None,
    linkers: list[str] | None = None,
    *,
    with_excluded: bool = False,
) -> list[tuple[Cell, str | None]]:
    out = []
    for p in packages or PACKAGES:
        for vname in variants or VARIANTS:
            for c in compilers or COMPILERS:
                for ld in linkers or LINKERS:
                    reason = excluded(p, VARIANTS[vname], c, ld)
                    if reason is None or with_excluded:
                        out.append((Cell(p, vname, c, ld), reason))
    return out


# --------------------------------------------------------------------------------------------------- helpers


class BuildError(Exception):
    pass


def sh(cmd: list[str] | str, cwd: Path, log: Path, env: dict[str, str] | None = None) -> None:
    """Run a build command, its output appended to `log`; on failure raise with the first error line."""
    shell = isinstance(cmd, str)
    with log.open("a") as out:
        out.write(f"$ {cmd if shell else shlex.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, shell=shell, env=env)
    if proc.returncode:
        text = log.read_text(errors="replace").splitlines()
        first = next((line for line in text if re.search(r"error|Error|undefined", line)), text[-1] if text else "")
        raise BuildError(f"{cmd if shell else shlex.join(cmd)} failed ({proc.returncode}): {first.strip()}")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock, so that parallel builds (and a test run beside a bench run) fetch and compile once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------- fetch


def apt_options() -> list[str]:
    apt = CACHE / "apt"
    return [
        "-o",
        f"Dir::Etc::SourceList={apt / 'sources.list'}",
        "-o",
        "Dir::Etc::SourceParts=/dev/null",
        "-o",
        f"Dir::State::Lists={apt / 'lists'}",
        "-o",
        f"Dir::Cache={apt / 'cache'}",
        # The downloads land in our cache dir, which the _apt user may not be able to write.
        "-o",
        "APT::Sandbox::User=root",
    ]


def source_dir(package: str) -> Path | None:
    found = sorted(p for p in (CACHE / "src").glob(f"{package}-*") if p.is_dir() and (p / "debian").is_dir())
    return found[-1] if found else None


def fetch(packages: list[str], log: Callable[[str], None] = print) -> dict[str, Path]:
    """`apt-get source` each package into CACHE/src through a private sources list; unpacked once."""
    with locked(CACHE / "locks" / "fetch"):
        apt = CACHE / "apt"
        for d in (apt / "lists" / "partial", apt / "cache" / "archives" / "partial", CACHE / "src"):
            d.mkdir(parents=True, exist_ok=True)
        (apt / "sources.list").write_text(DEBIAN_SOURCES)
        missing = [p for p in packages if source_dir(p) is None]
        if missing:
            lists = list((apt / "lists").glob("*Sources*"))
            if not lists or time.time() - min(p.stat().st_mtime for p in lists) > 7 * 86400:
                log("fetch: apt-get update (private deb-src list)")
                sh(["apt-get", *apt_options(), "update"], CACHE, CACHE / "fetch.log")
            log(f"fetch: apt-get source {' '.join(missing)}")
            sh(["apt-get", *apt_options(), "source", "--download-only", *missing], CACHE / "src", CACHE / "fetch.log")
            for p in missing:
                dsc = sorted((CACHE / "src").glob(f"{p}_*.dsc"))[-1]
                sh(["dpkg-source", "--no-check", "-x", dsc.name], CACHE / "src", CACHE / "fetch.log")
        out = {p: source_dir(p) for p in packages}
        if "sqlite3" in packages:
            amalgamation(out["sqlite3"])  # type: ignore[arg-type]
        return out  # type: ignore[return-value]


def amalgamation(src: Path) -> Path:
    """sqlite3.c and shell.c, generated once from Debian's canonical tree (needs tclsh: package tcl)."""
    out = CACHE / "src" / "sqlite3-amalgamation"
    if (out / "sqlite3.c").exists() and (out / "shell.c").exists():
        return out
    if not shutil.which("tclsh"):
        raise BuildError("sqlite3's amalgamation is generated by tclsh: apt-get install tcl")
    work = CACHE / "src" / "sqlite3-amalgamation.tmp"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, work / "tree", symlinks=True)
    log = work / "build.log"
    sh(["./configure", "--disable-tcl"], work / "tree", log)
    sh(["make", "sqlite3.c", "shell.c"], work / "tree", log)
    gen = work / "gen"
    gen.mkdir()
    for name in ("sqlite3.c", "sqlite3.h", "sqlite3ext.h", "shell.c"):
        shutil.copy(work / "tree" / name, gen / name)
    shutil.rmtree(work / "tree")
    shutil.rmtree(out, ignore_errors=True)
    gen.rename(out)
    shutil.rmtree(work)
    return out


# ----------------------------------------------------------------------------------------------------- build


@dataclass
class Build:
    """A build in the cache: its linked files (role -> path) and, for stripped ones, the unstripped originals."""

    cell: Cell
    dir: Path
    files: dict[str, Path]  # role (program name or library soname) -> linked file
    libraries: list[str]  # roles that are shared libraries
    objects: list[Path]  # the objects the linked files came from (compile-time site count)
    reference: dict[str, Path]  # role -> unstripped file (stripped builds only)
    seconds: float
    bits: int

    def to_json(self) -> dict:
        return {
            "files": {k: str(p) for k, p in self.files.items()},
            "libraries": self.libraries,
            "objects": [str(p) for p in self.objects],
            "reference": {k: str(p) for k, p in self.reference.items()},
            "seconds": self.seconds,
            "bits": self.bits,
        }

    @classmethod
    def from_json(cls, cell: Cell, d: Path, j: dict) -> Build:
        return cls(
            cell,
            d,
            {k: Path(p) for k, p in j["files"].items()},
            j["libraries"],
            [Path(p) for p in j["objects"]],
            {k: Path(p) for k, p in j["reference"].items()},
            j["seconds"],
            j["bits"],
        )


def build_dir(cell: Cell) -> Path:
    return CACHE / "builds" / cell.key


def recipe(cell: Cell) -> str:
    v = cell.v
    return digest(RECIPE_VERSION, cell, v.cflags, link_flags(v, cell.compiler, cell.linker), v.shared, v.stripped_of)


def build(cell: Cell, log: Callable[[str], None] = print) -> Build:
    """The cell's build, from the cache when its recipe is unchanged; otherwise built in a scratch dir and renamed."""
    final = build_dir(cell)
    stamp = final / "build.json"
    want = recipe(cell)
    if stamp.exists():
        j = json.loads(stamp.read_text())
        if j.get("recipe") == want:
            return Build.from_json(cell, final, j)
    if cell.v.stripped_of:
        base = build(cell.base(), log)
    with locked(CACHE / "locks" / (cell.key.replace("/", "_") + ".build")):
        if stamp.exists() and json.loads(stamp.read_text()).get("recipe") == want:
            return Build.from_json(cell, final, json.loads(stamp.read_text()))
        log(f"build: {cell.key}")
        work = final.with_name(final.name + ".tmp")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        start = time.monotonic()
        if cell.v.stripped_of:
            files, libraries, objects, reference = strip_copy(base, work)
        else:
            src = fetch([cell.package], log=lambda _: None)[cell.package]
            files, libraries, objects = RECIPES[cell.package](cell, src, work)
            reference = {}
        # Paths are recorded as they will be after the rename below.
        moved = {k: final / p.relative_to(work) for k, p in files.items()}
        objs = [final / p.relative_to(work) if p.is_relative_to(work) else p for p in objects]
        bits = 32 if cell.v.m32 else 64
        b = Build(cell, final, moved, libraries, objs, reference, round(time.monotonic() - start, 1), bits)
        (work / "build.json").write_text(json.dumps({"recipe": want, **b.to_json()}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
        return b


def strip_copy(base: Build, work: Path) -> tuple[dict[str, Path], list[str], list[Path], dict[str, Path]]:
    files = {}
    for role, path in base.files.items():
        out = work / "stripped" / path.name
        out.parent.mkdir(exist_ok=True)
        shutil.copy2(path, out)
        sh(["strip", str(out)], work, work / "build.log")
        files[role] = out
    return files, base.libraries, base.objects, dict(base.files)


def flags_of(cell: Cell) -> tuple[list[str], list[str]]:
    """(compile flags, link flags) for the cell."""
    v = cell.v
    return list(v.cflags), [*v.cflags, *link_flags(v, cell.compiler, cell.linker)]


def compiled(cell: Cell, key: str, make: Callable[[Path], None]) -> Path:
    """Objects that do not depend on the linker, made once per (package, compiler, flags) and shared by the links."""
    cflags, _ = flags_of(cell)
    d = CACHE / "objects" / cell.package / f"{cell.variant}-{cell.compiler}-{digest(RECIPE_VERSION, cflags, key)}"
    with locked(d.with_name(d.name + ".lock")):
        if not (d / ".done").exists():
            tmp = d.with_name(d.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            make(tmp)
            (tmp / ".done").touch()
            shutil.rmtree(d, ignore_errors=True)
            tmp.rename(d)
    return d


def build_zlib(cell: Cell, src: Path, work: Path) -> tuple[dict[str, Path], list[str], list[Path]]:
    """zlib's own ./configure and make. Its Makefile links the programs with $(CC) $(CFLAGS), so the link flags
    go into CFLAGS as well (the compiler ignores them when it only compiles)."""
    _, lflags = flags_of(cell)
    tree = work / "tree"
    shutil.copytree(src, tree, symlinks=True)
    log = work / "build.log"
    env = {**os.environ, "CC": cell.compiler, "CFLAGS": shlex.join(lflags), "LDFLAGS": shlex.join(lflags)}
    if cell.v.shared:
        sh(["./configure", "--shared"], tree, log, env)
        sh(["make", "libz.a", "examplesh", "minigzipsh"], tree, log, env)
        lib = sorted(tree.glob("libz.so.1.*"))[0]
        files = {"examplesh": tree / "examplesh", "minigzipsh": tree / "minigzipsh", "libz.so.1": lib}
        objects = [*sorted(tree.glob("*.lo")), tree / "example.o", tree / "minigzip.o"]
        return files, ["libz.so.1"], objects
    sh(["./configure", "--static"], tree, log, env)
    sh(["make", "example", "minigzip"], tree, log, env)
    objects = [p for p in sorted(tree.glob("*.o"))]
    return {"example": tree / "example", "minigzip": tree / "minigzip"}, [], objects


def build_tinyxml2(cell: Cell, src: Path, work: Path) -> tuple[dict[str, Path], list[str], list[Path]]:
    """The library and its xmltest program, as tinyxml2's Makefile builds them (tinyxml2.o into libtinyxml2.a,
    xmltest.cpp linked with it); the shared library as Debian builds it (soname libtinyxml2.so.9)."""
    cflags, lflags = flags_of(cell)
    cxx = CXX[cell.compiler]
    pic = ["-fPIC"] if cell.v.shared else []

    def make(d: Path) -> None:
        log = d / "build.log"
        sh([cxx, *cflags, *pic, "-c", str(src / "tinyxml2.cpp"), "-o", "tinyxml2.o"], d, log)
        sh([cxx, *cflags, "-c", str(src / "xmltest.cpp"), "-o", "xmltest.o"], d, log)

    objs = compiled(cell, "tinyxml2", make)
    log = work / "build.log"
    if cell.v.shared:
        sh(
            [
                cxx,
                *lflags,
                "-shared",
                "-Wl,-soname,libtinyxml2.so.9",
                str(objs / "tinyxml2.o"),
                "-o",
                "libtinyxml2.so.9",
            ],
            work,
            log,
        )
        sh([cxx, *lflags, str(objs / "xmltest.o"), str(work / "libtinyxml2.so.9"), "-o", "xmltest"], work, log)
        files = {"xmltest": work / "xmltest", "libtinyxml2.so.9": work / "libtinyxml2.so.9"}
        return files, ["libtinyxml2.so.9"], [objs / "tinyxml2.o", objs / "xmltest.o"]
    sh(["ar", "cr", "libtinyxml2.a", str(objs / "tinyxml2.o")], work, log)
    sh([cxx, *lflags, str(objs / "xmltest.o"), "libtinyxml2.a", "-o", "xmltest"], work, log)
    return {"xmltest": work / "xmltest"}, [], [objs / "tinyxml2.o", objs / "xmltest.o"]


# Threads and extension loading would pull libpthread and libdl into -static links; the CLI needs neither.
SQLITE_DEFINES = ["-DSQLITE_THREADSAFE=0", "-DSQLITE_OMIT_LOAD_EXTENSION", "-DHAVE_READLINE=0"]


def build_sqlite3(cell: Cell, src: Path, work: Path) -> tuple[dict[str, Path], list[str], list[Path]]:
    """The sqlite3 command-line program from the amalgamation generated out of Debian's tree; the shared library
    as libsqlite3.so.0. sqlite3.c takes about 25 s to compile, so its objects are shared by the three linkers."""
    amal = amalgamation(src)
    cflags, lflags = flags_of(cell)
    cc = cell.compiler
    pic = ["-fPIC"] if cell.v.shared else []

    def make(d: Path) -> None:
        log = d / "build.log"
        sh([cc, *cflags, *pic, *SQLITE_DEFINES, "-c", str(amal / "sqlite3.c"), "-o", "sqlite3.o"], d, log)
        sh([cc, *cflags, *SQLITE_DEFINES, f"-I{amal}", "-c", str(amal / "shell.c"), "-o", "shell.o"], d, log)

    objs = compiled(cell, "sqlite3", make)
    log = work / "build.log"
    if cell.v.shared:
        sh(
            [
                cc,
                *lflags,
                "-shared",
                "-Wl,-soname,libsqlite3.so.0",
                str(objs / "sqlite3.o"),
                "-lm",
                "-o",
                "libsqlite3.so.0",
            ],
            work,
            log,
        )
        sh([cc, *lflags, str(objs / "shell.o"), str(work / "libsqlite3.so.0"), "-lm", "-o", "sqlite3"], work, log)
        files = {"sqlite3": work / "sqlite3", "libsqlite3.so.0": work / "libsqlite3.so.0"}
        return files, ["libsqlite3.so.0"], [objs / "sqlite3.o", objs / "shell.o"]
    sh([cc, *lflags, str(objs / "shell.o"), str(objs / "sqlite3.o"), "-lm", "-o", "sqlite3"], work, log)
    return {"sqlite3": work / "sqlite3"}, [], [objs / "sqlite3.o", objs / "shell.o"]


RECIPES = {"zlib": build_zlib, "tinyxml2": build_tinyxml2, "sqlite3": build_sqlite3}


# -------------------------------------------------------------------------------------------------- workloads


@dataclass
class Step:
    program: str  # role
    args: list[str]
    stdin: bytes | str | None = None  # bytes, or the name of an earlier step whose stdout is fed in
    setup: Callable[[Path], None] | None = None  # prepares the step's working directory


@functools.cache
def zlib_data() -> bytes:
    """A deterministic input of about 1 MB: zlib's own sources, then bytes of a simple generator."""
    src = source_dir("zlib")
    assert src is not None
    text = b"".join(p.read_bytes() for p in sorted(src.glob("*.[ch]")))
    x, noise = 12345, bytearray()
    for _ in range(200_000):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        noise.append((x >> 16) & 0x3F)
    return (text * 2)[:800_000] + bytes(noise)


def workload_zlib(build: Build) -> list[Step]:
    """zlib's `make test` (teststatic or testshared: a gzip round trip of "hello world", then `example`), then
    minigzip over 1 MB at levels 1, 6 and 9 and back."""
    sfx = "sh" if build.cell.v.shared else ""
    mg, ex = f"minigzip{sfx}", f"example{sfx}"
    steps = [
        Step(mg, [], b"hello world\n"),
        Step(mg, ["-d"], "0"),
        Step(ex, ["tmpst"]),
    ]
    data = zlib_data()
    for level in ("-1", "-6", "-9"):
        steps.append(Step(mg, [level], data))
        steps.append(Step(mg, ["-d"], str(len(steps) - 1)))
    return steps


SQL = """
CREATE TABLE dept(id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE emp(id INTEGER PRIMARY KEY, name TEXT, dept INTEGER REFERENCES dept(id), salary REAL, hired TEXT);
CREATE INDEX emp_dept ON emp(dept);
INSERT INTO dept(name) VALUES ('eng'), ('ops'), ('sales'), ('legal');
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
INSERT INTO emp(name, dept, salary, hired)
  SELECT printf('emp%05d', i), 1 + (i * 7919) % 4, 1000 + (i * 104729) % 9000 / 3.0,
         date('2020-01-01', printf('+%d days', (i * 31) % 1500)) FROM n;
SELECT d.name, count(*), printf('%.2f', avg(e.salary)), min(e.hired), max(e.hired)
  FROM emp e JOIN dept d ON d.id = e.dept GROUP BY d.name ORDER BY d.name;
SELECT name, salary, rank() OVER (PARTITION BY dept ORDER BY salary DESC) AS r FROM emp
  WHERE id % 500 = 0 ORDER BY dept, r;
WITH RECURSIVE fib(a, b, k) AS (SELECT 0, 1, 0 UNION ALL SELECT b, a + b, k + 1 FROM fib WHERE k < 80)
SELECT group_concat(a, ',') FROM fib;
SELECT printf('%-10s|%8.3f|%x|%q', name, salary, id, name || '''') FROM emp WHERE id IN (1, 2, 4999);
SELECT upper(substr(name, 1, 3)) AS p, count(*) FROM emp GROUP BY p HAVING count(*) > 100 ORDER BY p;
SELECT json_group_array(json_object('id', id, 'd', dept)) FROM emp WHERE id < 6;
UPDATE emp SET salary = salary * 1.1 WHERE dept = 2;
DELETE FROM emp WHERE id % 3 = 0;
SELECT count(*), printf('%.3f', sum(salary)) FROM emp;
CREATE TABLE kv(k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID;
INSERT INTO kv SELECT hex(id * 2654435761), zeroblob(id % 64) FROM emp WHERE id < 2000;
SELECT count(*), sum(length(v)) FROM kv;
SELECT e1.name, e2.name FROM emp e1 JOIN emp e2 ON e1.salary = e2.salary AND e1.id < e2.id ORDER BY 1, 2 LIMIT 5;
PRAGMA integrity_check;
"""


def workload_sqlite3(build: Build) -> list[Step]:
    """A deterministic SQL script against a database file (tables, inserts from a recursive CTE, joins, printf(),
    aggregates, window functions, JSON, updates), then a second process reading the file back."""
    return [
        Step("sqlite3", ["-bail", "test.db"], SQL),
        # Each step runs in its own directory (for its gmon.out): this one reads the first one's database.
        Step("sqlite3", ["../step0/test.db", "SELECT count(*), sum(salary) FROM emp; PRAGMA integrity_check;"]),
    ]


def workload_tinyxml2(build: Build) -> list[Step]:
    """xmltest, tinyxml2's own test suite, run where it finds resources/ (its timing line is masked)."""
    src = source_dir("tinyxml2")
    assert src is not None

    def setup(d: Path) -> None:
        shutil.copytree(src / "resources", d / "resources")
        (d / "resources" / "out").mkdir(exist_ok=True)

    return [Step("xmltest", [], setup=setup)]


WORKLOADS = {"zlib": workload_zlib, "sqlite3": workload_sqlite3, "tinyxml2": workload_tinyxml2}
MASKS = [(re.compile(rb"\d+(\.\d+)? milli-seconds"), b"N milli-seconds")]
# glibc's profiler says this at exit when its arc table is full; with a -pg shared library it is, in the original
# run (the library's arcs), and not once nop'd. It is the profiler's state, not the program's output.
GMON_FULL = b"mcount: call graph buffer size limit exceeded, gmon.out will not be generated\n"


@dataclass
class RunResult:
    outputs: list[str]  # one line per step: exit code, digest of stdout, stderr, files written
    gmon: list[Path | None]  # gmon.out of each step
    gmon_full: list[bool]  # glibc's arc table overflowed in that step, so it wrote no gmon.out
    probe_hits: int | None  # mcount calls the LD_PRELOAD counter saw, over all steps


def run_workload(build: Build, files: dict[str, Path], root: Path, probe: Path | None = None) -> RunResult:
    """Run the package's steps with `files` (role -> linked file) installed in root/bin, each step in its own dir."""
    bindir = root / "bin"
    bindir.mkdir(parents=True)
    for role, path in files.items():
        shutil.copy2(path, bindir / role)
        os.chmod(bindir / role, 0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LD_", "GMON_"))}
    env["LD_LIBRARY_PATH"] = str(bindir)
    env["LC_ALL"] = "C"
    log = root / "probe.log"
    if probe:
        env["LD_PRELOAD"] = str(probe)
        env["FTPATCH_PROBE_LOG"] = str(log)
    steps = WORKLOADS[build.cell.package](build)
    stdouts: list[bytes] = []
    outputs, gmons, full = [], [], []
    for i, step in enumerate(steps):
        cwd = root / f"step{i}"
        cwd.mkdir()
        if step.setup:
            step.setup(cwd)
        before = {p for p in cwd.rglob("*")}
        stdin = stdouts[int(step.stdin)] if isinstance(step.stdin, str) and step.stdin.isdigit() else step.stdin
        if isinstance(stdin, str):
            stdin = stdin.encode()
        try:
            proc = subprocess.run(
                [str(bindir / step.program), *step.args],
                input=stdin or b"",
                capture_output=True,
                cwd=cwd,
                env=env,
                timeout=WORKLOAD_TIMEOUT,
            )
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired:
            code, out, err = "timeout", b"", b""
        for rx, repl in MASKS:
            out = rx.sub(repl, out)
        full.append(GMON_FULL in err)
        err = err.replace(GMON_FULL, b"")
        stdouts.append(out)
        written = sorted(
            f"{p.relative_to(cwd)}:{hashlib.sha256(p.read_bytes()).hexdigest()[:12]}"
            for p in cwd.rglob("*")
            if p.is_file() and p not in before and p.name != "gmon.out"
        )
        outputs.append(
            f"{step.program} {' '.join(step.args)}: exit {code}, stdout {hashlib.sha256(out).hexdigest()[:16]} "
            f"({len(out)} bytes), stderr {err.decode(errors='replace').strip()[:200]!r}, wrote {written}"
        )
        gmons.append(cwd / "gmon.out" if (cwd / "gmon.out").exists() else None)
    hits = None
    if probe:
        hits = sum(int(x) for x in log.read_text().split()) if log.exists() else 0
    return RunResult(outputs, gmons, full, hits)


def gprof_graph(exe: Path, gmon: Path) -> tuple[bool, str]:
    """(whether gprof shows a call graph, gprof's first line of complaint or its arc count)."""
    proc = subprocess.run(["gprof", "-q", "-b", str(exe), str(gmon)], capture_output=True, text=True)
    arcs = sum(1 for line in proc.stdout.splitlines() if re.match(r"\[\d+\]", line))
    if proc.returncode or arcs == 0:
        first = (proc.stderr.strip().splitlines() or ["no arcs"])[0]
        return False, first
    return True, f"{arcs} entries"


PROBE_C = r"""
/* An mcount, _mcount and __fentry__ that count their calls: preloaded, they take the place of glibc's for every
   GLOB_DAT or JUMP_SLOT that names them. They change no register but the flags (mcount runs inside a prologue). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
__attribute__((visibility("hidden"))) unsigned long probe_hits;
#ifdef __x86_64__
__asm__(".text\n.globl mcount\n.globl _mcount\n.globl __fentry__\n.type mcount,@function\n"
        ".type _mcount,@function\n.type __fentry__,@function\n"
        "mcount:\n_mcount:\n__fentry__:\n\tlock incq probe_hits(%rip)\n\tret\n");
#else
__asm__(".text\n.globl mcount\n.globl _mcount\n.globl __fentry__\n.type mcount,@function\n"
        ".type _mcount,@function\n.type __fentry__,@function\n"
        "mcount:\n_mcount:\n__fentry__:\n\tpushl %eax\n\tcall 1f\n1:\tpopl %eax\n"
        "\taddl $_GLOBAL_OFFSET_TABLE_+(.-1b), %eax\n\tlock incl probe_hits@GOTOFF(%eax)\n\tpopl %eax\n\tret\n");
#endif
__attribute__((destructor)) static void probe_report(void) {
    const char *path = getenv("FTPATCH_PROBE_LOG");
    char line[32];
    int fd;
    if (!path || (fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644)) < 0) return;
    snprintf(line, sizeof line, "%lu\n", probe_hits);
    if (write(fd, line, strlen(line)) < 0) {}
    close(fd);
}
"""


def probe_library(bits: int) -> Path:
    out = CACHE / "probe" / f"probe{bits}-{digest(PROBE_C)}.so"
    with locked(CACHE / "locks" / "probe"):
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            src = out.with_suffix(".c")
            src.write_text(PROBE_C)
            tmp = out.with_suffix(".tmp")
            sh(
                ["gcc", f"-m{bits}", "-O2", "-fPIC", "-shared", str(src), "-o", str(tmp)],
                out.parent,
                out.parent / "probe.log",
            )
            tmp.rename(out)
    return out


# ------------------------------------------------------------------------------------------------------ check


REPO = Path(__file__).resolve().parents[2]


def ftpatch_cmd() -> list[str]:
    """ftpatch as a user runs it: this Python's -m ftpatch, unless FTPATCH_CMD says otherwise."""
    return shlex.split(os.environ.get("FTPATCH_CMD", "")) or [sys.executable, "-m", "ftpatch"]


def ftpatch(*args: str | Path) -> subprocess.CompletedProcess[str]:
    # Run from this checkout: `-m ftpatch` imports the package of the current directory first, so run from
    # anywhere else it could test another checkout's ftpatch. Every path passed is absolute.
    return subprocess.run([*ftpatch_cmd(), *map(str, args)], capture_output=True, text=True, cwd=REPO)


def ftpatch_version() -> str:
    """Which ftpatch the checks ran: FTPATCH_CMD, or the package `-m ftpatch` imports here, and this checkout's commit."""
    if cmd := os.environ.get("FTPATCH_CMD"):
        return cmd
    code = "import ftpatch; print(ftpatch.__file__)"
    where = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO).stdout.strip()
    rev = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=REPO)
    return f"{where} (checkout {rev.stdout.strip() or 'unknown'})"


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


@dataclass
class FileResult:
    role: str
    path: str
    library: bool
    stripped: bool
    gt_calls: int = 0  # live calls to a target (ground truth)
    gt_recorded: int | None = None  # __mcount_loc entries
    gt_sites: list[int] = field(default_factory=list)  # what ftpatch should find: the calls, or __mcount_loc
    gt_warnings: list[str] = field(default_factory=list)
    compile_time: int | None = None  # relocations against a target in the objects
    crosscheck: list[str] = field(default_factory=list)
    scan_rc: int | None = None
    scan_error: str = ""
    found: int = 0
    found_states: dict[str, int] = field(default_factory=dict)
    missed: list[str] = field(default_factory=list)  # the first few, "0xADDR function (bytes)"
    missed_count: int = 0
    missed_context: str = ""  # the instructions from the first missed site's function start to the site
    extra: list[str] = field(default_factory=list)
    extra_count: int = 0
    nop_rc: int | None = None
    nop_error: str = ""
    live_after_nop: list[str] = field(default_factory=list)
    live_count: int = 0
    changed_outside: list[str] = field(default_factory=list)
    call_rc: int | None = None
    call_error: str = ""
    identical: bool | None = None
    resolvable: bool = True  # the file has a definition, PLT stub or GOT slot of a target
    first_difference: str = ""


@dataclass
class CheckResult:
    cell: Cell
    files: list[FileResult] = field(default_factory=list)
    build_error: str = ""
    harness_error: str = ""  # the check itself crashed: a bug in this harness, not a finding about ftpatch
    build_seconds: float = 0.0
    check_seconds: float = 0.0
    outputs_original: list[str] = field(default_factory=list)
    outputs_nopped: list[str] = field(default_factory=list)
    same_output: bool | None = None
    gprof_original: list[str] = field(default_factory=list)
    gprof_nopped: list[str] = field(default_factory=list)  # per step: "graph: ..." or "none: ..."
    gprof_back: list[str] = field(default_factory=list)
    probe_nopped: int | None = None
    probe_back: int | None = None
    problems: list[str] = field(default_factory=list)  # every failed check, one precise line each
    refusals: list[str] = field(default_factory=list)  # allowed exit-1 refusals (stripped files)
    notes: list[str] = field(default_factory=list)  # what the ground truth saw that is worth knowing

    @property
    def status(self) -> str:
        if self.build_error or self.harness_error:
            return "ERROR"
        if self.problems:
            return "FAIL"
        return "REFUSED" if self.refusals else "PASS"


def describe(
    addresses: list[int], gt: groundtruth.GroundTruth, data: bytes, info: groundtruth.ElfInfo, n: int
) -> list[str]:
    by_addr = {s.address: s for s in gt.sites}
    functions = info.functions()
    out = []
    for a in sorted(addresses)[:n]:
        s = by_addr.get(a)
        raw = s.insn if s else (info.read_at(data, a, 6) or b"").hex()
        fn = (s.function if s else None) or groundtruth.function_at(functions, a) or "?"
        out.append(f"{a:#x} {fn} ({' '.join(raw[i : i + 2] for i in range(0, len(raw), 2))})")
    return out


def scan_sites(path: Path, info: groundtruth.ElfInfo) -> tuple[int, str, dict[int, str]]:
    """ftpatch scan --json: (exit code, first error line, address -> state)."""
    proc = ftpatch("scan", "--json", path)
    if proc.returncode:
        return proc.returncode, first_line(proc.stderr), {}
    sites = json.loads(proc.stdout)["files"][0]["sites"]
    out = {}
    for s in sites:
        sec = info.section(s["section"])
        addr = (sec.address if sec else 0) + s["offset"]
        out[addr] = s["state"]
    return 0, "", out


def check_file(
    role: str, path: Path, build: Build, work: Path, expected: tuple[Counter[str], int] | None
) -> tuple[FileResult, Path, Path]:
    """The file-level checks; returns the result and the nop'd and restored files (which may not exist)."""
    ref = build.reference.get(role)
    r = FileResult(role, str(path), role in build.libraries, ref is not None)
    info = groundtruth.ElfInfo.read(ref or path)
    data = path.read_bytes()
    gt = groundtruth.ground_truth(path, ref)
    r.gt_calls, r.gt_warnings, r.resolvable = len(gt.sites), gt.warnings, gt.resolvable()
    r.gt_recorded = None if gt.recorded is None else len(gt.recorded)
    truth = set(gt.addresses) | set(gt.recorded or [])
    r.gt_sites = sorted(truth)
    if gt.recorded is not None and gt.sites and set(gt.recorded) != gt.addresses:
        r.gt_warnings.append(
            f"__mcount_loc ({len(gt.recorded)}) and the calls ({len(gt.sites)}) differ: "
            f"{sorted(hex(a) for a in set(gt.recorded) ^ gt.addresses)[:5]}"
        )
    if expected is not None:
        names, total = expected
        r.compile_time = total
        r.crosscheck = groundtruth.crosscheck(gt, ref or path, names)
    # What ftpatch finds.
    r.scan_rc, r.scan_error, found = scan_sites(path, info)
    r.found = len(found)
    for state in found.values():
        r.found_states[state] = r.found_states.get(state, 0) + 1
    r.missed = describe(sorted(truth - set(found)), gt, data, info, 8)
    if truth - set(found):
        r.missed_context = prologue(path, min(truth - set(found)), info)
    r.missed_count = len(truth - set(found))
    r.extra = describe(sorted(set(found) - truth), gt, data, info, 8)
    r.extra_count = len(set(found) - truth)
    # nop
    nopped, back = work / f"{role}.nop", work / f"{role}.back"
    proc = ftpatch("nop", path, "-o", nopped)
    r.nop_rc, r.nop_error = proc.returncode, first_line(proc.stderr)
    if proc.returncode == 0 and nopped.exists():
        after = groundtruth.ground_truth(nopped, ref or path)
        r.live_after_nop = describe(sorted(after.addresses), gt, data, info, 8)
        r.live_count = len(after.addresses)
        ranges = [(s.address, s.address + s.length) for s in gt.sites]
        ranges += [(a, a + 6) for a in gt.recorded or []]
        changed = changed_addresses(data, nopped.read_bytes(), info)
        outside = [a for a in changed if not any(lo <= a < hi for lo, hi in ranges)]
        r.changed_outside = [f"{a:#x}" for a in outside[:8]]
        # call
        proc = ftpatch("call", nopped, "-o", back)
        r.call_rc, r.call_error = proc.returncode, first_line(proc.stderr)
        if proc.returncode == 0 and back.exists():
            b = back.read_bytes()
            r.identical = b == data
            if not r.identical:
                diff = changed_addresses(data, b, info)
                r.first_difference = ", ".join(describe(diff[:4], gt, data, info, 4)) or "size or headers differ"
    return r, nopped, back


def prologue(path: Path, site: int, info: groundtruth.ElfInfo) -> str:
    """What precedes a site in its function (at most 12 instructions), as objdump prints it: what a scanner must
    step over to find it."""
    f = groundtruth.symbol_at(info.functions(), site)
    if f is None:
        return ""
    if f.value == site:
        return "nothing: it is the function's first instruction"
    text = groundtruth.run(
        "objdump", "-d", "-w", "--no-show-raw-insn", f"--start-address={f.value:#x}", f"--stop-address={site:#x}", path
    )
    insns = [
        line.split("\t", 1)[1].split("#")[0].strip() for line in text.splitlines() if re.match(r"\s+[0-9a-f]+:\t", line)
    ]
    insns = [re.sub(r"\s+", " ", i) for i in insns]
    return "; ".join(insns[-12:]) if len(insns) <= 12 else "...; " + "; ".join(insns[-12:])


def changed_addresses(old: bytes, new: bytes, info: groundtruth.ElfInfo) -> list[int]:
    """Virtual addresses (file offsets where no section maps them, negated) of the bytes that differ."""
    if len(old) != len(new):
        return [-1]
    out = []
    i = 0
    step = 4096
    while i < len(old):
        if old[i : i + step] != new[i : i + step]:
            for j in range(i, min(i + step, len(old))):
                if old[j] != new[j]:
                    out.append(offset_to_address(j, info))
        i += step
    return out


def offset_to_address(off: int, info: groundtruth.ElfInfo) -> int:
    for s in info.sections:
        if s.type != "NOBITS" and s.address and s.offset <= off < s.offset + s.size:
            return s.address + off - s.offset
    return -off


def check(cell: Cell, keep: bool = False) -> CheckResult:
    """Every check on one build (built or taken from the cache first)."""
    result = CheckResult(cell)
    try:
        b = build(cell, log=lambda _: None)
    except (BuildError, OSError, subprocess.CalledProcessError) as e:
        result.build_error = str(e)
        return result
    result.build_seconds = b.seconds
    start = time.monotonic()
    (CACHE / "tmp").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=cell.key.replace("/", "_") + ".", dir=CACHE / "tmp"))
    try:
        _check(cell, b, work, result)
    except Exception as e:  # noqa: BLE001  (a harness bug in one build must not lose the other builds' results)
        result.harness_error = f"{type(e).__name__}: {e}"
    finally:
        result.check_seconds = round(time.monotonic() - start, 1)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return result


def _check(cell: Cell, b: Build, work: Path, result: CheckResult) -> None:
    expected = None
    # The objects tell which functions hold a site, unless the link made the code (LTO) or gcc nop'd the sites.
    if not cell.v.lto_effective(cell.compiler, cell.linker) and cell.base().variant != "nop-mcount":
        expected = groundtruth.object_functions_with_sites(b.objects)
    nopped, back = {}, {}
    for role, path in b.files.items():
        r, n, bk = check_file(role, path, b, work, expected)
        result.files.append(r)
        result.notes += [f"{role}: {w}" for w in r.gt_warnings]
        nopped[role] = n if r.nop_rc == 0 and n.exists() else path
        back[role] = bk if r.call_rc == 0 and bk.exists() else nopped[role]
        judge_file(cell, r, result)
    # The package's tests or workload: original, nop'd, restored.
    orig = run_workload(b, b.files, work / "run-orig")
    nop = run_workload(b, nopped, work / "run-nop")
    result.outputs_original, result.outputs_nopped = orig.outputs, nop.outputs
    result.same_output = orig.outputs == nop.outputs
    if not result.same_output:
        diff = next(f"{a} / nop'd: {c}" for a, c in zip(orig.outputs, nop.outputs, strict=True) if a != c)
        result.problems.append(f"workload: output differs after nop: original: {diff}")
    failed_steps = [o for o in orig.outputs if " exit 0," not in o]
    if failed_steps:
        result.problems.append(f"workload: the original build fails its own test: {failed_steps[0]}")
    steps = WORKLOADS[cell.package](b)
    restored = all(r.call_rc == 0 for r in result.files)
    bk = run_workload(b, back, work / "run-back") if restored else None
    for i, step in enumerate(steps):
        exe = b.reference.get(step.program, b.files[step.program])  # gprof reads the symbols of the unstripped file
        for run_result, out in ((orig, result.gprof_original), (nop, result.gprof_nopped), (bk, result.gprof_back)):
            if run_result is None:
                continue
            gmon = run_result.gmon[i]
            if gmon is None:
                out.append("no gmon.out" + (" (glibc's arc table overflowed)" if run_result.gmon_full[i] else ""))
                continue
            graph, text = gprof_graph(exe, gmon)
            out.append(f"{'graph' if graph else 'none'}: {text}")
    nothing_nopped = all(f.nop_rc == 1 and f.stripped for f in result.files)
    if nothing_nopped:
        result.notes.append("nothing was nop'd (every file refused): the nop'd runs are the original's")
    elif any(g.startswith("graph") for g in result.gprof_nopped):
        i = next(i for i, g in enumerate(result.gprof_nopped) if g.startswith("graph"))
        result.problems.append(
            f"gprof: the nop'd run of `{steps[i].program}` still has a call graph ({result.gprof_nopped[i]})"
        )
    # gprof works again where it worked on the original: a step whose original run wrote no gmon.out (glibc's arc
    # table overflowed, as it does with a -pg shared library) cannot show it, and the probe below judges that build.
    if bk is not None and cell.variant != "nop-mcount":
        for i, (was, now) in enumerate(zip(result.gprof_original, result.gprof_back, strict=True)):
            if was.startswith("graph") and not now.startswith("graph"):
                result.problems.append(f"gprof: the restored run of `{steps[i].program}` has no call graph ({now})")
                break
        blind = sorted({steps[i].program for i, g in enumerate(result.gprof_original) if not g.startswith("graph")})
        if blind:
            result.notes.append(f"gprof cannot judge {', '.join(blind)}: the original run shows no call graph either")

    # A counting mcount, where the link is dynamic: nothing may call it once nop'd (programs and libraries alike).
    if not cell.v.static:
        probe = probe_library(b.bits)
        result.probe_nopped = run_workload(b, nopped, work / "probe-nop", probe).probe_hits
        if restored:
            result.probe_back = run_workload(b, back, work / "probe-back", probe).probe_hits
        if result.probe_nopped and not nothing_nopped:
            result.problems.append(f"probe: the nop'd build still called mcount {result.probe_nopped} times")
        if restored and not result.probe_back and cell.variant != "nop-mcount":
            result.problems.append("probe: the restored build never called mcount")


def judge_file(cell: Cell, r: FileResult, result: CheckResult) -> None:
    """Turn one file's measurements into problems (failures) and refusals (allowed for stripped files only)."""
    name = f"{r.role}{' (stripped)' if r.stripped else ''}"
    truth = len(r.gt_sites)
    if r.crosscheck:
        result.problems.append(f"{name}: ground truth differs from the objects: {'; '.join(r.crosscheck[:3])}")
    if truth == 0 and cell.variant != "nop-mcount":
        result.problems.append(f"{name}: ground truth found no site at all")
    if r.scan_rc == 1 and r.stripped and r.nop_rc == 1:
        # A stripped static program names no mcount: scan and nop refuse it, saying so (there is no nop'd file
        # for call to refuse).
        result.refusals.append(f"{name}: scan and nop refused: {r.scan_error}")
        return
    if r.scan_rc:
        result.problems.append(f"{name}: scan exit {r.scan_rc}: {r.scan_error}")
    elif r.missed:
        result.problems.append(
            f"{name}: scan missed {r.missed_count} of {truth}: {', '.join(r.missed[:4])}; "
            f"the first comes after: {r.missed_context or '(no function symbol)'}"
        )
    if r.extra:
        result.problems.append(
            f"{name}: scan reports {r.extra_count} sites that are no call to a target: {', '.join(r.extra[:4])}"
        )
    if r.nop_rc == 1 and r.stripped:
        result.refusals.append(f"{name}: nop refused: {r.nop_error}")
        return
    if r.nop_rc:
        result.problems.append(f"{name}: nop exit {r.nop_rc}: {r.nop_error}")
        return
    if r.live_after_nop:
        result.problems.append(
            f"{name}: nop exit 0 but {r.live_count} live calls left: {', '.join(r.live_after_nop[:4])}"
        )
    if r.changed_outside:
        result.problems.append(f"{name}: nop changed bytes outside every site: {', '.join(r.changed_outside[:4])}")
    if r.call_rc == 1 and (r.stripped or cell.variant == "nop-mcount"):
        # nop-mcount: nothing in the file refers to __fentry__, so a refusal that says so is right.
        result.refusals.append(f"{name}: call refused: {r.call_error}")
    elif r.call_rc == 0 and cell.variant == "nop-mcount" and not r.resolvable and r.gt_sites:
        result.problems.append(
            f"{name}: call exit 0, yet its {len(r.gt_sites)} sites are nops with no __fentry__ in the file "
            "(no definition, PLT entry or GOT slot) to call: expected a refusal (exit 1) that says so"
        )
    elif r.call_rc:
        result.problems.append(f"{name}: call exit {r.call_rc}: {r.call_error}")
    elif r.identical is False and cell.variant != "nop-mcount":
        result.problems.append(f"{name}: call's output differs from the original at {r.first_difference}")


# ------------------------------------------------------------------------------------------------------ table

DETAIL_LINES = 4  # per build under the table; the JSON results hold every one
COLUMNS = ("cell", "GT", "found", "nop", "live", "same", "gprof-n", "probe-n", "call", "ident", "gprof-b", "result")


def row(r: CheckResult) -> list[str]:
    cell = r.cell
    name = f"{cell.package} {cell.compiler} {cell.linker} {cell.variant}"
    if r.build_error:
        return [name, *["-"] * 10, "ERROR"]
    gt = sum(len(f.gt_sites) for f in r.files)
    found = sum(f.found for f in r.files)
    live = sum(f.live_count for f in r.files)
    nop = ",".join(sorted({str(f.nop_rc) for f in r.files}))
    call = ",".join(sorted({str(f.call_rc) for f in r.files}))
    ident = "yes" if all(f.identical for f in r.files) else "no" if any(f.identical is False for f in r.files) else "-"
    gn = "none" if r.gprof_nopped and not any(g.startswith("graph") for g in r.gprof_nopped) else "GRAPH"
    if not r.gprof_back or cell.variant == "nop-mcount":
        gb = "-"
    elif all(g.startswith("graph") for g in r.gprof_back):
        gb = "graph"
    elif all(
        b.startswith("graph") or not a.startswith("graph") for a, b in zip(r.gprof_original, r.gprof_back, strict=True)
    ):
        gb = "as-orig"  # some step's original run had no call graph either (glibc's arc table overflowed)
    else:
        gb = "NONE"
    pn = "-" if r.probe_nopped is None else str(r.probe_nopped)
    same = "-" if r.same_output is None else "yes" if r.same_output else "NO"
    return [name, str(gt), str(found), nop, str(live), same, gn, pn, call, ident, gb, r.status]


def table(results: list[CheckResult]) -> str:
    rows = [list(COLUMNS)] + [row(r) for r in results]
    widths = [max(len(x[i]) for x in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)).rstrip() for x in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    details = []
    for r in results:
        if r.build_error:
            details.append(f"{r.cell.key}: build: {r.build_error}")
        if r.harness_error:
            details.append(f"{r.cell.key}: harness: {r.harness_error}")
        for p in r.problems[:DETAIL_LINES]:
            details.append(f"{r.cell.key}: {p}")
        if len(r.problems) > DETAIL_LINES:
            details.append(f"{r.cell.key}: ... {len(r.problems) - DETAIL_LINES} more in the JSON results")
        for p in r.refusals:
            details.append(f"{r.cell.key}: (allowed) {p}")
        for p in r.notes[:3]:
            details.append(f"{r.cell.key}: (note) {p}")
    counts = {s: sum(1 for r in results if r.status == s) for s in ("PASS", "REFUSED", "FAIL", "ERROR")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    return "\n".join([*lines, "", f"{len(results)} builds: {summary}", "", *details])


def legend() -> str:
    return (
        "GT: sites by objdump/readelf (calls, or __mcount_loc entries); found: sites `ftpatch scan` lists; "
        "nop/call: exit codes; live: calls to a target left after nop; same: workload output of the nop'd build; "
        "gprof-n/gprof-b: call graph of the nop'd/restored runs; probe-n: calls an LD_PRELOAD mcount counted in "
        "the nop'd run (dynamic builds); ident: call's output equals the original byte for byte."
    )


# -------------------------------------------------------------------------------------------------------- CLI


def _build_one(cell: Cell) -> tuple[Cell, str]:
    os.nice(10)  # the machine is shared: builds yield to interactive work
    try:
        build(cell, log=lambda _: None)
        return cell, ""
    except (BuildError, OSError, subprocess.CalledProcessError) as e:
        return cell, str(e)


def build_all(selected: list[Cell], jobs: int, log: Callable[[str], None] = print) -> dict[Cell, str]:
    """Build the cells in `jobs` processes, the base builds before the stripped copies made from them."""
    errors: dict[Cell, str] = {}
    first = [c for c in selected if not c.v.stripped_of]
    first += [c.base() for c in selected if c.v.stripped_of and c.base() not in first]
    fetch(sorted({c.package for c in selected}), log)
    # sqlite3 first: its compiles are the long ones. Linker-major order, so that the builds running at once compile
    # different objects instead of waiting for the same ones (the three links of a compile share its objects).
    first.sort(key=lambda c: (c.package != "sqlite3", LINKERS.index(c.linker), c.variant, c.compiler))
    for batch in (first, [c for c in selected if c.v.stripped_of]):
        todo = [c for c in batch if not (build_dir(c) / "build.json").exists() or not cached(c)]
        if not todo:
            continue
        log(f"build: {len(todo)} builds, {jobs} at a time")
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for cell, err in pool.map(_build_one, todo):
                if err:
                    errors[cell] = err
                    log(f"build: {cell.key}: {err}")
    return errors


def cached(cell: Cell) -> bool:
    stamp = build_dir(cell) / "build.json"
    return stamp.exists() and json.loads(stamp.read_text()).get("recipe") == recipe(cell)


def check_all(selected: list[Cell], jobs: int, log: Callable[[str], None] = print) -> list[CheckResult]:
    """Check the cells in `jobs` processes, one line on stderr as each ends; results in the order given."""
    done: dict[Cell, CheckResult] = {}
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(check, c): c for c in selected}
        for n, future in enumerate(as_completed(futures), 1):
            r = future.result()
            done[r.cell] = r
            log(f"check {n}/{len(selected)}: {r.cell.key} {r.status} ({r.check_seconds:.0f} s)")
    return [done[c] for c in selected]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("step", nargs="?", default="all", choices=["all", "fetch", "build", "check", "list"])
    parser.add_argument("--packages", default=",".join(PACKAGES))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--compilers", default=",".join(COMPILERS))
    parser.add_argument("--linkers", default=",".join(LINKERS))
    parser.add_argument("-j", "--jobs", type=int, default=2, help="builds and checks run at once (default 2)")
    parser.add_argument("--json", type=Path, help="also write every result here (default: CACHE/results/last.json)")
    parser.add_argument("--keep", action="store_true", help="keep each check's working directory under CACHE/tmp")
    args = parser.parse_args(argv)
    split = {k: getattr(args, k).split(",") for k in ("packages", "variants", "compilers", "linkers")}
    for k, allowed in (("packages", PACKAGES), ("variants", VARIANTS), ("compilers", COMPILERS), ("linkers", LINKERS)):
        bad = [x for x in split[k] if x not in allowed]
        if bad:
            parser.error(f"unknown {k}: {', '.join(bad)} (choose from {', '.join(allowed)})")
    if args.step == "list":
        for cell, reason in cells(**split, with_excluded=True):
            v = cell.v
            print(f"{cell.key:40} {'OUT: ' + reason if reason else 'in'}{'' if reason or not v.why else ': ' + v.why}")
        return 0
    selected = [c for c, _ in cells(**split)]
    timings = {}
    t = time.monotonic()
    fetch(split["packages"], log=lambda m: print(m, file=sys.stderr, flush=True))
    timings["fetch"] = time.monotonic() - t
    if args.step == "fetch":
        return 0
    if args.step in ("all", "build"):
        t = time.monotonic()
        build_all(selected, args.jobs, log=lambda m: print(m, file=sys.stderr, flush=True))
        timings["build"] = time.monotonic() - t
        if args.step == "build":
            print(f"fetch {timings['fetch']:.0f} s, build {timings['build']:.0f} s")
            return 0
    t = time.monotonic()
    results = check_all(selected, args.jobs, log=lambda m: print(m, file=sys.stderr, flush=True))
    timings["check"] = time.monotonic() - t
    print(table(results))
    print()
    print(legend())
    print(f"ftpatch: {ftpatch_version()}")
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    out = args.json or CACHE / "results" / "last.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([result_json(r) for r in results], indent=1))
    return 0 if all(r.status in ("PASS", "REFUSED") for r in results) else 1


def result_json(r: CheckResult) -> dict:
    d = dataclasses.asdict(r)
    d["cell"] = r.cell.key
    d["status"] = r.status
    for f, fd in zip(r.files, d["files"], strict=True):
        fd["gt_sites"] = [hex(a) for a in f.gt_sites]
    return d
