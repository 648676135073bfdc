"""`KeyedStream.stateful_map`: exact against a plain loop on one kernel; on
2 and 3 kernels, where a key's records from several source kernels
interleave, every output is one step of a single per-key history that
keeps each kernel's order. Errors name the step, the function and the
record; a crashed run resumes from the snapshotted states."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import Dataflow, KernelError, OperatorError, run
from operators import Tumbling

KEYS = st.sampled_from(["a", "b", "c", 3])


def history(state, value):
    """The values seen so far for the key (a tuple), as state and output."""
    seen = (state or ()) + (value,)
    return seen, seen


def histories_by_loop(records) -> list:
    states: dict = {}
    out = []
    for key, value in records:
        states[key] = (*states.get(key, ()), value)
        out.append((key, states[key]))
    return out


def check_histories(records, items, cores) -> None:
    """Each key's outputs are the prefixes of one ordering of its values,
    each once, in which each source kernel's records keep their order."""
    by_key = defaultdict(list)
    for key, seen in items:
        by_key[key].append(seen)
    expected = defaultdict(list)
    for i, (key, _) in enumerate(records):
        expected[key].append(i)
    assert by_key.keys() == expected.keys()
    for key, outputs in by_key.items():
        final = max(outputs, key=len)
        assert sorted(final) == expected[key]
        assert sorted(outputs, key=len) == [final[:n] for n in range(1, len(final) + 1)]
        for kernel in range(cores):  # record i was read by kernel i % cores
            mine = [i for i in final if i % cores == kernel]
            assert mine == sorted(mine)


@settings(max_examples=15, deadline=None)
@given(st.lists(KEYS, max_size=40), st.sampled_from([1, 3, 100]), st.sampled_from([1, 2, 3]))
def test_stateful_map_keeps_one_history_per_key(keys, batch_size, cores):
    records = [(key, i) for i, key in enumerate(keys)]
    flow = Dataflow()
    keyed = flow.from_iterable(records, batch_size=batch_size).key_by(lambda r: r[0])
    out = keyed.map_values(lambda r: r[1]).stateful_map(history).collect()
    run(flow, cores=cores)
    if cores == 1:
        assert out.items == histories_by_loop(records)
    check_histories(records, out.items, cores)


def test_a_state_of_none_forgets_the_key():
    def at_most_two(count, value):  # the third record of a key starts it afresh
        count = (count or 0) + 1
        return (None if count == 2 else count), count

    flow = Dataflow()
    source = flow.from_iterable(["a", "a", "b", "a", "a", "a"])
    step = source.key_by(lambda w: w).stateful_map(at_most_two)
    out = step.collect()
    run(flow)
    assert out.items == [("a", 1), ("a", 2), ("b", 1), ("a", 1), ("a", 2), ("a", 1)]


def test_the_output_keeps_event_time():
    flow = Dataflow()
    events = [("a", 0.5), ("a", 1.5), ("b", 1.7), ("a", 2.2)]
    source = flow.from_iterable(events, timestamp=lambda e: e[1])
    times = source.key_by(lambda e: e[0]).stateful_map(lambda n, e: ((n or 0) + 1, e[1]))
    out = times.window(Tumbling(1.0)).collect().collect()
    run(flow, cores=2)  # each output in the window of its record's time
    assert sorted((k, w.start, ts) for k, w, ts in out.items) == [
        ("a", 0.0, [0.5]), ("a", 1.0, [1.5]), ("a", 2.0, [2.2]), ("b", 1.0, [1.7])]


def test_a_raising_function_names_the_step_the_function_and_the_record():
    def explode(state, value):
        if value == "boom":
            raise ValueError("no")
        return state, value

    flow = Dataflow()
    flow.from_iterable(["x", "boom"]).key_by(len).stateful_map(explode).collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert info.value.operator == "stateful_map(explode) (step 2)"
    assert "explode" in info.value.function
    assert "(4, 'boom')" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)


def test_a_function_that_returns_no_pair_is_told_what_it_must_return():
    flow = Dataflow()
    flow.from_iterable(["x"]).key_by(len).stateful_map(lambda state, value: value).collect()
    with pytest.raises(KernelError, match=r"(?s)returned 'x'.*must return a pair \(new state, output\)"):
        run(flow)


def test_stateful_map_needs_a_function():
    flow = Dataflow()
    with pytest.raises(TypeError, match="stateful_map needs a callable"):
        flow.from_iterable([1]).key_by(str).stateful_map(3)  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        flow.from_iterable([1]).stateful_map(history)  # type: ignore[attr-defined]


# -- recovery ---------------------------------------------------------------------------

N = 1000
PIPELINE = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow

    def slow(x):
        if x % 20 in (0, 1):  # on both kernels: spread the run over many epochs
            time.sleep(0.004)
        return x

    def numbered(count, x):  # the n-th record of its key is numbered n
        count = (count or 0) + 1
        return count, count

    flow = Dataflow("stateful")
    numbers = flow.from_iterable(range(int(os.environ["N"])), batch_size=25).map(slow)
    numbers.key_by(lambda x: x % 7).stateful_map(numbered).to_files(os.environ["OUT"])
    """
)


_spec = importlib.util.spec_from_file_location(
    "_crash_runs", Path(__file__).resolve().parents[1] / "_crash_runs.py")
_crash_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_crash_runs)


def run_cli(tmp: Path, cores: int, crash: str | None):
    return _crash_runs.run_cli(tmp, cores, crash, N=N, OUT=tmp / "out")


@pytest.mark.parametrize("cores, crash", [(1, "snapshot:3"), (2, "committed:2@1")])
def test_a_crashed_run_resumes_each_keys_state(tmp_path, cores, crash):
    """Each key's records are numbered 1..n exactly once after a crash and
    a resumed run: a state lost (numbering from 1 again) or a record
    replayed into a restored state would show as a number twice or missing."""
    # (held open until the crash: its slow records last ~0.2 s a kernel, which
    # under load may pass before kernel 1 has two epochs committed)
    (tmp_path / "pipeline.py").write_text(PIPELINE + _crash_runs.HELD_OPEN)
    first = run_cli(tmp_path, cores, crash)
    assert first.returncode != 0, "the crash point was never reached"
    second = run_cli(tmp_path, cores, None)
    assert second.returncode == 0, second.stderr
    assert "resuming from epoch" in second.stderr
    lines = [json.loads(line) for path in sorted((tmp_path / "out").glob("part-*.jsonl"))
             for line in path.read_text().splitlines()]
    per_key = Counter(x % 7 for x in range(N))
    assert Counter(map(tuple, lines)) == Counter((k, n) for k, total in per_key.items()
                                                 for n in range(1, total + 1))


# -- running aggregates: emit="updates" ---------------------------------------------------

import kernel.runtime._runtime as runtime  # noqa: E402

RUNNING = {  # name: (the aggregate, the value so far after each of a key's values, in order)
    "count": (lambda keyed: keyed.count(emit="updates"), lambda values: list(range(1, len(values) + 1))),
    "sum": (lambda keyed: keyed.sum(emit="updates"),
            lambda values: [sum(values[:n]) for n in range(1, len(values) + 1)]),
    "reduce": (lambda keyed: keyed.reduce(max, emit="updates"),
               lambda values: [max(values[:n]) for n in range(1, len(values) + 1)]),
    "fold": (lambda keyed: keyed.fold(tuple, lambda acc, v: (*acc, v), emit="updates"),
             lambda values: [tuple(values[:n]) for n in range(1, len(values) + 1)]),
}


def running_by_loop(records, aggregate: str) -> list:
    """With one record per batch: an update after every record."""
    values: dict = defaultdict(list)
    out = []
    for key, value in records:
        values[key].append(value)
        out.append((key, RUNNING[aggregate][1](values[key])[-1]))
    return out


def check_updates(records, items, aggregate: str, cores: int) -> None:
    """Per key, the updates are values the key had after some of its records,
    one per batch with the key, in order; the last one the final."""
    values: dict = defaultdict(list)
    for key, value in records:
        values[key].append(value)
    updates: dict = defaultdict(list)
    for key, value in items:
        updates[key].append(value)
    assert updates.keys() == values.keys()
    for key, got in updates.items():
        steps = RUNNING[aggregate][1](values[key])
        assert got[-1] == steps[-1] or (aggregate == "fold" and sorted(got[-1]) == sorted(steps[-1]))
        if cores > 1:  # a key's records from several kernels arrive interleaved
            sizes = [len(v) for v in got] if aggregate == "fold" else got
            if aggregate == "reduce":  # each the largest of some of the values
                assert got == sorted(got) and set(got) <= set(values[key])
            else:  # strictly growing: count, sum of positive values, tuples of values
                assert sizes == sorted(set(sizes))
            continue
        if aggregate == "reduce":  # one per batch with the key: max may stay the same
            assert got == sorted(got) and set(got) <= set(steps)
        else:
            positions = [steps.index(v) for v in got]
            assert positions == sorted(set(positions))


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(KEYS, st.integers(1, 9)), max_size=40), st.sampled_from(sorted(RUNNING)),
       st.sampled_from([1, 4, 100]), st.sampled_from([1, 2, 3]), st.booleans())
def test_running_aggregates_update_after_each_batch(records, aggregate, batch_size, cores, fused):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime, "FUSION", fused)
        flow = Dataflow()
        keyed = flow.from_iterable(records, batch_size=batch_size).key_by(lambda r: r[0])
        out = RUNNING[aggregate][0](keyed.map_values(lambda r: r[1])).collect()
        # key_by right before it: fused when allowed (on several kernels, in the partial half)
        direct = flow.from_iterable(records, batch_size=batch_size).key_by(lambda r: r[0]).count(
            emit="updates").collect()
        run(flow, cores=cores)
    if cores == 1 and batch_size == 1:
        assert out.items == running_by_loop(records, aggregate)
    check_updates(records, out.items, aggregate, cores)
    check_updates(records, direct.items, "count", cores)


def test_updates_come_before_the_input_ends():
    """On an input that has not ended, the updates so far are out: a sink
    sees each key's count rise while the source still waits for more."""
    import asyncio

    seen: list = []
    three: list = []  # the event, made on the run's loop

    def note(update):
        seen.append(update)
        if len(seen) == 3:
            three[0].set()

    async def words():
        three.append(asyncio.Event())
        for word in ["a", "b", "a"]:
            yield word
        await asyncio.wait_for(three[0].wait(), 10)  # the updates so far, before the input ends
        yield "a"

    flow = Dataflow()
    flow.from_async_iterable(words, batch_size=1).key_by(lambda w: w).count(emit="updates").sink(note)
    run(flow)
    assert seen == [("a", 1), ("b", 1), ("a", 2), ("a", 3)]


def test_emit_must_be_final_or_updates():
    flow = Dataflow()
    keyed = flow.from_iterable([1]).key_by(str)
    for make in (lambda: keyed.count(emit="each"), lambda: keyed.sum(emit="x"),
                 lambda: keyed.reduce(max, emit=""), lambda: keyed.fold(0, max, emit="deltas")):
        with pytest.raises(ValueError, match=r"emit must be 'final'.*or 'updates'"):
            make()


def test_updates_on_two_kernels_do_not_wait_for_the_input_to_end(tmp_path):
    """The source yields "a", then waits for its update before it yields
    the next: the partial half before the exchange hands on each batch's
    counts instead of holding them to the end of its input."""
    import asyncio

    updates = tmp_path / "updates"
    updates.touch()

    async def wait_for(count: str):
        for _ in range(2000):  # up to 10 s
            if count in updates.read_text().split():
                return
            await asyncio.sleep(0.005)
        raise TimeoutError(f"no update {count} before the input ended")

    async def words():
        yield "a"
        await wait_for("1")
        yield "a"
        await wait_for("2")

    def note(update):
        with updates.open("a") as f:
            f.write(f"{update[1]}\n")

    flow = Dataflow()
    source = flow.from_async_iterable(words, batch_size=1)
    source.key_by(lambda w: w).count(emit="updates").sink(note)
    run(flow, cores=2)
    assert updates.read_text().split() == ["1", "2"]
