"""A cluster process's links to the other processes: the link relay.

In a cluster every process runs C kernels (one pinned process each) and one
relay process, which holds the process's websocket links (`net/_links.py`):
one per pair of processes, every kernel pair's traffic multiplexed on it, as
timely's network threads serve the workers of a process. Kernels are
numbered across the cluster: process p owns kernels p*C .. p*C+C-1.

Each local kernel has two rings with the relay (`RelayEnds` in
`net/_transport.py`). A frame from kernel s to a remote kernel d is pushed
by s as `ROUTE(d) + HEADER + body`; the relay sends `HEADER + body` on the
link to d's process, on link channel `s * kernels + d`; the relay there
pushes `ROUTE(s) + HEADER + body` into d's ring. The relay never decodes a
batch, and since every channel is one ordered (s, d) pair, in-band
watermarks and end-of-input markers keep their place behind the data.

Flow control end to end: link credit is per (s, d) channel and is granted
back only once a frame is in d's ring. A frame that finds d's ring full
waits in the relay (at most a window per channel) and other channels go
on; a channel out of credit stops the relay taking frames from s's ring,
which fills, which pauses s's sources: bounded memory everywhere, and no
kernel ever stops draining its inputs, so no cycle of waits can form.

Ending: when the launcher hands its kernels' results over (every local
kernel finished), a relay sends them to process 0 (`RESULTS`). Process 0
gathers every process's results, then sends `DONE`; each process answers
`BYE` on every link and closes them. A link that ends any other way, before
`DONE` (a dead process, a cut cable caught by the heartbeat, a peer that
failed), ends the run with `PeerLost`, naming the process and its address.

Start-up agreement (with `agreement=(offer, decide)`): once every link is
up, each process sends its `offer` (bytes) to process 0, which calls
`decide({process: offer})` and sends the decision (bytes) to everyone
(each in frames of 1 MiB: a listing of many files is larger than a frame);
`on_linked(decision)` then lets the kernels start. A `decide` that raises
refuses the run on every process with its exception. (A cluster with a
`state_dir` agrees this way on the epoch it resumes from, and one reading
files, bounded, on process 0's listing of them: kernel/execution/_listings.py.)

Messages between launchers (`send_message(process, body)`, delivered to
`on_message(process, body)` there: a cluster's epochs, durable here,
complete everywhere) travel in order on the relays' own channel, never
waiting behind the kernels' data (their channels have credit of their own).

Trust: peers are authenticated by the shared secret; an authenticated peer's
results are unpickled, as the codec unpickles records it cannot carry
otherwise. The secret is the trust boundary.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import pickle
import socket
import ssl
from dataclasses import dataclass, field

from ._causes import dial_failure_said
from ._environment import heartbeat_from_environment
from ._links import (
    FRAME,
    AuthenticationFailed,
    Link,
    LinkError,
    LinkMismatch,
    LinkRefused,
    LinkServer,
    NotAKernelServer,
    TLSFailed,
    connect,
    dial,
)
from ._tls_contexts import context_for
from ._tls_keys import load_key_pair
from ._transport import ROUTE
from .shm import Doorbell, SpscRing, full_fence

log = logging.getLogger("kernel.links")

CONTROL = 0xFFFF_FFFF  # the relays' own link channel
KIND_DATA = 1
KIND_RESULTS = 2  # a chunk of the pickled results of a process's kernels
KIND_RESULTS_END = 3  # the last chunk
KIND_DONE = 4  # from process 0: every kernel of the cluster finished
KIND_BYE = 5  # the sender closes this link on purpose
KIND_ABORT = 6  # the sender's process failed; body: its error, as text or JSON (`_abort_body`)
KIND_MESSAGE = 7  # between the processes' launchers (epochs); body: opaque bytes
KIND_AGREE = 8  # start-up agreement: a process's offer to process 0, or its decision
KIND_REFUSE = 9  # from process 0: the agreement failed; body: the pickled exception
# a piece of an offer or a decision; its last piece comes as KIND_AGREE (an
# agreement carries a bounded from_files' listing: more than a link's largest
# frame, 16 MiB, for a million files, and the links broke at start-up)
KIND_AGREE_PART = 10
_RESULTS_CHUNK = 1 << 20  # (an agreement's pieces too)
_FRAMES_PER_WAKE = 64  # frames a pump forwards before letting the loop run
_CLOSE_TIMEOUT = 5.0
# seconds each peer that never connected is dialled for (one try), once the
# start-up timeout has passed, to hear why (`_linked_elsewhere`): one that
# accepts and never answers costs the failing process this long more
_ASK_MISSING = 1.0
# Start-up, for a process whose port was held for it by its executor (`listen_fd`:
# a job of the system, every process's port prepared before any started, which the
# executor says, `ClusterPlan.peers_held`): every
# PEER_PROBE_EVERY seconds each peer not yet linked is connected to (a bare TCP
# connect, closed at once). Its port listened from before this process started
# (its executor's, then its process's), so a refusal on each of its addresses says
# its process has ended: this one gives up at once (`_ended_peers`). It waited for
# it until its start-up timeout (30 s), and its job's restart with it (the
# coordinator's LOSS_HOLD, 5 s, its executor having reported the peer's exit).
# (Over TLS as over plain links: a probe sends nothing, which a TLS port lets go
# in silence, as a plain one does; a TLS job waited out the hold before.)
PEER_PROBE_EVERY = 0.25
_PROBE_TIMEOUT = 1.0  # seconds a probe's connect may take (no answer: nothing learnt)


class PeerLost(LinkError):
    """A peer process went away before the run finished."""

    def __init__(self, process: int, address: str, why: str, kernel: int | None = None) -> None:
        super().__init__(self._describe(process, address, why))
        self.process = process
        self.address = address
        self.why = why
        self.kernel = kernel  # (the peer's kernel, where it runs one: `_peer_kernel`)

    def __reduce__(self):  # crosses from the relay process to its launcher
        return type(self), (self.process, self.address, self.why, self.kernel)

    @staticmethod
    def _describe(process: int, address: str, why: str) -> str:
        return f"lost process {process} ({address}): {why}"


class PeerFailed(PeerLost):
    """A peer process failed and said why (a kernel's error there), and,
    where it knew them, the index of the kernel that failed and the step
    (`kernel`, `step`: a `--log-format json` error's fields, which the
    process of a cluster that hears of it rather than failing itself carries
    too: on one core a process, kernel 1's failure came to process 0 with
    neither)."""

    def __init__(self, process: int, address: str, why: str, kernel: int | None = None,
                 step: str | None = None) -> None:
        super().__init__(process, address, why, kernel)
        self.step = step

    def __reduce__(self):  # crosses from the relay process to its launcher
        return type(self), (self.process, self.address, self.why, self.kernel, self.step)

    @staticmethod
    def _describe(process: int, address: str, why: str) -> str:
        return f"process {process} ({address}) failed: {why}"


class ListenFailed(LinkError):
    """This process could not listen on its own port (taken by another
    program, not an address of this machine): `port` and `errno` let the
    CLI say who holds it and what to do (kernel/cli/_resource_managers.py)."""

    def __init__(self, message: str, port: int, errno: int | None) -> None:
        super().__init__(message)
        self.port, self.errno = port, errno

    def __reduce__(self):  # crosses from the relay process to its launcher
        return type(self), (self.args[0], self.port, self.errno)


class _Unreachable(LinkError):
    """A lower-numbered peer not reached within the start-up timeout
    (`LinkRelay._dial`): its words kept apart, so that several such peers,
    their dials ending together at the shared deadline, are named in one
    error (`_dialled`)."""

    def __init__(self, peer: int, url: str, timeout: float, why: str) -> None:
        super().__init__(f"could not reach process {peer} at {url} within {timeout:g} s: {why}")
        self.peer, self.url, self.timeout, self.why = peer, url, timeout, why


class _Aborted(Exception):
    """This process failed; the relay tells the peers and stops (with the
    kernel that failed and its step, where known: `PeerFailed`)."""

    def __init__(self, why: str, kernel: int | None = None, step: str | None = None) -> None:
        super().__init__(why)
        self.kernel, self.step = kernel, step


def _abort_body(why: str, kernel: int | None, step: str | None) -> bytes:
    """An ABORT's body: the error's text, or, with the kernel or the step
    known, a JSON object of the three (`_abort_said` reads either)."""
    # (a lone surrogate, a file name not in UTF-8 as Python decodes it, written as
    # `\udcff`, as the failing process prints it: plain encode() raised, the peers were
    # never told, and each said only `lost process 1: it closed the link`)
    said = why.encode(errors="backslashreplace")[:65536]
    if kernel is None and step is None:
        return said
    why = said.decode(errors="ignore")
    return json.dumps({"why": why, "kernel": kernel, "step": step[:1024] if step else step}).encode()


def _abort_said(body: bytes) -> tuple[str, int | None, str | None]:
    """(why, kernel, step) of an ABORT's body (`_abort_body`)."""
    text = body.decode(errors="replace")
    if text.startswith("{"):
        try:
            said = json.loads(text)
        except ValueError:
            said = None
        if isinstance(said, dict) and isinstance(said.get("why"), str):
            kernel, step = said.get("kernel"), said.get("step")
            return (said["why"], kernel if isinstance(kernel, int) and not isinstance(kernel, bool) else None,
                    step if isinstance(step, str) else None)
    return text, None, None


def _peer_kernel(plan, peer: int) -> int | None:
    """The index of `peer`'s kernel where it runs one (one core a process:
    process N runs kernel N); None where it runs several, none of which is
    the one to name."""
    return peer * plan.cores if plan.cores == 1 else None


def _naming(error: LinkError, kernel: int | None) -> LinkError:
    error.kernel = kernel
    return error


@dataclass
class TLSFiles:
    """Paths for TLS on the links: this process's certificate and key
    (presented as server and as client), and the CA that signs the peers'
    (None: the system's trusted CAs, and no client certificates asked). An
    encrypted key's passphrase is KERNEL_TLS_KEY_PASSPHRASE's (`_tls_keys`)."""

    cert: str
    key: str
    ca: str | None = None

    def server_context(self) -> ssl.SSLContext:
        """The context a server presents (made once while the files are
        unchanged: `_tls_contexts`)."""
        return context_for("server", (self.cert, self.key, self.ca), self._new_server_context)

    def client_context(self) -> ssl.SSLContext:
        """The context a dial presents (made once while the files are
        unchanged: without a CA, each dial loaded the system's, ~85 ms)."""
        return context_for("client", (self.cert, self.key, self.ca), self._new_client_context)

    def _new_server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        load_key_pair(context, self.cert, self.key)
        if self.ca is not None:
            context.load_verify_locations(self.ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _new_client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca)
        load_key_pair(context, self.cert, self.key)
        return context


@dataclass
class ClusterPlan:
    """What one process of a cluster needs to link up (plain, picklable)."""

    process: int
    addresses: list[tuple[str, int]]
    cores: int  # kernels per process
    secret: bytes = field(repr=False)
    startup_timeout: float = 30.0
    heartbeat: float = field(default_factory=heartbeat_from_environment)  # (read when planned, not at import)
    tls: TLSFiles | None = None
    meta: dict | None = None  # must be equal on every process (flow, cores)
    # A listening socket inherited for this process's own address (its
    # descriptor), served instead of binding the port anew: a job process's,
    # held by its executor from the moment it picked the port (a port picked
    # free and bound later could be taken in between by another program);
    # several descriptors, one port: localhost's addresses, 127.0.0.1 and ::1
    listen_fd: int | tuple[int, ...] | None = None
    # Every peer's port listened from before this process started (its executor's
    # word, KERNEL_PEERS_HELD: a job's ports are all prepared before any process
    # starts), so a refusal there says the peer has ended (`_ended_peers`). Not
    # so for a user's own KERNEL_LINK_FD: a peer started later refuses until then.
    peers_held: bool = False

    @property
    def listen_fds(self) -> tuple[int, ...]:
        """`listen_fd` as a tuple (empty: none handed over)."""
        if self.listen_fd is None:
            return ()
        return self.listen_fd if isinstance(self.listen_fd, tuple) else (self.listen_fd,)

    @property
    def processes(self) -> int:
        return len(self.addresses)

    @property
    def kernels(self) -> int:
        return self.cores * self.processes

    @property
    def first_kernel(self) -> int:
        return self.process * self.cores

    def kernels_of(self, process: int) -> range:
        return range(process * self.cores, (process + 1) * self.cores)

    def address(self, process: int) -> str:
        host, port = self.addresses[process]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def rank_on_host(self) -> int:
        """How many lower-numbered processes share this process's host (as
        written in the peers list): they pin their kernels to the first
        CPUs, this one to the next ones."""
        host = self.addresses[self.process][0]
        return sum(1 for h, _ in self.addresses[: self.process] if h == host)

    def remote_kernels(self) -> list[int]:
        mine = self.kernels_of(self.process)
        return [k for k in range(self.kernels) if k not in mine]

    def channels_with(self, peer: int) -> set[int]:
        """Link channels between this process and `peer`: every ordered pair
        of their kernels, both ways, and the relays' own."""
        total = self.kernels
        mine, theirs = self.kernels_of(self.process), self.kernels_of(peer)
        channels = {s * total + d for s in mine for d in theirs}
        channels |= {s * total + d for s in theirs for d in mine}
        channels.add(CONTROL)
        return channels


class LinkRelay:
    """The relay of one process: links to every other process, and the
    rings of its local kernels (`ends[k] = (to_relay, from_relay)`)."""

    def __init__(self, plan: ClusterPlan, ends: list[tuple[SpscRing, SpscRing]],
                 kernel_bells: list[Doorbell], bell: Doorbell, on_linked=None, agreement=None,
                 on_message=None, report=None, report_interval: float = 0.1) -> None:
        self.plan = plan
        self.on_linked = on_linked  # called once every link is up (and agreed)
        self.agreement = agreement  # (offer, decide) or None
        self.on_message = on_message  # (process, body): a launcher's message for ours
        self._offers: dict[int, bytes] = {}
        self._refusal: bytes | None = None  # process 0's refusal of the agreement, as it came
        self._outbox: asyncio.Queue | None = None
        # report(sent_bytes()) every report_interval and once at the end (metrics)
        self.report = report
        self.report_interval = report_interval
        self.ends = ends
        self.kernel_bells = kernel_bells
        self.bell = bell
        self.links: dict[int, Link] = {}
        self._pending: list[list] = [[] for _ in ends]  # inbound frames waiting for ring space
        self._wakeups: list[asyncio.Event] = []
        self._results: dict[int, object] = {}
        self._chunks: dict[int, list[bytes]] = {}
        self._agree_parts: dict[int, list[bytes]] = {}  # an offer's or decision's pieces so far, by peer
        self._graceful: set[int] = set()  # peers that said BYE or DONE
        self._finishing = False
        self._tasks: list[asyncio.Task] = []
        self._sessions: list = []
        self._server: LinkServer | None = None
        # this process's token in each handshake: a peer asked, at our start-up timeout, why it
        # did not connect, as its own link to us completed, tells us from a twin (`LinkServer.dialled`)
        self._instance = os.urandom(16).hex()

    # -- the whole life of a relay ---------------------------------------------------

    async def run(self, local_results) -> list | None:
        """Link up, relay until every kernel everywhere finished, and return
        every kernel's results (process 0) or None (the others).
        `local_results` is an awaitable of this process's `{kernel: results}`."""
        loop = asyncio.get_running_loop()
        self._failure = loop.create_future()
        self._all_results = loop.create_future()
        self._done = loop.create_future()
        self._all_offers = loop.create_future()
        self._decision = loop.create_future()
        self._outbox = asyncio.Queue()
        self._wakeups = [asyncio.Event() for _ in self.ends]
        self.bell.park()  # the relay always counts as parked: every push rings it
        loop.add_reader(self.bell.fd, self._on_bell)
        try:
            await self._link_up()
            decision = None if self.agreement is None else await self._agree()
            if self.on_linked is not None:
                self.on_linked() if self.agreement is None else self.on_linked(decision)
            self._tasks.append(asyncio.ensure_future(self._send_messages()))
            self._tasks += [asyncio.ensure_future(self._pump(k)) for k in range(len(self.ends))]
            if self.report is not None:
                self._tasks.append(asyncio.ensure_future(self._report_every()))
            local = await self._until(asyncio.ensure_future(local_results))
            if self.plan.process == 0:
                self._add_results(local)
                await self._until(self._all_results)
                self._finishing = True
                for link in self.links.values():
                    await self._send_quietly(link, KIND_DONE)
                await self._links_closed()
                return [self._results[k] for k in range(self.plan.kernels)]
            await self._send_results(local)
            await self._until(self._done)
            self._finishing = True
            for link in self.links.values():
                await self._send_quietly(link, KIND_BYE)
            return None
        except _Aborted as exc:  # a kernel of ours failed: the launcher reports it
            await self._tell_peers(str(exc), exc.kernel, exc.step)
            return None
        except LinkError as exc:  # a peer lost or failed: the others hear it from us too
            await self._tell_peers(str(exc), getattr(exc, "kernel", None), getattr(exc, "step", None))
            raise
        finally:
            self._finishing = True
            loop.remove_reader(self.bell.fd)
            if self._refusal is not None:
                # Process 0 refused the agreement: the other peers hear it from us
                # too, before our link to them closes. Otherwise, of three or
                # more, one could see this link close before process 0's refusal
                # came, and report a lost process instead of the refusal.
                others = [link for p, link in self.links.items() if p != 0 and not link.closed.done()]
                await self._refuse_all(others, self._refusal)
            await self._close()
            if self.report is not None:
                self.report(self.sent_bytes())

    def sent_bytes(self) -> dict[str, int]:
        """Bytes of frames sent on each link so far, by peer process."""
        return {str(peer): link.sent_bytes for peer, link in sorted(self.links.items())}

    async def _report_every(self) -> None:
        while True:
            self.report(self.sent_bytes())
            await asyncio.sleep(self.report_interval)

    async def _until(self, future):
        """Wait for `future`, unless the run fails first (then raise that)."""
        await asyncio.wait({future, self._failure}, return_when=asyncio.FIRST_COMPLETED)
        if self._failure.done():
            raise self._failure.result()
        return future.result()

    def abort(self, why: str, kernel: int | None = None, step: str | None = None) -> None:
        """This process failed (`why`; in `kernel`, at `step`, where known):
        tell the peers, then stop."""
        self._fail(_Aborted(why, kernel, step))

    def _fail(self, error: BaseException) -> None:
        if not self._failure.done():
            self._failure.set_result(error)

    # -- start-up -------------------------------------------------------------------------

    async def _link_up(self) -> None:
        """Serve our address, dial the lower-numbered processes, accept the
        higher-numbered ones, all within the start-up timeout."""
        plan = self.plan
        loop = asyncio.get_running_loop()
        deadline = loop.time() + plan.startup_timeout
        higher = set(range(plan.process + 1, plan.processes))
        all_accepted = loop.create_future()

        def on_link(link: Link) -> None:
            self._add_link(link)
            if higher <= self.links.keys() and not all_accepted.done():
                all_accepted.set_result(None)

        host, port = plan.addresses[plan.process]
        server = self._server = LinkServer(
            _listen_host(host), port, plan.secret, plan.process, plan.channels_with, self._on_frame_for,
            on_link=on_link, ssl_context=plan.tls and plan.tls.server_context(),
            heartbeat=plan.heartbeat, meta=plan.meta, expected=higher, on_mismatch=self._fail,
            sock=_inherited_listeners(plan, port) or None, instance=self._instance)
        try:
            await server.start()
        except OSError as exc:
            raise ListenFailed(f"process {plan.process} cannot listen on {plan.address(plan.process)}: "
                               f"{exc.strerror or exc}", port, exc.errno) from None
        if not higher:
            all_accepted.set_result(None)
        scheme = "https" if plan.tls else "http"
        dials = []
        for peer in range(plan.process):
            url = f"{scheme}://{plan.address(peer)}"  # (address() brackets an IPv6 host)
            dials.append(asyncio.ensure_future(self._dial(peer, url, deadline)))
        dialled = asyncio.ensure_future(self._dialled(dials))
        # (its peers' ports held since before it started: PEER_PROBE_EVERY. Over TLS too: a
        # probe sends nothing, and a connection closed before its first byte begins no TLS
        # handshake there, no refused link in the peer's log: `_links._TLSFront`)
        # (and only where every peer's port is held so, `peers_held`: a peer of a user's own
        # KERNEL_LINK_FD, not started yet, refused, and this process gave up on it at once)
        watch = [asyncio.ensure_future(self._ended_peers())] if plan.peers_held and plan.listen_fds else []
        try:
            await self._until(dialled)
            remaining = max(0.0, deadline - loop.time())
            try:
                await asyncio.wait_for(self._until(all_accepted), remaining)
            except TimeoutError:
                missing = sorted(higher - self.links.keys())
                twin = await self._linked_elsewhere(missing, scheme)
                if twin is not None:
                    raise LinkError(twin) from None
                # (those that linked us as we asked: taken, the start goes on; they were
                # told "did not connect", then lost us, each run ended)
                missing = sorted(higher - self.links.keys())
                if not missing:
                    return
                names = ", ".join(f"process {p} ({plan.address(p)})" for p in missing)
                why = f"{names} did not connect within {plan.startup_timeout:g} s"
                refused = list(dict.fromkeys(str(e) for e in server.failures))  # (a peer retrying: once)
                if refused:
                    why += "; refused meanwhile: " + "; ".join(refused[-3:])
                # (one peer missing: its kernel, as for a peer lost; its pipeline file may have
                # raised at import, before it could link to tell us)
                raise _naming(LinkError(why), _peer_kernel(plan, missing[0]) if len(missing) == 1 else None) \
                    from None
        finally:
            for task in (*dials, dialled, *watch):
                task.cancel()

    async def _ended_peers(self) -> None:
        """During start-up: give up at once when a peer not yet linked has
        ended, its port refusing connections (PEER_PROBE_EVERY)."""
        plan = self.plan
        while True:
            await asyncio.sleep(PEER_PROBE_EVERY)
            for peer in range(plan.processes):
                if peer == plan.process or peer in self.links:
                    continue
                if await _refuses(*plan.addresses[peer]):
                    self._fail(_naming(LinkError(
                        f"no peer {peer}: process {peer} ({plan.address(peer)}) refuses connections on the "
                        "port its executor held for it since before this process started: it has ended"),
                        _peer_kernel(plan, peer)))
                    return

    @staticmethod
    async def _dialled(dials: list[asyncio.Future]) -> None:
        """Wait for every dial to a lower-numbered peer, raising the first
        failure at once, except that one peer not reached waits for the
        others, which share its deadline, to name every peer not reached:
        it named only the first, the others found one run at a time."""
        try:
            await asyncio.gather(*dials)
        except _Unreachable as first:
            ended = await asyncio.gather(*dials, return_exceptions=True)
            unreached = [e for e in ended if isinstance(e, _Unreachable)]
            if len(unreached) < 2:  # (a LinkError as before: the error crosses to the supervisor)
                raise _naming(LinkError(str(first)), first.kernel) from None
            names = ", ".join(f"process {e.peer} at {e.url}" for e in unreached)
            whys = "; ".join(f"process {e.peer}: {e.why}" for e in unreached)
            raise LinkError(f"could not reach {names} within {first.timeout:g} s ({whys})") from None

    async def _linked_elsewhere(self, missing: list[int], scheme: str) -> str | None:
        """Why the `missing` higher-numbered peers never connected, where one
        of them says so: each is dialled once, as a lower-numbered process
        never is. One that linked another process of our id (a twin of ours,
        on another machine, or another --peers list) refuses us naming it,
        and ends its run as a process dialled by a twin does (TwinProcess):
        a twin of process 0, dialled by no one, only timed out, saying
        `process 1 did not connect`, while the run went on with the other."""
        plan = self.plan

        async def ask(peer: int) -> str | None:
            # One try, not retried: a peer merely late, not yet listening now, that
            # listened within the dial's second and linked us at once was dialled
            # again, met "already linked there", and both ends said a twin claimed
            # process 0 (a review: a process 1 started 0.3 to 1 s too late, each time)
            try:
                ws, _, _, session = await connect(
                    f"{scheme}://{plan.address(peer)}", plan.secret, plan.process, timeout=_ASK_MISSING,
                    ssl=plan.tls.client_context() if plan.tls else True, meta=plan.meta, retry=False,
                    instance=self._instance)
            except LinkError as exc:
                # (its refusal as "not a peer" may be its own dial to us not yet done: no twin)
                said = str(exc)
                return said if "is already linked there" in said else None
            except (OSError, TimeoutError):
                return None
            await ws.close()  # (taken after all: no word about why it did not connect)
            await session.close()
            return None

        # (one that linked us meanwhile, its dial under way as we asked, knows our
        # question by our token and refuses it as its own link: no twin, nothing to filter)
        said = await asyncio.gather(*(ask(peer) for peer in missing))
        return next((why for why in said if why is not None), None)

    async def _dial(self, peer: int, url: str, deadline: float) -> None:
        plan = self.plan
        timeout = max(0.1, deadline - asyncio.get_running_loop().time())
        try:
            link, session = await dial(
                url, plan.secret, plan.process, plan.channels_with(peer), self._on_frame_for(peer),
                timeout=timeout, ssl=plan.tls.client_context() if plan.tls else True,
                heartbeat=plan.heartbeat, meta=plan.meta, instance=self._instance)
        except LinkError as exc:
            if isinstance(exc, NotAKernelServer):  # final, at once: not "could not reach ... within 30 s"
                raise LinkError(f"process {peer} at {exc}: another program listens there, or --peers "
                                "gives the wrong port") from None
            unreachable = exc.__cause__
            if unreachable is None and isinstance(exc, LinkRefused):  # reached, then the handshake failed
                # (it said `error: http://10.0.0.1:7000 did not finish the handshake in time`,
                # naming no process)
                raise LinkError(f"process {peer} at {exc}") from None
            if unreachable is None or isinstance(exc, (AuthenticationFailed, LinkMismatch)):
                raise
            if isinstance(exc, TLSFailed):  # final too: its own words, not aiohttp's
                raise LinkError(f"process {peer} at {exc}") from None
            # A server that closes every try before answering: a TLS port, to a
            # process without TLS, says no more (it said "Server disconnected");
            # also where that server ended before the last try ("Connect call failed")
            hint = ""
            if (isinstance(exc, LinkRefused) or getattr(exc, "refused_once", False)) and not plan.tls:
                hint = (" (it closed the connection before answering: TLS on there and off here, or too "
                        "many connections pending there?)")
            why = dial_failure_said(unreachable)  # (a TLS dial: aiohttp names its SSLContext by its repr)
            # (its kernel, as for a higher peer that never linked us: its pipeline file
            # may have raised at import, before it listened)
            raise _naming(_Unreachable(peer, url, plan.startup_timeout, f"{why}{hint}"),
                          _peer_kernel(plan, peer)) from None
        self._sessions.append(session)
        if link.peer != peer:
            error = LinkError(f"{plan.address(peer)} answered as process {link.peer}, not {peer}: "
                              "check the order of --peers")
            # it is told why (else it said only "lost process 2: it closed the link (code 1000)")
            await self._send_quietly(link, KIND_ABORT, str(error).encode())
            await link.close()
            raise error
        self._add_link(link)
        if self._server is not None:  # (another process of its id dialling us is a twin: not this one)
            self._server.dialled[peer] = (plan.addresses[peer][0], getattr(link.ws, "peer_instance", None))
        self._tasks.append(asyncio.ensure_future(self._read(link)))

    def _add_link(self, link: Link) -> None:
        self.links[link.peer] = link
        link.closed.add_done_callback(lambda _: self._link_ended(link))

    async def _read(self, link: Link) -> None:
        try:
            await link.run()
        except LinkError:
            pass  # recorded on the link; _link_ended reports it

    def _link_ended(self, link: Link) -> None:
        if self._finishing or link.peer in self._graceful:
            return
        if link.error is not None:
            why = str(link.error)
        elif link.ws.close_code in (None, 1006):
            why = "the connection broke"
        else:
            why = f"it closed the link (code {link.ws.close_code})"
        if link.close_reason:  # the peer's word: "no heartbeat: ...", the one frozen was this process
            why += f" ({link.close_reason})"
        self._fail(PeerLost(link.peer, self.plan.address(link.peer), why + " before the run finished",
                            _peer_kernel(self.plan, link.peer)))

    # -- relaying -----------------------------------------------------------------------

    def _on_bell(self) -> None:
        try:
            os.eventfd_read(self.bell.fd)
        except BlockingIOError:
            pass
        for event in self._wakeups:
            event.set()
        self._flush_pending()

    async def _pump(self, k: int) -> None:
        """Forward kernel k's outgoing frames to the links."""
        ring = self.ends[k][0]
        wakeup = self._wakeups[k]
        producer = self.kernel_bells[k]
        source = self.plan.first_kernel + k
        total = self.plan.kernels
        cores = self.plan.cores
        links = self.links
        while True:
            for _ in range(_FRAMES_PER_WAKE):
                frame = ring.pop()
                if frame is None:
                    break
                (dest,) = ROUTE.unpack_from(frame)
                data = bytes(frame[ROUTE.size :])
                ring.release()
                full_fence()  # our head store before the producer's flag load (net/shm.py)
                if ring.producer_waiting():
                    ring.clear_producer_waiting()
                    producer.ring()
                try:
                    await links[dest // cores].send(source * total + dest, KIND_DATA, data)
                except (LinkError, ConnectionError, RuntimeError):
                    return  # the link broke: _link_ended reports it
            else:
                await asyncio.sleep(0)  # a long burst: let the links read
                continue
            # Nothing to forward. A pop that stepped over a wrap marker freed
            # space without a frame: a kernel waiting for it must hear of it.
            full_fence()
            if ring.producer_waiting():
                ring.clear_producer_waiting()
                producer.ring()
            wakeup.clear()
            if ring.is_empty():
                await wakeup.wait()

    def _on_frame_for(self, peer: int):
        total = self.plan.kernels
        first = self.plan.first_kernel

        def on_frame(channel: int, kind: int, body) -> None:
            if channel == CONTROL:
                self._on_control(peer, kind, body)
                return
            source, dest = divmod(channel, total)
            k = dest - first
            pending = self._pending[k]
            link = self.links[peer]
            if not pending and self.ends[k][1].push2(ROUTE.pack(source), body):
                link.consumed(channel, FRAME.size + len(body))
            else:
                pending.append((source, channel, link, body))
            # (also on a refusal: it may have published a wrap marker that
            # only the kernel stepping over it turns into free space)
            self.kernel_bells[k].ring()

        return on_frame

    def _flush_pending(self) -> None:
        """Push inbound frames that waited for ring space (the kernel rang
        our bell when it freed some)."""
        for k, pending in enumerate(self._pending):
            if not pending:
                continue
            ring = self.ends[k][1]
            pushed = 0
            for source, channel, link, body in pending:
                if not ring.push2(ROUTE.pack(source), body):
                    break
                link.consumed(channel, FRAME.size + len(body))
                pushed += 1
            del pending[:pushed]
            self.kernel_bells[k].ring()  # pushed, or refused (a wrap marker)

    # -- start-up agreement, launchers' messages -------------------------------------------

    async def _agree(self) -> bytes:
        offer, decide = self.agreement
        if self.plan.process != 0:
            await self._send_in_pieces(self.links[0], KIND_AGREE_PART, KIND_AGREE, offer)
            return await self._until(self._decision)
        self._add_offer(0, offer)
        offers = await self._until(self._all_offers)
        try:
            decision = decide(offers)
        except Exception as exc:  # every process ends with this error
            blob = pickle.dumps(exc, protocol=5)
            await self._refuse_all(list(self.links.values()), blob)
            self._finishing = True
            raise
        for link in self.links.values():
            await self._send_in_pieces(link, KIND_AGREE_PART, KIND_AGREE, decision)
        return decision

    def _add_offer(self, process: int, offer: bytes) -> None:
        self._offers[process] = offer
        if len(self._offers) == self.plan.processes and not self._all_offers.done():
            self._all_offers.set_result(dict(self._offers))

    def send_message(self, process: int, body: bytes) -> None:
        """A message from our launcher for `process`'s (ours: back to it)."""
        if process == self.plan.process:
            self.on_message(process, body)
        else:
            self._outbox.put_nowait((process, body))

    async def _send_messages(self) -> None:
        """One sender, so messages to a process keep their order."""
        while True:
            process, body = await self._outbox.get()
            try:
                await self.links[process].send(CONTROL, KIND_MESSAGE, body)
            except (LinkError, ConnectionError, RuntimeError):
                continue  # the link broke: _link_ended reports it

    # -- the relays' own messages --------------------------------------------------------

    def _on_control(self, peer: int, kind: int, body) -> None:
        self.links[peer].consumed(CONTROL, FRAME.size + len(body))
        if kind in (KIND_RESULTS, KIND_RESULTS_END):
            self._chunks.setdefault(peer, []).append(bytes(body))
            if kind == KIND_RESULTS_END:
                self._add_results(pickle.loads(b"".join(self._chunks.pop(peer))))
        elif kind == KIND_DONE:
            self._graceful.add(peer)
            self.links[peer].goodbye = True
            if not self._done.done():
                self._done.set_result(None)
        elif kind == KIND_BYE:
            self._graceful.add(peer)
            self.links[peer].goodbye = True
        elif kind == KIND_MESSAGE:
            self.on_message(peer, bytes(body))
        elif kind == KIND_AGREE_PART:
            self._agree_parts.setdefault(peer, []).append(bytes(body))
        elif kind == KIND_AGREE:
            body = b"".join([*self._agree_parts.pop(peer, ()), body])
            if self.plan.process == 0:
                self._add_offer(peer, bytes(body))
            elif not self._decision.done():
                self._decision.set_result(bytes(body))
        elif kind == KIND_REFUSE:
            self._graceful.add(peer)
            self.links[peer].goodbye = True  # (as for ABORT: the run ends, its link's close no news)
            if self._refusal is None:  # passed on before this process closes its links (`run`)
                self._refusal = bytes(body)
            self._fail(pickle.loads(bytes(body)))
        elif kind == KIND_ABORT:
            # (its link's end, however it comes, is no news: with TLS it came as 1006, each logged)
            self.links[peer].goodbye = True
            # (the kernel it says, only: one passing on another peer's loss names that one's)
            self._fail(PeerFailed(peer, self.plan.address(peer), *_abort_said(bytes(body))))

    def _add_results(self, results: dict) -> None:
        self._results.update(results)
        if len(self._results) == self.plan.kernels and not self._all_results.done():
            self._all_results.set_result(None)

    async def _send_results(self, results: dict) -> None:
        await self._send_in_pieces(self.links[0], KIND_RESULTS, KIND_RESULTS_END,
                                   pickle.dumps(results, protocol=5))

    async def _send_in_pieces(self, link: Link, kind: int, last_kind: int, blob: bytes) -> None:
        """`blob` in frames of _RESULTS_CHUNK bytes at most (a link refuses a
        frame past its largest), the last one of `last_kind`."""
        chunks = [blob[i : i + _RESULTS_CHUNK] for i in range(0, len(blob), _RESULTS_CHUNK)] or [b""]
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            await self._until(asyncio.ensure_future(link.send(CONTROL, last_kind if last else kind, chunk)))

    async def _tell_peers(self, why: str, kernel: int | None = None, step: str | None = None) -> None:
        """This process stops: every peer still linked is told why (ABORT),
        so each reports the first cause, not only a link that went away
        (and where: the kernel and the step, where known)."""
        self._finishing = True
        body = _abort_body(why, kernel, step)
        await asyncio.gather(*(self._send_quietly(link, KIND_ABORT, body)
                               for link in self.links.values() if not link.closed.done()))

    async def _refuse_all(self, links: list[Link], refusal: bytes) -> None:
        """Tell `links` the agreement failed (REFUSE): each run ends, and how
        each link then closes is no news (over TLS a peer's process may exit
        before its close frame is out: `link to process 1 closed: code 1006;
        closing that connection` was logged beside the refusal's error)."""
        for link in links:
            link.goodbye = True
        await asyncio.gather(*(self._send_quietly(link, KIND_REFUSE, refusal) for link in links))

    async def _send_quietly(self, link: Link, kind: int, body: bytes = b"") -> None:
        try:
            await asyncio.wait_for(link.send(CONTROL, kind, body), _CLOSE_TIMEOUT)
        except (LinkError, ConnectionError, RuntimeError, TimeoutError):
            pass  # it is going away anyway

    async def _links_closed(self) -> None:
        """Process 0: wait (a little) for the others to close their links."""
        waits = [link.closed for link in self.links.values()]
        if waits:
            await asyncio.wait(waits, timeout=_CLOSE_TIMEOUT)

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for link in list(self.links.values()):
            try:
                await asyncio.wait_for(link.close(), 1.0)
            except Exception:
                pass
        for session in self._sessions:
            await session.close()
        if self._server is not None:
            await self._server.stop()


__all__ = ["AuthenticationFailed", "ClusterPlan", "LinkError", "LinkMismatch", "LinkRelay", "PeerFailed",
           "PeerLost", "TLSFiles"]


async def _refuses(host: str, port: int) -> bool:
    """Whether every address of `host` refuses a connection on `port` (none
    accepted, none unanswered or unreachable: those say nothing)."""
    loop = asyncio.get_running_loop()
    try:
        found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for address in dict.fromkeys(info[4][0] for info in found):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), _PROBE_TIMEOUT)
        except ConnectionRefusedError:
            continue
        except (OSError, TimeoutError):
            return False
        writer.close()
        return False
    return bool(found)


def _inherited_listeners(plan: ClusterPlan, port: int) -> list[socket.socket]:
    """The listening sockets this process was handed (`plan.listen_fd`),
    each served once: a KERNEL_LINK_FD naming one twice (`5,5`, or a copy of
    it) was served twice, and the run failed with uvloop's RuntimeError, a
    traceback (`unable to perform operation on <TCPServer closed=True>`)."""
    socks: list[socket.socket] = []
    try:
        for fd in plan.listen_fds:
            sock = _inherited_listener(plan, port, fd)
            if any(held.getsockname() == sock.getsockname() for held in socks):
                sock.detach()  # (the same socket: the first serves it)
                continue
            socks.append(sock)
    except BaseException:
        for sock in socks:
            sock.detach()
        raise
    return socks


def _inherited_listener(plan: ClusterPlan, port: int, fd: int) -> socket.socket:
    """A listening socket this process was handed (`plan.listen_fd`),
    checked to be a TCP socket on its own port: another would take links
    meant for an address the peers do not dial. One that is not is left
    open (not ours to close: a user's KERNEL_LINK_FD may name stdout)."""
    handed = f"process {plan.process}: the listening socket handed over (descriptor {fd})"
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ListenFailed(f"{handed} cannot be used: {exc.strerror or exc}", port, exc.errno) from None
    try:
        # (a Unix socket's name is a string: its [1] an IndexError, a traceback)
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
            raise ListenFailed(f"{handed} is not a TCP socket ({sock.family.name}, {sock.type.name})",
                               port, None)
        bound = sock.getsockname()[1]
        if bound != port:
            raise ListenFailed(f"{handed} is on port {bound}, not {plan.address(plan.process)}'s", port, None)
    except OSError as exc:
        sock.detach()
        raise ListenFailed(f"{handed} cannot be used: {exc.strerror or exc}", port, exc.errno) from None
    except BaseException:
        sock.detach()
        raise
    return sock


def _listen_host(host: str) -> str | None:
    """Where a process listens for its peers: the address its entry in the
    peers gives, where that is an IP address (or localhost); every
    interface (None) where it is another host name. The peers resolve a
    name on their machines, this process on its own, and the two may
    differ: Debian's /etc/hosts maps the machine's own name to 127.0.1.1,
    and a Slurm node's name need not be the address its peers reach (its
    NodeAddr): listening on what the name resolved to here left the peers
    unable to connect (`Connect call failed`)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host if host.lower().rstrip(".") == "localhost" else None
    return host
