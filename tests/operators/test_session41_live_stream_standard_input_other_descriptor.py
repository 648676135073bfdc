"""A run with a state_dir over `sys.stdin`, given from a file, after a run
that failed over another file object of the standard input's offset: a
dup of descriptor 0 (`os.fdopen(os.dup(0))`, no live stream: read on the
kernel's loop, and not noted as taken from) resumed, and lost 1,535 of
3,000 lines; `open(0, closefd=False)`, closed after its run (its note went
with the file object), lost 1,513. Both refused now, as after a run over
`sys.stdin`; rewound, the run resumes exactly. The file opened again
(an offset of its own) takes nothing of the standard input: not refused."""

from __future__ import annotations

import pytest
from test_session41_live_stream_rewound_file import run_over_a_file


@pytest.mark.parametrize("first", ["a dup of descriptor 0", "open(0)"])
def test_a_run_after_one_over_another_file_object_of_the_standard_input_is_refused(tmp_path, first):
    told = run_over_a_file(tmp_path, 3_000, "not rewound", first=first)
    assert "an earlier run of this process read lines of its input" in told.get("second", ""), told
    committed = told["lines"]
    assert committed == list(range(len(committed)))  # (what the failed run committed, and nothing else)


@pytest.mark.parametrize("first", ["a dup of descriptor 0", "open(0)"])
def test_rewound_after_another_file_object_of_the_standard_input_it_resumes_exactly(tmp_path, first):
    told = run_over_a_file(tmp_path, 3_000, "lseek", first=first)
    assert "second" not in told, told["second"]
    assert told["lines"] == list(range(3_000))


def test_the_file_opened_again_takes_nothing_of_the_standard_input(tmp_path):
    told = run_over_a_file(tmp_path, 3_000, "not rewound", first="the file opened again")
    assert "second" not in told, told["second"]
    assert told["lines"] == list(range(3_000))
