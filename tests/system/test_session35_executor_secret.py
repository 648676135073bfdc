"""Session 35: an executor whose secret the coordinator refuses says so in
the system's words, on one line, and exits 1, however it gets there:
starting (KERNEL_SECRET or --secret-file, over TLS too), or reconnecting
to a coordinator restarted with another secret. It said `(authentication
failed with process 0 at http://127.0.0.1:7700: wrong or missing
secret)`, a cluster's words (the `process 0` of `kernel run --peers`),
where the system's commands say `(authentication failed: wrong or missing
secret)`. So did `submit --wait` and `logs --follow` following a job
through a coordinator restarted with another secret."""

from __future__ import annotations

import select
import subprocess
import sys

import pytest
from _system import System, a_system, descendants, running, wait_until
from test_system import slow
from test_system_tls import certificates, node_options  # noqa: F401 (a fixture)

REFUSED = ("error: the coordinator at 127.0.0.1:{port} refused this executor's secret (authentication "
           "failed: wrong or missing secret): start it with the system's KERNEL_SECRET or --secret-file")


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    with a_system(tmp_path_factory.mktemp("system")) as system:
        yield system


def _executor(system, workdir, env, *options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kernel", "executor", "--cores", "1", "--workdir", workdir,
                           *options], env=env, capture_output=True, text=True, timeout=30, cwd=system.root)


def test_a_wrong_kernel_secret(system, tmp_path):
    done = _executor(system, tmp_path / "w", dict(system.env, KERNEL_SECRET="not-the-secret"))
    assert (done.returncode, done.stdout, done.stderr) == (1, "", REFUSED.format(port=system.port) + "\n")


def test_a_wrong_secret_file(system, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("not-the-secret\n")
    env = {k: v for k, v in system.env.items() if k != "KERNEL_SECRET"}
    done = _executor(system, tmp_path / "w", env, "--secret-file", secret)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", REFUSED.format(port=system.port) + "\n")


def test_a_wrong_secret_over_tls(certificates, tmp_path):  # noqa: F811 (the fixture)
    system = System(tmp_path, options=node_options(certificates))
    try:
        system.start_coordinator()
        done = _executor(system, tmp_path / "w", dict(system.env, KERNEL_SECRET="not-the-secret"),
                         *node_options(certificates))
        assert (done.returncode, done.stdout, done.stderr) == (1, "", REFUSED.format(port=system.port) + "\n")
    finally:
        system.close()


def test_a_coordinator_restarted_with_another_secret(tmp_path):
    # The executor ran a job; its coordinator comes back with another secret:
    # the executor stops its job process and exits 1, saying so on its last
    # line, no traceback.
    with a_system(tmp_path) as system:
        pipeline, _ = slow(tmp_path, pause=0.01, count=10**9, out=tmp_path / "out")
        job = system.cli("submit", pipeline).stdout.splitlines()[0]
        wait_until(lambda: system.job(job)["status"] == "running", what=f"{job} to run")
        (executor,) = system.executors
        processes = descendants(executor.pid)[1:]
        assert processes
        system.coordinator.kill()
        system.coordinator.wait()
        system.start_coordinator(KERNEL_SECRET="another-secret")
        assert executor.wait(timeout=30) == 1
        log = (tmp_path / "executor1.log").read_text()
        assert log.splitlines()[-1] == REFUSED.format(port=system.port), log
        assert "Traceback" not in log
        assert running(processes) == []


COMMAND_REFUSED = ("error: gave up following {job} (it may still be running): the coordinator at "
                   "127.0.0.1:{port} refused this command's secret (authentication failed: wrong or missing "
                   "secret): run it with the system's KERNEL_SECRET or --secret-file\n")


@pytest.mark.parametrize("command", ["submit --wait", "logs --follow"])
def test_a_command_following_a_job_through_a_coordinator_restarted_with_another_secret(tmp_path, command):
    # (it said `authentication failed with process 0 at http://...` too)
    with a_system(tmp_path) as system:
        pipeline, _ = slow(tmp_path, pause=0.01, count=10**9, out=tmp_path / "out")
        args = ["submit", pipeline, "--wait"] if command == "submit --wait" else ["logs", "--follow", "job-1"]
        if command == "logs --follow":
            assert system.cli("submit", pipeline).returncode == 0
        follower = subprocess.Popen([sys.executable, "-m", "kernel", *map(str, args)], env=system.env,
                                    cwd=system.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
        try:
            # (following: it has printed, the job id or the log's first line)
            assert select.select([follower.stdout], [], [], 30)[0], "the command printed nothing in 30 s"
            assert follower.stdout.readline()
            wait_until(lambda: system.job("job-1")["status"] == "running", what="job-1 to run")
            system.coordinator.kill()
            system.coordinator.wait()
            system.start_coordinator(KERNEL_SECRET="another-secret")
            _, err = follower.communicate(timeout=60)
        finally:
            follower.kill()
            follower.wait()
        assert (follower.returncode, err) == (1, COMMAND_REFUSED.format(job="job-1", port=system.port))
