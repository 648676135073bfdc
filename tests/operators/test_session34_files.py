"""Session 34's review of `from_files` and `to_files`: failing cases found
by crashing and resuming runs (see each test's docstring)."""

from __future__ import annotations

import csv
import importlib.util
import os
import pickle
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_files_review import CHANGE_PIPELINE as PIPELINE  # (a slow map of lines into files)

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("_crash_runs", REPO / "tests" / "_crash_runs.py")
_crash_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_crash_runs)


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


# -- CSV, on_error="skip": a row's quoted line break across a cut ----------------------------

# 64-byte chunks of one row each: a chunk's last line opens a quoted field (a
# malformed row, skipped), the next chunk's first line closes it (`xx",abc`
# parses as a row of its own when read alone). One row a chunk: wherever a
# run reading a row a poll is snapshotted, it is between two chunks.
FIRST, GOOD, OPEN, CLOSE = b"\n" * 8, b"%05d," + b"x" * 41 + b"\n", b'%05d,"\n', b'xx",abc\n'


def _quoted_breaks(chunks: int) -> tuple[bytes, list[list[str]], int]:
    """A CSV file of `chunks` 64-byte chunks, the rows a plain reader that
    skips malformed rows finds in it, and how many lines it skips."""
    data, rows = b"", []
    for n in range(chunks):
        data += (CLOSE if n else FIRST) + GOOD % n + OPEN % n
        rows.append([f"{n:05d}", "x" * 41])
    assert len(data) == 64 * chunks
    return data, rows, 2 * chunks - 1


def test_csv_rows_skipped_over_quoted_line_breaks_are_the_same_on_1_2_and_3_kernels(tmp_path):
    """README: "with on_error="skip" the row's next lines, up to the one
    that closes its quote, are skipped with it". A kernel whose share of a
    file starts at such a next line did not know it was inside the row:
    on 2 and 3 kernels `xx",abc` came out as a record (and the count of
    skipped lines fell) where 1 kernel skips it."""
    from kernel import Dataflow, run

    data, rows, skipped = _quoted_breaks(6)
    (tmp_path / "a.csv").write_bytes(data)
    for cores in (1, 2, 3):
        for chunk_bytes in (64, 1 << 16):
            flow = Dataflow("csv")
            stream = flow.from_files(tmp_path / "a.csv", format="csv", on_error="skip",
                                     chunk_bytes=chunk_bytes)
            out = stream.collect()
            run(flow, cores=cores)
            assert (sorted(out.items), stream.skipped_count.value) == (rows, skipped), (cores, chunk_bytes)


def _skipping_reader(data: bytes) -> tuple[list[list[str]], int]:
    """The rows of a CSV file and the lines skipped, read as the README says:
    a line that does not parse is skipped, and when it leaves a quoted field
    open, so are the lines up to the one that closes it."""
    rows, skipped, in_quote = [], 0, False
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    for raw in lines:
        if in_quote:
            skipped += 1
            in_quote = raw.count(b'"') % 2 == 0
            continue
        text = raw.decode().removesuffix("\r")
        if not text:
            continue
        try:
            rows.append(next(csv.reader([text], strict=True)))
        except csv.Error:
            skipped += 1
            in_quote = raw.count(b'"') % 2 == 1
    return rows, skipped


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.text(alphabet='a,"\r', max_size=6), max_size=25), cores=st.integers(1, 3),
       chunk_bytes=st.sampled_from([1, 7, 64]))
@example(lines=["", '"', "", ""], cores=2, chunk_bytes=1)  # kernel 1 starts at the open field's next line
def test_csv_with_on_error_skip_equals_a_plain_reader_on_any_number_of_kernels(
        tmp_path, lines, cores, chunk_bytes):
    from kernel import Dataflow, run

    data = "\n".join(lines).encode() + b"\n" * (len(lines) % 2)  # a last newline, or none
    path = tmp_path / f"{len(list(tmp_path.iterdir()))}.csv"
    path.write_bytes(data)
    flow = Dataflow("csv")
    stream = flow.from_files(path, format="csv", on_error="skip", chunk_bytes=chunk_bytes)
    out = stream.collect()
    run(flow, cores=cores)
    rows, skipped = _skipping_reader(data)
    assert (sorted(out.items), stream.skipped_count.value) == (sorted(rows), skipped), data


CSV_PIPELINE = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow

    def slow(row):
        time.sleep(0.001)
        return row

    flow = Dataflow("csv")
    (flow.from_files(os.path.join(os.environ["IN"], "*.csv"), format="csv", on_error="skip",
                     chunk_bytes=64, batch_size=1)
         .map(slow).to_files(os.path.join(os.environ["OUT"], "r")))
    """
)


def test_a_run_resumed_inside_a_skipped_csv_row_skips_the_rest_of_it(tmp_path):
    """A snapshot taken when a chunk's last line had opened a quoted field
    (the rest of the row is in the next chunk, to be skipped with it) did
    not keep that: the resumed run read `xx",abc` as a record of its own,
    which a run without the crash skips."""
    (tmp_path / "pipeline.py").write_text(CSV_PIPELINE)
    (tmp_path / "in").mkdir()
    data, rows, _ = _quoted_breaks(40)
    (tmp_path / "in" / "a.csv").write_bytes(data)

    def between_chunks(snapshots):  # a few chunks read (and the run far from its end)
        spans = _spans(snapshots)
        return len(spans) == 1 and 0 < spans[0][3] < 20 * 64

    _crash_runs.run_cli_until(tmp_path, 1, between_chunks, IN=tmp_path / "in", OUT=tmp_path / "out")
    second = _crash_runs.run_cli(tmp_path, 1, None, IN=tmp_path / "in", OUT=tmp_path / "out")
    assert second.returncode == 0, second.stderr
    assert sorted(_crash_runs.visible_lines(tmp_path / "out" / "r")) == rows


# -- a file that cannot be read ---------------------------------------------------------------

UNREADABLE_RUN = textwrap.dedent(
    """
    import sys, time
    from kernel import Dataflow, run

    read = [0]

    def count(line):
        read[0] += 1
        if read[0] % 500 == 0:
            time.sleep(0.002)  # many epochs

    flow = Dataflow("unreadable")
    flow.from_files(sys.argv[1], chunk_bytes=4096).sink(count)
    try:
        run(flow, state_dir=sys.argv[2] if len(sys.argv) > 2 else None, epoch_interval=0.01)
    finally:
        print("handed on", read[0])
    """
)

# a process of this root user without the capabilities that let it read any file
AS_PLAIN_OWNER = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                  "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.parametrize("resumed", [False, True])
def test_a_file_that_cannot_be_read_is_refused_at_the_runs_start(tmp_path, resumed):
    """README: a bounded run refuses "a file it cannot read, at the run's
    start". Files are opened as their turn comes: a.txt's 60,000 lines
    were handed on first, and only then did the run fail on b.txt (no
    permission), on a fresh run and on a resumed one."""
    import subprocess
    import sys

    script = tmp_path / "unreadable.py"
    script.write_text(UNREADABLE_RUN)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("".join(f"{n}\n" for n in range(60_000)))
    (tmp_path / "in" / "b.txt").write_text("b\n")
    command = [sys.executable, str(script), str(tmp_path / "in" / "*.txt")]
    env = {k: v for k, v in os.environ.items() if k != "KERNEL_CRASH_AT"}
    if resumed:  # killed after its third snapshot, a.txt partly read
        command.append(str(tmp_path / "state"))
        first = subprocess.run(command, env=dict(env, KERNEL_CRASH_AT="snapshot:3"), capture_output=True,
                               text=True, timeout=60)
        assert first.returncode == -9, first.stderr
        assert _crash_runs.newest_complete(tmp_path / "state") == 2
    os.chmod(tmp_path / "in" / "b.txt", 0)
    second = subprocess.run(AS_PLAIN_OWNER + command, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode != 0
    assert "b.txt': [Errno 13] Permission denied" in second.stderr, second.stderr
    assert second.stdout.strip() == "handed on 0", second.stdout
