"""The standard input given from a file, rewound after a run over
`sys.stdin` that failed at half: the next run, over `sys.stdin.buffer`,
read the file again whole, but only its own file object was sought back
(`let_go_if_rewound`): `sys.stdin`'s buffers still held 8 KiB of text
from where the failed run's reader had read to, and a run without a
state_dir over `sys.stdin` after it, the file read to its end, got 829
of those lines again (nothing is left to read). Now each file object the
earlier runs read the file through is sought back too."""

from __future__ import annotations

import json

from _live_streams import numbered_lines, run_script_over_a_file

_SCRIPT = r'''
import json, os, sys
from kernel import Dataflow, run

total = int(sys.argv[1])

def fails(value):
    if value == total // 2:
        raise ValueError("the first run fails here")
    return value

def flow_over(stream, got, failing=False):
    flow = Dataflow("lines")
    lines = flow.from_iterable(stream, name="lines in").map(int)
    (lines.map(fails) if failing else lines).sink(got.append)
    return flow

told = {}
try:
    run(flow_over(sys.stdin, [], failing=True))
except Exception as exc:
    told["first"] = str(exc)
os.lseek(0, 0, os.SEEK_SET)
again, after = [], []
run(flow_over(sys.stdin.buffer, again))
run(flow_over(sys.stdin, after))  # (the file read to its end: nothing)
told["again"], told["after"] = again, after
with open(sys.argv[2], "w") as out:  # (not printed: after a uvloop run, a print of over 64 KiB
    json.dump(told, out)             # to a pipe read slowly was cut at 64 KiB, no error)
'''


def test_a_rewound_file_read_through_another_file_object_leaves_no_old_read_in_the_first(tmp_path):
    total = 20_000  # (the failed run's reader paused mid-file, 4,096 lines ahead)
    run_script_over_a_file(tmp_path, _SCRIPT, numbered_lines(total), str(total), str(tmp_path / "told.json"))
    told = json.loads((tmp_path / "told.json").read_text())
    assert "the first run fails here" in told["first"]
    assert told["again"] == list(range(total))
    assert told["after"] == [], f"{len(told['after'])} lines of the failed run's read again"
