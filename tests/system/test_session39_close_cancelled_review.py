"""Session 39 review of `close()` waiting for the exits of job processes
that ended just before it (69a44d4): a close() cancelled meanwhile (a
second SIGTERM while a connected executor's `_leave` stops its processes)
cancelled those processes' `_follow` with it, and the close() that comes
after (the CLI's `finally`) raised CancelledError at once, though not
cancelled itself: the exit was noted nowhere, nor the stops
(`_note_stopped`). Now the exit is noted, and the second close() returns.

In this process, as the review test of 69a44d4: one executor, never
connected (its id set as a register would), a job process whose step
raises at once, the loop held from its exit until close() begins."""

from __future__ import annotations

import asyncio
import json

from tests.system.test_session39_exits_while_away_review import cut_off_executor, started_failing


async def test_a_close_cancelled_while_it_waits_for_an_exit_leaves_the_next_close_to_note_it(tmp_path):
    executor = cut_off_executor(tmp_path)
    try:
        entry = await started_failing(executor)
        first = asyncio.ensure_future(executor.close())
        await asyncio.sleep(0)  # (it has begun: it waits for the exit, `_follow` not done)
        assert entry.code is None
        first.cancel()  # (a second SIGTERM)
        try:
            await first
        except asyncio.CancelledError:
            pass
    finally:
        await executor.close()  # (the CLI's `finally`)
    record = json.loads((tmp_path / "executor" / "executor.json").read_text())
    ended = record.get("ended", [])
    assert [(e["job"], e["attempt"], e["process"], e["code"]) for e in ended] == [("job-1", 1, 0, 1)], record
    assert "told to fail" in (ended[0]["error"] or ""), record
