"""C++: names demangled as binutils prints them, globs over demangled names, a table that fits 100 columns."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ftpatch, read_terminal, run

from ftpatch.demangle import demangle, without_parameters

# Namespaces, a class with a constructor, a virtual destructor and const methods, a class template,
# a function template, an operator, a conversion, an anonymous namespace and a static member.
SOURCE = r"""
#include <string>
namespace geo {
class Shape {
  public:
    explicit Shape(int sides);
    virtual ~Shape();
    int sides() const;
    bool operator<(const Shape &other) const;
    explicit operator bool() const;
    static Shape square();
  private:
    int sides_;
};
Shape::Shape(int sides) : sides_(sides) {}
Shape::~Shape() {}
int Shape::sides() const { return sides_; }
bool Shape::operator<(const Shape &other) const { return sides_ < other.sides_; }
Shape::operator bool() const { return sides_ != 0; }
Shape Shape::square() { return Shape(4); }

template <typename T> struct Box {
    T value;
    __attribute__((noinline)) T get() const { return value; }
    __attribute__((noinline)) void set(T v) { value = v; }
};
template <typename T> __attribute__((noinline)) T twice(T x) { return x + x; }
namespace {
__attribute__((noinline)) int hidden(int x) { return x * 7; }
}
std::string name(const std::string &prefix) { return prefix + "shape"; }
}  // namespace geo

int use(int n) {
    geo::Box<int> b{n};
    geo::Box<double> d{1.5};
    b.set(geo::twice(n));
    d.set(geo::twice(2.5));
    geo::Shape s(3), q = geo::Shape::square();
    return b.get() + (int)d.get() + geo::hidden(n) + (s < q) + bool(q) + (int)geo::name("a").size();
}
"""

EXPECTED = {
    "geo::Shape::Shape(int)": "geo::Shape::Shape",
    "geo::Shape::~Shape()": "geo::Shape::~Shape",
    "geo::Shape::sides() const": "geo::Shape::sides",
    "geo::Shape::operator<(geo::Shape const&) const": "geo::Shape::operator<",
    "geo::Shape::operator bool() const": "geo::Shape::operator bool",
    "geo::Shape::square()": "geo::Shape::square",
    "geo::Box<int>::set(int)": "geo::Box<int>::set",
    "geo::Box<double>::set(double)": "geo::Box<double>::set",
    "int geo::twice<int>(int)": "geo::twice<int>",
    "double geo::twice<double>(double)": "geo::twice<double>",
    "geo::(anonymous namespace)::hidden(int)": "geo::(anonymous namespace)::hidden",
    "geo::name(std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> > const&)": "geo::name",
}


@pytest.fixture(scope="module")
def cxx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The source above compiled by g++ -O2 -pg (Debian's default PIE), as a build compiles it."""
    tmp = tmp_path_factory.mktemp("cxx")
    (tmp / "shapes.cpp").write_text(SOURCE)
    run("g++", "-O2", "-pg", "-c", tmp / "shapes.cpp", "-o", tmp / "shapes.o")
    return tmp / "shapes.o"


def sites(obj: Path, *args: str) -> list[dict[str, object]]:
    proc = ftpatch("scan", "--json", *args, obj)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["files"][0]["sites"]


def nm_names(obj: Path) -> dict[str, str]:
    """Symbol -> name as `nm -C` prints it: binutils' own demangling of every defined function."""
    raw = [line.split(" ", 2)[2] for line in run("nm", "--defined-only", obj).splitlines()]
    shown = [line.split(" ", 2)[2] for line in run("nm", "-C", "--defined-only", obj).splitlines()]
    return dict(zip(raw, shown, strict=True))


def test_json_keeps_the_symbol_and_adds_the_name_nm_prints(cxx: Path) -> None:
    found = sites(cxx)
    by_nm = nm_names(cxx)
    assert {s["demangled"] for s in found} >= EXPECTED.keys()
    for site in found:
        assert str(site["function"]).startswith("_Z")  # the symbol, as the symbol table has it
        assert site["demangled"] == by_nm[str(site["function"])]


def test_names_without_parameters_are_what_cxxfilt_p_prints(cxx: Path) -> None:
    symbols = [str(s["function"]) for s in sites(cxx)]
    # c++filt spells std::string and std::ostream out where nm does not; the parameters end the same way.
    full = run("c++filt", *symbols).splitlines()
    bare = run("c++filt", "-p", *symbols).splitlines()
    assert [without_parameters(name) for name in full] == bare
    assert {name: without_parameters(name) for name in EXPECTED} == EXPECTED


def test_only_and_except_match_the_demangled_name_and_the_symbol(cxx: Path, tmp_path: Path) -> None:
    found = sites(cxx)
    symbol_of = {s["demangled"]: s["function"] for s in found}

    def nopped(*globs: str) -> set[object]:
        out = tmp_path / "some.o"
        proc = ftpatch("nop", *globs, cxx, "-o", out)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        return {s["demangled"] for s in sites(out) if s["state"] == "nop"}

    cases = {
        # The example: a qualified name without its parameters.
        ("--only", "geo::Shape::sides"): {"geo::Shape::sides() const"},
        ("--only", "geo::Shape::sides() const"): {"geo::Shape::sides() const"},
        ("--only", str(symbol_of["geo::Shape::sides() const"])): {"geo::Shape::sides() const"},
        # g++ -O2 clones Box::get (`[clone .isra.0]`): a clone is matched by its function's name.
        ("--only", "geo::Box<*>::get"): {
            s["demangled"]
            for s in found
            if str(s["demangled"]).startswith("geo::Box<") and "::get() const [clone " in str(s["demangled"])
        },
        ("--only", "geo::twice<*"): {"int geo::twice<int>(int)", "double geo::twice<double>(double)"},
        ("--only", "geo::Shape::~*"): {"geo::Shape::~Shape()"},  # the complete and the deleting destructor
        ("--only", "*(anonymous namespace)::*"): {"geo::(anonymous namespace)::hidden(int)"},
    }
    assert len(cases["--only", "geo::Box<*>::get"]) == 2
    for (option, glob), chosen in cases.items():
        assert nopped(option, glob) == chosen, glob
    left = {s["demangled"] for s in found} - nopped("--except", "geo::Shape::*")
    assert left and all(str(name).startswith("geo::Shape::") for name in left)
    # call undoes what nop did, byte for byte.
    out, back = tmp_path / "some.o", tmp_path / "back.o"
    proc = ftpatch("nop", "--only", "geo::Shape::sides", "--only", "geo::twice<*", cxx, "-o", out)
    assert f" 3 patched, 0 already nop, {len(found) - 3} filtered out" in proc.stdout
    assert ftpatch("call", out, "-o", back).returncode == 0
    assert back.read_bytes() == cxx.read_bytes()


def on_a_terminal(argv: list[str], columns: int) -> list[str]:
    """What ftpatch prints on a terminal `columns` wide."""
    main, sub = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns)}
    proc = subprocess.Popen([sys.executable, "-m", "ftpatch", *argv], stdout=sub, stderr=sub, env=env)
    os.close(sub)
    text = read_terminal(main)
    assert proc.wait() == 0
    return text.splitlines()


def test_table_fits_100_columns_on_a_terminal_and_keeps_names_whole_in_a_pipe(cxx: Path) -> None:
    piped = ftpatch("scan", cxx).stdout.splitlines()
    assert piped[1].split() == ["where", "file_offset", "form", "target", "state", "function"]
    start = piped[1].index("function")
    names = {line[start:] for line in piped[2:]}
    assert names >= EXPECTED.keys()  # whole and demangled, last on each row
    # COMDAT sections are named after a symbol: the table says `.text.*`, --json has the name.
    assert any(line.split()[0].startswith(".text.*+") for line in piped[2:])
    shown = on_a_terminal(["scan", str(cxx)], 100)
    assert shown[:2] == piped[:2]
    assert max(map(len, shown)) <= 100
    for line, whole in zip(shown[2:], piped[2:], strict=True):
        name, full = line[start:], whole[start:]
        # Whole, or without its parameters, or that cut; never another function's name.
        short = f"{without_parameters(full)}(...)"
        assert name in (full, short) or (name.endswith("...") and short.startswith(name[:-3])), line


def test_a_c_name_is_its_own_demangled_name() -> None:
    assert demangle("fib") == "fib"
    assert demangle("_Z") == "_Z"  # not a mangled name after all
    assert demangle("_ZN3geo5Shape5sidesEv.cold") == "geo::Shape::sides() [clone .cold]"


def test_without_libstdcxx_names_stay_symbols_and_the_warning_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from ftpatch import demangle as demangler
    from ftpatch import report

    monkeypatch.setattr(demangler, "_demangler", lambda: None)
    for cached in ("demangle", "names"):  # no answer cached from before
        monkeypatch.setattr(demangler, cached, getattr(demangler, cached).__wrapped__)
    assert demangler.names("_ZNK3geo5Shape5sidesEv") == ("_ZNK3geo5Shape5sidesEv",)
    (warning,) = report.unmatched(["geo::Shape::sides"], [], set(), 1)
    assert warning.startswith("--only 'geo::Shape::sides' matched no function with a site in the file;")
    assert warning.endswith("C++ names cannot be demangled here (libstdc++.so.6 did not load): match their symbols")


@pytest.mark.parametrize("linked", [False, True])
def test_error_messages_name_functions_demangled(cxx: Path, tmp_path: Path, linked: bool) -> None:
    """A site that holds neither its call nor a nop is reported with its function named as scan shows it."""
    path = cxx
    if linked:  # __mcount_loc lists the sites: each is known exactly, so garbage there is an error
        (tmp_path / "main.c").write_text("int use(int);\nint main(void) { return use(1) & 0; }\n")
        path = tmp_path / "shapes"
        run("g++", "-O2", "-pg", "-mrecord-mcount", tmp_path / "main.c", cxx.parent / "shapes.cpp", "-o", path)
    site = next(s for s in sites(path) if s["demangled"] == "geo::Shape::sides() const")
    bad = tmp_path / f"bad-{path.name}"
    data = bytearray(path.read_bytes())
    at = int(str(site["file_offset"]))
    data[at : at + 6] = bytes.fromhex("0f0b90909090")
    bad.write_bytes(data)
    proc = ftpatch("nop", bad, "-o", tmp_path / "out")
    assert proc.returncode == 3, proc.stderr
    place = f"{site['section']}+{int(str(site['offset'])):#x}"
    assert proc.stderr.startswith(f"ftpatch: error: {bad}: geo::Shape::sides() const ({place}): expected ff:15:")
    assert "_ZNK3geo5Shape5sidesEv" not in proc.stderr
