"""Sinks review: failing tests for what the output sinks do with records
and directories beyond the crash-and-resume paths (those held up: see the
review's report).

Each test asserts the behaviour a user can expect and fails on the current
code. Where the README does not say it in so many words, the test's
docstring says so and why a demanding user expects it."""

from __future__ import annotations

import json
import warnings

import pytest

from kernel import Dataflow, run

# Records whose text holds characters that `str.splitlines()` breaks a line
# at, though JSON writes them raw (they are no control characters < 0x20):
# NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR.
LINE_BREAKING = ["a\x85b", "c\u2028d", {"text": "e\u2029f"}, ["g", "h\u2028"], "plain"]


@pytest.mark.parametrize("state", [False, True])
def test_part_files_read_as_the_readme_reads_them_hold_every_record(tmp_path, state):
    """README ("State, snapshots and recovery", its first example) reads the
    published files back with `f.read_text().splitlines()`, one JSON value
    a line, and so do this repository's own tests (`visible_lines`). For a
    record whose strings hold U+0085, U+2028 or U+2029, to_files writes the
    character raw (`json.JSONEncoder(ensure_ascii=False)`), and
    `splitlines()` cuts the line there: the recipe raises
    `JSONDecodeError: Unterminated string`, or (where both halves parse)
    reads two wrong records. A JSON Lines writer whose own documentation
    reads it that way must escape those three characters ("\\u2028" is
    valid JSON and reads back as the same string)."""
    out = tmp_path / "out"
    flow = Dataflow("line_breaking")
    flow.from_iterable(LINE_BREAKING).to_files(out)
    run(flow, state_dir=tmp_path / "state" if state else None)
    read = []
    for f in sorted(out.glob("part-*.jsonl")):
        for line in f.read_text().splitlines():  # the README's recipe
            try:
                read.append(json.loads(line))
            except ValueError as exc:
                read.append(f"<not JSON: {line!r}: {exc}>")
    assert read == LINE_BREAKING


def test_a_sink_of_an_async_function_awaits_it_or_is_refused(tmp_path):
    """README is silent on async functions in `sink(fn)`; it promises that
    `sink(fn)` "calls fn(record) for every record" (at least once after a
    crash). Given `async def save(record)`, the call only makes a coroutine,
    which is never awaited: the run succeeds and not one record reaches
    `save`'s body (a RuntimeWarning "coroutine 'save' was never awaited" on
    stderr, in kernel processes, is all the trace). Every record is lost
    without an error. A demanding user expects either the coroutine
    awaited (as `serve`'s handler is: "returns the reply, or an awaitable
    of it") or the function refused where the flow is built, as a value
    that is not callable is (`TypeError`)."""
    got = []

    async def save(record):
        got.append(record)

    flow = Dataflow("async_sink")
    numbers = flow.from_iterable(range(5))
    try:
        numbers.sink(save)
    except TypeError:
        return  # refused where the flow is built: fine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "never awaited": the bug itself
        run(flow)
    assert got == [0, 1, 2, 3, 4], "every record was dropped: the coroutines were never awaited"


@pytest.mark.parametrize("state", [False, True])
def test_two_to_files_on_one_directory_are_refused_before_anything_is_written(tmp_path, state):
    """README: "Use one directory per `to_files`". It does not say what
    happens otherwise; the flow knows both steps' directories when it is
    built, so a demanding user expects the mistake refused there (or when
    the run starts), naming the directory, before a byte is written. Now
    the two steps write the same hidden file `.part-k0-e00000001.jsonl`
    (each truncating the other's), the first to commit renames it, and the
    second fails in `on_commit` with a bare `FileNotFoundError` for a
    hidden file it never knew was shared; with a state_dir, part of the
    output (an epoch's mixture of both steps' records) is already
    published when the run fails."""
    out = tmp_path / "out"
    flow = Dataflow("one_directory")
    numbers = flow.from_iterable(range(1000), batch_size=10)
    try:
        numbers.filter(lambda x: x % 2 == 0).to_files(out)
        numbers.filter(lambda x: x % 2 == 1).to_files(str(out) + "/")  # the same directory
    except ValueError as exc:
        assert str(out) in str(exc)
        return
    with pytest.raises(Exception) as info:
        run(flow, state_dir=tmp_path / "state" if state else None, epoch_interval=0.005)
    assert "FileNotFoundError" not in str(info.value), "refused only at a commit, by accident"
    assert str(out) in str(info.value)
    assert not list(out.glob("part-*")) if out.exists() else True, "output published before the refusal"
