"""The one transport protocol the runtime talks to (timely's `Allocate`).

A transport belongs to one kernel: `index` of `peers` kernels in the whole
run. Every kernel allocates the same exchange channels in the same order
(the order the runtime wires the graph's exchange edges, which is the same
everywhere), so channel `c` on one kernel is channel `c` on every other:
`allocate()` hands out the next number. The push end is `send_batch` and
`send_progress` to a destination kernel on a channel; the pull end is the
`Receiver` the runtime gives `start`, to which the transport delivers, in
order per channel and source, what the other kernels pushed.

Three implementations, chosen by how a run executes:

* `LocalTransport`: one kernel. Every channel stays inside it (a same-kernel
  edge is a plain list handed to the consumer's inbox by the runtime), so
  there is nothing to push to and nothing to pull.
* `ProcessTransport` (`_transport.py`): kernels of one machine over
  shared-memory SPSC rings, one per ordered pair of kernels.
* The same `ProcessTransport` with `RelayEnds`: kernels of other machines,
  reached through this process's link relay (`_relay.py`), which carries
  every channel over one authenticated websocket per pair of processes.
"""

from __future__ import annotations

from typing import Any, Protocol


class UnpicklableRecord(Exception):
    """A batch that neither msgpack nor pickle can carry to another kernel.

    `record` is the first record that pickle refuses on its own (`found`
    False when none does: only the batch as a whole failed, too deep, say).
    Pickle's own error is the `__cause__`. What `Transport.send_batch` raises
    (net._codec's encoding); here, so that a one-kernel run, which sends
    nothing, does without the codec and msgspec.
    """

    def __init__(self, found: bool, record: object) -> None:
        super().__init__("a record that crosses kernels cannot be pickled")
        self.found = found
        self.record = record


class KernelHandle(Protocol):
    """What of its kernel a transport uses: the loop to park on, a way to
    ready its reader activation, and hold/release to keep the kernel alive
    until every other kernel's end of input has come."""

    loop: Any

    def ready_function(self): ...

    def hold(self) -> None: ...

    def release(self) -> None: ...


class Receiver(Protocol):
    """The runtime's side of the pull end."""

    def deliver(self, channel: int, source: int, payload) -> None:
        """A batch (a list), a watermark (a float), IDLE, an epoch marker,
        or None for end of input, from kernel `source` on `channel`."""

    def backpressure(self, blocked: bool) -> None:
        """Outgoing frames are waiting (True: stop the sources) or drained."""


class Transport(Protocol):
    index: int
    peers: int

    def allocate(self) -> int: ...

    def send_batch(self, dest: int, channel: int, batch: list) -> None: ...

    def send_progress(self, dest: int, channel: int, payload) -> None: ...

    def send_watermarks(self, dest: int, pairs: list) -> None:
        """`(channel, watermark)` pairs in one frame, delivered one by one."""

    def start(self, kernel: KernelHandle, receiver: Receiver, ended: int = 0) -> None:
        """Start the pull end on a running kernel. The transport holds the
        kernel until every other kernel's end of input has come on every
        allocated channel (`ended` of them had already come in the snapshot
        a resumed run restored) and its own outgoing frames have drained."""

    def finish_sending(self) -> None:
        """This kernel will push nothing more."""

    def hold_reading(self, held: bool) -> None:
        """Stop (True) or resume (False) draining incoming frames: an
        operator of this kernel that cannot keep up holds back the kernels
        sending to it, whose rings then fill and whose sources pause."""

    def close(self) -> None: ...


class LocalTransport:
    """One kernel: every channel is a same-kernel list, so nothing crosses."""

    index = 0
    peers = 1

    def __init__(self) -> None:
        self._channels = 0

    def allocate(self) -> int:
        self._channels += 1
        return self._channels - 1

    def send_batch(self, dest: int, channel: int, batch: list) -> None:
        raise ValueError(f"one kernel: there is no kernel {dest} to send to")

    send_progress = send_batch

    def send_watermarks(self, dest: int, pairs: list) -> None:
        raise ValueError(f"one kernel: there is no kernel {dest} to send to")

    def start(self, kernel: KernelHandle, receiver: Receiver, ended: int = 0) -> None:
        pass

    def finish_sending(self) -> None:
        pass

    def hold_reading(self, held: bool) -> None:
        pass  # nothing comes from elsewhere

    def close(self) -> None:
        pass
