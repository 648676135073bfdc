"""Session 41 review (second round): close() lets the workdir's lock go and
refuses every start from then on (`_closed`). An app that closed its
executor (its run() cancelled before it reached a coordinator) and ran it
again had it register as any: a job placed on it failed to start, `could
not start: executor e1 is stopping; gave up after 1 restart(s)`
(--max-restarts 1, both attempts placed there), while a second executor
could be made on the same workdir beside it. run() on a closed executor
now says so at once, before it dials.

In this process: a coordinator served in this loop, one executor."""

from __future__ import annotations

import asyncio

from _system import HEARTBEAT, SECRET, served_coordinator

from kernel.system._executor import ExecutorDaemon


async def test_a_closed_executor_does_not_run_again(tmp_path):
    async def then(address) -> None:
        executor = ExecutorDaemon(address, SECRET.encode(), 1, tmp_path / "executor", host="127.0.0.1",
                                  heartbeat=HEARTBEAT)
        await executor.close()
        registered = []
        again = asyncio.ensure_future(executor.run(ready=registered.append))
        try:
            await asyncio.wait_for(asyncio.shield(again), 10)
            raise AssertionError("run() after close() returned")
        except RuntimeError as exc:
            assert str(exc) == (f"the executor on {executor.workdir} is closed (close()): it cannot run "
                                "again; start a new one")
        except TimeoutError:
            raise AssertionError(f"run() after close() ran on (registered as {registered})") from None
        finally:
            again.cancel()
            await asyncio.gather(again, return_exceptions=True)
        assert registered == []

    await served_coordinator(tmp_path / "data", then)
