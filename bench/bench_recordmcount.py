#!/usr/bin/env python3
"""Compare ftpatch with Debian's compiled recordmcount, same run, same files.

Prints figures and ratios; it is not a test and asserts nothing.

Run bench/prepare.sh first; it fills the cache dir
(${FTPATCH_BENCH_CACHE:-/var/tmp/ftpatch-bench}) with recordmcount, the pristine
Debian kernel modules (__mcount_loc removed) and big20k.o.

For every corpus and every variant, each repetition:
  1. removes the work copy, then times `cp -r PRISTINE WORK` (the baseline),
  2. times the tool on the fresh copy (wall clock; CPU and peak RSS from
     wait4(), which covers the process and every descendant it reaped),
  3. checks what the tool did (untimed): __mcount_loc entries written, and
     how many of the original __fentry__/mcount call sites are no longer calls.

recordmcount variants:
  rm-each      one process per file, sequentially, via `xargs -P1` (what kbuild
               does per object)
  rm-xargs-P2  one process per file, via `xargs -P2` (kbuild with make -j2)
  rm-batch     all files in one process (argv split only if it would not fit)

ftpatch variants (skipped, with a note, if the command is not found):
  record-j2    ftpatch record --in-place --files-from LIST -j 2 --json: the same job
               as recordmcount, writing __mcount_loc
  record-j1    the same with -j 1
  record-j2-nofsync  record-j2 with --no-fsync
  ftpatch-j2   ftpatch nop --in-place --files-from LIST -j 2 --json (another job:
               nops every call)
  ftpatch-j1   the same with -j 1
  ftpatch-j2-nofsync  ftpatch-j2 with --no-fsync
  retarget-j2, retarget-j1, retarget-j2-nofsync  ftpatch call --target ftpatch_hook, the same
               three ways (another job: every site calls a hook; each module gets the symbol)
  record-each, ftpatch-each, retarget-each  one process per file (only with --ftpatch-each; slow by nature)

the atomic-replace floor (bench/atomic_floor.py, run by the Python that runs this script, as ftpatch is):
  floor-j2     read every file, write its bytes to a new file beside it, fsync it, rename it over the file,
               with 2 workers as ftpatch's -j 2 shares the list; each directory fsynced once at the end:
               what --in-place costs with no ftpatch work (no lock, scan, plan or proof)
  floor-j2-nofsync  the same without the fsyncs, the floor of --no-fsync

Any other command line can be plugged in with --tool 'NAME=TEMPLATE', where
TEMPLATE holds {list} (a file with one path per line), {files} (all paths as
arguments) or {file} (one process per file).

Examples:
  python3 bench/bench_recordmcount.py                      # both corpora
  python3 bench/bench_recordmcount.py --corpus big20k --repeat 20
  FTPATCH_CMD=ftpatch python3 bench/bench_recordmcount.py   # the ftpatch on PATH
  python3 bench/bench_recordmcount.py --tool 'rm-w={files}' ...
"""

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
# The stdlib object reader the tests use too: where the calls and __mcount_loc's entries are, in each file.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from oracles import elfsites  # noqa: E402

CACHE = os.environ.get("FTPATCH_BENCH_CACHE", "/var/tmp/ftpatch-bench")


# ----------------------------------------------------------------- processes
def _gnu_time():
    t = "/usr/bin/time"
    try:
        ok = subprocess.run([t, "--version"], capture_output=True, text=True)
    except OSError:
        return None
    return t if "GNU" in (ok.stdout + ok.stderr) else None


GNU_TIME = _gnu_time()
RSS_FILE = None  # set in main(): where GNU time writes %M


def spawn(argv, out, err):
    """Start argv with stdout/stderr appended to the given paths; return pid.

    With GNU time available the command runs under `/usr/bin/time -f %M`, so
    that the peak RSS is that of the command and its descendants only: a child
    spawned straight from this Python process inherits the interpreter's RSS
    high-water mark (vfork/fork + exec), which would hide small figures."""
    if GNU_TIME:
        argv = [GNU_TIME, "-q", "-f", "%M", "-o", RSS_FILE, "--", *list(argv)]
    fa = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_OPEN, 2, err, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
    ]
    return os.posix_spawnp(argv[0], list(argv), os.environ, file_actions=fa)


class Usage:
    """Aggregated wall time / CPU / peak RSS / exit codes of the processes run."""

    def __init__(self):
        self.wall = 0.0
        self.cpu = 0.0
        self.maxrss_kb = 0
        self.procs = 0  # top-level processes started by this script
        self.failed = 0

    def wait(self, pid):
        _, status, ru = os.wait4(pid, 0)
        self.procs += 1
        self.cpu += ru.ru_utime + ru.ru_stime
        rss = ru.ru_maxrss
        if GNU_TIME:
            try:
                with open(RSS_FILE) as f:
                    rss = int(f.read().split()[-1])
            except (OSError, ValueError, IndexError):
                pass
        self.maxrss_kb = max(self.maxrss_kb, rss)
        if os.waitstatus_to_exitcode(status) != 0:
            self.failed += 1


def run_one(argv, out, err):
    u = Usage()
    t = time.perf_counter()
    u.wait(spawn(argv, out, err))
    u.wall = time.perf_counter() - t
    return u


def arg_chunks(prefix, files):
    """Split files so that prefix + chunk fits in the kernel's argument limit."""
    limit = min(os.sysconf("SC_ARG_MAX"), 2 * 1024 * 1024)
    env = sum(len(k) + len(v) + 2 + 8 for k, v in os.environ.items())
    budget = limit - env - sum(len(a) + 1 + 8 for a in prefix) - 8192
    chunk, size = [], 0
    for f in files:
        c = len(f) + 1 + 8
        if chunk and size + c > budget:
            yield chunk
            chunk, size = [], 0
        chunk.append(f)
        size += c
    if chunk:
        yield chunk


# ------------------------------------------------------------------ variants
class Variant:
    """A command line template run over a corpus.

    mode  each   one process per file ({file}), sequentially  (xargs -P1 -I{file})
          xargs  one process per file ({file}), `jobs` at once (xargs -P2 -I{file})
          batch  all files as arguments ({files}), split only if argv would not fit
          list   one process given a file listing the paths ({list})
    Per-file modes run under xargs so that the process tree is measured whole
    and the spawning cost is that of a small C program, as under make."""

    def __init__(self, name, tool, template, mode=None, jobs=2):
        self.name, self.tool, self.template, self.jobs = name, tool, list(template), jobs
        joined = " ".join(template)
        if mode is None:
            mode = (
                "list"
                if "{list}" in joined
                else "batch"
                if "{files}" in template
                else "each"
                if "{file}" in joined
                else None
            )
            if mode is None:
                raise SystemExit(f"--tool {name}: template needs {{list}}, {{files}} or {{file}}")
        self.mode = mode

    def run(self, files, listfile, out, err):
        u = Usage()
        t0 = time.perf_counter()
        if self.mode in ("each", "xargs"):
            par = 1 if self.mode == "each" else self.jobs
            u.wait(spawn(["xargs", "-d", "\n", "-a", listfile, f"-P{par}", "-I{file}", *self.template], out, err))
        elif self.mode == "batch":
            i = self.template.index("{files}")
            pre, post = self.template[:i], self.template[i + 1 :]
            for chunk in arg_chunks(pre + post, files):
                u.wait(spawn(pre + chunk + post, out, err))
        else:  # list
            u.wait(spawn([a.replace("{list}", listfile) for a in self.template], out, err))
        u.wall = time.perf_counter() - t0
        if self.mode in ("each", "xargs"):
            u.procs = len(files)  # processes of the tool; failed = 1 if any failed (xargs 123)
        return u

    def describe(self):
        t = " ".join(self.template)
        if self.mode == "each":
            return f"xargs -P1 -I{{file}} {t}"
        if self.mode == "xargs":
            return f"xargs -P{self.jobs} -I{{file}} {t}"
        return t


HOOK = "ftpatch_hook"  # the function the retarget variants point every site at


def recordmcount_variants(rm):
    return [
        Variant("rm-each", "recordmcount", [rm, "{file}"], "each"),
        Variant("rm-xargs-P2", "recordmcount", [rm, "{file}"], "xargs"),
        Variant("rm-batch", "recordmcount", [rm, "{files}"], "batch"),
    ]


def ftpatch_variants(cmd, each):
    """The ftpatch variants; (variants, notes)."""
    base = shlex.split(cmd)
    if not base or shutil.which(base[0]) is None:
        return None, [
            f"ftpatch command {cmd!r} not found on PATH: skipping the ftpatch "
            "variants, printing recordmcount figures only (set FTPATCH_CMD or "
            "--ftpatch-cmd)."
        ]
    v = []
    for prefix, action in (("record", ["record"]), ("ftpatch", ["nop"]), ("retarget", ["call", "--target", HOOK])):
        command = [*base, *action, "--in-place"]
        v += [
            Variant(
                f"{prefix}-{name}",
                "ftpatch",
                [*command, *extra, "--files-from", "{list}", "-j", jobs, "--json"],
                "list",
            )
            for name, jobs, extra in (
                ("j2", "2", []),
                ("j1", "1", []),
                ("j2-nofsync", "2", ["--no-fsync"]),
            )
        ]
        if each:
            v.append(Variant(f"{prefix}-each", "ftpatch", [*command, "{file}"], "each"))
    return v, []


def floor_variants(python):
    """The atomic-replace floor, -j 2 with and without fsync, run by `python`: this script's, which runs ftpatch
    unless FTPATCH_CMD says otherwise."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "atomic_floor.py")
    command = [python, script, "--files-from", "{list}", "-j", "2"]
    return [
        Variant("floor-j2", "floor", command, "list"),
        Variant("floor-j2-nofsync", "floor", [*command, "--no-fsync"], "list"),
    ]


# -------------------------------------------------------------------- corpus
def corpus_path(name, cache):
    if name == "modules":
        return os.path.join(cache, "modules-pristine")
    if name == "big20k":
        return os.path.join(cache, "big20k.o")
    return os.path.abspath(name)


def fresh_copy(src, work):
    """rm -rf work (untimed), then time `cp -r src work`."""
    if os.path.lexists(work):
        shutil.rmtree(work) if os.path.isdir(work) and not os.path.islink(work) else os.unlink(work)
    os.sync()
    u = run_one(["cp", "-r", src, work], "/dev/null", "/dev/null")
    if u.failed:
        raise SystemExit(f"cp -r {src} {work} failed")
    os.sync()  # keep the copy's writeback out of the tool's timing
    return u


def work_files(src, work):
    if os.path.isdir(src):
        return [os.path.join(work, os.path.relpath(f, src)) for f in elfsites.walk(src)]
    return [work]


def summarize_json(path):
    """One line about a tool's --json output, whatever its shape."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    if not text.strip():
        return ""
    try:
        doc = json.loads(text)
    except ValueError:
        try:  # JSON lines
            docs = [json.loads(x) for x in text.splitlines() if x.strip()]
            return f"{len(docs)} JSON lines"
        except ValueError:
            return "stdout is not JSON: " + text.strip().splitlines()[0][:100]
    if isinstance(doc, dict):
        sc = (int, float, str, bool)
        scal = {k: v for k, v in doc.items() if isinstance(v, sc)}
        for k, v in doc.items():  # one level of nested totals, e.g. {"summary": {...}}
            if isinstance(v, dict):
                scal.update({f"{k}.{k2}": v2 for k2, v2 in v.items() if isinstance(v2, sc)})
        more = [k for k, v in doc.items() if not isinstance(v, (dict, *sc))]
        s = json.dumps(scal)[:200]
        return s + (f" (+ keys {', '.join(more[:6])})" if more else "")
    if isinstance(doc, list):
        return f"JSON list of {len(doc)}"
    return str(doc)[:200]


# --------------------------------------------------------------------- bench
def fmt_t(x):
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.3f} s"


def bench_corpus(name, src, variants, repeat, cache, check_all):
    work_root = os.path.join(cache, "work")
    os.makedirs(work_root, exist_ok=True)
    work = os.path.join(work_root, os.path.basename(src.rstrip("/")))
    listfile = os.path.join(work_root, name + ".list")
    logdir = os.path.join(work_root, "logs")
    os.makedirs(logdir, exist_ok=True)

    print(f"\n=== corpus {name}: {src}")
    t = time.perf_counter()
    pristine = elfsites.pristine_sites(src)
    files_n = len(pristine)
    sites_n = sum(len(s[2]) for s in pristine.values())
    bytes_n = sum(os.path.getsize(f) for f in elfsites.walk(src))
    print(
        f"    {files_n} files, {bytes_n / 1e6:.1f} MB, {sites_n} mcount/__fentry__ call sites "
        f"(scanned in {time.perf_counter() - t:.2f} s)"
    )
    files = [os.path.join(work, r) if os.path.isdir(src) else work for r in pristine]
    with open(listfile, "w") as f:
        f.write("".join(p + "\n" for p in files))

    fresh_copy(src, work)  # warm the page cache; untimed
    results = {"corpus": name, "path": src, "files": files_n, "bytes": bytes_n, "sites": sites_n, "variants": {}}
    cp_walls, cp_rss = [], 0
    logs = {
        v.name: (os.path.join(logdir, f"{name}.{v.name}.stdout"), os.path.join(logdir, f"{name}.{v.name}.stderr"))
        for v in variants
    }
    for paths in logs.values():
        for p in paths:
            if os.path.exists(p):
                os.unlink(p)
    runs = {v.name: [] for v in variants}
    checks = {}
    # Round-robin over the variants, so that load from other work on the machine
    # falls on all of them alike rather than on whichever ran at that moment.
    for r in range(repeat):
        line = []
        for v in variants:
            out, err = logs[v.name]
            cu = fresh_copy(src, work)
            cp_walls.append(cu.wall)
            cp_rss = max(cp_rss, cu.maxrss_kb)
            if os.path.exists(out):
                os.unlink(out)
            u = v.run(files, listfile, out, err)
            runs[v.name].append(u)
            line.append(f"{v.name} {fmt_t(u.wall)}")
            if r == 0 or check_all:
                checks[v.name] = elfsites.check(pristine, work if os.path.isdir(src) else os.path.dirname(work))
        print(f"    run {r + 1}/{repeat}: " + ", ".join(line), flush=True)
    for v in variants:
        vr = runs[v.name]
        out, err = logs[v.name]
        walls = [u.wall for u in vr]
        with open(err, errors="replace") as f:
            errlines = f.read().splitlines()
        results["variants"][v.name] = {
            "tool": v.tool,
            "mode": v.mode,
            "argv": v.template,
            "walls": walls,
            "wall_median": statistics.median(walls),
            "wall_min": min(walls),
            "wall_max": max(walls),
            "cpu_median": statistics.median(u.cpu for u in vr),
            "maxrss_kb": max(u.maxrss_kb for u in vr),
            "procs": vr[0].procs,
            "failed_procs": max(u.failed for u in vr),
            "stderr_lines_total": len(errlines),
            "stderr_head": errlines[:5],
            "check": checks.get(v.name),
            "stdout_summary": summarize_json(out) if v.tool != "recordmcount" else "",
        }
    results["cp"] = {
        "walls": cp_walls,
        "wall_median": statistics.median(cp_walls),
        "wall_min": min(cp_walls),
        "maxrss_kb": cp_rss,
    }
    floor = [run_one(["true"], "/dev/null", "/dev/null").wall for _ in range(20)]
    results["spawn_floor"] = {"wall_median": statistics.median(floor), "wall_min": min(floor)}
    if any(v.mode == "each" for v in variants) and files_n > 1:
        fe = Variant("true-each", "floor", ["true", "{file}"], "each").run(files, listfile, "/dev/null", "/dev/null")
        results["spawn_floor"]["each_wall"] = fe.wall
    return results


def print_table(res):
    print(f"\n--- {res['corpus']}: {res['files']} files, {res['bytes'] / 1e6:.1f} MB, {res['sites']} call sites")
    hdr = (
        f"{'variant':<14}{'procs':>6}{'wall med':>11}{'min':>11}{'max':>11}{'cpu':>11}"
        f"{'peakRSS':>9}{'fail':>5}{'mcount_loc':>11}{'nopped':>9}{'calls':>8}{'files':>7}"
    )
    print(hdr)
    print("-" * len(hdr))
    cp = res["cp"]
    print(
        f"{'cp -r (base)':<14}{1:>6}{fmt_t(cp['wall_median']):>11}{fmt_t(cp['wall_min']):>11}"
        f"{'':>11}{'':>11}{cp['maxrss_kb'] / 1024:>7.1f}MB"
    )
    fl = res["spawn_floor"]
    print(
        f"{'true (floor)':<14}{1:>6}{fmt_t(fl['wall_median']):>11}{fmt_t(fl['wall_min']):>11}"
        "   <- cost of starting one command the way every row is started"
    )
    if "each_wall" in fl:
        print(
            f"{'true-each':<14}{res['files']:>6}{fmt_t(fl['each_wall']):>11}"
            "              <- xargs -P1 running `true FILE` per file: the per-file spawn floor"
        )
    for name, v in res["variants"].items():
        c = v["check"] or {}
        print(
            f"{name:<14}{v['procs']:>6}{fmt_t(v['wall_median']):>11}{fmt_t(v['wall_min']):>11}"
            f"{fmt_t(v['wall_max']):>11}{fmt_t(v['cpu_median']):>11}"
            f"{v['maxrss_kb'] / 1024:>7.1f}MB{v['failed_procs']:>5}"
            f"{c.get('mcount_loc_entries', 0):>11}{c.get('changed', 0):>9}"
            f"{c.get('still_call', 0):>8}{c.get('files_touched', 0):>7}  {c.get('digest', '')}/{c.get('sdigest', '')}/{c.get('tdigest', '')}"
        )
    print(
        "  mcount_loc = entries in __mcount_loc after the run; nopped = original call sites "
        "that are no longer calls;\n  calls = sites still calls; files = files with a changed "
        "site or a __mcount_loc; cpu = user+sys incl. children;\n  digest = sha1 of every "
        "byte of the processed tree; sections = sha1 of ELF header, section headers and section\n"
        "  contents only (ignores padding between sections; recordmcount run over many files in one "
        "process\n  leaves stale bytes in such padding, so only that digest matches rm-each); tables = sha1 of the\n"
        "  (section, offset) each __mcount_loc entry resolves to: equal for tools that wrote the same tables"
    )
    for name, v in res["variants"].items():
        if v["stderr_lines_total"]:
            print(f"  {name}: {v['stderr_lines_total']} stderr lines, first: {v['stderr_head'][:2]}")
        if v["check"] and v["check"].get("unverifiable"):
            print(f"  {name}: {v['check']['unverifiable']} sites unverifiable (section layout changed)")
        if v["stdout_summary"]:
            print(f"  {name} --json: {v['stdout_summary']}")


def print_ratios(res):
    vs = res["variants"]
    rms = [n for n, v in vs.items() if v["tool"] == "recordmcount"]
    others = [n for n, v in vs.items() if v["tool"] != "recordmcount"]
    cpw = res["cp"]["wall_median"]
    print("  wall relative to cp -r: " + ", ".join(f"{n} {v['wall_median'] / cpw:.2f}x" for n, v in vs.items()))
    if not others:
        return
    for o in (n for n in others if n.startswith("record") and "rm-each" in vs and "rm-batch" in vs):
        w = vs[o]["wall_median"]
        print(
            f"  {o}: {w / vs['rm-each']['wall_median']:.2f}x recordmcount's time with a process per file (goal: <= 1), "
            f"{w / vs['rm-batch']['wall_median']:.2f}x its time in one process (next goal: <= 1)"
        )
    for o in others:
        floor = "floor-j2-nofsync" if o.endswith("-nofsync") else "floor-j2"
        if vs[o]["tool"] == "ftpatch" and "-j2" in o and floor in vs:
            a, b = vs[o], vs[floor]
            print(
                f"  {o}: {a['wall_median'] / b['wall_median']:.2f}x the atomic-replace floor ({floor}), "
                f"CPU {a['cpu_median'] / b['cpu_median']:.2f}x"
            )
    print("  ratios (other tool / recordmcount), wall median | peak RSS:")
    for o in others:
        parts = []
        for r in rms:
            a, b = vs[o], vs[r]
            parts.append(
                f"/{r} {a['wall_median'] / b['wall_median']:.2f}x | {a['maxrss_kb'] / max(b['maxrss_kb'], 1):.1f}x"
            )
        print(f"    {o:<13} " + ";  ".join(parts))


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    ap.add_argument("--cache", default=CACHE, help="cache dir (default %(default)s)")
    ap.add_argument(
        "--corpus", action="append", help="modules, big20k or a path (file or directory); repeatable; default both"
    )
    ap.add_argument("--repeat", type=int, help="runs per variant (default 3 for a directory, 20 for a file)")
    ap.add_argument("--recordmcount", help="recordmcount binary (default CACHE/recordmcount)")
    ap.add_argument(
        "--ftpatch-cmd",
        # The interpreter running this script, not whatever `ftpatch` or `python3` is on PATH:
        # a pyenv shim in front of either costs 65 ms a start, which is not ftpatch's.
        default=os.environ.get("FTPATCH_CMD", f"{shlex.quote(sys.executable)} -m ftpatch"),
        help="how to call ftpatch (default $FTPATCH_CMD, else this Python's -m ftpatch)",
    )
    ap.add_argument("--no-ftpatch", action="store_true", help="only recordmcount")
    ap.add_argument("--ftpatch-each", action="store_true", help="also one ftpatch process per file")
    ap.add_argument(
        "--tool", action="append", default=[], metavar="NAME=TEMPLATE", help="extra command line to compare; see above"
    )
    ap.add_argument("--only", help="comma-separated variant names to run")
    ap.add_argument("--check-all", action="store_true", help="check the output of every repetition")
    ap.add_argument("--json-out", help="also write all results to this JSON file")
    a = ap.parse_args()

    global RSS_FILE
    os.makedirs(os.path.join(a.cache, "work"), exist_ok=True)
    RSS_FILE = os.path.join(a.cache, "work", "rss.txt")
    rm = a.recordmcount or os.path.join(a.cache, "recordmcount")
    if not os.access(rm, os.X_OK):
        sys.exit(f"{rm} not found: run bench/prepare.sh first")
    variants = recordmcount_variants(rm)
    if not a.no_ftpatch:
        fv, notes = ftpatch_variants(a.ftpatch_cmd, a.ftpatch_each)
        for n in notes:
            print("NOTE: " + n)
        variants += fv or []
        if fv:
            variants += floor_variants(sys.executable)
    for spec in a.tool:
        name, _, tmpl = spec.partition("=")
        variants.append(Variant(name, name, shlex.split(tmpl)))
    if a.only:
        keep = set(a.only.split(","))
        variants = [v for v in variants if v.name in keep]

    print(f"recordmcount: {os.path.realpath(rm)}")
    info = os.path.join(a.cache, "corpus.txt")
    if os.path.exists(info):
        with open(info) as f:
            for line in f:
                if line.startswith(("kbuild_package", "kernel_package")):
                    print(line.rstrip())
    print(
        f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}, "
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        "(other work on the machine skews every figure)"
    )
    if GNU_TIME:
        print(f"peak RSS: GNU time -f %M around each top-level command ({GNU_TIME})")
    else:
        print(
            "NOTE: /usr/bin/time (GNU, `apt-get install time`) missing: peak RSS from wait4() "
            "includes this Python process's RSS, as exec'd children inherit its high-water mark"
        )
    for v in variants:
        print(f"  {v.name:<13} {v.describe()}")

    all_res = []
    for c in a.corpus or ["modules", "big20k"]:
        src = corpus_path(c, a.cache)
        if not os.path.exists(src):
            print(f"corpus {c}: {src} missing (run bench/prepare.sh); skipped")
            continue
        repeat = a.repeat or (3 if os.path.isdir(src) else 20)
        all_res.append(bench_corpus(os.path.basename(c.rstrip("/")), src, variants, repeat, a.cache, a.check_all))
    print(f"\n================ summary (load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    for res in all_res:
        print_table(res)
        print_ratios(res)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(all_res, f, indent=1)
        print(f"\nresults written to {a.json_out}")


if __name__ == "__main__":
    main()
