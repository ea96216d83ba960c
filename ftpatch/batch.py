"""Many files at once: each file succeeds or fails on its own, in parallel processes.

Workers are forked after capstone and pyelftools' tables are imported, so no
worker pays their import again; results come back in input order, so the report is the
same whatever the number of workers.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

from .errors import FtpatchError
from .patch import Action, patch_file
from .record import record_file
from .write import sync_directory


@dataclass(frozen=True)
class Outcome:
    """What became of one file: its counts, or its error. It carries no patches: it crosses processes."""

    path: str
    error: FtpatchError | None = None
    patched: int = 0
    already: int = 0
    filtered: int = 0
    changed: bool = False  # the file's bytes changed
    warnings: tuple[str, ...] = ()
    recorded: int = 0  # sites listed in the __mcount_loc tables written (record, nop --record)
    already_recorded: int = 0  # objects left without a new table because they have one


@dataclass(frozen=True)
class Job:
    """`nop` or `call` on each file."""

    action: Action
    output: str | None  # None: in place
    nop: str | None
    only: tuple[str, ...]
    exclude: tuple[str, ...]
    targets: tuple[str, ...]
    fsync: bool = True  # False: no fsync of files or directories (see write_atomic)
    record: bool = False  # nop --record: write __mcount_loc in the same pass

    def run(self, path: str) -> Outcome:
        plan = patch_file(
            path,
            self.action,
            output=self.output,
            nop=self.nop,
            only=self.only,
            exclude=self.exclude,
            targets=self.targets,
            sync_dir=False,
            fsync=self.fsync,
            record=self.record,
        )
        done = plan.recording
        return Outcome(
            path,
            None,
            plan.patched,
            plan.already,
            plan.filtered,
            plan.changes or (done is not None and done.changed),
            plan.warnings,
            done.recorded if done else 0,
            done.already if done else 0,
        )


@dataclass(frozen=True)
class RecordJob:
    """`record` on each file."""

    output: str | None  # None: in place
    targets: tuple[str, ...]
    fsync: bool = True

    def run(self, path: str) -> Outcome:
        done = record_file(path, output=self.output, targets=self.targets, sync_dir=False, fsync=self.fsync)
        return Outcome(path, None, changed=done.changed, recorded=done.recorded, already_recorded=done.already)


def _one(job: Job | RecordJob, path: str) -> Outcome:
    try:
        return job.run(path)
    except FtpatchError as e:
        return Outcome(path, e)


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group: the parent alone handles it, by terminating the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _one_in_worker(job: Job | RecordJob, path: str) -> Outcome:
    # Terminated mid-file, a worker must unwind so that write_atomic removes its temporary;
    # terminated while idle, it just exits.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return _one(job, path)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _outcomes(paths: Sequence[str], job: Job | RecordJob, workers: int, fail_fast: bool) -> Iterator[Outcome]:
    if workers <= 1 or len(paths) <= 1:
        for path in paths:
            outcome = _one(job, path)
            yield outcome
            if fail_fast and outcome.error:
                return
        return
    import capstone  # noqa: F401 - imported once here, inherited by every forked worker
    import elftools.elf.elffile  # noqa: F401

    chunk = max(1, min(64, len(paths) // (workers * 8)))
    with multiprocessing.get_context("fork").Pool(workers, initializer=_worker_init) as pool:
        for outcome in pool.imap(partial(_one_in_worker, job), paths, chunksize=chunk):
            yield outcome
            if fail_fast and outcome.error:
                pool.terminate()
                return
        pool.close()
        pool.join()


def run(paths: Sequence[str], job: Job | RecordJob, workers: int = 1, fail_fast: bool = False) -> Iterator[Outcome]:
    """Outcomes in input order; with fail_fast, none after the first failure.

    Each file is fsynced before it is renamed into place; the directories the
    renames went to are synced once, at the end, rather than once a file.
    With job.fsync False, nothing is synced.
    """
    written: set[str] = set()
    try:
        for outcome in _outcomes(paths, job, workers, fail_fast):
            if job.fsync and outcome.error is None and (outcome.changed or job.output is not None):
                written.add(os.path.dirname(os.path.abspath(job.output or outcome.path)))
            yield outcome
    finally:
        for directory in sorted(written):
            sync_directory(directory)
