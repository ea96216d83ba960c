"""What the command line reports, as text: the site table, the lines of a run, the JSON documents.

Pure functions of results: cli.py prints what they return and decides the exit code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .demangle import available, demangle, without_parameters
from .errors import FtpatchError, printable
from .sites import Action, ScanResult, Site, State, called_elsewhere

if TYPE_CHECKING:
    from .batch import Outcome


_SCALARS = frozenset({str, int, bool, type(None)})


def json_text(doc: object) -> str:
    """`json.dumps(doc, indent=2)`, character for character, in a fraction of its time on a big report.

    With an indent, json encodes in Python, a few generator steps a value: a 50,000-site `scan --json` took
    longer to print than to scan. Here the values of a list of flat dicts (the sites) are encoded by json's
    C encoder in one call, with NUL between them, which no encoded value holds (json escapes every control
    character), and each dict is laid out from one template of its keys; the rest is encoded as json does."""
    import json  # here: the one-line runs of a per-object build rule never pay for it

    def flat(items: list[Any], depth: int) -> str | None:
        """The items of a list of dicts of str keys and scalar values, at `depth`, joined; None if not such."""
        if not all(type(d) is dict for d in items):
            return None
        shapes = {tuple(d) for d in items}
        if not all(type(k) is str for keys in shapes for k in keys):
            return None
        values = [v for d in items for v in d.values()]
        if not {*map(type, values)} <= _SCALARS:
            return None
        encoded = json.dumps(values, separators=("\0", ": "))[1:-1].split("\0") if values else []
        pad = "\n" + "  " * (depth + 1)

        def template(keys: tuple[str, ...]) -> str:
            fields = ",".join(f"{pad}{json.dumps(k).replace('%', '%%')}: %s" for k in keys)
            return "{" + fields + pad[:-2] + "}" if keys else "{}"

        if len(shapes) == 1:  # every site has the same keys: one formatting of all of them
            return ("," + pad[:-2]).join([template(shapes.pop())] * len(items)) % tuple(encoded)
        out, at = [], 0
        for d in items:
            out.append(template(tuple(d)) % tuple(encoded[at : at + len(d)]))
            at += len(d)
        return ("," + pad[:-2]).join(out)

    def text(value: object, depth: int) -> str:
        pad = "\n" + "  " * (depth + 1)
        if type(value) is dict and value and all(type(k) is str for k in value):
            inner = [f"{json.dumps(k)}: {text(v, depth + 1)}" for k, v in value.items()]
            return "{" + pad + ("," + pad).join(inner) + pad[:-2] + "}"
        if type(value) in (list, tuple) and value:
            items: list[Any] = list(value)  # type: ignore[call-overload]
            joined = flat(items, depth + 1)
            if joined is None:
                joined = ("," + pad).join([text(v, depth + 1) for v in items])
            return "[" + pad + joined + pad[:-2] + "]"
        # Scalars, empty containers, anything else: json's own text, indented to this depth.
        return json.dumps(value, indent=2).replace("\n", "\n" + "  " * depth)

    return text(doc, 0)


def scan_entry(result: ScanResult, sites: Sequence[Site], failure: tuple[int, str] | None) -> dict[str, object]:
    """One file of `scan --json`: its sites, how they were located, what the scan concluded, and where the scan
    fails on it, its exit code and the first error that gives it."""
    entry: dict[str, object] = {
        "path": result.path,
        "machine": result.machine,
        "type": result.type,
        "located": result.located.value,
        "sites": [s.to_json() for s in sites],
        "filtered": len(result.sites) - len(sites),
        "unclassified": [f.text for f in result.stopping(Action.NOP) if Action.CALL not in f.stops],
        "warnings": list(result.warnings),
    }
    if failure is not None:
        entry |= {"error": printable(failure[1]), "exit_code": failure[0]}
    return entry


def unreadable_entry(error: FtpatchError, exit_code: int) -> dict[str, object]:
    """A file of `scan --json` that could not be scanned at all."""
    return {"path": error.path, "error": str(error), "exit_code": exit_code}


@dataclass(frozen=True)
class Verdict:
    """What `scan` says of one file besides its table: errors (each with whether a site's bytes are wrong,
    which is exit 3, rather than the file being unusable, exit 1) and warnings, each a whole line's text."""

    errors: tuple[tuple[str, bool], ...]
    warnings: tuple[str, ...]


def scan_verdict(result: ScanResult, sites: Sequence[Site]) -> Verdict:
    """A finding that stops `nop` is an error; one that stops only `call`, or nothing, a warning. What `call`
    cannot restore and sites that hold neither their call nor a nop are errors of the bytes."""
    errors = [(f"{result.path}: {f.text}", False) for f in result.findings if f.error]
    warnings = [
        f"{result.path}: `ftpatch call` refuses this file: it {f.text}" if f.stops else f"{result.path}: {f.text}"
        for f in result.findings
        if not f.error
    ]
    errors += [(f"{result.path}: {stray}", True) for stray in result.strays]
    # A nop'd site `call` cannot restore alone, which `call --target NAME` can: what the user must know.
    shown = {(s.section, s.offset) for s in sites}
    for group in result.groups:
        doubted = [i for i, at in enumerate(group.starts) if group.doubt and (group.sections[i].name, at) in shown]
        if doubted:
            first = result.site(group, doubted[0])
            more = f" (and {len(doubted) - 1} more sites)" if len(doubted) > 1 else ""
            warnings.append(f"{result.path}: {first.where}: {group.doubt}{more}")
    errors += [(wrong_site(result, site), True) for site in sites if site.state is State.OTHER]
    return Verdict(tuple(errors), tuple(warnings))


def wrong_site(result: ScanResult, site: Site) -> str:
    return (
        f"{result.path}: {site.where}: holds {site.code.hex(':')}, neither the {site.form.value} call nor a known nop"
        + called_elsewhere(site)
    )


def unmatched(only: Sequence[str], exclude: Sequence[str], matched: set[str], files: int) -> list[str]:
    """A warning for each glob that matched no function with a site in the whole run, said once: in a batch,
    most files not matching a glob is normal, and no file matching it is a typo or a name written another way."""
    if not files:
        return []  # every file failed, and its error says so
    where = "the file" if files == 1 else f"any of the {files} files"
    warnings = []
    for option, globs in (("--only", only), ("--except", exclude)):
        for glob in dict.fromkeys(globs):
            if glob in matched:
                continue
            hint = (
                "; C++ names cannot be demangled here (libstdc++.so.6 did not load): match their symbols"
                if "::" in glob and not available()
                else ""
            )
            warnings.append(
                f"{option} {glob!r} matched no function with a site in {where}; a glob matches a function's symbol, its "
                f"demangled name, or that name without parameters (`ftpatch scan --json` lists both){hint}"
            )
    return warnings


# A section of one function's own, named after its symbol or a C++ one (an alias: a destructor's
# D2 section holds D1 too): C++ inline functions and templates, -ffunction-sections.
_OWN_SECTION = re.compile(r"(\.text(?:\.unlikely|\.hot|\.startup|\.exit)?)\.(.+)")


def _where(site: Site) -> str:
    section = site.section
    # Such a section's name is as long as a mangled symbol, and the table shows the function demangled:
    # `.text.*` says it in 7 columns (--json has the name).
    own = _OWN_SECTION.fullmatch(section) if section.startswith(".text.") else None
    if own and (own[2] == site.function or own[2].startswith("_Z")):
        section = f"{own[1]}.*"
    return f"{section}+{site.offset:#x}"


def site_table(result: ScanResult, sites: Sequence[Site], filtered: int | None, width: int | None) -> list[str]:
    """A file's summary line, then a row a site; `width`: the terminal's, None when piped (every name whole)."""

    calls = sum(s.state is State.CALL for s in sites)
    left_out = f", {filtered} filtered out" if filtered is not None else ""
    lines = [
        f"{result.path}: {result.machine} {result.type}, {len(sites)} sites ({calls} call, {len(sites) - calls} not){left_out}"
    ]
    if not sites:
        return lines
    # The function comes last: the one column with no bound, it pushes no other column when long.
    # (A site's length is its form's: --json has it.) Built a column at a time: a 50,000-site object's
    # table costs about what patching it does.
    columns = [
        ["where", *map(_where, sites)],
        ["file_offset", *(f"{s.file_offset:#x}" for s in sites)],
        ["form", *(s.form.value for s in sites)],
        ["target", *(s.target or "-" for s in sites)],
        ["state", *(s.state.value for s in sites)],
    ]
    names = ["function", *(demangle(s.function) if s.function else "?" for s in sites)]
    widths = [max(map(len, column)) for column in columns]
    # On a terminal a row fits its width, as ps does; piped, every name is whole, for grep.
    room = width - sum(widths) - 2 * (len(columns) + 1) if width is not None else None
    padded = [[cell.ljust(w) for cell in column] for column, w in zip(columns, widths, strict=True)]
    fitted = names if room is None else [_fit(name, room) for name in names]
    lines += (printable("  " + "  ".join(cells)) for cells in zip(*padded, fitted, strict=True))
    return lines


def _fit(name: str, room: int | None) -> str:
    """A demangled name in `room` columns: whole, else without its parameters, else cut."""

    if room is None or len(name) <= room:
        return name
    bare = without_parameters(name)
    short = f"{bare}(...)" if bare != name else name
    return short if len(short) <= room else short[: max(room - 3, 12)] + "..."


@dataclass(frozen=True)
class Words:
    """How a command that writes files reports: its JSON keys and its lines."""

    action: str
    label: str  # the progress bar's
    changed: str  # a changed file's status
    counts: dict[str, str]  # JSON key -> the Outcome field it reports
    line: Callable[[Outcome], str]  # one file's line, after its path
    summary: Callable[[dict[str, int]], str]  # the run's line on stderr, from the JSON summary


def patch_words(action: str, record: bool) -> Words:
    counts = {"patched": "patched", "already": "already", "filtered": "filtered"}

    def line(o: Outcome) -> str:
        text = f"{o.patched} patched, {o.already} already {action}, {o.filtered} filtered out"
        return f"{text}; {_table(o) or 'no sites to record'}" if record else text

    def summary(t: dict[str, int]) -> str:
        text = f"{t['patched']} sites patched, {t['already']} already {action}, {t['filtered']} filtered out"
        return f"{text}, {RECORD_WORDS.summary(t)}" if record else text

    return Words(action, "patching", "patched", counts | RECORD_WORDS.counts if record else counts, line, summary)


def _table(o: Outcome) -> str:
    """What record wrote into a file, or found there; "" if it has no sites."""
    kept = o.already_recorded
    if o.recorded:
        left = f", {kept} objects already had __mcount_loc and were left as they were" if kept else ""
        return f"{o.recorded} sites recorded in __mcount_loc{left}"
    if kept:
        return "already has __mcount_loc" if kept == 1 else f"{kept} objects already have __mcount_loc"
    return ""


def _record_line(o: Outcome) -> str:
    if o.recorded:
        return _table(o)
    return f"{_table(o) or 'no profiling call sites'}, left as it was"


RECORD_WORDS = Words(
    "record",
    "recording",
    "recorded",
    {"recorded": "recorded", "already_recorded": "already_recorded"},
    _record_line,
    lambda t: f"{t['recorded']} sites recorded, {t['already_recorded']} objects already had __mcount_loc",
)


def failed_entry(outcome: Outcome, output: str | None, exit_code: int) -> dict[str, object]:
    """A file of a run's JSON that failed: its error, as one line, and the exit code it gave."""
    return {
        "path": outcome.path,
        "output": output or outcome.path,
        "status": "failed",
        "error": str(outcome.error),
        "exit_code": exit_code,
    }


def done_entry(outcome: Outcome, output: str | None, words: Words) -> dict[str, Any]:
    """A file of a run's JSON that succeeded: its status and its counts, by the command's words."""
    return {
        "path": outcome.path,
        "output": output or outcome.path,
        "status": words.changed if outcome.changed else "unchanged",
        **{key: getattr(outcome, field) for key, field in words.counts.items()},
        "warnings": list(outcome.warnings),
    }
