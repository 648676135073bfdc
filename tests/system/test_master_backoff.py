"""The job master's restart backoff, in-process: a real catalog and master,
and one executor that refuses every start (what a pipeline directory that
cannot be made does, as in test_system.py's never-start test, where this
was found under load: the job gave up 0.43 s after its submission, not
after the 0.6 s its pauses take).

A `reconcile` spawns a launch for each job waiting for a place; a
reconcile that comes just after another (an executor's heartbeat, a
process's exit) spawns a second one before the first has taken the job's
lock. The first launch fails and sets the next pause; the second then
found the job restarting and launched it at once, skipping the pause."""

from __future__ import annotations

import asyncio
import itertools
import time

from kernel.system._catalog import Catalog
from kernel.system._master import JobMaster
from kernel.system._wire import RequestError


class RefusingExecutor:
    """An executor's session that answers every start with a refusal."""

    name = "executor e1"

    def __init__(self) -> None:
        self.starts: list[float] = []

    async def request(self, kind: str, **fields):
        if kind == "start":
            self.starts.append(time.monotonic())
            raise RequestError("cannot make the pipeline's directory")
        return {}

    async def close(self) -> None:
        pass


def test_a_reconcile_just_after_another_does_not_skip_the_restart_pause(tmp_path):
    async def scenario() -> tuple[dict, list[float]]:
        master = JobMaster(Catalog(tmp_path))
        reconcile = master.reconcile

        def twice() -> None:  # every reconcile followed at once by another
            reconcile()
            reconcile()

        master.reconcile = twice
        executor = RefusingExecutor()
        master.register(executor, {"executor": "e1", "cores": 2, "host": "127.0.0.1"})
        job = await master.submit(filename="never.py", content=b"", digest="d" * 64, flow="flow", processes=1,
                            cores=1, executors=None, state_dir=None, epoch_interval=None, max_restarts=3)
        while master.job_status(job.id)["status"] != "failed":
            await master.wait_for_change(5)
        status = master.job_status(job.id)
        await master.close()
        return status, executor.starts

    status, starts = asyncio.run(scenario())
    assert (status["restarts"], status["attempt"]) == (3, 4), status
    # each attempt once, the first restart at once, then 0.2 s and 0.4 s apart
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert len(starts) == 4 and gaps[1] >= 0.2 and gaps[2] >= 0.4, gaps
