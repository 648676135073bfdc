"""Session 34's review of `from_files` and `to_files`: failing cases found
by crashing and resuming runs (see each test's docstring)."""

from __future__ import annotations

import importlib.util
import os
import pickle
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("_crash_runs", REPO / "tests" / "_crash_runs.py")
_crash_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_crash_runs)

PIPELINE = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow

    def slow(line):
        time.sleep(0.002)
        return line

    flow = Dataflow("files")
    (flow.from_files(os.path.join(os.environ["IN"], "*.txt"), chunk_bytes=64)
         .map(slow).to_files(os.path.join(os.environ["OUT"], "r")))
    """
)


def _spans(snapshots) -> list:
    """The spans (path, start, end, offset, ...) of kernel 0's from_files snapshot."""
    part = snapshots[0].get(0)
    if part in (None, "ended"):
        return []
    state = pickle.loads(part) if isinstance(part, bytes) else part
    state = state[-1] if isinstance(state, tuple) else state
    return state["spans"] if state else []


@pytest.mark.parametrize("change", ["replaced unread", "truncated unread", "truncated past the offset"])
def test_a_file_changed_where_not_yet_read_is_refused_on_resume(tmp_path, change):
    """README: "a file replaced or truncated meanwhile is refused, naming
    it". Only the bytes before a span's offset were checked: a.txt read to
    past byte 500 when the run is killed, then b.txt (not opened yet)
    replaced by a longer file, or truncated, or a.txt truncated to 1,000
    of its 2,700 bytes: the resumed run ended with rc 0, reading b.txt's
    new file up to the old size, or a.txt's and b.txt's lines up to the
    cut, and the lines past it were lost without a word."""
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    (tmp_path / "in").mkdir()
    a, b = tmp_path / "in" / "a.txt", tmp_path / "in" / "b.txt"
    a.write_bytes(b"".join(b"line %03d\n" % n for n in range(300)))
    b.write_bytes(b"".join(b"bbbb %03d\n" % n for n in range(300)))

    def a_past_byte_500(snapshots):
        spans = _spans(snapshots)
        return len(spans) == 2 and spans[0][3] > 500 and spans[1][3] == 0

    _crash_runs.run_cli_until(tmp_path, 1, a_past_byte_500, IN=tmp_path / "in", OUT=tmp_path / "out")
    if change == "replaced unread":
        new = tmp_path / "in" / "b.new"
        new.write_bytes(b"".join(b"bbbb %03d\n" % n for n in range(600)))
        os.replace(new, b)  # a new inode; its first 2,700 bytes are the old file's
    elif change == "truncated unread":
        os.truncate(b, 900)
    else:
        os.truncate(a, 1000)
    second = _crash_runs.run_cli(tmp_path, 1, None, IN=tmp_path / "in", OUT=tmp_path / "out")
    published = len(_crash_runs.visible_lines(tmp_path / "out" / "r"))
    assert second.returncode != 0, f"resumed without a word: {published} lines published"
    changed = "b.txt" if "unread" in change else "a.txt"
    assert f"{changed}' changed since the run listed the files" in second.stderr, second.stderr
    says = "another file now has its name" if change == "replaced unread" else "truncated: it has"
    assert says in second.stderr, second.stderr
