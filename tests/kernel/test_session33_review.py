"""A review of the thirty-third session's changes: the causes a kernel
process carries back (kernel/scheduling/_errors.py `carry_causes`). (Its
FIFO opened read-write is a case of test_session32_standard_input.py's
writer-thread test.)"""

from __future__ import annotations

import re
import subprocess
import sys

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
