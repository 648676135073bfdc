"""A frame that does not decode, on a real ring: only a kind that rebuilds
a user's classes (pickle, a namedtuple's runs) is taken to a step's error
with the hint about classes whose pickle does not rebuild them
(`Runtime.undecodable`, tests/kernel/test_session45_records_that_do_not_unpickle.py);
another kind's failure (garbage, a bug of ours) is raised as itself, as is
one on a channel the kernel does not know (the review of that change)."""

from __future__ import annotations

import pickle

import pytest
from kernel.net._codec import KIND_PICKLE, KIND_SCALARS, TIMED
from kernel.net._transport import ProcessTransport, _Reader
from kernel.net.shm import Doorbell, SpscRing

from kernel import Dataflow
from kernel.runtime._runtime import Runtime
from kernel.scheduling._kernel import Kernel


class Named(Exception):
    pass


def _read_one(kind: int, body: bytes, answer):
    """The reader's activation over one frame of `kind` from kernel 0, with
    `answer(channel, sender, exc)` as the runtime's `undecodable`; what it
    raises."""
    bells = [Doorbell() for _ in range(2)]
    producer = SpscRing.create(1 << 12)
    consumer = SpscRing.attach(producer.name)
    asked = []
    try:
        transport = ProcessTransport(1, 2, {}, {0: consumer}, bells)
        reader = _Reader(transport, lambda act: None, None, lambda c, s, p: None, 99, lambda: None)
        reader.undecodable = lambda channel, sender, exc: asked.append((channel, sender)) or answer(exc)
        assert producer.push_tagged(kind, 3, body)
        with pytest.raises(Exception) as raised:
            reader.activate()
        return raised.value, asked
    finally:
        consumer.close(), producer.close()
        producer.unlink()
        for bell in bells:
            bell.close()


@pytest.mark.parametrize("kind", [KIND_PICKLE, KIND_PICKLE | TIMED])
def test_a_pickle_frame_that_does_not_decode_is_the_runtimes_to_name(kind):
    error, asked = _read_one(kind, b"\x80\x05garbage", lambda exc: Named(f"named: {exc}"))
    assert type(error) is Named and asked == [(3, 0)]


def test_a_scalars_frame_that_does_not_decode_is_raised_as_itself():
    error, asked = _read_one(KIND_SCALARS, b"\xc1\xc1\xc1", lambda exc: Named(f"named: {exc}"))
    assert type(error) is not Named and asked == []


def test_a_pickle_frame_on_a_channel_the_runtime_does_not_know_is_raised_as_itself():
    error, asked = _read_one(KIND_PICKLE, b"\x80\x05garbage", lambda exc: None)
    assert isinstance(error, pickle.UnpicklingError) and asked == [(3, 0)]


def test_the_runtime_answers_none_for_a_channel_it_does_not_know():
    flow = Dataflow("one step")
    flow.from_iterable([1]).collect()
    runtime = Runtime(flow.graph, Kernel())
    assert runtime.undecodable(3, 0, ValueError("a damaged frame")) is None
