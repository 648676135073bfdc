"""The standard input given from a file, rewound after a failed run on one
kernel whose reader thread still waits in the user's generator over it
(a slow one): a run on several kernels with a state_dir. Kernel 0, a
process forked since, found the reader left over and dropped it, its
thread not alive there (joined at once), and read the file again from its
start; but the thread is the launcher's, alive, and read on from the
offset the two processes share: the run lost a line and read the tail of
another as one, no refusal (before the rewind was handled, such a run was
refused). Now a reader whose thread is another process's is kept, and the
run refused as before the rewind. Rewound after a run on several kernels,
a run on several kernels still reads it again from its start."""

from __future__ import annotations

import json
from pathlib import Path

from _live_streams import run_script_over_a_file

_SCRIPT = r'''
import json, os, sys, time
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from test_session39_live_stream_resume import _committed
from kernel import Dataflow, run
from operators import _sources

here, total, slow = sys.argv[1], int(sys.argv[3]), sys.argv[4] == "slow"
go, read = os.path.join(here, "go"), os.path.join(here, "read")
launcher = os.getpid()

def waiting_for(path):
    for _ in range(1_000):
        if os.path.exists(path):
            return
        time.sleep(0.01)

def slow_lines(stream=sys.stdin):  # (waits after its first line, as a slow generator does)
    for line in stream:
        yield line
        waiting_for(go)
        open(read, "w").close()

let_go = _sources.let_go_if_rewound

def let_go_then_read_in_the_launcher(stream):  # (the launcher's thread reads just after, not before)
    settled = let_go(stream)
    if slow and os.getpid() != launcher:
        open(go, "w").close()
        waiting_for(read)
    return settled

_sources.let_go_if_rewound = let_go_then_read_in_the_launcher

def fails(value):
    raise ValueError("the first run fails here")

def number(line):
    return int(line.split()[0])

told = {}
first = Dataflow("first")
first.from_iterable(slow_lines() if slow else sys.stdin, name="lines in").map(number).map(fails).collect()
try:
    run(first, cores=1 if slow else 2)
except Exception as exc:
    told["first"] = str(exc)
os.lseek(0, 0, os.SEEK_SET)
second = Dataflow("second")
out = Path(here) / "out"
second.from_iterable(sys.stdin, name="lines in").map(number).to_files(out)
try:
    run(second, state_dir=os.path.join(here, "state"), epoch_interval=0.01, cores=2)
except Exception as exc:
    told["second"] = str(exc)
told["lines"] = _committed(out)
print(json.dumps(told))
'''


def _runs(tmp_path, slow: bool) -> dict:
    total = 40  # (lines of 16 kB: the launcher's read after the rewind reaches the file, not its buffer)
    done = run_script_over_a_file(tmp_path, _SCRIPT, "".join(f"{i} {'x' * 16_000}\n" for i in range(total)),
                                  str(tmp_path), str(Path(__file__).parent), str(total),
                                  "slow" if slow else "plain")
    told = json.loads(done.stdout.splitlines()[-1])
    assert "the first run fails here" in told["first"]
    return told, total


def test_a_rewound_file_whose_reader_thread_the_launcher_still_runs_is_refused_on_several_kernels(tmp_path):
    told, _total = _runs(tmp_path, slow=True)
    assert "an earlier run of this process read lines of its input" in told.get("second", ""), told
    assert told["lines"] == []


def test_a_rewound_file_read_on_several_kernels_resumes_on_several_kernels(tmp_path):
    told, total = _runs(tmp_path, slow=False)
    assert "second" not in told, told["second"]
    assert sorted(told["lines"]) == list(range(total))
