"""benches/pipelines.py's selection flags (issue 13): `--only` runs some of
the pipelines and refuses names it does not know; `--reps` sets the runs."""

from __future__ import annotations

import pytest

from benches import pipelines


def test_only_windows_prints_the_windowed_sum_rows_alone(capsys, short_ceilings):
    pipelines.main(["--quick", "--only", "windows", "--cores", "1,2", "--reps", "1", "--no-bytewax"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "pipeline" not in line]
    assert rows and all("windowed sum" in row for row in rows)
    assert "median of 1 runs" in out
    assert [row.split("|")[3].strip() for row in rows if "kernel.run" in row] == ["1", "2"]
    # the machine's own 2-vs-1 beside them, sampled before the pipeline and after
    ceiling = [line for line in out.splitlines() if line.startswith("machine, 2 vs 1")]
    assert len(ceiling) == 1 and "median" in ceiling[0], out


@pytest.mark.parametrize("argv, says", [
    (["--only", "windows,bogus"], "--only takes some of wordcount, heavy, windows, got 'windows,bogus'"),
    (["--only", ","], "--only takes some of"),
    (["--reps", "0"], "--reps must be at least 1, got 0"),
])
def test_bad_selections_are_usage_errors(usage_error, argv, says):
    assert says in usage_error(pipelines.main, argv)


# The by-hand rows (what a user could write instead of a flow) must give
# exactly the plain loop's answer, or their rates compare nothing.

@pytest.mark.parametrize("batch", [pipelines.BATCH, 16])
def test_the_batched_loops_give_the_plain_loops_answers(monkeypatch, batch):
    # batches of 16 events span 16 ms of event time, and events come up to
    # 0.5 s out of order: a window closed too early would get events again
    monkeypatch.setattr(pipelines, "BATCH", batch)
    lines = pipelines.make_lines(3_000)
    assert pipelines.batched_wordcount(lines) == pipelines.plain_wordcount(lines)
    events = pipelines.make_events(5_000)  # ~5 s of event time, 1 s windows
    triples = pipelines.batched_window_sums(events)
    assert pipelines.sums_by_slot(triples) == pipelines.plain_window_sums(events)
    assert len(triples) == len(pipelines.plain_window_sums(events))  # each key and window once
    assert all(type(window) is pipelines.Window for _, window, _ in triples)


@pytest.mark.parametrize("cores", [2, 3])
def test_the_plain_loop_in_forked_processes_merges_to_the_plain_loops_answer(cores):
    events = pipelines.make_events(5_000)
    merged = pipelines.forked_plain(pipelines.plain_window_sums, events, cores, pipelines.summed)
    assert merged == pipelines.plain_window_sums(events)
    lines = pipelines.make_lines(2_000)
    assert pipelines.forked_plain(pipelines.plain_wordcount, lines, cores, pipelines.summed) == \
        pipelines.plain_wordcount(lines)
    squares = pipelines.forked_plain(pipelines.plain_heavy, range(50), cores, pipelines.concatenated)
    assert sorted(squares) == pipelines.plain_heavy(range(50))
