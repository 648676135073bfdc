"""Moving exchange traffic between the kernels of one machine over SPSC rings.

One ring per ordered pair of kernels carries every exchange channel between
them (frames are tagged with the channel id, as timely multiplexes channels
over one connection per pair of processes). Each kernel has one `Doorbell`.

Sending (`send`) encodes a payload once and pushes it; when the ring is full
the frame waits in a per-destination overflow queue, in order, and the
transport reports backpressure so the kernel stops polling its sources until
the overflow has drained. Nothing is dropped and memory stays bounded by what
was already in flight.

Receiving is one activation (`_Reader`) that drains every incoming ring into
the kernel. With nothing to read it spins for a few ticks, then parks on its
doorbell's eventfd, registered with the event loop: an idle kernel burns no
CPU. A producer rings a consumer's doorbell only when the consumer is parked;
a consumer that frees space in a ring whose producer found it full rings the
producer's doorbell the same way. The store/fence/load order on both sides is
explained in `net/shm.py`.

A frame larger than a quarter of its ring goes in pieces (`KIND_PIECE`),
joined again by the reader: a frame near the ring's size could only enter an
empty ring, and one beyond it never.

Kernels on other machines (a cluster) are reached through this process's
link relay (`net/_relay.py`), as timely's network threads serve its workers:
a kernel has one ring to the relay, whose frames start with the destination
kernel (`ROUTE`, u32), and one ring from it, whose frames start with the
source kernel. To the runtime a remote kernel is one more destination.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from ._codec import (
    DECODERS,
    HEADER,
    KIND_NAMED_RUNS,
    KIND_PICKLE,
    KIND_WATERMARKS,
    TIMED,
    decode,
    encode_batch,
    encode_progress,
    encode_watermarks,
)
from .shm import Doorbell, SpscRing, full_fence

END = None  # decode() returns None for an end-of-input frame
# Bounds one activation's work: a frame can hold a whole batch (thousands of
# records), and decoding 64 of them took ~300 ms in benches/pipelines.
_FRAMES_PER_RING_PER_ACTIVATION = 4
# the kinds of frame whose decoding rebuilds a user's classes (by pickle, or
# a namedtuple's by name): a failure there may be the class's own
_USERS_CLASSES = frozenset((KIND_PICKLE, KIND_NAMED_RUNS))
_SPIN_ACTIVATIONS = 32  # empty polls before parking (a few tens of us)
ROUTE = struct.Struct("<I")  # the other kernel, before a relayed frame's HEADER
# A frame larger than a quarter of its ring travels in pieces: HEADER(kind
# PIECE or LAST_PIECE, channel 0) + a slice of the whole frame (its HEADER
# and body). Bit 0x40 is free in the codec's kinds (TIMED is 0x80).
_PIECE_BIT = 0x40
KIND_PIECE = 0x40
KIND_LAST_PIECE = 0x41


class RelayEnds(NamedTuple):
    """A kernel's two rings with its process's link relay."""

    to_relay: SpscRing
    from_relay: SpscRing
    bell: Doorbell  # the relay's
    remote: range | tuple  # the kernels reached through it


class _Writer:
    """Frames to one destination kernel, with an overflow queue."""

    __slots__ = ("bell", "overflow", "piece", "prefix", "push", "ring")

    def __init__(self, ring: SpscRing, bell: Doorbell, prefix: bytes = b"") -> None:
        self.ring = ring
        self.bell = bell
        self.prefix = prefix  # ROUTE of the destination, through a relay
        # push(kind, channel, body) -> bool: the tag packed with the frame;
        # through a relay, after the destination's ROUTE
        self.push = self._push_routed if prefix else ring.push_tagged
        self.overflow: deque[tuple[int, int, bytes]] = deque()
        # Larger frames go in pieces of this size: a frame near the ring's
        # size could only be pushed into an empty ring, and one beyond it never.
        self.piece = ring.capacity // 4

    def send(self, kind: int, channel: int, body: bytes) -> None:
        if HEADER.size + len(body) > self.piece:
            whole = memoryview(HEADER.pack(kind, channel) + body)
            step = self.piece - HEADER.size
            for start in range(0, len(whole), step):
                piece = KIND_LAST_PIECE if start + step >= len(whole) else KIND_PIECE
                self._send_one(piece, 0, bytes(whole[start : start + step]))
            return
        self._send_one(kind, channel, body)

    def _send_one(self, kind: int, channel: int, body: bytes) -> None:
        if self.overflow:
            self.overflow.append((kind, channel, body))
            return
        if not self.push(kind, channel, body):
            self.overflow.append((kind, channel, body))
        # Rung on a refusal too: a refused push may have published a wrap
        # marker, and only a consumer stepping over it frees that space.
        self.bell.ring()

    def _push_routed(self, kind: int, channel: int, body: bytes) -> bool:
        return self.ring.push2(self.prefix + HEADER.pack(kind, channel), body)

    def flush(self) -> bool:
        """Push what overflowed; True when nothing is left."""
        overflow = self.overflow
        tried = bool(overflow)
        while overflow:
            if not self.push(*overflow[0]):
                break
            overflow.popleft()
        if tried:
            self.bell.ring()  # pushed, or refused (a wrap marker, see send)
        return not overflow


class ProcessTransport:
    """The rings of kernel `index` of `peers`: to the kernels of this
    machine, and through `relay` (a cluster) to those of other machines.
    `bells[k]` is local kernel k's doorbell."""

    def __init__(
        self,
        index: int,
        peers: int,
        outgoing: dict[int, SpscRing],
        incoming: dict[int, SpscRing],
        bells,
        relay: RelayEnds | None = None,
    ) -> None:
        self.index = index
        self.peers = peers
        self._bell = bells[index]
        self._writers = {dest: _Writer(ring, bells[dest]) for dest, ring in outgoing.items()}
        # (source kernel or None for the relay's mixed ring, ring, its producer's bell)
        self._incoming = [(source, ring, bells[source]) for source, ring in sorted(incoming.items())]
        if relay is not None:
            for dest in relay.remote:
                self._writers[dest] = _Writer(relay.to_relay, relay.bell, ROUTE.pack(dest))
            self._incoming.append((None, relay.from_relay, relay.bell))
        self._reader: _Reader | None = None
        self._channels = 0  # exchange channels allocated so far
        self.blocked = False
        self.reading_held = False  # an operator here cannot keep up: leave the rings full
        self.sending_done = False
        self._on_backpressure: Callable[[bool], None] = lambda blocked: None

    # -- sending --------------------------------------------------------------

    def send_batch(self, dest: int, channel: int, batch: list) -> None:
        kind, body = encode_batch(batch)
        self._send(dest, kind, channel, body)

    def send_progress(self, dest: int, channel: int, payload) -> None:
        """A watermark (float), end of input (None), IDLE or an EpochMarker."""
        kind, body = encode_progress(payload)
        self._send(dest, kind, channel, body)

    def send_watermarks(self, dest: int, pairs: list) -> None:
        """Several channels' watermarks, `(channel, watermark)` pairs, in one
        frame; the reader at `dest` delivers them one by one, in order."""
        kind, body = encode_watermarks(pairs)
        self._send(dest, kind, 0, body)

    def _send(self, dest: int, kind: int, channel: int, body: bytes) -> None:
        writer = self._writers[dest]
        writer.send(kind, channel, body)
        if writer.overflow and not self.blocked:
            self.blocked = True
            self._on_backpressure(True)
            if self._reader is not None:
                self._reader.wake()  # the reader also flushes

    def _flush(self) -> None:
        if not self.blocked:
            return
        if all(writer.flush() for writer in self._writers.values()):
            self.blocked = False
            self._on_backpressure(False)

    def ring_used_bytes(self) -> dict[str, int]:
        """Bytes written into each of this kernel's outgoing rings and not
        yet read, by reader: a kernel's index, or "relay" (the one ring to
        this process's link relay). What waits in a writer's overflow, not
        yet in its ring, is not counted (metrics)."""
        return {("relay" if writer.prefix else str(dest)): writer.ring.used_bytes()
                for dest, writer in self._writers.items()}

    # -- receiving ------------------------------------------------------------

    def allocate(self) -> int:
        """The next exchange channel (every kernel allocates them in the same
        order, so a number names the same channel everywhere)."""
        self._channels += 1
        return self._channels - 1

    def start(self, kernel, receiver, ended: int = 0) -> None:
        """Start receiving on a running kernel (`_protocol.Transport.start`).

        `receiver.deliver(channel, source, payload)` gets each decoded
        payload (a list, a float watermark, IDLE, an epoch marker, or None
        for end of input). The transport holds the kernel until every other
        kernel's end frame has arrived on every allocated channel (`ended`
        of them had come before a restored snapshot) and its own overflow
        has drained.
        """
        self._on_backpressure = receiver.backpressure
        ends_expected = self._channels * (self.peers - 1) - ended
        self._reader = _Reader(self, kernel.ready_function(), kernel.loop, receiver.deliver,
                               ends_expected, kernel.release)
        # (a receiver that names the step whose batch failed to decode: the runtime)
        self._reader.undecodable = getattr(receiver, "undecodable", None)
        kernel.hold()
        self._reader.begin()

    def hold_reading(self, held: bool) -> None:
        self.reading_held = held
        if not held and self._reader is not None:
            self._reader.wake()

    def finish_sending(self) -> None:
        """The kernel will send nothing more; the transport lets the kernel
        go once its overflow has drained and every peer's end has arrived."""
        self.sending_done = True
        if self._reader is not None:
            self._reader.wake()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop()


class _Reader:
    """The activation that drains a kernel's incoming rings."""

    name = "ring reader"

    def __init__(self, transport: ProcessTransport, ready, loop, deliver, ends_expected, release):
        self.transport = transport
        self._ready = ready
        self._loop = loop
        self._deliver = deliver
        self._ends_left = ends_expected
        self._release = release
        self._bell = transport._bell
        self._rings = transport._incoming
        self.scheduled = False
        self._empty_polls = 0
        self._parked = False
        self._done = False
        self._pieces: dict[int, list[bytes]] = {}  # sender -> pieces of a large frame so far
        self.undecodable = None  # (channel, sender, exc) -> the error to raise in its place

    def begin(self) -> None:
        self._loop.add_reader(self._bell.fd, self._on_bell)
        self.wake()

    def wake(self) -> None:
        if not self.scheduled and not self._done:
            self.scheduled = True
            self._ready(self)

    def _on_bell(self) -> None:
        self._parked = False
        self._bell.unpark()
        self.wake()

    def activate(self) -> None:
        self.scheduled = False
        if self._parked:  # woken by something other than the bell
            self._parked = False
            self._bell.unpark()
        transport = self.transport
        if transport.reading_held:
            # Frames stay in the rings, whose producers then find them full
            # and stop: `hold_reading(False)` wakes this activation again.
            transport._flush()
            return
        deliver = self._deliver
        get_decoder = DECODERS.get
        got = 0
        for source, ring, _ in self._rings:
            # An empty ring costs one load here rather than a pop and a
            # release: with a ring per peer, a kernel of 16 polled 15 mostly
            # empty rings in each of its ~30,000 activations of a NEXMark
            # run (3.5 -> 0.9 us an activation, benches/RESULTS.md).
            if ring.is_empty():
                continue
            pop = ring.pop
            for _ in range(_FRAMES_PER_RING_PER_ACTIVATION):
                frame = pop()
                if frame is None:
                    break
                if source is None:  # through the relay: the source kernel first
                    (sender,) = ROUTE.unpack_from(frame)
                    frame = frame[ROUTE.size :]
                else:
                    sender = source
                kind, channel = HEADER.unpack_from(frame)
                got += 1
                if kind & _PIECE_BIT:
                    frame = self._piece(sender, kind, frame)
                    if frame is None:
                        continue
                    kind, channel = HEADER.unpack_from(frame)
                decoder = get_decoder(kind)
                if decoder is None:
                    decode(kind, b"")  # raises, naming the unknown kind
                try:
                    payload = decoder(frame[HEADER.size :])
                except Exception as exc:  # a record whose pickle does not rebuild it
                    # (only a kind that carries a user's classes; another's failure,
                    # garbage or a bug of ours, is not blamed on a record's class)
                    named = None if self.undecodable is None or kind & ~TIMED not in _USERS_CLASSES \
                        else self.undecodable(channel, sender, exc)
                    if named is None:
                        raise
                    raise named from exc
                if payload is END:
                    self._ends_left -= 1
                elif kind == KIND_WATERMARKS:
                    for channel, watermark in payload:
                        deliver(channel, sender, watermark)
                    continue
                deliver(channel, sender, payload)
            ring.release()
        if got:
            # Space was freed: a producer that found a ring full and parked
            # must hear about it (fence: our head stores before its flag load).
            # Every ring's flag, not only those read from now: a producer
            # stores its flag after loading our head, without a fence, so a
            # flag can land just after the check that followed the pop that
            # emptied its ring (found in review, 14th session).
            full_fence()
            for _, ring, producer in self._rings:
                if ring.producer_waiting():
                    ring.clear_producer_waiting()
                    producer.ring()
        transport._flush()
        if self._finished():
            return
        if got:
            self._empty_polls = 0
            self.wake()
            return
        self._empty_polls += 1
        if self._empty_polls < _SPIN_ACTIVATIONS:
            self.wake()
        else:
            self._park()

    def _piece(self, sender: int, kind: int, frame):
        """Collect a piece of a large frame from `sender`; the whole frame
        once its last piece has come, else None."""
        pieces = self._pieces.setdefault(sender, [])
        pieces.append(bytes(frame[HEADER.size :]))  # the ring's memory is reused after the next pop
        if kind != KIND_LAST_PIECE:
            return None
        del self._pieces[sender]
        return b"".join(pieces)

    def _park(self) -> None:
        self._bell.park()  # (a full fence: our head stores before the loads below)
        # A pop that stepped over a wrap marker freed space without a frame
        # (got == 0 above): a producer waiting for that space must hear of it.
        for _, ring, producer in self._rings:
            if ring.producer_waiting():
                ring.clear_producer_waiting()
                producer.ring()
        # Re-check after announcing: a frame pushed before the producer saw
        # the flag must not be slept on.
        if any(not ring.is_empty() for _, ring, _ in self._rings) or (
            self.transport.blocked and self._space_freed()
        ):
            self._bell.unpark()
            self._empty_polls = 0
            self.wake()
            return
        self._parked = True
        self._empty_polls = 0

    def _space_freed(self) -> bool:
        self.transport._flush()
        return not self.transport.blocked

    def _finished(self) -> bool:
        transport = self.transport
        if self._ends_left == 0 and transport.sending_done and not transport.blocked:
            self.stop()
            return True
        return False

    def stop(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._loop.remove_reader(self._bell.fd)
        except Exception:  # the loop may already be closed
            pass
        self._release()
