"""Planning and verification: turn scanned sites into byte patches, checking every site first.

`plan` is ftrace_replace_code done statically: it checks every chosen site
against the bytes it must hold before it plans a change to any of them, and
raises one VerifyError that lists what it found. `apply` is the write step;
it only ever touches the bytes a plan names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise

from .elf import read_input
from .errors import InputError, VerifyError
from .scan import DEFAULT_TARGETS, ScanResult, Site, State, scan_data, select
from .write import locked_input, sweep_stale, write_atomic
from .x86 import DEFAULT_STYLE, NOP_STYLES, Form, NopStyle, describe, hexbytes


class Action(StrEnum):
    NOP = "nop"
    CALL = "call"


@dataclass(frozen=True)
class Patch:
    """One change at one file offset: `old` is what was verified there, `new` replaces it."""

    file_offset: int
    old: bytes
    new: bytes


@dataclass(frozen=True)
class Plan:
    path: str
    action: Action
    patches: tuple[Patch, ...]
    patched: int  # sites that change
    already: int  # sites already in the requested state
    filtered: int  # sites left alone by --only / --except

    @property
    def changes(self) -> bool:
        return bool(self.patches)


def nop_style(name: str | None, x86_64: bool, path: str) -> NopStyle:
    style = NOP_STYLES[name or DEFAULT_STYLE[x86_64]]
    if x86_64 and not style.x86_64:
        raise InputError(
            path,
            f"nop style {style.name} is not a nop on x86-64, choose one of "
            + ", ".join(s.name for s in NOP_STYLES.values() if s.x86_64),
        )
    return style


def _mismatch(result: ScanResult, site: Site, expected: Sequence[bytes]) -> str:
    want = " or ".join(hexbytes(e) for e in expected)
    return f"{site.where}: expected {want}, actual {hexbytes(site.code)} ({describe(site.code, result.x86_64)})"


def _site_patches(result: ScanResult, site: Site, action: Action, style: NopStyle) -> tuple[list[Patch], str | None]:
    """The patches that put one site in the requested state, or why it cannot be done.

    nop and call are mirror images, as ftrace_make_nop and ftrace_make_call are:
    the site's bytes go to the other state, and its r_info to 0 or back to the call's.
    """
    if action is Action.CALL and site.form is Form.RECORDED:
        return [], (
            f"{site.where}: gcc -mnop-mcount left no relocation to restore a call with, rebuild without -mnop-mcount"
        )
    if site.state is State.OTHER:
        return [], _mismatch(result, site, [site.call] if site.call else [style.for_length(site.length)])
    nop = action is Action.NOP
    patches = []
    if site.state is not (State.NOP if nop else State.CALL):
        new = style.for_length(site.length) if nop else site.call
        assert new is not None  # only a RECORDED site has no call, and it never gets here as a call
        patches.append(Patch(result.base + site.file_offset, site.code, new))
    # A linked file's site has no relocation: its bytes are all there is.
    reloc = site.reloc
    if reloc is not None and reloc.r_info != (want := 0 if nop else reloc.call_info):
        size = reloc.info_size
        patches.append(
            Patch(result.base + reloc.info_offset, reloc.r_info.to_bytes(size, "little"), want.to_bytes(size, "little"))
        )
    return patches, None


def plan(
    result: ScanResult, action: Action, *, nop: str | None = None, only: Sequence[str] = (), exclude: Sequence[str] = ()
) -> Plan:
    """Verify every chosen site and plan the patches; raise VerifyError if any site is wrong."""
    style = nop_style(nop, result.x86_64, result.path)
    chosen, filtered = select(result.sites, only, exclude)
    patches: list[Patch] = []
    problems: list[str] = []
    patched = 0
    if action is Action.CALL:
        if result.blind:
            raise InputError(result.path, result.blind)
        problems += result.strays
    for site in chosen:
        site_patches, problem = _site_patches(result, site, action, style)
        if problem:
            problems.append(problem)
        patches += site_patches
        patched += bool(site_patches)
    if problems:
        more = f" (and {len(problems) - 1} more sites)" if len(problems) > 1 else ""
        raise VerifyError(result.path, problems[0] + more)
    return Plan(result.path, action, tuple(patches), patched, len(chosen) - patched, len(filtered))


def apply(data: bytes, plan: Plan) -> bytes:
    """The input bytes with the plan's patches written in."""
    ordered = sorted(plan.patches, key=lambda p: p.file_offset)
    for a, b in pairwise(ordered):
        if b.file_offset < a.file_offset + len(a.old):
            # Only a file whose sections overlap can put two sites, or a site and an r_info, on the same bytes.
            raise InputError(plan.path, f"two patches overlap at file offset {b.file_offset:#x}: sections overlap")
    out = bytearray(data)
    for p in plan.patches:
        if out[p.file_offset : p.file_offset + len(p.old)] != p.old:
            raise VerifyError(plan.path, f"bytes at file offset {p.file_offset:#x} are not the ones verified")
        out[p.file_offset : p.file_offset + len(p.new)] = p.new
    return bytes(out)


def plan_all(
    path: str,
    results: Sequence[ScanResult],
    action: Action,
    *,
    nop: str | None = None,
    only: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> Plan:
    """One plan for a file: its ELF image, or every member of an archive, all verified first."""
    plans = [plan(r, action, nop=nop, only=only, exclude=exclude) for r in results]
    return Plan(
        path,
        action,
        tuple(p for pl in plans for p in pl.patches),
        sum(p.patched for p in plans),
        sum(p.already for p in plans),
        sum(p.filtered for p in plans),
    )


def patch_file(
    path: str,
    action: Action,
    *,
    output: str | None = None,
    nop: str | None = None,
    only: Sequence[str] = (),
    exclude: Sequence[str] = (),
    targets: Sequence[str] = DEFAULT_TARGETS,
    sync_dir: bool = True,
) -> Plan:
    """Scan, verify, patch and write one ELF file or static archive; `output=None` replaces `path`.

    Nothing is written unless every chosen site verified. In place, an
    unchanged file is left untouched, mtime included. sync_dir: see write_atomic.
    """
    if output is None and os.path.islink(path):
        raise InputError(path, "is a symbolic link, give --in-place the file it points to")
    if output is not None:
        data = read_input(path)
        the_plan = plan_all(path, scan_data(path, data, targets), action, nop=nop, only=only, exclude=exclude)
        write_atomic(output, apply(data, the_plan), os.stat(path).st_mode & 0o7777, sync_dir=sync_dir)
        return the_plan
    # In place: the file stays locked from reading to renaming, so concurrent runs take turns.
    with locked_input(path) as (data, mode):
        the_plan = plan_all(path, scan_data(path, data, targets), action, nop=nop, only=only, exclude=exclude)
        if the_plan.changes:
            write_atomic(path, apply(data, the_plan), mode, sync_dir=sync_dir)
        else:
            sweep_stale(path)  # what a killed run left, even when this one has nothing to write
    return the_plan
