"""The application's descriptors that a kernel process (or a cluster's link
relay) lets go of: its pipes and FIFOs (either end) and its sockets that
the flow's steps do not reach.

A fork copies every descriptor of the process, and a reader sees the end
of a pipe (or of a stream socket) only once every copy of its write end
(its peer) is closed; a writer is told that nobody reads (EPIPE, SIGPIPE)
only once every copy of the read end is. A kernel never closes the copies
it inherited, and has none of the application's threads that use them.
So a thread of the caller feeding a subprocess's standard input
(`Popen(stdin=PIPE)`), with `from_iterable(p.stdout)` on two kernels,
hung for ever: the caller closed `p.stdin`, but kernel 0 (and a cluster's
relay) still held a copy, the subprocess never saw the end of its input,
never closed its output, and kernel 0 waited on it. Likewise a
`socket.socketpair()` whose end a thread of the caller writes and closes
while kernel 0 reads the other; and a subprocess whose output the caller
closed once it had read enough (`seq`, `yes`): the kernels' copies of the
read end kept it blocked on a full pipe, never ending, rather than ended
by SIGPIPE, and a caller thread waiting for it waited as long as the run.

So the launcher lists, before it makes anything of its own, the
application's pipes, FIFOs and sockets (`the_applications`), and each
child lets go of those its work does not reach (`let_go_unreached`): a
kernel of what no step reaches (the steps' functions, their closures,
defaults and the globals they name, bound methods' objects, sources'
iterables: `_reachable.reachable`, which finds file objects, sockets, and
descriptors held as numbers), nor the logging handlers, nor `sys.stdout`
and the like; the relay, which runs no step, of all but the latter two. A
descriptor a step's function does use, but through more hops than are
looked at, fails loudly where it is used (a pipe's: `BrokenPipeError` to
write, `EBADF` to read; a socket's: `ENOTCONN`) rather than writing
nowhere or reading nothing.

A kernel lets go only of the sockets that are pipes in all but name: Unix
stream sockets (`socket.socketpair()`). A network socket (TCP, UDP) or a
Unix datagram socket stays as it was: a step may use one through what the
walk does not look into (a module's attribute: `metrics.statsd.incr(n)`,
whose UDP socket, let go, made every send fail, which a client that drops
its errors, as statsd's does, turned into metrics lost without a word),
and a copy of one hangs nobody the way a pipe's does. The relay, which
runs no step, lets go of every socket.

Files read through a step's function are each kernel's own too: a
regular file open for reading, opened before the run and reached by
a step (a lookup table a function reads, `f.seek(0); f.read()`, or loads
on its first call), shared its read position across the kernels, each
moving it under the others (of 20,000 reads of a 100,000-character file
on two kernels, ~950 got another size: 0, 73,437, 126,563 characters...).
Each kernel opens the same file again (`/proc/self/fd/N`, so also one
renamed or deleted since) at the position it had at the fork, in the same
number: its reads are its own, as on one kernel. So is one open for reading
and writing (`tempfile.TemporaryFile("w+")` written, `seek(0)`, then read by
a step: 0 and 112,501 characters for 100,000), opened again for appending
where its position was at its end (a file written to): what the kernels
write through it goes whole to its end (as through the shared position, at
its end, before), and once the run is over the caller's position, where it
was at the file's end, follows to its new end (`follow_to_their_end`), as
the shared one did; short of its end (being read, or rewritten in place),
as it was opened. So where a step reaches it as a file object only. A
caller that writes to it during the run (`run_async`) writes at its own
position, over what the kernels append: not shared any more. Reached as a
number (an int of a step's may be its number by chance, or a function
writes it by `os.pwrite`, as a database does), it stays as it was: opened
for appending, Linux's pwrite goes to the end, whatever the position. Not
a file open for writing only, whose shared position is what keeps the
kernels' lines whole (`_written_files.py`).

Let go is not closed: the application's file objects, inherited too, still
hold those numbers, and a close would free a number the kernel's own next
descriptor takes, which a later write through the old object (a finalizer
flushing it) would then land in. Each takes a stand-in instead: a pipe's
write end with no reader, or an unconnected socket. Only descriptors still
the very file they were when listed (device and inode) are touched: a
number freed and taken again in between is someone else's.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import socket
import stat
import sys
import types

from kernel.dataflow import _errors

from ._reachable import reachable

# What a step's walk finds of descriptors: file objects, sockets, and numbers
# (an `os.pipe()`'s ends held as ints; an int that is no descriptor is harmless)
_HOLDERS = (io.IOBase, socket.socket, int)


_NO_POSITION = -1
_A_NETWORK_SOCKET = -2  # (or a Unix datagram socket: let go of by the relay only)


def the_applications() -> dict[int, tuple[int, int, int, bool]]:
    """The launcher, before it makes anything of its own: its pipes, FIFOs
    and sockets, and its regular files open for reading (above the
    standard three), each with its identity (device, inode) and, for a
    file, its read position."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2:
            continue
        try:
            info = os.fstat(fd)
            if stat.S_ISFIFO(info.st_mode):
                found[fd] = (info.st_dev, info.st_ino, _NO_POSITION, False)
            elif stat.S_ISSOCK(info.st_mode):
                found[fd] = (info.st_dev, info.st_ino, _NO_POSITION if _pipe_like(fd) else _A_NETWORK_SOCKET,
                             False)
            elif stat.S_ISREG(info.st_mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_WRONLY:
                position = os.lseek(fd, 0, os.SEEK_CUR)
                # (at its end here, where the kernels do not yet write to it: `_own_read_position`)
                found[fd] = (info.st_dev, info.st_ino, position, position >= info.st_size)
        except OSError:  # (the listing's own descriptor, closed by now; or closed by a thread meanwhile)
            continue
    return found


def _pipe_like(fd: int) -> bool:
    """Whether socket `fd` is a Unix stream socket (a `socketpair()`'s end)."""
    probe = socket.socket(fileno=os.dup(fd))  # (its family and type read from the descriptor)
    try:
        return probe.family == socket.AF_UNIX and probe.type == socket.SOCK_STREAM
    finally:
        probe.close()


_inherited: dict[int, tuple[int, int, int, bool]] = {}  # in a child: the launcher's `the_applications()`


def note_inherited(inherited: dict[int, tuple[int, int, int, bool]] | None) -> None:
    """A child, as it starts: what the launcher listed (`the_applications`)."""
    global _inherited
    _inherited = dict(inherited or {})


def close_listener(fd: int | tuple[int, ...] | None) -> None:
    """Close this process's copy of the listening socket handed over for a
    cluster process's links (KERNEL_LINK_FD, `ClusterPlan.listen_fd`): a
    kernel's, and the launcher's once its relay is forked. The relay alone
    serves it; a copy held elsewhere kept the port listening while the run
    failed (the relay gone, the rest ending), and a late dialler's
    connection waited in the backlog instead of being refused. Only a TCP
    socket: another is the relay's to refuse (`_inherited_listener`), and
    not ours to close (a user's variable may name stdout)."""
    if fd is None:
        return
    if isinstance(fd, tuple):  # (one port on several addresses: localhost's)
        for each in fd:
            close_listener(each)
        return
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        sock.close()
    else:
        sock.detach()


def let_go_unreached(roots=(), every_socket: bool = False, keep=frozenset()) -> None:
    """A child: let go of each listed pipe or Unix stream socket (once) that
    nothing of `roots` (a kernel's steps' factories; none for the relay),
    the logging handlers or the standard streams reaches, and open again
    each listed file for reading that `roots` reach (`_own_read_position`).
    `every_socket` (the relay, which runs no step): network sockets too,
    but the descriptors in `keep`."""
    global _inherited
    listed, _inherited = _inherited, {}
    if not listed:
        return
    files_of_steps: set[int] = set()
    read_by_steps = _reached(roots, files_of_steps)
    kept = read_by_steps | _reached([*_logging_handlers(), *_standard_streams()])
    broken_pipe = placeholder = None
    let_go = []  # what each let go of was, for the error a use of it gets
    try:
        for fd, (device, inode, position, at_its_end) in listed.items():
            try:
                info = os.fstat(fd)
            except OSError:  # closed since (by the application's object, inherited: its finalizer)
                continue
            if (info.st_dev, info.st_ino) != (device, inode):
                continue
            if position == _A_NETWORK_SOCKET:
                if not every_socket:
                    continue
            elif position != _NO_POSITION:
                if fd in files_of_steps or (fd in read_by_steps and _read_only(fd)):
                    _own_read_position(fd, position, at_its_end)
                continue
            if fd in kept or fd in keep:
                continue
            let_go.append(_described(fd, info))
            if stat.S_ISSOCK(info.st_mode):
                if placeholder is None:
                    placeholder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                stand_in = placeholder.fileno()
            else:
                if broken_pipe is None:
                    read, broken_pipe = os.pipe()
                    os.close(read)  # (a write then fails: EPIPE, a BrokenPipeError; a read: EBADF)
                stand_in = broken_pipe
            os.dup2(stand_in, fd, inheritable=os.get_inheritable(fd))
    finally:
        if placeholder is not None:
            placeholder.close()
        if broken_pipe is not None:
            os.close(broken_pipe)
        if let_go:
            listed = ", ".join(let_go[:8]) + (f" and {len(let_go) - 8} more" if len(let_go) > 8 else "")
            _errors.let_go_hint = (
                "(if the step used a pipe or a socket of the application's: this kernel process let "
                "go of those that no step was seen to reach, inherited from the process that started "
                f"the run: {listed}; a copy held here would keep a reader of the pipe from seeing "
                "its end, or a writer from being told nobody reads. Each is a stand-in that fails "
                "where used: a step that uses one through what is not looked into (a module's "
                "attribute, `helpers.out`) gets this error. Name it in the step's function (a "
                "global, a default argument, a closure's variable) or hold it in the step's object)"
            )


def _described(fd: int, info: os.stat_result) -> str:
    """`fd` as the error a step's use of it gets says it: which kind, which end."""
    if stat.S_ISSOCK(info.st_mode):
        return f"a Unix stream socket (descriptor {fd})"
    try:
        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:
        mode = None
    end = {os.O_WRONLY: "'s write end", os.O_RDONLY: "'s read end"}.get(mode, "")
    return f"a pipe{end} (descriptor {fd})"


# What of a file's flags (F_GETFL) its opening again keeps: its access and
# how it is written. (Not how it was opened: a `tempfile.TemporaryFile`'s say
# O_TMPFILE, with O_DIRECTORY, and opened so again it failed, "Not a
# directory", and its position stayed shared.)
_KEPT_FLAGS = os.O_ACCMODE | os.O_APPEND | os.O_NONBLOCK | os.O_SYNC | os.O_DSYNC


def _own_read_position(fd: int, position: int, at_its_end: bool) -> None:
    """`fd`, a file open for reading, opened again in its place: the same
    file at the same position, which this process alone now moves. One open
    for writing too, where its position was at its end (a file written to),
    is opened for appending: the kernels' writes, each at its own position,
    would land on one another's. Short of its end (a file being read, or a
    status file rewritten in place, `seek(0)` and `write`), not: appending,
    each rewrite of a 10-byte status file on two kernels went to its end (a
    review: 10,010 bytes). `at_its_end`: as the launcher listed it (a
    kernel's look would see the others' first lines: not at the end)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL) & _KEPT_FLAGS
    if flags & os.O_ACCMODE == os.O_RDWR and at_its_end:
        flags |= os.O_APPEND
    try:
        own = os.open(f"/proc/self/fd/{fd}", flags)
    except OSError:  # (no /proc, or a file this process may no longer open: shared, as before)
        return
    try:
        os.lseek(own, position, os.SEEK_SET)
        os.dup2(own, fd, inheritable=os.get_inheritable(fd))
    finally:
        os.close(own)


def read_write_files_at_their_end(roots) -> list[tuple[int, int, int]]:
    """The launcher, before the kernels fork: the regular files open for
    reading and writing that `roots` (the steps' factories) reach, whose
    position is at their end (a file the steps write to), each as (its
    number, device, inode), for `follow_to_their_end`."""
    at_end = {}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            info = os.fstat(fd)
            if (fd > 2 and stat.S_ISREG(info.st_mode)
                    and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
                    and os.lseek(fd, 0, os.SEEK_CUR) >= info.st_size):
                at_end[fd] = (fd, info.st_dev, info.st_ino)
        except OSError:  # (the listing's own descriptor, closed by now; or closed by a thread meanwhile)
            continue
    if not at_end:  # (no walk of the steps for nothing)
        return []
    files_of_steps: set[int] = set()
    _reached(roots, files_of_steps)
    return [at_end[fd] for fd in files_of_steps if fd in at_end]


def follow_to_their_end(files: list[tuple[int, int, int]]) -> None:
    """The launcher, after the run: the position of each of `files`
    (`read_write_files_at_their_end`), still the same file, moves to its
    end, past what the kernels appended through their own descriptions
    (`_own_read_position`), as the position they shared before did: the
    caller's next write through it went over their lines."""
    for fd, device, inode in files:
        try:
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) == (device, inode):
                os.lseek(fd, 0, os.SEEK_END)
        except OSError:  # (closed since)
            continue


def _read_only(fd: int) -> bool:
    try:
        return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    except OSError:
        return False


def _reached(roots, as_objects: set[int] | None = None) -> set[int]:
    """The descriptors `roots` reach, and the methods of the classes they
    reach (an operator's class given to `apply`, an object's): the walk
    does not look into a class, whose namespace would reach everything,
    but a method that writes to a pipe of a global of its module is the
    step's own work (`Tell.on_batch` writing to one failed with a
    BrokenPipeError). `as_objects` gets those reached as file objects or
    sockets (not as numbers: an int of a step's, a count or a size, may be
    any descriptor's by chance)."""
    kept: set[int] = set()
    as_objects = set() if as_objects is None else as_objects
    classes: dict[type, None] = {}
    for root in roots:
        _add_descriptors(reachable(root, (*_HOLDERS, type)), kept, classes, as_objects)
    for cls in list(classes)[:_CLASSES_LOOKED_INTO]:
        for method in _own_methods(cls):
            _add_descriptors(reachable(method, _HOLDERS), kept, classes, as_objects)
        # and what its class attributes hold: `Sink.out`, a pipe a method
        # writes to (let go, the step failed with a BrokenPipeError), or a
        # multiprocessing.Queue a method puts to (its feeder thread's
        # writes failed, and the records were lost without a word)
        for value in _own_values(cls)[:_VALUES_LOOKED_INTO]:
            _add_descriptors(reachable(value, _HOLDERS), kept, classes, as_objects)
    return kept


_CLASSES_LOOKED_INTO = 32
_VALUES_LOOKED_INTO = 64  # class attributes a class (an Enum of 20,000 members took ~0.3 s a kernel)
_LIBRARY = frozenset({"kernel", "net", "operators", "state", "aliases", "builtins", "abc", "typing"})


def _add_descriptors(found, kept: set[int], classes: dict, as_objects: set[int]) -> None:
    for holder in found:
        if isinstance(holder, type):
            classes[holder] = None
        elif isinstance(holder, bool):
            continue
        elif isinstance(holder, int):
            kept.add(holder)
        else:
            try:
                fd = holder.fileno()
            except (OSError, ValueError):  # closed, detached, or no descriptor (a StringIO)
                continue
            kept.add(fd)
            as_objects.add(fd)


def _own_methods(cls: type) -> list:
    """The functions of `cls` and its bases, but the library's and Python's."""
    methods = []
    for klass in cls.__mro__:
        if _not_users(klass):
            continue
        for attribute in vars(klass).values():
            if isinstance(attribute, (staticmethod, classmethod)):
                attribute = attribute.__func__
            elif isinstance(attribute, property):
                methods += [f for f in (attribute.fget, attribute.fset) if f is not None]
                continue
            if isinstance(attribute, types.FunctionType):
                methods.append(attribute)
    return methods


def _own_values(cls: type) -> list:
    """The class attributes of `cls` and its bases that are no functions,
    but the library's and Python's classes'."""
    values = []
    for klass in cls.__mro__:
        if _not_users(klass):
            continue
        for name, attribute in vars(klass).items():
            if name.startswith("__") or isinstance(attribute, (staticmethod, classmethod, property,
                                                               types.FunctionType)):
                continue
            values.append(attribute)
    return values


def _not_users(klass: type) -> bool:
    top = str(getattr(klass, "__module__", "")).partition(".")[0]
    if top in _LIBRARY or top in sys.stdlib_module_names:
        return True
    # (a script's classes are the user's, though named with a _: `__main__`,
    # and a pipeline file run by `python -m kernel.run`, `__kernel_pipeline__`;
    # their methods went unlooked at, and a pipe they wrote to was let go)
    return top.startswith("_") and not (top.startswith("__") and top.endswith("__"))


def _logging_handlers() -> list:
    """Every handler of every logger (their streams and sockets: the
    kernels log through them)."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    return [handler for logger in loggers for handler in getattr(logger, "handlers", ())]


def _standard_streams() -> list:
    return [sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__]
