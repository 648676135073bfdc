"""The standard input on several kernel processes: kernel 0's alone.

A pipe (`cat events | python -m kernel.run p.py --cores 2`) can be read
whole by one process only: two reading it each take lines the other needed.
multiprocessing closed each kernel process's `sys.stdin` and gave it
/dev/null instead, so `from_iterable(sys.stdin)` read nothing under
`python -m kernel.run --cores 2` (each kernel imports the pipeline after
the fork) and the run ended without a word; built before
`run(flow, cores=2)`, it failed with "I/O operation on closed file".

Now kernel 0 (of the whole run: the first kernel of a cluster's process 0)
keeps the caller's `sys.stdin` open, the other kernels get a stand-in that
refuses to be read, saying why (`Elsewhere`), and `from_iterable` given
the standard input or any stream (a pipe, a FIFO, a socket: `is_stream`)
reads it in kernel 0, whole (kernel/operators/_sources.py).
"""

from __future__ import annotations

import fcntl
import io
import os
import stat
import sys


class StandardInputError(RuntimeError):
    """A kernel other than kernel 0 read the standard input (raised in the
    function that did, and so named with its step, as any error there)."""


class NoDescriptor(StandardInputError, io.UnsupportedOperation):
    """Kernel 1's `sys.stdin.fileno()`: a StandardInputError, and what a
    file without a descriptor raises (code that falls back on it)."""


_NOT_HIDDEN = object()
_caller_stdin = _NOT_HIDDEN  # in a kernel process: the sys.stdin it was forked with


def hide_from_multiprocessing() -> None:
    """In a kernel process, before multiprocessing's bootstrap closes
    `sys.stdin` (it leaves None alone): keep it for `take_standard_input`."""
    global _caller_stdin
    _caller_stdin, sys.stdin = sys.stdin, None


def take_standard_input(index: int, peers: int) -> None:
    """Kernel `index` of `peers`: kernel 0 keeps the caller's stdin, the
    others get `Elsewhere`. (Nothing in a process whose stdin was not
    hidden: the links process of a cluster has multiprocessing's.)"""
    if _caller_stdin is _NOT_HIDDEN:
        return
    if index == 0:
        sys.stdin = _caller_stdin
    else:
        sys.stdin = Elsewhere(index, peers, getattr(_caller_stdin, "encoding", None) or "utf-8")


class Elsewhere(io.TextIOBase):
    """`sys.stdin` of a kernel other than kernel 0: reading it raises a
    StandardInputError saying whose the standard input is (a function reading it
    in every kernel, a generator function over `sys.stdin`, `input()`,
    `fileinput`: kernel 0 would have kept its share of the lines only, and
    the others read nothing)."""

    def __init__(self, index: int, peers: int, encoding: str = "utf-8") -> None:
        super().__init__()
        self._index, self._peers, self._encoding = index, peers, encoding
        self._buffer = _BinaryElsewhere(self)

    # What a pipeline file may touch at module level, which every kernel
    # imports: `sys.stdin.buffer` (bytes; its reading refuses as this one's
    # does), `sys.stdin.reconfigure(...)`, the encoding.
    @property
    def buffer(self) -> _BinaryElsewhere:
        return self._buffer

    @property
    def encoding(self) -> str:
        return self._encoding

    @property
    def name(self) -> str:
        return "<stdin>"

    def reconfigure(self, *, encoding=None, errors=None, newline=None, line_buffering=None,
                    write_through=None) -> None:
        if encoding is not None:
            self._encoding = encoding

    def readable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        # (asked by an async source: loop.connect_read_pipe(..., sys.stdin), in every kernel)
        raise NoDescriptor(
            f"kernel {self._index}'s sys.stdin has no file descriptor: on {self._peers} kernels the "
            "standard input is kernel 0's alone, and an async source that reads it runs in every "
            "kernel (reading it in kernel 0 alone would not do: an async source keeps only its "
            "share of what it reads): from_iterable(sys.stdin) reads it in kernel 0, whole, "
            "or run on one kernel"
        )

    def read(self, size: int | None = -1) -> str:
        raise self._refusal()

    def readline(self, size: int | None = -1) -> str:
        raise self._refusal()

    def readlines(self, hint: int = -1) -> list[str]:
        raise self._refusal()

    def _refusal(self) -> StandardInputError:
        return StandardInputError(
            f"kernel {self._index} read the standard input: on {self._peers} kernels it is kernel 0's "
            "alone (two processes reading one pipe would each take lines the other needed). "
            "from_iterable(sys.stdin), or an iterator over it that from_iterable is given "
            "(a generator expression, map(), csv.reader()), reads it in kernel 0, whole; a "
            "function that reads it itself (a generator function, fileinput, input()) runs in "
            "every kernel: give from_iterable sys.stdin instead, or run on one kernel"
        )


class _BinaryElsewhere(io.BufferedIOBase):
    """`sys.stdin.buffer` of a kernel other than kernel 0: refuses as its
    `Elsewhere` does (`io.TextIOWrapper` over it too)."""

    def __init__(self, text: Elsewhere) -> None:
        super().__init__()
        self._text = text

    def readable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._text.fileno()

    def read(self, size: int | None = -1) -> bytes:
        raise self._text._refusal()

    def read1(self, size: int = -1) -> bytes:
        raise self._text._refusal()

    def readinto(self, buffer) -> int:
        raise self._text._refusal()

    def readline(self, size: int | None = -1) -> bytes:
        raise self._text._refusal()

    def peek(self, size: int = 0) -> bytes:
        raise self._text._refusal()


def is_stream(file) -> bool:
    """Whether `file` (a file object) is one that only one process can read
    whole: the standard input (whatever it is: a pipe, a terminal, a file
    given with `<`, whose read position the kernels would share), another
    kernel's stand-in for it (its `buffer` too, or a wrapper over either),
    or any file that is not a regular one (a pipe, a FIFO, a socket, a
    terminal)."""
    inner = file
    for _ in range(3):  # a wrapper over another kernel's stand-in: TextIOWrapper(sys.stdin.buffer)
        if isinstance(inner, (Elsewhere, _BinaryElsewhere)):
            return True
        try:
            inner = getattr(inner, "buffer", None) or getattr(inner, "raw", None)
        except Exception:  # (detached, closed)
            break
        if inner is None:
            break
    try:
        fd = file.fileno()
        return fd == 0 or not stat.S_ISREG(os.fstat(fd).st_mode)
    except (OSError, ValueError):  # no descriptor (io.UnsupportedOperation is both), or closed
        return False


def let_go_of_its_writers(file) -> None:
    """In a kernel process: its copies of the write ends of the pipe or
    FIFO `file` reads (a thread of the caller writing it as the kernels
    forked: a fork copies every descriptor of the process) become /dev/null,
    those open for reading and writing too (a FIFO's writer opened O_RDWR,
    as one does so that its open does not wait for a reader).
    A reader sees the end of a pipe once every write end is closed, and a
    kernel never closes the copies it inherited, nor has the thread that
    writes them: kernel 0 waited for more lines for ever, after the writer
    had written its last and closed its own end. (/dev/null rather than a
    close: the caller's file object, copied into the kernel, still names
    the descriptor, and a close of it there would close whatever took its
    number since.) Called in every kernel, before kernel 0 reads."""
    if _caller_stdin is _NOT_HIDDEN:  # the caller's own process: its writers are its own
        return
    try:
        own = file.fileno()
        read = os.fstat(own)
    except (OSError, ValueError):  # no descriptor, or closed
        return
    if not stat.S_ISFIFO(read.st_mode):  # (a socket's other end is another file: not looked for)
        return
    null = None
    try:
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd == own:
                continue
            try:
                other = os.fstat(fd)
                if ((other.st_dev, other.st_ino) != (read.st_dev, read.st_ino)
                        or fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY):
                    continue
                if null is None:  # (read-write: a FIFO's writer opened O_RDWR, whose open never blocks)
                    null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, fd, inheritable=os.get_inheritable(fd))
            except OSError:  # (the listing's own descriptor, closed by now)
                continue
    finally:
        if null is not None:
            os.close(null)


# In a kernel of `run_async`: the descriptors of the application's stream
# sockets that the kernel let go of as it started (kernel/execution/_child.py
# `_close_inherited_streams`), each now an unconnected placeholder.
_let_go: set[int] = set()


def note_let_go(fd: int) -> None:
    _let_go.add(fd)


def was_let_go(file) -> bool:
    """Whether `file` reads a socket of the application that this kernel let
    go of: reading it failed with EINVAL ("Invalid argument"), saying
    nothing of why."""
    try:
        return file.fileno() in _let_go
    except (OSError, ValueError):  # no descriptor, or closed
        return False
