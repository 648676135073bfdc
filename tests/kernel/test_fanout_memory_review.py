"""Bounded memory under backpressure when a step multiplies records
(README "Flow control"): a kernel whose `flat_map` makes many records per
input, for a slower kernel on the other side of an exchange, holds back
what it hands on, with its sources paused, instead of piling it up.

Kernel 0 reads every input (`from_partitions`) and makes every record;
every record crosses to kernel 1 (their keys are kernel 1's), whose step
is slow. On one machine (`cores=2`), and on two processes linked by
websockets (`peers`: kernel 1 is process 1's, and what kernel 0 hands on
goes through its process's link relay). The memory measured is kernel 0's
own, from inside it: the growth of its peak resident size (VmHWM) from
its first record made to its last, handed on as one more record
(`_measured`), so nothing is read from outside while the kernel runs."""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import signal
import time

import pytest
from _ports import descendants
from test_cluster import outcomes_of

from kernel import Dataflow, run
from kernel.dataflow._key_groups import default_key_groups, owner_table
from net import Partitioner

pytestmark = pytest.mark.usefixtures("no_leaks")

_PAD = "x" * 1000  # ~1 KB a record, as a str: msgpack carries all of it
# kernel 1's keys on two kernels (the runtime's placement: by key group;
# Partitioner(2) alone places keys by stable_hash % 2, which differs)
_OWNER = Partitioner(2, owner_table(2, default_key_groups(2))).owner
_KEYS = [k for k in range(40) if _OWNER(k) == 1][:4]
_BASELINE = [0]  # kernel 0's VmHWM (kB) when it made its first record


def _vm(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


def _records(first: int, count: int):
    """Records `first` .. `first + count - 1`, made lazily (never a list)."""
    for i in range(first, first + count):
        yield f"{i:08d}{_PAD}"


def _measured():
    """One last record: kernel 0's peak growth in MB since its first record."""
    yield f"grown {(_vm('VmHWM') - _BASELINE[0]) / 1000:.1f}"


def _share(inputs: list):
    def make(index, _peers):
        if index != 0:
            return []
        _BASELINE[0] = _vm("VmHWM")
        return inputs

    return make


_SEEN = [0]


def _slow(pair):
    """A millisecond's sleep every 32 records (on kernel 1, which owns every
    key): slower than kernel 0 makes them however busy the machine's CPUs
    are (a busy wait on a loaded machine slowed kernel 0 as much)."""
    _SEEN[0] += 1
    if _SEEN[0] % 32 == 0:
        time.sleep(0.001)
    return pair


def _kept(pair) -> bool:
    return pair[1].startswith("grown") or int(pair[1][:8]) % 10_000 == 0


def _key(record: str) -> int:
    return _KEYS[0] if record.startswith("grown") else _KEYS[int(record[:8]) % len(_KEYS)]


def _fan_out(inputs: list, multiply):
    """inputs (on kernel 0) -> flat_map(multiply) -> key_by (kernel 1's
    keys) -> a slow map -> a few records collected."""
    flow = Dataflow("fan-out")
    out = (flow.from_partitions(_share(inputs)).flat_map(multiply)
           .key_by(_key).map(_slow).filter(_kept).collect())
    return flow, out


def _growth(items: list, total: int) -> float:
    """Kernel 0's growth in MB; checks that exactly the expected records came."""
    grown = [value for _, value in items if value.startswith("grown")]
    assert len(grown) == 1, grown
    numbers = sorted(int(value[:8]) for _, value in items if not value.startswith("grown"))
    assert numbers == list(range(0, total, 10_000))
    return float(grown[0].split()[1])


def test_one_record_made_into_many_waits_for_a_slow_kernel_in_pieces():
    """One input, 80,000 records out of it (~80 MB), handed on in pieces
    (README "in pieces"): a piece waits while the ring to kernel 1 is full.
    They went on a piece a tick whatever the ring said, into the
    transport's overflow: kernel 0 held the whole output, +80 MB."""
    total = 80_000
    flow, out = _fan_out([0], lambda _: itertools.chain(_records(0, total), _measured()))
    run(flow, cores=2)
    assert _growth(out.items, total) < 25


def test_many_inputs_multiplied_fifty_times_wait_for_a_slow_kernel():
    """1,600 inputs, 50 records each (no pieces: the results are read whole
    a batch at a time), the sources pausing while the ring is full: what
    waits is a poll's output at most."""
    per, inputs = 50, 1_600
    total = per * inputs
    flow, out = _fan_out([*range(inputs), -1], lambda n: _measured() if n < 0 else _records(n * per, per))
    run(flow, cores=2)
    assert _growth(out.items, total) < 25


_ONE_INTO_MANY = ([0], lambda _: itertools.chain(_records(0, 80_000), _measured()), 80_000)
_FIFTY_EACH = ([*range(1_600), -1], lambda n: _measured() if n < 0 else _records(n * 50, 50), 80_000)


@pytest.mark.parametrize("inputs, multiply, total", [_ONE_INTO_MANY, _FIFTY_EACH], ids=["pieces", "x50"])
def test_a_slow_process_bounds_the_memory_of_a_kernel_that_multiplies_records(inputs, multiply, total):
    """The same across processes: a piece or a poll's output waits while the
    ring to the relay is full, and the relay stops taking from that ring
    while the link lacks credit. In pieces, kernel 0 held the whole output
    (+80 MB) as on one machine."""

    def build():
        flow, out = _fan_out(inputs, multiply)
        return flow, [out]

    outcomes = outcomes_of(build, 2)
    assert outcomes[1] == ("ok", [[]]), outcomes[1]
    status, (items,) = outcomes[0]
    assert status == "ok"
    assert _growth([eval(item) for item in items], total) < 25  # reprs of (key, record) pairs


def _run_and_send(build, out) -> None:
    flow, handle = build()
    run(flow, cores=2)
    out.send(sorted(value[:8] for _, value in handle.items))
    out.close()


def _run_within(build, seconds: float) -> list:
    """`run(build's flow, cores=2)` in a forked child: its collected records'
    first 8 characters, or a failure if it has not finished within `seconds`
    (a run that hangs is killed, its kernels too)."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_run_and_send, args=(build, sender))
    child.start()
    sender.close()
    try:
        assert receiver.poll(seconds), f"the run did not finish within {seconds:g} s"
        return receiver.recv()
    finally:
        for pid in descendants(child.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        child.join(10)
        receiver.close()


def _crossing():
    """Each kernel makes 40,000 records from its one input, all for the
    other kernel, whose step is slow: both wait for room at once."""
    keys = {0: _KEYS[0], 1: next(k for k in range(40) if _OWNER(k) == 0)}  # the other kernel's

    def many(index):
        return (f"{index}{i:07d}{_PAD}" for i in range(40_000))

    flow = Dataflow("crossing")
    out = (flow.from_partitions(lambda index, _peers: [index]).flat_map(many)
           .key_by(lambda r: keys[int(r[0])]).map(_slow)
           .filter(lambda p: int(p[1][1:8]) % 10_000 == 0).collect())
    return flow, out


def test_two_kernels_waiting_for_room_at_once_still_read_each_others_records():
    """A step waiting for room in the ring to the other kernel lets its
    kernel read what the other sends: with the kernel's reading held
    meanwhile (as while pieces go on), each kernel waited for the other to
    read, for ever."""
    records = _run_within(_crossing, 30)
    assert records == sorted(f"{k}{i:07d}" for k in (0, 1) for i in range(0, 40_000, 10_000))
