"""Planning and verification: turn scanned sites into byte patches, checking every site first.

`plan` is ftrace_replace_code done statically: it checks every chosen site
against the bytes it must hold before it plans a change to any of them, and
raises one VerifyError that lists what it found. `apply` is the write step;
it only ever touches the bytes a plan names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import chain, pairwise, repeat
from operator import add, attrgetter, lt
from typing import TYPE_CHECKING

from .archive import is_thin_file
from .errors import InputError, VerifyError, naming
from .scan import scan_data
from .sites import (
    DEFAULT_TARGETS,
    Action,
    Checks,
    Redirect,
    ScanResult,
    Site,
    SiteGroup,
    State,
    called_elsewhere,
    chosen,
    site_state,
)
from .write import rewrite, rewrite_thin
from .x86 import NOP_STYLES, SITE_LENGTH, Arch, Form, NopStyle, describe, filled, hexbytes

if TYPE_CHECKING:
    from .record import Recording


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
class Proof:
    """What the new bytes of one ELF image must show, found by its checks' own search for live calls,
    independently of the sites: after a nop, no live call but those the filters kept; after a call,
    a live call at every site restored. File offsets are the calls' ends, in the image."""

    path: str
    base: int  # where the image starts in the file: an archive member's offset
    size: int
    checks: Checks
    live: frozenset[int]  # the calls that may stay live (nop), or must be live (call)


@dataclass(frozen=True)
class Plan:
    path: str
    action: Action
    rewrites: tuple[Rewrite, ...]
    patched: int  # sites that change
    already: int  # sites already in the requested state
    filtered: int  # sites left alone by --only / --except
    proofs: tuple[Proof, ...] = ()  # one per ELF image that changes
    warnings: tuple[str, ...] = ()  # what the user must know although the plan is sound
    matched: frozenset[str] = frozenset()  # the --only / --except globs that matched a function here
    recording: Recording | None = None  # what `nop --record` also did: the __mcount_loc tables written

    @property
    def changes(self) -> bool:
        return any(r.file_offsets for r in self.rewrites)

    @property
    def patches(self) -> tuple[Patch, ...]:
        """Every change one by one, in file order."""
        patches = [Patch(offset, r.old, r.new) for r in self.rewrites for offset in r.file_offsets]
        patches.sort(key=attrgetter("file_offset"))
        return tuple(patches)


def nop_style(name: str | None, arch: Arch, path: str) -> NopStyle:
    style = NOP_STYLES[name or arch.default_nop]
    if arch.x86_64 and not style.x86_64:
        raise InputError(
            path,
            f"nop style {style.name} is not a nop on {'x86-64' if arch.word == 8 else 'x32, whose code is x86-64'}, "
            "choose one of " + ", ".join(s.name for s in NOP_STYLES.values() if s.x86_64),
        )
    return style


def _problem(result: ScanResult, site: Site, action: Action, style: NopStyle) -> str:
    """Why a site cannot be put in the requested state, in ftrace_bug's terms."""
    want = hexbytes(site.call) if site.call else "a nop"
    actual = f"{hexbytes(site.code)} ({describe(site.code, result.arch)})"
    return f"{site.where}: expected {want}, actual {actual}{called_elsewhere(site)}"


# Why a site listed in __mcount_loc, with no call to a target anywhere, cannot become a call.
_NO_CALL = {
    True: "gcc -mnop-mcount left a nop here and no relocation to restore a call with, rebuild without -mnop-mcount",
    False: "listed in __mcount_loc, but nothing in the file calls mcount, _mcount or __fentry__ (no PLT entry, GOT "
    "slot or definition) for this nop to become: restore the objects with `ftpatch call` and link again, or point "
    "the sites at a function the file defines with `ftpatch call --target NAME`",
}


# Why a -fpatchable-function-entry site's nop has no call to become without --target.
_NO_PATCHABLE_CALL = (
    "-fpatchable-function-entry left nops here, which never were a call: say which function they are to call "
    "with `call --target NAME`"
)
# Why `nop` cannot give back the compiler's nop at a -fpatchable-function-entry site of an object.
_UNRECORDED = (
    "a -fpatchable-function-entry site that a call fills, with no record of the compiler's nop beside its "
    "relocation entry (`ftpatch call --target` writes one for the nops gcc 12 and clang 14 write, which a partial "
    "link by gold, `ld.gold -r`, drops), so `nop` cannot give it back exactly: nop the linked program, or use the "
    "object from before the call was written"
)


def _group_edits(
    group: SiteGroup,
    base: int,
    action: Action,
    style: NopStyle,
    arch: Arch,
    edits: dict[tuple[bytes, bytes], list[int]],
    checks: Checks,
) -> tuple[int, list[int], list[int]]:
    """Add to `edits` (old bytes, new bytes) -> file offsets what puts a group's sites in the
    requested state; return how many sites change, which (by position) cannot be put in it,
    and which a nop would make unrestorable: every nop is read back, as `call` would read it,
    before it is planned.

    nop and call are mirror images, as ftrace_make_nop and ftrace_make_call are:
    the site's bytes go to the other state, and its r_info to 0 or back to the call's.
    Sites are classed by what they hold and must hold, once per distinct pair: an
    object's sites are usually all one pair.
    """
    nop = action is Action.NOP
    offsets = group.file_offsets(base)
    bad: list[int] = []
    changing: list[tuple[bytes, bytes | None, Sequence[int]]] = []  # (old bytes, its call, positions)
    wanted = State.NOP if nop else State.CALL
    for (code, call), positions in group.pairs().items():
        state = site_state(code, call, arch)
        if state is State.OTHER:
            bad += positions
        elif state is not wanted:
            changing.append((code, call, positions))
    # Every nop is read back as `call` would read it, all the group's at once; a style without a nop for the
    # group's form leaves nothing to read back.
    unreadable: list[int] = []
    group_nop = b""
    if nop and changing:
        group_nop = group.compiler_nop or style.nop(group.form, group.entry, group.tag, group.slot)
        positions = [i for *_, at in changing for i in at]
        unreadable = checks.readback(group, group_nop, positions) if group_nop else positions
    lost = set(unreadable)
    changed = 0
    for code, call, positions in changing:
        new = group_nop if nop else call
        assert new is not None  # only a RECORDED or PATCHABLE site has no call, and it never gets here as a call
        assert not new or len(new) == len(code), (code, new)  # a patch never moves the bytes after it
        kept = [i for i in positions if i not in lost] if lost else positions
        at = offsets if len(kept) == len(offsets) else [offsets[i] for i in kept]
        if at:
            edits.setdefault((code, new), []).extend(at)
        changed += len(kept)
    # A linked file's site has no relocation: its bytes are all there is.
    if group.rels and group.held != (want := group.nop_entry if nop else group.call_entry):
        edits.setdefault((group.held, want), []).extend(group.info_offsets(base))
        changed = len(group)
    return changed, bad, unreadable


def _redirect_edits(
    group: SiteGroup, base: int, redirect: Redirect, arch: Arch, edits: dict[tuple[bytes, bytes], list[int]]
) -> tuple[int, list[int]]:
    """Add to `edits` what makes a group's sites the calls of `redirect` (`call --target`, ftrace_make_call
    with any addr and ftrace_update_ftrace_func in one): a site may hold its call, a known nop or a call
    already redirected; return how many sites change, and which (by position) hold none of these."""
    offsets = group.file_offsets(base)
    bad: list[int] = []
    changed = 0
    entry_changes = bool(group.rels) and group.held != redirect.call_entry
    for i, (code, call, call_to) in enumerate(zip(group.codes, group.calls, redirect.calls, strict=True)):
        assert call_to is not None  # plan refuses the sites that cannot call the function before it gets here
        # Over a compiler's nop longer than the call, the call is followed by a nop to the nop's end.
        new = filled(call_to, len(code))
        if code == new:
            changed += entry_changes
        elif site_state(code, call, arch) is not State.OTHER:
            edits.setdefault((code, new), []).append(offsets[i])
            changed += 1
        else:
            bad.append(i)
    if entry_changes:
        edits.setdefault((group.held, redirect.call_entry), []).extend(group.info_offsets(base))
    return changed, bad


def plan(
    result: ScanResult,
    action: Action,
    *,
    nop: str | None = None,
    only: Sequence[str] = (),
    exclude: Sequence[str] = (),
    target: str | None = None,
) -> Plan:
    """Verify every chosen site and plan the patches; raise VerifyError if any site is wrong.

    `target` (with Action.CALL): every chosen site becomes a call to this function, whatever it holds now
    (a call, a nop, a call to another target); `result` must have been scanned with it among its targets,
    so that a site that calls it already is found as one."""
    style = nop_style(nop, result.arch, result.path)
    stopped = result.stopping(action)
    if stopped:
        more = f" (and {len(stopped) - 1} more)" if len(stopped) > 1 else ""
        written = "; nothing was written" if action is Action.NOP and Action.CALL not in stopped[0].stops else ""
        raise InputError(result.path, f"{stopped[0].text}{more}{written}")
    problems = list(result.strays) if action is Action.CALL else []
    live: list[int] = []  # nop: the calls --only / --except keep; call: every chosen site
    unrestorable: list[Site] = []
    cannot: list[tuple[Site, str]] = []  # --target: the sites that cannot call it, and why
    doubtful: list[tuple[Site, str]] = []  # call: nop'd sites whose call the file does not say (SiteGroup.doubt)
    clash = ""  # why no nop of some unrestorable sites would do
    edits: dict[tuple[bytes, bytes], list[int]] = {}
    bad: list[Site] = []
    patched = chosen_sites = filtered = 0
    matched: set[str] = set()
    for group in result.groups:
        keep: Sequence[bool] = ()
        if only or exclude:
            places = zip(group.sections, group.starts, strict=True)
            keep = [chosen(result.function_at(section, start), only, exclude, matched) for section, start in places]
            filtered += len(group) - sum(keep)
        if action is Action.NOP and keep and not all(keep):
            live += [
                start + SITE_LENGTH[group.form]
                for start, code, call, k in zip(group.file_offsets(), group.codes, group.calls, keep, strict=True)
                if not k and code == call
            ]
        if keep and not any(keep):
            continue
        if keep and not all(keep):
            group = group.subset(keep)
        if group.form is Form.PATCHABLE and (wrong := group.wrong(result.arch)):
            # Bytes that are no nop where __patchable_function_entries lists a site: ftrace_bug's EINVAL.
            bad += [result.site(group, i) for i in wrong]
            continue
        if target is not None:
            with naming(result.path):
                redirect = result.checks.redirect(group, target)
            if redirect.refused:
                cannot += [(result.site(group, i), why) for i, why in redirect.refused.items()]
                continue
            changed, refused = _redirect_edits(group, result.base, redirect, result.arch, edits)
            patched += changed
            chosen_sites += len(group)
            bad += [result.site(group, i) for i in refused]
            live += [start + len(call or b"") for start, call in zip(group.file_offsets(), redirect.calls, strict=True)]
            continue
        if action is Action.CALL and group.form in (Form.RECORDED, Form.PATCHABLE):
            site = result.site(group, 0)
            more = f" (and {len(group) - 1} more sites)" if len(group) > 1 else ""
            why = _NO_CALL[result.type == "ET_REL"] if group.form is Form.RECORDED else _NO_PATCHABLE_CALL
            raise InputError(result.path, f"{site.where}: {why}{more}")
        if action is Action.NOP and group.compiler_nop == b"" and any(c == group.calls[0] for c in group.codes):
            site = result.site(group, next(i for i, c in enumerate(group.codes) if c == group.calls[0]))
            more = f" (and {len(group) - 1} more sites)" if len(group) > 1 else ""
            raise InputError(result.path, f"{site.where}: {_UNRECORDED}{more}; nothing was written")
        if action is Action.CALL and group.doubt:
            doubtful += [
                (result.site(group, i), group.doubt) for i, code in enumerate(group.codes) if code != group.calls[i]
            ]
        with naming(result.path):  # the checks read bytes, and their errors name no file
            changed, refused, lost = _group_edits(group, result.base, action, style, result.arch, edits, result.checks)
        patched += changed
        chosen_sites += len(group)
        bad += [result.site(group, i) for i in refused]
        unrestorable += [result.site(group, i) for i in lost]
        clash = clash or (result.checks.clash(group) if lost else "")
        if action is Action.CALL:
            # Where each call ends, as live_calls keys it: a filler nop after it (x86.filled) is no part of it.
            live += [start + SITE_LENGTH[group.form] for start in group.file_offsets()]
    if cannot:
        site, why = min(cannot, key=lambda c: c[0].file_offset)
        more = f" (and {len(cannot) - 1} more sites)" if len(cannot) > 1 else ""
        raise InputError(result.path, f"{site.where}: {why}{more}; nothing was written")
    if doubtful:
        site, doubt = min(doubtful, key=lambda d: d[0].file_offset)
        more = f" (and {len(doubtful) - 1} more sites)" if len(doubtful) > 1 else ""
        problems.append(f"{site.where}: {doubt}{more}")
    if bad:
        bad.sort(key=attrgetter("file_offset"))
        problems.append(_problem(result, bad[0], action, style))
    if problems:
        others = len(problems) - 1 + len(bad) - bool(bad)
        raise VerifyError(result.path, problems[0] + (f" (and {others} more sites)" if others else ""))
    if unrestorable:
        site = min(unrestorable, key=attrgetter("file_offset"))
        more = f" (and {len(unrestorable) - 1} more sites)" if len(unrestorable) > 1 else ""
        if clash:
            raise InputError(result.path, f"{site.where}: {clash}{more}; nothing was written")
        raise InputError(
            result.path,
            f"{site.where}: the {style.name} nop would not read back as {hexbytes(site.call or b'')}, so `call` could "
            f"not restore it{more}; nothing was written, choose another --nop (p6 marks the call it replaces)",
        )
    # Offsets in file order: a rewrite whose offsets ascend is quick to check for overlaps.
    rewrites = tuple(Rewrite(old, new, tuple(sorted(offsets))) for (old, new), offsets in edits.items())
    warnings = result.warnings
    if action is Action.NOP and patched:
        warnings += tuple(f"`ftpatch call` will refuse this file: it {f.text}" for f in result.stopping(Action.CALL))
    # Proved even where nothing changes: a file whose every site a scanner missed must not pass as done.
    proofs = (Proof(result.path, result.base, len(result.data), result.checks, frozenset(live)),)
    return Plan(
        result.path,
        action,
        rewrites,
        patched,
        chosen_sites - patched,
        filtered,
        proofs,
        warnings,
        frozenset(matched),
    )


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
    for proof in plan.proofs:
        _prove(proof, plan.action, out)
    return out


def _unchanged(data: bytes, plan: Plan) -> None:
    """Prove a plan that changes nothing on the bytes as they are."""
    for proof in plan.proofs:
        _prove(proof, plan.action, data)


def _prove(proof: Proof, action: Action, out: bytes | bytearray) -> None:
    """Raise unless the new bytes of the proof's image show what the plan promised."""
    whole = proof.base == 0 and proof.size == len(out)
    with naming(proof.path):
        found = proof.checks.live_calls(out if whole else out[proof.base : proof.base + proof.size])
    if action is Action.NOP:
        left = [text for end, text in sorted(found.items()) if end not in proof.live]
        if left:
            more = f" (and {len(left) - 1} more)" if len(left) > 1 else ""
            raise InputError(proof.path, f"{left[0]} would stay live after the nop{more}; nothing was written")
        return
    missing = sorted(proof.live - found.keys())
    if missing:
        more = f" (and {len(missing) - 1} more sites)" if len(missing) > 1 else ""
        raise InputError(
            proof.path,
            f"the call written to end at file offset {missing[0]:#x} is not a live call to a profiling target when the "
            f"file is read again{more}; nothing was written",
        )


def plan_all(
    path: str,
    results: Sequence[ScanResult],
    action: Action,
    *,
    nop: str | None = None,
    only: Sequence[str] = (),
    exclude: Sequence[str] = (),
    target: str | None = None,
) -> Plan:
    """One plan for a file: its ELF image, or every member of an archive, all verified first."""
    plans = [plan(r, action, nop=nop, only=only, exclude=exclude, target=target) for r in results]
    return _combined(path, action, plans)


def _combined(path: str, action: Action, plans: Sequence[Plan]) -> Plan:
    """The plans of a file's ELF images (an archive's members) as one plan for the file."""
    return Plan(
        path,
        action,
        tuple(r for pl in plans for r in pl.rewrites),
        sum(p.patched for p in plans),
        sum(p.already for p in plans),
        sum(p.filtered for p in plans),
        tuple(proof for pl in plans for proof in pl.proofs),
        warnings=tuple(f"{pl.path}: {w}" if pl.path != path else w for pl in plans for w in pl.warnings),
        matched=frozenset().union(*(pl.matched for pl in plans)),
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
    record: bool = False,
    target: str | None = None,
) -> Plan:
    """Scan, verify, patch and write one ELF file or static archive; `output=None` replaces `path`.

    Nothing is written unless every chosen site verified. In place, an
    unchanged file is left untouched, mtime included. sync_dir, fsync: see write_atomic.
    With `record`, the patched bytes also get __mcount_loc, as `record` writes it
    (a nop'd site is still a site), in the same write. With `target` (Action.CALL),
    every chosen site becomes a call to that function (`call --target`): it is a
    target of the scan too, and an object that has no symbol of its name gets one.
    """
    if target is not None and target not in targets:
        targets = (*targets, target)

    def change(data: bytes, name: str = path) -> tuple[Plan, bytes | bytearray | None]:
        if target is not None:
            from .prepare import with_symbol  # here: only `call --target` needs it

            # Given first, without a scan to say whether a site needs it: a file whose plan changes nothing is
            # written as it was read.
            data = with_symbol(name, data, target) or data
        scanned = scan_data(name, data, targets)
        if action is Action.CALL and _recorded(scanned):
            from .prepare import prepared

            grown = prepared(name, data, scanned, target, only, exclude)
            if grown is not None:
                data, scanned = grown, scan_data(name, grown, targets)
        the_plan = plan_all(name, scanned, action, nop=nop, only=only, exclude=exclude, target=target)
        if the_plan.changes:
            new: bytes | bytearray | None = _patched(data, the_plan)
        else:
            _unchanged(data, the_plan)
            new = None
        if not record:
            return the_plan, new
        from .record import record_data  # here: a nop without --record, one per object in a build, never pays for it

        # A nop or a call moves no site: the table lists the sites the plan was made of.
        recording, recorded = record_data(name, data if new is None else bytes(new), targets, scanned)
        return replace(the_plan, recording=recording), new if recorded is None else recorded

    if is_thin_file(path):  # each member is patched in its own file, `change` given the member's name
        return _thin_plan(path, action, rewrite_thin(path, output, change, fsync=fsync))
    return rewrite(path, output, change, sync_dir=sync_dir, fsync=fsync)


def _recorded(scanned: Sequence[ScanResult]) -> bool:
    """Whether an object has sites gcc -mnop-mcount or -fpatchable-function-entry left, which need relocation
    entries to become calls."""
    return any(r.type == "ET_REL" and any(g.form in (Form.RECORDED, Form.PATCHABLE) for g in r.groups) for r in scanned)


def _thin_plan(path: str, action: Action, plans: Sequence[Plan]) -> Plan:
    """What patching a thin archive did, from the plan of each member, as plan_all says it of an archive."""
    recordings = [p.recording for p in plans if p.recording is not None]
    recording = None
    if recordings:
        from .record import Recording

        recording = Recording(
            path,
            sum(r.recorded for r in recordings),
            sum(r.already for r in recordings),
            any(r.changed for r in recordings),
        )
    return replace(_combined(path, action, plans), recording=recording)
