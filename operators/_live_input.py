"""A live stream's records, read on a thread of the kernel.

`from_iterable` over the standard input, a pipe, a FIFO or a socket's file
(`kernel.execution._standard_input.is_stream`) used to read it on the
kernel's event loop, `list(islice(it, batch_size))`: a read that waits until
a whole batch (1,024 lines) or the end has come. A slow writer's lines came
out only when it ended (`tail -f app.log | python -m kernel.run p.py`
printed nothing until 1,024 lines had come), a writer waiting for the
pipeline's answer to its line before writing the next waited for ever, and
meanwhile the loop was held: no epochs, timers, metrics, and the watchdog
reported the kernel blocked.

Here a daemon thread iterates the user's iterable (blocking there holds
nothing up) and appends its records to a list; the source takes whatever
has arrived, up to its batch size, and is idle while nothing has (as an
async source waiting for data is). A slow stream is read a record at a
time, and the thread wakes the kernel (`call_soon_threadsafe`) for the
first record after the source found none. A fast one is read in chunks
by `list.extend(islice(...))`, in C (a Python loop a record, ~110 ns, made
`cat` of a million lines through a trivial pipeline ~50% slower): a chunk
doubles while the last came at once, and is back to one record when one
waited. A record is in the list as soon as it is read, but the thread can
wake the kernel only between chunks: a stream that stalls within one (a
burst, then silence) has the idle source look again after 1, 2, 4 ... up to
100 ms. The thread pauses once `limit` records wait, until the source
has taken half of them, and reads no chunk past it, so it never reads far
ahead of the dataflow. In-memory iterables never come here.
"""

from __future__ import annotations

import asyncio
import contextvars
import fcntl
import os
import stat
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from itertools import chain, islice

from kernel.dataflow._errors import KernelError
from kernel.scheduling._signal_mask import main_thread_signals

from ._fifo_holders import fed_anew_since_taken as fifo_fed_anew_since_taken
from ._fifo_holders import note_taken as note_fifo_taken

_AT_ONCE = 0.001  # seconds: a chunk read within this came at once (the stream is fast)
_FIRST_LOOK, _LAST_LOOK = 0.001, 0.1  # seconds: an idle source's looks while a chunk is read
_LET_GO_WITHIN = 1.0  # seconds: a stopped reader of a rewound file may end within this (`_let_go_later`)
_TIOCGDEV = 0x80045432  # (Linux: the device a terminal's descriptor reads, `_terminal`)
_PTMX = os.makedev(5, 2)  # (Linux: a pseudo-terminal's master, `_terminal`)


class _EndOfInput(Exception):
    """Raised after the input's last record (`_the_end`): `extend` stops,
    having appended every record before it."""


def _the_end():
    raise _EndOfInput
    yield  # (a generator)


# Readers whose run ended before their input did, by id of the iterator
# they read: a later run over the same iterator (`sys.stdin` again) takes
# the reader over, with what it read after its run ended. (Its thread may
# still be waiting in a read; a second thread reading the same stream took
# the first line that came, and the line was lost.)
_left_over: dict[int, LiveReader] = {}
_left_over_lock = threading.Lock()

# The reader each run (by id of its kernel) reads an iterator (by id) with:
# a second source of the run over the same stream (`from_iterable(stream)`
# twice) takes from it too, rather than reading with a reader of its own.
# (Each had its own: a run ending early left both readers' records, and
# only one reader could be left over for the next run: the other's, a line
# or a chunk of a few thousand, was lost.) Each record is still taken by
# one of them, in the stream's order, and what none took goes to the next
# run whole. Held weakly: an entry goes with its reader.
_reading: weakref.WeakValueDictionary[tuple[int, int], LiveReader] = weakref.WeakValueDictionary()

# A lock an iterator (by id), held by a reader's thread while it reads a
# chunk: two readers of the same stream (those of two runs at once; two
# sources of one run had one each before `_reading`) each had a thread
# iterating it at once, and a file object read so lost lines and gave
# others twice (a generator: "already executing").
# Each record now goes to one of them, as when both read on the loop.
# By the file object the iterator reads where one is seen, not the iterator:
# two sources of one run over one file object through two iterators
# (`sys.stdin` and `map(str.strip, sys.stdin)`, or `iter(sys.stdin.readline, "")`)
# each had a reader, and their threads iterating one file object at once tore
# its lines (19,968 of 20,000 came whole). (Through two file objects of one
# stream no lock helps, each reading ahead into buffers of its own:
# `refuse_other_file_objects`.)
# (Held by the readers of the iterator: it goes with the last of them, not
# one a stream for as long as the process runs, as a service's runs over a
# connection each would leave.)
_iterating: weakref.WeakValueDictionary[int, _Turn] = weakref.WeakValueDictionary()

# The live streams each run with snapshots (by its kernel, weakly) reads, by
# what they read (`_what_it_reads`): (id of the iterator its first source reads it through, that source's
# name). (`refuse_other_iterators`)
_snapshotted: weakref.WeakKeyDictionary[object, dict[int, tuple[int, str]]] = weakref.WeakKeyDictionary()

# The file object through which each run (by its kernel, weakly) first reads
# each live stream (`_what_it_reads`), weakly, and that source's name
# (`refuse_other_file_objects`).
_read_through: weakref.WeakKeyDictionary[object, dict[object, tuple[Callable[[], object], str]]] = (
    weakref.WeakKeyDictionary())

# The live streams a run of this process took lines from (`take`), by what
# they read (`_what_it_reads`): the stream noted, weakly, and its last such
# run (its kernel, as `LiveReader._run` holds it). (By the file object, a
# run over another one of the stream, `stream.buffer` or a dup of its
# descriptor, was not refused, and lost what the earlier run had read:
# 2,960 of 3,000 lines.) An entry stands while the stream noted is open:
# once it is closed, an id may name another; an anonymous pipe's or a
# socket's, a regular file's or a named FIFO's (`_link`) not while any
# descriptor of it is open here, and its entry stands as long. (Dropped with the file object
# noted, a run over a dup of the stream's descriptor, closed after, let a
# run over the stream itself resume, losing 2,740 of 3,000 lines.) Those
# lines are gone from the stream, so no later run with a state_dir can read
# it from its start (`refuse_read_by_an_earlier_run`). (A reader left over
# says so only while it holds lines: a run that failed after its source
# had read the stream to its end left none, and a run resuming over the
# stream read nothing and committed without the lines after the last
# complete epoch, with no error. And it says too much: a run that failed
# after its reader had read ahead, before its source took a line, lost
# none, and a resumed run taking the reader over reads the stream from its
# start, as its position counts; a refusal of every reader left over, at
# the source's open, refused that run too.)
_taken_from: dict[object, tuple[Callable[[], object], Callable[[], object], str | None]] = {}
_KEPT_CLOSED = 64  # entries before those of streams closed here are looked for (`_note_taken_from`)
_look_at = _KEPT_CLOSED  # (or twice as many as the last look kept, `_forget_taken_from_closed`)


def note_read_elsewhere(stream) -> None:
    """In the process that started a run: its kernel 0, a process of its
    own, reads the live stream `stream` (`_read_in_kernel_0`): a later run of
    this process with a state_dir over it is refused as after a run here
    that took lines (no run of this process is the one that read it)."""
    _note_taken_from(stream, _weakly(None))


def _note_taken_from(stream, run: Callable[[], object], reader: LiveReader | None = None) -> None:
    """`stream` has lost lines to the run `run()` (its kernel, weakly),
    through `reader` (`_note_fifo_ended`)."""
    what, link = _what_it_reads(stream), _link(stream)
    with _left_over_lock:
        if reader is not None and reader._read_to_its_end and (link or "").startswith("fifo:"):
            link = None  # (looked at under the lock its thread says so under: either comes first)
        _taken_from[what] = (_weakly(stream), run, link)
        if link is not None and link.startswith("fifo:"):
            note_fifo_taken(link)
        # Those of closed streams go (a service's streams, once closed), looked
        # for once the entries have doubled, not at each run: each run's look
        # went over every entry, 3.7 ms a run's first take where 9,000
        # connections' file objects had been closed, the connections kept
        if len(_taken_from) >= _look_at:
            _forget_taken_from_closed()


def _forget_taken_from_closed() -> None:
    """Drop (under `_left_over_lock`) the entries of `_taken_from` whose
    stream noted is closed, but a pipe's, a socket's or a regular file's
    while a descriptor of it is open (`_open_links`); the next look once as many entries again
    stand, or as a quarter of the descriptors open (a look reads each: where
    9,000 connections stayed open, a look every 64 runs, each run's share
    of it ~3 ms, ending connections closed meanwhile)."""
    global _look_at
    closed = [(key, its_link) for key, (noted, _run, its_link) in _taken_from.items()
              if _closed(noted())]
    kept = [its_link for _, its_link in closed if its_link is not None]
    by_inode = frozenset(link for link in kept if link.startswith(("file:", "fifo:")))
    links = _open_links(by_inode) if kept else set()
    for key, its_link in closed:
        if its_link is None or its_link not in links:
            del _taken_from[key]
    _look_at = max(_KEPT_CLOSED, 2 * len(_taken_from), len(links) // 4)


def _note_fifo_ended(stream, reader: LiveReader) -> None:
    """The live stream `stream` has been read to its end: a named FIFO's
    every writer has closed it, and opened again, once this file object is
    closed, it is a fresh stream, fed from its start, which a run with a
    state_dir can resume over (its entry in `_taken_from` is no longer
    found by its `fifo:` link: `_taken_by`). (Found by it, a run over the
    FIFO opened anew for a writer of its own was refused.) Said under
    `_left_over_lock`, as the run's first take notes the stream under it: a
    take between the end's note and `done` noted it by its link all the same,
    and the next run over the FIFO was refused, now and then."""
    link = _link(stream)
    what = _what_it_reads(stream)
    with _left_over_lock:
        reader._read_to_its_end = True
        if link is None or not link.startswith("fifo:"):
            return
        noted = _taken_from.get(what)
        if noted is not None and noted[2] == link:
            _taken_from[what] = (noted[0], noted[1], None)


def let_go_if_rewound(stream) -> bool:
    """As a run starts reading the live stream `stream`: where it is a
    regular file (the standard input given with `<`) whose descriptor is
    back at its start (`sys.stdin.seek(0)`, `os.lseek(0, 0, 0)`), which an
    earlier run of this process read, the lines that run took are not gone:
    this run reads the file again from its start, and resumes exactly with a
    state_dir. What the earlier run's reader left (`_left_over`) is from
    where it had read to, not from the start, and goes; so does the note
    that lines were taken (`_taken_from`), and what the file object's
    buffers hold of that read (a run after the rewind was refused as though
    the lines were gone; one without a state_dir took the reader over and
    got the file's tail, not its start). Not while another run reads it.

    False while a reader the earlier run left has its thread still in a
    read (of your iterator: a slow generator over the file): the source
    looks again later (`IterableSource._poll_live`), not waiting for the
    thread on its loop (a join of up to `_LET_GO_WITHIN` held the loop
    that long, the host's too under `run_async`); True once looked at."""
    if not _rewound(stream):
        return True
    what = _what_it_reads(stream)
    with _left_over_lock:
        if _read_by_a_run(what):
            return True  # (a run at once: `_reading_at_once` says so)
        readers = [(key, reader) for key, reader in _left_over.items() if _reads(reader, what)]
        if not readers and what not in _taken_from:
            return True
    for _key, reader in readers:
        # stopped, each ends once its read of the file returns: at once (else
        # kept, and refused as before, where its thread might read on after the rewind)
        thread = reader._thread
        if thread is not None and reader._process != os.getpid() and not reader.done:
            # (a kernel process forked since: the thread is the launcher's, not
            # joined here, and may read the offset the two share after the rewind:
            # dropped, a run on 2 kernels with a state_dir lost 2 of 5,000 lines)
            return True
        if thread is not None and thread.is_alive():
            return False
    if not _rewound(stream):  # (a thread read on after the rewind)
        return True
    with _left_over_lock:
        # (looked at again as the file object seeks, under one lock: a run of
        # another thread that started reading it meanwhile, from its start, was
        # sent back there, and a run with a state_dir so committed 39,504 lines
        # of 20,000)
        if _read_by_a_run(what) or not _rewound(stream):
            return True
        try:
            # its buffers: what it read ahead of the earlier run's last line (after
            # os.lseek alone, 8 KiB of the old position came first)
            stream.seek(0)
        except Exception:
            # (a file object that cannot seek, `sys.stdin` made over a pipe, a file
            # put in its descriptor since, `os.dup2`: its buffers stay, refused as before)
            return True
        noted = _taken_from.pop(what, (_weakly(None),))[0]()
        for held in {id(held): held for held in [noted] + [reader._stream() for _, reader in readers]
                     if held is not None and held is not stream and not _closed(held)}.values():
            # (the other file objects the earlier runs read it through: `sys.stdin`'s
            # buffers after a run over `sys.stdin.buffer`, and a run over it after that,
            # the file read to its end, got 829 lines of the old position again)
            try:
                held.seek(0)
            except Exception:  # (one that cannot seek keeps them: a run over it rewound is refused)
                pass
        for key, reader in readers:
            if _left_over.get(key) is reader:
                del _left_over[key]
    return True


def rewound(stream) -> bool:
    """Whether the live stream `stream` is a regular file whose descriptor is at its start."""
    return _rewound(stream)


def forget_readers_left_over(stream) -> None:
    """In the launcher's process: kernel 0 of a run, a process of its own,
    reads the live stream `stream`, a regular file, from its start, having
    let go of its copies of the readers earlier runs here left of it, whose
    threads had ended by the fork (`let_go_if_rewound`). Those readers, here,
    hold lines of an older read of the file: they go too. (Kept, a later
    run here over the file took one over and got its lines again: 1,490 of
    3,000 twice after a run on 2 kernels over the file rewound.)"""
    what = _what_it_reads(stream)
    with _left_over_lock:
        for key, reader in list(_left_over.items()):
            thread = reader._thread
            if _reads(reader, what) and (thread is None or not thread.is_alive() or reader.done):
                del _left_over[key]


def _read_by_a_run(what: object) -> bool:
    """Whether a run going on reads the live stream `what` (under `_left_over_lock`)."""
    return any(reader._reads_for_a_run() and _reads(reader, what) for reader in list(_reading.values()))


def _rewound(stream) -> bool:
    """Whether `stream` is a regular file whose descriptor is at its start."""
    try:
        descriptor = stream.fileno()
        return stat.S_ISREG(os.fstat(descriptor).st_mode) and os.lseek(descriptor, 0, os.SEEK_CUR) == 0
    except Exception:  # (no descriptor, closed, a broken wrapper)
        return False


def _reads(reader: LiveReader, what: object) -> bool:
    """Whether `reader` reads the live stream `what` (`_what_it_reads`), still open."""
    held = reader._stream()
    return held is not None and not _closed(held) and _what_it_reads(held) == what


def _taken_by(stream) -> Callable[[], object] | None:
    """The run (weakly) that last took lines of the live stream `stream`,
    through it or another file object of it; None if none did."""
    what = _what_it_reads(stream)
    with _left_over_lock:
        noted, run, link = _taken_from.get(what, (_weakly(None), None, None))
    if _closed(noted()) and (link is None or link != _link(stream)):
        return None
    if _closed(noted()) and link.startswith("fifo:") and _fifo_fed_anew(stream, link):
        return None  # (a fresh pipe, its new writer's: `_fifo_holders`)
    return run


def _fifo_fed_anew(stream, link: str) -> bool:
    try:
        descriptor = stream.fileno()
        status = os.fstat(descriptor)
    except Exception:  # (closed, a broken wrapper: as the same stream)
        return False
    return fifo_fed_anew_since_taken(link, status.st_dev, status.st_ino, descriptor)


def _link(stream) -> str | None:
    """`pipe:[inode]` or `socket:[inode]`: the live stream `stream` is an
    anonymous pipe or a socket, the same stream through each of its
    descriptors for as long as one is open (no other takes its inode
    meanwhile); `file:[device:inode]`, a regular file, the standard input
    given with `<`, whose offset its descriptors share (by the file object,
    one closed after its run, `open(0, closefd=False)`, let a run with a
    state_dir over `sys.stdin` resume, and lose 1,513 of 3,000 lines; by its
    path, so did the file renamed or deleted since, losing 1,504);
    `fifo:[device:inode]`, a named FIFO, one stream through each file
    object it is opened as, also one opened again after the first was
    closed: what a writer wrote stays in it, read or not, while a writer
    holds it open (taken for another stream once reopened, a run with a
    state_dir over it after a failed one resumed, and lost every line the
    first file object had read ahead); a FIFO read to its end is another
    stream once reopened (`_note_fifo_ended`); None otherwise (no /proc)."""
    try:
        descriptor = stream.fileno()
        link = os.readlink(f"/proc/self/fd/{descriptor}")
        if link.startswith(("pipe:", "socket:")):
            return link
        status = os.fstat(descriptor)
        if stat.S_ISREG(status.st_mode) or stat.S_ISFIFO(status.st_mode):
            return _file_link(status)
    except Exception:  # (no descriptor, closed, a broken wrapper)
        pass
    return None


def _file_link(status: os.stat_result) -> str:
    """The `_link` of a regular file or a named FIFO (`status`: its stat), whatever its path is now."""
    kind = "fifo" if stat.S_ISFIFO(status.st_mode) else "file"
    return f"{kind}:[{status.st_dev}:{status.st_ino}]"


def shares_standard_input(file) -> bool:
    """Whether the file object `file` reads a regular file through the
    open file description of descriptor 0 (the standard input given with
    `<`) from another descriptor (`os.fdopen(os.dup(0))`): no live stream
    (`is_stream`), it is read on the kernel's loop, and moves the standard
    input's offset all the same (`note_taken_beside_standard_input`)."""
    try:
        descriptor = file.fileno()
        if descriptor == 0:
            return False
        its, zero = os.fstat(descriptor), os.fstat(0)
        if not stat.S_ISREG(its.st_mode) or (its.st_dev, its.st_ino) != (zero.st_dev, zero.st_ino):
            return False  # (another file, or the file opened again: an offset of its own)
        return _one_description(descriptor, 0)
    except Exception:  # (no descriptor, closed, a broken wrapper, no descriptor 0)
        return False


def _one_description(descriptor: int, other: int) -> bool:
    """Whether two descriptors of one file share its open file description:
    a status flag set through one shows through the other (O_APPEND, on one
    open for reading only, changes none of its reads). One open for
    writing too is taken as shared."""
    flags = fcntl.fcntl(descriptor, fcntl.F_GETFL)
    if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_APPEND:
        return True
    fcntl.fcntl(descriptor, fcntl.F_SETFL, flags | os.O_APPEND)
    try:
        return bool(fcntl.fcntl(other, fcntl.F_GETFL) & os.O_APPEND)
    finally:
        fcntl.fcntl(descriptor, fcntl.F_SETFL, flags)


def note_taken_beside_standard_input(file, run: object) -> None:
    """The run `run` (its kernel) takes lines of the file object `file`,
    which moves the standard input's offset (`shares_standard_input`): a
    later run with a state_dir over `sys.stdin` is refused as after one
    over it. (Not noted, such a run resumed, and lost 1,535 of 3,000 lines.)"""
    _note_taken_from(file, _weakly(run))


def _open_links(files: frozenset[str] = frozenset()) -> set[str]:
    """What each descriptor this process has open is (`_link`), a regular
    file's by its path; and by its inode, of those of `files` (`_link`s of
    regular files) found open: a stat of each regular file's descriptor
    until all are (descriptor 0, the standard input, listed first). (A stat of
    each, also where none was looked for: with 10,000 files open, a look
    for closed connections' entries took 240-330 ms of a run's first take,
    not 90-130 ms.)"""
    links, files = set(), set(files)
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return links
    for descriptor in descriptors:
        try:
            link = os.readlink(f"/proc/self/fd/{descriptor}")
            links.add(link)
            if files and link.startswith("/"):  # (a file's path: a regular one's `_link` is by its inode)
                status = os.stat(f"/proc/self/fd/{descriptor}")
                if stat.S_ISREG(status.st_mode) or stat.S_ISFIFO(status.st_mode):
                    link = _file_link(status)
                    links.add(link)
                    files.discard(link)
        except OSError:  # (the listing's own, closed since)
            pass
    return links


def _reading_at_once(stream, what, run: object, name: str) -> None:
    """Refused (under `_left_over_lock`, as the reader of the run `run` is
    registered in `_reading`) where a reader of another run going on reads
    the live stream `stream` (`what`), has not read it to its end, and one
    of the two runs has snapshots (`_snapshotted`): the two share its lines
    by timing, and that run's snapshots count only its own share."""
    for reader in list(_reading.values()):
        other = reader._run()
        if not reader._reads_for_a_run() or other is None or other is run or (
                run not in _snapshotted and other not in _snapshotted):
            continue
        held = reader._stream()
        if (not reader.done_and_empty() and held is not None and not _closed(held)
                and _what_it_reads(held) == what):
            if run in _snapshotted:
                raise KernelError(
                    f"{name}: another run of this process ({reader._name}) reads its input {stream!r} "
                    "at the same time, and takes some of its lines, which this run's snapshots would "
                    "not count (with a state_dir a run resumes exactly only over its input, whole): "
                    "give each run an input of its own, or read the stream with one run"
                )
            raise KernelError(
                f"{name}: another run of this process ({reader._name}), which has a state_dir, reads "
                f"its input {stream!r} at the same time: this run would take some of its lines, which "
                "that run's snapshots would not count (a run with a state_dir resumes exactly only "
                "over its input, whole): give each run an input of its own, or read the stream with "
                "one run"
            )


def _held_elsewhere(stream, iterator: Iterator, name: str, resumes: bool) -> None:
    """Refused where a reader an earlier run left (`_left_over`) reads the
    live stream `stream` through another iterator than `iterator` (another
    file object of it, a generator over it) and holds lines of it or reads
    on: those lines are gone from the stream, and only a run over that
    iterator takes them over. (That run's source had taken none, so the
    stream was not in `_taken_from`: a run resuming over it through another
    iterator lost what the reader had read ahead, up to 3,000 of 3,000
    lines, no error. Also a run without a state_dir (`resumes` False): over
    a FIFO opened again it got none of the 3,000 lines the reader held, and,
    a file object's read cut mid-line, a torn line first, no error.)"""
    what = _what_it_reads(stream)
    with _left_over_lock:
        readers = list(_left_over.values())
    for reader in readers:
        held = reader._stream()
        if (reader._iterator() is not iterator and not reader.done_and_empty() and held is not None
                and not _closed(held) and _what_it_reads(held) == what):
            if not resumes:
                raise KernelError(
                    f"{name}: an earlier run of this process over its input {stream!r}, through "
                    f"another iterator or file object of it ({reader._name}), ended before the input "
                    "did and left lines of it in its reader (or its reader reading on), which are gone "
                    "from the stream: this run would not get them (and a file object's read cut "
                    "mid-line would tear a line). Give this run the object that run read (which "
                    "takes that reader over and loses no line), or close that object first (what "
                    "it read goes with it)"
                )
            raise KernelError(
                f"{name}: an earlier run of this process over its input {stream!r}, through "
                f"another iterator or file object of it ({reader._name}), ended before the input "
                "did and left lines of it in its reader (or its reader reading on), which are gone "
                "from the stream, and with a state_dir a run resumes exactly only over its input "
                "fed again from its start (this run would lose those lines): give this run the "
                "input again (a new pipe or file object), or the object that run read (which takes "
                "that reader over)"
            )


def _closed(stream) -> bool:
    try:
        return stream is None or stream.closed
    except Exception:  # (a broken wrapper: as if open)
        return False


def refuse_other_iterators(stream, iterator: Iterator, run: object, name: str) -> None:
    """At the open of a source of the run `run` (its kernel), which has a
    state_dir, reading the live stream `stream` through `iterator`: refused
    where another source of the run reads the stream through another
    iterator (`from_iterable(stream)` and `from_iterable(map(str.strip,
    stream))`). Sources over one iterator share a reader and snapshot the
    stream's position; through two, each reader's position counts what its
    own iterator got, and which of them gets which line depends on timing:
    a run resumed over the stream fed again lost some lines and repeated others."""
    with _left_over_lock:
        first_iterator, first_name = _snapshotted.setdefault(run, {}).setdefault(
            _what_it_reads(stream), (id(iterator), name))
    if first_iterator != id(iterator):
        raise KernelError(
            f"{name}: its input reads the live stream {stream!r}, which {first_name} of this run "
            "reads too, through another iterator or file object; with a state_dir a resumed run "
            "must know which lines the run it resumes handed on, and how two iterators of one "
            "stream share its "
            "lines depends on timing (a run resumed over the stream fed again would lose some "
            "and repeat others). Read the stream with one from_iterable and split or transform "
            "its records after it (map, filter, flat_map), or give each from_iterable the same "
            "object (the sources of one iterator resume exactly)"
        )


def refuse_other_file_objects(stream, run: object, name: str) -> None:
    """At the open of a source of the run `run` (its kernel) reading the
    live stream `stream`: refused where another source of the run reads
    the stream through another file object of it (`sys.stdin` and
    `sys.stdin.buffer` or `open(0, closefd=False)`, a FIFO opened twice).
    Each file object reads ahead into buffers of its own (8 KiB), so two
    reading one descriptor, by turns or at once, tear the lines at the
    edges of their reads: 19,891 of 20,000 lines came whole beside
    `sys.stdin.buffer`, 18,566 beside `open(0)`, no error. Sources over one
    file object, through any iterators of it, take its lines whole by turns
    (`_iterating`). (A regular file opened again, `open("/dev/stdin")` after
    `< file`, has an offset of its own: each reads it whole, not refused.)"""
    what = _what_it_reads(stream)
    with _left_over_lock:
        first, first_name = _read_through.setdefault(run, {}).setdefault(what, (_weakly(stream), name))
    other = first()
    if other is None or other is stream or _closed(other) or not _shares_reads(other, stream):
        return
    raise KernelError(
        f"{name}: its input reads {stream!r}, and {first_name} of this run reads the same stream "
        f"through another file object of it, {other!r}; each file object reads ahead into buffers "
        "of its own, so the two would tear lines apart at the edges of their reads (and share the "
        "lines by timing). Read the stream with one file object: give both from_iterable the same "
        "one (or iterators over it: map(), a generator), or read it with one from_iterable and "
        "split its records after it (map, filter, flat_map)"
    )


def _shares_reads(one, other) -> bool:
    """Whether two file objects of one live stream (`_what_it_reads`) take
    what they read from each other: a pipe's, a FIFO's, a socket's, a
    terminal's; a regular file's only through one open file description
    (one offset: `open(0)` beside `sys.stdin` after `< file`)."""
    try:
        descriptor, its = one.fileno(), other.fileno()
        if not stat.S_ISREG(os.fstat(descriptor).st_mode) or descriptor == its:
            return True
        return _one_description(descriptor, its)
    except Exception:  # (no descriptor, a broken wrapper: as one stream, as `_what_it_reads` found)
        return True


def _what_it_reads(stream) -> object:
    """What the live stream `stream` reads, whichever of its file objects a
    source was given: `sys.stdin` and `sys.stdin.buffer` (or two file
    objects of one pipe, FIFO or socket) are one stream, which two readers
    share by timing as two iterators do (by id of the file object, each was
    a stream of its own: not refused, and a resumed run lost some lines and
    repeated others). A pipe or socket by its inode, a regular file too (a
    live stream only as the standard input, `< file`: `open(0)` shares its
    offset with `sys.stdin`; by the file object, a run over it after one
    over `sys.stdin` lost 2,990 of 3,000 lines, no error), a terminal too
    (two file objects of one share what is typed, not so /dev/null's;
    by the file object, a run over `open(0)` after one over `sys.stdin`
    from a terminal resumed, and lost 302 of 600 lines), else by the file
    object under its buffers."""
    try:
        status = os.fstat(stream.fileno())
        if stat.S_ISFIFO(status.st_mode) or stat.S_ISSOCK(status.st_mode) or stat.S_ISREG(status.st_mode):
            return (status.st_dev, status.st_ino)
        if stat.S_ISCHR(status.st_mode) and os.isatty(stream.fileno()):
            return ("terminal", _terminal(stream.fileno(), status), status.st_rdev == _PTMX)
    except Exception:  # (no descriptor, closed, a broken wrapper: by its file object)
        pass
    for attribute in ("buffer", "raw"):
        stream = getattr(stream, attribute, stream)
    return id(stream)


def _terminal(descriptor: int, status: os.stat_result) -> int:
    """The terminal device the descriptor `descriptor` reads: `/dev/tty`
    (and `/dev/console`) is one device of its own by its inode and number,
    and reads the process's controlling terminal, `/dev/pts/3`, which a
    run over `sys.stdin` read (by the inode, a run with a state_dir over
    `open("/dev/tty")` after it was not refused). And each pseudo-terminal's
    master (`pty.openpty()`'s first, what a program run on it writes) has
    the inode and number of `/dev/ptmx`: by them, two were one stream (a
    run over two programs' outputs with a state_dir was refused as two
    iterators of one stream); it is the number of its terminal, told from
    that terminal's by `_PTMX`. Linux says which (TIOCGDEV); elsewhere by
    the device's number."""
    try:
        return struct.unpack("I", fcntl.ioctl(descriptor, _TIOCGDEV, b"\0\0\0\0"))[0]
    except Exception:  # (not Linux, an older one)
        return status.st_rdev


class _Turn:
    """The lock of `_iterating` (a lock cannot be weakly referred to)."""

    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()


class LiveReader:
    """Reads `iterator` on a thread; `take(n)` hands on what has arrived."""

    @classmethod
    def of(cls, iterator: Iterator, limit: int, name: str, stream=None, run: object = None) -> LiveReader:
        """A reader of `iterator` (which reads the file object `stream`) for
        the run `run` (its kernel): the one another source of this run reads
        it with (`_reading`), or the one an earlier run of this process left
        (it goes on), or a new one. Called as the source starts reading, not
        at its open: a run failing in between (another step's open())
        dropped the reader it had taken, and the lines it held, or went on
        reading, were lost."""
        with _left_over_lock:
            _forget_closed()
            key = (id(iterator), id(run))
            reader = _reading.get(key)
            if (reader is not None and reader._iterator() is iterator and reader._run() is run
                    and not reader._stopped):
                return reader  # (its `start` adds this source to those it wakes)
            reader = _left_over.pop(id(iterator), None)
        left = reader is not None and reader._iterator() is iterator
        if left:
            reader._refuse_if_elsewhere(name)
        else:
            reader = cls(iterator, limit, name, stream)
        what = _what_it_reads(stream) if stream is not None else None
        with _left_over_lock:
            # (a run reading the stream meanwhile, another thread's, another task's
            # of one loop: the two share its lines, which the positions of the one
            # with snapshots would not count, whatever iterator each reads. Looked
            # for as this reader is registered, under one lock: looked for before,
            # a run with a state_dir was refused only where the other had taken a
            # line first, by timing (9,300 and 10,700 of 20,000 lines), and a run
            # without one that began reading it after a run with one was not
            # refused at all (10,100 and 9,900 of 20,000 lines, no error))
            if what is not None:
                try:
                    _reading_at_once(stream, what, run, name)
                except KernelError:
                    if left:  # (the reader stays for a run that can take it over)
                        _left_over[id(iterator)] = reader
                    raise
            if left:
                reader._limit, reader._name = limit, name
            reader._run = _weakly(run)
            reader.handed = 0  # (positions count from this run's first record)
            # (a reader taken over kept its entry of each run before, by the id of
            # a kernel gone: one more a run for as long as the stream was read)
            if _reading.get(reader._reading_key) is reader:
                del _reading[reader._reading_key]
            reader._reading_key = key
            # (a reader taken over is stopped, its earlier run's end, until `start`:
            # another thread's run over the stream meanwhile was not refused)
            reader._starting = True
            _reading[key] = reader
        return reader

    @staticmethod
    def of_run(iterator: Iterator, run: object) -> LiveReader | None:
        """The reader a source of the run `run` reads `iterator` with, if one
        has started (`of`); None if none has."""
        with _left_over_lock:
            reader = _reading.get((id(iterator), id(run)))
        if (reader is not None and reader._iterator() is iterator and reader._run() is run
                and not reader._stopped):
            return reader
        return None

    @staticmethod
    def refuse_if_left_elsewhere(iterator: Iterator, stream, name: str) -> None:
        """At a source's open: refused where the reader left for it is one
        this process cannot take over (`_refuse_if_elsewhere`), before the run
        starts; the reader stays for a run that can. Not where the live
        stream `stream` is a regular file rewound since: that reader is let
        go of at the first poll (`let_go_if_rewound`), once its thread, the
        launcher's, is seen to have ended by the fork, and what it read is
        read again from the file's start (refused here, a run on 2 kernels
        over `sys.stdin` rewound after a failed run on 1 never got there);
        `of` refuses as here where it is not."""
        if _rewound(stream):
            return
        with _left_over_lock:
            reader = _left_over.get(id(iterator))
        if reader is not None and reader._iterator() is iterator:
            reader._refuse_if_elsewhere(name)

    @staticmethod
    def refuse_read_by_an_earlier_run(stream, iterator: Iterator, run: object, name: str) -> None:
        """As a source of the run `run` (its kernel), which has a state_dir,
        starts reading the live stream `stream` through `iterator`: refused
        where an earlier run of this process took lines of it (`_taken_from`),
        in this process or, forked since, in the one that started the runs;
        or left a reader of it, through another iterator, that holds lines
        of it or reads on (`_held_elsewhere`)."""
        taken_by = _taken_by(stream)
        if taken_by is not None and taken_by() is not run:
            fifo = (" (a FIFO opened again is the same stream while a writer holds it open, what "
                    "was written staying in it, read or not: feed the input again through a FIFO "
                    "made afresh)" if (_link(stream) or "").startswith("fifo:") else "")
            raise KernelError(
                f"{name}: an earlier run of this process read lines of its input {stream!r}, which "
                "are gone from it, and with a state_dir a run resumes exactly only over its input "
                "fed again from its start (this run would count what is left of it from the "
                "start, and lose the lines that run read after its last complete epoch): give "
                f"this run the input again (a new pipe or file object){fifo}, or run without a "
                "state_dir to read on from where the earlier run stopped"
            )
        _held_elsewhere(stream, iterator, name, resumes=True)

    @staticmethod
    def refuse_held_elsewhere(stream, iterator: Iterator, name: str) -> None:
        """As a source of a run without a state_dir starts reading the live
        stream `stream` through `iterator`: refused where a reader an earlier
        run left reads it through another iterator (`_held_elsewhere`)."""
        _held_elsewhere(stream, iterator, name, resumes=False)

    def _refuse_if_elsewhere(self, name: str) -> None:
        if self._process != os.getpid() and not self.done_and_empty():
            # (a kernel process forked since: the thread is the launcher's,
            # still reading there; this copy of it would wait for ever. One
            # that read to the end: what it read stays the launcher's too,
            # where a later run took it over again, and got those lines twice)
            raise KernelError(
                f"{name}: an earlier run of this process over the same input ended before "
                "the input did (cancelled, interrupted or failed) and left its reader thread "
                "waiting in a read of it (or what that read got), in the process that started "
                "the runs; this run "
                "reads the input in a kernel process of its own, which cannot take that "
                "thread over (what it reads would be lost, and this run would wait for it "
                "for ever). Run it on one kernel (cores=1), which takes the reader over and "
                "loses no record"
            )

    def __init__(self, iterator: Iterator, limit: int, name: str, stream=None) -> None:
        # Appended to by the thread only, taken from its front by the source
        # only (`take`): each is one operation under the GIL, and neither
        # moves what the other works on.
        self.arrived: list = []
        # Records taken (`take`) in this run, by all its sources of the stream:
        # the stream's position, which each of them snapshots (`of` sets it
        # to 0 for each run). Their own counts were no position: which source
        # took which record depends on timing, so a resumed run skipping each
        # one's count of the replayed stream lost some records and repeated others.
        self.handed = 0
        self.error: BaseException | None = None  # what the iterator raised (on the thread)
        self.done = False  # the iterator has ended (or raised): nothing more will arrive
        self._read_to_its_end = False  # (its end seen, no error: `_note_fifo_ended`)
        # The iterator and its stream, held weakly where they can be: a reader
        # left over (`_left_over`) kept them, and so the stream's descriptor,
        # a connection's, open for as long as the process ran, where the
        # caller dropped them unclosed. (While a run reads, its source holds
        # them; between runs, the flow does.)
        self._iterator = _weakly(iterator)
        self._stream = _weakly(stream)  # (once closed or dropped, no later run can take this reader over)
        read_through = id(stream) if stream is not None else id(iterator)  # (`_iterating`)
        with _left_over_lock:
            turn = _iterating.get(read_through)
            if turn is None:
                turn = _iterating[read_through] = _Turn()
            self._turn = turn  # (held: the entry lives as long as a reader of the iterator)
        self._process = os.getpid()  # (a copy forked since has no thread)
        self._run: Callable[[], object] = _weakly(None)  # the run (kernel) it reads for (`of`)
        self._reading_key: tuple[int, int] | None = None  # its entry in `_reading`
        self._limit = limit
        self._name = name
        self._room = threading.Event()  # set when the source has taken records
        self._asleep = False  # the source found nothing and waits to be woken
        self._chunked = False  # the thread reads a chunk of several records (it cannot wake meanwhile)
        self._look_after = _FIRST_LOOK
        self._looking = False  # a look within _LAST_LOOK is waiting (`waiting`)
        self._stopped = False  # the run is over: read no further (until a later run takes it over)
        self._starting = False  # a run has taken it (`of`) and is about to `start` it
        # The thread, while it reads (or waits in a read a run left): it ends
        # once a stopped run's read returns, and a later run starts another.
        # (It waited for a later run for ever: a service running flows over
        # live streams, some of which ended early, kept a thread of each.)
        self._thread: threading.Thread | None = None
        self._handover = threading.Lock()  # (the thread's end against a later run's start)
        # (loop, wake, ended, context) of the run it reads for, replaced as
        # one: the thread reads it once a call, also as a later run takes over.
        # None once a stopped run's thread is done: it reaches the run's
        # kernel, its source and so the stream, which a reader left over
        # must not keep (`_forget_closed`).
        self._wiring: tuple | None = None

    def start(self, wake: Callable[[], None]) -> None:
        """Start reading; `wake()` is called on the loop when records (or the
        end) arrive for a source that had found none."""
        loop = asyncio.get_running_loop()
        self._asleep = True  # (the source returns None: the first record wakes it)
        with self._handover:  # (a thread ending meanwhile lets go of the earlier run's wiring, not this)
            reading = self._wiring
            if reading is not None and not self._stopped and reading[0] is loop:
                # Another source of the run reads with it (`of`): each is woken,
                # and the run's task of each waits for the one end (`until_ended`).
                self._wiring = (loop, _both(reading[1], wake), *reading[2:])
            else:
                # The kernel's context for the thread's callbacks: call_soon_threadsafe
                # runs them in the calling thread's, where current_kernel() is None,
                # and with them the activations they wake (a step calling
                # current_kernel() failed with "'NoneType' object has no attribute").
                self._wiring = (loop, wake, loop.create_future(), contextvars.copy_context())
                self._stopped = False
                self._starting = False  # (after `_stopped`: `_reads_for_a_run`)
                # (a look the run before left pending, on its loop, may never come: a
                # reader taken over with `_looking` set never looked again, and lines a
                # chunk held waited for its end, an exchange for ever)
                self._looking = False
                if self._thread is None and not self.done:  # (else: taken over while its thread reads)
                    # (the iterable runs in a copy of the kernel's context too: a generator
                    # that logs, or asks current_kernel(), is in its kernel as before)
                    self._thread = threading.Thread(target=contextvars.copy_context().run,
                                                    args=(self._read, (sys.stdin, sys.__stdin__)),
                                                    name=f"{self._name} reader", daemon=True)
                    with main_thread_signals():  # (a Ctrl-C is the main thread's: `_signal_mask.py`)
                        self._thread.start()
        # (taken over from an earlier run: what it read meanwhile, or the end;
        # or read for the run's other source before this one started)
        if self.arrived or self.done:
            self._asleep = False
            loop.call_soon(wake)

    async def until_ended(self) -> None:
        """A task of the kernel until the source has handed on the input's
        end (`handed_on_the_end`): cancelled (the run ends otherwise: a
        failure, Ctrl-C), it tells the thread to stop at its next record
        rather than read the stream on for nobody, and leaves what it read
        to a later run. (It ended with the thread's reading, and a run that
        failed after that, before its source had taken what the thread had
        read, left nothing: the next run over the stream lost those lines.)"""
        try:
            await self._wiring[2]
        except asyncio.CancelledError:
            self.stop()
            raise

    def watch(self, task: asyncio.Task) -> None:
        """`task` runs `until_ended`: cancelled before it ran, `stop` all
        the same. (A run that failed in the tick its source started the
        reader cancelled the task before its first step, which runs none of
        the coroutine's body: the thread was never told, read on for nobody,
        up to `limit` records a later run over the stream lost, and then
        waited for room for ever.)"""
        ended = self._wiring[2]

        def stopped(task: asyncio.Task) -> None:
            wiring = self._wiring
            # (not where `until_ended` stopped it, as a task cancelled after its
            # first step does: a later run may have taken the reader over since,
            # `of`, before starting it, and a second stop listed it as left over
            # again and cleared its `_starting`: a third run took over the reader
            # the second was about to read with)
            if task.cancelled() and not self._stopped and wiring is not None and wiring[2] is ended:
                self.stop()

        task.add_done_callback(stopped)

    def stop(self) -> None:
        """The run ends before the input: the thread ends once its read
        returns, keeping what it read for a later run over the iterator."""
        self._stopped = True
        self._starting = False
        self._room.set()
        iterator = self._iterator()
        with _left_over_lock:
            _forget_closed()
            if iterator is not None:  # (else nobody can run over it again)
                _left_over[id(iterator)] = self

    def _reads_for_a_run(self) -> bool:
        """Whether a run going on reads with it: started, or taken (`of`)
        and about to start it. (`_starting` looked at first: `start` clears
        it after `_stopped`, so another thread sees one of them say so.)"""
        return self._starting or not self._stopped

    def done_and_empty(self) -> bool:
        """Whether the input has ended, and no record or error of it is left to hand on."""
        return self.done and not self.arrived and self.error is None

    def handed_on_the_end(self) -> None:
        """Called by the source that has handed on every record and the end
        (or the iterator's error): its run needs nothing more of the reader."""
        wiring = self._wiring
        if wiring is not None and not wiring[2].done():
            wiring[2].set_result(None)

    def take(self, size: int) -> list:
        """Up to `size` of the records that have arrived, in order."""
        arrived = self.arrived
        records = arrived[:size]
        if records:
            del arrived[:len(records)]
            self.handed += len(records)
            if self.handed == len(records):  # (the run's first take: once a run, not a batch)
                self._note_taken()
            if len(arrived) <= self._limit // 2:  # (the thread, paused at `limit`, reads on from half)
                self._room.set()
            self._look_after = _FIRST_LOOK
        return records

    def _note_taken(self) -> None:
        stream = self._stream()
        if stream is not None:
            _note_taken_from(stream, self._run, self)

    def waiting(self) -> bool:
        """Called by a source that found nothing to take: True if records
        came meanwhile (take them now); else it sleeps until woken. (Asleep
        first, then looked again: a record appended between the two wakes it.)"""
        self._asleep = True
        if self.arrived or self.done:
            self._asleep = False
            return True
        # Records may come within a chunk, with nobody to say so (looks after
        # 1, 2, 4 ... ms); and, whatever the thread does, a source asleep
        # looks again within _LAST_LOOK: a wake lost between the two threads
        # costs at most that, never the rest of the run (an idle stream: ten
        # looks a second at most).
        wiring = self._wiring  # (None: the run is over)
        # (one look waiting at a time: a record a wake is ~10,000 a second)
        if not self._looking and wiring is not None:
            self._looking = True
            after = self._look_after if self._chunked else _LAST_LOOK
            wiring[0].call_later(after, self._look_again, wiring[2])  # (this run's: `_look_again`)
            if self._chunked:
                self._look_after = min(self._look_after * 2, _LAST_LOOK)
        return False

    def _look_again(self, ended: asyncio.Future) -> None:
        # (whatever `_asleep` says: the thread that cleared it may be the one
        # whose wake was lost; a source woken that has nothing sleeps again)
        wiring = self._wiring
        if wiring is not None and wiring[2] is not ended:
            # a look of a run before, on the same loop (run_async after a run
            # ended early): this run's own are looking (it cleared `_looking`),
            # and this one would have started a second chain of them
            return
        self._looking = False
        self._asleep = False
        self._wake()

    def _look(self) -> None:
        if self._asleep:
            self._asleep = False
            self._wake()

    def _wake(self) -> None:
        wiring = self._wiring
        if wiring is not None:  # (else the run is over: a look it left came after)
            wiring[1]()

    # -- on the reader thread ---------------------------------------------------

    def _read(self, _held: tuple) -> None:
        # `_held`: the standard input's file objects, for as long as this
        # thread may wait in a read of one of them. A run that ends before
        # its input (Ctrl-C, a failure) leaves the thread waiting, holding
        # the BufferedReader's lock, and an interpreter's exit that frees
        # `sys.stdin` closes it: for `from_iterable(sys.stdin.buffer)` that
        # aborted the process ("Fatal Python error: _enter_buffered_busy:
        # could not acquire lock ..."). A waiting daemon thread's frame is
        # never freed, so neither are they.
        arrived, room, limit, iterating = self.arrived, self._room, self._limit, self._turn.lock
        extend, monotonic = arrived.extend, time.monotonic
        records = chain(self._iterator(), _the_end())
        size = 1
        try:
            while True:
                if self._stopped:
                    with self._handover:
                        if self._stopped:  # (a later run that takes it over starts a thread again)
                            self._thread, self._chunked, self._wiring = None, False, None
                            return
                if size > 1 and not self._chunked:
                    self._chunked = True
                    if self._asleep:  # (it may have looked before: it must look again, now timed)
                        self._call(lambda _wake: self._look())
                elif size == 1:
                    self._chunked = False
                with iterating:
                    started = monotonic()
                    extend(islice(records, max(min(size, limit - len(arrived)), 1)))
                size = min(2 * size, limit) if monotonic() - started < _AT_ONCE else 1
                if self._asleep and arrived:
                    self._asleep = False
                    self._call(_wake_it)
                if len(arrived) >= limit:
                    # Paused until the source has taken half: woken by each
                    # take to read a chunk more, the thread of a source taking
                    # less than a chunk at a time (batch_size=1, a slow
                    # downstream) read ahead without bound (300,000 records
                    # waiting, under a limit of 4,096). Chunks stop at the limit.
                    while len(arrived) > limit // 2 and not self._stopped:
                        room.clear()
                        if len(arrived) > limit // 2 and not self._stopped:  # (taken since: go on)
                            room.wait()
        except _EndOfInput:
            stream = self._stream()
            if stream is not None:
                _note_fifo_ended(stream, self)
        except BaseException as exc:  # the iterator's: the source raises it, naming itself
            self.error = exc
        self._chunked = False
        self.done = True
        self._call(self._end_came)
        with self._handover:
            if self._stopped:  # (ended for nobody: the reader may be left over)
                self._wiring = None

    def _end_came(self, wake: Callable[[], None]) -> None:
        self._asleep = False
        wake()

    def _call(self, callback: Callable) -> None:
        """`callback(wake)` on the loop of the run the reader reads for, in
        its kernel's context."""
        wiring = self._wiring
        if wiring is None:  # (the run is over, nobody to tell)
            return
        loop, wake, _ended, context = wiring
        try:
            loop.call_soon_threadsafe(callback, wake, context=context)
        except RuntimeError:  # the loop is closed: the run is over, nobody to tell
            pass


def _forget_closed() -> None:
    """Drop (under `_left_over_lock`) the readers left over whose stream the
    caller has closed since, or dropped: no later run can read it (what they
    read goes with the file, as what is in its buffer does), and each kept up
    to a few batches of records for as long as the process ran."""
    for key, reader in list(_left_over.items()):
        stream = reader._stream()
        try:
            closed = reader._iterator() is None or (stream is not None and stream.closed)
        except Exception:  # (a broken wrapper: kept, as before)
            closed = False
        if closed:
            del _left_over[key]


def _weakly(obj) -> Callable[[], object]:
    """A weak reference to `obj`, or, where it can have none (a `map`, a
    `csv.reader`), a function returning it."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def _wake_it(wake: Callable[[], None]) -> None:
    wake()


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    """A wake of two sources reading with one reader: each asleep looks again."""
    def wake() -> None:
        first()
        second()
    return wake
