"""Session 35: two pipeline files with the same text and different names
(`a.py`, `b.py`) are two jobs, each under its own name. The catalog keeps a
file's text once, by its SHA-256, under the name it was first submitted
as, and the second job was run as that name: its process ran `a.py`, its
`__file__` was `.../a.py`, a failure's message said `a.py has no
'nightly'`, all for a job submitted as `b.py`."""

from __future__ import annotations

import os

import pytest
from _system import a_system, wait_until
from test_system import write

# (prints its own file's name, as a pipeline naming its output after itself does)
NAMES_ITSELF = """\
import os
from kernel import Dataflow

print("running as", os.path.basename(__file__), flush=True)
flow = Dataflow("names")
flow.from_iterable(range(3)).sink(id)
"""


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    with a_system(tmp_path_factory.mktemp("system")) as system:
        yield system


def _submitted(system, path, *options) -> str:
    done = system.cli("submit", path, *options)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[0]


def test_same_text_under_two_names_runs_each_under_its_own(system, tmp_path):
    a = write(tmp_path / "a.py", NAMES_ITSELF)
    b = write(tmp_path / "b.py", NAMES_ITSELF)
    assert a.read_bytes() == b.read_bytes()
    first = system.cli("submit", a, "--wait")
    second = system.cli("submit", b, "--wait")
    assert (first.returncode, second.returncode) == (0, 0), (first.stderr, second.stderr)
    job_a, job_b = first.stdout.splitlines()[0], second.stdout.splitlines()[0]
    assert first.stdout.splitlines()[-1] == f"{job_a} completed"
    assert second.stdout.splitlines()[-1] == f"{job_b} completed"
    assert system.job(job_a)["name"] == "a.py:flow"
    assert system.job(job_b)["name"] == "b.py:flow"
    for job, name in ((job_a, "a.py"), (job_b, "b.py")):
        logs = system.cli("logs", job)
        assert logs.returncode == 0, logs.stderr
        assert [line for line in logs.stdout.splitlines() if line.startswith("running as")] == \
            [f"running as {name}"]
    # the catalog: each job's row under its own name, the text stored once
    catalog = _catalog(system)
    names = {row["id"]: row["name"] for row in catalog["jobs"]}
    assert (names[job_a], names[job_b]) == ("a.py:flow", "b.py:flow")


def test_a_failure_names_the_file_it_was_submitted_as(system, tmp_path):
    text = "from kernel import Dataflow\n\nflow = Dataflow('f')\nflow.from_iterable([1]).sink(id)\n"
    first, second = write(tmp_path / "one.py", text), write(tmp_path / "two.py", text)
    assert system.cli("submit", first, "--wait").returncode == 0
    done = system.cli("submit", f"{second}:nightly", "--wait")
    assert done.returncode == 1, done.stderr
    job = done.stdout.splitlines()[0]
    message = "two.py has no 'nightly'; Dataflows defined there: flow"
    assert done.stdout.splitlines()[-1] == f"{job} failed: {message}"
    assert system.job(job)["message"] == message
    assert system.job(job)["name"] == "two.py:nightly"


def test_a_restarted_job_keeps_its_name(system, tmp_path):
    # the second job, killed mid-run by a signal, restarts: its next attempt
    # too runs under its own name (the job master's copy of the text is by hash)
    text = NAMES_ITSELF.replace("range(3)", "range(10**9)")
    write(tmp_path / "first.py", text)
    b = write(tmp_path / "second.py", text)
    job_a = _submitted(system, tmp_path / "first.py")
    system.cli("kill", job_a)
    job_b = _submitted(system, b)
    log = system.root / "executor1" / "logs" / f"{job_b}.log"
    wait_until(lambda: log.exists() and "running as" in log.read_text(), what=f"{job_b} to run")
    _kill_job_process(system, job_b)
    wait_until(lambda: system.job(job_b)["attempt"] == 2 and system.job(job_b)["status"] == "running"
               and log.read_text().count("running as") == 2, what=f"{job_b}'s second attempt")
    assert [line for line in log.read_text().splitlines() if line.startswith("running as")] == \
        ["running as second.py"] * 2
    assert system.cli("kill", job_b).returncode == 0


def _kill_job_process(system, job: str) -> None:
    import signal

    from _system import descendants

    for pid in descendants(system.executors[0].pid)[1:]:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if f"KERNEL_JOB={job}".encode() in environ:
            os.kill(pid, signal.SIGKILL)
            return
    raise AssertionError(f"no process of {job} found")


def _catalog(system) -> dict:
    import asyncio

    from kernel.system import Client

    async def ask():
        async with Client((system.host, system.port), system.env["KERNEL_SECRET"].encode()) as client:
            return await client.request("catalog")

    return asyncio.run(ask())


def test_a_request_id_sent_again_for_another_name_is_refused(system, tmp_path):
    # A submit sent again under its request id (its reply lost) gets that
    # request's job; sent with another file name, it is another pipeline,
    # refused, as another text or flow is: it was given the first's job.
    import asyncio

    from kernel.system import Client
    from kernel.system._client import pipeline_payload
    from kernel.system._wire import RequestError

    a = write(tmp_path / "a.py", NAMES_ITSELF)
    b = write(tmp_path / "b.py", NAMES_ITSELF)

    async def submit(path):
        async with Client((system.host, system.port), system.env["KERNEL_SECRET"].encode()) as client:
            return await client.request("submit", **pipeline_payload(str(path)), request="session-35-r")

    job = asyncio.run(submit(a))["job"]
    assert asyncio.run(submit(a))["job"] == job  # (the same request: its job)
    jobs = [j["id"] for j in system.status()["jobs"]]
    with pytest.raises(RequestError) as refused:
        asyncio.run(submit(b))
    assert str(refused.value) == f"submit: request id 'session-35-r' was {job}'s, for another pipeline"
    assert [j["id"] for j in system.status()["jobs"]] == jobs  # (no job made)
