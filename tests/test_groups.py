"""plan() works on SiteGroups, column by column; it must agree with planning one Site at a time.

The reference below is the rule written out site by site, as ftrace_make_nop and
ftrace_make_call apply it to one record: every fixture, as built, nop'd and half
nop'd, both actions, every nop style, and an object of 3,000 functions built here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, OBJECTS

import ftpatch as lib
from ftpatch.scan import scan_data
from ftpatch.sites import at_entry
from ftpatch.x86 import styles_for


def reference(
    result: lib.ScanResult, action: lib.Action, style: lib.NopStyle
) -> tuple[list[lib.Patch], int] | type[lib.FtpatchError]:
    """The patches and the count of sites that change, or the error the plan must refuse with."""
    patches = []
    patched = 0
    if action is lib.Action.CALL and any(site.form is lib.Form.RECORDED for site in result.sites):
        return lib.InputError  # nothing says what call a -mnop-mcount nop was
    for site in result.sites:
        nop = action is lib.Action.NOP
        if site.state is lib.State.OTHER:
            return lib.VerifyError
        before = len(patches)
        if nop and site.state is lib.State.CALL:
            new = style.nop(site.form, at_entry(site.target), site.reloc.tag if site.reloc else 0)
            patches.append(lib.Patch(result.base + site.file_offset, site.code, new))
        if not nop and site.state is lib.State.NOP:
            assert site.call is not None
            patches.append(lib.Patch(result.base + site.file_offset, site.code, site.call))
        reloc = site.reloc
        if reloc is not None and reloc.held != (want := reloc.nop if nop else reloc.call):
            patches.append(lib.Patch(result.base + reloc.info_offset, reloc.held, want))
        patched += len(patches) > before
    return sorted(patches, key=lambda p: p.file_offset), patched


def apply_one_by_one(data: bytes, patches: list[lib.Patch]) -> bytes:
    out = bytearray(data)
    for p in patches:
        assert out[p.file_offset : p.file_offset + len(p.old)] == p.old
        out[p.file_offset : p.file_offset + len(p.new)] = p.new
    return bytes(out)


def check_against_reference(path: str, data: bytes) -> int:
    """Compare plan() with the reference for both actions and every style; return how many plans were made."""
    (result,) = scan_data(path, data)
    made = 0
    for action in lib.Action:
        for style in styles_for(result.arch):
            want = reference(result, action, style)
            if not isinstance(want, tuple):
                with pytest.raises(want):
                    lib.plan(result, action, nop=style.name)
                continue
            plan = lib.plan(result, action, nop=style.name)
            assert list(plan.patches) == want[0]
            assert (plan.patched, plan.already) == (want[1], len(result.sites) - want[1])
            assert lib.apply(data, plan) == apply_one_by_one(data, want[0])
            made += 1
    return made


def half_nopped(path: str, data: bytes, glob: str) -> bytes:
    """The file with the sites of functions matching `glob` nop'd and the rest left as calls."""
    (result,) = scan_data(path, data)
    return lib.apply(data, lib.plan(result, lib.Action.NOP, only=[glob]))


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_fixture_plans_match_the_site_by_site_rule(name: str) -> None:
    path = str(FIXTURES / name)
    data = (FIXTURES / name).read_bytes()
    (result,) = scan_data(path, data)
    forms = [data]
    if result.sites and name != "x86_64-nop-mcount.o":
        forms.append(lib.apply(data, lib.plan(result, lib.Action.NOP)))
        forms.append(half_nopped(path, data, "f*"))  # fib nop'd; main and the rest calls
        (half,) = scan_data(path, forms[-1])
        assert {s.state for s in half.sites} == {lib.State.CALL, lib.State.NOP}
    made = sum(check_against_reference(path, form) for form in forms)
    assert made >= len(forms)  # at least one plan each, never only refusals


@pytest.fixture(scope="module")
def many_functions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An object of 3,000 functions, gcc -O1 -pg -mfentry -fno-pie: one group of 3,000 sites."""
    workdir = tmp_path_factory.mktemp("many")
    source = workdir / "many.c"
    source.write_text(
        "extern volatile int g;\n"
        + "".join(f"int f{i}(int x) {{ return x * {i % 7 + 2} + g; }}\n" for i in range(3000))
    )
    obj = workdir / "many.o"
    subprocess.run(["gcc", "-O1", "-pg", "-mfentry", "-fno-pie", "-c", source, "-o", obj], check=True)
    return obj


def test_many_sites_in_every_state(many_functions: Path) -> None:
    path, data = str(many_functions), many_functions.read_bytes()
    (result,) = scan_data(path, data)
    assert len(result.sites) == 3000 and len(result.groups) == 1
    # f1, f10..f19, f100..f199, f1000..f1999: 1,111 sites nop'd, 1,889 still calls, in one relocation table.
    mixed = half_nopped(path, data, "f1*")
    (half,) = scan_data(path, mixed)
    assert sorted(len(g) for g in half.groups) == [1111, 1889]
    assert [s.state for s in half.sites].count(lib.State.NOP) == 1111
    check_against_reference(path, mixed)
    # Mixed nop styles in one file: the call direction restores each from what it holds.
    (half,) = scan_data(path, mixed)
    restyled = lib.apply(mixed, lib.plan(half, lib.Action.NOP, nop="jmp", only=["f2*"]))
    check_against_reference(path, restyled)
    (final,) = scan_data(path, restyled)
    assert lib.apply(restyled, lib.plan(final, lib.Action.CALL)) == data


def test_results_pickle_and_take_any_bytes(tmp_path: Path) -> None:
    """A ScanResult crosses processes whole (its function names too), and a bytearray scans as bytes do."""
    import pickle

    program = tmp_path / "prog"
    subprocess.run(["gcc", "-pg", FIXTURES / "x86_64-pie.o", "-o", program], check=True)
    for path in (FIXTURES / "x86_64-pie.o", program):
        (result,) = scan_data(str(path), bytearray(path.read_bytes()))
        assert result.sites and all(type(site.code) is bytes for site in result.sites)
        assert all(site.function for site in result.sites)
        again = pickle.loads(pickle.dumps(result))
        assert again.sites == result.sites
        assert lib.plan(again, lib.Action.NOP).patches == lib.plan(result, lib.Action.NOP).patches
