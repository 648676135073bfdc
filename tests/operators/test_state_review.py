"""Review of keyed state outside windows (stateful_map, running aggregates,
keyed state and timers of operators of one's own, resume and rescale):
failing cases found, each against what a plain loop (or the README) gives."""

from __future__ import annotations

import collections
import datetime
import importlib.util
import json
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from kernel import Dataflow, Operator, OperatorError, run

# -- emit="updates" hands on the live accumulator ------------------------------------


def _append(acc, value):
    acc.append(value)
    return acc


def test_fold_updates_are_the_values_after_each_batch_not_the_live_accumulator():
    """fold(list, append, emit="updates") with one record per batch: each
    update should be the key's list after that batch (as `to_files` writes
    them: [1], [1, 2], [3], [1, 2, 4]). `collect()` gets the accumulator
    object itself, which later batches go on appending to, so every update
    of 'a' reads [1, 2, 4]."""
    records = [("a", 1), ("a", 2), ("b", 3), ("a", 4)]
    flow = Dataflow()
    out = (flow.from_iterable(records, batch_size=1).key_by(lambda r: r[0]).map_values(lambda r: r[1])
           .fold(list, _append, emit="updates").collect())
    run(flow)
    assert out.items == [("a", [1]), ("a", [1, 2]), ("b", [3]), ("a", [1, 2, 4])]


def test_reduce_updates_are_the_values_after_each_batch_not_the_live_accumulator():
    records = [("a", 1), ("a", 2), ("a", 3)]
    flow = Dataflow()
    out = (flow.from_iterable(records, batch_size=1).key_by(lambda r: r[0]).map_values(lambda r: [r[1]])
           .reduce(lambda acc, v: (acc.extend(v), acc)[1], emit="updates").collect())
    run(flow)
    assert out.items == [("a", [1]), ("a", [1, 2]), ("a", [1, 2, 3])]


# -- event-time timers -----------------------------------------------------------------


class _TimerPerRecord(Operator):
    def on_batch(self, port, batch):
        for key, when in batch:
            self.schedule(when, key)

    def on_timer(self, event_time, data):
        self.emit([(event_time, data)])


def test_a_nan_timer_does_not_silently_swallow_every_other_timer():
    """schedule(nan) then schedule(1.0) and schedule(2.0): the NaN stays at
    the top of the timer heap (nothing compares below it) and `nan <= w` is
    false for every watermark, +inf too, so no timer of the step ever fires
    and the run ends without a word. It should be refused naming the NaN
    (as a source's timestamp of nan is), or at least the others fire."""
    flow = Dataflow()
    records = [("k0", float("nan")), ("k1", 1.0), ("k2", 2.0)]
    out = flow.from_iterable(records).apply(_TimerPerRecord).collect()
    try:
        run(flow)
    except OperatorError as exc:
        assert "nan" in str(exc)
        return
    assert (1.0, "k1") in out.items and (2.0, "k2") in out.items, out.items


# -- stateful_map -----------------------------------------------------------------------

_Pair = collections.namedtuple("_Pair", "state out")


def test_stateful_map_takes_a_pair_that_is_a_tuple_subclass():
    """A namedtuple of two is a pair (unpacks as one), but stateful_map
    refuses it with 'must return a pair (new state, output)': it checks
    `result.__class__ is tuple`."""
    flow = Dataflow()
    out = flow.from_iterable([1, 1]).key_by(lambda x: x).stateful_map(
        lambda s, v: _Pair((s or 0) + v, (s or 0) + v)).collect()
    run(flow)
    assert out.items == [(1, 1), (1, 2)]


# -- a timer of the None key after a rescale ------------------------------------------

_spec = importlib.util.spec_from_file_location(
    "_crash_runs", Path(__file__).resolve().parents[1] / "_crash_runs.py")
_crash_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_crash_runs)

N = 1500

NONE_KEY_TIMERS = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow, Operator
    from state import value_state

    def slow(x):
        if x % 20 == 0:
            time.sleep(0.004)  # spread the run over many epochs
        return x

    class CountThenReport(Operator):
        # one timer per key, far ahead: it fires when the input ends
        def open(self, context):
            self.counts = value_state(self, "counts")
        def on_batch(self, port, batch):
            for key, _ in batch:
                if key not in self.counts:
                    self.counts[key] = 0
                    self.schedule(1e9, key)
                self.counts[key] += 1
        def on_timer(self, when, key):
            self.emit([[key, self.counts.get(key, "no state here")]])

    flow = Dataflow("none-key-timers")
    numbers = flow.from_iterable(range(int(os.environ["N"])), batch_size=25).map(slow)
    numbers.key_by(lambda x: None if x % 3 == 0 else x % 3).apply(CountThenReport).to_files(os.environ["OUT"])
    """
)


def test_a_timer_of_the_none_key_fires_once_after_a_rescale(tmp_path):
    """Key None is a key like any (count() keeps it), and its timer is set
    with schedule(t, key). Killed on 1 kernel and resumed on 3, the timer
    of key None is taken for a data-less `schedule(t)` and given to every
    kernel: it fires 3 times, twice on a kernel without the key's state.
    It should go to the key's owner, once."""
    (tmp_path / "pipeline.py").write_text(NONE_KEY_TIMERS)
    first = _crash_runs.run_cli(tmp_path, 1, "snapshot:3", N=N, OUT=tmp_path / "out")
    assert first.returncode != 0, "the crash point was never reached"
    second = _crash_runs.run_cli(tmp_path, 3, None, N=N, OUT=tmp_path / "out")
    assert second.returncode == 0, second.stderr
    lines = [json.loads(line) for path in sorted((tmp_path / "out").glob("part-*.jsonl"))
             for line in path.read_text().splitlines()]
    expected = Counter(None if x % 3 == 0 else x % 3 for x in range(N))
    assert sorted(map(tuple, lines), key=repr) == sorted(expected.items(), key=repr)


class _TimerAtRecordTime(Operator):
    def on_batch(self, port, batch):
        for record in batch:
            self.schedule(record)


@pytest.mark.parametrize("time", ["1.5", None, datetime.datetime(2026, 1, 1)])
def test_a_timer_time_that_is_no_number_is_refused_naming_schedule(time):
    flow = Dataflow()
    flow.from_iterable([time]).apply(_TimerAtRecordTime).collect()
    with pytest.raises(OperatorError, match=r"schedule\(\) takes an event time in seconds"):
        run(flow)
