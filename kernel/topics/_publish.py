"""`stream.publish(name)`: the publishing end of a topic, one `Publish`
operator per kernel of the publishing job.

Partitions. With `partitions="per-kernel"` every kernel's share is a
partition of its own, served by that kernel (no records move between the
publisher's kernels); with `"merged"` the fluent API routes every record to
kernel 0 first (a constant key), which serves the one partition. Each
partition is served on an authenticated websocket server of its own
(`TopicServer`, the links' `AuthenticatedServer`), on the kernel's loop, and
registered in the coordinator's catalog.

Epochs. Subscribers see whole epochs only. The publisher cuts its stream
into epochs of its own, every `epoch_interval` seconds of its kernel's
clock, between two batches, and sends the epoch marker in band (the codec's
EPOCH frame); in a job with snapshots the job's epochs are the topic's
(below).
A subscriber that connects is held until the next boundary and then gets
the watermark as it stands there, then everything after it; with
`retain=N` the frames of the last N whole epochs (and of the one in
progress) are kept, and a new subscriber starts at the oldest of them at
once. Retention is bounded in bytes as well (`retain_bytes`, 64 MiB by
default, counted as the frames' wire size): past it the oldest epochs are
dropped whole, and an epoch in progress that alone outgrows it is not kept
at all (a subscriber joining during it waits for the next boundary, as
without retain). Every connection's first frame is the epoch marker of
the epoch before its first one (`EpochMarker(k)`: it starts at epoch
k + 1), so a subscriber knows where it starts.

A subscriber may ask for progress only (`{"progress": True}` in its
handshake): it gets the markers, watermarks and end, never a batch (a
subscribing kernel with no partition of its own follows the publisher's
progress that way, `_subscribe.py`).

Frames. A batch is encoded once (`encode_batch`) and the same bytes go to
every subscriber; watermarks, the epoch markers and end of input follow in
band, in order. Each subscriber has a queue and a writer task that sends on
its `Link` (credit-based flow control: at most a window in flight). A
subscriber whose queue passes `max_queue` bytes either pauses the
publisher's input (`slow="backpressure"`, the default, until every queue
is under half of it again) or is dropped (`slow="disconnect"`, close code
4003, its source raises `SubscriberTooSlow`). Nothing grows without bound.

Exactly once (a job with snapshots: a state_dir). The frames of an epoch
wait in `_open` until the job's marker reaches the operator (`on_epoch`),
then in `_pending` until the epoch is complete on every kernel
(`on_commit`), and only then go out, with the job's epoch number as the
marker. An epoch out stays in `_released` until every subscriber's credit
shows it has had its marker (`_has`: the link's bytes acknowledged against
where each marker went). A snapshot takes `_released` and `_pending`: a
publisher resumed from the snapshot of epoch R has out, at most, epochs up
to R (nothing of R + 1 on was out before: not complete), and keeps every
epoch a subscriber may lack. A subscriber coming back says the last epoch
it has whole (`after` in its handshake; `_resume`), and gets the kept
epochs after it, then the new ones. What a restore gives back is kept
RESUME_EPOCHS epochs for the subscribers to come back, as what a
subscriber whose connection broke lacks is; at most `retain_bytes` of
them where the job gives it (`_prune`).

End. When the publisher's input ends every subscriber gets END after the
rest of its queue; the run lasts until the queues have gone out, then the
topic is taken out of the catalog.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import uuid
from collections import deque

from kernel.dataflow._errors import describe_record
from kernel.dataflow._operator import Operator
from kernel.net import _codec
from kernel.net._channel import EpochMarker, TimedBatch
from kernel.net._codec import encode_batch, encode_epoch, encode_progress, encode_watermark
from kernel.net._protocol import UnpicklableRecord
from kernel.topics import _directory
from kernel.topics._coalesce import JOINABLE, take
from kernel.topics._errors import TopicError

log = logging.getLogger("kernel.topics")

TOPIC_PATH = "/kernel-topic"
_CLOSE_GRACE = 5.0  # seconds the subscribers have to close after END before the server stops
TOO_SLOW = 4003  # close code: the subscriber fell too far behind (slow="disconnect")
DEFAULT_EPOCH_INTERVAL = 1.0
DEFAULT_MAX_QUEUE = 8 << 20  # bytes queued for one subscriber
DEFAULT_RETAIN_BYTES = 64 << 20  # retain=N's bound in bytes, unless retain_bytes= says otherwise
WINDOW = 4 << 20  # bytes in flight per subscriber (the links' default window)
_HEAD = 5  # what a frame's header counts (net._links.FRAME)
_WATERMARK = struct.Struct("<d")  # a watermark frame's body (net._codec)
_EPOCH = struct.Struct("<Q")  # an epoch marker's body
RESUME_EPOCHS = 10  # epochs a restarted publisher keeps what it restored, for subscribers coming back


def record_type_info(record_type) -> dict | None:
    """How a record type is registered: its qualified name, and for a
    msgspec Struct its JSON schema (compared instead of the name)."""
    if record_type is None:
        return None
    if not isinstance(record_type, type):
        raise TypeError(f"record_type must be a class, got {record_type!r}")
    info = {"name": f"{record_type.__module__}.{record_type.__qualname__}", "schema": None}
    try:
        import msgspec

        if issubclass(record_type, msgspec.Struct):
            info["schema"] = msgspec.json.schema(record_type)
    except Exception:  # pragma: no cover - a class msgspec cannot describe
        pass
    return info


def same_record_type(ours: dict, theirs: dict) -> bool:
    if ours["schema"] is not None or theirs["schema"] is not None:
        return ours["schema"] == theirs["schema"]
    # a class of the pipeline file is `__main__.X` in one job, `pipeline.X` in another
    return ours["name"].rpartition(".")[2] == theirs["name"].rpartition(".")[2]


class _Epoch:
    """A whole epoch kept for late subscribers (retain), or (with
    snapshots) until it is complete and every subscriber has it."""

    __slots__ = ("frames", "number", "records", "size", "start")

    def __init__(self, number: int, start: float, frames: list, size: int) -> None:
        self.number = number  # the publisher's epoch number (1 is the first)
        self.start = start  # the watermark at its start
        self.frames = frames
        self.size = size  # bytes, as _frame_size counts them
        self.records = 0  # (with snapshots) the records the operator had had by its end


def _max_frame() -> int:
    """What a subscriber's connection takes in one frame (the links'
    default: `subscribe` connects with it). Imported here, not at the
    top: the links' module costs aiohttp's import."""
    from kernel.net._links import DEFAULT_MAX_FRAME

    return DEFAULT_MAX_FRAME


def _frame_size(frame) -> int:
    return _HEAD + len(frame[1])


class _Subscriber:
    __slots__ = ("active", "address", "done", "has", "link", "marks", "progress", "queue", "queued", "ready",
                 "replaying", "sent", "writer")

    def __init__(self, link, address: str, progress: bool = False) -> None:
        self.link = link
        self.address = address
        self.progress = progress  # markers, watermarks and end only: no batch
        self.queue: deque = deque()  # (kind, body), oldest first
        self.queued = 0  # bytes in the queue
        # of which retained epochs replayed to it (held by the publisher
        # anyway): not counted against max_queue, as they are sent (_behind)
        self.replaying = 0
        self.active = False  # False: waiting for the next epoch boundary
        self.ready: asyncio.Future | None = None  # the writer waits on it for frames
        self.writer: asyncio.Task | None = None
        self.done = False  # END queued: the writer stops after it
        # with snapshots: the epoch markers sent, (link bytes sent through
        # it, epoch), until the subscriber's credit says it has them (`has`)
        self.marks: deque = deque()
        self.has = -1  # the last epoch whose marker it is known to have (-1: none yet)
        self.sent = 0  # bytes of the frames sent to it (Link.size each)


def _make_server(publisher: Publish, host: str, key: bytes, meta: dict):
    from kernel.net._links import AuthenticatedServer

    class TopicServer(AuthenticatedServer):
        noun = "a topic subscriber"
        path = TOPIC_PATH

        async def _session(self, ws, peer: int, meta, address: str) -> None:
            await publisher._serve_subscriber(ws, peer, meta, address)

    return TopicServer(host, 0, key, meta["partition"], meta=meta, ssl_context=_directory.server_ssl())


class Publish(Operator):
    _retain_bytes_given = False  # publish(retain_bytes=...): what is kept for subscribers away is bounded too

    def __init__(self, topic: str, *, merged: bool, retain: int | None, slow: str, epoch_interval: float,
                 record_type, coordinator, max_queue: int = DEFAULT_MAX_QUEUE,
                 retain_bytes: int | None = None) -> None:
        self.topic = topic
        self.merged = merged
        self.retain = retain
        self.retain_bytes = retain_bytes or DEFAULT_RETAIN_BYTES
        self._retain_bytes_given = retain_bytes is not None
        self.slow = slow
        self.epoch_interval = epoch_interval
        self.record_type = record_type
        self.coordinator = coordinator  # a function: the address run() was given, or None
        self.max_queue = max_queue

    def open(self, context) -> None:
        self.serving = not self.merged or context.index == 0
        self.partition = 0 if self.merged else context.index
        self.partitions = 1 if self.merged else context.peers
        self.subscribers: list[_Subscriber] = []
        self.watermark = float("-inf")
        self.epoch = 0
        self.records = 0  # published so far (the log says where each epoch ends)
        self.paused = False
        self.ended = False
        self.dropped = 0  # subscribers dropped as too slow
        self._closing: set = set()  # their connections, closing
        self._finished = None  # the serving task's future: set once the input ended
        # retain: the last whole epochs (oldest first) and the one in progress,
        # together at most retain_bytes (_keep)
        self._retained: deque[_Epoch] = deque()
        self._retained_size = 0
        self._current: list = []
        self._current_size = 0
        self._current_whole = True  # False: it outgrew retain_bytes and is not kept
        self._current_start = float("-inf")
        self._timer = None
        # A job with snapshots (a state_dir): the topic's epochs are its
        # snapshots' epochs, and an epoch goes out once it is complete
        # (on_commit); see "Exactly once" above
        self.snapshots = bool(getattr(context, "snapshots", False))
        if self._retain_bytes_given and not self.retain and not self.snapshots:
            # (checked here: whether the job has a state_dir is known once it runs)
            raise TopicError(f"{self.name}: retain_bytes bounds what retain=N keeps, and what a job with a "
                             "state_dir keeps for its subscribers away: give retain, or a state_dir")
        self._open: list = []  # the frames since the last epoch marker
        self._pending: deque[_Epoch] = deque()  # whole epochs, not yet complete
        self._released: deque[_Epoch] = deque()  # out, and kept until every subscriber has them
        self._last_epoch = 0  # the last epoch this operator snapshotted (or restored)
        self._committed = False  # on_commit has been called (the first: right after open, or restore)
        self._restored_any = False  # restore() was called (a resumed run; else it had ended there)
        self._ending = False  # (with snapshots) the input ended: the end goes out with a complete epoch
        self._restored = None  # (first, last) of the epochs restore() gave it to keep (_prune)
        # (with snapshots) the stream this publisher goes on with: the id of the
        # publisher that started it afresh (this one's, unless restore() says
        # another), kept in the snapshots. A subscriber's `after` counts epochs
        # of one stream: told to a publisher of another, it means nothing
        self.lineage: str | None = _directory.new_id() if self.snapshots and self.serving else None
        # subscribers whose connection broke (not ended): (the last epoch each had, kept until which
        # epoch) for _prune: it may come back (`after`) and must find what it lacks
        self._absent: list[tuple[int, int]] = []
        if self.serving:
            self.context.kernel.spawn(self._serve(), name=f"{self.name} server")
            if not self.snapshots:
                self._timer = context.kernel.call_later(self.epoch_interval, self._cut)

    # -- the data path ------------------------------------------------------------

    def on_batch(self, port: int, batch: list) -> None:
        if self.merged:
            timed = type(batch) is TimedBatch
            records = [value for _, value in batch]
            batch = TimedBatch(records, batch.timestamps) if timed else records
            if not self.serving:  # (the constant key sends everything to kernel 0)
                raise TopicError(f"{self.name}: a merged topic's records reached kernel {self.context.index}")
        self.records += len(batch)
        # (checked whether or not anyone subscribes yet: found by a review, a
        # wrong record went unnoticed until a subscriber came, then failed the job)
        if batch and self.record_type is not None and not isinstance(batch[0], self.record_type):
            raise TopicError(f"{self.name}: topic {self.topic!r} was published with record_type="
                             f"{self.record_type.__qualname__}, but a record is {batch[0]!r}")
        if not batch or not (self.subscribers or self.retain or self.snapshots):
            return  # nobody to send to, nothing to keep: not even encoded
        self._push_batch(batch)

    def _push_batch(self, batch: list) -> None:
        """One frame for the batch, or, where that would be over what a
        subscriber takes in one frame (`_max_frame()`: it refused the
        frame and lost the epoch, or the connection, saying only that a
        message was too big), its halves, each on its own."""
        try:
            frame = encode_batch(batch)
        except UnpicklableRecord as exc:
            # (it said "a record that crosses kernels cannot be pickled", with neither
            # the record nor why: nothing crosses kernels here, and the topic was not named)
            record = f": {describe_record(exc.record)}" if exc.found else ""
            raise TopicError(f"a record of topic {self.topic!r} cannot be sent to its subscribers (neither "
                             f"msgpack nor pickle takes it: {type(exc.__cause__).__name__}: {exc.__cause__})"
                             f"{record}") from exc.__cause__
        if len(frame[1]) <= _max_frame():
            self._push(frame)
            return
        if len(batch) == 1:
            raise TopicError(
                f"{self.name}: a record of topic {self.topic!r} is {len(frame[1]):,} bytes encoded, over the "
                f"{_max_frame() >> 20} MiB a topic's frame carries: {describe_record(batch[0])}")
        half = len(batch) // 2
        if type(batch) is TimedBatch:
            self._push_batch(TimedBatch(batch[:half], batch.timestamps[:half]))
            self._push_batch(TimedBatch(batch[half:], batch.timestamps[half:]))
        else:
            self._push_batch(batch[:half])
            self._push_batch(batch[half:])

    def on_watermark(self, watermark: float) -> None:
        if self.snapshots:  # (self.watermark: what has gone out, _send)
            if self.serving and watermark != float("inf"):
                self._open.append(encode_watermark(watermark))
            return
        self.watermark = watermark
        if self.serving and (self.subscribers or self.retain) and watermark != float("inf"):
            self._push(encode_watermark(watermark))

    def on_end(self) -> None:
        if self.snapshots and self.serving:
            # the stream's end goes out with the first complete epoch past
            # the last one this operator took part in (on_commit)
            self._ending = True
            return
        self._end()

    def _end(self) -> None:
        self.ended = True
        if not self.serving:
            return
        if self._timer is not None:
            self._timer.cancel()
        end = encode_progress(None)
        for sub in list(self.subscribers):
            if not sub.active:
                self._start(sub, self.epoch)
            self._queue(sub, end)
            sub.done = True
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)

    def _push(self, frame) -> None:
        if self.snapshots:
            self._open.append(frame)  # (out when its epoch is complete: on_commit)
        else:
            self._send(frame)

    def _send(self, frame) -> None:
        """A frame goes out: retained, and queued for every active subscriber."""
        if self.snapshots and frame[0] == _codec.KIND_WATERMARK:
            self.watermark = _WATERMARK.unpack(frame[1])[0]
        if self.retain and self._current_whole:
            self._keep(frame)
        for sub in tuple(self.subscribers):  # (a slow one may be dropped on the way)
            if sub.active:
                self._queue(sub, frame)
                if _behind(sub) > self.max_queue and not self.snapshots:  # (with snapshots: on_commit)
                    self._too_slow(sub)

    def _queue(self, sub: _Subscriber, frame) -> None:
        if sub.progress and frame[0] not in _PROGRESS_KINDS:
            return
        sub.queue.append(frame)
        sub.queued += _HEAD + len(frame[1])
        ready = sub.ready
        if ready is not None and not ready.done():
            ready.set_result(None)

    def _too_slow(self, sub: _Subscriber) -> None:
        if self.slow == "disconnect":
            self.dropped += 1
            log.warning("topic %r: dropping the subscriber at %s: %d bytes behind (slow='disconnect')",
                        self.topic, sub.address, sub.queued)
            self._forget(sub, may_return=False)  # (dropped for its queue: nothing kept for it either)
            closing = asyncio.ensure_future(sub.link.ws.close(code=TOO_SLOW, message=b"subscriber too slow"))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        elif not self.paused:
            self.paused = True
            self.pause_input(True)

    def _drained(self) -> None:
        """A writer sent something: resume the input once every queue is under half."""
        if self.paused and all(_behind(s) <= self.max_queue // 2 for s in self.subscribers):
            self.paused = False
            self.pause_input(False)

    def _cut(self, epoch: int | None = None, records: int | None = None) -> None:
        """An epoch boundary: the marker in band; waiting subscribers start
        here. (The next by the timer; with snapshots, `epoch`, complete.)"""
        if self.ended:
            return
        self.epoch = self.epoch + 1 if epoch is None else epoch
        log.debug("topic %r partition %d: epoch %d ends after %d records", self.topic, self.partition,
                  self.epoch, self.records if records is None else records)
        self._send(encode_epoch(EpochMarker(self.epoch)))
        if self.retain:
            if self._current_whole:
                whole = _Epoch(self.epoch, self._current_start, self._current, self._current_size)
                self._retained.append(whole)
                self._retained_size += self._current_size
                if len(self._retained) > self.retain:
                    self._retained_size -= self._retained.popleft().size
            self._current = []
            self._current_size = 0
            self._current_whole = True
            self._current_start = self.watermark
        for sub in self.subscribers:
            if not sub.active:
                self._start(sub, self.epoch)
        if not self.snapshots:
            self._timer = self.context.kernel.call_later(self.epoch_interval, self._cut)

    def _keep(self, frame) -> None:
        """Retain a frame of the epoch in progress, within retain_bytes:
        the oldest whole epochs go first; an epoch in progress that alone
        outgrows the bound is not kept (nobody can start at its start)."""
        self._current.append(frame)
        self._current_size += _frame_size(frame)
        while self._retained and self._retained_size + self._current_size > self.retain_bytes:
            dropped = self._retained.popleft()
            self._retained_size -= dropped.size
            log.debug("topic %r partition %d: epoch %d no longer retained (retain_bytes=%d)", self.topic,
                      self.partition, dropped.number, self.retain_bytes)
        if self._current_size > self.retain_bytes:
            log.debug("topic %r partition %d: epoch %d outgrew retain_bytes=%d: not retained", self.topic,
                      self.partition, self.epoch + 1, self.retain_bytes)
            self._current = []
            self._current_size = 0
            self._current_whole = False

    def _start(self, sub: _Subscriber, after: int, watermark: float | None = None) -> None:
        """`sub` starts at epoch `after` + 1, at `watermark` (now's by
        default): the marker of the epoch before, then the watermark."""
        sub.active = True
        # it needs nothing up to `after` (it has it, coming back; or starts past it): what _prune keeps
        # for it, active or dropped, starts after it (-1 kept every epoch for a subscriber dropped
        # before its first marker's credit came back, again and again)
        sub.has = max(sub.has, after)
        self._queue(sub, encode_epoch(EpochMarker(after)))
        watermark = self.watermark if watermark is None else watermark
        if watermark > float("-inf"):
            self._queue(sub, encode_watermark(watermark))
        log.debug("topic %r partition %d: the subscriber at %s starts at epoch %d", self.topic,
                  self.partition, sub.address, after + 1)

    # -- snapshots: exactly once across a restart ------------------------------------

    def on_epoch(self, epoch: int):
        """The job's epoch `epoch` reached this operator: the frames since
        the last one are that epoch, whole; they go out once it is complete
        (on_commit). The snapshot keeps them, and every epoch gone out
        that a subscriber may not have yet, for a restarted publisher to
        send again from where each subscriber is (`_resume`)."""
        self._last_epoch = epoch
        if not self.serving:
            return None
        size = sum(map(_frame_size, self._open))
        whole = _Epoch(epoch, float("-inf"), self._open, size)
        whole.records = self.records
        self._pending.append(whole)
        self._open = []
        self._prune()
        return {"epochs": [(e.number, e.frames) for e in (*self._released, *self._pending)],
                "lineage": self.lineage}

    def restore(self, snapshot) -> None:
        """A resumed run (the snapshot of epoch R): the epochs it kept are
        pending again; R's commit, next, puts them out (to nobody yet) and
        keeps them for subscribers coming back (`_resume`)."""
        self._restored_any = True
        if snapshot is None:
            return
        # (a snapshot of an earlier version has none: unknown, and then every
        # subscriber's `after` is taken, as before; a new id here would differ
        # at each resume from that same snapshot)
        self.lineage = snapshot.get("lineage")
        for number, frames in snapshot["epochs"]:
            self._pending.append(_Epoch(number, float("-inf"), frames, sum(map(_frame_size, frames))))
            self._last_epoch = max(self._last_epoch, number)
        # (kept for RESUME_EPOCHS more epochs: its subscribers come back when they find it)
        if self._pending:
            self._restored = (self._pending[0].number, self._pending[-1].number)

    def rescale(self, snapshots: list, owns):
        """A resume on another number of kernels: partitions are not the
        old ones, so nothing is kept to send again (subscribers coming back
        start at the next epoch out; README: Topics, item 4). The stream
        goes on: its lineage stays."""
        lineage = next((s.get("lineage") for s in snapshots if isinstance(s, dict)), None)
        return {"epochs": [], "lineage": lineage}

    def on_commit(self, epoch: int) -> None:
        if self.snapshots and self.serving and not self.ended and epoch > 0 and not self._committed \
                and not self._restored_any:
            # a resumed run's first commit, and nothing restored: this step
            # had ended in the snapshot (its end had gone out, or was about
            # to: what it had not delivered then is lost, README Topics 9)
            log.warning("topic %r partition %d: the publisher had ended in the snapshot resumed from",
                        self.topic, self.partition)
            self._committed = True
            self._end()
            return
        self._committed = True
        if not self.snapshots or not self.serving or self.ended:
            if self.snapshots:
                self._last_epoch = max(self._last_epoch, epoch)
            return
        if self._pending and self._pending[0].number <= epoch:
            # An epoch goes out whole, at once, queued for every subscriber
            # together: counted frame by frame, an epoch over max_queue made
            # even a subscriber that keeps up too slow (slow="disconnect"
            # dropped every one at each such epoch). Too slow is one that
            # still has more than max_queue of the epochs before queued when
            # the next goes out; the epoch's frames are held anyway (in
            # _released) until every subscriber has them.
            for sub in tuple(self.subscribers):
                if sub.active and _behind(sub) > self.max_queue:
                    self._too_slow(sub)
        while self._pending and self._pending[0].number <= epoch:
            whole = self._pending.popleft()
            for frame in whole.frames:
                self._send(frame)
            self._cut(whole.number, whole.records)
            self._released.append(whole)
        if epoch > self.epoch and not self._ending:
            self.epoch = epoch  # (complete, and nothing of it here: a new subscriber starts after it)
        if self._ending and epoch > self._last_epoch:
            # a complete epoch past this operator's last: its end is in it.
            # What follows the last marker goes out whole, as an epoch: a
            # subscriber waiting for a boundary starts before it
            for sub in self.subscribers:
                if not sub.active:
                    self._start(sub, self.epoch)
            for frame in self._open:
                self._send(frame)
            self._open = []
            self._end()
        self._prune()

    def _prune(self) -> None:
        """Drop the epochs gone out that every subscriber has (its credit
        says it has had their markers). What is kept beyond that for the
        subscribers away (a connection broken, a restarted publisher's
        subscribers coming back: RESUME_EPOCHS epochs) is at most
        retain_bytes where the job gave it: past it the oldest such epochs
        go too (a fast publisher kept 10 epochs whatever their size, in
        memory and in every snapshot: 1.1 GB of them on disk), and a
        subscriber coming back that lacks one starts after the last epoch
        out, as one past RESUME_EPOCHS does (`_resume`: its log says what
        it missed). Not given, nothing is dropped so: a subscriber whose
        connection broke misses nothing, as the README promises a job with
        a state_dir, whatever that keeps."""
        if not self._released:
            return
        active = min((self._has(s) for s in self.subscribers if s.active), default=self.epoch)
        has = active
        if self._restored is not None and self.epoch < self._restored[1] + RESUME_EPOCHS:
            has = min(has, self._restored[0] - 1)  # what it restored waits for its subscribers
        if self._absent:
            self._absent = [(had, until) for had, until in self._absent if self.epoch < until]
            has = min([has, *(had for had, _ in self._absent)])
        while self._released and self._released[0].number <= has:
            self._released.popleft()
        # (once an epoch, over the few epochs kept: what active subscribers lack is never dropped,
        # nor counted: a connected subscriber behind by more than retain_bytes took the epochs
        # kept only for the subscribers away, however few)
        if not self._retain_bytes_given:
            return  # (a bound the job asked for only: by default a subscriber away misses nothing)
        kept = sum(whole.size for whole in self._released if whole.number <= active)
        while self._released and self._released[0].number <= active and kept > self.retain_bytes:
            dropped = self._released.popleft()
            kept -= dropped.size
            log.warning("topic %r partition %d: epoch %d is no longer kept for the subscribers away "
                        "(retain_bytes=%d): one that lacks it starts after the last epoch out", self.topic,
                        self.partition, dropped.number, self.retain_bytes)

    @staticmethod
    def _has(sub: _Subscriber) -> int:
        # (sent: counted once a frame has taken its credit and gone, so
        # a frame waiting for credit counts in neither)
        link = sub.link
        received = sub.sent - (link.window - link.credit(0))
        marks = sub.marks
        while marks and marks[0][0] <= received:
            sub.has = marks.popleft()[1]
        return sub.has

    def _after(self, meta: dict, address: str):
        """The last epoch a subscriber coming back has whole of this stream
        (its handshake's `after`), or None. An `after` of another stream
        (its `lineage` is not this publisher's: this one started afresh,
        not from a snapshot of the one it read) counts epochs that are not
        these: it starts as a new subscriber. Unknown lineages (either side
        of an earlier version) are taken as the same stream."""
        after = meta.get("after") if self.snapshots else None
        theirs = meta.get("lineage")
        if after is not None and theirs is not None and self.lineage is not None and theirs != self.lineage:
            log.info("topic %r partition %d: the subscriber at %s had read another stream of this topic "
                     "(up to its epoch %s): it starts here as a new subscriber", self.topic, self.partition,
                     address, after)
            return None
        return after

    def _resume(self, sub: _Subscriber, after: int) -> bool:
        """A subscriber coming back (a restarted publisher: this one), that
        has every epoch up to `after`: it starts right after it, with the
        kept epochs it lacks. False: they are not all kept here."""
        if after >= self.epoch:
            self._start(sub, after, float("-inf"))
            return True
        first = self._released[0].number if self._released else self.epoch + 1
        if after + 1 < first:
            return False
        self._start(sub, after, float("-inf"))
        for whole in self._released:
            if whole.number > after:
                for frame in whole.frames:
                    self._queue(sub, frame)
                self._queue(sub, encode_epoch(EpochMarker(whole.number)))
        sub.replaying = sub.queued
        return True

    # -- the server ---------------------------------------------------------------------

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._finished = loop.create_future()
        if self.ended:
            self._finished.set_result(None)
        address = _directory.coordinator_address(self.coordinator())
        key = _directory.secret()
        self.id = _directory.new_id()
        host = _directory.advertised_host()
        # ("server": this server's own, new each time one starts: a run of the
        # same job attempt after a failed one, in the same process, has the
        # same publisher id, and its epochs are numbered anew; a subscriber
        # tells it from the one it had read, `Subscribe._read_connection`)
        meta = {"topic": self.topic, "id": self.id, "partition": self.partition,
                "partitions": self.partitions, "snapshots": self.snapshots, "lineage": self.lineage,
                "server": uuid.uuid4().hex}
        server = _make_server(self, host, key, meta)
        await _directory.listen(server)
        directory = _directory.Directory(address, key)
        done = False  # the topic ended here, the catalog told (or not reachable)
        try:
            registration = {"name": self.topic, "id": self.id, "job": _directory.job_name(), "kind": "stream",
                            "record_type": record_type_info(self.record_type), "partitions": self.partitions,
                            "partition": self.partition, "address": f"{host}:{server.port}"}
            await directory.request("topic_publish", **registration)
            log.info("topic %r partition %d served at %s:%d", self.topic, self.partition, host, server.port)
            await directory.keep_registered(registration, self._finished,
                                            f"topic {self.topic!r} partition {self.partition}")
            writers = [s.writer for s in self.subscribers if s.writer is not None]
            if writers:
                await asyncio.wait(writers)
            done = True
            try:
                await directory.request("topic_unpublish", name=self.topic, id=self.id,
                                        partition=self.partition)
                log.debug("topic %r partition %d: ended and unpublished", self.topic, self.partition)
            except _directory.CoordinatorUnreachable as exc:
                # Every record went out, and each subscriber read END: the
                # job's work is done, and failing it (restarted by its master,
                # publishing the stream again) for a coordinator down at this
                # moment would be worse than a stale row, which a later
                # publisher of the name takes over (`_still_published`), or
                # the job's end removes (`forget_topics_of`).
                log.warning("topic %r partition %d ended, but the coordinator could not be told (%s): its "
                            "catalog lists the topic as published until a publisher takes the name over",
                            self.topic, self.partition, exc)
            # Each subscriber closes its connection once it has read END:
            # waited for, since stopping the server stops reading them, and a
            # close left unanswered ended only when the heartbeat gave the
            # link up (5-7 s more of an ended job, behind a slow subscriber)
            closing = [s.link.closed for s in self.subscribers if s.done]
            if closing:
                await asyncio.wait(closing, timeout=_CLOSE_GRACE)
        finally:
            # (the server first: a publisher whose run failed or was cancelled,
            # its topic not ended, abandons its connection to the coordinator,
            # which then asks the address whether it still publishes)
            await _directory.stop_serving(server, directory, done)

    async def _serve_subscriber(self, ws, peer: int, meta, address: str) -> None:
        from kernel.net._links import Link, LinkError

        if not isinstance(meta, dict) or meta.get("topic") != self.topic:
            await ws.close(code=1008, message=b"no such topic here")
            return
        link = Link(ws, peer, {0}, _ignore, WINDOW)
        sub = _Subscriber(link, address, progress=meta.get("progress") is True)
        log.debug("topic %r partition %d: a subscriber connected from %s", self.topic, self.partition,
                  address)
        # a subscriber coming back to a restarted publisher: every epoch up to `after` it has
        after = self._after(meta, address)
        resumed = type(after) is int and self._resume(sub, after)
        if self.ended:
            if not resumed:
                self._start(sub, self.epoch)
            self._queue(sub, encode_progress(None))
            sub.done = True
        elif resumed:
            pass
        elif self.records == 0 and self.epoch == 0:
            self._start(sub, 0)  # nothing published yet: its first epoch is whole
        elif self.retain and (self._retained or self._current_whole):
            # at once, from the oldest retained epoch's start
            if self._retained:
                self._start(sub, self._retained[0].number - 1, self._retained[0].start)
            else:
                self._start(sub, self.epoch, self._current_start)
            for epoch in self._retained:
                for frame in epoch.frames:
                    self._queue(sub, frame)
            for frame in self._current:
                self._queue(sub, frame)
            sub.replaying = sub.queued
        elif self.snapshots:
            # What has gone out ends at a boundary: an epoch goes out whole,
            # its marker right after it (on_commit). So it starts at once,
            # after the last epoch out, and gets every epoch that goes out
            # after it joined. (Held for the next boundary, it missed the
            # epoch in progress, none of which had gone out: a subscriber
            # connected before the first epoch went out got nothing of it.)
            self._start(sub, self.epoch)
        self.subscribers.append(sub)
        sub.writer = asyncio.ensure_future(self._write(sub))
        try:
            await link.run()
        except LinkError:
            pass
        finally:
            self._forget(sub)
            if not sub.writer.done() and not sub.done:
                sub.writer.cancel()

    def _forget(self, sub: _Subscriber, may_return: bool = True) -> None:
        if sub in self.subscribers:
            self.subscribers.remove(sub)
            if may_return and self.snapshots and sub.active and not sub.done and not sub.progress:
                # its connection broke, the stream not ended: it may come back (a reset, its kernel
                # blocked past the heartbeat), saying what it has; what it lacks is kept for
                # RESUME_EPOCHS epochs, as for a restarted publisher's subscribers
                self._absent.append((self._has(sub), self.epoch + RESUME_EPOCHS))
            sub.queue.clear()
            sub.queued = 0
            self._drained()

    async def _write(self, sub: _Subscriber) -> None:
        from kernel.net._links import LinkError

        link = sub.link
        queue = sub.queue
        try:
            while True:
                while queue:
                    kind, body = queue.popleft()
                    sent = _HEAD + len(body)
                    if kind in JOINABLE and queue:  # batches waiting behind it: one frame (_coalesce)
                        frames, taken = take(kind, body, queue)
                        sent += sum(_HEAD + len(b) for _, b in taken)
                    else:
                        frames = ((kind, body),)
                    sub.queued -= sent
                    if sub.replaying:
                        sub.replaying = max(0, sub.replaying - sent)
                    for kind, body in frames:
                        await link.send(0, kind, body)
                        sub.sent += _HEAD + len(body)
                    if kind == _codec.KIND_EPOCH and self.snapshots:  # (what _has reads)
                        sub.marks.append((sub.sent, _EPOCH.unpack(body)[0]))
                    if self.paused:
                        self._drained()
                    if kind == _codec.KIND_END:
                        return
                if sub not in self.subscribers:
                    return
                sub.ready = asyncio.get_running_loop().create_future()
                await sub.ready
        except (LinkError, ConnectionError, RuntimeError):
            self._forget(sub)


# what a progress-only subscriber gets
_PROGRESS_KINDS = frozenset((_codec.KIND_WATERMARK, _codec.KIND_EPOCH, _codec.KIND_END))


def _behind(sub: _Subscriber) -> int:
    """The bytes queued for `sub` that count against max_queue."""
    return sub.queued - sub.replaying


def _ignore(channel, kind, body) -> None:
    """A subscriber sends nothing but credit."""
