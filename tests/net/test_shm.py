"""SpscRing against a deque model, in one process and across two."""

from __future__ import annotations

import multiprocessing
import os
from collections import deque

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from kernel.net import shm
from kernel.net._codec import HEADER
from kernel.net.shm import TAG, Doorbell, SpscRing


def shm_names() -> set[str]:
    return set(os.listdir("/dev/shm"))


@pytest.fixture
def ring():
    r = SpscRing.create(256)
    yield r
    r.close()
    r.unlink()


def test_capacity_rounds_up_to_a_power_of_two():
    r = SpscRing.create(1000)
    try:
        assert r.capacity == 1024
        assert r.max_frame == 1016
    finally:
        r.close()
        r.unlink()


def test_empty_ring_pops_none(ring):
    assert ring.pop() is None
    assert ring.is_empty()


def test_frames_keep_their_bytes_and_order(ring):
    frames = [b"", b"a", b"hello", bytes(range(100))]
    for frame in frames:
        assert ring.push(frame)
    got = [bytes(ring.pop()) for _ in frames]
    assert got == frames
    assert ring.pop() is None


def test_full_ring_refuses_without_writing(ring):
    pushed = 0
    while ring.push(b"x" * 20):  # 8 + 20 -> 32 bytes a frame
        pushed += 1
    assert pushed == 256 // 32
    assert ring.producer_waiting()
    assert bytes(ring.pop()) == b"x" * 20
    ring.release()
    assert ring.push(b"y" * 20)


def test_oversized_frame_is_an_error_not_a_hang(ring):
    with pytest.raises(ValueError, match="exceeds ring capacity"):
        ring.push(b"z" * 300)


def test_attach_by_name_shares_the_data():
    producer = SpscRing.create(128)
    consumer = SpscRing.attach(producer.name)
    try:
        assert producer.push(b"across mappings")
        assert bytes(consumer.pop()) == b"across mappings"
    finally:
        consumer.close()
        producer.close()
        producer.unlink()


def test_attach_refuses_a_segment_that_is_not_a_ring(tmp_path):
    path = "/dev/shm/not-a-ring-test"
    with open(path, "wb") as f:
        f.write(b"\0" * 512)
    try:
        with pytest.raises(ValueError, match="not an SpscRing"):
            SpscRing.attach("not-a-ring-test")
    finally:
        os.unlink(path)


def test_unlink_leaves_no_segment():
    before = shm_names()
    r = SpscRing.create(64)
    assert r.name in shm_names()
    r.close()
    assert r.unlink() is True
    assert r.unlink() is False
    assert shm_names() == before


def test_large_frames_with_a_head_round_trip():
    ring = SpscRing.create(1 << 16)
    try:
        for size in (4090, 4096, 4097, 20_000):
            body = bytes(i % 256 for i in range(size))
            assert ring.push2(b"HEAD!", body)
            assert bytes(ring.pop()) == b"HEAD!" + body
    finally:
        ring.close()
        ring.unlink()


def test_push_tagged_is_the_transport_header_then_the_body():
    ring = SpscRing.create(1 << 16)
    try:
        for size in (0, 3, 4090, 4091, 20_000):  # packed in one write, and beyond
            body = bytes(i % 251 for i in range(size))
            assert ring.push_tagged(0x82, 70_000, body)
            assert ring.push_tagged(7, 1, memoryview(body))
            assert ring.pop() == HEADER.pack(0x82, 70_000) + body
            assert ring.pop() == HEADER.pack(7, 1) + body
            assert ring.pop() is None
    finally:
        ring.close()
        ring.unlink()


# Operations: push a frame of a given size, or pop.
operations = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(min_value=0, max_value=120)),
        st.tuples(st.just("pop"), st.just(0)),
    ),
    max_size=300,
)


def _push_some_way(r: SpscRing, frame: bytes, counter: int) -> bool:
    """push2 with the frame split in two (a head and a body, the body as
    bytes: one packed write, or a memoryview: slices), or push_tagged with
    its first 5 bytes as the (kind, channel) tag."""
    if counter % 4 == 0 and len(frame) >= 5:
        kind, channel = TAG.unpack_from(frame)
        body = frame[5:] if counter % 8 else memoryview(frame)[5:]
        return r.push_tagged(kind, channel, body)
    cut = counter % 7 if len(frame) >= 7 else 0
    body = frame[cut:] if counter % 3 else memoryview(frame)[cut:]
    return r.push2(frame[:cut], body)


class RingModel:
    """The ring's byte accounting, written from its documented layout: a
    frame takes an 8-byte length word plus its payload, padded to 8 bytes; a
    frame that would cross the end of the data area is preceded by a wrap
    marker that fills the rest of it and starts at offset 0. `tail` and
    `head` count bytes produced and released; a push fits when the wrap gap
    and the frame fit in `capacity - (tail - head)`. A push that does not
    fit still publishes its wrap marker when the gap alone fits (so the frame
    can start at 0 as soon as the consumer drains). A popped frame's space
    is released at once when it is copied out, else at the next pop."""

    def __init__(self, capacity: int, copy_max: int) -> None:
        self.capacity, self.copy_max = capacity, copy_max
        self.tail = self.head = 0
        self.pending = 0  # space of the frame the last pop returned as a view
        self.queue: deque = deque()  # ("wrap", gap) and ("frame", bytes), oldest first

    def push(self, frame: bytes) -> bool:
        need = 8 + (len(frame) + 7) // 8 * 8
        offset = self.tail % self.capacity
        gap = self.capacity - offset if offset + need > self.capacity else 0
        free = self.capacity - (self.tail - self.head)
        if gap + need > free:
            if gap and gap <= free:
                self.queue.append(("wrap", gap))
                self.tail += gap
            return False
        if gap:
            self.queue.append(("wrap", gap))
            self.tail += gap
        self.queue.append(("frame", frame))
        self.tail += need
        return True

    def pop(self) -> bytes | None:
        self.head += self.pending
        self.pending = 0
        if self.queue and self.queue[0][0] == "wrap":
            self.head += self.queue.popleft()[1]
        if not self.queue:
            return None
        _, frame = self.queue.popleft()
        need = 8 + (len(frame) + 7) // 8 * 8
        if len(frame) <= self.copy_max:
            self.head += need
        else:
            self.pending = need
        return frame


@settings(max_examples=300, deadline=None)
@given(ops=operations, capacity=st.sampled_from([64, 128, 256]), copy_max=st.sampled_from([0, 24, 512]))
def test_ring_behaves_like_a_bounded_deque(ops, capacity, copy_max):
    """Every push the ring accepts comes out once, in order, intact, and a
    push is refused exactly when the model's byte accounting says it does not
    fit (frame header, padding, wrap marker): a wrongly refused push fails,
    as does a wrongly accepted one. `copy_max`: pop copies frames up to that
    size out as bytes, and gives larger ones as views."""
    saved, shm._COPY_MAX = shm._COPY_MAX, copy_max  # per example, not per test
    r = SpscRing.create(capacity)
    model = RingModel(r.capacity, copy_max)
    # what the last pop returned, with the bytes it must still hold
    views: list[tuple[memoryview, bytes]] = []
    counter = refused = 0
    try:
        for op, size in ops:
            if op == "push":
                if 8 + (size + 7) // 8 * 8 > r.capacity:
                    continue  # an error, not a refusal: test_oversized_frame_is_an_error_not_a_hang
                counter += 1
                frame = bytes(range(counter % 200, counter % 200 + 50)) * (size // 50) + b"x" * (size % 50)
                before = f"push of {size} bytes at tail {model.tail}, head {model.head}"
                fits = model.push(frame)
                assert _push_some_way(r, frame, counter) == fits, (
                    f"{before}: the model says {'it fits' if fits else 'it does not fit'}")
                refused += not fits
            else:
                # Pushes since the last pop did not write over what it returned.
                for view, expected in views:
                    assert bytes(view) == expected
                views = []
                got, expected = r.pop(), model.pop()
                if expected is None:
                    assert got is None
                else:
                    assert got is not None and bytes(got) == expected
                    views.append((got, expected))
                    assert isinstance(got, bytes) == (len(expected) <= copy_max)
            assert r.used_bytes() == model.tail - model.head
        while (expected := model.pop()) is not None:
            assert bytes(r.pop()) == expected
        assert r.pop() is None
        event(f"refused pushes: {'some' if refused else 'none'}")
    finally:
        shm._COPY_MAX = saved
        r.close()
        r.unlink()


def test_the_ring_model_refuses_and_wraps_where_the_layout_says():
    """The model itself, by hand, on a 64-byte ring: frames of 8 + 24 bytes."""
    model = RingModel(64, 512)
    assert model.push(b"a" * 24) and model.push(b"b" * 24)  # 32 + 32: full
    assert not model.push(b"")  # 8 bytes do not fit in 0
    assert model.pop() == b"a" * 24
    assert not model.push(b"c" * 32)  # 40 bytes: the 32 free are at offset 0
    assert model.push(b"c" * 24)  # 32 bytes from offset 0, no wrap needed
    assert model.pop() == b"b" * 24 and model.pop() == b"c" * 24
    assert (model.tail, model.head) == (96, 96)  # offset 32
    assert not model.push(b"d" * 40)  # 48 bytes cross the end: a 32-byte wrap gap, then 48 > 32
    assert model.tail == 128  # the wrap marker went in anyway
    assert model.pop() is None  # the consumer steps over it
    assert model.push(b"d" * 40)


def _consume(name: str, count: int, result) -> None:
    ring = SpscRing.attach(name)
    got = []
    while len(got) < count:
        frame = ring.pop()
        if frame is not None:
            got.append(bytes(frame))
    ring.close()
    result.send(got)


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=200), min_size=1, max_size=2000))
def test_a_second_process_reads_what_the_first_wrote(sizes):
    """Real concurrency: a consumer process reads while the producer wraps a
    small ring many times over."""
    ring = SpscRing.create(512)
    receiver, sender = multiprocessing.Pipe(duplex=False)
    frames = [i.to_bytes(4, "little") * (size // 4 + 1) for i, size in enumerate(sizes)]
    consumer = multiprocessing.get_context("fork").Process(
        target=_consume, args=(ring.name, len(frames), sender)
    )
    consumer.start()
    try:
        for frame in frames:
            while not ring.push(frame):
                pass
        assert receiver.poll(30), "consumer did not finish"
        assert receiver.recv() == frames
        consumer.join(10)
        assert consumer.exitcode == 0
    finally:
        if consumer.is_alive():
            consumer.kill()
        ring.close()
        ring.unlink()


def test_doorbell_wakes_only_a_parked_consumer():
    bell = Doorbell()
    try:
        bell.ring()
        with pytest.raises(BlockingIOError):
            os.eventfd_read(bell.fd)  # not parked: no signal
        bell.park()
        assert bell.parked
        bell.ring()
        assert os.eventfd_read(bell.fd) == 1
        bell.unpark()
        assert not bell.parked
        assert bell.name not in shm_names()  # unlinked at creation
    finally:
        bell.close()


def test_push2_with_a_head_of_256_bytes_does_not_reuse_another_frames_layout():
    """push2 caches one struct layout per (frame length, head length), keyed
    `(n << 8) | h`: a head of 256 bytes or more spills into the length's bits,
    so (n=256, h=256) and (n=257, h=0) shared a key, and the second frame
    was written with the first one's layout (zeros, its bytes cut off)."""
    ring = SpscRing.create(1024)
    try:
        assert ring.push2(b"h" * 256, b"")
        assert bytes(ring.pop()) == b"h" * 256
        assert ring.push(b"y" * 257)
        assert bytes(ring.pop()) == b"y" * 257
        assert ring.push2(b"a" * 300, b"b" * 200)  # (500, 300) vs (501, 44): same old key
        assert bytes(ring.pop()) == b"a" * 300 + b"b" * 200
        assert ring.push2(b"c" * 44, b"d" * 457)
        assert bytes(ring.pop()) == b"c" * 44 + b"d" * 457
    finally:
        ring.close()
        ring.unlink()


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
