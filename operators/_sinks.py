"""Where streams end: collect, sink(fn), print."""

from __future__ import annotations

import select
import sys

import kernel._logging as _logging
from kernel._logging import BLANK_LINE
from kernel.dataflow._errors import PASSES_THROUGH
from kernel.dataflow._operator import Operator

from ._calls import user_error

# Bytes a chunk of lines may take: one write of at most PIPE_BUF is atomic.
_ATOMIC_WRITE = select.PIPE_BUF // 4 * 3


class Collect(Operator):
    """Gather every record; the caller reads them from the handle after the run."""

    def open(self, context):
        self.items: list = []

    def on_batch(self, port, batch):
        self.items.extend(batch)

    def result(self):
        return self.items


class Sink(Operator):
    """Call `fn(record)` for every record on the kernel that holds it."""

    def __init__(self, fn) -> None:
        if not callable(fn):
            raise TypeError(f"sink needs a callable, got {fn!r}")
        self.fn = fn

    def on_batch(self, port, batch):
        fn = self.fn
        it = iter(batch)
        try:
            for record in it:
                fn(record)
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise user_error(self.name, fn, exc, batch, it) from exc


class Print(Operator):
    """Write every record's `str()` on its own line, one write per batch."""

    def __init__(self, prefix: str = "", file=None) -> None:
        self.prefix = prefix
        self.file = file

    def on_batch(self, port, batch):
        out = self.file or sys.stdout
        prefix = self.prefix
        lines = [f"{prefix}{record}\n" for record in batch]
        if lines and self.file is None and _logging.live_line:
            # the command's live line is on this terminal: blank it, or the
            # first line goes on its end (the live line is drawn again after)
            lines[0] = BLANK_LINE + lines[0]
        # Several kernel processes share one stdout: a write of at most
        # PIPE_BUF bytes to a pipe is atomic, so flush whole lines in chunks
        # below it and no line is ever torn by another kernel's output.
        chunk: list[str] = []
        size = 0
        for line in lines:
            # Bytes, not characters: a character takes up to 4 (UTF-8,
            # UTF-16). Counted as characters, chunks of non-ASCII text were
            # writes of up to ~9 KB, and the other kernels' lines tore them
            # (--cores 2 into a pipe: ~180 of 30,000 lines of CJK text
            # spliced). str.isascii() is O(1): ASCII lines cost as before.
            length = len(line) if line.isascii() else 4 * len(line)
            if size + length > _ATOMIC_WRITE and chunk:
                out.write("".join(chunk))
                out.flush()
                chunk, size = [], 0
            chunk.append(line)
            size += length
        if chunk:
            out.write("".join(chunk))
            out.flush()
