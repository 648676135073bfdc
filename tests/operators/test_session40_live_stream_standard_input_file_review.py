"""`from_iterable` over the standard input redirected from a file (`python
app.py < lines.txt`) with a `state_dir`, after a run of the same process
over `sys.stdin` took lines of it: a run over another file object of
descriptor 0 (`open(0)`, which shares its offset) was not refused (the
streams a run took lines of knew a regular file by its file object, not
by its inode, as a pipe), resumed, and lost 2,990 of 3,000 lines, no
error. Refused now; over the input fed again, every line once."""

from __future__ import annotations

import json
from pathlib import Path

from _live_streams import numbered_lines, run_script_over_a_file

_SCRIPT = r'''
import json, os, sys, time
sys.path.insert(0, sys.argv[2])
from test_session39_live_stream_resume import TOTAL, _committed
from kernel import Dataflow, run
from kernel.dataflow._errors import KernelError

here = sys.argv[1]
out, state, marker = os.path.join(here, "out"), os.path.join(here, "state"), os.path.join(here, "failed")

def fails_once(value):
    if not os.path.exists(marker):
        if value == TOTAL // 2:
            open(marker, "w").close()
            raise ValueError("the first run fails here")
        time.sleep(0.0005)  # (the first run: epochs complete before it fails)
    return value

def flow_over(stream):
    flow = Dataflow("lines")
    flow.from_iterable(stream, name="lines in", batch_size=10).map(int).map(fails_once).to_files(out)
    return flow

told = {}
try:
    run(flow_over(sys.stdin), state_dir=state, epoch_interval=0.001)
except Exception as exc:
    told["first"] = str(exc)
from pathlib import Path
told["committed"] = len(_committed(Path(out)))
try:
    run(flow_over(open(0, closefd=False)), state_dir=state, epoch_interval=0.01)
except KernelError as exc:
    told["second"] = str(exc)
read_end, write_end = os.pipe()
with os.fdopen(write_end, "w") as again:  # (3,000 short lines: within the pipe's buffer)
    again.write("".join(f"{i}\n" for i in range(TOTAL)))
with os.fdopen(read_end) as fed_again:
    run(flow_over(fed_again), state_dir=state, epoch_interval=0.01)
told["lines"] = _committed(Path(out))
print(json.dumps(told))
'''


def test_a_run_over_open_0_after_one_over_sys_stdin_from_a_file_is_refused(tmp_path):
    done = run_script_over_a_file(tmp_path, _SCRIPT, numbered_lines(3_000), str(tmp_path),
                                  str(Path(__file__).parent))
    told = json.loads(done.stdout.splitlines()[-1])
    assert "the first run fails here" in told["first"]
    assert 0 < told["committed"] < 3_000
    assert "an earlier run of this process read lines of its input" in told.get("second", ""), told
    assert sorted(told["lines"]) == list(range(3_000))
    assert len(told["lines"]) == 3_000
