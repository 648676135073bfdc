"""Session 40: an executor whose workdir's disk is full cannot write
executor.json, and warns. The warning said "its id e1 is kept in memory
only" whatever the write was: where what was lost was the note of a job
process's exit the coordinator had not heard (`ended`), or of the
processes it stopped on purpose (`stopped`), it named neither. It now
names what was lost.

In this process: one executor, never connected (its id set as a register
would), its workdir on a real full disk (a 192 KiB tmpfs, filled); two job
processes, one that ends once the test says so (its exit noted) and one
stopped by the executor's close()."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

from kernel.system._executor import ExecutorDaemon
from kernel.system._wire import file_fields

# ends once {flag} exists
WAITING = """\
import os
import time
from kernel import Dataflow

def step(n):
    while not os.path.exists({flag!r}):
        time.sleep(0.01)
    return n

flow = Dataflow("waiting")
flow.from_iterable(range(3), batch_size=3).map(step).sink(id)
"""


async def _start(executor: ExecutorDaemon, job: str, flag) -> None:
    content = WAITING.format(flag=str(flag)).encode()
    await executor._request("start", {
        "job": job, "attempt": 1, "process": 0, "flow": "flow", "filename": "waiting.py",
        **file_fields(content), "digest": hashlib.sha256(content).hexdigest(), "cores": 1})


def _fill(disk) -> None:
    with open(disk / "filler", "wb", buffering=0) as out:
        try:
            while True:
                out.write(bytes(512))
        except OSError:
            pass


async def test_a_full_disk_warning_names_the_exit_or_the_stops_it_could_not_note(tmp_path, tiny_disk, caplog):
    workdir = tiny_disk / "executor"
    workdir.mkdir()
    (workdir / "executor.json").write_text(json.dumps({"id": "e1"}))
    executor = ExecutorDaemon(("127.0.0.1", 9), b"full-secret", 2, workdir, host="127.0.0.1")
    ends, never = tmp_path / "end", tmp_path / "never"
    try:
        await _start(executor, "job-1", ends)
        await _start(executor, "job-2", never)
        _fill(tiny_disk)
        with caplog.at_level(logging.WARNING, logger="kernel.system"):
            ends.touch()
            entry = executor.processes["job-1", 1, 0]
            await asyncio.wait_for(asyncio.shield(entry.followed), 60)
            said = [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()]
            assert len(said) == 1, said
            assert said[0].endswith(
                f": the exit of job-1 attempt 1 process 0 (code {entry.code}), which the coordinator has "
                "not heard, is kept in memory only: an executor started again on this workdir cannot "
                "report it"), said
            assert "its id" not in said[0], said
            # (in memory, the next register of this executor lists it still)
            assert [(e["job"], e["code"]) for e in executor._noted_exits()] == [("job-1", entry.code)]
            caplog.clear()
            await executor.close()  # (job-2's process stopped on purpose, with no coordinator to tell)
        said = [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()]
        assert len(said) == 1, said
        assert said[0].endswith(": that it stopped job-2 attempt 1 process 0 on purpose is not kept: an "
                                "executor started again on this workdir cannot say so, and their jobs may "
                                "spend a restart"), said
    finally:
        await executor.close()
    # (nothing written: the file as it was)
    assert json.loads((workdir / "executor.json").read_text()) == {"id": "e1"}
