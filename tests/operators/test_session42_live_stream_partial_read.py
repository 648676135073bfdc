"""`from_iterable(iter(functools.partial(sys.stdin.buffer.read, n), b""))`,
chunks of the standard input: the file object a partial's function is bound
to was not looked for (a method's was: `iter(sys.stdin.readline, "")`), so
the input was no live stream. On 2 kernels both read the standard input,
each keeping its share of what it read: 645,818 of 1,288,890 bytes came,
no error; and a run with a state_dir over it after a failed run over
`sys.stdin` resumed, losing what that run read. Now it is the standard
input, read in kernel 0, whole, and refused as `sys.stdin` itself is."""

from __future__ import annotations

import json
from pathlib import Path

from _live_streams import numbered_lines, run_script_over_a_file

_SCRIPT = r'''
import functools, json, os, sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from _live_streams import failing_once_at
from test_session39_live_stream_resume import _committed
from kernel import Dataflow, run

here, how = sys.argv[1], sys.argv[3]
chunks = lambda: iter(functools.partial(sys.stdin.buffer.read, 4096), b"")
told = {}
if how == "on two kernels":
    flow = Dataflow("chunks")
    sizes = flow.from_iterable(chunks(), name="chunks in").map(len).collect()
    run(flow, cores=2)
    told["bytes"] = sum(sizes.items)
else:
    out, state = Path(here) / "out", os.path.join(here, "state")
    fails_once = failing_once_at(os.path.join(here, "failed"), 1_500)

    def flow_over(data, parse):
        flow = Dataflow("lines")
        flow.from_iterable(data, name="lines in", batch_size=10).flat_map(parse).map(fails_once).to_files(out)
        return flow

    try:
        run(flow_over(sys.stdin, lambda line: [int(line)]), state_dir=state, epoch_interval=0.001)
    except Exception as exc:
        told["first"] = str(exc)
    try:
        run(flow_over(chunks(), lambda chunk: list(map(int, chunk.split()))), state_dir=state,
            epoch_interval=0.001)
    except Exception as exc:
        told["second"] = str(exc)
print(json.dumps(told))
'''


def _runs(tmp_path, lines: str, how: str) -> dict:
    done = run_script_over_a_file(tmp_path, _SCRIPT, lines, str(tmp_path), str(Path(__file__).parent), how)
    return json.loads(done.stdout.splitlines()[-1])


def test_chunks_of_the_standard_input_read_by_a_partial_come_whole_on_two_kernels(tmp_path):
    lines = numbered_lines(200_000)
    told = _runs(tmp_path, lines, "on two kernels")
    assert told["bytes"] == len(lines.encode())


def test_a_state_dir_run_over_a_partial_after_a_failed_one_over_the_standard_input_is_refused(tmp_path):
    told = _runs(tmp_path, numbered_lines(3_000), "after a failed run")
    assert "the first run fails here" in told["first"]
    assert "an earlier run of this process read lines of its input" in told.get("second", ""), told
