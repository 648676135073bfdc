"""A subscriber's queued batches joined into fewer frames (`kernel.topics._coalesce`),
against the frames sent one by one: the same records and timestamps in the
same order, the same records late, the same last watermark, epoch markers
and the end never crossed."""

from __future__ import annotations

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st
from kernel.net import _codec
from kernel.net._channel import EpochMarker, TimedBatch
from kernel.net._codec import decode, encode_batch, encode_epoch, encode_progress, encode_watermark

from kernel.topics import _coalesce

scalars = st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=5), st.none(), st.booleans(),
                    st.floats(allow_nan=False))
records = st.one_of(scalars, st.tuples(scalars, scalars), st.tuples(st.integers(0, 9)))


@st.composite
def streams(draw):
    """A publisher's frames: batches (timed or not: one or the other for a
    whole stream, as a stream has event time or not), rising watermarks,
    epoch markers, maybe the end."""
    timed = draw(st.booleans())
    frames = []
    watermark = 0.0
    for _ in range(draw(st.integers(1, 25))):
        what = draw(st.sampled_from(["batch", "batch", "batch", "watermark", "epoch"]))
        if what == "batch":
            batch = draw(st.lists(records, min_size=1, max_size=40))
            if timed:  # some records behind the last watermark: late
                stamps = [watermark + draw(st.integers(-3, 10)) for _ in batch]
                batch = TimedBatch(batch, stamps)
            frames.append(encode_batch(batch))
        elif what == "watermark":
            watermark += draw(st.integers(0, 5))
            frames.append(encode_watermark(watermark))
        else:
            frames.append(encode_epoch(EpochMarker(len(frames))))
    if draw(st.booleans()):
        frames.append(encode_progress(None))
    return frames


def received(frames) -> tuple[list, list, list]:
    """What a subscriber sees: (record, stamp, late) in order; the markers
    and end, each after how many records; the last watermark."""
    out, marks = [], []
    watermark = float("-inf")
    for kind, body in frames:
        payload = decode(kind, body)
        if payload.__class__ is float:
            watermark = max(watermark, payload)
        elif payload is None or payload.__class__ is EpochMarker:
            marks.append((len(out), payload))  # where it falls among the records
        else:
            stamps = payload.timestamps if type(payload) is TimedBatch else [None] * len(payload)
            out += [(r, s, s is not None and s < watermark) for r, s in zip(payload, stamps)]
    return out, marks, [watermark]


def writer(frames, limit: int | None = None) -> list:
    """The publisher's writer, everything queued: each frame taken with the
    batches that join it."""
    queue = deque(frames)
    sent = []
    while queue:
        kind, body = queue.popleft()
        if kind in _coalesce.JOINABLE and queue:
            out, _ = _coalesce.take(kind, body, queue)
            sent += out
        else:
            sent.append((kind, body))
    return sent


@settings(max_examples=120, deadline=None)
@given(streams())
def test_joined_frames_carry_the_same_records_lateness_and_progress(frames):
    sent = writer(frames)
    assert received(sent) == received(frames)
    assert len(sent) <= len(frames)


def test_batches_join_into_one_frame_across_a_watermark_none_is_late_behind():
    first = TimedBatch([(1, "a"), (2, "b")], [1.0, 2.0])
    second = TimedBatch([(3, "c")], [5.0])
    frames = [encode_batch(first), encode_watermark(4.0), encode_batch(second), encode_batch(["x"] * 20)]
    sent = writer(frames)
    assert [k for k, _ in sent][1:] == [encode_watermark(0)[0], frames[3][0]]  # joined, then the watermark
    joined = decode(*sent[0])
    assert list(joined) == [(1, "a"), (2, "b"), (3, "c")] and joined.timestamps == [1.0, 2.0, 5.0]
    # a record behind the watermark: not joined across it (it stays late)
    late = TimedBatch([(3, "c")], [3.0])
    frames = [encode_batch(first), encode_watermark(4.0), encode_batch(late)]
    assert writer(frames) == frames
    # nor after it, once a watermark was crossed
    frames = [encode_batch(first), encode_watermark(4.0), encode_batch(second), encode_batch(late)]
    assert writer(frames)[1:] == frames[1:2] + frames[3:]
    # the last watermark crossed is the one sent; an epoch marker is never crossed
    stamped = [encode_batch(TimedBatch([n], [float(n)])) for n in range(5)]
    frames = [stamped[0], encode_watermark(0.0), stamped[1], encode_watermark(1.0), stamped[2],
              encode_epoch(EpochMarker(1)), stamped[3], stamped[4]]
    assert [plain(decode(*f)) for f in writer(frames)] == [([0, 1, 2], [0.0, 1.0, 2.0]), 1.0, EpochMarker(1),
                                                          ([3, 4], [3.0, 4.0])]


def plain(payload):
    return (list(payload), payload.timestamps) if type(payload) is TimedBatch else payload


def test_large_arrays_and_pickled_batches():
    many = [(i, str(i)) for i in range(70_000)]  # msgpack's 32-bit array header once joined
    frames = [encode_batch(many[:40_000]), encode_batch(many[40_000:])]
    saved = _coalesce.MAX_BYTES, _coalesce.JOIN_BELOW
    _coalesce.MAX_BYTES = _coalesce.JOIN_BELOW = 1 << 30
    try:
        [joined] = writer(frames)
    finally:
        _coalesce.MAX_BYTES, _coalesce.JOIN_BELOW = saved
    assert decode(*joined) == many
    pickled = [encode_batch([{1: 2}]), encode_batch([{3: 4}])]
    assert pickled[0][0] == _codec.KIND_PICKLE and writer(pickled) == pickled  # not joined


def test_a_frame_of_join_below_bytes_or_more_goes_alone():
    """Batches of 1,000 pairs (~11 kB a frame) go a frame each; batches of
    100 behind one another still join, and a large batch behind a small
    one joins it (what is joined is decided by the frame taken first)."""
    big = [encode_batch([(i, f"k{i}") for i in range(j, j + 1000)]) for j in range(0, 3000, 1000)]
    assert all(len(body) >= _coalesce.JOIN_BELOW for _, body in big)
    assert writer(big) == big
    small = [encode_batch([(i, f"k{i}") for i in range(j, j + 100)]) for j in range(0, 300, 100)]
    assert all(len(body) < _coalesce.JOIN_BELOW for _, body in small)
    [joined] = writer(small)
    assert decode(*joined) == [(i, f"k{i}") for i in range(300)]
    [joined] = writer([small[0], big[0]])
    assert decode(*joined) == [(i, f"k{i}") for i in range(100)] + [(i, f"k{i}") for i in range(1000)]


def test_a_batch_that_would_pass_max_bytes_is_not_joined():
    """Found by a review: a batch joined whatever its size behind a small
    one, so a small batch and one near the 16 MiB a subscriber takes in one
    frame (under it alone: `_push_batch`) made a frame over it."""
    small = encode_batch([(i, f"k{i}") for i in range(100)])
    near = encode_batch([(i, "x" * 1000) for i in range(300)])  # ~300 kB: past MAX_BYTES with `small`
    assert len(small[1]) < _coalesce.JOIN_BELOW and len(near[1]) > _coalesce.MAX_BYTES - len(small[1])
    assert writer([small, near]) == [small, near]
    fits = encode_batch([(i, "x" * 1000) for i in range(200)])  # ~200 kB: joins
    [joined] = writer([small, fits])
    assert decode(*joined) == decode(*small) + decode(*fits)
