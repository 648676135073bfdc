"""An aggregate that emits when its input ends, after a source that never
ends (follow=True), would never emit: the flow is allowed (a run may be
cancelled with its state kept), and the builder says so once, naming both
steps (issue 15)."""

from __future__ import annotations

import logging

import pytest

from kernel import Dataflow
from operators import Tumbling


@pytest.fixture
def logs(tmp_path):
    (tmp_path / "a.log").write_text("x\n")
    return tmp_path


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kernel" and r.levelno == logging.WARNING]


@pytest.mark.parametrize("aggregate", ["count", "sum", "reduce", "fold"])
def test_a_final_aggregate_after_a_followed_source_is_said_once_to_never_emit(logs, caplog, aggregate):
    flow = Dataflow()
    keyed = flow.from_files(logs / "*.log", follow=True, name="tail").key_by(len).map_values(len)
    with caplog.at_level(logging.WARNING, logger="kernel"):
        step = {"count": lambda: keyed.count(name="per length"),
                "sum": lambda: keyed.sum(name="per length"),
                "reduce": lambda: keyed.reduce(max, name="per length"),
                "fold": lambda: keyed.fold(0, max, name="per length")}[aggregate]()
        step.collect()
    (message,) = warnings_of(caplog)
    assert message.startswith("per length (step 3): emits its results when its input ends, and "
                              "tail (step 0) never ends (follow=True): it will emit nothing")
    assert "emit='updates'" in message


def test_updates_windows_and_bounded_sources_are_not_warned_about(logs, caplog):
    flow = Dataflow()
    followed = flow.from_files(logs / "*.log", follow=True, timestamp=lambda line: 0.0)
    bounded = flow.from_files(logs / "*.log")
    with caplog.at_level(logging.WARNING, logger="kernel"):
        followed.key_by(len).count(emit="updates").collect()
        followed.key_by(len).window(Tumbling(1.0)).count().collect()
        bounded.key_by(len).count().collect()
    assert warnings_of(caplog) == []


def test_a_followed_source_anywhere_upstream_counts(logs, caplog):
    """Through a union with a bounded source: the union never ends either."""
    flow = Dataflow()
    followed = flow.from_files(logs / "*.log", follow=True, name="tail")
    bounded = flow.from_iterable(["y"], name="list")
    with caplog.at_level(logging.WARNING, logger="kernel"):
        bounded.union(followed).map(str.upper).key_by(len).count(name="n").collect()
    (message,) = warnings_of(caplog)
    assert "n (step 5)" in message and "tail (step 0) never ends" in message


def test_a_followed_redis_stream_counts_too(caplog):
    """Built, not run: no server is needed to build the flow."""
    flow = Dataflow()
    entries = flow.from_redis_stream("redis://127.0.0.1:1/0", "clicks", follow=True, name="clicks")
    bounded = Dataflow().from_redis_stream("redis://127.0.0.1:1/0", "clicks")
    with caplog.at_level(logging.WARNING, logger="kernel"):
        entries.key_by(lambda e: e.stream).count(name="n").collect()
        bounded.key_by(lambda e: e.stream).count(name="n").collect()
    (message,) = warnings_of(caplog)
    assert message.startswith("n (step 2): emits its results when its input ends, "
                              "and clicks (step 0) never ends")


def step_back(values):
    return values.filter(lambda n: n > 0).map(lambda n: n - 1), values


def test_a_loop_over_a_followed_source_without_event_time_is_said_to_never_run(logs, caplog):
    """Records without event time go into a loop when its input ends (one
    run), which a followed source's never does: nothing would come out."""
    flow = Dataflow()
    lengths = flow.from_files(logs / "*.log", follow=True, name="tail").map(len)
    with caplog.at_level(logging.WARNING, logger="kernel"):
        lengths.iterate(step_back, name="countdown").collect()
    assert warnings_of(caplog) == [
        "countdown: takes in records without event time when its input ends, and tail (step 0) never "
        "ends (follow=True): it will emit nothing; give the source timestamp=... (a loop runs as the "
        "watermark moves) or the loop max_in_flight=N (records without event time then go in as they come)"]


def test_a_loop_with_event_time_or_max_in_flight_and_aggregates_inside_a_loop_are_not_warned_about(
        logs, caplog):
    """A loop over a followed source with timestamps runs as its watermark
    moves, one with max_in_flight takes records in as they come, and an
    aggregate inside a loop emits each round's results."""
    flow = Dataflow()
    timed = flow.from_files(logs / "*.log", follow=True, timestamp=lambda line: 0.0).map(len)
    untimed = flow.from_files(logs / "*.log", follow=True).map(len)

    def counted(values):
        nxt, _ = step_back(values)
        return nxt, values.key_by(lambda n: n % 2).count()

    with caplog.at_level(logging.WARNING, logger="kernel"):
        timed.iterate(counted).collect()
        untimed.iterate(counted, max_in_flight=10).collect()
    assert warnings_of(caplog) == []
