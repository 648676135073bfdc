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
that ends otherwise is tried again first (`_read_partition`): where the
same publisher answers, `on_lost="wait"` reads on from its next whole
epoch and `on_lost="fail"` raises `ConnectionLost` (or reads on, where
nothing of the partition had come yet). Where it is gone, it is a lost
publisher: `on_lost="fail"` raises `PublisherLost(topic)` from the source;
`on_lost="wait"` looks the topic up again until a new publisher (another
id) is registered, and goes on from its next whole epoch, the watermark
never going back. With
`on_lost="wait"` each partition's frames are held until their epoch is
whole (its marker or the end) and then handed on together, so that the
epoch a lost publisher was in the middle of is dropped whole, not handed
on in part (`_hold`; records come an epoch later).

Generations. Each publisher (a run of the publishing job) is a
generation, with a partition count of its own: a job master may restart a
publishing job on another number of kernels. On a loss every partition of
the generation is read as far as it goes until the new publisher is
registered; then the old connections are dropped and this kernel reads
its share of the new one's partitions (`i, i + n, ...` of the new count).
Frames and watermarks are kept per (generation, partition), so a
partition the new publisher no longer has never holds the watermark
back, and one it adds is read by exactly one kernel. A kernel with no
partition of its own (more subscribing kernels than partitions) follows
every partition's progress (markers, watermarks, end: no batch) instead
of ending, with `on_lost="wait"`: its watermark then follows the
publisher's, and a later generation with more partitions finds it there
to read its share. (With `on_lost="fail"` there is no later generation:
it ends at once.)

Every connection's first frame is the publisher's epoch marker of the
epoch before the subscriber's first: where it starts (logged, and in
`result()`'s `starts`).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections import deque

from kernel.dataflow._operator import Source
from kernel.net._channel import IDLE, EpochMarker
from kernel.net._codec import KIND_END, KIND_EPOCH, decode, renamed_decoder
from kernel.net._environment import seconds_from_environment
from kernel.topics import _directory
from kernel.topics._errors import ConnectionLost, PublisherLost, SubscriberTooSlow, TopicError
from kernel.topics._publish import (
    _EPOCH,
    RESUME_EPOCHS,
    TOO_SLOW,
    TOPIC_PATH,
    WINDOW,
    record_type_info,
    same_record_type,
)

log = logging.getLogger("kernel.topics")
_HEAD = 5  # what a frame's header counts against the window (net._links.FRAME)
# seconds to reach a registered publisher before it counts as lost (KERNEL_TOPIC_CONNECT_TIMEOUT:
# a network slower to connect wants it longer; a test of silent publishers, shorter)
CONNECT_TIMEOUT = seconds_from_environment("KERNEL_TOPIC_CONNECT_TIMEOUT", 5.0)
RECHECK_AFTER = 0.5  # seconds of trying before the catalog is asked whether the partition ended
# connections in a row to a publisher that break before their first frame, after which it counts as
# lost (one that closes every connection at once would be dialled for ever), each after a pause
EARLY_BREAKS = 3
_NEW_STREAM = -1  # the floor of a publisher's stream this kernel meets anew (started afresh): none of it


class Subscribe(Source):
    def __init__(self, topic: str, *, timeout: float | None, on_lost: str, record_type, coordinator) -> None:
        self.topic = topic
        self.timeout = timeout
        self.on_lost = on_lost
        self.record_type = record_type
        self.coordinator = coordinator  # a function: the address run() was given, or None

    def open(self, context) -> None:
        # (generation, partition) -> ...: a generation is a publisher (_read)
        self._buffer: deque = deque()  # ((generation, partition), kind, body, link): not yet handed on
        self._decode = decode  # (or `renamed_decoder`'s: _check_type)
        self._watermarks: dict[tuple[int, int], float] = {}
        self._reading: list[tuple[int, int]] = []  # the current generation's partitions this kernel reads
        self._watermark = float("-inf")
        self._error: BaseException | None = None
        self._started = False
        self._done = False  # every partition of this kernel has ended
        self.epochs: list[tuple[int, int]] = []  # (partition, epoch) markers seen, in order
        self.starts: list[tuple[int, int]] = []  # (partition, epoch) each connection started at
        # on_lost="wait" (_hold): bytes of whole epochs in the buffer whose
        # credit was granted as they came, and the credit owed meanwhile
        self._ready = 0
        self._owed: list = []  # (link, bytes)
        self._early = _Early(self._handed_early)
        # a publisher with snapshots (exactly once across its restarts):
        # partition -> the last epoch this kernel has whole of it, told to a
        # restarted publisher (`after`), which sends what comes after it
        self._whole: dict[int, int] = {}
        # partition -> the stream (the publishers' lineage) those epochs are
        # of: a publisher started afresh is another stream, numbered anew
        self._lineage: dict[int, str] = {}
        # on_lost="wait": (generation, partition) -> the last epoch this kernel has whole of it
        # (a connection to the same publisher again drops what it sends of them)
        self._had: dict[tuple[int, int], int] = {}
        # (generation, partition) -> the publisher's server `_had` is of (its
        # handshake's "server"): another server under the same publisher id is
        # another run (a job attempt's process running its flow again after a
        # failure), whose epochs are numbered anew: what was had of the last
        # one's says nothing of them
        self._served: dict[tuple[int, int], str] = {}
        self._reached: set[tuple[int, int]] = set()  # (generation, partition) a first frame came from
        self._partitions = None  # the current generation's partition count

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
            key, kind, body, link = buffer.popleft()
            try:
                payload = self._decode(kind, body)
            except Exception as exc:
                raise self._undecodable(exc) from exc
            if payload.__class__ is float:
                self._watermarks[key] = max(self._watermarks.get(key, payload), payload)
                self._advance()
            elif payload is None:
                self._watermarks[key] = float("inf")
                self._advance()
            elif payload.__class__ is EpochMarker:
                self.epochs.append((key[1], payload.epoch))
                log.debug("topic %r partition %d: epoch %d received", self.topic, key[1], payload.epoch)
            elif payload is not IDLE:
                handed += len(payload)
                self.emit(payload)
            link.consumed(0, _HEAD + len(body))
        if buffer:
            return True
        return False if self._done else None

    def _undecodable(self, exc: Exception) -> TopicError:
        """A batch this process cannot read: mostly a class of the
        publisher's records that is not importable here (a script's own
        class). It said only pickle's "Can't get attribute 'Reading' on
        <module '__main__' ...>", naming neither the topic nor a way out."""
        return TopicError(f"topic {self.topic!r}: a batch from the publisher cannot be decoded here "
                          f"({type(exc).__name__}: {exc}); records of a class of the publisher's own are "
                          "read as a class of the same name given as record_type= to both publish and "
                          "subscribe")

    def _advance(self) -> None:
        """The output watermark: the least of the current generation's
        partitions' (one not heard from yet: -inf), never going back."""
        low = min((self._watermarks.get(k, float("-inf")) for k in self._reading), default=float("-inf"))
        if low > self._watermark and low != float("inf"):
            self._watermark = low
            self.advance_watermark(low)

    def result(self):
        return {"epochs": self.epochs, "starts": self.starts}

    # -- the reader task ------------------------------------------------------------

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = None if self.timeout is None else loop.time() + self.timeout
        try:
            address = _directory.coordinator_address(self.coordinator())
            key = _directory.secret()
            directory = _directory.Directory(address, key)
            try:
                found = await directory.lookup(self.topic, self.timeout)
                self._check_type(found)
                await self._follow(directory, key, found)
            finally:
                await directory.close()
        except TopicError as exc:
            self._error = exc
        self._done = True
        self.wake()

    async def _follow(self, directory, key: bytes, found: dict) -> None:
        """Read this kernel's share of each generation (publisher) in turn,
        until one ends the stream."""
        who = {"name": self.topic, "job": _directory.job_name(), "process": self.context.index}
        subscribed = False
        try:
            for generation in itertools.count():
                if found["partitions"] != self._partitions:  # (epochs had are per partition)
                    self._partitions = found["partitions"]
                    self._whole.clear()
                mine = list(range(self.context.index, found["partitions"], self.context.peers))
                if not mine and self.on_lost != "wait":
                    return  # nothing to read, and no later publisher will give it anything
                if not subscribed:
                    await directory.request("topic_subscribe", **who)
                    subscribed = True
                    # (said again on a new connection where this one ends: the
                    # coordinator forgets an app's subscription with it, and a
                    # reader READER_GRACE after; forgotten, this subscriber
                    # waited for ever for a new publisher that had ended)
                    directory.say_again("its lookup", "topic_lookup", name=self.topic,
                                        job=_directory.reader_name())
                    directory.say_again("its subscription", "topic_subscribe", **who)
                reading = mine or list(range(found["partitions"]))  # none of its own: their progress
                self._reading = [(generation, p) for p in reading]
                ended = functools.partial(self._ended_meanwhile, directory, found)
                readers = {asyncio.ensure_future(self._read_partition(key, found, at, not mine, ended,
                                                                      directory)): at
                           for at in self._reading}
                try:
                    why = await _first_loss(readers, ended)
                    if why is None:
                        return  # the publisher ended the stream
                    if self.on_lost != "wait":
                        if await self._never_there(directory, found):
                            # (a registration left behind by a publisher gone
                            # before this subscriber came: it ended with
                            # PublisherLost, having received nothing of it)
                            log.info("topic %r: its publisher was gone before this subscriber reached it; "
                                     "waiting for the topic to be published", self.topic)
                            found = await directory.lookup(self.topic, self._left(), waited=self.timeout)
                            self._check_type(found)
                            continue
                        raise PublisherLost(self.topic, why)
                    # (the other partitions go on as far as they go meanwhile)
                    lost = found["id"]
                    found = await directory.lookup(self.topic, None, not_id=lost)
                    self._check_type(found)
                    if found["id"] == lost:
                        self._same_again(generation)
                    else:
                        log.info("topic %r: a new publisher, with %d partition(s)", self.topic,
                                 found["partitions"])
                finally:
                    for reader in readers:
                        reader.cancel()
                    await asyncio.gather(*readers, return_exceptions=True)
        finally:
            if subscribed:
                directory.say_again("its lookup", None)
                directory.say_again("its subscription", None)
                try:
                    await directory.request("topic_unsubscribe", **who)
                except (TopicError, OSError):
                    pass  # the coordinator went away: a stale row in `status`, nothing more

    def _same_again(self, generation: int) -> None:
        """The publisher counted lost is listed again, the same one (stopped,
        or its kernel blocked, past the coordinator's heartbeat and checks:
        taken out of the catalog, then its registration said again): the
        next generation reads it on, and what this kernel had whole of it
        (`_had`) is not handed on twice (a retain publisher replays its
        retained epochs to every new connection: read as a new publisher's,
        they came twice)."""
        for (had_in, partition), epoch in list(self._had.items()):
            if had_in == generation:
                self._had[(generation + 1, partition)] = epoch
        # (its server, of every partition reached, an epoch of it had or not: a
        # partition reached before any epoch came, its server not carried, was
        # read as another's, and what it no longer kept for this kernel said
        # "the restarted publisher no longer had them")
        for (served_in, partition), server in list(self._served.items()):
            if served_in == generation:
                self._served[(generation + 1, partition)] = server
        log.info("topic %r: its publisher is listed again: reading it on", self.topic)

    async def _never_there(self, directory, found: dict) -> bool:
        """Lost before anything of it reached this kernel, and no longer in
        the catalog (taken out as gone: `kernel.system._topics.forget_lost`)?
        Then, to this subscriber, the topic was not there yet."""
        if any(at in self._reached for at in self._reading):
            return False
        try:
            return await _in_catalog(directory, self.topic, found, self._reading[0], False) == "gone"
        except TopicError:
            return False  # (the coordinator does not answer: the loss stands)

    def _left(self) -> float | None:
        """What is left of the subscriber's `timeout` (None: none)."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    async def _ended_meanwhile(self, directory, found: dict, at: tuple[int, int]) -> bool:
        """A partition's server could not be reached (or closed before the
        first frame): had it ended between the lookup and the connection
        (its server stops once it has ended)? Then that is its end, as the
        catalog says, not a lost publisher."""
        if await _in_catalog(directory, self.topic, found, at, self.on_lost == "wait") != ENDED:
            return False
        self._ended_unread(at)
        return True

    def _ended_unread(self, at: tuple[int, int]) -> None:
        """Partition `at` ended before anything of it reached this kernel:
        its END, from the catalog. Of a publisher after a lost one, what it
        published is lost to this subscriber: said (README, Topics 4)."""
        if at[0] > 0:
            log.warning("topic %r partition %d: the new publisher had ended before this subscriber "
                        "reached it: what it published is not delivered", self.topic, at[1])
        else:
            log.debug("topic %r partition %d: ended before this subscriber connected", self.topic, at[1])
        self._buffer.append((at, KIND_END, b"", _NO_LINK))
        self.wake()

    def _ended_cut_off(self, at: tuple[int, int], broken) -> None:
        """Partition `at` ended while this kernel was cut off from it, after
        some of it had come: what it sent after the break is lost. "fail":
        ConnectionLost; "wait": a warning, and its END."""
        if self.on_lost != "wait":
            raise ConnectionLost(self.topic, at[1], f"{broken}; the publisher has ended since")
        log.warning("topic %r partition %d: the publisher ended while this subscriber was cut off from it: "
                    "what it sent after the break (%s) is not delivered", self.topic, at[1], broken)
        self._buffer.append((at, KIND_END, b"", _NO_LINK))
        self.wake()

    def _check_type(self, found: dict) -> None:
        theirs = found.get("record_type")
        ours = record_type_info(self.record_type)
        if ours is None or theirs is None or same_record_type(ours, theirs):
            if ours is not None and theirs is not None and ours["name"] != theirs["name"]:
                # the same class by name, in another module: the publisher's
                # `__main__.Reading` is this job's `pipeline.Reading`, and the
                # records that name it (by pickle) are read as ours (found by
                # a review: the check passed, then every batch failed to
                # unpickle, "Can't get attribute 'Reading' on kernel.__main__")
                self._decode = renamed_decoder(theirs["name"], self.record_type)
            return
        raise TopicError(f"subscribe({self.topic!r}, record_type={self.record_type.__qualname__}): the "
                         f"topic's records are {theirs['name']}" + (" (another msgspec schema)"
                                                                     if theirs.get("schema") else ""))

    async def _read_partition(self, key: bytes, found: dict, at: tuple[int, int], progress: bool,
                              ended, directory) -> None:
        """Read one partition of one publisher into the buffer until its END
        (returns) or a loss (`_Lost`, with why). A partition that had ended
        when the topic was looked up (its server gone) ends here at once.

        A connection that breaks is not yet a lost publisher: the publisher
        may still run (a reset connection, or this kernel blocked past the
        links' heartbeat, which made the publisher drop it). So the same
        publisher is tried again (`_try_again`): where it answers,
        on_lost="wait" goes on with it from its next whole epoch (as after a
        restart: the epoch in progress is dropped whole, and an epoch it
        sends again, retained, is dropped too), and on_lost="fail" ends with
        `ConnectionLost`, not `PublisherLost` (what it sent meanwhile is
        lost to this subscriber, which has handed on part of an epoch)."""
        partition = at[1]
        if found["addresses"][partition] == ENDED:
            self._ended_unread(at)
            return
        url = _directory.url_of(*_split(found["addresses"][partition]))
        broken = None  # why the last connection to this publisher broke while it seemed to run
        early = 0  # connections in a row that broke before their first frame
        while True:
            try:
                await self._read_connection(key, found, at, url, progress, ended, broken, directory)
                return
            except _Lost as lost:
                if lost.final:
                    raise  # tried again, and gone (the catalog was asked: _try_again)
                if lost.before_start and (not lost.connected or early >= EARLY_BREAKS):
                    if at not in self._reached:
                        raise  # never reached: the catalog is asked (_first_loss), ended or lost
                    # a later connection of a partition that had come: not "ended before connecting"
                    if await _in_catalog(directory, self.topic, found, at, self.on_lost == "wait") == ENDED:
                        self._ended_cut_off(at, lost)
                        return
                    raise _Lost(str(lost), final=True) from None
                if lost.before_start:  # held for a boundary and dropped, or closed at once: a pause
                    early += 1
                    await asyncio.sleep(RECHECK_AFTER)
                else:
                    early = 0
                broken = lost
            log.warning("topic %r partition %d: the connection to the publisher broke (%s); trying it "
                        "again", self.topic, partition, broken)

    async def _read_connection(self, key: bytes, found: dict, at: tuple[int, int], url: str,
                               progress: bool, ended, broken, directory) -> None:
        """One connection to partition `at` of publisher `found`: read it
        until its END (returns) or its loss (`_Lost`). `broken`: why the
        last connection to it broke (this one is a second try)."""
        import aiohttp

        from kernel.net._links import Link, LinkError

        partition = at[1]
        http = None
        first = True  # nothing received yet
        connected = False  # to this publisher (a break is then tried again: _read_partition)
        held: list = []  # on_lost="wait": the epoch in progress, handed on whole (_hold)
        meta = {"topic": self.topic, "progress": True} if progress else {"topic": self.topic}
        floor = self._whole.get(partition) if self.on_lost == "wait" else None
        if floor is not None:
            meta["after"] = floor  # (a publisher with snapshots starts it right after it)
            if self._lineage.get(partition) is not None:
                meta["lineage"] = self._lineage[partition]  # (of another stream, it starts anew)
        try:
            if broken is not None:  # does the publisher still answer?
                again = await self._try_again(key, url, meta, broken, directory, found, at)
                if again is None:
                    return  # it had ended meanwhile (and said so)
                ws, theirs, http = again
                if isinstance(theirs, dict) and theirs.get("id") == found["id"] and self.on_lost != "wait" \
                        and at in self._reached:  # (before any frame, nothing is lost: read on)
                    await ws.close()
                    raise ConnectionLost(self.topic, partition, str(broken))
            else:
                try:  # (a first try, short: a partition that has just ended has no server to reach)
                    ws, theirs, http = await self._dial(key, url, meta, RECHECK_AFTER)
                except LinkError:
                    if await ended(at):
                        return
                    ws, theirs, http = await self._dial(key, url, meta, CONNECT_TIMEOUT)
            if not isinstance(theirs, dict) or theirs.get("id") != found["id"]:
                await ws.close()
                raise _Lost(f"{url} serves another publisher now", before_start=True)
            connected = True
            if broken is not None:
                log.warning("topic %r partition %d: the publisher still runs: reading it again, from its "
                            "next whole epoch", self.topic, partition)
            if theirs.get("snapshots") is not True:  # its epochs are its own: nothing to compare
                floor = None
                self._whole.pop(partition, None)
            elif floor is not None and self._another_stream(partition, theirs.get("lineage")):
                # a publisher started afresh: a stream of its own, numbered from 1
                # again (it starts this kernel as a new subscriber)
                log.info("topic %r partition %d: the publisher started a new stream; its epochs are not "
                         "the last one's", self.topic, partition)
                floor = _NEW_STREAM  # (none of it here yet: _started_at says what it missed)
                self._whole.pop(partition, None)
            if theirs.get("snapshots") is True and theirs.get("lineage") is not None:
                self._lineage[partition] = theirs["lineage"]
            server = theirs.get("server")
            # (reached again after its connection broke, the same server: what it
            # no longer has for this kernel it dropped while this kernel was away;
            # unknown, a publisher of an earlier version, where this is a second try)
            same_server = self._served.get(at) == server if server is not None else broken is not None
            if server is not None and self._served.setdefault(at, server) != server:
                # the same publisher id, another server: another run of the job's attempt
                # (its epochs numbered anew), read as a new publisher; or, restored
                # from the snapshots of the stream this kernel read (same lineage),
                # on after what this kernel had whole, as any restored publisher
                if floor is not None and floor >= 0:
                    log.info("topic %r partition %d: the publisher runs again (its server is another), "
                             "restored from its snapshots: read on after epoch %d, the last this "
                             "subscriber had whole (what it sends again up to it is dropped)", self.topic,
                             partition, floor)
                else:
                    log.info("topic %r partition %d: the publisher runs again (its server is another): "
                             "read from its start, as a new publisher", self.topic, partition)
                self._had.pop(at, None)
                self._served[at] = server
            if self._had.get(at) is not None:
                # the same publisher again (tried again, or listed again: `_same_again`): an epoch
                # it sends that this kernel has whole (retained, replayed to every new connection)
                # is dropped, not handed on twice
                floor = max(self._had[at], -1 if floor is None else floor)
            link = Link(ws, partition, {0}, None, WINDOW)
            async for _, kind, body in link:
                if first:  # the publisher's marker of the epoch before this connection's first
                    first = False
                    self._reached.add(at)
                    self._started_at(partition, decode(kind, body), link, _HEAD + len(body), floor,
                                     theirs.get("snapshots") is True, progress, same_server)
                    continue
                # decoded when handed on (poll): what waits here is bytes, no objects
                if self.on_lost == "wait":
                    self._hold(held, at, kind, body, link, floor)
                else:
                    self._buffer.append((at, kind, body, link))
                    self.wake()
                if kind == KIND_END:
                    await link.close()
                    return  # the publisher ended the stream
            if ws.close_code == TOO_SLOW:
                raise SubscriberTooSlow(self.topic)
            raise _Lost(f"the connection to {url} closed without the stream's end", before_start=first,
                        connected=True)
        except (LinkError, aiohttp.ClientError, ConnectionError) as exc:
            # (a send that fails, a credit grant say, may raise aiohttp's own error before the reader
            # sees the end)
            if ws_code(exc) == TOO_SLOW:
                raise SubscriberTooSlow(self.topic) from None
            raise _Lost(str(exc) or type(exc).__name__, before_start=first, connected=connected) from None
        finally:
            if held:
                log.info("topic %r partition %d: %d frame(s) of an epoch the publisher did not finish "
                         "dropped", self.topic, partition, len(held))
            if http is not None:
                await http.close()

    def _another_stream(self, partition: int, lineage) -> bool:
        """Are the epochs this kernel has of `partition` another stream's
        than the publisher's (of `lineage`)? Unknown (a publisher of an
        earlier version says none): taken as the same."""
        mine = self._lineage.get(partition)
        return mine is not None and lineage is not None and mine != lineage

    async def _dial(self, key: bytes, url: str, meta: dict, timeout: float):
        """One try at the publisher's partition server: `(ws, its meta,
        session)`, or LinkError. A TLS handshake that failed (the
        publisher's certificate does not verify, or it answers without
        TLS) is a TopicError: a configuration, which no retry mends, not a
        publisher gone (it was taken for one, "nothing listens there")."""
        from kernel.net._links import TLSFailed, connect

        tls = _directory.client_ssl()
        try:
            ws, _, theirs, http = await connect(url, key, self.context.index, path=TOPIC_PATH, meta=meta,
                                                check_meta=False, timeout=timeout, ssl=tls)
        except TLSFailed as exc:
            raise TopicError(f"topic {self.topic!r}: TLS failed with its publisher, which no retry mends: "
                             f"{exc} (KERNEL_TLS here and the publisher's must go together)") from exc
        return ws, theirs, http

    async def _try_again(self, key: bytes, url: str, meta: dict, broken: _Lost, directory, found: dict,
                         at: tuple[int, int]):
        """Connect again to a publisher whose connection broke: `(ws, its
        meta, session)`; None where it had ended meanwhile (its END is in
        the buffer, and what came after the break is lost: on_lost="fail"
        raises ConnectionLost for it); `_Lost` (final) where it is gone:
        nothing listens there any more (its process is gone), or the
        catalog no longer lists it. Where something listens but does not
        answer (a publisher blocked, or stopped), each round of tries
        (RECHECK_AFTER, then CONNECT_TIMEOUT seconds) is followed by a look
        at the catalog: on_lost="wait" tries again for as long as the
        catalog lists this publisher; "fail" gives up after one round."""
        import aiohttp

        from kernel.net._links import LinkError

        partition, waiting = at[1], False
        while True:
            gone = False
            for timeout in (RECHECK_AFTER, CONNECT_TIMEOUT):
                try:
                    return await self._dial(key, url, meta, timeout)
                except LinkError as exc:
                    error = exc
                    if isinstance(exc.__cause__, aiohttp.ClientConnectorError):
                        gone = True  # nothing listens there (or the host is unreachable)
                        break
            listed = await _in_catalog(directory, self.topic, found, at, self.on_lost == "wait")
            if listed == ENDED:
                if at in self._reached:
                    self._ended_cut_off(at, broken)
                else:  # nothing of it had come: just its end
                    self._ended_unread(at)
                return None
            if gone or listed != "listed" or self.on_lost != "wait":
                raise _Lost(f"{broken}; then {error}", final=True)
            if not waiting:
                waiting = True
                log.warning("topic %r partition %d: the publisher does not answer at %s but is still "
                            "registered: trying it again until it answers or is replaced", self.topic,
                            partition, url)

    def _hold(self, held: list, at: tuple[int, int], kind: int, body, link, floor: int | None) -> None:
        """on_lost="wait": a partition's frames wait in `held` until their
        epoch is whole (its marker, or the end), then go to the buffer
        together, so that a publisher lost in the middle of an epoch leaves
        none of it handed on (the reader drops `held` with the connection).
        Held frames are granted their credit as they come (an epoch may be
        bigger than the window: it must come whole to be handed on); what
        bounds memory then is the whole epochs waiting in the buffer: past a
        window of them (`_ready`), credit is owed until `poll` has handed
        them on (`_handed_early`). With a publisher that has snapshots, an
        epoch up to `floor` (this kernel had it whole from the publisher
        before) is dropped: a restarted publisher sending it again."""
        size = _HEAD + len(body)
        if self._ready <= WINDOW:
            link.consumed(0, size)
        else:
            self._owed.append((link, size))
        held.append((at, kind, body, self._early))
        if kind == KIND_EPOCH:
            epoch = _EPOCH.unpack(body)[0]
            if floor is not None and epoch <= floor:
                log.info("topic %r partition %d: epoch %d again: dropped", self.topic, at[1], epoch)
                held.clear()
                return
            self._had[at] = epoch
            if at[1] in self._whole:
                self._whole[at[1]] = epoch
        if kind == KIND_EPOCH or kind == KIND_END:
            self._ready += sum(_HEAD + len(entry[2]) for entry in held)
            self._buffer.extend(held)
            held.clear()
            self.wake()

    def _handed_early(self, channel: int, size: int) -> None:
        """A frame whose credit `_hold` granted (or owes) was handed on."""
        self._ready -= size
        if self._owed and self._ready <= WINDOW:
            owed, self._owed = self._owed, []
            for link, nbytes in owed:
                link.consumed(0, nbytes)

    def _started_at(self, partition: int, marker, link, size: int, floor: int | None = None,
                    snapshots: bool = False, progress: bool = False, same_server: bool = False) -> None:
        """`progress`: this kernel reads only the partition's progress (it
        owns no partition), so it misses no records of it either;
        `same_server`: the publisher's server is the one this kernel read
        before (its connection broke), not a restarted publisher's."""
        if marker.__class__ is not EpochMarker:
            raise TopicError(f"topic {self.topic!r}: the publisher did not say where this subscriber "
                             "starts (a publisher of another version?)")
        if snapshots and self.on_lost == "wait":
            if progress:
                pass  # (the kernel that reads the records says what they missed)
            elif floor == _NEW_STREAM and marker.epoch > 0:  # reached after its first epochs
                log.warning("topic %r partition %d: epochs 1 to %d of the publisher's new stream were not "
                            "delivered (out before this subscriber reached it)", self.topic, partition,
                            marker.epoch)
            elif floor is not None and floor >= 0 and marker.epoch > floor:
                # (the same server: it kept them for this kernel away no longer, past
                # RESUME_EPOCHS or retain_bytes; "restarted" was said of a broken connection too)
                why = f"the publisher no longer kept them while this subscriber's connection was broken: " \
                      f"it keeps {RESUME_EPOCHS} epochs for a subscriber away, within retain_bytes" \
                    if same_server else "the restarted publisher no longer had them"
                log.warning("topic %r partition %d: epochs %d to %d were not delivered (%s)", self.topic,
                            partition, floor + 1, marker.epoch, why)
            self._whole[partition] = max(marker.epoch, -1 if floor is None else floor)
        self.starts.append((partition, marker.epoch + 1))
        log.info("topic %r partition %d: starts at epoch %d", self.topic, partition, marker.epoch + 1)
        link.consumed(0, size)


class _Lost(Exception):
    """A partition's connection ended without the stream's end: why;
    `before_start`: before its first frame (the partition may have ended
    meanwhile: `Subscribe._ended_meanwhile`); `final`: after trying the
    publisher again (`Subscribe._try_again`)."""

    def __init__(self, why: str, before_start: bool = False, final: bool = False,
                 connected: bool = False) -> None:
        super().__init__(why)
        self.before_start = before_start
        self.final = final  # the publisher was tried again, and is gone
        self.connected = connected  # it broke after the handshake with this publisher


class _Early:
    """The credit of a held frame (`Subscribe._hold`): already granted or
    owed; handing it on tells the subscriber."""

    __slots__ = ("consumed",)

    def __init__(self, handed) -> None:
        self.consumed = handed


class _NoLink:
    """The credit of a frame no connection carried (a partition's end read
    from the catalog)."""

    @staticmethod
    def consumed(channel: int, nbytes: int) -> None:
        pass


_NO_LINK = _NoLink()
ENDED = "ended"  # a publication's address once its partition has ended (kernel.system._topics)


async def _in_catalog(directory, topic: str, found: dict, at: tuple[int, int], wait: bool) -> str:
    """What the catalog says now of partition `at` of publisher `found`:
    ENDED, "listed" (still this publisher's), or "gone" (another publisher,
    or none). `wait` (on_lost="wait"): asked until the coordinator answers
    (a publisher lost while the coordinator was down ended its waiting
    subscriber with CoordinatorUnreachable; its lookups already waited)."""
    lookup = {"name": topic, "job": _directory.reader_name()}
    again = await (directory.answered("topic_lookup", None, f"asking about topic {topic!r}", **lookup) if wait
                   else directory.request("topic_lookup", **lookup))
    if not again.get("found") or again["id"] != found["id"]:
        return "gone"
    return ENDED if again["addresses"][at[1]] == ENDED else "listed"


async def _first_loss(readers: dict, ended_meanwhile) -> str | None:
    """Wait for the readers of a generation (reader -> its partition): None
    once every one has ended its partition, or why the first lost one was
    lost (the rest still reading). A reader lost before its first frame is
    no loss if `ended_meanwhile(partition)` says the partition had ended.
    Other errors are raised."""
    pending = set(readers)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for reader in done:
            error = reader.exception()
            if isinstance(error, _Lost):
                if error.before_start and await ended_meanwhile(readers[reader]):
                    continue
                return str(error)
            if error is not None:
                raise error
    return None


def ws_code(exc: Exception) -> int | None:
    text = str(exc)
    return TOO_SLOW if f"code {TOO_SLOW}" in text else None


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
