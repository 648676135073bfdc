"""Review of `from_files`: failing cases found against plain Python readers
(each test is small and deterministic; see the docstrings for what fails)."""

from __future__ import annotations

import csv
import importlib.util
import os
import pickle
import textwrap
from pathlib import Path

import pytest

from kernel import Dataflow, OperatorError, run

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("_crash_runs", REPO / "tests" / "_crash_runs.py")
_crash_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_crash_runs)


def read_all(pattern, cores: int = 1, **options):
    flow = Dataflow("files")
    stream = flow.from_files(pattern, **options)
    out = stream.collect()
    run(flow, cores=cores)
    return out.items, stream.skipped_count.value


# -- encoding="utf-8-sig": the BOM is the file's, not every chunk's ---------------------------


@pytest.mark.parametrize(("format", "cores", "chunk_bytes"), [
    ("lines", 1, 3),  # a chunk starts at the second line
    ("lines", 2, 1 << 16),  # kernel 1's span starts at the second line
    ("csv", 1, 1 << 16),  # each CSV line is decoded on its own
])
def test_utf8_sig_strips_only_the_bom_at_the_start_of_the_file(tmp_path, format, cores, chunk_bytes):
    """A file "\\ufeffaaaa\\n\\ufeffbbbb\\n" read with encoding="utf-8-sig":
    a plain reader strips the BOM of the file (its first line) and keeps
    the U+FEFF that starts the second line. from_files decodes each chunk
    (lines) or each line (csv) with "utf-8-sig", which strips a U+FEFF at
    the start of any of them: the second line comes out as "bbbb", and for
    lines the result depends on chunk_bytes and the number of kernels
    (64 KiB on one kernel keeps it)."""
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeffaaaa\n\ufeffbbbb\n".encode("utf-8"))
    with open(path, encoding="utf-8-sig", newline="") as f:
        expected = list(csv.reader(f)) if format == "csv" else f.read().splitlines()
    assert expected[1][0].startswith("\ufeff")  # a row's first field, or a line's first character
    items, _ = read_all(path, cores, format=format, encoding="utf-8-sig", chunk_bytes=chunk_bytes)
    assert items == expected


# -- JSON nested too deep --------------------------------------------------------------------

# Deeper than msgspec decodes on any Python: 3.11 and 3.12 stop at the
# recursion limit (1,000), 3.13 at its C stack's limit (5,000 decodes there)
TOO_DEEP = 100_000


def test_a_jsonl_line_nested_too_deep_is_skipped_with_on_error_skip(tmp_path):
    """msgspec raises RecursionError (not a ValueError) for a value nested
    deeper than the recursion limit: the source catches only ValueError
    and UnicodeDecodeError, so with on_error="skip" the run ends with
    `function 'FileSource.poll' raised RecursionError` instead of skipping
    and counting the line."""
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"1\n" + b"[" * TOO_DEEP + b"]" * TOO_DEEP + b"\n3\n")
    assert read_all(path, format="jsonl", on_error="skip") == ([1, 3], 1)


def test_a_jsonl_line_nested_too_deep_names_the_file_and_the_line(tmp_path):
    """The same line with on_error="raise": the error names neither the
    file nor the line (`raised RecursionError: maximum recursion depth
    exceeded while deserializing an object`, from FileSource.poll)."""
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"1\n" + b"[" * TOO_DEEP + b"]" * TOO_DEEP + b"\n3\n")
    with pytest.raises(OperatorError, match=r"a\.jsonl, line 2: malformed jsonl line"):
        read_all(path, format="jsonl")


# -- CSV: a quoted line break, skipped ------------------------------------------------------


def test_a_csv_row_with_a_quoted_line_break_is_not_half_read_with_on_error_skip(tmp_path):
    """README: "a quoted line break is reported as malformed". With
    on_error="skip" only the row's first line is skipped; its second line,
    `lines"`, parses as a row of its own and is handed on as the record
    ['lines"'], a piece of a row the file never had."""
    path = tmp_path / "a.csv"
    path.write_text('k,v\n1,"two\nlines"\n3,x\n')
    items, skipped = read_all(path, format="csv", on_error="skip")
    assert ['lines"'] not in items, (items, skipped)


# -- recovery ------------------------------------------------------------------------------


CHANGE_PIPELINE = textwrap.dedent(
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


def _position(part) -> int:
    """The byte offset in a from_files snapshot (step 0's part) of its one span."""
    state = pickle.loads(part) if isinstance(part, bytes) else part
    state = state[-1] if isinstance(state, tuple) else state
    return state["spans"][0][3] if state else 0


@pytest.mark.parametrize("change", ["truncated", "replaced"])
def test_a_file_changed_between_crash_and_resume_is_not_read_on_silently(tmp_path, change):
    """README: the files "must not change while a bounded run and its
    resumed run go" -- but nothing checks it (a followed file is checked:
    inode and a CRC of the bytes before the offset). A 2,700-byte file
    read to past byte 500 when the run is killed, then truncated to 100
    bytes: the resumed run ends with rc 0 and lines 64..299 are never
    read, without a word. Replaced by another file: it reads the new file
    from the old offset, handing on a torn line (" 00051") and then new
    lines, never the new file's first ones. Should: an error naming the
    file (as for a followed file), not a silent loss or a torn record."""
    (tmp_path / "pipeline.py").write_text(CHANGE_PIPELINE)
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "a.txt"
    path.write_bytes(b"".join(b"line %03d\n" % n for n in range(300)))

    def past_byte_500(snapshots):
        return snapshots[0].get(0) not in (None, "ended") and _position(snapshots[0][0]) > 500

    _crash_runs.run_cli_until(tmp_path, 1, past_byte_500, IN=tmp_path / "in", OUT=tmp_path / "out")
    if change == "truncated":
        os.truncate(path, 100)
    else:
        path.write_bytes(b"".join(b"new %05d\n" % n for n in range(400)))
    second = _crash_runs.run_cli(tmp_path, 1, None, IN=tmp_path / "in", OUT=tmp_path / "out")
    assert second.returncode != 0, (
        f"resumed without a word: {len(_crash_runs.visible_lines(tmp_path / 'out' / 'r'))} lines published")
    assert "a.txt" in second.stderr


def test_a_csv_row_with_quoted_line_breaks_over_several_lines_is_skipped_whole(tmp_path):
    # its middle lines hold no quote or a doubled one; the row ends at the line that closes it
    path = tmp_path / "b.csv"
    path.write_text('k,v\n1,"a\nb\nc"\n4,y\n5,"p\n""q""\nr"\n6,z\n')
    items, skipped = read_all(path, format="csv", on_error="skip")
    assert items == [["k", "v"], ["4", "y"], ["6", "z"]]
    assert skipped == 6


def test_a_file_whose_name_holds_glob_characters_is_read_when_named(tmp_path):
    path = tmp_path / "data[1].txt"  # as a pattern, [1] matches "data1.txt" only
    path.write_text("a\nb\n")
    items, _ = read_all(str(path))
    assert items == ["a", "b"]


def test_a_directory_given_as_the_pattern_is_named_as_one(tmp_path):
    (tmp_path / "a.txt").write_text("x\n")
    with pytest.raises(FileNotFoundError, match=r"a directory: give a pattern of its files"):
        Dataflow().from_files(str(tmp_path))


def test_a_run_resumed_on_another_number_of_kernels_says_on_how_many_to_resume(tmp_path):
    (tmp_path / "pipeline.py").write_text(CHANGE_PIPELINE)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_bytes(b"".join(b"line %03d\n" % n for n in range(300)))

    def one_epoch(snapshots):
        return len(snapshots) == 2

    _crash_runs.run_cli_until(tmp_path, 2, one_epoch, IN=tmp_path / "in", OUT=tmp_path / "out")
    second = _crash_runs.run_cli(tmp_path, 1, None, IN=tmp_path / "in", OUT=tmp_path / "out")
    assert second.returncode != 0
    assert "resume on 2 kernels" in second.stderr, second.stderr
