"""`from_iterable(sys.stdin)` where the application put a file in the
standard input's descriptor (`os.dup2(fd, 0)`) after Python made
`sys.stdin`: it is read as the standard input, a live stream, and a run
with a state_dir after a failed one is refused unless the file is
rewound. Where `sys.stdin` was made over a file, it rewinds as a file
given with `<` does; made over a pipe (or /dev/null), it cannot seek, so
what its buffers hold of the failed run's read cannot be dropped: the
run after `os.lseek(0, 0, 0)` over 20,000 lines resumed and read 8 KiB of
the old position first, losing lines and repeating others, no error.
Refused now, as before the rewind."""

from __future__ import annotations

import subprocess

from test_session41_live_stream_rewound_file import run_over_a_file


def test_a_file_put_in_descriptor_0_rewound_resumes_exactly(tmp_path):
    (tmp_path / "other.txt").write_text("")
    with open(tmp_path / "other.txt") as other:  # (sys.stdin made over another file)
        told = run_over_a_file(tmp_path, 20_000, "lseek", stdin=other, dup=True)
    assert "second" not in told, told["second"]
    assert told["lines"] == list(range(20_000))


def test_a_file_put_in_descriptor_0_not_rewound_is_refused(tmp_path):
    told = run_over_a_file(tmp_path, 3_000, "not rewound", stdin=subprocess.DEVNULL, dup=True)
    assert "an earlier run of this process read lines of its input" in told.get("second", ""), told


def test_a_file_put_in_descriptor_0_under_a_pipes_sys_stdin_is_refused_though_rewound(tmp_path):
    told = run_over_a_file(tmp_path, 20_000, "lseek", stdin=subprocess.PIPE, dup=True)
    assert "an earlier run of this process read lines of its input" in told.get("second", ""), told
    committed = told["lines"]
    assert committed == list(range(len(committed)))  # (what the failed run committed, and nothing else)
