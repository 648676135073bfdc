"""Session 27's review of what was left in the coordinator's catalog, with
the catalog locked by another program (an operator's `sqlite3` with a write
transaction open, a backup: `test_catalog_lock_review._hold`) while real
coordinator, executor, job and client processes work.

What a demanding user expects, and what these tests hold the system to:
* a lock held by a backup does not kill a user's job: a job whose topic
  registration is refused because the catalog stayed locked past
  --catalog-timeout asks again, and goes on once the lock goes (it was
  `failed`, for good);
* a client does not give up on a request the coordinator is still working
  on: it waits for what the coordinator's --catalog-timeout lets it take
  (a topics client waited 10 s + 5 s, a CLI 60 s, whatever that was);
* a coordinator stopped while the catalog is locked says which jobs and
  executors it could not save, and as what;
* a job killed whose `ended` never reached the catalog (the coordinator
  killed between the kill's write and the next) shows an end time once a
  coordinator is started again."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import time

from _system import SECRET, System, descendants, wait_until
from test_catalog_lock_review import _hold, _release
from test_system import NOOP, slow, write

from kernel.system import Client
from kernel.system._catalog import TERMINAL, Catalog
from kernel.system._client import pipeline_payload
from kernel.system._wire import RequestError
from kernel.topics._directory import Directory

PUBLISHER = """\
import os, time
from kernel import Dataflow

while not os.path.exists({go!r}):  # (until the test has locked the catalog)
    time.sleep(0.01)
flow = Dataflow("pub")
flow.from_iterable(range(100)).publish("numbers")
"""


def test_a_job_whose_topic_registration_meets_a_locked_catalog_goes_on_once_the_lock_goes(tmp_path):
    system = System(tmp_path)
    try:
        system.start_coordinator("--catalog-timeout", "0.5")
        system.start_executor(1)
        system.executors_up(1)
        go = tmp_path / "go"
        job = system.cli("submit", write(tmp_path / "pub.py", PUBLISHER.format(go=str(go)))).stdout.split()[0]
        holder = _hold(system)
        try:
            go.touch()  # (the job's publish is refused: the catalog stays locked)
            log = tmp_path / "executor1" / "logs" / f"{job}.log"
            wait_until(lambda: system.job(job)["status"] == "failed"
                       or (log.exists() and "the catalog" in log.read_text() and "again" in log.read_text()),
                       timeout=15, what="the job's publish to be refused")
        finally:
            _release(holder)
        state = wait_until(lambda: (s := system.job(job))["status"] in TERMINAL and s, timeout=15,
                           what="the job to end")
        assert (state["status"], state["restarts"], state["attempt"]) == ("completed", 0, 1), state
        text = log.read_text()
        assert re.search(r"database is locked: pid \d+ \(\S+\) has held it for more than 0\.5 s", text), \
            text
    finally:
        system.close()


def test_a_coordinator_answers_a_request_before_its_client_gives_up(tmp_path):
    # The coordinator waits 3 s for the catalog (--catalog-timeout 3); a
    # topics client whose own timeout is 0.5 s waits 0.5 + 2 s for its
    # answer, a CLI client its request's timeout (1 s here): each said "did
    # not answer" while the coordinator still worked on its request (and
    # did it). Now each is answered within its wait: refused, the catalog
    # locked, which the topics client asks again until it is done.
    system = System(tmp_path)
    try:
        system.start_coordinator("--catalog-timeout", "3")
        system.start_executor(1)
        system.executors_up(1)
        payload = pipeline_payload(str(write(tmp_path / "noop.py", NOOP)))

        async def scenario():
            directory = Directory((system.host, system.port), SECRET.encode(), timeout=0.5)
            try:
                async with Client((system.host, system.port), SECRET.encode()) as client:
                    await directory.request("topic_lookup", name="prices", job="app:x")  # (connected)
                    holder = _hold(system)
                    try:
                        publish = asyncio.ensure_future(directory.request(
                            "topic_publish", name="prices", id="p1", job="app:feed", kind="stream",
                            partitions=1, partition=0, address="127.0.0.1:9"))
                        submit = asyncio.ensure_future(client.request("submit", timeout=1, **payload,
                                                                      request="r1"))
                        await asyncio.wait([publish, submit], timeout=2.8)
                        waiting = not publish.done()
                    finally:
                        _release(holder)
                    return waiting, *await asyncio.gather(publish, submit, return_exceptions=True)
            finally:
                await directory.close()

        waiting, published, submitted = asyncio.run(scenario())
        assert isinstance(submitted, RequestError), repr(submitted)
        assert "database is locked" in str(submitted) and "as long as the request's sender waits" \
            in str(submitted), submitted
        assert waiting, f"the topics client gave up while the catalog was locked: {published!r}"
        assert published == {}
        assert [t["name"] for t in system.status()["topics"]] == ["prices"]
        assert system.status()["jobs"] == []
    finally:
        system.close()


def test_a_coordinator_stopped_while_the_catalog_is_locked_says_what_it_did_not_save(tmp_path):
    system = System(tmp_path)
    try:
        system.start_coordinator("--catalog-timeout", "0.5")
        pipeline, _ = slow(tmp_path, pause=0.01, count=10**9, out=tmp_path / "o")
        executor = system.start_executor(2)
        system.executors_up(1)
        job = system.cli("submit", pipeline).stdout.splitlines()[0]
        wait_until(lambda: system.job(job)["status"] == "running", what="the job to run")
        launcher = wait_until(lambda: descendants(executor.pid)[1:2], what="the job's process")[0]
        holder = _hold(system)
        try:
            os.kill(launcher, signal.SIGKILL)  # (the job restarts: its writes wait, then fail)
            wait_until(lambda: (s := system.job(job))["status"] == "running" and s["attempt"] == 2,
                       timeout=10, what="attempt 2 to run")
            system.coordinator.send_signal(signal.SIGTERM)
            assert system.coordinator.wait(timeout=10) == 143
        finally:
            _release(holder)
        log = system.coordinator_log.read_text()
        assert re.search(rf"stops with the catalog \S*catalog\.sqlite behind: not saved: {job} \(running, "
                         rf"attempt 2, 1 restart\)", log), log
        saved = sqlite3.connect(system.root / "data" / "catalog.sqlite")
        try:
            assert saved.execute("SELECT status, attempt FROM jobs WHERE id = ?", (job,)).fetchone() \
                == ("running", 1)
        finally:
            saved.close()
    finally:
        system.close()


def test_a_killed_job_whose_end_time_was_not_written_shows_one_after_a_restart(tmp_path):
    # What a coordinator SIGKILLed right after a kill's write left (the next
    # write, with the job's end time, never made): the job killed, its
    # `ended` empty; status showed it so, for good.
    catalog = Catalog(tmp_path / "data")
    try:
        def killed() -> str:
            catalog.add_pipeline("h", "noop.py", NOOP.encode())
            job = catalog.new_job(name="noop.py:flow", flow="flow", pipeline="h", processes=1, cores=1,
                                  executors=None, state_dir=None, epoch_interval=None, max_restarts=3)
            job.status, job.message, job.attempt, job.started = "killed", "killed by request", 1, time.time()
            catalog.save(job)
            return job.id

        job = catalog.at_once(killed)
    finally:
        catalog.close()
    system = System(tmp_path)
    try:
        before = time.time()
        system.start_coordinator()
        state = system.job(job)
        assert (state["status"], state["message"]) == ("killed", "killed by request"), state
        assert state["ended"] is not None and before <= state["ended"] <= time.time(), (state, before)
        system.coordinator.send_signal(signal.SIGTERM)
        assert system.coordinator.wait(timeout=10) == 143
        saved = sqlite3.connect(tmp_path / "data" / "catalog.sqlite")
        try:
            ended = saved.execute("SELECT status, ended FROM jobs WHERE id = ?", (job,)).fetchone()
            assert ended == ("killed", state["ended"]), ended
        finally:
            saved.close()
    finally:
        system.close()
