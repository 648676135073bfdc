"""`ProcessTransport.ring_used_bytes` (streamkernel_ring_used_bytes): the
bytes of frames in a kernel's outgoing ring that its reader has not popped,
against the frames' sizes counted from what the reader pops."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from kernel.net import Doorbell, ProcessTransport, SpscRing


def _frame_bytes(frame) -> int:
    """A frame's room in the ring: its u64 length, then itself padded to 8 bytes."""
    return 8 + (len(frame) + 7) // 8 * 8


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(-10**6, 10**6), max_size=60), min_size=1, max_size=20))
def test_used_bytes_are_the_unread_frames(batches):
    ring = SpscRing.create(1 << 16)
    bells = {0: Doorbell(), 1: Doorbell()}
    try:
        transport = ProcessTransport(0, 2, {1: ring}, {}, bells)
        assert transport.ring_used_bytes() == {"1": 0}
        for batch in batches:
            transport.send_batch(1, 0, batch)
        used = transport.ring_used_bytes()["1"]
        popped = 0
        while (frame := ring.pop()) is not None:
            popped += _frame_bytes(frame)
        ring.release()
        assert used == popped > 0
        assert transport.ring_used_bytes() == {"1": 0}
    finally:
        ring.close()
        ring.unlink()
        for bell in bells.values():
            bell.close()
