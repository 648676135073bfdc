"""`from_iterable(sys.stdin)` over the standard input given from a file
(`python app.py < lines.txt`), read again from its start after a run that
failed (`os.lseek(0, 0, 0)` or `sys.stdin.seek(0)`): the lines that run
took are not gone from a regular file, but the run after the rewind was
refused with a state_dir ("an earlier run of this process read lines of
its input"), and without one took over the reader the failed run left and
got the file from where that reader had read to, not from its start. Now
a rewound file is read again from its start: resumed with a state_dir,
every line once; without one, every line of the file. Not rewound, it is
refused as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _live_streams import numbered_lines, run_script_over_a_file

_SCRIPT = r'''
import json, os, sys
sys.path.insert(0, sys.argv[2])
from _live_streams import failing_once_at
from test_session39_live_stream_resume import _committed
from kernel import Dataflow, run

here, total, how = sys.argv[1], int(sys.argv[3]), sys.argv[4]
out, state, marker = os.path.join(here, "out"), os.path.join(here, "state"), os.path.join(here, "failed")
if sys.argv[5] == "dup":  # (the file put in descriptor 0 by the application, sys.stdin made before)
    os.dup2(os.open(os.path.join(here, "lines.txt"), os.O_RDONLY), 0)
first = {"sys.stdin": lambda: sys.stdin,  # (what the first run reads)
         "a dup of descriptor 0": lambda: os.fdopen(os.dup(0)),
         "open(0)": lambda: open(0, closefd=False),
         "the file opened again": lambda: open(os.path.join(here, "lines.txt"))}[sys.argv[6]]()

fails_once = failing_once_at(marker, total // 2)

def flow_over(stream, into):
    flow = Dataflow("lines")
    flow.from_iterable(stream, name="lines in", batch_size=10).map(int).map(fails_once).to_files(into)
    return flow

told = {}
try:
    run(flow_over(first, out), state_dir=state, epoch_interval=0.001)
except Exception as exc:
    told["first"] = str(exc)
if first is not sys.stdin:
    first.close()
from pathlib import Path
told["committed"] = len(_committed(Path(out)))
if how == "lseek":
    os.lseek(0, 0, os.SEEK_SET)
elif how == "seek":
    sys.stdin.seek(0)
if how == "without a state_dir":
    os.lseek(0, 0, os.SEEK_SET)
    again = os.path.join(here, "again")
    run(flow_over(sys.stdin, again))
    told["lines"] = _committed(Path(again))
else:
    try:
        run(flow_over(sys.stdin, out), state_dir=state, epoch_interval=0.01)
    except Exception as exc:
        told["second"] = str(exc)
    told["lines"] = _committed(Path(out))
print(json.dumps(told))
'''


def run_over_a_file(tmp_path, total: int, how: str, stdin=None, dup: bool = False,
                    first: str = "sys.stdin") -> dict:
    """The script's runs over `total` lines: the standard input given from
    the file, or from `stdin` with the file put in descriptor 0 (`dup`);
    the first run over `first`, the second over `sys.stdin`."""
    done = run_script_over_a_file(tmp_path, _SCRIPT, numbered_lines(total), str(tmp_path),
                                  str(Path(__file__).parent), str(total), how, "dup" if dup else "given",
                                  first, stdin=stdin)
    told = json.loads(done.stdout.splitlines()[-1])
    assert "the first run fails here" in told["first"]
    assert 0 < told["committed"] < total
    return told


# 3,000 lines: the failed run's reader read the file to its end; 20,000: it
# paused mid-file (4,096 lines ahead), the file object's buffers holding
# bytes past its last line, which an `os.lseek` alone leaves there
@pytest.mark.parametrize("total", [3_000, 20_000])
@pytest.mark.parametrize("how", ["lseek", "seek"])
def test_a_rewound_standard_input_file_resumes_exactly(tmp_path, total, how):
    told = run_over_a_file(tmp_path, total, how)
    assert "second" not in told, told["second"]
    assert told["lines"] == sorted(told["lines"])  # (one kernel: the file's order)
    assert told["lines"] == list(range(total))


def test_a_rewound_standard_input_file_is_read_from_its_start_without_a_state_dir(tmp_path):
    told = run_over_a_file(tmp_path, 20_000, "without a state_dir")
    assert told["lines"] == list(range(20_000))


def test_a_standard_input_file_not_rewound_is_still_refused(tmp_path):
    told = run_over_a_file(tmp_path, 3_000, "not rewound")
    assert "an earlier run of this process read lines of its input" in told.get("second", ""), told
