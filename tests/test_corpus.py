"""ftpatch on real code nobody here wrote: Debian's zlib, tinyxml2 and sqlite3, built with -pg at test time.

`tests/oracles/corpus.py` (run as `python3 bench/corpus.py`) fetches the sources (`apt-get source`, private deb-src list), builds them in the cache
(${FTPATCH_CORPUS_CACHE:-/var/tmp/ftpatch-corpus}) and checks each linked file against a ground truth taken from
objdump and readelf alone (`tests/oracles/groundtruth.py`). These tests assert each check on a representative subset of
the matrix (CI_CELLS); the other cells are marked corpus_full and deselected by default
(`pytest -m 'corpus_full or not corpus_full' tests/test_corpus.py` runs every cell); `python3 bench/corpus.py` prints
the same checks as a table.

A check runs once per build (cached for the session); each test below asserts one of its parts, so a report names
the build and the check that failed, with the file, addresses, functions and bytes.
"""

from __future__ import annotations

import pytest
from oracles import corpus

C = corpus.Cell
# The CI subset: gcc and clang, bfd, gold and lld, PIE, -no-pie, -m32, -static, -shared, -mfentry, -O0, LTO,
# CET, __mcount_loc and stripped files; mostly zlib and tinyxml2, which build in seconds, and two sqlite3 builds
# (-O0 compiles its 8 MB amalgamation in 3 s, -O2 in 25 s).
CI_CELLS = [
    C("zlib", "pie", "gcc", "bfd"),
    C("zlib", "pie", "clang", "lld"),
    C("zlib", "nopie", "gcc", "gold"),
    C("zlib", "m32", "gcc", "bfd"),
    C("zlib", "m32", "clang", "lld"),  # call .+5; pop %ebx, then e8 to mcount@plt
    C("zlib", "static", "gcc", "bfd"),  # 67 e8
    C("zlib", "m32-static", "gcc", "lld"),  # ff 93 through a .got slot filled at link time
    C("zlib", "shared", "gcc", "gold"),
    C("zlib", "shared", "clang", "bfd"),  # e8 to mcount@plt inside the library
    C("zlib", "fentry", "gcc", "lld"),
    C("zlib", "O0", "clang", "bfd"),  # spills before the site
    C("zlib", "lto", "gcc", "gold"),
    C("zlib", "lto", "clang", "lld"),
    C("zlib", "stack-clash", "gcc", "bfd"),
    C("zlib", "static-stripped", "gcc", "bfd"),
    C("zlib", "shared-stripped", "clang", "lld"),
    C("tinyxml2", "pie", "gcc", "bfd"),
    C("tinyxml2", "pie", "clang", "gold"),
    C("tinyxml2", "O0", "gcc", "lld"),
    C("tinyxml2", "shared", "gcc", "lld"),
    C("tinyxml2", "m32", "clang", "bfd"),
    C("tinyxml2", "static", "clang", "gold"),
    C("tinyxml2", "cet-nopie", "gcc", "bfd"),  # endbr64, e8 to mcount@plt in .plt.sec
    C("zlib", "fentry-record", "gcc", "gold"),  # __mcount_loc
    C("zlib", "nop-mcount", "gcc", "bfd"),
    C("tinyxml2", "lto-fat", "gcc", "bfd"),
    C("tinyxml2", "pie-stripped", "gcc", "gold"),
    C("sqlite3", "O0", "clang", "lld"),
    C("sqlite3", "pie", "gcc", "bfd"),
]
ALL_CELLS = [c for c, _ in corpus.cells()]


def params(cells: list[corpus.Cell], *marks: pytest.MarkDecorator) -> list[object]:
    return [pytest.param(c, id=c.key.replace("/", ":"), marks=marks) for c in cells]


CELLS = params(CI_CELLS) + params([c for c in ALL_CELLS if c not in CI_CELLS], pytest.mark.corpus_full)

_results: dict[corpus.Cell, corpus.CheckResult] = {}


@pytest.fixture(scope="session")
def prebuilt(request: pytest.FixtureRequest) -> None:
    """Fetch and build every selected cell first, two at a time (the machine has 2 cores); then each check runs."""
    selected = {
        item.callspec.params["cell"]
        for item in request.session.items
        if hasattr(item, "callspec") and "cell" in item.callspec.params
    }
    corpus.build_all(sorted(selected, key=lambda c: c.key), jobs=2, log=lambda _: None)


def checked(cell: corpus.Cell) -> corpus.CheckResult:
    if cell not in _results:
        _results[cell] = corpus.check(cell)
    r = _results[cell]
    assert not r.build_error, f"{cell.key}: build failed: {r.build_error}"
    assert not r.harness_error, f"{cell.key}: the check crashed (a harness bug): {r.harness_error}"
    return r


def file_problems(r: corpus.CheckResult, check: str) -> list[str]:
    """Failures of one file-level check (`scan`, `nop`, `call`, `ground truth`), each naming its file."""
    out = []
    for p in r.problems:
        head, _, rest = p.partition(": ")
        if rest.startswith(check):
            out.append(f"{r.cell.key} {head}: {rest}")
    return out


def report(lines: list[str]) -> str:
    return "\n".join(lines)


def refused(f: corpus.FileResult) -> bool:
    """A stripped static program names no mcount: scan and nop each refuse it, and say why."""
    if f.stripped and f.scan_rc == f.nop_rc == 1:
        assert "is a stripped static program" in f.scan_error, f.scan_error
        return True
    return False


@pytest.mark.parametrize("cell", CELLS)
def test_ground_truth_agrees_with_the_objects(prebuilt: None, cell: corpus.Cell) -> None:
    """The harness itself: objdump finds a site in every function the objects say holds one, and no other."""
    r = checked(cell)
    bad = file_problems(r, "ground truth")
    assert not bad, report(bad)


@pytest.mark.parametrize("cell", CELLS)
def test_scan_finds_every_site(prebuilt: None, cell: corpus.Cell) -> None:
    r = checked(cell)
    bad = file_problems(r, "scan")
    assert not bad, report(bad)
    for f in r.files:
        if refused(f):
            continue
        assert f.found == len(f.gt_sites), f"{cell.key} {f.role}: {f.found} sites found, {len(f.gt_sites)} exist"


@pytest.mark.parametrize("cell", CELLS)
def test_nop_leaves_no_live_call(prebuilt: None, cell: corpus.Cell) -> None:
    """`nop` exits 0 (or, on a stripped file only, refuses with exit 1) and no call to a target is left."""
    r = checked(cell)
    bad = file_problems(r, "nop")
    assert not bad, report(bad)
    for f in r.files:
        if f.nop_rc == 1 and f.stripped:
            assert f.nop_error.startswith("ftpatch: error:"), f"{cell.key} {f.role}: refusal without a reason"
            continue
        assert f.nop_rc == 0 and f.live_count == 0, f"{cell.key} {f.role}: nop exit {f.nop_rc}, {f.live_count} live"


@pytest.mark.parametrize("cell", CELLS)
def test_nopped_build_gives_the_same_output(prebuilt: None, cell: corpus.Cell) -> None:
    r = checked(cell)
    assert all(" exit 0," in o for o in r.outputs_original), f"{cell.key}: the original fails: {r.outputs_original}"
    bad = [f"{cell.key}: {p}" for p in r.problems if p.startswith("workload:")]
    assert not bad, report(bad)
    assert r.same_output


@pytest.mark.parametrize("cell", CELLS)
def test_nopped_run_has_no_call_graph(prebuilt: None, cell: corpus.Cell) -> None:
    """gprof finds no arcs in any step of the nop'd run; dynamic builds: an LD_PRELOAD mcount is never called."""
    r = checked(cell)
    if all(refused(f) for f in r.files):
        pytest.skip("every file was refused: nothing was nop'd")
    bad = [f"{cell.key}: {p}" for p in r.problems if p.startswith(("gprof: the nop'd", "probe: the nop'd"))]
    assert not bad, report(bad)
    assert r.gprof_nopped and all(g.startswith("none") for g in r.gprof_nopped), r.gprof_nopped


@pytest.mark.parametrize("cell", CELLS)
def test_call_restores_the_identical_file(prebuilt: None, cell: corpus.Cell) -> None:
    """`call` on the nop'd file gives the original byte for byte, or refuses with exit 1 where that is allowed."""
    r = checked(cell)
    bad = file_problems(r, "call")
    assert not bad, report(bad)
    for f in r.files:
        if refused(f):
            continue
        if f.call_rc == 1 and (f.stripped or cell.variant == "nop-mcount"):
            assert f.call_error.startswith("ftpatch: error:"), f"{cell.key} {f.role}: refusal without a reason"
            continue
        assert f.call_rc == 0 and f.identical, f"{cell.key} {f.role}: call exit {f.call_rc}, identical {f.identical}"


@pytest.mark.parametrize("cell", CELLS)
def test_restored_run_has_a_call_graph_again(prebuilt: None, cell: corpus.Cell) -> None:
    r = checked(cell)
    if cell.variant == "nop-mcount" or all(refused(f) or (f.call_rc == 1 and f.stripped) for f in r.files):
        pytest.skip("nothing was restored: no call graph to expect")
    bad = [f"{cell.key}: {p}" for p in r.problems if p.startswith(("gprof: the restored", "probe: the restored"))]
    assert not bad, report(bad)
    # Where the original run had a call graph, the restored one has it too. With a -pg shared library glibc's arc
    # table overflows and no gmon.out is written, original or restored: there the LD_PRELOAD probe judges.
    assert r.gprof_back, f"{cell.key}: the restored build was not run"
    lost = [
        (a, b)
        for a, b in zip(r.gprof_original, r.gprof_back, strict=True)
        if a.startswith("graph") and not b.startswith("graph")
    ]
    assert not lost, f"{cell.key}: gprof before nop and after call: {lost}"
    assert any(g.startswith("graph") for g in r.gprof_back) or r.probe_back, (
        f"{cell.key}: nothing shows profiling again"
    )
