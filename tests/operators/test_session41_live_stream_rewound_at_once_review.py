"""Two runs of one process at once, in two threads, over the standard input
given from a file and rewound after a failed run: each lets go of what the
failed run left (`let_go_if_rewound`), and the one that looked last for a
run reading the file, then seeked it to its start after the other had
started reading it: the other's reader read from the start again. A run
with a state_dir committed 39,504 lines of 20,000 (each of the first
19,504 twice), for a run without one that was refused just after. Now
the look and the seek are one, under the lock a run's reader is
registered with: the later one lets go of nothing (and is refused, or reads
the file's end); the run with the state_dir commits every line once. (The first made to pause just
before its seek until the other has read a line.)"""

from __future__ import annotations

import json
from pathlib import Path

from _live_streams import numbered_lines, run_script_over_a_file

_SCRIPT = r'''
import json, os, sys, threading
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from test_session39_live_stream_resume import _committed
from kernel import Dataflow, run
from operators import _live_input

here, total = sys.argv[1], int(sys.argv[3])
paused, read = threading.Event(), threading.Event()
rewound, looks = _live_input._rewound, []

def pausing(stream):  # (the first run's second look, after the earlier run's readers have ended)
    answer = rewound(stream)
    if threading.current_thread().name == "first":
        looks.append(answer)
        if len(looks) == 2:
            paused.set()
            read.wait(20)
    return answer

_live_input._rewound = pausing

def fails(value):
    if value == total // 2:
        raise ValueError("the earlier run fails here")
    return value

told = {}
earlier = Dataflow("earlier")
earlier.from_iterable(sys.stdin, name="lines in").map(int).map(fails).collect()
try:
    run(earlier)
except Exception as exc:
    told["earlier"] = str(exc)
os.lseek(0, 0, os.SEEK_SET)

def first():
    flow = Dataflow("first")
    got = []
    flow.from_iterable(sys.stdin, name="first in").map(int).sink(got.append)
    try:
        run(flow)
    except Exception as exc:
        told["first"] = str(exc)
    told["first lines"] = got

def seen(value):
    read.set()
    return value

def second():
    flow = Dataflow("second")
    flow.from_iterable(sys.stdin, name="second in").map(int).map(seen).to_files(Path(here) / "out")
    try:
        run(flow, state_dir=os.path.join(here, "state"), epoch_interval=0.01)
    except Exception as exc:
        told["second"] = str(exc)

one = threading.Thread(target=first, name="first")
one.start()
paused.wait(20)
two = threading.Thread(target=second, name="second")
two.start()
one.join(30)
two.join(30)
told["lines"] = _committed(Path(here) / "out")
print(json.dumps(told))
'''


def test_a_run_at_once_over_a_rewound_file_does_not_send_the_other_back_to_its_start(tmp_path):
    total = 20_000  # (the second run's reader reads it in several chunks, 4,096 lines ahead)
    done = run_script_over_a_file(tmp_path, _SCRIPT, numbered_lines(total), str(tmp_path),
                                  str(Path(__file__).parent), str(total))
    told = json.loads(done.stdout.splitlines()[-1])
    assert "the earlier run fails here" in told["earlier"]
    assert "second" not in told, told["second"]
    # (refused while the second's reader has lines to hand on; else it reads the file's end: nothing)
    refused = "another run of this process (second in (step 0)), which has a state_dir"
    assert refused in told.get("first", "") or "first" not in told, told["first"]
    assert told["first lines"] == []
    committed = told["lines"]
    assert len(committed) == total, f"{len(committed)} lines committed, {len(set(committed))} distinct"
    assert committed == list(range(total))
