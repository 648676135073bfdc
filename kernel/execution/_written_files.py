"""Files a flow's functions write to, opened before the kernels fork.

A `sink(lambda r: f.write(...))` over a file opened before `run(flow,
cores=N)`: each kernel process writes into its own copy of the file
object's buffer, and a kernel leaves by `os._exit`, which flushes nothing,
so whatever was still buffered was lost (1,000 short lines on two
kernels: none reached the file; on one kernel, in the caller's process,
all of them did).

So, where such a file can be seen from the flow's steps (`written_by`: the
functions' closures, defaults and the globals their code names, bound
methods' objects, the steps' own attributes, a few hops deep), the
launcher flushes it before the kernels fork (they inherit an empty
buffer, and write nothing of the caller's twice), and each kernel flushes
them all when its run ends, before it answers. A flush that fails (a full
disk) fails the run, naming the file: what it held is lost.

The kernels write through one shared file description (but to a regular
file open for reading too, that a step reaches as an object, each through
its own, so that each reads at its own position; opened for appending
where it was at its end: `_inherited_descriptors.py`). In a regular file
each write is whole (Linux moves the shared offset under a lock), and a
buffer is written out at the end of a write, so a line written in one
call (`f.write(line)`, a csv writer's row) stays whole. Into a pipe, a
write of more than PIPE_BUF may be cut by the other kernels' writes, so a
text file that is no regular file is written a line at a time
(`by_whole_lines`).

A file opened in the kernel (an operator's `open()`) is the operator's to
close; a file a pipeline module opens at import under `python -m
kernel.run --cores N` is each kernel's own (its own offset: open it for
appending, or per kernel), and flushed at the end like the others, as is
one a step's function opens on first use (found again as the run ends).
"""

from __future__ import annotations

import io
import os
import stat

from kernel.dataflow._errors import KernelError

from ._reachable import reachable


def written_by(roots) -> list:
    """The open, writable file objects reachable from `roots` (steps'
    factories or operators, functions), as far as can be seen
    (`_reachable.reachable`)."""
    found: dict[int, object] = {}
    for root in roots:
        for stream in reachable(root, io.IOBase):
            if _open_for_writing(stream):
                found[id(stream)] = stream
    return list(found.values())


def _open_for_writing(stream) -> bool:
    try:
        return not stream.closed and stream.writable()
    except Exception:  # a broken wrapper: not one to write out
        return False


def flow_files(graph) -> list:
    """The files the steps of `graph` write to (`written_by` from every
    step's factory)."""
    return written_by([node.factory for node in graph.nodes])


def with_opened_since(files: list, graph) -> list:
    """`files`, and those the steps of `graph` reach now: a file a step
    opens itself on first use, into a global or an attribute, is the
    kernel's own, opened after the walk at the start of its run (of 1,000
    lines on two kernels, none were written: each kernel left with them in
    its buffer)."""
    known = {id(stream) for stream in files}
    return files + [stream for stream in flow_files(graph) if id(stream) not in known]


def flush_before_fork(graph) -> None:
    """The launcher, before the kernels fork: write out what the flow's
    files hold, so that no kernel inherits it and writes it again."""
    for stream in flow_files(graph):
        try:
            stream.flush()
        except Exception:  # the caller's own file (or a class of its own): its next write or close says so
            pass


def by_whole_lines(files: list) -> None:
    """A kernel: make the text files that are no regular file (a pipe, a
    FIFO, a terminal) line-buffered, as stdout is
    (`_child._output_by_whole_lines`): a full buffer's write of more than
    PIPE_BUF into a pipe may be cut by the other kernels' writes. A
    regular file is left block-buffered: each write is whole in it (the
    kernels share its offset, which Linux moves under a lock), and a line
    per write cost ~4x the time (400,000 lines on two kernels: 720 against
    160 ms)."""
    for stream in files:
        try:
            regular = stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
        except (OSError, ValueError):  # no descriptor, or closed: flushed at the end all the same
            continue
        if not regular:
            line_buffered(stream)


def line_buffered(stream) -> None:
    """Make a text file line-buffered, not written through: a `print()` of
    a line, text and newline, is one write (unbuffered, `python -u`, each
    piece was one)."""
    if isinstance(stream, io.TextIOWrapper) and (stream.write_through or not stream.line_buffering):
        try:
            stream.reconfigure(line_buffering=True, write_through=False)
        except (OSError, ValueError):  # a closed or broken stream: nothing to write there anyway
            pass


def write_out(files: list, quietly: bool = False) -> None:
    """A kernel's run has ended: flush every file. A flush that fails fails
    the run (`quietly`: the run failed already, and says why)."""
    for stream in files:
        try:
            if not stream.closed:
                stream.flush()
        except Exception as exc:
            if quietly:
                continue
            if not isinstance(exc, (OSError, ValueError)):
                raise  # a file class of the user's own: its own error, as it raised it
            name = getattr(stream, "name", None)
            what = repr(stream) if name is None else repr(name)
            raise KernelError(
                f"could not write out what the flow's steps wrote to the file {what} ({type(exc).__name__}: "
                f"{exc}): what it still held is lost"
            ) from exc
