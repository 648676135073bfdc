"""The notice of a closed loop's io_uring ring, taken before `run` returns.

libuv (uvloop's, since 1.45) batches epoll_ctl calls through an io_uring
ring that every loop opens (`uv__platform_loop_init`; UV_USE_IO_URING does
not turn it off). Closing it, at the end of a blocking `run(flow)`, hands
its teardown to a kernel worker that, once the ring's references are gone
(an RCU grace period: 10-20 ms after the close here), queues task work on
each thread that entered the ring, with TIF_NOTIFY_SIGNAL
(`io_ring_exit_work`, TWA_SIGNAL). Whatever blocking call that thread is in
then is interrupted: a write to a full pipe returns short, with what it had
written so far. A buffered stream writes the rest; an unbuffered text stream
(`python -u`, PYTHONUNBUFFERED=1: a TextIOWrapper straight over a FileIO)
drops it in silence (CPython gh-85393): `print(big)` after a run, piped to a
slow reader, lost all but the pipe's 64 KiB.

So where this thread's stdout or stderr is such a stream on a pipe, socket
or terminal (not on a regular file nor /dev/null, whose writes are not cut
short), and the loop did open a ring, the thread waits, after the loop is
closed, in a system call that the notice interrupts (epoll_wait on an empty
epoll set returns EINTR), and so takes the notice there rather than in the user's next
write: 10-20 ms once per blocking run, in that case only (a notebook's,
pytest's captured and a buffered stdout cost nothing). The wait is bounded
(`LONGEST`), for a kernel that would restart epoll_wait instead.
"""

from __future__ import annotations

import ctypes
import io
import os
import select
import stat
import sys
import time

import uvloop

LONGEST = 0.25  # seconds: the notice came 10-20 ms after the close (Linux 6.18)

_libc = None
_NULL = os.makedev(1, 3)  # /dev/null's device number (Linux)
_MADV_DONTFORK = 10  # (Linux: a mapping a fork does not copy)
_RING = "anon_inode:[io_uring]"
_SQES = 0x10000000  # the mapping offset of a ring's submission entries

# The ring descriptors of the loop a blocking run runs on, while it runs:
# a process forked from it lets go of them (`_let_go_in_a_forked_child`).
_ours: set[str] = set()
# Where libuv keeps each one's descriptor number (`_unbatched`), by descriptor.
_kept_at: dict[str, int] = {}


def _cuttable(stream) -> bool:
    """Whether `stream` drops the rest of a short write (an unbuffered text
    stream) on a descriptor whose writes can be cut short."""
    if type(stream) is not io.TextIOWrapper or isinstance(stream.buffer, io.BufferedIOBase):
        return False
    try:
        found = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    # (nor /dev/null, whose writes are never cut short either: `python -u app.py
    # >/dev/null 2>&1` waited 16-18 ms a run for a notice that cost it nothing)
    return not (stat.S_ISREG(found.st_mode) or (stat.S_ISCHR(found.st_mode) and found.st_rdev == _NULL))


def _rings() -> set[str]:
    """This process's io_uring descriptors (their /proc/self/fd names)."""
    found = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}") == _RING:
                found.add(name)
        except OSError:
            pass
    return found


def run(main):
    """`uvloop.run(main)`, taking its ring's closing notice before returning
    where an unbuffered stdout or stderr would lose output to it."""
    if not sys.platform.startswith("linux") or not (_cuttable(sys.stdout) or _cuttable(sys.stderr)):
        return uvloop.run(main)
    opened = []

    def loop_factory():
        before, mapped = _rings(), _ring_mappings()
        loop = uvloop.new_event_loop()
        rings = _rings() - before
        opened.append(rings)
        if rings:
            _kept_from_forks(rings, _ring_mappings() - mapped, loop)
        return loop

    try:
        return uvloop.run(main, loop_factory=loop_factory)
    finally:
        if opened and opened[0]:
            _ours.difference_update(opened[0])
            for ring in opened[0]:
                _kept_at.pop(ring, None)
            _take_notice()


# A process forked without exec during the run (a step's `os.fork()`, a
# `multiprocessing` process of the fork method) held a reference to the
# loop's ring, through its copy of the descriptor and of the ring's memory
# mappings: the ring's teardown, and its notice, came when that process
# ended, not as the loop closed, maybe long after `_take_notice` stopped
# waiting, and cut the user's write short then (a child ending 0.5 s after
# the run: 65,536 of 300,000 bytes printed). The mappings are not copied by
# a fork (MADV_DONTFORK), and a forked child's descriptors of the ring
# become /dev/null (a close would close whatever took their number later, as
# libuv closes it again at the loop's teardown): the loop's close is then the
# last reference, and the notice comes as it always did. (A forked child
# cannot use its parent's loop anyway: it shares the epoll set.)

def _ring_mappings() -> set[tuple[int, int, int]]:
    """The address ranges of this process's io_uring rings' mappings, and their offsets."""
    found = set()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if line.rstrip().endswith(_RING):
                    addresses, _mode, offset = line.split(None, 3)[:3]
                    start, end = addresses.split("-")
                    found.add((int(start, 16), int(end, 16), int(offset, 16)))
    except OSError:
        pass
    return found


def _kept_from_forks(rings: set[str], mappings: set[tuple[int, int, int]], loop) -> None:
    # Only where libuv's copy of the descriptor is found: a child that cannot
    # be told to do without the ring keeps it, its memory and descriptor, as
    # before (its notice may come late), rather than run a loop whose ring
    # memory it lacks (SIGSEGV) or whose descriptor is /dev/null.
    global _libc
    if len(rings) != 1:  # (which mappings are whose: one ring opened)
        return
    ring = next(iter(rings))
    kept_at = _descriptor_kept_at(loop, int(ring), {offset: start for start, _, offset in mappings})
    if kept_at is None:
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    for start, end, _offset in mappings:
        _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTFORK)
    _kept_at[ring] = kept_at
    _ours.add(ring)


# A forked child that went on from the step, not ending with `os._exit`
# (`sys.exit()`, an exception), ran the copied loop, whose libuv batches
# epoll_ctl through the ring's memory, not copied: it died of SIGSEGV, where
# it had ended with its run failing, status 0. libuv does without the ring
# where its descriptor is -1 (plain epoll_ctl; nothing of the ring touched,
# nor closed, at the loop's close): the child's copy is set so. Where libuv
# keeps it is found once, by the ring's mappings libuv points at just before
# it (`struct uv__iou`: sq, cqe, sqe, 4 lengths, ringfd), not assumed.

def _descriptor_kept_at(loop, ring: int, starts: dict[int, int]) -> int | None:
    """The address of libuv's copy of the descriptor `ring` of `loop`'s
    epoll_ctl ring (mapped at `starts`, by offset), None where not found."""
    try:
        from uvloop.loop import libuv_get_loop_t_ptr

        pointer_of = ctypes.pythonapi.PyCapsule_GetPointer
        pointer_of.restype, pointer_of.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        internal = ctypes.c_void_p.from_address(pointer_of(libuv_get_loop_t_ptr(loop), None) + 40).value
        words = (ctypes.c_uint64 * 64).from_address(internal)  # (uv__loop_internal_fields_t: ~400 bytes)
        for at in range(len(words) - 8):
            if (words[at] == starts.get(0) and words[at + 2] == starts.get(_SQES)
                    and ctypes.c_int32.from_address(internal + 8 * (at + 7)).value == ring):
                return internal + 8 * (at + 7)
    except Exception:  # (another uvloop: not found)
        pass
    return None


def _let_go_in_a_forked_child() -> None:
    if not _ours:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for name in _ours:
            try:
                if os.readlink(f"/proc/self/fd/{name}") == _RING:
                    ctypes.c_int32.from_address(_kept_at[name]).value = -1
                    os.dup2(null, int(name), inheritable=False)
            except OSError:
                pass
    finally:
        os.close(null)
    _ours.clear()
    _kept_at.clear()


os.register_at_fork(after_in_child=_let_go_in_a_forked_child)


def _take_notice() -> None:
    """Wait, at most `LONGEST`, in a call the closed ring's notice
    interrupts. Real signals are blocked meanwhile (epoll_pwait's mask), so
    that only the notice ends it: a signal that came first (a Ctrl-C, a
    timer's SIGALRM, a SIGCHLD handler's) ended it before the notice, which
    then cut the next write short all the same (`print(big)` after a run
    with a 2 ms SIGALRM timer: 65,536 of 300,000 bytes, every time). Such a
    signal is delivered as the wait returns, its handler run right after."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    events = ctypes.create_string_buffer(16)
    blocked = ctypes.create_string_buffer(b"\xff" * 128, 128)  # (a sigset_t: every signal)
    deadline = time.monotonic() + LONGEST
    with select.epoll() as empty:
        while (left := deadline - time.monotonic()) > 0:
            if _libc.epoll_pwait(empty.fileno(), events, 1, max(1, int(left * 1000)), blocked) < 0:
                return  # EINTR: the notice (its task work has run on the way out)
