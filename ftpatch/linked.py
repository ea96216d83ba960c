"""Linked files: find the profiling call sites of an executable or a shared object, and prove none is missed.

A linked file has no relocation at its sites (unless linked with --emit-relocs),
so a site is recognised by what it calls (targets.py resolves that first, for
the whole file). Sites are then located by the first of these the file has:

1. `__mcount_loc` (gcc -mrecord-mcount, or ftpatch record), or in a kernel
   image the table its linker script puts between `__start_mcount_loc` and
   `__stop_mcount_loc`: each entry is a site's address (in a PIE, the addend of
   its R_*_RELATIVE);
2. relocations against a target kept by `ld --emit-relocs`;
3. function starts, from .symtab, .dynsym and the unwind tables (.eh_frame_hdr,
   or .eh_frame in a static program), which a stripped file keeps: capstone
   decodes each function from its entry, and its site is the first instruction
   that calls a target or is a nop ftpatch put there. Any prologue may come
   first (pushes, moves and spills, stack adjustments, stack-clash probe loops,
   the i386 GOT setup); the walk ends at the function's first jmp or ret, or a
   call that is not the i386 GOT setup. A call to a target, or a nop only
   ftpatch writes, that the byte search below finds deeper in a function is a
   site too once decoding the function from its start lands on it: clang's LTO
   inlines a function with its mcount call;
4. none of these (stripped, and built without unwind tables): a linear sweep
   of the code.

Which nop is a nop'd site: at an exact address (1, 2) or at a function's entry
(where __fentry__ is called), every nop ftpatch knows; inside a function (where
mcount is called, after the prologue) only the nops no assembler pads loop heads
with, which is what ftpatch writes there (x86.NopStyle).

Then an independent check (livecalls.py): every call encoding in the code whose destination
is a target (found by its bytes, without decoding) must be one of the sites.
One that is not is reported, and `nop` refuses the file rather than leave a
call live; after a nop the check runs again on the new bytes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, partial

from .demangle import demangle
from .elf import SHF_ALLOC, SHN_UNDEF, SHT_NOBITS, SHT_REL, SHT_RELA, ElfFile, Section, words
from .errors import InputError, VerifyError
from .functions import Functions
from .livecalls import LiveCalls
from .patchable import SECTION, Place, place
from .sites import (
    DEFAULT_TARGETS,
    HOOK_TARGETS,
    RECURSIVE,
    Action,
    Checks,
    Finding,
    Located,
    Redirect,
    ScanResult,
    SiteGroup,
    State,
    at_entry,
    site_state,
)
from .targets import (
    Targets,
    dynamic_relocations,
    is_plt,
    profiling_runtime,
    relative,
    resolve,
    site_sections,
    text_relocations,
)
from .x86 import (
    ENDBR,
    LINKED_PATCHABLE_NOP,
    SITE_LENGTH,
    Arch,
    Form,
    branch_destination,
    decode_lite,
    decode_one,
    find_marked_nops,
    hexbytes,
    inner_form,
    instruction_starts,
    marked_nops,
    nop_slot,
    nops,
    site_opener_search,
    site_openers,
    written_by_ftpatch,
    written_inside,
)

# Why `call --target NAME` cannot call NAME from a linked file.
_UNREACHED = (
    "not a function this file defines or reaches through a PLT entry or a GOT slot (in .symtab or .dynsym), so "
    "no call to it can be written here: link a definition of it in (or a library that exports it, and call it "
    "once so that the link makes its PLT entry), or point the objects' sites at it before the link"
)
UNCALLED = (
    "reaches {names} through its PLT or GOT, but no site calls it: if `ftpatch call --target NAME` pointed its "
    "sites at another function, name that one with --symbol NAME (or --target NAME) to find them"
)
_WINDOW = 64  # instructions decoded from a function's entry, at most
_ENDS = -1  # a run of instructions that ends a walk (_Locator._run)
_SPAN = 512  # bytes decoded from a function's entry, at most
OPAQUE = (
    "is a stripped static program: no symbol is left to say where mcount, _mcount or __fentry__ is, and glibc's "
    "profiling runtime (gmon: __monstartup, _mcleanup) is linked in, so ftpatch cannot tell its profiling calls "
    "from other calls; use the unstripped program, or one built with -mrecord-mcount"
)
RELINKED = (
    "holds {count} nops where profiling calls were, but nothing in it calls mcount, _mcount or __fentry__ any more "
    "(no PLT entry, GOT slot or definition): it was linked from objects whose sites were nop'd, so there is no "
    "call to restore here; run `ftpatch call` on the objects and link again"
)
TEXTREL = (
    "has {count} calls to mcount that the dynamic loader writes at every start (text relocations, the first at "
    "{first:#x}: -fno-pie code linked -pie, DT_TEXTREL), over any nop ftpatch would write there; build with -fpie, "
    "or link with -no-pie"
)
STRIPPED_STATIC = (
    "is a stripped static program: only the calls still live at the sites __mcount_loc lists say where mcount "
    "or __fentry__ is, and a nop'd site says nothing; `call` needs the unstripped program"
)
SWEPT = (
    "has no __mcount_loc, no --emit-relocs relocations, no symbols and no unwind tables, so a nop'd site at a "
    "function's entry cannot be found; `call` needs the unstripped file (or one built with -mrecord-mcount, "
    "-Wl,--emit-relocs, or recorded by `ftpatch record`)"
)


@dataclass(frozen=True)
class Found:
    """A site found in a linked file, by address."""

    va: int
    form: Form
    target: str | None
    state: State
    code: bytes
    call: bytes | None
    doubt: str = ""  # a nop'd site that more than one call could have made: what they are (SiteGroup.doubt)
    calls: frozenset[bytes] = frozenset()  # a nop'd site: every call it could have been


class _Locator:
    def __init__(self, elf: ElfFile, targets: Targets, functions: Functions, patchable: Collection[int]) -> None:
        self.elf = elf
        self.arch: Arch = elf.arch
        self.targets = targets
        self.functions = functions
        self._runs: dict[bytes, int | None] = {}  # _run's answer for each run of bytes a walk met
        # readback's answer for each (exact, form, target, nop, the bytes after it, its place, patchable) it met
        self._readbacks: dict[tuple[bool, Form, str | None, bytes, bytes, bool | None, bool], bool] = {}
        # The -fpatchable-function-entry sites: where the compiler left nops and ftpatch writes only a 5-byte call.
        # A 6-byte window there may be ftpatch's nop and the filler a call left after it (0f 1f 44 00 08 90 over
        # clang's 66 0f 1f 44 00 08), no nop'd 6-byte site.
        self.patchable = frozenset(patchable)
        # What walk asks of every function's bytes: which can begin a site, and where the next such byte is.
        self._openers, self._opener = site_openers(self.arch), site_opener_search(self.arch)

    def classify(self, va: int, window: bytes, entry: bool | None, exact: bool) -> Found | None:
        """What the bytes at `va` are as a site: a live call to a target, or a nop that replaced one.

        `entry`: at a function's entry (True), inside one (False), or unknown (None).
        `exact`: the address is known to be a site's, so bytes that are neither make it OTHER.
        """
        call = self.targets.call_at(window, va)
        if call is not None:
            return Found(va, call.form, call.target.name, State.CALL, call.code, call.code)
        for length in (5,) if va in self.patchable else (6, 5):
            code = window[:length]
            if len(code) < length:
                continue
            for kind in self._kinds(code, entry, exact):
                said = inner_form(code, self.arch)
                options = self.targets.calls(va, length, kind, said, nop_slot(code, self.arch))
                doubt = ""
                if not options and said is not None and said is not Form.TAIL:
                    # The nop replaced a call of a form no target has here: one to a function a --target
                    # named, which this scan does not. It is a site still, for `call --target` to say what it calls.
                    options = self.targets.calls(va, length, kind)
                    doubt = (
                        f"the nop replaced a {said.value} call, a form no call to {', '.join(self.targets.names)} "
                        "takes here: name the function it called with --symbol NAME, or say which with "
                        "`call --target NAME`"
                    )
                if not options:
                    continue
                if len(options) > 1 and not doubt:
                    calls = ", ".join(sorted({f"{o.form.value} to {o.target.name}" for o in options.values()}))
                    doubt = f"the nop could have been the call of any of {calls}"
                    if any(at_entry(o.target.name) is None for o in options.values()):
                        doubt += ": say which with `call --target NAME`"
                first = next(iter(options.values()))
                return Found(va, first.form, first.target.name, State.NOP, code, first.code, doubt, frozenset(options))
        if not exact:
            return None
        options = {**self.targets.calls(va, 6, entry), **self.targets.calls(va, 5, entry)}
        if not options:
            # Nothing here calls a target: gcc -mnop-mcount left its nop, with nothing to restore.
            code = window[:5]
            return Found(va, Form.RECORDED, None, State.NOP if code in nops(5, self.arch) else State.OTHER, code, None)
        # Neither a call nor a nop where a site must be: the call it should be is the one it resembles.
        best = next((c for c in options.values() if window.startswith(c.code[:-4])), next(iter(options.values())))
        return Found(va, best.form, best.target.name, State.OTHER, window[: len(best.code)], best.code)

    def readback(self, exact: bool, group: SiteGroup, new: bytes, positions: Sequence[int]) -> list[int]:
        """Of these sites of the group, those `call` would not find again, with their exact call, were `new`
        written over them."""
        lost = []
        # Where every target is in rel32 reach of all the code, what classify makes of a nop depends on its
        # bytes, the bytes after it, its place and whether it is a patchable site, not on its address (a group's
        # calls are all of one form and target): decided once for each of those in the file.
        decided = self._readbacks if self._reach_everywhere else None
        elf, functions, size = self.elf, self.functions, len(new)
        for i in positions:
            section, start = group.sections[i], group.starts[i]
            va = section.sh_addr + start
            # The bytes after the nop: in the site's section, known here, unless the site ends it.
            inside = start + size < section.sh_size
            after = elf.read_in(section, start + size, 6 - size) if inside else elf.read(va + size, 6 - size)
            entry = functions.entry(va, listed=exact) if functions else False
            key = (exact, group.form, group.target, new, after, entry, va in self.patchable)
            if decided is not None and key in decided:
                gone = decided[key]
            else:
                gone = self._lost(self.classify(va, new + after, entry, exact), group.calls[i])
                if decided is not None:
                    decided[key] = gone
            if gone:
                lost.append(i)
        return lost

    def _lost(self, found: Found | None, call: bytes | None) -> bool:
        """Whether `call` cannot find the site again as `found` reads it, with the call it had."""
        if found is None or found.state is not State.NOP or call not in found.calls:
            return True
        # Several calls of the file's own targets: `call` could not say which, and nothing would tell it.
        return bool(found.doubt) and not any(at_entry(t) is None for t in self.targets.names)

    @cached_property
    def _reach_everywhere(self) -> bool:
        """Whether every place a call to a target can go to is within rel32 reach of every code address."""
        code = self.elf.code_sections
        dests = [d for t in self.targets.targets for d in (*t.rel32_destinations, *t.slots)]
        if not code or not dests:
            return True
        low, high = min(*dests, code[0].sh_addr), max(*dests, max(s.sh_addr + s.sh_size for s in code))
        return high - low < 2**31 - 16

    def redirect(self, group: SiteGroup, name: str) -> Redirect:
        """Each site's call to `name`, a function this file defines or reaches through a PLT entry or a GOT
        slot: an `e8` (or `e9`, or gcc -mnop-mcount's nop) calls its PLT entry, else its definition; a 6-byte
        site calls through its GOT slot in the site's own form, else `67 e8` to its definition."""
        target = self.targets.named(name)
        if target is None:
            raise self.elf.fail(f"{name}: {_UNREACHED}")
        calls: list[bytes | None] = []
        refused: dict[int, str] = {}
        for i, (section, start) in enumerate(zip(group.sections, group.starts, strict=True)):
            va = section.sh_addr + start
            call = self.targets.call_to(target, group.form, va)
            around = self.functions.containing(va)
            if call is None:
                refused[i] = (
                    f"cannot call {name} in {SITE_LENGTH[group.form]} bytes: it has no GOT slot here and is not "
                    "defined here, or is out of rel32 reach"
                )
            elif target.address is not None and around is not None and around[0] == target.address:
                refused[i] = RECURSIVE.format(name=name)
            calls.append(call)
        return Redirect(tuple(calls), refused=refused)

    def _kinds(self, code: bytes, entry: bool | None, exact: bool) -> tuple[bool | None, ...]:
        """Which targets a nop here may have called, most likely first: entry (True), inside (False) or any (None).

        A nop'd entry site holds any known nop; a nop'd site inside a function holds one that
        only ftpatch writes, since gas pads loop heads with the plain ones. At an exact
        address the bytes need not say: the address does.
        """
        if code not in nops(len(code), self.arch):
            return ()
        if written_inside(code, self.arch):
            return (False,)
        distinctive = code in marked_nops(len(code), self.arch)
        if entry is None:
            return (None,) if exact or distinctive else ()
        if entry:
            return (True, False) if distinctive or exact else (True,)
        return (False,) if distinctive or exact else ()

    def where(self, va: int) -> str:
        return _where(self.elf, self.functions, va)

    def walk(self, i: int) -> Found | None:
        """The site of the i-th function: the first call to a target, or nop in a site's place, from its entry.

        A run of bytes none of which can begin a site (site_openers) is decoded once for the whole
        file: prologues repeat (`push %rbp; mov %rsp,%rbp`), and a run decodes alike wherever it is.
        The rest is decoded an instruction at a time, as capstone decodes the function from its entry."""
        start = self.functions.starts[i]
        sec = self.elf.section_at(start)
        if sec is None or is_plt(sec):  # the unwind tables cover the PLT too
            return None
        code = self.elf.read_in(sec, start - sec.sh_addr, (self.functions.end(i, _SPAN) or start) - start)
        openers, opener = self._openers, self._opener
        at = entry = n = 0
        while at < len(code) and n < _WINDOW:
            if not openers[code[at]]:
                stop = found.start() if (found := opener.search(code, at)) else len(code)
                run = code[at:stop]
                if run not in self._runs:
                    self._runs[run] = self._run(run)
                count = self._runs[run]
                if count == _ENDS:
                    return None
                if count is not None:  # whole instructions, ending where the run does
                    if n + count > _WINDOW:
                        return None
                    at, n = stop, n + count
                    continue
            va = start + at
            if at == entry and code[at : at + 4] in ENDBR:
                at = entry = at + 4
                n += 1
                continue
            if openers[code[at]] and (site := self.classify(va, code[at : at + 6], at == entry, exact=False)):
                return site
            decoded = decode_one(code[at:], self.arch, va)
            if decoded is None:
                return None
            size, mnemonic = decoded[1], decoded[2]
            if _ends_walk(mnemonic) or (mnemonic.endswith("call") and not self._sets_up_got(code, at, va, size)):
                return None
            at += size
            n += 1
        return None

    def _run(self, run: bytes) -> int | None:
        """How many instructions `run`, bytes none of which can begin a site, decodes to: _ENDS if one of them
        ends a walk (no call in it can be the i386 GOT set-up, which begins with e8), None if they do not end
        where the run does (an instruction goes on past it)."""
        count = end = 0
        for _, size, mnemonic, _ops in decode_lite(run, self.arch):
            if _ends_walk(mnemonic) or mnemonic.endswith("call"):
                return _ENDS
            count, end = count + 1, end + size
        return count if end == len(run) else None

    def on_instructions(self, candidates: Iterable[int]) -> set[int]:
        """The candidates that begin an instruction of their function, decoded from its start.

        The byte search finds calls and ftpatch's nops anywhere, also inside other instructions
        (`eb 2e` then gas's `8d 74 26 00` hold `2e 8d 74 26 00`); decoding tells them apart.
        """
        by_function: dict[int, set[int]] = {}
        for va in candidates:
            by_function.setdefault(self.functions.index(va), set()).add(va)
        found: set[int] = set()
        for i, wanted in sorted(by_function.items()):
            start = self.functions.starts[i] if i >= 0 else None
            sec = self.elf.section_at(start) if start is not None else None
            if start is None or sec is None:
                continue
            end = self.functions.end(i, span=None)
            end = min(end, sec.sh_addr + sec.sh_size) if end is not None else sec.sh_addr + sec.sh_size
            found |= instruction_starts(self.elf.read(start, end - start), self.arch, start, wanted)
        return found

    def inside(self, candidates: Iterable[int]) -> Iterator[Found]:
        """The sites among `candidates` (addresses where the bytes hold a call to a target, or a nop only
        ftpatch writes) that begin an instruction of their function.

        The walk from a function's entry finds its one site; clang's LTO inlines a function with
        its mcount call, so a site can also sit deep inside another function.
        """
        for va in sorted(self.on_instructions(candidates)):
            found = self.classify(va, self.elf.read(va, 6), self.functions.entry(va), exact=False)
            if found is not None:
                yield found

    def _sets_up_got(self, code: bytes, at: int, va: int, size: int) -> bool:
        """An i386 PIC prologue's call: `call .+5` (clang) or `call __x86.get_pc_thunk.*` (gcc)."""
        if self.arch.x86_64 or size != 5 or code[at] != 0xE8:
            return False
        dest = branch_destination(code[at:], va, 5)
        thunk = self.elf.read(dest, 4)  # mov (%esp),%reg; ret
        return dest == va + 5 or (len(thunk) == 4 and thunk[0] == 0x8B and thunk[2] == 0x24 and thunk[3] == 0xC3)

    def sweep(self) -> Iterator[Found]:
        """Every call to a target, and nop ftpatch wrote inside a function, in a linear decode of the code."""
        for sec in site_sections(self.elf):
            code = bytes(self.elf.section_data(sec))
            pos = 0
            while pos < len(code):
                end = pos
                for va, size, _mnemonic, _ops in decode_lite(code[pos:], self.arch, sec.sh_addr + pos):
                    at = va - sec.sh_addr
                    found = self.classify(va, code[at : at + 6], False, exact=False)
                    if found is not None:
                        yield found
                    end = at + size
                pos = end + 1  # past the byte capstone could not decode

    def exact(self, table: str, addresses: Iterable[int]) -> Iterator[Found]:
        for va in addresses:
            if not self.elf.in_code(va):
                raise self.elf.fail(f"site {va:#x}, listed in {table}, is not in the file's executable code")
            found = self.classify(va, self.elf.read(va, 6), self.functions.entry(va, listed=True), exact=True)
            assert found is not None  # an exact address always classifies
            yield found

    def emitted(self, relocated: Iterable[int]) -> Iterator[Found]:
        """The sites whose displacement these kept relocations relocate: 2 bytes into a 6-byte site, or 1
        into an `e8` (bfd retypes a GOT call it relaxed to `67 e8`, so the type does not say which)."""
        for disp in relocated:
            for va, length in ((disp - 2, 6), (disp - 1, 5)):
                found = self.classify(va, self.elf.read(va, 6), self.functions.entry(va), exact=False)
                if found is not None and len(found.code) == length:
                    yield found
                    break
            else:
                # Neither a call nor a nop: garbage where a site must be, as long as its opcode says.
                six = self.elf.read(disp - 2, 2) in (b"\x67\xe8", b"\xff\x15", b"\xff\x93")
                va = disp - 2 if six else disp - 1
                found = self.classify(va, self.elf.read(va, 6), self.functions.entry(va), exact=True)
                assert found is not None  # an exact address always classifies
                yield found


_KERNEL_TABLE = ("__start_mcount_loc", "__stop_mcount_loc")


def _where(elf: ElfFile, functions: Functions, va: int) -> str:
    """An address for a message: its function and its place in its section."""
    sec = elf.section_at(va)
    around = functions.containing(va)
    place = sec.where(va - sec.sh_addr) if sec else f"{va:#x}"
    return f"{demangle(around[1])} ({place})" if around and around[1] else place


def _patchable(elf: ElfFile, functions: Functions) -> tuple[list[Place], list[str]]:
    """The site of every entry of __patchable_function_entries, where its function is entered (functions.starts:
    .symtab, .dynsym, the unwind tables), and why a call cannot go where the others are entered. An entry
    outside the code is refused as ftrace_bug refuses a bad site: nothing is written."""
    sec = elf.section_named(SECTION)
    if sec is None or sec.sh_type == SHT_NOBITS:
        return [], []
    places: list[Place] = []
    reasons: list[str] = []
    for va in _addresses(elf, SECTION, sec.sh_addr, bytes(elf.section_data(sec)), elf.arch.word):
        if not elf.in_code(va):
            raise VerifyError("", f"an entry of {SECTION} points outside the file's executable code, at {va:#x}")
        found = place(va, elf.read, functions.starts, elf.arch, partial(_where, elf, functions))
        if isinstance(found, str):
            reasons.append(found)
        else:
            places.append(found)
    return places, reasons


def _addresses(elf: ElfFile, name: str, start: int, raw: bytes, entry: int) -> list[int]:
    """The addresses a table of `entry`-byte words at `start` lists; in a PIE, from the R_*_RELATIVE addends.
    The entry of a function the link discarded (--gc-sections) is 0."""
    if len(raw) % entry:
        raise elf.fail(f"{name} is {len(raw):#x} bytes, not a multiple of {entry}")
    listed = dict(zip(range(start, start + len(raw), entry), words(raw, entry), strict=True))
    if elf.arch.rela:
        for va, addend in relative(dynamic_relocations(elf), elf.arch).items():
            if va in listed:
                listed[va] = addend
    return sorted({va for va in listed.values() if va})


def _site_table(elf: ElfFile) -> tuple[str, list[int]]:
    """The file's site table, named as errors name it, and the addresses it lists: __mcount_loc, or a kernel
    image's table between __start_mcount_loc and __stop_mcount_loc (vmlinux.lds.h gathers __mcount_loc and
    __patchable_function_entries there, inside .init.data); in a PIE, from the R_*_RELATIVE addends."""
    sec = elf.section_named("__mcount_loc")
    bounds = _kernel_table(elf) if sec is None or sec.sh_type == SHT_NOBITS else None
    if sec is not None and sec.sh_type != SHT_NOBITS:
        name, start, raw = "__mcount_loc", sec.sh_addr, bytes(elf.section_data(sec))
    elif bounds is not None:
        name, (start, stop) = "the table between __start_mcount_loc and __stop_mcount_loc", bounds
        raw = elf.read(start, stop - start)
        if len(raw) != stop - start:
            raise elf.fail(f"{name} ({start:#x} to {stop:#x}) is not all in one loaded section with file bytes")
    else:
        return "", []
    return name, _addresses(elf, name, start, raw, elf.arch.mcount_loc_entry)


def _kernel_table(elf: ElfFile) -> tuple[int, int] | None:
    """Where a kernel image's site table starts and stops, if its symbols say so."""
    if not elf.has_symtab:
        return None
    symbols = elf.symbols
    places = {name: symbols.place(i) for i, name in symbols.named(_KERNEL_TABLE).items()}
    if len(places) != 2 or any(shndx == SHN_UNDEF for shndx, _ in places.values()):
        return None
    start, stop = (places[name][1] for name in _KERNEL_TABLE)
    if stop < start:
        raise elf.fail(f"__stop_mcount_loc ({stop:#x}) is before __start_mcount_loc ({start:#x})")
    return start, stop


def _emitted(elf: ElfFile, names: Iterable[str]) -> list[int]:
    """The displacement addresses of call relocations against a target that `ld --emit-relocs` kept."""
    if not elf.has_symtab:
        return []
    tables: list[tuple[Section, Section | None]] = [
        (s, sec)
        for s in elf.sections
        if s.sh_type in (SHT_REL, SHT_RELA)
        and not s.sh_flags & SHF_ALLOC
        and s.sh_link == elf.symtab.shndx
        and (sec := elf.applied_to(s)).is_code
    ]
    if not tables:
        return []
    names = list(names)
    arch, wanted = elf.arch, elf.symbols.named([*names, *elf.symbols.versioned(names)])
    entries = elf.relocations(tables, len(elf.symbols))
    # bfd retypes a relaxed GOT call's relocation (R_X86_64_PC32, R_386_PC32): every call type is kept.
    calls = set(arch.call_forms)
    return sorted(
        entries.r_offset[i]
        for r_info in entries.values
        if arch.r_sym(r_info) in wanted and arch.r_type(r_info) in calls
        for i in entries.holding(r_info)
    )


def scan_linked(path: str, elf: ElfFile, names: Iterable[str]) -> ScanResult:
    names = tuple(names)
    functions = Functions(elf)
    table, recorded = _site_table(elf)
    targets = resolve(elf, names, {va: functions.entry(va, listed=True) for va in recorded})
    places, too_small = _patchable(elf, functions)
    patchable = {p.site for p in places}
    locator = _Locator(elf, targets, functions, patchable)
    located, found, refused, blind = _locate(elf, names, table, recorded, targets, functions, locator, patchable)
    sites = {f.va: f for f in found}
    findings: list[Finding] = []
    for p in places:
        if p.site not in sites:
            call = targets.call_at(p.code, p.site)
            sites[p.site] = (
                Found(p.site, call.form, call.target.name, State.CALL, call.code, call.code)
                if call is not None
                else Found(p.site, Form.PATCHABLE, None, site_state(p.code, None, elf.arch), p.code, None)
            )
    if places and located is Located.NOWHERE and not refused:
        located = Located.PATCHABLE
    if too_small:
        more = f" (and {len(too_small) - 1} more functions)" if len(too_small) > 1 else ""
        findings.append(Finding(f"has a site that no call fits: {too_small[0]}{more}", frozenset({Action.CALL})))
    if refused:
        findings.append(Finding(refused, frozenset(Action)))
    if blind:
        findings.append(Finding(blind, frozenset({Action.CALL})))
    imported = [t.name for t in targets.targets if (t.plt or t.slots) and t.name in DEFAULT_TARGETS]
    if not found and imported and located in (Located.FUNCTIONS, Located.SWEEP):
        findings.append(Finding(UNCALLED.format(names=", ".join(imported))))
    loose_nops: list[str] = []
    live_calls = None
    if targets:
        live_calls = LiveCalls(targets, tuple((s.sh_addr, s.sh_offset, s.sh_size) for s in site_sections(elf)))
        calls = live_calls(elf.data)
        nopped = _ftpatch_nops(elf)
        if located is Located.FUNCTIONS or (located is Located.MCOUNT_LOC and functions):
            # What the byte search finds beyond the walks' sites: sites deep in a function, once decoding confirms them.
            ends = _live_ends(elf, sites)
            candidates = [va for end in calls if end not in ends for va in (_va(elf, end) - 5, _va(elf, end) - 6)]
            candidates += [va for va, _ in nopped if va not in sites]
            inside = locator.inside(candidates)
            if located is Located.MCOUNT_LOC:
                # __mcount_loc lists mcount's and __fentry__'s sites, never the -finstrument-functions hooks' (gcc
                # -mrecord-mcount, ftpatch record): those are found as in a file without the table. Any other
                # call it does not list stays a call at no site.
                inside = (f for f in inside if f.target in HOOK_TARGETS)
            sites.update((f.va, f) for f in inside)
        ends = _live_ends(elf, sites)
        findings += [
            Finding(
                f"{text}: a call to a profiling target that is not at a site ftpatch knows", frozenset({Action.NOP})
            )
            for end, text in sorted(calls.items())
            if end not in ends
        ]
        loose = [(va, nop) for va, nop in nopped if va not in sites]
        real = locator.on_instructions(va for va, _ in loose) if functions else set()
        loose_nops = [
            f"{locator.where(va)}: holds {hexbytes(nop)}, a nop ftpatch writes at a site, where no site is"
            for va, nop in loose
            if va in real
        ]
    exact = located in (Located.MCOUNT_LOC, Located.EMIT_RELOCS)
    checks = LinkedChecks(functions, tuple(loose_nops), live_calls, locator if targets else None, exact)
    return ScanResult(
        path,
        elf.type_name,
        elf.arch,
        elf.data,
        _groups(elf, sites.values(), functions, patchable),
        located,
        tuple(findings),
        checks,
    )


def _locate(
    elf: ElfFile,
    names: tuple[str, ...],
    table: str,
    recorded: list[int],
    targets: Targets,
    functions: Functions,
    locator: _Locator,
    patchable: Collection[int],
) -> tuple[Located, list[Found], str, str]:
    """Where the sites are, by the first strategy the file allows: (how they were located, the sites found,
    why every action refuses the file, why `call` does); the last two "" where nothing stops them."""
    if recorded:
        blind = STRIPPED_STATIC if targets.from_calls else ""
        return Located.MCOUNT_LOC, list(locator.exact(table, recorded)), "", blind
    if textrels := text_relocations(elf, names):
        return Located.NOWHERE, [], TEXTREL.format(count=len(textrels), first=textrels[0]), ""
    if not targets:
        # Nothing imports or defines a target by name. With .symtab, a definition would have one; without
        # it, one can hide only in a profiling runtime linked in, and glibc's says it is there.
        if not elf.has_symtab and profiling_runtime(elf):
            return Located.NOWHERE, [], OPAQUE, ""
        count = _nopped_without_targets(elf, functions, locator, patchable)
        return Located.NOWHERE, [], "", RELINKED.format(count=count) if count else ""
    if emitted := _emitted(elf, names):
        return Located.EMIT_RELOCS, list(locator.emitted(emitted)), "", ""
    if functions:
        return (
            Located.FUNCTIONS,
            [site for i in range(len(functions.starts)) if (site := locator.walk(i)) is not None],
            "",
            "",
        )
    blind = SWEPT if any(t.entry is not False for t in targets.targets) else ""
    return Located.SWEEP, list(locator.sweep()), "", blind


class LinkedChecks(Checks):
    """A linked file's checks: the names of its sites' functions, the byte search for live calls, and the
    locator that reads a nop back as `call` would."""

    def __init__(
        self,
        functions: Functions,
        strays: tuple[str, ...],
        live: LiveCalls | None,
        locator: _Locator | None,
        exact: bool,
    ) -> None:
        self.functions = functions  # where the file's functions start, and their names
        self.found_strays = strays
        self.live = live  # None where no target is reached: no call can be live
        self.locator = locator
        self.exact = exact  # the sites' addresses are known (__mcount_loc, --emit-relocs), not found by their bytes

    def function_at(self, section: Section, offset: int) -> str | None:
        return self.functions.name(section.sh_addr + offset)

    def strays(self) -> tuple[str, ...]:
        return self.found_strays

    def readback(self, group: SiteGroup, new: bytes, positions: Sequence[int]) -> list[int]:
        return self.locator.readback(self.exact, group, new, positions) if self.locator else []

    def live_calls(self, data: bytes | bytearray) -> Mapping[int, str]:
        return self.live(data) if self.live else {}

    def redirect(self, group: SiteGroup, name: str) -> Redirect:
        """Each site's call to `name`: see _Locator.redirect."""
        if self.locator is None:
            raise InputError("", f"{name}: {_UNREACHED}")
        return self.locator.redirect(group, name)


def _ends_walk(mnemonic: str) -> bool:
    """Whether a walk from a function's entry stops at this instruction: control leaves the prologue."""
    return mnemonic.endswith(("jmp", "ret")) or mnemonic in ("ud2", "hlt", "int3", "iretd", "iretq")


def _ftpatch_nops(elf: ElfFile) -> list[tuple[int, bytes]]:
    """(address, bytes) of every nop in the code that only ftpatch writes, by a search of its bytes."""
    return [
        (sec.sh_addr + at - sec.sh_offset, nop)
        for sec in site_sections(elf)
        for at, nop in find_marked_nops(elf.data, elf.arch, sec.sh_offset, sec.sh_offset + sec.sh_size).items()
    ]


def _nopped_without_targets(elf: ElfFile, functions: Functions, locator: _Locator, patchable: Collection[int]) -> int:
    """How many instructions are nops only ftpatch writes, or ftpatch's nops at a function's entry; not the
    -fpatchable-function-entry sites, whose nop clang writes too."""
    if not functions:
        return 0
    at_entries = {
        start
        for start in functions.starts
        if start not in patchable and any(written_by_ftpatch(elf.read(start, n), elf.arch) for n in (5, 6))
    }
    return len(at_entries | locator.on_instructions(va for va, _ in _ftpatch_nops(elf)))


def _live_ends(elf: ElfFile, sites: dict[int, Found]) -> set[int]:
    """The file offset where each live site's call ends, as LiveCalls keys the calls it finds."""
    return {_file_offset(elf, f.va) + len(f.code) for f in sites.values() if f.state is State.CALL}


def _va(elf: ElfFile, offset: int) -> int:
    """The address of a file offset inside a code section."""
    sec = next(s for s in elf.code_sections if s.sh_offset <= offset <= s.sh_offset + s.sh_size)
    return sec.sh_addr + offset - sec.sh_offset


def _file_offset(elf: ElfFile, va: int) -> int:
    sec = elf.section_at(va)
    assert sec is not None
    return sec.sh_offset + va - sec.sh_addr


def _groups(
    elf: ElfFile, found: Iterable[Found], functions: Functions, patchable: Collection[int]
) -> tuple[SiteGroup, ...]:
    """Sites as groups, one per form, target, place (at a function's entry or not), doubt and whether a call fills
    a -fpatchable-function-entry site (whose nop is then always LINKED_PATCHABLE_NOP); each site keeps its section
    and its own call. A target's name says its place (__fentry__, mcount), or its site's place does."""
    grouped: dict[tuple[Form, str | None, bool, str, bool], list[tuple[Section, Found]]] = {}
    for f in sorted(found, key=lambda f: f.va):
        sec = elf.section_at(f.va)
        assert sec is not None
        kind = at_entry(f.target)
        entry = kind if kind is not None else bool(functions.entry(f.va))
        filled = f.form is not Form.PATCHABLE and f.va in patchable
        grouped.setdefault((f.form, f.target, entry, f.doubt, filled), []).append((sec, f))
    return tuple(
        SiteGroup(
            form,
            target,
            tuple(sec for sec, _ in group),
            tuple(f.va - sec.sh_addr for sec, f in group),
            tuple(f.code for _, f in group),
            tuple(f.call for _, f in group),
            entry=entry,
            doubt=doubt,
            compiler_nop=LINKED_PATCHABLE_NOP if filled else None,
        )
        for (form, target, entry, doubt, filled), group in grouped.items()
    )
