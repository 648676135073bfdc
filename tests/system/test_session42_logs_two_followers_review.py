"""Two followers of a log on an executor that leaves, one far behind the
other (a pager read slowly; more than the coordinator keeps of a log
between them): the one at the log's end still gets the lines written as
the executor left. The tail kept was the one from the place furthest
back, cut at KEEP_MOST_PER_LOG: the follower further on was past the cut
and told the executor's logs unreachable, its last lines lost, though
they were a few bytes after its place (`kernel.system._logs.LeftLogs`).

Real processes: a coordinator, an executor, the job; the followers are
client connections held by the test, as `logs --follow` holds one."""

from __future__ import annotations

import asyncio

from test_session42_logs_left_executor import _a_system_here, _connected, _log_file, _ready, _stopped

from kernel.system._logs import KEEP_MOST_PER_LOG

# (5 MiB at its start, more than the coordinator keeps of a log, then
# "ready"; its last words as it is stopped)
BIG_START = """\
import atexit, itertools, signal, time
from kernel import Dataflow

atexit.register(lambda: (signal.signal(signal.SIGINT, signal.SIG_IGN), print("last words", flush=True)))
print(("z" * 99 + "\\n") * 52429 + "ready", flush=True)
flow = Dataflow()
flow.from_iterable(itertools.count()).map(lambda x: time.sleep(0.01) or x).sink(lambda x: None)
"""


async def test_a_follower_at_the_end_gets_its_last_lines_beside_one_far_behind(tmp_path):
    async with _a_system_here(tmp_path) as system:
        async with _connected(system) as ahead, _connected(system) as behind, _connected(system) as near:
            job, executor, offset = await _ready(system, ahead, tmp_path, BIG_START)
            assert offset > KEEP_MOST_PER_LOG
            # (the one behind has read the log's first MiB, and no further yet)
            first = await behind.request("logs", job=job, offsets={executor: 0})
            assert first["chunks"][executor]["offset"] == 1 << 20
            # (and one a little behind: within the bound of the one at the end)
            close = offset - 300_000
            await near.request("logs", job=job, offsets={executor: close})
            await asyncio.to_thread(_stopped, system, executor)
            after = await ahead.request("logs", job=job, offsets={executor: offset})
            assert after["unreachable"] == [], after["unreachable"]
            text = after["chunks"][executor]["text"]
            assert text.splitlines()[-2:] == ["interrupted", "last words"], text[-300:]
            log = _log_file(tmp_path, system, executor, job)
            assert text.encode() == log[offset:]
            # the one a little behind: from its place, the same bytes
            near_after = await near.request("logs", job=job, offsets={executor: close})
            assert near_after["unreachable"] == []
            assert near_after["chunks"][executor]["text"].encode() == log[close:]
            # the one far behind: past the bound, the rest on the executor's disk only
            behind_after = await behind.request("logs", job=job, offsets={executor: 1 << 20})
            assert behind_after["unreachable"] == [executor]
