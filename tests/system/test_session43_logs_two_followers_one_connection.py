"""Session 43: the coordinator keeps where each client connection reads a
job's log on each executor, so that an executor that leaves (SIGTERM) has
the rest of each followed log fetched first, from those places
(`kernel.system._logs.LeftLogs`). It kept one place per connection, job
and executor, the last asked: two followers of one job on one connection
(a program's client following a log twice, from two places), the one
behind, having asked first, was told the executor's logs unreachable
after the leave, its last lines lost. Each `logs` request now says which
follower asks (the CLI's `logs` gives itself an id), and each follower's
place is kept.

Real processes: a coordinator, an executor, the job; the followers share
one client connection held by the test."""

from __future__ import annotations

import asyncio

import pytest
from test_session42_logs_left_executor import (
    PIPELINE,
    _a_system_here,
    _connected,
    _log_file,
    _ready,
    _stopped,
)

from kernel.system._wire import RequestError


async def test_two_followers_on_one_connection_each_get_the_lines_written_as_the_executor_left(tmp_path):
    async with _a_system_here(tmp_path) as system, _connected(system) as client:
        job, executor, offset = await _ready(system, client, tmp_path, PIPELINE)
        behind = 1000  # (within what the coordinator keeps of a log from the place furthest on)
        # the one behind asks first, the one at the end last
        await client.request("logs", job=job, offsets={executor: behind}, follower="behind")
        await client.request("logs", job=job, offsets={executor: offset}, follower="ahead")
        await asyncio.to_thread(_stopped, system, executor)
        log = _log_file(tmp_path, system, executor, job)
        for follower, place in (("ahead", offset), ("behind", behind)):
            after = await client.request("logs", job=job, offsets={executor: place}, follower=follower)
            assert after["unreachable"] == [], (follower, after["unreachable"])
            text = after["chunks"][executor]["text"]
            assert text.encode() == log[place:], (follower, text[-200:])
            assert text.splitlines()[-2:] == ["interrupted", "last words"], (follower, text[-200:])
        with pytest.raises(RequestError, match="a follower id is a string"):
            await client.request("logs", job=job, offsets={}, follower=7)
