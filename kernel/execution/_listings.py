"""One listing of a bounded run's input for all its kernels.

A bounded `from_files` cuts the files among the kernels by bytes, from
their sizes when they were listed. Each kernel listed them itself at its
first poll, so a file appended to while the kernels started (today's log)
was cut at other bytes by each: the lines between the cuts were read twice
or not at all (a 3-kernel run lost 2,000 lines of a growing log). Now a
step that lists its input (`Node.input_listing`) lists it once a run:

* on one machine, the first kernel to plan the step lists it and posts it
  on this `ListingBoard`, made by the launcher before it forks; the other
  kernels take it from there (the launcher itself may not have the flow:
  the command line's kernels each import the pipeline file);
* in a cluster, each launcher lists before it forks (it has the flow: its
  fingerprint), the processes agree at start-up on process 0's listing
  (the relays' agreement, `net/_relay.py`, beside the snapshots' epoch),
  and each relay posts it on its board before its kernels start.

So a file grown meanwhile is read to the size it had in the one listing,
each line of that prefix once, as a resumed run reads it (its snapshots
hold the plan made from it).
"""

from __future__ import annotations

import fcntl
import os
import pickle
import zlib

# this kernel process's board (`use_here`: set by `_kernel_main` after the fork)
_here: ListingBoard | None = None


def use_here(board: ListingBoard | None) -> None:
    global _here
    _here = board


def board_here() -> ListingBoard | None:
    """The board of the run this kernel process runs (None: a kernel of its
    own thread, which lists for itself)."""
    return _here


class ListingBoard:
    """Listings by step label, in a memory file inherited by the kernels
    (no name on any filesystem; made after the launcher has noted the
    application's files, so no kernel takes it for one of them). A POSIX
    record lock (per process, unlike flock, whose lock a forked child
    shares) makes the first kernel's look-and-list one step."""

    def __init__(self) -> None:
        self._fd = os.memfd_create("kernel-listings")  # (close-on-exec: no program a step starts has it)

    def take(self, label: str, list_input):
        """The listing posted for `label`, or `list_input()`'s, posted for the
        other kernels. Blocks while another kernel lists (one glob and stat
        of the files)."""
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            posted = self._read()
            if label not in posted:
                posted[label] = list_input()
                self._write(posted)
            return posted[label]
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def post(self, listings: dict) -> None:
        """A cluster's relay: the listings agreed on, before its kernels start."""
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            self._write({**self._read(), **listings})
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _read(self) -> dict:
        size = os.fstat(self._fd).st_size
        data = b""
        while len(data) < size:
            data += os.pread(self._fd, size - len(data), len(data))
        return pickle.loads(data) if data else {}

    def _write(self, listings: dict) -> None:
        data = memoryview(pickle.dumps(listings, protocol=5))
        os.ftruncate(self._fd, 0)
        written = 0
        while written < len(data):
            written += os.pwrite(self._fd, data[written:], written)


def listings_of(graph) -> dict:
    """Every listing step's listing, by label, taken now (a cluster's launcher)."""
    return {node.label: node.input_listing() for node in graph.nodes if node.input_listing is not None}


def agreeing_on_listings(agreement, listings: dict, process: int) -> tuple:
    """A cluster's start-up `agreement` (the snapshots' `(offer, decide,
    prepare)`, or None) that also hands every process process 0's
    `listings`: process 0's offer carries them beside its own (another
    process's, none: a listing of many files is megabytes, sent for
    nothing), and the decision (`agreed`) them beside the snapshots' own."""
    offer, decide = agreement[:2] if agreement is not None else (None, None)

    def decide_with_listings(offers: dict) -> bytes:
        unpacked = {process: _unpack(body) for process, body in offers.items()}
        decision = None if decide is None else decide({p: inner for p, (inner, _) in unpacked.items()})
        return _pack((decision, unpacked[0][1]))

    offered = _pack((offer, listings if process == 0 else None))
    return (offered, decide_with_listings, *(agreement[2:] if agreement is not None else ()))


def agreed(decision: bytes, own: dict) -> tuple:
    """(the snapshots' decision or None, process 0's listings) of an
    `agreeing_on_listings` decision; each file's inode number is this
    process's own (checked when a kernel opens it: a file replaced since),
    not process 0's, which another machine's copy of the file has not."""
    inner, listings = _unpack(decision)
    for label, listing in listings.items():
        inodes = {entry[0]: entry[2] for entry in own.get(label, ())}
        listings[label] = [(path, size, inodes.get(path), error) for path, size, _, error in listing]
    return inner, listings


def _pack(value) -> bytes:
    # (paths: a listing of many files shrinks ~6x; at level 1 in 0.07 s for
    # 200,000 files, where the default level took 0.4 s for 10% less)
    return zlib.compress(pickle.dumps(value, protocol=5), 1)


def _unpack(body: bytes):
    return pickle.loads(zlib.decompress(body))
