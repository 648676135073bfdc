"""A run that a step starts inside a kernel process (nested), over a flow
the process that started the outer run built, reading a live stream of
that process: what the nested run reads is gone from the stream for that
process too. On one kernel the nested run tells it through the outer
kernel's pipe (`tell_launcher`), and its later run with a state_dir over
the stream is refused, as after a run of its own; on several kernels the
nested run cannot start (kernel processes are daemonic: multiprocessing
refuses them children; refused, saying so, since session 42), so nothing
is read unheard. The nested run gets
every line once, in order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = r'''
import json, os, sys, threading
from kernel import Dataflow, run

here = sys.argv[1]
read_end, write_end = os.pipe()
with os.fdopen(write_end, "w") as fed:  # (3,000 short lines: within the pipe's buffer)
    fed.write("".join(f"{i}\n" for i in range(3_000)))
stream = os.fdopen(read_end)
got = []

def kept(value):
    got.append(value)
    return value

inner = Dataflow("inner")
inner.from_iterable(stream, name="lines in").map(int).map(kept).collect()

def nested(value, inner=inner):  # (in a kernel process of the outer run; `inner` reached, kept)
    told = []
    def runs(cores):
        try:
            run(inner, cores=cores)
            told.append("ran")
        except BaseException as exc:
            told.append(repr(exc))
    for cores in (2, 1):
        thread = threading.Thread(target=runs, args=(cores,))  # (run() blocks: not on the kernel's loop)
        thread.start()
        thread.join()
    with open(os.path.join(here, "nested.json"), "w") as out:
        json.dump({"told": told, "lines": got}, out)
    return value

outer = Dataflow("outer")
outer.from_iterable([0], name="once").map(nested).collect()
run(outer, cores=2)
told = {}
try:
    run(inner, state_dir=os.path.join(here, "state"))
except Exception as exc:
    told["again"] = str(exc)
print(json.dumps(told))
'''


def test_a_nested_run_over_a_stream_of_the_outer_launcher_is_heard_there(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          cwd=_ROOT, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    nested = json.loads((tmp_path / "nested.json").read_text())
    assert "cannot start here: this process is daemonic" in nested["told"][0]  # (session 42: said so)
    assert nested["told"][1] == "ran"
    assert nested["lines"] == list(range(3_000))
    told = json.loads(done.stdout.splitlines()[-1])
    assert "an earlier run of this process read lines of its input" in told.get("again", ""), told
