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
from itertools import chain, pairwise, repeat
from operator import add, attrgetter, lt

from .elf import read_input
from .errors import InputError, VerifyError
from .scan import DEFAULT_TARGETS, ScanResult, Site, SiteGroup, State, chosen, scan_data, site_state
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
class Rewrite:
    """The same change at many file offsets: `old` verified at each, `new` written over it.

    A plan holds its patches this way: 20,000 sites nop'd alike are two rewrites,
    the call bytes and the r_info words, not 40,000 Patch objects.
    """

    old: bytes
    new: bytes
    file_offsets: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    path: str
    action: Action
    rewrites: tuple[Rewrite, ...]
    patched: int  # sites that change
    already: int  # sites already in the requested state
    filtered: int  # sites left alone by --only / --except

    @property
    def changes(self) -> bool:
        return any(r.file_offsets for r in self.rewrites)

    @property
    def patches(self) -> tuple[Patch, ...]:
        """Every change one by one, in file order."""
        patches = [Patch(offset, r.old, r.new) for r in self.rewrites for offset in r.file_offsets]
        patches.sort(key=attrgetter("file_offset"))
        return tuple(patches)


def nop_style(name: str | None, x86_64: bool, path: str) -> NopStyle:
    style = NOP_STYLES[name or DEFAULT_STYLE[x86_64]]
    if x86_64 and not style.x86_64:
        raise InputError(
            path,
            f"nop style {style.name} is not a nop on x86-64, choose one of "
            + ", ".join(s.name for s in NOP_STYLES.values() if s.x86_64),
        )
    return style


def _problem(result: ScanResult, site: Site, action: Action, style: NopStyle) -> str:
    """Why a site cannot be put in the requested state, in ftrace_bug's terms."""
    if action is Action.CALL and site.form is Form.RECORDED:
        return f"{site.where}: gcc -mnop-mcount left no relocation to restore a call with, rebuild without -mnop-mcount"
    want = hexbytes(site.call) if site.call else hexbytes(style.for_length(site.length))
    return f"{site.where}: expected {want}, actual {hexbytes(site.code)} ({describe(site.code, result.x86_64)})"


def _pairs(group: SiteGroup) -> dict[tuple[bytes, bytes | None], Sequence[int]]:
    """The positions of the sites holding each distinct (bytes held, call expected) pair."""
    codes, calls = group.codes, group.calls
    # An object's group expects one call of every site, and usually finds it at all of them.
    if codes and codes.count(codes[0]) == len(codes) and calls.count(calls[0]) == len(calls):
        return {(codes[0], calls[0]): range(len(codes))}
    at: dict[tuple[bytes, bytes | None], list[int]] = {}
    for i, pair in enumerate(zip(codes, calls, strict=True)):
        at.setdefault(pair, []).append(i)
    return at


def _group_edits(
    group: SiteGroup,
    base: int,
    action: Action,
    style: NopStyle,
    x86_64: bool,
    edits: dict[tuple[bytes, bytes], list[int]],
) -> tuple[int, list[int]]:
    """Add to `edits` (old bytes, new bytes) -> file offsets what puts a group's sites in the
    requested state; return how many sites change, and which (by position) cannot be put in it.

    nop and call are mirror images, as ftrace_make_nop and ftrace_make_call are:
    the site's bytes go to the other state, and its r_info to 0 or back to the call's.
    Sites are classed by what they hold and must hold, once per distinct pair: an
    object's sites are usually all one pair.
    """
    nop = action is Action.NOP
    if not nop and group.form is Form.RECORDED:
        return 0, list(range(len(group)))
    offsets = group.file_offsets(base)
    bad, changed = [], 0
    for (code, call), positions in _pairs(group).items():
        state = site_state(code, call, x86_64)
        if state is State.OTHER:
            bad += positions
        elif state is not (State.NOP if nop else State.CALL):
            new = style.for_length(len(code)) if nop else call
            assert new is not None  # only a RECORDED site has no call, and it never gets here as a call
            at = offsets if len(positions) == len(offsets) else [offsets[i] for i in positions]
            edits.setdefault((code, new), []).extend(at)
            changed += len(positions)
    # A linked file's site has no relocation: its bytes are all there is.
    if group.rels and group.r_info != (want := 0 if nop else group.call_info):
        size = group.info_size
        edits.setdefault((group.r_info.to_bytes(size, "little"), want.to_bytes(size, "little")), []).extend(
            group.info_offsets(base)
        )
        changed = len(group)
    return changed, bad


def plan(
    result: ScanResult, action: Action, *, nop: str | None = None, only: Sequence[str] = (), exclude: Sequence[str] = ()
) -> Plan:
    """Verify every chosen site and plan the patches; raise VerifyError if any site is wrong."""
    style = nop_style(nop, result.x86_64, result.path)
    problems: list[str] = []
    if action is Action.CALL:
        if result.blind:
            raise InputError(result.path, result.blind)
        problems += result.strays
    edits: dict[tuple[bytes, bytes], list[int]] = {}
    bad: list[Site] = []
    patched = chosen_sites = filtered = 0
    for group in result.groups:
        if only or exclude:
            places = zip(group.sections, group.starts, strict=True)
            keep = [chosen(result.function_at(section, start), only, exclude) for section, start in places]
            filtered += len(group) - sum(keep)
            if not any(keep):
                continue
            if not all(keep):
                group = group.subset(keep)
        changed, refused = _group_edits(group, result.base, action, style, result.x86_64, edits)
        patched += changed
        chosen_sites += len(group)
        bad += [group.site(i, result.function_at(group.sections[i], group.starts[i]), result.x86_64) for i in refused]
    if bad:
        bad.sort(key=attrgetter("file_offset"))
        problems.append(_problem(result, bad[0], action, style))
    if problems:
        more = len(problems) - 1 + len(bad) - bool(bad)
        raise VerifyError(result.path, problems[0] + (f" (and {more} more sites)" if more else ""))
    # Offsets in file order: a rewrite whose offsets ascend is quick to check for overlaps.
    rewrites = tuple(Rewrite(old, new, tuple(sorted(offsets))) for (old, new), offsets in edits.items())
    return Plan(result.path, action, rewrites, patched, chosen_sites - patched, filtered)


def _first_overlap(rewrites: Sequence[Rewrite]) -> int | None:
    """The file offset of the first patch that overlaps another, if any.

    The usual plan is quick to clear: each rewrite's offsets ascend at least its
    length apart, and the rewrites' spans are disjoint. Otherwise every patch is sorted.
    """
    spans = []
    for r in rewrites:
        offsets, n = r.file_offsets, len(r.old)
        if any(map(lt, offsets[1:], map(add, offsets, repeat(n)))):
            break
        if offsets:
            spans.append((offsets[0], offsets[-1] + n))
    else:
        spans.sort()
        if not any(b[0] < a[1] for a, b in pairwise(spans)):
            return None
    patches = sorted(chain.from_iterable(zip(r.file_offsets, repeat(len(r.old))) for r in rewrites))
    return next((b for (a, n), (b, _) in pairwise(patches) if b < a + n), None)


def apply(data: bytes, plan: Plan) -> bytes:
    """The input bytes with the plan's patches written in."""
    return bytes(_patched(data, plan))


def _patched(data: bytes, plan: Plan) -> bytearray:
    """apply() without its last copy, which patch_file does not need: a file is written from any bytes."""
    overlap = _first_overlap(plan.rewrites)
    if overlap is not None:
        # Only a file whose sections overlap can put two sites, or a site and an r_info, on the same bytes.
        raise InputError(plan.path, f"two patches overlap at file offset {overlap:#x}: sections overlap")
    # No two patches overlap, so each finds the input's bytes however the others are written.
    for r in plan.rewrites:
        n = len(r.old)
        found = [data[offset : offset + n] for offset in r.file_offsets]
        if found.count(r.old) != len(found):
            stale = next(offset for offset, old in zip(r.file_offsets, found, strict=True) if old != r.old)
            raise VerifyError(plan.path, f"bytes at file offset {stale:#x} are not the ones verified")
    out = bytearray(data)
    view = memoryview(out)  # its slice assignment costs half of bytearray's
    for r in plan.rewrites:
        n, new = len(r.old), r.new
        for offset in r.file_offsets:
            view[offset : offset + n] = new
    view.release()
    return out


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
        tuple(r for pl in plans for r in pl.rewrites),
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
    fsync: bool = True,
) -> Plan:
    """Scan, verify, patch and write one ELF file or static archive; `output=None` replaces `path`.

    Nothing is written unless every chosen site verified. In place, an
    unchanged file is left untouched, mtime included. sync_dir, fsync: see write_atomic.
    """
    if output is None and os.path.islink(path):
        raise InputError(path, "is a symbolic link, give --in-place the file it points to")
    if output is not None:
        data = read_input(path)
        the_plan = plan_all(path, scan_data(path, data, targets), action, nop=nop, only=only, exclude=exclude)
        write_atomic(output, _patched(data, the_plan), os.stat(path).st_mode & 0o7777, sync_dir=sync_dir, fsync=fsync)
        return the_plan
    # In place: the file stays locked from reading to renaming, so concurrent runs take turns.
    with locked_input(path) as (data, mode):
        the_plan = plan_all(path, scan_data(path, data, targets), action, nop=nop, only=only, exclude=exclude)
        if the_plan.changes:
            write_atomic(path, _patched(data, the_plan), mode, sync_dir=sync_dir, fsync=fsync)
        else:
            sweep_stale(path)  # what a killed run left, even when this one has nothing to write
    return the_plan
