"""Session 28: what was left in the system's catalog, tried with real
coordinator, executor and CLI processes and the catalog locked from another
process (`test_catalog_lock_review._hold`).

What a demanding operator expects, and what these tests hold the system to:
* one coordinator per data directory, whatever happened to its files: the
  directory deleted under a running coordinator (its `catalog.lock` with
  it), a second one on that --data refuses to start, naming the first;
* the CLI's `submit` and `kill` refused because the catalog is locked ask
  again within their own timeout, saying once on stderr that they wait and
  on whom, and a submit asked again never makes two jobs;
* that waiting survives a coordinator restart (it reconnects);
* a `busy` refusal says "another program" only where one holds the catalog."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from _system import System, wait_until
from test_catalog_lock_review import _hold, _release
from test_system import NOOP, slow, write

from kernel.system._catalog import Catalog, CatalogBusy
from kernel.system._wire import answer_by

_WAITING = re.compile(r"waiting for the coordinator's catalog \(database is locked: pid (\d+) \(\S+\) has "
                      r"held it for more than 0\.5 s\); asking again until \d+ s from the command's start\n")


def _up(system: System) -> None:
    """A coordinator whose catalog calls give up after 0.5 s, and one executor of one core."""
    system.start_coordinator("--catalog-timeout", "0.5")
    system.start_executor(1)
    system.executors_up(1)


def _cli(system: System, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kernel", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=system.env, cwd=system.root)


def _waits_on(cli: subprocess.Popen, holder: subprocess.Popen) -> None:
    """The CLI's first line on stderr says it waits, and on the holder."""
    line = cli.stderr.readline()
    found = _WAITING.fullmatch(line)
    assert found and int(found[1]) == holder.pid, (line, cli.poll() is not None and cli.communicate())


def test_a_second_coordinator_on_a_deleted_data_directory_refuses_to_start(tmp_path):
    system = System(tmp_path)
    try:
        first = system.start_coordinator()
        shutil.rmtree(tmp_path / "data")  # (its catalog.lock with it)
        second = subprocess.Popen(
            [sys.executable, "-m", "kernel", "coordinator", "--listen", f"127.0.0.1:{system.port + 1}",
             "--data", str(tmp_path / "data")], stderr=subprocess.PIPE, text=True, env=system.env,
            cwd=tmp_path)
        try:
            said = second.stderr.readline()  # (its error, or its "coordinator listening")
            code = second.wait(timeout=10) if said.startswith("error") else None
        finally:
            second.kill()
            second.wait()
            second.stderr.close()
        assert said == (f"error: the data directory {tmp_path / 'data'} is in use by another "
                        f"coordinator (pid {first.pid}), though its catalog.lock is gone "
                        "(deleted or moved while that one runs): stop it first\n"), said
        assert code == 1
        assert system.status()["jobs"] == []  # (the first serves on)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=10) == 143
        system.start_coordinator()  # (once it is gone, the directory is free)
    finally:
        system.close()


def test_submit_waits_for_a_locked_catalog_and_submits_once(tmp_path):
    system = System(tmp_path)
    try:
        _up(system)
        pipeline = write(tmp_path / "noop.py", NOOP)
        holder = _hold(system)
        try:
            cli = _cli(system, "submit", pipeline)
            _waits_on(cli, holder)
        finally:
            _release(holder)
        out, err = cli.communicate(timeout=20)
        assert (cli.returncode, out, err) == (0, "job-1\n", ""), (cli.returncode, out, err)
        assert [j["id"] for j in system.status()["jobs"]] == ["job-1"]
    finally:
        system.close()


def test_a_submit_waiting_for_the_catalog_survives_a_coordinator_restart(tmp_path):
    system = System(tmp_path)
    try:
        _up(system)
        pipeline = write(tmp_path / "noop.py", NOOP)
        holder = _hold(system)
        try:
            cli = _cli(system, "submit", pipeline)
            _waits_on(cli, holder)
            system.coordinator.kill()
            system.coordinator.wait(timeout=10)
        finally:
            _release(holder)
        system.start_coordinator("--catalog-timeout", "0.5")
        out, err = cli.communicate(timeout=40)
        assert (cli.returncode, out, err) == (0, "job-1\n", ""), (cli.returncode, out, err)
        wait_until(lambda: system.status()["jobs"], what="the job")
        assert [j["id"] for j in system.status()["jobs"]] == ["job-1"]
    finally:
        system.close()


def test_a_kill_waiting_for_the_catalog_survives_a_coordinator_restart(tmp_path):
    system = System(tmp_path)
    try:
        _up(system)
        pipeline, _ = slow(tmp_path, pause=0.01, count=10**9, out=tmp_path / "o")
        job = system.cli("submit", pipeline).stdout.splitlines()[0]
        wait_until(lambda: system.job(job)["status"] == "running", what="the job to run")
        holder = _hold(system)
        try:
            cli = _cli(system, "kill", job)
            _waits_on(cli, holder)
            system.coordinator.kill()
            system.coordinator.wait(timeout=10)
        finally:
            _release(holder)
        system.start_coordinator("--catalog-timeout", "0.5")
        out, err = cli.communicate(timeout=40)
        assert (cli.returncode, out, err) == (0, f"{job} killed\n", ""), (cli.returncode, out, err)
        state = system.job(job)
        assert (state["status"], state["message"]) == ("killed", "killed by request"), state
    finally:
        system.close()


def test_a_busy_refusal_from_a_long_queue_does_not_blame_another_program(tmp_path):
    catalog = Catalog(tmp_path / "data")
    try:
        async def scenario():
            gate = threading.Event()
            blocker = catalog.call(gate.wait, 5)  # (our own call holds the catalog's thread)

            async def request():  # (a request whose sender waits 0.2 s)
                answer_by.set(time.monotonic() + 0.2)
                await catalog.call(catalog.add_pipeline, "h", "x.py", b"", write=True)

            try:
                await request()
            except CatalogBusy as exc:
                refused = str(exc)
            else:
                refused = None
            gate.set()
            await blocker
            return refused

        refused = asyncio.run(scenario())
        assert refused == ("the catalog is busy: the calls queued before this one took more than 0.2 s "
                           "(no other program holds it; as long as the request's sender waits for its "
                           "answer)"), refused
    finally:
        catalog.close()
