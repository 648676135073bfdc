"""Session 34: a submit's integers beyond what the catalog holds
(`--max-restarts 100000000000000000000`) were the coordinator's `internal
error: OverflowError: Python int too large to convert to SQLite INTEGER`,
a traceback in its log: refused saying what the option takes."""

from __future__ import annotations

import pytest
from _system import System
from test_system import NOOP, write


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    system = System(tmp_path_factory.mktemp("system"))
    try:
        system.start_coordinator()
        system.start_executor(1)
        system.executors_up(1)
        yield system
    finally:
        system.close()


@pytest.mark.parametrize(("option", "least"), [("--max-restarts", 0), ("--cores", 1), ("--processes", 1)])
def test_an_integer_beyond_the_catalogs_is_refused_saying_so(system, tmp_path, option, least):
    done = system.cli("submit", write(tmp_path / "noop.py", NOOP), option, str(10**20))
    assert (done.returncode, done.stderr) == (
        1, f"error: submit: {option} must be an integer from {least} to {2**63 - 1}\n")
    assert "Traceback" not in system.coordinator_log.read_text()
    assert system.status()["jobs"] == []
