"""Session 34: a failed job's message (`status`, `submit --wait`'s last
line) names the pipeline file as it was submitted, as `kernel run` and
`submit` name it: it named the executor's copy of it,
`WORKDIR/pipelines/<sha256>/pipeline.py has no 'nightly'; ...`, `importing
WORKDIR/pipelines/<sha256>/pipeline.py raised ModuleNotFoundError: ...`."""

from __future__ import annotations

import pytest
from _system import a_system
from test_system import NOOP, write


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    with a_system(tmp_path_factory.mktemp("system")) as system:
        yield system


@pytest.mark.parametrize(("text", "target", "message"), [
    (NOOP, "pipeline.py:nightly", "pipeline.py has no 'nightly'; Dataflows defined there: flow"),
    ("import no_such_module_here\n", "pipeline.py",
     "importing pipeline.py raised ModuleNotFoundError: No module named 'no_such_module_here'"),
], ids=["a flow it does not define", "its import raises"])
def test_a_failed_jobs_message_names_the_file_as_submitted(system, tmp_path, text, target, message):
    write(tmp_path / "pipeline.py", text)
    done = system.cli("submit", tmp_path / target, "--wait")
    assert done.returncode == 1, done.stderr
    job = done.stdout.splitlines()[0]
    assert done.stdout.splitlines()[1] == f"{job} failed: {message}"
    assert system.job(job)["message"] == message
