"""The short fuzz pass, part of every test run: derandomized hypothesis over mutated fixtures.

Every outcome must be success or an FtpatchError naming the file, the input
must be left as it was, and no temporary may be left behind (see
mutate.drive). tests/fuzz/long_run.py runs the same driver for 100,000 inputs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.mutate import KINDS, SEEDS, drive, mutate, time_cap

mutation = st.tuples(
    st.sampled_from(KINDS),
    st.integers(0, 1 << 20),
    st.integers(0, 1 << 20),
    st.integers(0, (1 << 32) - 1),
)


@settings(
    max_examples=1000,
    derandomize=True,
    database=None,
    deadline=None,  # the 2 s cap below is the deadline, and it is not flaky
    suppress_health_check=[HealthCheck.too_slow],
)
@given(seed=st.sampled_from(sorted(SEEDS)), mutations=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_fixtures_never_crash(seed: str, mutations: list[tuple[str, int, int, int]]) -> None:
    data = mutate(seed, mutations)
    with tempfile.TemporaryDirectory() as d, time_cap(2.0):
        drive(data, Path(d))


def test_unmutated_fixtures_succeed() -> None:
    # The driver itself passes the real thing: only -mnop-mcount's sites cannot be called back.
    for seed in sorted(SEEDS):
        with tempfile.TemporaryDirectory() as d:
            outcome = drive(SEEDS[seed], Path(d))
        assert outcome == ("InputError: gcc -mnop-mcount left a nop" if seed == "x86_64-nop-mcount.o" else "ok"), seed
