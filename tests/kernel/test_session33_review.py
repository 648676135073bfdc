"""A review of the thirty-third session's changes: the causes a kernel
process carries back (kernel/scheduling/_errors.py `carry_causes`) and the
write ends a kernel lets go of (kernel/execution/_standard_input.py
`let_go_of_its_writers`)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading

from kernel import Dataflow, run_async

RAISES_ITS_OWN = """\
from kernel import Dataflow


class BadRecord(Exception):
    pass


def parse(x):
    if x == 3:
        raise BadRecord(f"bad record {x}")
    return x


flow = Dataflow("own")
flow.from_iterable(range(8)).map(parse).collect()
"""


def test_an_exception_class_of_the_pipeline_file_is_reported_as_on_one_core(tmp_path):
    """`python -m kernel.run p.py --cores 2`, a function raising a class the
    pipeline file defines: the kernels import the file, the command does
    not, so that cause does not unpickle there. Carried inside the
    OperatorError, it made the whole error fail to unpickle: the command
    printed "kernel 1 failed: OperatorError: Traceback ..." with the library's
    frames, the chain twice and "The above exception ..." between, where
    it printed the user's frame alone."""
    script = tmp_path / "pipeline.py"
    script.write_text(RAISES_ITS_OWN)
    done = subprocess.run([sys.executable, "-m", "kernel.run", str(script), "--cores", "2"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    err = done.stderr
    assert re.match(r"error: kernel \d: operator 'map\(parse\) \(step 1\)': function 'parse' raised "
                    r"BadRecord: bad record 3\n  on record: 3\n", err), err
    line = RAISES_ITS_OWN.splitlines().index('        raise BadRecord(f"bad record {x}")') + 1
    assert err.count(f'File "{script}", line {line}, in parse') == 1, err
    assert "The above exception" not in err and "_child.py" not in err, err
    assert err.splitlines()[-1] == "BadRecord: bad record 3", err


async def test_a_fifo_its_writer_opened_for_reading_and_writing_ends_on_two_kernels(tmp_path):
    """A FIFO's writer opened O_RDWR (its open does not wait for a reader),
    a thread of the caller writing it as the kernels fork: each kernel's
    copy of that descriptor, not O_WRONLY, was kept, and kernel 0 waited for
    more lines for ever after the writer closed its end (one kernel ends)."""
    fifo = tmp_path / "numbers.fifo"
    os.mkfifo(fifo)
    total = 100_000  # more than a pipe holds: still writing as the kernels fork
    write = os.open(fifo, os.O_RDWR)

    def feed():
        with os.fdopen(write, "wb") as out:
            out.write("".join(f"{i}\n" for i in range(1, total + 1)).encode())

    writer = threading.Thread(target=feed)
    try:
        with open(fifo) as numbers:
            writer.start()
            flow = Dataflow("rdwr")
            out = flow.from_iterable(numbers).map(int).collect()
            await asyncio.wait_for(run_async(flow, cores=2), 30)
    finally:
        writer.join()
    assert sorted(out.items) == list(range(1, total + 1))

