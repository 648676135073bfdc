"""The standard input given from a file, rewound after a failed run whose
reader thread is still in a read of the user's iterator (a slow generator
over `sys.stdin`): the next run's source joined that thread on the event
loop (`let_go_if_rewound`, up to 1 s), holding the loop, the host's under
`run_async`: a timer of the host's loop came 1.0 s late, and a thread the
host's own timer would have let go of was still alive after the join, so
the run was refused (with a state_dir) or read the file object's stale
buffers before the file (without one: 4,859 lines of 3,000). Now the
source looks again on a timer of the loop, idle meanwhile: the loop's lag
stays that of a run, and the file is read again from its start, each line
once. (On the kernel's clock, a `VirtualClock` never advanced had the
run wait for ever.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _live_streams import numbered_lines, run_script_over_a_file

_SCRIPT = r'''
import asyncio, json, os, sys, threading, time
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from test_session39_live_stream_resume import _committed
from kernel import Dataflow, VirtualClock, run_async
from operators import _live_input, _sources

here, total, how = sys.argv[1], int(sys.argv[3]), sys.argv[4]
_live_input._LET_GO_WITHIN = _sources._LET_GO_WITHIN = 0.6  # (the window: shorter, for the test)
released, waiting = threading.Event(), threading.Event()

def slow_lines(stream):  # (its thread waits in it, after its run failed, until released)
    for line in stream:
        yield line
        waiting.set()
        released.wait(10)

def fails(value):  # (once the reader's thread waits in the generator: else it may end first)
    waiting.wait(10)
    raise ValueError("the first run fails here")

async def main():
    told = {}
    first = Dataflow("first")
    first.from_iterable(slow_lines(sys.stdin), name="slow in").map(int).map(fails).collect()
    try:
        await run_async(first)
    except Exception as exc:
        told["first"] = str(exc)
    os.lseek(0, 0, os.SEEK_SET)
    loop, lags = asyncio.get_running_loop(), []

    async def ticks():  # (the host's timer: how late it comes while the run starts)
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - before - 0.005)

    ticking = asyncio.create_task(ticks())
    await asyncio.sleep(0.02)
    if how != "still reading":
        loop.call_later(0.05, released.set)  # (the generator goes on, within the window)
    out, got = Path(here) / "out", []
    second = Dataflow("second")
    lines = second.from_iterable(sys.stdin, name="lines in").map(int)
    if how == "without a state_dir":
        lines.sink(got.append)
        await run_async(second)
    elif how == "on a VirtualClock":  # (not advanced: the looks again are in the loop's time)
        lines.sink(got.append)
        await run_async(second, clock=VirtualClock())
    else:
        lines.to_files(out)
        try:
            await run_async(second, state_dir=os.path.join(here, "state"), epoch_interval=0.01)
        except Exception as exc:
            told["second"] = str(exc)
        got = _committed(out)
    await asyncio.sleep(0.02)  # (a tick the run held comes, late, before the ticks end)
    ticking.cancel()
    released.set()
    told["lag"], told["lines"] = max(lags), got
    print(json.dumps(told))

asyncio.run(main())
'''


def _runs(tmp_path, how: str) -> dict:
    total = 3_000
    done = run_script_over_a_file(tmp_path, _SCRIPT, numbered_lines(total), str(tmp_path),
                                  str(Path(__file__).parent), str(total), how, timeout=30)
    told = json.loads(done.stdout.splitlines()[-1])
    assert "the first run fails here" in told["first"]
    # (a run's own lag, a state_dir's set-up: 0.1-0.17 s; the join: the whole window, 0.6 s)
    assert told["lag"] < 0.4, f"the host's loop was held {told['lag']:.3f} s"
    return told, total


@pytest.mark.parametrize("how", ["with a state_dir", "without a state_dir", "on a VirtualClock"])
def test_a_rewound_file_whose_old_reader_ends_soon_is_read_again_without_holding_the_loop(tmp_path, how):
    told, total = _runs(tmp_path, how)
    assert "second" not in told, told["second"]
    got = told["lines"]
    assert len(got) == total, f"{len(got)} lines, {len(set(got))} distinct"
    assert sorted(got) == list(range(total))


def test_a_rewound_file_whose_old_reader_still_reads_is_refused_without_holding_the_loop(tmp_path):
    told, _total = _runs(tmp_path, "still reading")
    assert "an earlier run of this process read lines of its input" in told.get("second", ""), told
    assert told["lines"] == []
