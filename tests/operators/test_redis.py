"""The Redis Streams connector against a real `redis-server` (started on a
free port in a temporary directory by tests/_redis_server.py): every entry
read once and in order per stream, streams split by kernel, bounded and
followed reads, the kernel's pace, recovery exactly once into files, the
sink at least once, and errors that name the operator, the server, the
stream or the record."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import pickle
import re
import socket
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel import Dataflow, KernelProcessError, Operator, OperatorError, run, run_async
from operators import RedisEntry

REPO = Path(__file__).resolve().parents[2]

# tests/ is not a package (and its `kernel/` folder would shadow the library): load the helper by
# path (the module's server and its client: conftest.py's `url` and `client`)
_spec = importlib.util.spec_from_file_location("_redis_server", REPO / "tests" / "_redis_server.py")
_redis_server = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_redis_server)
_spec = importlib.util.spec_from_file_location("_crash_runs", REPO / "tests" / "_crash_runs.py")
_crash_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_crash_runs)


def fill(client, stream: str, values) -> list[str]:
    """Adds one entry `{"n": value}` per value (a plain pipeline); their ids."""
    pipe = client.pipeline(transaction=False)
    for value in values:
        pipe.xadd(stream, {"n": value})
    return list(pipe.execute())


def entries(client, stream: str) -> list[tuple[str, dict]]:
    return client.xrange(stream)


class Sizes(Operator):
    """Passes records on and notes every batch's length."""

    def __init__(self, sizes: list) -> None:
        self.sizes = sizes

    def on_batch(self, port, batch):
        self.sizes.append(len(batch))
        self.emit(batch)


# -- reading ------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=3), batch_size=st.integers(1, 9))
def test_every_entry_comes_once_in_stream_order(client, url, lengths, batch_size):
    client.flushdb()
    names = [f"s{i}" for i in range(len(lengths))]
    expected = {name: list(zip(fill(client, name, range(length)), map(str, range(length))))
                for name, length in zip(names, lengths) if length}
    flow = Dataflow()
    out = flow.from_redis_stream(url, names, batch_size=batch_size).collect()
    run(flow)
    got: dict[str, list] = {}
    for entry in out.items:
        assert isinstance(entry, RedisEntry)
        got.setdefault(entry.stream, []).append((entry.id, entry.fields["n"]))
    assert got == expected


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.integers(0, 30), min_size=3, max_size=3))
@pytest.mark.parametrize("cores", [2, 3])
def test_kernel_i_reads_streams_i_mod_n(client, url, cores, lengths):
    """Three streams over `cores` kernels: kernel i reads streams[i::cores],
    each entry once (collect gathers kernel 0's first)."""
    client.flushdb()
    names = ["a", "b", "c"]
    ids = {name: fill(client, name, range(length)) for name, length in zip(names, lengths)}
    flow = Dataflow()
    out = flow.from_redis_stream(url, names, batch_size=7).map(lambda e: (e.stream, e.id)).collect()
    run(flow, cores=cores)
    order = [name for i in range(cores) for name in names[i::cores]]
    expected = [(name, entry_id) for name in order for entry_id in ids[name]]
    # within a kernel the streams interleave as XREAD returns them: compare per kernel, in order per stream
    assert sorted(out.items) == sorted(expected)
    assert len(out.items) == len(expected)
    kernel0 = {pair for name in names[0::cores] for pair in ((name, i) for i in ids[name])}
    assert set(out.items[: len(kernel0)]) == kernel0
    for name in names:
        assert [i for s, i in out.items if s == name] == ids[name]


def test_one_stream_is_read_by_kernel_0_and_key_by_spreads_it(client, url):
    fill(client, "one", range(100))
    flow = Dataflow()
    stream = flow.from_redis_stream(url, "one")
    readers = stream.map(lambda e: 1).apply(KernelTag, name="tag").collect()
    counts = stream.key_by(lambda e: int(e.fields["n"]) % 5).count().collect()
    run(flow, cores=2)
    assert set(readers.items) == {0}
    assert sorted(counts.items) == [(k, 20) for k in range(5)]


class KernelTag(Operator):
    def on_batch(self, port, batch):
        self.emit([self.context.index] * len(batch))


def test_a_bounded_read_ends_at_the_entry_last_when_it_started(client, url):
    """Entries added while the run reads (here by the pipeline itself, at its
    first record) are not read: the run ends at the end it found."""
    ids = fill(client, "s", range(50))
    added = []

    def add_more(entry):
        if not added:
            added.extend(fill(redis.Redis.from_url(url), "s", range(50, 80)))

    flow = Dataflow()
    out = flow.from_redis_stream(url, "s", batch_size=8).inspect(add_more).map(lambda e: e.id).collect()
    run(flow)
    assert len(added) == 30 and client.xlen("s") == 80
    assert out.items == ids


async def test_a_bounded_read_ends_when_its_last_entries_are_deleted_meanwhile(client, url):
    """The end it took is deleted (XDEL) while it reads: it ends at what is left."""
    ids = fill(client, "s", range(40))

    def delete_tail(entry):
        if entry.id == ids[0]:
            redis.Redis.from_url(url).xdel("s", *ids[30:])

    flow = Dataflow()
    out = flow.from_redis_stream(url, "s", batch_size=4).inspect(delete_tail).map(lambda e: e.id).collect()
    await asyncio.wait_for(run_async(flow), 10)
    assert out.items == ids[:30]


def test_start_after_an_id_and_missing_streams(client, url):
    ids = fill(client, "s", range(20))
    flow = Dataflow()
    after = flow.from_redis_stream(url, "s", start=ids[11]).map(lambda e: e.id).collect()
    missing = flow.from_redis_stream(url, ["nothing", "here"]).collect()
    run(flow)
    assert after.items == ids[12:]
    assert missing.items == []


def test_decode_false_gives_bytes(client, url):
    client.xadd("s", {"k": "é"})
    flow = Dataflow()
    out = flow.from_redis_stream(url, "s", decode=False).collect()
    run(flow)
    [entry] = out.items
    assert entry.fields == {b"k": "é".encode()} and isinstance(entry.id, str) and entry.stream == "s"


def test_entry_time_gives_event_time(client, url):
    client.xadd("s", {"n": 1}, id="1500-0")
    client.xadd("s", {"n": 2}, id="2500-3")
    flow = Dataflow()
    out = flow.from_redis_stream(url, "s", timestamp=lambda e: e.time).map(lambda e: e.time).collect()
    run(flow)
    assert out.items == [1.5, 2.5]


def test_the_source_emits_no_more_than_the_kernel_wants(client, url):
    """A record costs more than half the 1 ms budget: after the first poll
    (16 records) the kernel asks for one at a time, and the source hands
    on no more, though its reader has a full batch of 500 buffered."""
    fill(client, "s", range(120))
    sizes: list[int] = []

    def slow(entry):
        time.sleep(0.0006)
        return entry

    flow = Dataflow()
    out = (flow.from_redis_stream(url, "s", batch_size=500)
           .apply(lambda: Sizes(sizes), name="sizes").map(slow).collect())
    run(flow)
    assert len(out.items) == 120 and sum(sizes) == 120
    assert sizes[0] <= 16 and max(sizes[1:]) <= 2, sizes


async def test_follow_reads_entries_added_while_it_runs(client, url):
    """`follow=True` from "$": what was there before is skipped; entries added
    while the run waits come through, in order; the run goes on until cancelled."""
    fill(client, "s", range(5))
    seen: list[str] = []
    enough = asyncio.Event()

    def note(entry):
        seen.append(entry.fields["n"])
        if len(seen) == 6:
            enough.set()

    flow = Dataflow()
    flow.from_redis_stream(url, "s", follow=True, start="$", batch_size=4).inspect(note).sink(
        lambda e: None)
    task = asyncio.ensure_future(run_async(flow))
    writer = redis.asyncio.Redis.from_url(url, decode_responses=True)
    try:
        # "$" means the end as the reader finds it (its XREVRANGE): wait until
        # the reader is blocked in its XREAD, past that, as Redis reports it
        deadline = time.monotonic() + 10
        while not any(c.get("cmd") == "xread" for c in await writer.client_list()):
            assert time.monotonic() < deadline, "the source never blocked in XREAD"
            await asyncio.sleep(0.002)
        for n in range(5, 11):
            await writer.xadd("s", {"n": n})
        await asyncio.wait_for(enough.wait(), 10)
        assert not task.done()  # following: it does not end by itself
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await writer.aclose()
    assert seen == [str(n) for n in range(5, 11)]


# -- recovery ---------------------------------------------------------------------------

N = 1200
RECOVERY = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow

    HOLD = os.environ.get("HOLD")

    def slow(entry):
        if HOLD and os.path.exists(HOLD):
            # the first run is held open, over many epochs, until the test has seen the epoch it
            # waits for in the store and kills it; the resumed run (no HOLD) is not paced
            time.sleep(0.001)
        return [entry.stream, entry.id, entry.fields["n"]]

    flow = Dataflow("redis recovery")
    (flow.from_redis_stream(os.environ["REDIS_URL"], ["a", "b"], batch_size=25)
         .map(slow).to_files(os.path.join(os.environ["OUT"], "r")))
    """
)


def _run_cli(tmp_path, url, crash):
    return _crash_runs.run_cli(tmp_path, 2, crash, OUT=tmp_path / "out", REDIS_URL=url)


def _published(directory: Path) -> list:
    records = [json.loads(line) for f in sorted(directory.glob("part-*.jsonl"))
               for line in f.read_text().splitlines()]
    return [tuple(r) if isinstance(r, list) else r for r in records]


def _redis_state(snapshots, kernel: int) -> dict | None:
    """`kernel`'s Redis step (step 0) state in a complete epoch's
    snapshots; None where it has ended or has none."""
    part = snapshots[kernel].get(0)
    if part in (None, "ended"):
        return None
    state = pickle.loads(part) if isinstance(part, bytes) else part
    return state[-1] if isinstance(state, tuple) else state


def _both_ends_taken_and_reading(snapshots) -> bool:
    """Each kernel's reader had taken its stream's end (a bounded read takes
    it when its reader starts) and handed on entries, neither had ended."""
    states = [_redis_state(snapshots, kernel) for kernel in (0, 1)]
    return all(state and state["ends"] and all(state["positions"][s] not in ("0", state["ends"][s])
                                               for s in state["ends"]) for state in states)


def test_a_crashed_run_resumes_each_stream_after_its_last_id(client, url, tmp_path):
    """A run killed mid-run on 2 kernels (stream "a" on kernel 0, "b" on
    kernel 1); the resumed run goes on from the ids in the last complete
    snapshot and ends where the first run would have: entries added after
    the crash are not read. Every entry once."""
    # A bounded read takes its streams' ends when its reader starts, before
    # it reads anything: a crash before that leaves no ends in the snapshot,
    # and the resumed run takes them then (README), the entries added since
    # with them. What this test checks needs the ends taken before the
    # crash: the run is killed once a complete epoch shows both kernels'
    # ends taken and entries read. (At a crash point, "committed:2@1", a
    # loaded machine completed epochs before a kernel's reader had looked,
    # in 1 of ~5 runs beside another suite: the resumed run read "a"'s 10
    # later entries.)
    (tmp_path / "pipeline.py").write_text(RECOVERY)
    expected = Counter()
    for name in ("a", "b"):
        ids = fill(client, name, range(N))  # >= 1.2 s a kernel, paced
        expected.update((name, entry_id) for entry_id in ids)
    hold = tmp_path / "hold"
    hold.touch()
    try:
        _crash_runs.run_cli_until(tmp_path, 2, _both_ends_taken_and_reading, HOLD=hold,
                                  OUT=tmp_path / "out", REDIS_URL=url)
    finally:
        hold.unlink()
    fill(client, "a", range(10))  # after the run began: not part of its bounded read
    fill(client, "b", range(10))
    second = _run_cli(tmp_path, url, None)
    assert second.returncode == 0, second.stderr
    assert "resuming from epoch" in second.stderr
    published = Counter((name, entry_id) for name, entry_id, _ in _published(tmp_path / "out" / "r"))
    assert published == expected


REORDERED = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow

    HOLD, HELD = os.environ.get("HOLD"), os.environ.get("HELD", "").split(",")

    def slow(entry):
        # while the file HOLD exists, the HELD streams' entries come slowly: the test keeps them
        # going until it has seen the epoch it waits for in the store, then kills the run. A run
        # without HOLD (resumed, or run to the end) is not paced: nothing there waits on its
        # timing, and the 0.3 ms an entry cost a resumed run ~2 s of its ~3,000 entries left.
        if HOLD:
            time.sleep(0.001 if entry.stream in HELD and os.path.exists(HOLD) else 0.0003)
        return [entry.stream, entry.id]

    timestamp = (lambda e: e.time) if os.environ.get("TIMED") else None  # (an event-time source)
    flow = Dataflow("redis reordered")
    (flow.from_redis_stream(os.environ["REDIS_URL"], os.environ["STREAMS"].split(","), batch_size=25,
                            timestamp=timestamp)
         .map(slow).to_files(os.path.join(os.environ["OUT"], "r")))
    """
)


def _run_reordered(tmp_path, url, streams, cores, timed=False, *, until=None, held=""):
    """REORDERED on `cores` kernels; with `until`, `held`'s entries paced
    and the run killed once a complete epoch's snapshots satisfy `until`
    (`_crash_runs.run_cli_until`)."""
    env = dict(OUT=tmp_path / "out", REDIS_URL=url, STREAMS=streams, TIMED="1" if timed else "")
    if until is None:
        return _crash_runs.run_cli(tmp_path, cores, None, **env)
    hold = tmp_path / "hold"
    hold.touch()
    try:
        return _crash_runs.run_cli_until(tmp_path, cores, until, HOLD=hold, HELD=held, **env)
    finally:
        hold.unlink()


def _kernel_0_ended_only(snapshots) -> bool:
    """Kernel 0's Redis step (step 0) had ended, kernel 1's not."""
    return snapshots[0].get(0) == "ended" and snapshots[1].get(0) != "ended"


def test_a_stream_added_when_rescaling_past_an_ended_kernel_is_read(client, url, tmp_path):
    """Kernel 0 of 2 had read its stream "a" to the end (its step ENDED in
    the snapshots); resumed on 1 kernel with "c" added to the list, the
    ended kernel's streams were cut from the new list (a and c): "c" was
    marked as read and never read (0 of its 50 entries). (The first run
    is killed once an epoch shows kernel 0's step ended and kernel 1's not,
    "b" paced meanwhile: at a crash point, under load, no epoch was
    complete at times.)"""
    (tmp_path / "pipeline.py").write_text(REORDERED)
    ids = {"a": fill(client, "a", range(10)), "b": fill(client, "b", range(3000)),  # >= 3 s, paced
           "c": fill(client, "c", range(50))}
    _run_reordered(tmp_path, url, "a,b", 2, until=_kernel_0_ended_only, held="b")
    second = _run_reordered(tmp_path, url, "a,b,c", 1)
    assert second.returncode == 0, second.stderr
    assert "this run has 1" in second.stderr  # rescaled
    expected = Counter((name, entry_id) for name in ("a", "b", "c") for entry_id in ids[name])
    assert Counter(_published(tmp_path / "out" / "r")) == expected


@pytest.mark.parametrize("cores, timed", [(2, False), (3, False), (2, True)])
def test_streams_added_on_resume_are_read_where_the_source_had_ended(client, url, tmp_path, cores, timed):
    """Kernel 0 of 2 had read its stream "a" to the end (its step ENDED in
    the snapshot) while kernel 1 still read "b"; resumed with "c" and "d"
    added. On 2 kernels "c" lands on kernel 0, which resumed as ended and
    never read it (0 of its 50 entries); it is read now, every entry once,
    as is "d" on the live kernel 1, also with event time (the source
    wrapped, its snapshot too). On 3 kernels the snapshots are cut anyway,
    and "c" lands on the new kernel 2."""
    (tmp_path / "pipeline.py").write_text(REORDERED)
    ids = {"a": fill(client, "a", range(10)), "b": fill(client, "b", range(3000)),  # >= 3 s, paced
           "c": fill(client, "c", range(50)), "d": fill(client, "d", range(30))}
    _run_reordered(tmp_path, url, "a,b", 2, timed, until=_kernel_0_ended_only, held="b")
    second = _run_reordered(tmp_path, url, "a,b,c,d", cores, timed=timed)
    assert second.returncode == 0, second.stderr
    if cores == 2:  # kernel 0's source had ended: it is brought back, as when rescaling
        assert ("step 'from_redis_stream(a,b,c,d)' had ended on kernel 0, where the stream 'c' added "
                "since lands: every kernel restores epoch") in second.stderr, second.stderr
    else:
        assert "this run has 3" in second.stderr
    expected = Counter((name, entry_id) for name in ("a", "b", "c", "d") for entry_id in ids[name])
    assert Counter(_published(tmp_path / "out" / "r")) == expected


HELD = textwrap.dedent(
    """
    import asyncio, os, time
    from kernel import Dataflow

    HOLD, HELD, TICKS = os.environ.get("HOLD"), os.environ.get("HELD"), int(os.environ["TICKS"])

    def held():
        return HOLD and os.path.exists(HOLD)

    # While the file HOLD exists, the HELD records (a stream's, or the ticks) come slowly: the test
    # keeps them going until it has seen the epoch it waits for in the store, then kills the run.
    def paced(record):
        if record[0] == HELD and held():
            time.sleep(0.001)
        return record

    async def ticks():  # (on a task: a source always ready starved the Redis source's end)
        for n in range(TICKS):
            if held():  # held, or a trickle: the runs of a loop, which epochs go in with, go on
                await asyncio.sleep(0.001)
            yield ["ticks", n]

    flow = Dataflow("redis held")
    entries = flow.from_redis_stream(os.environ["REDIS_URL"], os.environ["STREAMS"].split(","), batch_size=25)
    records = entries.map(lambda e: [e.stream, e.id]).union(flow.from_async_iterable(ticks)).map(paced)
    if os.environ.get("LOOPS"):
        # A HELD stream goes around the loop: kept busy with it, under load the loop held the other
        # kernel's sources (its Redis step's end with them) for seconds. The ticks go in: epochs go
        # into a loop with its runs, which its records start (with none, no epoch completed).
        around = records.filter(lambda r: r[0] == HELD != "ticks")
        looped = records.filter(lambda r: not r[0] == HELD != "ticks")
        records = looped.iterate(lambda s: (s.filter(lambda r: False), s), max_in_flight=50).union(around)
    records.to_files(os.path.join(os.environ["OUT"], "r"))
    """
)
REDIS_STEP = 0  # the redis source's step index in HELD's snapshots


def _run_held(tmp_path, url, streams, *, loops: bool, ticks: int, until=None, held: str = "", cores: int = 2):
    """HELD on `cores` kernels; with `until`, held (`held`'s records paced)
    and killed once a complete epoch's snapshots satisfy `until`."""
    env = dict(OUT=tmp_path / "out", REDIS_URL=url, STREAMS=streams, TICKS=ticks, LOOPS="1" if loops else "")
    if until is None:
        return _crash_runs.run_cli(tmp_path, cores, None, **env)
    hold = tmp_path / "hold"
    hold.touch()
    try:
        return _crash_runs.run_cli_until(tmp_path, 2, until, HOLD=hold, HELD=held, **env)
    finally:
        hold.unlink()


def _redis_ended(snapshot) -> bool:
    return snapshot.get(REDIS_STEP) == "ended"


def test_a_stream_added_where_the_source_had_ended_in_a_flow_with_loops_is_refused(client, url, tmp_path):
    """A flow with loops cannot be cut by key group, so a stream added where
    the source had ended cannot be read: refused, naming the step, the
    kernel and the stream, before anything runs. (The first run is killed
    once an epoch has kernel 0's step ended and kernel 1's not, kept going
    by its long stream "b", paced, around the loop: killed at a crash point
    instead, under load no epoch was complete at times, or both steps had
    ended, or kernel 0's had not.)"""
    (tmp_path / "pipeline.py").write_text(HELD)
    fill(client, "a", range(10))
    fill(client, "b", range(100_000))  # read at 1 ms an entry at most while held: >= 100 s, past any wait
    fill(client, "c", range(20))
    _run_held(tmp_path, url, "a,b", loops=True, ticks=100_000, held="b", until=_kernel_0_ended_only)
    published = _published(tmp_path / "out" / "r")
    second = _run_held(tmp_path, url, "a,b,c", loops=True, ticks=100_000)
    assert second.returncode != 0
    assert _published(tmp_path / "out" / "r") == published
    assert re.search(
        r"^error: state_dir '[^']+': step 'from_redis_stream\(a,b,c\)' had ended on kernel 0, where the "
        r"stream 'c' added since lands, and a flow with loops \(Stream.iterate\) restores each kernel from "
        r"its own snapshot only \(its rounds' state is kept per kernel, not by key\), where that step stays "
        r"ended: add the streams with a fresh state_dir$", second.stderr, re.MULTILINE), second.stderr


TICKS = 8000  # paced at 1 ms each while held: >= 4 s


@pytest.mark.parametrize("loops, cores", [(False, 2), (True, 2), (False, 3)])
def test_a_stream_added_after_the_source_had_ended_on_every_kernel_is_refused(client, url, tmp_path, loops,
                                                                                cores):
    """The source had ended on every kernel in the restored epoch (the rest
    of the flow still ran: the ticks, paced), and "c" is added: its end
    has reached every step after it (a count would have emitted, a window
    flushed), so it cannot be read again. The resumed run returned 0 and
    never read "c" (20 entries lost, with loops and without, and on 3
    kernels); refused now, before anything runs, naming the step and the
    stream (no snapshot names the streams then: the list is the one the
    first run recorded in the store). Resumed with the old list, it
    finishes: every entry and tick once."""
    (tmp_path / "pipeline.py").write_text(HELD)
    ids = {name: fill(client, name, range(count)) for name, count in (("a", 10), ("b", 10), ("c", 20))}
    _run_held(tmp_path, url, "a,b", loops=loops, ticks=TICKS, held="ticks",
              until=lambda snapshots: all(_redis_ended(s) for s in snapshots))
    published = _published(tmp_path / "out" / "r")
    added = _run_held(tmp_path, url, "a,b,c", loops=loops, ticks=TICKS, cores=cores)
    assert added.returncode != 0, "the stream 'c' added was not read, and the run was not refused"
    assert _published(tmp_path / "out" / "r") == published
    assert re.search(
        r"^error: state_dir '[^']+': resuming epoch \d+: step 'from_redis_stream\(a,b,c\)' had ended on "
        r"every kernel, before the stream 'c' was added: its bounded read of \['a', 'b'\] was over and its "
        r"end has reached every step after it, so no run resumed from there can read 'c' \(resume with the "
        r"streams \['a', 'b'\], and read the others with a fresh state_dir\)$",
        added.stderr, re.MULTILINE), added.stderr
    old = _run_held(tmp_path, url, "a,b", loops=loops, ticks=TICKS, cores=cores)
    assert old.returncode == 0, old.stderr
    expected = Counter((name, entry_id) for name in ("a", "b") for entry_id in ids[name])
    expected.update(("ticks", n) for n in range(TICKS))
    assert Counter(_published(tmp_path / "out" / "r")) == expected


def test_a_stream_added_after_the_flow_ran_to_the_end_is_refused(client, url, tmp_path):
    """A flow that ran to the end is not run again: "c" added since was
    never read, the rerun said "nothing to do" and returned 0. Refused now,
    naming the stream; with the old list the rerun still does nothing."""
    (tmp_path / "pipeline.py").write_text(REORDERED)
    ids = {name: fill(client, name, range(20)) for name in ("a", "b", "c")}
    assert _run_reordered(tmp_path, url, "a,b", 2).returncode == 0
    published = _published(tmp_path / "out" / "r")
    assert Counter(published) == Counter((name, i) for name in ("a", "b") for i in ids[name])
    added = _run_reordered(tmp_path, url, "a,b,c", 2)
    assert added.returncode != 0
    assert ("step 'from_redis_stream(a,b,c)' had ended on every kernel, before the stream 'c' was added"
            in added.stderr), added.stderr
    again = _run_reordered(tmp_path, url, "a,b", 2)
    assert again.returncode == 0 and "already ran to the end" in again.stderr, again.stderr
    assert _published(tmp_path / "out" / "r") == published


def _run_held_cluster(tmp_path, url, dirs, streams, *, loops=False, until=None, held=""):
    """HELD on a cluster of two one-core processes (`dirs`: their state_dirs),
    as `_run_held`."""
    env = dict(OUT=tmp_path / "out", REDIS_URL=url, STREAMS=streams, TICKS=TICKS, LOOPS="1" if loops else "")
    if until is None:
        return _crash_runs.run_cluster(tmp_path, dirs, **env)
    hold = tmp_path / "hold"
    hold.touch()
    try:
        return _crash_runs.run_cluster(tmp_path, dirs, until=until, HOLD=hold, HELD=held, **env)
    finally:
        hold.unlink()


@pytest.mark.parametrize("loops", [False, True])
def test_a_cluster_reads_a_stream_added_where_the_source_had_ended_from_a_shared_state_dir(
        client, url, tmp_path, loops):
    """A cluster of 2 processes resumed in the same shape restored each
    kernel from its own snapshot: "c", added where the source had ended
    (kernel 0), was never read (0 of its 20 entries), and the run returned
    0. From a state_dir the processes share, every kernel now restores from
    all the kernels' snapshots, as one process does: every entry once. A
    flow with loops cannot be cut: refused, naming the step and stream."""
    (tmp_path / "pipeline.py").write_text(HELD)
    ids = {name: fill(client, name, range(count)) for name, count in (("a", 10), ("b", 6000), ("c", 20))}
    dirs = [tmp_path / "state"] * 2
    _run_held_cluster(tmp_path, url, dirs, "a,b", loops=loops, held="b", until=_kernel_0_ended_only)
    published = _published(tmp_path / "out" / "r")
    added = _run_held_cluster(tmp_path, url, dirs, "a,b,c", loops=loops)
    said = "step 'from_redis_stream(a,b,c)' had ended on kernel 0, where the stream 'c' added since lands"
    if loops:
        assert all(code != 0 for code, _ in added), added
        assert any(f"{said}, and a flow with loops" in err for _, err in added), added
        assert _published(tmp_path / "out" / "r") == published
        return
    assert all(code == 0 for code, _ in added), added
    expected = Counter((name, entry_id) for name in ("a", "b", "c") for entry_id in ids[name])
    expected.update(("ticks", n) for n in range(TICKS))
    assert Counter(_published(tmp_path / "out" / "r")) == expected
    assert any(f"{said}: every kernel restores epoch" in err for _, err in added), added


def test_a_cluster_with_state_dirs_of_their_own_refuses_a_stream_added_where_the_source_had_ended(
        client, url, tmp_path):
    """Each process sees only its own kernels' snapshots: the cut is not
    possible, and the run is refused before anything runs, naming the step,
    the stream and what is missing. Resumed with the old list, it finishes:
    every entry once."""
    (tmp_path / "pipeline.py").write_text(HELD)
    ids = {name: fill(client, name, range(count)) for name, count in (("a", 10), ("b", 6000), ("c", 20))}
    dirs = [tmp_path / "state0", tmp_path / "state1"]
    _run_held_cluster(tmp_path, url, dirs, "a,b", held="b", until=_kernel_0_ended_only)
    published = _published(tmp_path / "out" / "r")
    added = _run_held_cluster(tmp_path, url, dirs, "a,b,c")
    assert all(code != 0 for code, _ in added), added
    assert any(re.search(
        r"process 0: state_dir '[^']+state0': step 'from_redis_stream\(a,b,c\)' had ended on kernel 0, where "
        r"the stream 'c' added since lands, so every kernel must restore epoch \d+ from all the kernels' "
        r"snapshots, and this one lacks those of kernel 1: a cluster does that only from a state_dir every "
        r"process shares", err) for _, err in added), added
    assert _published(tmp_path / "out" / "r") == published
    old = _run_held_cluster(tmp_path, url, dirs, "a,b")
    assert all(code == 0 for code, _ in old), old
    expected = Counter((name, entry_id) for name in ("a", "b") for entry_id in ids[name])
    expected.update(("ticks", n) for n in range(TICKS))
    assert Counter(_published(tmp_path / "out" / "r")) == expected


def test_a_cluster_refuses_a_stream_added_after_the_source_had_ended_on_every_kernel(client, url, tmp_path):
    """As on one process: ended on every kernel, the source cannot read a
    stream added since; the cluster returned 0 without it. Refused now."""
    (tmp_path / "pipeline.py").write_text(HELD)
    for name, count in (("a", 10), ("b", 10), ("c", 20)):
        fill(client, name, range(count))
    dirs = [tmp_path / "state0", tmp_path / "state1"]
    _run_held_cluster(tmp_path, url, dirs, "a,b", held="ticks",
                      until=lambda snapshots: all(_redis_ended(s) for s in snapshots))
    published = _published(tmp_path / "out" / "r")
    added = _run_held_cluster(tmp_path, url, dirs, "a,b,c")
    assert all(code != 0 for code, _ in added), added
    assert any(re.search(
        r"process 0: state_dir '[^']+state0': resuming epoch \d+: step 'from_redis_stream\(a,b,c\)' had "
        r"ended on every kernel, before the stream 'c' was added", err) for _, err in added), added
    assert _published(tmp_path / "out" / "r") == published


def test_a_resumed_run_whose_stream_list_moves_a_stream_to_another_kernel_is_refused(client, url, tmp_path):
    """Resumed on as many kernels, each kernel restores its own snapshot: a
    stream put before the others ("c,a,b" after "a,b") moved "a" and "b" to
    other kernels, which held no position for them, and both were read again
    from the start (724 entries twice). Refused now, naming the stream; a
    stream added at the end keeps every other's kernel and is read once."""
    (tmp_path / "pipeline.py").write_text(REORDERED)
    ids = {name: fill(client, name, range(count)) for name, count in (("a", 2000), ("b", 2000), ("c", 600))}

    _run_reordered(tmp_path, url, "a,b", 2, held="a,b",  # >= 2 s, paced
                   until=lambda snapshots: all(s.get(0) not in (None, "ended") for s in snapshots))
    moved = _run_reordered(tmp_path, url, "c,a,b", 2)
    assert moved.returncode != 0
    assert re.search(r"stream 'a' moved from kernel 0 to kernel 1|stream 'b' moved from kernel 1 to kernel 0",
                     moved.stderr), moved.stderr
    appended = _run_reordered(tmp_path, url, "a,b,c", 2)
    assert appended.returncode == 0, appended.stderr
    expected = Counter((name, entry_id) for name in ("a", "b", "c") for entry_id in ids[name])
    assert Counter(_published(tmp_path / "out" / "r")) == expected


SINK_RECOVERY = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow

    def slow(n):
        time.sleep(0.0003)
        return n

    flow = Dataflow("redis sink recovery")
    numbers = flow.from_partitions(lambda i, peers: range(i, {N}, peers), batch_size=25).map(slow)
    numbers.map(lambda n: {{"n": n}}).to_redis_stream(os.environ["REDIS_URL"], "out")
    numbers.to_files(os.path.join(os.environ["OUT"], "r"))   # where the crash point is
    """
).format(N=N)


def test_the_sink_is_at_least_once_after_a_crash(client, url, tmp_path):
    """While Redis holds every write back (CLIENT PAUSE WRITE), epochs complete
    with the entries the sink handed its writer unacknowledged; the crash
    loses the writes in flight. The resumed run sends those again from the
    snapshot: every record reaches the stream (here exactly once, as
    nothing was acknowledged before the crash)."""
    (tmp_path / "pipeline.py").write_text(SINK_RECOVERY)
    client.execute_command("CLIENT", "PAUSE", "60000", "WRITE")
    try:
        first = _run_cli(tmp_path, url, "batch:250@1")
    finally:
        client.execute_command("CLIENT", "UNPAUSE")
    assert first.returncode != 0, "the crash point was never reached"
    assert _published(tmp_path / "out" / "r"), "no epoch completed before the crash"
    assert client.xlen("out") == 0
    second = _run_cli(tmp_path, url, None)
    assert second.returncode == 0, second.stderr
    written = Counter(int(fields["n"]) for _, fields in entries(client, "out"))
    assert set(written) == set(range(N))
    assert all(count == 1 for count in written.values())


SINK_ENDED_EARLY = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow

    def slow(n):
        time.sleep(0.0003)
        return n

    def share(i, peers):  # kernel 0's share ends at once, kernel 1's takes a while
        return range(0, 50) if i == 0 else range(50, {N})

    flow = Dataflow("redis sink ended early")
    numbers = flow.from_partitions(share, batch_size=25).map(slow)
    numbers.map(lambda n: {{"n": n}}).to_redis_stream(os.environ["REDIS_URL"], "out")
    numbers.to_files(os.path.join(os.environ["OUT"], "r"))   # where the crash point is
    """
).format(N=N)


def test_a_sink_whose_input_ended_keeps_its_unwritten_entries_in_later_epochs(client, url, tmp_path):
    """Kernel 0's input ends early while Redis holds writes back: its sink
    does not end (and count as ended in the epochs kernel 1 goes on
    taking) before Redis has its entries, so the crash of kernel 1 later
    on loses none of kernel 0's: the resumed run sends them from the
    snapshot. Before, kernel 0's sink was ended in every later epoch and
    its 50 entries never reached the stream."""
    (tmp_path / "pipeline.py").write_text(SINK_ENDED_EARLY)
    client.execute_command("CLIENT", "PAUSE", "60000", "WRITE")
    try:
        first = _run_cli(tmp_path, url, "batch:40@1")
    finally:
        client.execute_command("CLIENT", "UNPAUSE")
    assert first.returncode != 0, "the crash point was never reached"
    assert client.xlen("out") == 0
    second = _run_cli(tmp_path, url, None)
    assert second.returncode == 0, second.stderr
    written = Counter(int(fields["n"]) for _, fields in entries(client, "out"))
    assert set(written) == set(range(N))


# -- the sink ---------------------------------------------------------------------------


@pytest.mark.parametrize("cores", [1, 2])
def test_the_sink_adds_every_record_in_order_per_kernel(client, url, cores):
    records = [{"n": n, "half": n / 2, "name": f"r{n}", "raw": bytes([n % 256])} for n in range(500)]
    flow = Dataflow()
    flow.from_iterable(records, batch_size=37).to_redis_stream(url, "out", batch_size=64)
    run(flow, cores=cores)  # returns once Redis acknowledged every entry
    got = [fields for _, fields in redis.Redis.from_url(url).xrange("out")]
    expected = [{b"n": str(r["n"]).encode(), b"half": repr(r["half"]).encode(),
                 b"name": r["name"].encode(), b"raw": r["raw"]} for r in records]
    assert sorted(got, key=lambda f: int(f[b"n"])) == expected
    for k in range(cores):  # kernel k's share (record i % cores == k) keeps its order
        mine = [int(f[b"n"]) for f in got if int(f[b"n"]) % cores == k]
        assert mine == sorted(mine)


def test_the_sink_writes_what_comes_after_its_writer_caught_up(client, url):
    """Records come in bursts, each once Redis holds the one before: the
    writer empties its buffer and waits between them, and writes every
    burst; the run ends only once the last is acknowledged."""
    async def bursts():
        check = redis.asyncio.Redis.from_url(url)
        try:
            for burst in range(3):
                for n in range(burst * 10, burst * 10 + 10):
                    yield {"n": n}
                deadline = time.monotonic() + 5
                while await check.xlen("out") < burst * 10 + 10:
                    assert time.monotonic() < deadline, f"burst {burst} never reached Redis"
                    await asyncio.sleep(0.001)
        finally:
            await check.aclose()

    flow = Dataflow()
    flow.from_async_iterable(bursts).to_redis_stream(url, "out")
    run(flow)
    assert [int(f["n"]) for _, f in entries(client, "out")] == list(range(30))


class AcknowledgedNone(Operator):
    """Passes records on to the sink after it, and fails the run when more
    than `bound` of them went by while Redis had acknowledged none."""

    def __init__(self, url: str, bound: int) -> None:
        self.url, self.bound = url, bound

    def open(self, context):
        self.redis = redis.Redis.from_url(self.url)
        self.passed = 0

    def on_batch(self, port, batch):
        self.passed += len(batch)
        if self.passed > self.bound and self.redis.xlen("out") == 0:  # XLEN is a read: not paused
            raise AssertionError(f"{self.passed} records went to the sink while Redis had acknowledged none")
        self.emit([value for _, value in batch] if batch and isinstance(batch[0], tuple) else batch)


@pytest.mark.parametrize("cores", [1, 2])
def test_a_slow_redis_pauses_the_flow_in_bounded_memory(client, url, cores):
    """Redis refuses writes for a second (`CLIENT PAUSE ... WRITE`) while a
    fast source has 6,000 records for the sink: the sink's buffer stops at
    4 batches, the flow pauses (on two kernels every record goes to one
    kernel's sink, and the other kernel's source pauses as its ring to it
    fills), and once Redis writes again every record arrives."""
    n, batch = 6_000, 64
    flow = Dataflow()
    stream = flow.from_iterable(({"n": i} for i in range(n)), batch_size=batch)
    if cores > 1:
        stream = stream.key_by(lambda record: 0)  # all on one kernel: the other only sends
    # the sink's 4 batches, a source batch in flight, and on two kernels what
    # the ring reader may deliver before the hold reaches it: 4 frames an
    # activation, and twice seen (581, 636 against 576 with one activation's
    # worth; the reader can run again before the step that pauses)
    bound = 4 * batch + batch + (2 * 4 * batch if cores > 1 else 0)
    watched = stream.apply(lambda: AcknowledgedNone(url, bound), name="watch")
    watched.to_redis_stream(url, "out", batch_size=batch)
    client.execute_command("CLIENT", "PAUSE", 1000, "WRITE")
    run(flow, cores=cores)
    assert sorted(int(f["n"]) for _, f in entries(client, "out")) == list(range(n))


def test_copying_a_stream_keeps_its_fields_and_maxlen_trims(client, url):
    fill(client, "src", range(300))
    flow = Dataflow()
    source = flow.from_redis_stream(url, "src")
    source.to_redis_stream(url, "copy")
    source.to_redis_stream(url, "short", maxlen=10)
    run(flow)
    assert [f for _, f in entries(client, "copy")] == [f for _, f in entries(client, "src")]
    assert 10 <= client.xlen("short") < 300  # MAXLEN ~: trimmed by whole nodes
    assert entries(client, "short")[-1][1] == {"n": "299"}


# -- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [{"a": None}, {"a": True}, {"a": [1]}, {}, ["a", 1], "text", {1.5: object()}])
def test_a_record_xadd_cannot_take_names_the_operator_and_the_record(client, url, bad):
    flow = Dataflow()
    flow.from_iterable([{"ok": 1}, bad]).to_redis_stream(url, "out", name="to orders")
    with pytest.raises(OperatorError, match="non-empty dict of fields") as info:
        run(flow)
    assert info.value.operator.startswith("to orders")
    assert repr(bad)[:20] in str(info.value)


def _closed_port_url() -> str:
    return f"redis://127.0.0.1:{_redis_server.free_port()}/0"


@pytest.mark.parametrize("side", ["source", "sink"])
def test_an_unreachable_server_is_an_error_naming_url_and_operator(side):
    url = _closed_port_url()
    flow = Dataflow()
    if side == "source":
        flow.from_redis_stream(url, "s", name="orders in").collect()
        name = "orders in"
    else:
        flow.from_iterable([{"n": 1}]).to_redis_stream(url, "s", name="orders out")
        name = "orders out"
    started = time.monotonic()
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert info.value.operator.startswith(name) and url in message and "Redis server running" in message


@pytest.mark.parametrize("side", ["source", "sink"])
async def test_a_server_that_never_answers_is_an_error_after_the_timeout(side):
    """A socket that accepts connections (the kernel's backlog) and never
    replies: the timeout ends the run, rather than a hang."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        flow = Dataflow()
        if side == "source":
            flow.from_redis_stream(url, "s", timeout=0.2).collect()
        else:
            flow.from_iterable([{"n": 1}]).to_redis_stream(url, "s", timeout=0.2)
        started = time.monotonic()
        with pytest.raises(OperatorError, match="Timeout") as info:
            await asyncio.wait_for(run_async(flow), 5)  # a hang fails here, as TimeoutError
        assert time.monotonic() - started < 3
        assert url in str(info.value)


@pytest.mark.parametrize("side", ["source", "following source", "sink"])
def test_a_key_of_another_type_says_so(client, url, side):
    client.set("s", "not a stream")
    flow = Dataflow()
    if side == "source":  # its first command: XREVRANGE, for the end
        flow.from_redis_stream(url, "s").collect()
    elif side == "following source":  # XREAD
        flow.from_redis_stream(url, "s", follow=True).collect()
    else:
        flow.from_iterable([{"n": 1}]).to_redis_stream(url, "s")
    with pytest.raises(OperatorError, match="WRONGTYPE") as info:
        run(flow)
    assert "holds another type than a stream" in str(info.value) and "'s'" in str(info.value)


@pytest.mark.parametrize("side", ["source", "sink"])
def test_errors_never_show_the_password_in_the_url(client, url, side):
    """A URL's password is masked in every error (errors reach logs and
    the coordinator), and a refused password says so, not "is a server
    running?" (redis-py's AuthenticationError is a ConnectionError)."""
    client.execute_command("ACL", "SETUSER", "reviewer", "on", ">Right-Pw-1", "~*", "+@all")
    client.set("s", "not a stream")
    host = url.removeprefix("redis://")
    flows = {}
    for password in ("Wrong-Pw-2", "Right-Pw-1"):  # refused; accepted, then WRONGTYPE
        for where in (f"redis://reviewer:{password}@{host}", f"{url}?username=reviewer&password={password}"):
            flow = Dataflow()
            if side == "source":
                flow.from_redis_stream(where, "s").collect()
            else:
                flow.from_iterable([{"n": 1}]).to_redis_stream(where, "s")
            flows[where] = (password, flow)
    for password, flow in flows.values():
        with pytest.raises(OperatorError) as info:
            run(flow)
        message = str(info.value)
        assert password not in message and "***" in message, message
        if password.startswith("Wrong"):
            assert "refused the password" in message and "Redis server running" not in message, message
        else:
            assert "holds another type than a stream" in message, message
    client.execute_command("ACL", "DELUSER", "reviewer")
    with pytest.raises(ValueError) as refused:
        Dataflow().from_redis_stream("redis://u:Secret-3@host:notaport/0", "s")
    assert "Secret-3" not in str(refused.value)


@pytest.mark.parametrize("special", ["#", "/", "?"])
def test_a_password_with_a_character_to_percent_encode_is_not_shown(special):
    """A password written with a "#", "/" or "?" as it is (not %-encoded)
    ends the URL's user part early for urlsplit: the build-time error
    showed the URL as written, the password whole, and redis-py's reason
    ("Port could not be cast to integer value as 'Se'") its start."""
    password = f"Se{special}cret-4"
    with pytest.raises(ValueError) as refused:
        Dataflow().from_redis_stream(f"redis://user:{password}@db.example:6379/0", "s")
    message = str(refused.value)
    assert "is not a Redis URL" in message and "db.example" in message, message
    assert not [piece for piece in ("Se", "cret-4") if piece in message.replace("Redis", "")], message
    with pytest.raises(ValueError) as refused:  # a query's password too
        Dataflow().from_redis_stream(f"redis://db.example:port/0?password=Se{special}cret-4", "s")
    assert "cret-4" not in str(refused.value), str(refused.value)


@pytest.mark.parametrize("limit", ["proto-max-bulk-len", "client-query-buffer-limit"])
def test_an_entry_over_the_servers_limit_says_so_naming_the_limit_the_step_and_the_stream(limit):
    """Redis closes the connection on an argument over either limit (set to
    their least, 1 MiB, on a server of the test's own): the error was a bare
    "Connection reset by peer" asking whether a server ran. It names the
    entry, its field and size, the limit read back by CONFIG GET, the step
    and the stream; the entry before it in the pipeline was written."""
    with _redis_server.redis_server() as own:
        admin = redis.Redis.from_url(own, decode_responses=True)
        admin.config_set(limit, 1024 * 1024)
        flow = Dataflow()
        entries = [{"n": 1}, {"big": "x" * 1_100_000}, {"n": 2}]
        flow.from_iterable(entries, batch_size=3).to_redis_stream(own, "out{1}", name="to big")
        with pytest.raises(OperatorError) as caught:
            run(flow)
        assert str(caught.value).splitlines()[-1] == (
            f"  the entry is too large for the server: the value of field 'big' is 1100000 bytes, over its "
            f"{limit} (1048576 bytes), and Redis closed the connection (write smaller entries to "
            f"'out{{1}}', or raise it: CONFIG SET {limit} on the server)")
        assert caught.value.operator == "to big (step 1)"
        assert caught.value.function == f"XADD on {own} stream 'out{{1}}'"  # (braces: not a format)
        assert caught.value.record.startswith("{'big': 'xxxx")
        assert [fields for _, fields in admin.xrange("out{1}")] == [{"n": "1"}]
        admin.close()


def test_an_entry_over_a_limit_that_config_get_may_not_read_names_both_limits():
    """A user without the right to CONFIG: the limits cannot be read, and
    the error says which two settings it may be over, and why it cannot tell."""
    with _redis_server.redis_server() as own:
        admin = redis.Redis.from_url(own, decode_responses=True)
        admin.config_set("proto-max-bulk-len", 1024 * 1024)
        admin.acl_setuser("writer", enabled=True, passwords=["+pw"], keys=["*"],
                          commands=["+@all", "-config"])
        writer_url = own.replace("redis://", "redis://writer:pw@")
        flow = Dataflow()
        flow.from_iterable([{"big": b"x" * 1_100_000}]).to_redis_stream(writer_url, "out")
        with pytest.raises(OperatorError) as caught:
            run(flow)
        assert re.fullmatch(
            r"  the value of field 'big' is 1100000 bytes: if the server is up, the entry is too large for "
            r"it, over its proto-max-bulk-len or client-query-buffer-limit \(CONFIG GET could not read "
            r"them: [^)]*no permissions[^)]*'config\|get'[^)]*\) \(write smaller entries to 'out', or raise "
            r"it: CONFIG SET proto-max-bulk-len / client-query-buffer-limit on the server\)",
            str(caught.value).splitlines()[-1]), str(caught.value)
        shown = own.replace("redis://", "redis://writer:***@")  # (the password masked)
        assert caught.value.function == f"XADD on {shown} stream 'out'"
        admin.close()


def test_an_entry_that_is_not_utf8_says_so_and_decode_false_reads_it(client, url):
    """It said only UnicodeDecodeError (from redis-py's parser, on the XREAD)."""
    client.xadd("s", {"n": "1"})
    client.xadd("s", {"raw": b"\xff\xfe"})
    flow = Dataflow()
    flow.from_redis_stream(url, "s").collect()
    with pytest.raises(OperatorError, match="UnicodeDecodeError") as info:
        run(flow)
    assert "decode=False gives the fields as bytes" in str(info.value) and "'s'" in str(info.value)
    flow = Dataflow()
    raw = flow.from_redis_stream(url, "s", decode=False).map(lambda e: e.fields).collect()
    run(flow)
    assert raw.items == [{b"n": b"1"}, {b"raw": b"\xff\xfe"}]


def test_an_error_on_another_kernel_names_it(client, url):
    client.set("b", "not a stream")
    fill(client, "a", range(3))
    flow = Dataflow()
    flow.from_redis_stream(url, ["a", "b"]).collect()
    with pytest.raises(KernelProcessError, match="kernel 1") as info:
        run(flow, cores=2)
    assert isinstance(info.value.__cause__, OperatorError)


@pytest.mark.parametrize("arguments, says", [
    ({"stream": []}, "stream name"), ({"stream": ["a", "a"]}, "named twice"),
    ({"stream": "s", "timeout": 0}, "timeout"), ({"stream": "s", "batch_size": 0}, "batch_size"),
    ({"stream": "s", "url": "http://127.0.0.1:1"}, "'http://127.0.0.1:1' is not a Redis URL"),
    ({"stream": "s", "start": "last"}, "start must be an entry id"),
    ({"stream": "s", "start": 0}, "start must be an entry id")])
def test_bad_arguments_are_refused_when_the_flow_is_built(arguments, says):
    arguments = {"url": "redis://127.0.0.1:1/0", **arguments}
    with pytest.raises(ValueError, match=says):
        Dataflow().from_redis_stream(**arguments)


@pytest.mark.parametrize(("flag", "value"), [
    ("follow", "no"), ("follow", 0), ("decode", "no"), ("decode", None)])
def test_flags_other_than_true_or_false_are_refused_when_the_flow_is_built(flag, value):
    # follow="no" followed: taken for its truth value
    with pytest.raises(ValueError) as info:
        Dataflow().from_redis_stream("redis://127.0.0.1:1/0", "s", **{flag: value})
    assert str(info.value) == f"from_redis_stream: {flag} must be True or False, got {value!r}"


def test_bad_sink_arguments_are_refused_when_the_flow_is_built():
    stream = Dataflow().from_iterable([{"n": 1}])
    with pytest.raises(ValueError, match="maxlen"):
        stream.to_redis_stream("redis://127.0.0.1:1/0", "s", maxlen=0)
    with pytest.raises(ValueError) as info:  # was MAXLEN ~ 1
        stream.to_redis_stream("redis://127.0.0.1:1/0", "s", maxlen=True)
    assert str(info.value) == "maxlen must be a positive int or None, got True"
    with pytest.raises(ValueError, match="stream name"):
        stream.to_redis_stream("redis://127.0.0.1:1/0", "")
    with pytest.raises(ValueError, match="to_redis_stream: 'localhost' is not a Redis URL"):
        stream.to_redis_stream("localhost", "s")


# -- the README ---------------------------------------------------------------------------


def test_the_readme_redis_example_runs(url):
    """The README's Redis example (a ```py block: tests/test_readme.py runs
    the ```python ones, which need no server) against the test's server."""
    readme = (REPO / "README.md").read_text()
    [block] = [b for b in re.findall(r"```py\n(.*?)```", readme, re.S) if "redis" in b]
    redis.Redis.from_url(url).flushdb()
    namespace = {"__name__": "readme"}
    exec(compile(block.replace("redis://localhost:6379/0", url), "README.md", "exec"), namespace)
