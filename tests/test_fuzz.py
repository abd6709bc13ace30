"""Fuzzing every file fastadapt reads and every value its command line takes (docs/reliability.md): each case ends
read, or refused with one line that names the file or the option (exit code 2 from the command line), within its
time bound, with nothing half-written left behind. Tens of examples per loader here; bench/fuzz_loaders.py runs
1,000 or more each. The cases are in tests/fuzzing.py."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from fuzzing import TARGETS, Case, Fixtures, run_case
from hypothesis import HealthCheck, given, settings

#: Examples per loader: enough to meet each kind of damage a few times in well under a minute for the whole file.
EXAMPLES = {"cli_train": 30, "config_file": 30, "omniglot_cache": 12, "omniglot_npz": 15, "checkpoint": 25}
#: Seconds one case may take here (the bench allows 60).
BOUND_S = 20.0


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Fixtures:
    return Fixtures(tmp_path_factory.mktemp("fixtures")).make()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_case_is_read_or_refused_in_one_line(name: str, fixtures: Fixtures) -> None:
    target = TARGETS[name]

    @settings(max_examples=EXAMPLES.get(name, 20), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=target.strategy)
    def check(case: Case) -> None:
        with tempfile.TemporaryDirectory() as root:
            outcome = run_case(target, case, Path(root) / "case", fixtures, bound=BOUND_S)
        assert not outcome.failed, f"{outcome.kind}: {outcome.detail}"

    check()
