"""The sending end of an exchange edge on one kernel.

A batch of `(key, value)` pairs is split by the key's owner (a stable hash:
`kernel.net.Partitioner`); this kernel's share goes straight into the
consumer's inbox, the others' to the transport, each on the edge's channel.
Progress (watermarks, IDLE, epoch markers, end of input) goes to every
kernel, after the data it follows.
"""

from __future__ import annotations

from kernel.dataflow._errors import (
    UNHASHABLE_ACROSS_KERNELS,
    UNHASHABLE_KEY,
    UNPICKLABLE_RECORD,
    OperatorError,
    is_unhashable,
)
from kernel.net._codec import UnpicklableRecord

from ._instance import END


class ExchangeOutput:
    chained = False

    def __init__(self, channel: int, upstream, local, local_channel: int, partitioner, transport) -> None:
        self.channel = channel  # the transport's channel for this edge
        self.upstream = upstream
        self.local = local
        self.local_channel = local_channel
        self.partitioner = partitioner
        self.transport = transport
        self.index = transport.index
        self.peers = transport.peers

    def deliver(self, _channel: int, payload) -> None:
        transport, channel = self.transport, self.channel
        if isinstance(payload, list):
            try:
                parts = self.partitioner.split(payload)
            except Exception as exc:
                raise self._key_error(payload, exc) from exc
            for dest, part in enumerate(parts):
                if part:
                    if dest == self.index:
                        self.local.deliver(self.local_channel, part)
                    else:
                        try:
                            transport.send_batch(dest, channel, part)
                        except UnpicklableRecord as exc:
                            raise self._unpicklable(exc) from exc.__cause__
            return
        self.local.deliver(self.local_channel, payload)
        wire = None if payload is END else payload  # the transport's end of input
        for dest in range(self.peers):
            if dest != self.index:
                transport.send_progress(dest, channel, wire)

    # The errors below name the step whose output crosses kernels (key_by,
    # or what runs between it and the exchange) and the record at fault,
    # found again only now, on the error path.

    def _key_error(self, pairs: list, exc: Exception) -> OperatorError:
        """A key the partitioner cannot place: unhashable, or without a stable hash."""
        found, pair = self.partitioner.failing_pair(pairs)
        if found and is_unhashable(pair[0]):
            return OperatorError.wrap(self.upstream.name, "hash(key)", exc, record=pair,
                                      hint=UNHASHABLE_KEY)
        return OperatorError.wrap(self.upstream.name, "net.stable_hash(key)", exc, record=pair,
                                  has_record=found, hint=UNHASHABLE_ACROSS_KERNELS)

    def _unpicklable(self, exc: UnpicklableRecord) -> OperatorError:
        return OperatorError.wrap(self.upstream.name, "pickle.dumps", exc.__cause__, record=exc.record,
                                  has_record=exc.found, hint=UNPICKLABLE_RECORD)
