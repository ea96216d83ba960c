"""record writes, for every kernel module Debian 12 ships, the __mcount_loc table Debian shipped in it.

The modules come from bench/prepare.sh (`.ci/run` runs it): modules-pristine/
holds each module with its table removed by objcopy, and
modules-shipped-mcount-loc.json the tables as shipped, each entry resolved to
the section and offset it points at. Without them these tests skip.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli, table_places

from ftpatch.record import record_data

CACHE = Path(os.environ.get("FTPATCH_BENCH_CACHE", "/var/tmp/ftpatch-bench"))
PRISTINE = CACHE / "modules-pristine"
SHIPPED = CACHE / "modules-shipped-mcount-loc.json"

pytestmark = pytest.mark.skipif(
    not (PRISTINE.is_dir() and SHIPPED.is_file()),
    reason=f"no Debian kernel modules in {CACHE}: run bench/prepare.sh (it downloads them, about 40 s)",
)


def shipped() -> dict[str, list[tuple[str, int]] | None]:
    """module -> its shipped table, as sorted (section, offset); None for the modules shipped without one."""
    listing = json.loads(SHIPPED.read_text())
    return {
        module: None if places is None else sorted((p.rsplit("+", 1)[0], int(p.rsplit("+", 1)[1], 16)) for p in places)
        for module, places in listing.items()
    }


def recorded_table(module: str) -> tuple[str, list[tuple[str, int]] | None]:
    """The table `record` writes into a module, as pyelftools reads it back; None if it writes none."""
    new = record_data(module, (PRISTINE / module).read_bytes())[1]
    return module, None if new is None else table_places(Path(module), bytes(new))


def test_every_module_gets_the_table_debian_shipped() -> None:
    """One for one, .init.text and every other section included, on all 4,023 modules: the 4,000 with
    __fentry__ calls get the table Debian shipped, the 23 without get none, as Debian shipped them."""
    want = shipped()
    assert len(want) > 4000
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = dict(pool.imap_unordered(recorded_table, sorted(want), chunksize=64))
    different = sorted(m for m in want if got[m] != want[m])
    assert not different, f"{len(different)} modules differ, first {different[0]}"
    assert sum(len(t or []) for t in got.values()) == sum(len(t or []) for t in want.values()) > 190_000
    assert any(section == ".init.text" for t in want.values() for section, _ in t or [])


def test_cli_records_a_module_tree_in_place(tmp: Path) -> None:
    """kbuild's job on a copy of every 50th module: record --in-place -j 2, then readelf, eu-elflint and ld -r
    accept each, and a second run leaves every module as it is."""
    want = shipped()
    modules = sorted(want)[::50]
    copies = []
    for module in modules:
        copy = tmp / module
        copy.parent.mkdir(parents=True, exist_ok=True)
        copies.append(Path(shutil.copy(PRISTINE / module, copy)))
    listing = tmp / "modules.txt"
    listing.write_text("".join(f"{p}\n" for p in copies))
    code, _, err = run_cli(["record", "--in-place", "-q", "-j", "2", "--files-from", str(listing)])
    assert code == 0 and err.startswith(f"ftpatch record: {len(copies)} files, "), err
    for module, copy in zip(modules, copies, strict=True):
        assert table_places(copy) == want[module], module
        if want[module] is None:
            assert copy.read_bytes() == (PRISTINE / module).read_bytes()
            continue
        proc = subprocess.run(["readelf", "-aW", copy], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stderr == "", (module, proc.stderr)
        lint = subprocess.run(["eu-elflint", "--gnu-ld", copy], capture_output=True, text=True).stdout
        original = subprocess.run(["eu-elflint", "--gnu-ld", PRISTINE / module], capture_output=True, text=True).stdout
        assert lint.replace(str(copy), "X") == original.replace(str(PRISTINE / module), "X"), module
        proc = subprocess.run(["ld", "-r", copy, "-o", tmp / "r.o"], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stderr == "", (module, proc.stderr)
        assert table_places(tmp / "r.o") == want[module], module
    before = [p.read_bytes() for p in copies]
    code, _, err = run_cli(["record", "--in-place", "-q", "--files-from", str(listing)])
    assert code == 0
    assert f"0 sites recorded, {sum(w is not None for w in (want[m] for m in modules))} objects already had" in err
    assert [p.read_bytes() for p in copies] == before
