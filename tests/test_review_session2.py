"""Review of the ring's push_tagged / copying pop, the transport's tagged
frames, the idle rule of timed sources and the windowed combiner's pass-on
switch (commits after efe063c): what broke, and edges that held up."""

from __future__ import annotations

import time

import pytest

import operators._windows as windows
from kernel import Dataflow, TimedBatch, run
from net.shm import TAG, SpscRing
from operators import EventTimeSource, Source, Tumbling

# -- the ring -------------------------------------------------------------------------


@pytest.fixture
def ring():
    r = SpscRing.create(1024)
    yield r
    r.close()
    r.unlink()


def test_push2_with_a_head_of_256_bytes_does_not_reuse_another_frames_layout(ring):
    """push2 caches one struct layout per (frame length, head length), keyed
    `(n << 8) | h`: a head of 256 bytes or more spills into the length's bits,
    so (n=256, h=256) and (n=257, h=0) shared a key, and the second frame
    was written with the first one's layout (zeros, its bytes cut off)."""
    assert ring.push2(b"h" * 256, b"")
    assert bytes(ring.pop()) == b"h" * 256
    assert ring.push(b"y" * 257)
    assert bytes(ring.pop()) == b"y" * 257
    assert ring.push2(b"a" * 300, b"b" * 200)  # (500, 300) vs (501, 44): same old key
    assert bytes(ring.pop()) == b"a" * 300 + b"b" * 200
    assert ring.push2(b"c" * 44, b"d" * 457)
    assert bytes(ring.pop()) == b"c" * 44 + b"d" * 457


@pytest.mark.parametrize("body_len", [0, 1, 3, 506, 507, 508, 509, 600])
def test_push_tagged_at_every_offset_copies_up_to_512_bytes_and_frees_it(body_len):
    """Held up: frames ending exactly at the end of the data area, frames
    that wrap, 512- and 513-byte frames (bytes vs view), bytes, bytearray and
    memoryview bodies; after pop (+ release for a view) the ring is empty."""
    body = bytes((i * 7) % 256 for i in range(body_len))
    for lead in range(0, 1024, 8):
        for make in (bytes, bytearray, memoryview):
            r = SpscRing.create(1024)
            try:
                if lead:
                    assert r.push(b"p" * (lead - 8))
                    r.pop()
                    r.release()
                if not r.push_tagged(0x81, 70_000, make(body)):
                    # it would cross the end: a wrap marker went in, and the
                    # space before it is free once the consumer steps over it
                    assert lead + ((body_len + 20) & ~7) > 1024
                    assert r.pop() is None
                    assert r.push_tagged(0x81, 70_000, make(body))
                frame = r.pop()
                assert bytes(frame) == TAG.pack(0x81, 70_000) + body
                assert isinstance(frame, bytes) == (body_len + 5 <= 512)
                r.release()
                assert r.is_empty() and r.used_bytes() == 0
                assert r.pop() is None
            finally:
                r.close()
                r.unlink()


# -- the windowed combiner -----------------------------------------------------------


def test_window_merge_snapshot_counts_the_late_records_of_its_last_batch():
    """WindowMerge drops passed-on records for a window it already emitted
    into `_late_out` but counted them only at the next watermark: a snapshot
    taken between (the epoch marker right after that batch) left them out,
    and a run resumed from it reported fewer late events than a crash-free
    one."""
    op = windows.WindowMerge(Tumbling(1.0), windows.SumAggregation(), lambda a, b: a + b)
    op.open(None)
    op.emit = lambda batch: None
    op.on_batch(0, [("k", 0, 5)])
    op.on_watermark(10.0)
    op.on_batch(1, TimedBatch([("k", 3), ("k", 4)], [0.5, 0.6]))  # a lagging kernel's records
    assert op.on_epoch(1)["late"] == 2


# Two kernels, each with its own share of a timed source, by the kernel's clock:
# (seconds after the first poll, event or None for the end).
_SCRIPT = {
    0: [(0.0, ("k", 5.0)), (0.4, ("k", 7.0)), (0.5, None)],
    1: [(0.0, ("k", 5.2)), (0.8, None)],  # then nothing: idle after ~0.05-0.1 s
}


class _Scripted(Source):
    def open(self, context):
        self.steps = list(_SCRIPT[context.index])
        self.start = None

    def poll(self):
        now = time.monotonic()
        if self.start is None:
            self.start = now
        while self.steps and self.steps[0][0] <= now - self.start:
            _, event = self.steps.pop(0)
            if event is None:
                return False
            self.emit([event])
        self.context.kernel.call_later(self.steps[0][0] - (now - self.start) + 0.001, self.wake)
        return None


def test_a_kernel_whose_input_goes_idle_sends_its_partials_before_saying_so():
    """Kernel 1 reads ("k", 5.2) on time, then its source goes idle. Its
    partial half kept window [5, 6)'s partial until its own watermark passed
    6, but told the owner it was idle at once: the owner emitted [5, 6) on
    kernel 0's watermark alone (count 1), and kernel 1's partial, sent at its
    end, was dropped as late. One core, and `collect()` of the same windows
    (no combiner), count both events. A partial half whose inputs all go
    idle must send what it holds (partials merge at the owner) first."""
    flow = Dataflow()
    stream = flow.source(lambda: EventTimeSource(_Scripted(), timestamp=lambda e: e[1], idle_timeout=0.05),
                         name="scripted")
    windowed = stream.key_by(lambda e: e[0]).window(Tumbling(1.0))
    counts = windowed.count()
    counted = counts.collect()
    collected = windowed.collect().collect()
    run(flow, cores=2)
    assert sorted((k, w.start, len(v)) for k, w, v in collected.items) == [("k", 5.0, 2), ("k", 7.0, 1)]
    assert sorted((k, w.start, n) for k, w, n in counted.items) == [("k", 5.0, 2), ("k", 7.0, 1)]
    assert counts.late_count.value == 0


# -- held up: transport and recovery ------------------------------------------------


def test_records_of_every_size_cross_small_rings_intact(monkeypatch):
    """Held up: 4 KiB rings (pieces of 1 KiB), records whose frames fall on
    both sides of the 512-byte copy limit, exactly a piece, several pieces,
    and in backpressure: every record arrives once, intact, in order per
    sender and key."""
    import kernel._launcher as launcher

    monkeypatch.setattr(launcher, "RING_BYTES", 4 << 10)
    sizes = [0, 1, 490, 495, 496, 497, 498, 1010, 1011, 1012, 1019, 1020, 3000, 9000]
    records = [(i % 5, i, "x" * sizes[i % len(sizes)] + str(i)) for i in range(700)]
    flow = Dataflow()
    out = (flow.from_iterable(records, batch_size=3)
           .key_by(lambda r: r[0])
           .fold(list, lambda acc, r: acc.append(r[1:]) or acc)
           .collect())
    run(flow, cores=2)
    got = dict(out.items)
    for key in range(5):
        mine = [r[1:] for r in records if r[0] == key]
        assert sorted(got[key]) == mine
        for kernel in (0, 1):  # in order from each sender
            share = [r for r in got[key] if r[0] % 2 == kernel]
            assert share == sorted(share)


_RECOVERY_PIPELINE = """
import os, time
import operators._windows as w
from kernel import Dataflow
from operators import Sliding, Tumbling

# the partial halves pass on from the start and switch back every batch
w._PASS_ON_ABOVE, w._START_PASSING, w._MEASURE_AT_LEAST, w._PASSED_BEFORE_PROBE = -1.0, True, 0, 1
OUT = os.environ["OUT"]

def slow(x):
    if x % 20 in (0, 1):
        time.sleep(0.004)  # many epochs
    return x

flow = Dataflow("recovery")
numbers = flow.from_iterable(range(3000), batch_size=25, timestamp=lambda x: x / 100).map(slow)
numbers.key_by(lambda x: x % 7).window(Tumbling(1.0)).count().to_files(os.path.join(OUT, "tumbling"))
numbers.key_by(lambda x: x % 7).window(Sliding(2.0, 0.5)).sum().to_files(os.path.join(OUT, "sliding"))
"""


def test_a_crash_while_the_combiner_passes_records_on_resumes_to_the_right_windows(tmp_path):
    """Held up: the recovery tests' combiner never passes on (3 keys, 100
    events a window); here it does, and switches back every batch, and
    kernel 1 is killed after its second snapshot."""
    import json
    import os
    import subprocess
    import sys
    from collections import Counter

    (tmp_path / "pipeline.py").write_text(_RECOVERY_PIPELINE)

    def run_cli(crash):
        env = dict(os.environ, OUT=str(tmp_path / "out"))
        env.pop("KERNEL_CRASH_AT", None)
        if crash:
            env["KERNEL_CRASH_AT"] = crash
        return subprocess.run(
            [sys.executable, "-m", "kernel.run", str(tmp_path / "pipeline.py"), "--cores", "2",
             "--state-dir", str(tmp_path / "state"), "--epoch-interval", "0.02"],
            env=env, capture_output=True, text=True, timeout=120)

    assert run_cli("snapshot:2@1").returncode != 0
    second = run_cli(None)
    assert second.returncode == 0, second.stderr

    def visible(name):  # (key, start, end, result), each line once
        lines = [json.loads(line) for path in sorted((tmp_path / "out" / name).glob("part-*.jsonl"))
                 for line in path.read_text().splitlines()]
        return [(key, start, end, result) for key, (start, end), result in lines]

    tumbling = Counter((x % 7, float(x // 100), float(x // 100 + 1)) for x in range(3000))
    assert sorted(visible("tumbling")) == sorted((*kw, n) for kw, n in tumbling.items())
    sliding = Counter()
    for x in range(3000):
        t = x / 100
        for j in range(int(t // 0.5) - 3, int(t // 0.5) + 1):
            if j * 0.5 <= t < j * 0.5 + 2.0:
                sliding[x % 7, j * 0.5, j * 0.5 + 2.0] += x
    assert sorted(visible("sliding")) == sorted((*kw, s) for kw, s in sliding.items())
