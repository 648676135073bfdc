"""Flow control for loops (Faucet, `iterate(..., max_in_flight=N)`): what
waits at a loop's entry stays bounded, not only what circulates, and the
results stay exact (against plain Python), on 1, 2 and 3 kernels.

How the waiting records are measured: `Produced`, the step just before the
loop, counts the records it hands to the loop's entry on its kernel;
`Admitted`, inside the loop, counts those that came in as a run's round 0
(they carry their depth): it is the loop head's only step, chained to it,
so it counts them as a run takes them in. Their difference, at each batch `Produced` sees,
is what waits between them (the entry's inbox and the records it holds):
its peak comes back through `Report`, after the loop, on the same kernel
(the three share a module-level dict in the kernel's process)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kernel import Dataflow, Operator, run
from kernel.execution._cores import RING_BYTES
from state import SnapshotStore

EXAMPLES = settings(max_examples=8, deadline=None)


def bound(max_in_flight: int, batch_size: int, sources: int = 1) -> int:
    """What may wait at a kernel's loop entry fed by its own sources: up
    to max_in_flight - 1 records, and then one poll of each source (a
    batch), which fills it; a source polls again only once the entry has
    counted what it emitted, and the pause holds it then. (Exact as
    `Produced` - `Admitted` measures it while max_in_flight < 64: a run
    admits at most that many at once, and a chained step defers no batch
    below 64 records, so `Admitted` counts them as they go in.)"""
    return max_in_flight - 1 + sources * batch_size
_PROBES: dict[int, dict] = {}  # kernel index -> its counts, in that kernel's process


def _probe(context) -> dict:
    return _PROBES.setdefault(context.index, {"produced": 0, "admitted": 0, "peak": 0, "rss": 0,
                                              "rss_peak": 0})


def _rss() -> int:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Produced(Operator):
    """Before the loop: counts what goes to the entry; the peak waiting."""

    def open(self, context):
        _PROBES.pop(context.index, None)  # a fresh run in a reused process
        self.probe = _probe(context)
        self.probe["rss"] = self.probe["rss_peak"] = _rss()

    def on_batch(self, port, batch):
        probe = self.probe
        probe["produced"] += len(batch)
        probe["peak"] = max(probe["peak"], probe["produced"] - probe["admitted"])
        self.emit(batch)


class Admitted(Operator):
    """Inside the loop: counts round-0 records (depth `top`), samples the
    kernel's resident memory, hands every record on."""

    def __init__(self, top):
        self.top = top

    def open(self, context):
        self.probe = _probe(context)

    def on_batch(self, port, batch):
        probe = self.probe
        probe["admitted"] += sum(1 for record in batch if record[1] == self.top)
        probe["rss_peak"] = max(probe["rss_peak"], _rss())
        self.emit(batch)


class Report(Operator):
    """After the loop: this kernel's peak waiting records and memory growth."""

    def open(self, context):
        self.probe = _probe(context)
        self.index = context.index

    def on_batch(self, port, batch):
        self.emit(batch)

    def on_end(self):
        probe = self.probe
        self.emit([("report", self.index, probe["peak"], probe["rss_peak"] - probe["rss"])])


def fan_out(make, depth, ways, max_in_flight, cores, batch_size=256, to=None, timestamp=None, max_delay=0.0,
            **options):
    """Each record (name, depth, payload) splits `ways` ways a round, down
    to depth 0 (its children drop the payload); returns the leaves per name
    and each kernel's (peak waiting, memory growth). `to(record)`: a key
    to exchange the records by before the loop (`Produced` counts them on
    the kernel they go to); `options`: `run`'s."""
    def body(entering):
        nodes = entering.apply(lambda: Admitted(depth))
        children = nodes.filter(lambda v: v[1] > 0).flat_map(lambda v: [(v[0], v[1] - 1, None)] * ways)
        return children, nodes.filter(lambda v: v[1] == 0).map(lambda v: v[0])

    flow = Dataflow()
    source = flow.from_partitions(make, batch_size=batch_size, timestamp=timestamp, max_delay=max_delay)
    if to is not None:
        source = source.key_by(to).map(lambda pair: pair[1])
    out = source.apply(Produced).iterate(body, max_in_flight=max_in_flight).apply(Report).collect()
    run(flow, cores=cores, **options)
    reports = {item[1]: item[2:] for item in out.items if isinstance(item, tuple)}
    leaves = Counter(item for item in out.items if not isinstance(item, tuple))
    return leaves, reports


def numbered(count, depth, payload=0):
    """`count` records per kernel, made lazily: (name, depth, payload)."""
    def make(index, peers):
        return ((index * count + i, depth, " " * payload + str(i)) for i in range(count))
    return make


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_records_waiting_at_the_entry_stay_bounded(cores):
    """4,000 records a kernel, each 4**3 leaves: with max_in_flight=50 no
    more than 49 + a source batch (256) ever wait before the
    loop on a kernel (without a bound on waiting, all 4,000 do: the sources run
    ahead of the loop), and every leaf comes out once."""
    leaves, reports = fan_out(numbered(4000, 3), 3, 4, 50, cores)
    assert leaves == Counter({name: 4 ** 3 for name in range(4000 * cores)})
    assert sorted(reports) == list(range(cores))
    assert max(peak for peak, _ in reports.values()) <= bound(50, 256)


class AlsoProduced(Produced):
    """A second `Produced` on the kernel, counting into the same probe."""

    def open(self, context):
        self.probe = _probe(context)


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_what_waits_past_max_in_flight_is_one_poll_of_each_source(cores):
    """Two sources a kernel, each counted as it emits, unioned (a step
    with two inputs, so not chained: a batch waits in its inbox for a
    later tick, and the scheduler ran the sources again before the entry
    had seen it): with max_in_flight=40 and batches of 64, at most 39 + a
    batch of each source wait, for each source polls again only once the
    entry has counted its last batch."""
    count = 2000

    def body(entering):
        nodes = entering.apply(lambda: Admitted(2))
        children = nodes.filter(lambda v: v[1] > 0).flat_map(lambda v: [(v[0], v[1] - 1, None)] * 4)
        return children, nodes.filter(lambda v: v[1] == 0).map(lambda v: v[0])

    flow = Dataflow()
    first = flow.from_partitions(numbered(count, 2), batch_size=64).apply(Produced)
    negative = lambda index, peers: ((-1 - index * count - i, 2, "") for i in range(count))  # noqa: E731
    second = flow.from_partitions(negative, batch_size=64).apply(AlsoProduced)
    out = first.union(second).iterate(body, max_in_flight=40).apply(Report).collect()
    run(flow, cores=cores)
    leaves = Counter(item for item in out.items if not isinstance(item, tuple))
    names = [*range(count * cores), *(-1 - i for i in range(count * cores))]
    assert leaves == Counter({name: 16 for name in names})
    peaks = [item[2] for item in out.items if isinstance(item, tuple)]
    assert len(peaks) == cores
    assert max(peaks) <= bound(40, 64, sources=2)


def _fan_out_fresh(count, payload, max_in_flight, batch_size, options=""):
    """`fan_out` (depth 2, 4 ways, one kernel) in a new interpreter: a
    process that ran other tests has freed heap that hides the growth.
    Returns (leaves per name, (peak waiting, memory growth))."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"from test_faucet import fan_out, numbered; "
            f"leaves, reports = fan_out(numbered({count}, 2, payload={payload}), 2, 4, {max_in_flight}, 1, "
            f"batch_size={batch_size}{options}); print(json.dumps([sorted(leaves.items()), reports[0]]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    leaves, report = json.loads(done.stdout.splitlines()[-1])
    return Counter(dict(leaves)), tuple(report)


def test_a_loop_whose_waiting_input_would_flood_memory_runs_in_little():
    """The timely book's example, scaled down: 4,000 records of 16 KB each
    (64 MB) made lazily by the source, each fanning out to 4**2 leaves,
    each run in a fresh interpreter.
    Without flow control the source runs ahead and the whole input waits
    for the loop: the kernel's resident memory grows by more than 48 MB.
    With max_in_flight=20 it grows by less than 16 MB (about 20 records in
    a run, and 19 + a batch of 64 waiting), and the leaves are the same."""
    bounded, (peak, growth) = _fan_out_fresh(4000, 16 * 1024, 20, 64)
    assert bounded == Counter({name: 16 for name in range(4000)})
    assert growth < 16 << 20
    assert peak <= bound(20, 64)
    unbounded, (peak, growth) = _fan_out_fresh(4000, 16 * 1024, None, 64)
    assert unbounded == bounded
    assert peak == 4000 and growth > 48 << 20


def test_records_ahead_of_a_lagging_watermark_run_in_little_memory():
    """As above, with event time and a watermark a whole input behind
    (max_delay 1e12): with max_in_flight=20 the runs take the records in
    early, and memory grows by less than 16 MB as without event time
    (before the bound, all 4,000 records of 16 KB waited for the end)."""
    options = ", timestamp=lambda r: float(r[0]), max_delay=1e12"
    bounded, (peak, growth) = _fan_out_fresh(4000, 16 * 1024, 20, 64, options)
    assert bounded == Counter({name: 16 for name in range(4000)})
    assert growth < 16 << 20
    assert peak <= bound(20, 64)


@pytest.mark.parametrize("cores", [2, 3])
def test_a_kernel_full_with_records_from_other_kernels_pauses_their_sources(cores):
    """Every record is exchanged to one kernel (key 0) before the loop: its
    entry fills with records the other kernels' sources made, and those
    never fill their own entries, so they pause only because it tells them
    (RoundMarker.FULL, on the ring from it). What waits there is then what
    its own sources may leave (`bound`) and, per other kernel, what that
    one had sent it before it read the message: its ring (4 MB, here
    ~4,000 records of 1 KB: a full ring pauses its sources too) and what
    its sources emitted before it read the message (its reader drains the
    rings every tick while it is busy, and within a slice, 1 ms, when
    its reader is parked: a few polls; 32 batches allowed, for a loaded
    machine). Seen: 1,600 to 4,050 records on 2 kernels (the bound:
    6,247), 3,600 to 6,900 on 3 (12,391); without the message, nearly all
    the others' 16,000 records a kernel wait there (15,888 and 31,853)."""
    count = 16000
    leaves, reports = fan_out(numbered(count, 2, payload=1024), 2, 4, 40, cores, batch_size=64,
                              to=lambda r: 0)
    assert leaves == Counter({name: 16 for name in range(count * cores)})
    ring_records = RING_BYTES // 1024  # each record takes more than 1 KB there
    assert max(peak for peak, _ in reports.values()) <= bound(40, 64) + (cores - 1) * (ring_records + 32 * 64)


@pytest.mark.parametrize("cores", [1, 2])
def test_records_behind_an_epoch_marker_count_too(cores, tmp_path):
    """With a state_dir and an epoch every 5 ms, most records come behind
    an epoch's marker that no run has taken into the loop yet: they count
    (every kernel gets that epoch, and the last to get it asks for a run;
    or a kernel's inputs ended before it, and the next run drops it
    everywhere), so the bound holds as without snapshots (uncounted, up to
    all 4,000 records a kernel waited)."""
    leaves, reports = fan_out(numbered(4000, 3), 3, 4, 50, cores, state_dir=tmp_path / "state",
                              epoch_interval=0.005)
    assert leaves == Counter({name: 4 ** 3 for name in range(4000 * cores)})
    assert max(peak for peak, _ in reports.values()) <= bound(50, 256)


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_records_with_event_time_waiting_at_the_entry_stay_bounded(cores):
    """An event-time source (time = the record's number, watermark right
    behind): the records a run can take in are those below the outer
    watermark, and the sources pause on them as on records without time."""
    leaves, reports = fan_out(numbered(3000, 2), 2, 4, 40, cores, batch_size=64,
                              timestamp=lambda r: float(r[0] // 3))
    assert leaves == Counter({name: 16 for name in range(3000 * cores)})
    assert max(peak for peak, _ in reports.values()) <= bound(40, 64)


# -- records ahead of the outer watermark (issue 20) ---------------------------------

def _in_child(call: str, timeout: float = 60) -> object:
    """`call` (an expression over this module's names) in a new
    interpreter: a run that deadlocks fails after `timeout` seconds
    instead of hanging the suite. Returns its value (through JSON)."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"from test_faucet import *; print(json.dumps({call}))")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{call} did not finish in {timeout} s (a deadlock?)")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def far_behind(cores, max_in_flight, count=3000):
    """`fan_out` (depth 2, 4 ways) over records with event time whose
    source's watermark lags a whole input behind (max_delay 1e9): no run
    takes any record in by its time before the input ends. Returns
    (leaves exact, peak waiting per kernel)."""
    leaves, reports = fan_out(numbered(count, 2), 2, 4, max_in_flight, cores, batch_size=64,
                              timestamp=lambda r: float(r[0] % count), max_delay=1e9)
    exact = leaves == Counter({name: 16 for name in range(count * cores)})
    return exact, [reports[k][0] for k in sorted(reports)]


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_records_ahead_of_the_outer_watermark_stay_bounded(cores):
    """The outer watermark passes no record before the input ends, so runs
    by time would take nothing in until then (without the bound all 3,000
    records a kernel waited): with max_in_flight=40 the sources pause once
    40 wait and the next run takes them in early, so at most 39 + a batch
    wait; pausing without taking them in early would wait forever
    for the watermark the paused source moves (the child times out)."""
    exact, peaks = _in_child(f"far_behind({cores}, 40)")
    assert exact
    assert len(peaks) == cores
    assert max(peaks) <= bound(40, 64)


def lagging_kernels(cores, max_in_flight, count=1500):
    """Records exchanged by name before the loop; kernel k's event time
    moves k + 1 times slower than kernel 0's, and every source lags 100 s
    (max_delay): every entry's watermark is the slowest kernel's, and
    records from the faster ones wait ahead of it. After the loop, leaves
    per 50 s tumbling window. Returns (windows exact, none late, peak
    waiting per kernel)."""
    from operators import Tumbling

    def make(index, peers):
        return ((index * count + i, 2, i / (index + 1)) for i in range(count))

    def body(entering):
        nodes = entering.apply(lambda: Admitted(2))
        children = nodes.filter(lambda v: v[1] > 0).flat_map(lambda v: [(v[0], v[1] - 1, v[2])] * 4)
        return children, nodes.filter(lambda v: v[1] == 0)

    flow = Dataflow()
    source = flow.from_partitions(make, batch_size=64, timestamp=lambda r: r[2], max_delay=100.0)
    exchanged = source.key_by(lambda r: r[0]).map(lambda pair: pair[1])
    out = exchanged.apply(Produced).iterate(body, max_in_flight=max_in_flight)
    reports = out.apply(Report).filter(lambda r: r[0] == "report").collect()
    windows = out.key_by(lambda leaf: "all").map_values(lambda leaf: 1).window(Tumbling(50.0)).sum()
    got = windows.collect()
    run(flow, cores=cores)
    expected: Counter = Counter()
    for index in range(cores):
        for i in range(count):
            expected[50.0 * ((i / (index + 1)) // 50.0)] += 16
    per_window = Counter({w.start: total for _, w, total in got.items})
    exact = per_window == expected and len(got.items) == len(expected)
    peaks = {r[1]: r[2] for r in reports.items}
    return exact, windows.late_count.value == 0, [peaks[k] for k in sorted(peaks)]


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_a_lagging_kernel_pauses_no_source_for_good_and_windows_after_the_loop_stay_exact(cores):
    """Every entry waits for the slowest kernel's watermark while the
    others' records pile up ahead of it: they go into runs early once 40
    wait, no pause waits for a watermark it stops, and the leaves per
    window after the loop equal the plain count, none late (what runs take
    in early is still ahead of the watermark they pass on)."""
    exact, none_late, peaks = _in_child(f"lagging_kernels({cores}, 40)")
    assert exact and none_late
    assert len(peaks) == cores


@pytest.mark.parametrize("cores", [1, 3])
def test_max_in_flight_below_a_batch_and_a_heavy_fan_out_finish_exact(cores):
    """max_in_flight=1 with batches of 256 (a run takes one record of a
    batch at a time); each record 30**2 leaves: neither deadlocks."""
    leaves, _ = fan_out(numbered(200, 2), 2, 30, 1, cores)
    assert leaves == Counter({name: 900 for name in range(200 * cores)})


def leaves_of(roots, ways):
    """Plain Python: leaves per name of each (name, depth) root."""
    leaves: Counter = Counter()
    for name, depth in roots:
        leaves[name] += ways ** depth
    return leaves


@EXAMPLES
# (a deadlock once: after a run, as many records waited as before it, new ones,
# and the kernel took that for nothing new and never asked for another run)
@example(roots=[(i % 21, 2) for i in range(48)], ways=3, max_in_flight=6, batch_size=3, cores=1,
         exchanged=False, timed=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 3)), max_size=60),
       st.integers(1, 6), st.integers(1, 7), st.sampled_from([1, 3, 64]), st.sampled_from([1, 2, 3]),
       st.booleans(), st.sampled_from([None, 2.0, 1e9]))
def test_results_are_exact_against_plain_python(roots, ways, max_in_flight, batch_size, cores,
                                                exchanged, timed):
    """Any input, fan-out, max_in_flight, batch size, number of kernels,
    with or without an exchange before the loop, without event time or
    with it (`timed`: the max_delay; 1e9: the watermark passes nothing
    before the end, so the runs take records in early): every leaf once,
    as the plain loop counts them."""
    def make(index, peers):
        return ((name, depth, "") for name, depth in roots[index::peers])

    def body(nodes):
        children = nodes.filter(lambda v: v[1] > 0).flat_map(lambda v: [(v[0], v[1] - 1)] * ways)
        return children, nodes.filter(lambda v: v[1] == 0).map(lambda v: v[0])

    flow = Dataflow()
    source = flow.from_partitions(make, batch_size=batch_size,
                                  timestamp=(lambda r: float(r[0])) if timed is not None else None,
                                  max_delay=timed or 0.0)
    if exchanged:
        source = source.key_by(lambda r: r[0]).map(lambda pair: pair[1])
    out = source.iterate(body, max_in_flight=max_in_flight).collect()
    run(flow, cores=cores)
    assert Counter(out.items) == leaves_of(roots, ways)


# -- snapshots: a crashed run with flow control resumes exactly ----------------------

RECOVERY = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow

    def slow(x):
        if x % 10 in (0, 1):  # (both kernels: record i is read by kernel i % 2)
            time.sleep(0.004)  # spread the run over many epochs
        return x

    def walk(walks):  # (start, now, steps): Collatz
        on = walks.map(lambda w: (w[0], w[1] // 2 if w[1] % 2 == 0 else 3 * w[1] + 1, w[2] + 1))
        return on.filter(lambda w: w[1] != 1), on.filter(lambda w: w[1] == 1)

    flow = Dataflow("faucet-recovery")
    numbers = flow.from_iterable(range(int(os.environ["N"])), batch_size=20).map(slow)
    out = numbers.map(lambda x: (x + 2, x + 2, 0)).iterate(walk, max_in_flight=16)
    out.map(lambda w: [w[0], w[2]]).to_files(os.path.join(os.environ["OUT"], "out"))
    """
)


def _collatz_steps(n: int) -> int:
    steps = 0
    while n != 1:
        n, steps = (n // 2 if n % 2 == 0 else 3 * n + 1), steps + 1
    return steps


def _crash_runs():
    spec = importlib.util.spec_from_file_location(
        "_crash_runs", Path(__file__).resolve().parents[1] / "_crash_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_crashed_run_with_flow_control_resumes_and_publishes_every_result_once(tmp_path):
    """2 kernels, records without event time going into runs of at most 16
    while the source is paused and resumed, kernel 1 killed after its 2nd
    complete epoch: the resumed run publishes every Collatz walk's steps once."""
    count = 600
    crash_runs = _crash_runs()
    # (held open until the crash: its slow records last ~0.25 s a kernel, which
    # under load may pass before kernel 1 has two epochs committed)
    (tmp_path / "pipeline.py").write_text(RECOVERY + crash_runs.HELD_OPEN)
    run_cli = crash_runs.run_cli
    first = run_cli(tmp_path, 2, "committed:2@1", N=count, OUT=tmp_path / "out")
    assert first.returncode != 0, "the crash point was never reached"
    store = SnapshotStore(tmp_path / "state")
    try:
        completed = store.completed()
    finally:
        store.close()
    second = run_cli(tmp_path, 2, None, N=count, OUT=tmp_path / "out")
    assert second.returncode == 0, second.stderr
    assert completed and f"resuming from epoch {completed[0][0]}\n" in second.stderr
    lines = []
    for path in sorted((tmp_path / "out" / "out").glob("part-*.jsonl")):
        lines += [tuple(json.loads(line)) for line in path.read_text().splitlines()]
    assert Counter(lines) == Counter((x + 2, _collatz_steps(x + 2)) for x in range(count))


def test_max_in_flight_on_a_loop_inside_another_is_refused_naming_both():
    """An inner loop's runs take in a round of the outer loop at once, so a
    max_in_flight there would bound nothing: refused when the flow is
    built, naming the loops; on the outer loop it is taken."""
    flow = Dataflow()
    numbers = flow.from_iterable([5, 3])

    def inner(values):
        return values.filter(lambda v: v > 1).map(lambda v: v - 1), values

    def outer(values):
        return values.filter(lambda v: v > 4).map(lambda v: v - 4), values.iterate(
            inner, max_in_flight=2, name="inner")

    with pytest.raises(ValueError, match=r"inner: max_in_flight bounds a loop at the top level only; "
                                         r"this one is inside iterate\(outer\)"):
        numbers.iterate(outer)
    flow = Dataflow()
    out = flow.from_iterable([5, 3]).iterate(
        lambda values: (values.filter(lambda v: v > 4).map(lambda v: v - 4), values.iterate(inner)),
        max_in_flight=1).collect()
    run(flow)
    expected, outer_round = [], [5, 3]
    while outer_round:
        for value in outer_round:
            expected += range(value, 0, -1)  # the inner loop's out: every round's values
        outer_round = [v - 4 for v in outer_round if v > 4]
    assert sorted(out.items) == sorted(expected)
