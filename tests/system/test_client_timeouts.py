"""The client commands against a coordinator that stops answering with its
connection open (SIGSTOP here; a machine that froze, or a cable cut, sends
no reset either): they end with a clear error in bounded time. And a
submit whose reply is lost with its connection."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time

import pytest
from _system import a_system, wait_until
from test_system import write
from test_system_reset import Proxy

ENDLESS = """\
import itertools
import time
from kernel import Dataflow

flow = Dataflow("endless")
flow.from_iterable(itertools.count(), batch_size=1).map(lambda n: time.sleep(0.01) or n).sink(id)
"""


@pytest.fixture
def frozen_later(tmp_path):
    """A system of its own: frozen for good by its test."""
    with a_system(tmp_path) as system:
        yield system


@pytest.fixture(scope="module")
def frozen_a_moment(tmp_path_factory):
    """One system for the tests that leave it as they found it (frozen for
    0.5 s, then let go, no job submitted) and the one that submits its only
    job (job-1: no other test may submit here): its start-up, ~2 s, once."""
    with a_system(tmp_path_factory.mktemp("client-timeouts")) as system:
        yield system


def test_submit_wait_gives_up_on_a_frozen_coordinator(frozen_later, tmp_path):
    """`submit --wait` asked `wait` with no time limit: a frozen coordinator
    held it for ever. It hears from the coordinator every
    KERNEL_COORDINATOR_TIMEOUT seconds now (the coordinator answers a wait
    with the job as it is by then), reconnects when it does not, for three
    times that, and then ends with exit 1 and why."""
    system = frozen_later
    pipeline = write(tmp_path / "endless.py", ENDLESS)
    # (0.5 s, not 1: the command gives up 3 timeouts and a grace (2 s at
    # least) after the coordinator's last answer, ~1.5 s sooner so)
    env = dict(system.env, KERNEL_COORDINATOR_TIMEOUT="0.5")
    waiter = subprocess.Popen([sys.executable, "-m", "kernel", "submit", str(pipeline), "--wait"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              cwd=tmp_path)
    try:
        assert waiter.stdout.readline().strip() == "job-1"
        wait_until(lambda: system.job("job-1")["status"] == "running", what="job-1 to run")
        system.coordinator.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        try:
            out, err = waiter.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("submit --wait still waiting 30 s after the coordinator froze")
        took = time.monotonic() - started
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    assert waiter.returncode == 1, (out, err)
    assert err.startswith("error: gave up following job-1 (it may still be running): could not reach "), err
    assert re.search(r" within [0-9.]+ s: it accepted the connection but never answered\n$", err), err
    # a wait answered after 0.5 s, 2 s of grace, 1.5 s to reconnect (each try bounded), and the start
    assert took < 15, took


def test_a_request_unanswered_in_time_says_so(frozen_a_moment):
    """`Client.request` on a frozen coordinator: NoAnswer (a ConnectionLost)
    that names the coordinator, the request and the time (it was a bare
    TimeoutError, printed by the CLI as `error: TimeoutError`)."""
    from kernel.system import Client, ConnectionLost

    system = frozen_a_moment

    async def ask() -> BaseException:
        async with Client((system.host, system.port), system.env["KERNEL_SECRET"].encode()) as client:
            await client.request("status")
            system.coordinator.send_signal(signal.SIGSTOP)
            try:
                await client.request("status", timeout=0.5)
            except ConnectionLost as exc:
                return exc
            finally:
                system.coordinator.send_signal(signal.SIGCONT)
            raise AssertionError("a frozen coordinator answered")

    error = asyncio.run(ask())
    assert str(error) == (f"the coordinator at {system.host}:{system.port} did not answer 'status' "
                          "within 0.5 s (frozen, or cut off)")


def test_a_submit_whose_reply_is_lost_is_sent_again_and_submits_one_job(frozen_a_moment, tmp_path):
    """The connection reset after the coordinator saved the job and before
    its reply came back (a proxy that resets it then): `submit` said `error:
    ... connection closed`, and the retry a user makes submitted a second
    job. It sends the submit again under the same request id, and the
    coordinator answers with the job it saved."""
    system = frozen_a_moment
    proxy = Proxy(system.port)
    try:
        proxy.command("lose-submit-reply")
        pipeline = write(tmp_path / "endless.py", ENDLESS)
        through = dict(system.env, KERNEL_COORDINATOR=f"127.0.0.1:{proxy.port}")
        done = system.cli("submit", pipeline, env=through)
    finally:
        proxy.close()
    assert (done.returncode, done.stdout, done.stderr) == (0, "job-1\n", "")
    assert [j["id"] for j in system.status()["jobs"]] == ["job-1"]
