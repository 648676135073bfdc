"""`flow.subscribe(name)`: the reading end of a topic, one `Subscribe`
source per kernel of the subscribing job.

The topic's partitions are spread over the subscriber's kernels: kernel `i`
of `n` reads partitions `i, i + n, ...` (a kernel with none ends its share
at once; a `key_by` downstream spreads the records over every kernel). A
reader task per partition connects to the publisher (looked up in the
coordinator's catalog, waiting up to `timeout` seconds for the topic to
appear), decodes the codec's frames into a buffer and wakes the source;
`poll` hands the batches on as they came (with their timestamps), moves the
output watermark to the least of its partitions', and grants the publisher
credit for what it handed on (the links' flow control): the buffer holds
at most a window of bytes per partition, and a slow subscriber slows its
publisher (or is dropped, `slow="disconnect"`).

A publisher that ends sends END: that partition has ended. A connection
that ends otherwise is a lost publisher: `on_lost="fail"` raises
`PublisherLost(topic)` from the source; `on_lost="wait"` looks the topic up
again until a new publisher (another id) is registered, and goes on from
its next whole epoch, the watermark never going back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from kernel.dataflow._operator import Source
from kernel.net._channel import IDLE, EpochMarker
from kernel.net._codec import KIND_END, decode
from kernel.topics import _directory
from kernel.topics._errors import PublisherLost, SubscriberTooSlow, TopicError
from kernel.topics._publish import TOO_SLOW, TOPIC_PATH, WINDOW, record_type_info, same_record_type

log = logging.getLogger("kernel.topics")
_HEAD = 5  # what a frame's header counts against the window (net._links.FRAME)
CONNECT_TIMEOUT = 5.0  # seconds to reach a registered publisher before it counts as lost


class Subscribe(Source):
    def __init__(self, topic: str, *, timeout: float | None, on_lost: str, record_type, coordinator) -> None:
        self.topic = topic
        self.timeout = timeout
        self.on_lost = on_lost
        self.record_type = record_type
        self.coordinator = coordinator  # a function: the address run() was given, or None

    def open(self, context) -> None:
        self._buffer: deque = deque()  # (partition, kind, body, link): frames not yet handed on
        self._watermarks: dict[int, float] = {}
        self._ended: set[int] = set()
        self._watermark = float("-inf")
        self._error: BaseException | None = None
        self._started = False
        self._done = False  # every partition of this kernel has ended
        self._mine: list[int] = []  # the partitions this kernel reads
        self.epochs: list[tuple[int, int]] = []  # (partition, epoch) markers seen, in order

    def poll(self):
        if self._error is not None:
            raise self._error
        if not self._started:
            self._started = True
            self.context.kernel.spawn(self._read(), name=f"{self.name} reader")
            return None
        buffer = self._buffer
        wanted = self.records_wanted
        handed = 0
        while buffer and handed < wanted:
            partition, kind, body, link = buffer.popleft()
            payload = decode(kind, body)
            if payload.__class__ is float:
                self._watermarks[partition] = max(self._watermarks.get(partition, payload), payload)
                self._advance()
            elif payload is None:
                self._watermarks[partition] = float("inf")
                self._ended.add(partition)
            elif payload.__class__ is EpochMarker:
                self.epochs.append((partition, payload.epoch))
                log.debug("topic %r partition %d: epoch %d received", self.topic, partition, payload.epoch)
            elif payload is not IDLE:
                handed += len(payload)
                self.emit(payload)
            link.consumed(0, _HEAD + len(body))
        if buffer:
            return True
        return False if self._done else None

    def _advance(self) -> None:
        low = min((self._watermarks.get(p, float("-inf")) for p in self._mine), default=float("-inf"))
        if low > self._watermark and low != float("inf"):
            self._watermark = low
            self.advance_watermark(low)

    def result(self):
        return {"epochs": self.epochs}

    # -- the reader task ------------------------------------------------------------

    async def _read(self) -> None:
        try:
            address = _directory.coordinator_address(self.coordinator())
            key = _directory.secret()
            directory = _directory.Directory(address, key)
            try:
                found = await directory.lookup(self.topic, self.timeout)
                self._check_type(found)
                self._mine = list(range(self.context.index, found["partitions"], self.context.peers))
                if self._mine:
                    who = {"name": self.topic, "job": _directory.job_name(), "process": self.context.index}
                    await directory.request("topic_subscribe", **who)
                    try:
                        await asyncio.gather(*(self._read_partition(directory, key, found, p)
                                               for p in self._mine))
                    finally:
                        try:
                            await directory.request("topic_unsubscribe", **who)
                        except (TopicError, OSError):
                            pass  # the coordinator went away: a stale row in `status`, nothing more
            finally:
                await directory.close()
        except TopicError as exc:
            self._error = exc
        self._done = True
        self.wake()

    def _check_type(self, found: dict) -> None:
        theirs = found.get("record_type")
        ours = record_type_info(self.record_type)
        if ours is None or theirs is None or same_record_type(ours, theirs):
            return
        raise TopicError(f"subscribe({self.topic!r}, record_type={self.record_type.__qualname__}): the "
                         f"topic's records are {theirs['name']}" + (" (another msgspec schema)"
                                                                     if theirs.get("schema") else ""))

    async def _read_partition(self, directory, key: bytes, found: dict, partition: int) -> None:
        from kernel.net._links import Link, LinkError, connect

        while True:
            url = _directory.url_of(*_split(found["addresses"][partition]))
            why = ""
            http = None
            try:
                ws, _, meta, http = await connect(url, key, self.context.index, path=TOPIC_PATH,
                                                  timeout=CONNECT_TIMEOUT, meta={"topic": self.topic},
                                                  check_meta=False, ssl=_directory.client_ssl())
                if not isinstance(meta, dict) or meta.get("id") != found["id"]:
                    await ws.close()
                    why = f"{url} serves another publisher now"
                else:
                    link = Link(ws, partition, {0}, None, WINDOW)
                    async for _, kind, body in link:
                        # decoded when handed on (poll): what waits here is bytes, no objects
                        self._buffer.append((partition, kind, body, link))
                        self.wake()
                        if kind == KIND_END:
                            await link.close()
                            return  # the publisher ended the stream
                    if ws.close_code == TOO_SLOW:
                        raise SubscriberTooSlow(self.topic)
                    why = f"the connection to {url} closed without the stream's end"
            except LinkError as exc:
                if ws_code(exc) == TOO_SLOW:
                    raise SubscriberTooSlow(self.topic) from None
                why = str(exc)
            finally:
                if http is not None:
                    await http.close()
            if self.on_lost != "wait":
                raise PublisherLost(self.topic, why)
            found = await directory.lookup(self.topic, None, not_id=found["id"])


def ws_code(exc: Exception) -> int | None:
    text = str(exc)
    return TOO_SLOW if f"code {TOO_SLOW}" in text else None


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
