"""`from_iterable(sys.stdin)` over the standard input given from a file,
a run on 1 kernel failed, the file rewound (`sys.stdin.seek(0)`), then a
run on 2 kernels: it was refused at its source's open ("left its reader
thread waiting in a read of it ... Run it on one kernel"), as though the
failed run's reader, the launcher's, still read the file; but the file is
read again from its start, and that reader's thread had ended by the fork.
Now the run on 2 kernels reads the file from its start: resumed with a
state_dir, every line once; without one, every line. And a run after it,
on 1 kernel, no longer takes over the reader the failed run left in the
launcher, which held lines of that older read (1,490 of 3,000 again).
Not rewound, it is refused as before."""

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

here, total, how = sys.argv[1], int(sys.argv[3]), sys.argv[4]
out, state, marker = os.path.join(here, "out"), os.path.join(here, "state"), os.path.join(here, "failed")
fails_once = failing_once_at(marker, total // 2)
options = {} if how == "without a state_dir" else {"state_dir": state, "epoch_interval": 0.001}

def flow_over(stream):
    flow = Dataflow("lines")
    flow.from_iterable(stream, name="lines in", batch_size=10).map(int).map(fails_once).to_files(out)
    return flow

told = {}
try:
    run(flow_over(sys.stdin), **options)
except Exception as exc:
    told["first"] = str(exc)
told["committed"] = len(_committed(Path(out)))
if how != "not rewound":
    sys.stdin.seek(0)
try:
    run(flow_over(sys.stdin), cores=2, **options)
except Exception as exc:
    told["second"] = str(exc)
told["lines"] = _committed(Path(out))
if "second" not in told:  # (a run after, on 1 kernel: the file was read to its end)
    third = Dataflow("third")
    rest = third.from_iterable(sys.stdin, name="rest").collect()
    run(third)
    told["third"] = len(rest.items)
print(json.dumps(told))
'''


def _runs(tmp_path, total: int, how: str) -> dict:
    done = run_script_over_a_file(tmp_path, _SCRIPT, numbered_lines(total), str(tmp_path),
                                  str(Path(__file__).parent), str(total), how)
    told = json.loads(done.stdout.splitlines()[-1])
    assert "the first run fails here" in told["first"]
    if how != "without a state_dir":  # (without one, to_files commits at the end)
        assert 0 < told["committed"] < total
    return told


# 3,000 lines: the failed run's reader read the file to its end; 10,000: it
# was stopped mid-file (4,096 lines ahead at most), its thread ending after the read it was in
@pytest.mark.parametrize("total", [3_000, 10_000])
def test_a_rewound_standard_input_file_resumes_exactly_on_two_kernels(tmp_path, total):
    told = _runs(tmp_path, total, "rewound")
    assert "second" not in told, told["second"]
    assert sorted(told["lines"]) == list(range(total))
    assert told["third"] == 0


def test_a_rewound_standard_input_file_is_read_whole_on_two_kernels_without_a_state_dir(tmp_path):
    told = _runs(tmp_path, 3_000, "without a state_dir")
    assert "second" not in told, told["second"]
    assert sorted(told["lines"]) == list(range(3_000))
    assert told["third"] == 0


def test_a_standard_input_file_not_rewound_is_still_refused_on_two_kernels(tmp_path):
    told = _runs(tmp_path, 3_000, "not rewound")
    assert "Run it on one kernel" in told.get("second", ""), told
