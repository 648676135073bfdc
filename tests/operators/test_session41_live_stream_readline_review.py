"""`from_iterable(iter(sys.stdin.readline, ""))` over the standard input
given from a file: the method's file object was not looked for (only
iterators' references were), so the input was no live stream. After a
failed run over `sys.stdin`, a run with a state_dir over it resumed and
lost the lines that run had read (10,178 of 20,000, no error); rewound,
the file object's buffers of the earlier read came first (20,467 lines
committed of 20,000, 467 twice), and a run over `sys.stdin` after a failed
one over `readline` got 40 twice. Now the file object a method is bound
to is found: refused as over `sys.stdin` itself, and rewound, each line
once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _live_streams import numbered_lines, run_script_over_a_file

_SCRIPT = r'''
import json, os, sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from _live_streams import failing_once_at
from test_session39_live_stream_resume import _committed
from kernel import Dataflow, run

here, total, first, second, rewound = sys.argv[1], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
marker = os.path.join(here, "failed")

fails_once = failing_once_at(marker, total // 2)

def flow_over(kind, out):
    lines = sys.stdin if kind == "sys.stdin" else iter(sys.stdin.readline, "")
    flow = Dataflow("lines")
    flow.from_iterable(lines, name="lines in", batch_size=10).map(int).map(fails_once).to_files(out)
    return flow

told, out, state = {}, Path(here) / "out", os.path.join(here, "state")
try:
    run(flow_over(first, out), state_dir=state, epoch_interval=0.001)
except Exception as exc:
    told["first"] = str(exc)
told["committed"] = len(_committed(out))
if rewound == "rewound":
    os.lseek(0, 0, os.SEEK_SET)
try:
    run(flow_over(second, out), state_dir=state, epoch_interval=0.01)
except Exception as exc:
    told["second"] = str(exc)
told["lines"] = _committed(out)
print(json.dumps(told))
'''


def _runs(tmp_path, first: str, second: str, rewound: str) -> dict:
    total = 3_000
    done = run_script_over_a_file(tmp_path, _SCRIPT, numbered_lines(total), str(tmp_path),
                                  str(Path(__file__).parent), str(total), first, second, rewound)
    told = json.loads(done.stdout.splitlines()[-1])
    assert "the first run fails here" in told["first"]
    assert 0 < told["committed"] < total
    return told, total


@pytest.mark.parametrize("first", ["sys.stdin", "readline"])
def test_a_run_over_readline_after_a_failed_run_is_refused(tmp_path, first):
    told, total = _runs(tmp_path, first, "readline", "not rewound")
    committed = told["lines"]
    assert "an earlier run of this process read lines of its input" in told.get("second", ""), (
        f"not refused: {len(committed)} of {total} lines committed")
    assert 0 < len(committed) < total
    assert committed == list(range(len(committed)))  # (what the failed run committed, and nothing else)


@pytest.mark.parametrize(("first", "second"), [("sys.stdin", "readline"), ("readline", "sys.stdin"),
                                               ("readline", "readline")])
def test_a_rewound_file_read_through_readline_resumes_exactly(tmp_path, first, second):
    told, total = _runs(tmp_path, first, second, "rewound")
    assert "second" not in told, told["second"]
    committed = told["lines"]
    assert committed == list(range(total)), f"{len(committed)} lines, {len(set(committed))} distinct"
