"""`Dataflow.from_files(pattern, ...)`: lines, JSON Lines or CSV rows of files.

Sharing the files among kernels. A bounded run (`follow=False`) lists the
files matching the pattern once, sorted, and lays them end to end: kernel
`k` of `n` reads the bytes `[k*S//n, (k+1)*S//n)` of that concatenation (`S`
the total size). So each kernel reads one contiguous span (whole files, and
at most two pieces of files at its ends), and the kernels' work is even
however the sizes fall. A span owns the lines that *start* inside it (the
rule of Hadoop's line reader): it skips a line begun before its start and
finishes the one it started past its end, so each line is read once.
Every kernel computes the same plan from one listing of the files (names
and sizes), taken once a run and shared (`Node.input_listing`,
kernel/execution/_listings.py): a file appended to meanwhile is read to its
listed size. The files must not change otherwise during a bounded run, and
the plan goes into the snapshot, so a resumed run reads the spans the
crashed one had.

Following (`follow=True`) files grow, so they are not cut: each file goes
whole to the kernel `crc32(path) % n`, and each kernel looks for new files
(glob) whenever it has read all of its own, at most every `poll_interval`
seconds of the kernel's clock. Only complete lines (ending in a newline) are
read while following: a writer's half-written line waits for its newline.
A followed file that is removed is read to its end (through the open
descriptor), then closed and forgotten (old logs are deleted: the run must
neither keep their space nor fail to resume without them).

Reading: a span is read in chunks of `chunk_bytes` (`os.pread`, cut at the
last newline; a longer line reads on until its end), each decoded in one go
(`bytes.decode` and `str.split` for lines, `msgspec` for JSON Lines, the
chunk's lines joined into one array, `csv.reader` for CSV), and handed on
`records_wanted` records per poll, so memory stays at a chunk per kernel
whatever the file sizes.

Positions: a snapshot holds, per span (or followed file), the byte offset of
the first line not yet handed on, and how many malformed lines were skipped
before it; a resumed run reads on from there, so each line is read exactly
once. Line numbers (for errors) are counted only when needed, by counting
the newlines before the line's offset.
"""

from __future__ import annotations

import codecs
import csv
import functools
import glob
import math
import os
import stat
import weakref
import zlib

from kernel.dataflow._errors import KernelError, OperatorError
from kernel.dataflow._operator import DEFAULT_BATCH_SIZE, Source

from ._sources import check_batch_size

FORMATS = ("lines", "jsonl", "csv")
ON_ERROR = ("raise", "skip")
CHUNK_BYTES = 1 << 16
TAIL_BYTES = 64  # a followed file's bytes before its offset that a resumed run checks
# every byte but the double quote and the newline (`FileSource._in_quote_at`)
_BUT_QUOTES_AND_NEWLINES = bytes(b for b in range(256) if b not in b'"\n')


def check_encoding(encoding) -> bool:
    """Refuses an encoding the source cannot read; returns whether records
    are decoded from it other than as UTF-8 (msgspec reads UTF-8 only)."""
    try:
        name = codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise ValueError(f"from_files: unknown encoding {encoding!r}") from None
    # Files are cut, chunked and resumed by bytes at b"\n": an encoding in
    # which a newline is other bytes (UTF-16, UTF-32) would be cut inside
    # characters and read as garbage, or as malformed lines.
    try:
        ascii_newlines = b"a\n".decode(encoding) == "a\n"
    except LookupError:  # a codec codecs.lookup knows but bytes.decode refuses: "hex", "base64", "rot13"
        raise ValueError(f"from_files: encoding {encoding!r} is no text encoding (a codec for "
                         "codecs.encode/decode); give the encoding of the files' text, such as "
                         "'utf-8' or 'latin-1'") from None
    except UnicodeError:  # (not only UnicodeDecodeError: "punycode" and "undefined" raise a bare one)
        ascii_newlines = False
    if not ascii_newlines:
        raise ValueError(f"from_files: encoding {encoding!r} does not write a newline as the byte "
                         "b'\\n' (the files are cut at it): convert the files to UTF-8 first "
                         f"(iconv -f {encoding} -t utf-8)")
    return name != "utf-8"


def check_file_options(pattern, format, on_error, follow, poll_interval, chunk_bytes, header,
                       encoding="utf-8") -> str:
    """Refuses bad options at build time; returns the pattern as a str."""
    if not isinstance(pattern, (str, os.PathLike)):
        raise TypeError(f"from_files needs a glob pattern (a str or a path), got {pattern!r}")
    pattern = os.fspath(pattern)
    if format not in FORMATS:
        raise ValueError(f"from_files: format must be one of {', '.join(map(repr, FORMATS))}, got {format!r}")
    if on_error not in ON_ERROR:
        raise ValueError(f"from_files: on_error must be 'raise' or 'skip', got {on_error!r}")
    # a flag other than a bool was taken for its truth value: header="no" read a header
    for flag, value in (("follow", follow), ("header", header)):
        if not isinstance(value, bool):
            raise ValueError(f"from_files: {flag} must be True or False, got {value!r}")
    if header and format != "csv":
        raise ValueError(f"from_files: header=True is for format='csv', not {format!r}")
    number = isinstance(poll_interval, (int, float)) and not isinstance(poll_interval, bool)
    if not (number and poll_interval > 0 and math.isfinite(poll_interval)):
        raise ValueError(f"from_files: poll_interval must be a number of seconds > 0, got {poll_interval!r}")
    if not (isinstance(chunk_bytes, int) and not isinstance(chunk_bytes, bool) and chunk_bytes >= 1):
        raise ValueError(f"from_files: chunk_bytes must be an int >= 1, got {chunk_bytes!r}")
    check_encoding(encoding)
    if not follow and not matching_files(pattern):
        hint = " (a directory: give a pattern of its files, 'dir/*')" if os.path.isdir(pattern) else \
            _magic_directory_hint(pattern)
        raise FileNotFoundError(f"from_files: no file matches {pattern!r}{hint}")
    return pattern


def _magic_directory_hint(pattern: str) -> str:
    """Why a pattern under a directory whose own name holds [, ], * or ?
    matches nothing: glob reads them as a pattern too ("exports [2026]/*.csv"
    looks for "exports 2", "exports 0"...), and the files the user sees in
    it were said to match nothing, without a word of why."""
    directory = os.path.dirname(pattern)
    while glob.has_magic(os.path.dirname(directory)):  # (the outermost one whose name holds them)
        directory = os.path.dirname(directory)
    if not (glob.has_magic(directory) and os.path.isdir(directory)):
        return ""
    return (f" ({directory!r} is a directory, but glob reads the [, ], * or ? in its name as a "
            f"pattern: escape them, glob.escape({directory!r}) + {pattern[len(directory):]!r})")


def matching_files(pattern: str) -> list[str]:
    """The paths matching `pattern` (`**` spans directories), sorted; only
    regular files (a broken link stays, to be reported as unreadable): not
    directories, and not a FIFO or a device, whose open() blocks the
    kernel's loop (the caller's, with run_async) until a writer comes."""
    found = {p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p) or not os.path.exists(p)}
    if glob.has_magic(pattern) and os.path.isfile(pattern):
        found.add(pattern)  # a file whose name holds [, ] or * (`data[1].txt`): named, it is meant
    return sorted(found)


def list_files(pattern: str) -> list[tuple[str, int, int | None, str | None]]:
    """The files matching `pattern`, as a bounded run plans on them: `(path,
    size, inode number, None)`, or `(path, 0, None, why)` for one that
    cannot be read (each kernel refuses the run, naming it). Taken once a
    run for all its kernels (`Node.input_listing`)."""
    listed = []
    for path in matching_files(pattern):
        try:
            info = os.stat(path)
        except OSError as exc:
            listed.append((path, 0, None, str(exc)))
        else:
            listed.append((path, info.st_size, info.st_ino, None))
    return listed


def plan_spans(sized: list[tuple[str, int]], index: int, peers: int) -> list[tuple[str, int, int]]:
    """Kernel `index`'s spans `(path, start, end)`: its share of the files laid
    end to end, cut evenly by bytes."""
    total = sum(size for _, size in sized)
    low, high = index * total // peers, (index + 1) * total // peers
    spans = []
    offset = 0  # where the file starts in the concatenation
    for path, size in sized:
        start, end = max(low, offset), min(high, offset + size)
        if start < end:
            spans.append((path, start - offset, end - offset))
        offset += size
    return spans


def follow_owner(path: str, peers: int) -> int:
    """The kernel that follows `path` (stable across processes and runs)."""
    return zlib.crc32(path.encode("utf-8", "surrogateescape")) % peers


def _tail(tail: bytes, data: bytes) -> bytes:
    """The last TAIL_BYTES bytes of `tail + data` (read one after the other)."""
    return data[-TAIL_BYTES:] if len(data) >= TAIL_BYTES else (tail + data)[-TAIL_BYTES:]


class FileError(Exception):
    """A file the source cannot read as asked (the cause of its OperatorError)."""


class _Chunk:
    """Records decoded from the complete lines `data` read at byte `base`.
    `line_of[i]` is the line (of `data`) of record i, None when record i is
    line i (no blank or skipped line in the chunk); `skipped` the lines
    dropped as malformed."""

    __slots__ = ("base", "data", "line_of", "records", "skipped", "taken")

    def __init__(self, base, data, records, line_of=None, skipped=()):
        self.base = base
        self.data = data
        self.records = records
        self.line_of = line_of
        self.skipped = skipped
        self.taken = 0

    def resume_point(self) -> tuple[int, int]:
        """(byte offset of the next record's line, skipped lines before it)."""
        records, taken = self.records, self.taken
        if taken >= len(records):
            return self.base + len(self.data), len(self.skipped)
        line = taken if self.line_of is None else self.line_of[taken]
        offset = 0
        for _ in range(line):
            offset = self.data.index(b"\n", offset) + 1
        return self.base + offset, sum(1 for s in self.skipped if s < line)


class _Cursor:
    """Reading one span `[start, end)` of one file (end None: following)."""

    __slots__ = ("__weakref__", "chunk", "closer", "done", "end", "fd", "in_quote", "inode", "inode_number",
                 "logged", "offset", "path", "seen_size", "skipped", "start", "tail", "tail_crc")

    def __init__(self, path, start, end, offset=None, skipped=0, inode_number=None, tail_crc=None,
                 in_quote=None):
        self.path = path
        self.start = start
        self.end = end
        self.offset = start if offset is None else offset  # the next line to decode
        self.skipped = skipped  # malformed lines skipped before `offset`
        self.fd = None
        self.closer = None  # closes `fd` once: when read to the end, or when the cursor is collected
        self.done = False
        self.logged = False
        self.chunk = None
        self.inode = None  # (st_dev, st_ino) of the open file
        # following: the st_ino of the file the offset was read in (from the
        # snapshot, until opened), so a file renamed away and replaced while
        # the run was stopped is not read from the old file's offset
        self.inode_number = inode_number
        # following: a CRC-32 of the bytes just before the snapshot's offset, so a
        # file truncated and written again (logrotate's copytruncate) while the
        # run was stopped is not read from the middle of its new lines
        self.tail_crc = tail_crc
        self.tail = b""  # following: the last bytes read before `offset` (checked before reading on)
        self.seen_size = None  # following: the size when last read to its end (closed since)
        # CSV, skipping malformed rows: inside a quoted field a malformed line
        # opened (a quoted line break), whose next lines are the same row's.
        # None: not known yet (a span that starts inside a file, a snapshot of
        # an earlier version): found by reading the file up to `offset`.
        self.in_quote = in_quote

    def position(self) -> tuple[int, int]:
        if self.chunk is not None:
            offset, skipped_in_chunk = self.chunk.resume_point()
            return offset, self.skipped + skipped_in_chunk
        return self.offset, self.skipped

    def quote_at_position(self) -> bool | None:
        """`in_quote` at `position()`: a record's line, within a chunk, is
        outside every quoted field; a chunk's end is where `in_quote` is."""
        chunk = self.chunk
        if chunk is not None and chunk.taken < len(chunk.records):
            return False
        return self.in_quote


class FileSource(Source):
    """This kernel's share of the files matching `pattern` (see the module
    docstring). `result()` reports `{"skipped": n}`, the malformed lines
    skipped with `on_error="skip"`."""

    #: Following, the files kept open between reads. A log directory may hold
    #: more files than a process may open (EMFILE): past this many, a file is
    #: closed once read to its end (or after each chunk) and opened again when
    #: it grows (lines written to a closed file just before it is removed are
    #: then not read: the open ones are read to their end through the fd).
    max_open_followed = 128

    def __init__(self, pattern, format="lines", *, follow=False, on_error="raise", header=False,
                 encoding="utf-8", poll_interval=0.1, chunk_bytes=CHUNK_BYTES,
                 batch_size=DEFAULT_BATCH_SIZE) -> None:
        self.pattern = check_file_options(pattern, format, on_error, True, poll_interval, chunk_bytes, header,
                                          encoding)
        # JSON Lines in another encoding than UTF-8 are recoded for msgspec
        # (which reads UTF-8 only: the encoding was ignored, every line malformed)
        self._recode = format == "jsonl" and check_encoding(encoding)
        self.format = format
        self.follow = follow
        self.on_error = on_error
        self.header = header
        self.encoding = encoding
        # "utf-8-sig" strips a BOM at the start of each piece it decodes (a
        # chunk, a line): decoded as UTF-8, with the BOM taken off the file's
        # first line only, as open(encoding="utf-8-sig") does
        self._strip_bom = codecs.lookup(encoding).name == "utf-8-sig"
        self._decoding = "utf-8" if self._strip_bom else encoding
        self.poll_interval = poll_interval
        self.chunk_bytes = chunk_bytes
        self.batch_size = check_batch_size(batch_size)
        import msgspec  # (here: a flow that reads no files does without it)

        self._decoder = msgspec.json.Decoder()

    def open(self, context):
        self._cursors = None  # planned at the first poll (or restored)
        self._skipped_when_ended = 0  # restored ended: its skipped count (`restore_ended`)
        self._current = 0  # the cursor being read
        self._headers: dict[str, list[str]] = {}
        self._rescan_due = True
        self._rescan_timer = None
        self._told_nothing_matches = False
        self._open_count = 0  # descriptors this source holds
        # Following: paths found gone at their open (and told so), not taken
        # on again while they still lead to no file. A dangling link matches
        # the pattern at every look for new files: dropped, it was taken on
        # as new at the next look and told again, every poll_interval.
        self._gone: set[str] = set()

    # -- snapshots ----------------------------------------------------------------

    def on_epoch(self, epoch):
        if self._cursors is None and not self.follow:
            # An epoch before this kernel's first poll (its loop busy, its
            # input paused): planned now, from the run's one listing, so the
            # snapshot holds the plan. Snapshotted as nothing, a resumed run's
            # kernel planned afresh from a new listing, cut at other bytes
            # than the other kernels' restored plans: a file appended to
            # meanwhile had lines read twice or not at all.
            self._plan()
        if self._cursors is None:
            return None
        spans = [(c.path, c.start, c.end, *c.position()) for c in self._cursors]
        # A file's inode number and the CRC-32 of its bytes before the offset:
        # a resumed run refuses a file replaced or truncated meanwhile
        # (followed or not: a bounded run's resumed run read a truncated
        # file's rest as nothing, a replaced one's from the old offset)
        # (and whether it resumes inside a skipped CSV row's quoted line break)
        spans = [(*span, c.inode[1] if c.inode is not None else c.inode_number,
                  self._tail_crc(c, span[3]), c.quote_at_position()) for span, c in zip(spans, self._cursors)]
        return {"spans": spans, "current": self._current}

    def _tail_crc(self, cursor, offset: int):
        """The CRC-32 of the (up to TAIL_BYTES) bytes before `offset` of a
        followed file (one pread a file and snapshot)."""
        if offset == 0:
            return None
        size = min(TAIL_BYTES, offset)
        if offset == cursor.offset and len(cursor.tail) == size:
            return zlib.crc32(cursor.tail)  # read to `offset`: no pread (nor a descriptor) needed
        if cursor.fd is None:  # not opened since restored: still at the restored offset
            return cursor.tail_crc
        try:
            return zlib.crc32(os.pread(cursor.fd, size, offset - size))
        except OSError:
            return None

    def rescale(self, snapshots, owns):
        raise KernelError(
            f"{self.name}: a run resumed on another number of kernels cannot go on reading these "
            f"files (each kernel's snapshot holds the byte spans planned for {len(snapshots)} kernels): "
            f"resume on {len(snapshots)} kernels, or start afresh with another state_dir")

    def restore(self, snapshot):
        if snapshot is None:
            return
        # (a followed file's span has its inode number too; none in snapshots of earlier versions)
        self._cursors = [_Cursor(*span) for span in snapshot["spans"]]
        self._current = snapshot["current"]
        if not self.follow:
            self._check_readable()

    def ended_snapshot(self):
        """What this kernel's source, read to its end, keeps in the epochs
        after (the runtime's hook, `Ended`): its skipped count, which a
        resumed run reports again (`restore_ended`)."""
        return {"skipped": self.skipped}

    @staticmethod
    def rescale_ended(kept, first):
        """`ended_snapshot()`s of the kernels of a run resumed on another
        number of kernels, where this source had ended on every one: their
        skipped counts, all on the first kernel (the run's count is the
        sum of its kernels')."""
        return {"skipped": sum(snapshot["skipped"] for snapshot in kept)} if first else None

    def restore_ended(self, snapshot):
        self._skipped_when_ended = snapshot["skipped"]

    @property
    def skipped(self) -> int:
        """Malformed lines skipped before each cursor's position (a resumed
        run's count includes the crashed run's, up to the snapshot; a
        kernel's whose share was read to its end before it: what its ended
        source kept, `ended_snapshot`)."""
        return self._skipped_when_ended + sum(c.position()[1] for c in self._cursors or ())

    def result(self):
        return {"skipped": self.skipped}

    # -- planning -----------------------------------------------------------------

    def _plan(self) -> None:
        index, peers = self.context.index, self.context.peers
        if self.follow:
            self._cursors = []
            return
        # One listing for every kernel (the run's board: the first kernel to
        # plan lists, or a cluster's process 0 did): each listing the files
        # itself, each cut a file appended to meanwhile at other bytes, and
        # the lines between the cuts were read twice or not at all.
        board = self.context.listings
        listing = functools.partial(list_files, self.pattern)
        listed = listing() if board is None else board.take(self.name, listing)
        if not listed:
            raise self._error(f"no file matches {self.pattern!r}")
        for path, _, _, error in listed:
            if error is not None:
                raise self._error(f"cannot read {path!r}: {error}")
        sized = [(path, size) for path, size, _, _ in listed]
        inodes = {path: inode for path, _, inode, _ in listed}
        # Each span knows the file it was planned on (its inode number, in
        # the snapshot too): a file replaced before this kernel opened it
        # (while the run was stopped, say) was read on silently, its lines
        # past the planned size never read, or torn where a span was cut.
        self._cursors = [_Cursor(path, start, end, inode_number=inodes[path])
                         for path, start, end in plan_spans(sized, index, peers)]
        self._check_readable()

    def _check_readable(self) -> None:
        """Every file of this kernel's spans opens, now: the files are opened
        one at a time as they are read, and one that cannot be (no permission)
        failed the run only when its turn came, after every record before it
        (README: refused "at the run's start"). One open and close a file."""
        for path in dict.fromkeys(cursor.path for cursor in self._cursors):
            try:
                os.close(os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK))
            except OSError as exc:
                raise self._error(f"cannot read {path!r}: {exc}") from exc

    def _rescan(self) -> None:
        """Following: take on the files matching the pattern that are new and ours."""
        known = {c.path for c in self._cursors}
        peers, index = self.context.peers, self.context.index
        found = [p for p in matching_files(self.pattern) if p not in known]
        if self._gone:  # (only paths still matched, still leading nowhere, stay)
            self._gone.intersection_update(p for p in found if not os.path.exists(p))
            found = [p for p in found if p not in self._gone]
        for path in found:
            if follow_owner(path, peers) == index:
                self._cursors.append(_Cursor(path, 0, None))
        if not known and not found and not self._told_nothing_matches:
            self._told_nothing_matches = True
            self.context.logger.warning("%s: no file matches %r yet; waiting for one",
                                        self.name, self.pattern, extra={"step": self.name})

    # -- polling --------------------------------------------------------------------

    def poll(self):
        if self._cursors is None:
            self._plan()
        if self.follow:
            self._look_again_later()  # new files are looked for even while old ones keep growing
        want = min(self.batch_size, self.records_wanted)
        cursor = self._next_with_records()
        if cursor is not None:
            chunk = cursor.chunk
            start = chunk.taken
            batch = chunk.records[start : start + want]
            chunk.taken = start + len(batch)
            if chunk.taken >= len(chunk.records):
                self._retire(cursor)
                if self.follow:
                    self._current += 1  # a chunk per file in turn: a busy log starves no other
            self.emit(batch)
            return True
        if not self.follow:
            self._close_all()
            return False
        return None  # woken by the timer that looks again

    def _next_with_records(self):
        """The cursor with records to hand on (decoding its next chunk when
        needed), or None when every span is read (following: for now)."""
        cursors = self._cursors
        tried = 0
        if self.follow and self._rescan_due:
            self._rescan_due = False
            self._rescan()
        while tried < len(cursors):
            if self._current >= len(cursors):
                self._current = 0
            cursor = cursors[self._current]
            if cursor.chunk is not None:
                return cursor
            if not cursor.done and self._read_chunk(cursor):
                return cursor
            if cursor.done:
                self._close(cursor)
                if self.follow:
                    # a followed file removed and read to its end: forgotten, so
                    # its descriptor (and disk space) goes, no snapshot names it,
                    # and a new file of its name is a new file
                    del cursors[self._current]
                    self._headers.pop(cursor.path, None)  # a new file of its name has its own header
                    continue
            self._current += 1
            tried += 1
        return None

    def _retire(self, cursor) -> None:
        """The cursor's chunk is handed on: its offset moves past it."""
        chunk = cursor.chunk
        cursor.offset = chunk.base + len(chunk.data)
        cursor.skipped += len(chunk.skipped)
        cursor.chunk = None
        if self.follow:
            cursor.tail = _tail(cursor.tail, chunk.data)
            if self._open_count > self.max_open_followed:
                self._close(cursor)  # opened again for its next chunk

    def _look_again_later(self) -> None:
        if self._rescan_timer is None:
            self._rescan_timer = self.context.kernel.call_later(self.poll_interval, self._look_again)

    def _look_again(self) -> None:
        self._rescan_timer = None
        self._rescan_due = True
        self.wake()

    def _close(self, cursor) -> None:
        if cursor.fd is not None:
            cursor.closer()  # os.close, once
            cursor.fd = None
            self._open_count -= 1

    def _close_all(self) -> None:
        for cursor in self._cursors or ():
            self._close(cursor)

    def _release(self) -> None:
        """The run failed or was cancelled (`Runtime.release`): its files
        closed now, not when the collector finds the run's cursors."""
        if getattr(self, "_cursors", None):
            self._close_all()

    # -- reading a chunk --------------------------------------------------------------

    def _open(self, cursor) -> None:
        try:
            # O_NONBLOCK: a FIFO put in a file's place since the glob must not block the loop
            cursor.fd = os.open(cursor.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK)
            # A run that fails or is cancelled (the way a followed run stops)
            # never reaches the end that closes its files: the descriptor
            # is closed when the cursor goes with the run's operators, not
            # left open in the host process (a run on one kernel shares it).
            cursor.closer = weakref.finalize(cursor, os.close, cursor.fd)
            self._open_count += 1
            info = os.fstat(cursor.fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(f"not a regular file (mode {stat.filemode(info.st_mode)})")
        except FileNotFoundError as exc:
            if not self.follow:
                raise self._error(f"cannot read {cursor.path!r}: {exc}") from exc
            # Following, files come and go (old logs are deleted): one gone
            # before it was opened (since the glob, or while a run with a
            # state_dir was stopped) is no longer followed, not an error
            # that would end every resumed run.
            self.context.logger.warning(
                "%s: %s is gone (removed); no longer followed (what it held after byte %d, if "
                "anything, was not read)", self.name, cursor.path, cursor.offset, extra={"step": self.name})
            cursor.done = True
            self._gone.add(cursor.path)
            return
        except OSError as exc:
            raise self._error(f"cannot read {cursor.path!r}: {exc}") from exc
        cursor.inode = (info.st_dev, info.st_ino)
        # The file the snapshot read: the same inode (st_ino alone: st_dev may
        # differ after a reboot, NFS, btrfs), the same bytes before the offset
        replaced = cursor.inode_number not in (None, info.st_ino)
        cursor.inode_number = info.st_ino
        before = None  # the bytes before the offset, where they are checked
        checked = self.follow or cursor.tail_crc is not None
        if not replaced and checked and cursor.offset > 0 and not cursor.tail:
            size = min(TAIL_BYTES, cursor.offset)
            before = self._pread(cursor, size, cursor.offset - size)
        changed = before is not None and cursor.tail_crc is not None and zlib.crc32(before) != cursor.tail_crc
        if replaced or changed:
            raise self._error(self._changed_message(cursor, replaced))
        if not self.follow and info.st_size < cursor.end:
            # truncated since the files were listed (the tail check above sees
            # only the bytes before the offset): the span's lines past its new
            # end were lost without a word
            raise self._error(self._changed_message(cursor, False, info.st_size))
        if self.follow and before is not None:
            cursor.tail = before  # checked before each read from now on
        cursor.tail_crc = None  # later snapshots take it afresh
        if not self.follow and cursor.offset == cursor.start and cursor.start > 0:
            # the span's first line is the one starting at or after `start`
            cursor.offset = self._line_start_at_or_after(cursor, cursor.start)

    def _changed_message(self, cursor, replaced: bool, size: int | None = None) -> str:
        if not self.follow:
            if replaced:
                what = "another file now has its name"
            elif size is not None:
                what = f"truncated: it has {size} bytes, and byte {cursor.end - 1} was to be read"
            else:
                what = "truncated or rewritten"
            return (f"{cursor.path!r} changed since the run listed the files ({what}; "
                    f"{cursor.offset} bytes of it had been read): a bounded run and the run that resumes "
                    "it must read the same files; to read new ones, start afresh with another state_dir")
        if replaced:  # what happened first: a long path would be cut from the middle of the message
            return (f"a followed file was replaced while the run was stopped: {cursor.path!r} (another file "
                    f"now has its name; {cursor.offset} bytes of the one before had been read); following "
                    "reads files that are appended to: give rotated logs new names")
        return (f"a followed file was truncated or rewritten while the run was stopped: {cursor.path!r} "
                f"(its bytes before byte {cursor.offset}, where reading resumes, are not those read "
                "before: rotated by copytruncate?); following reads files that are appended to: give "
                "rotated logs new names")

    def _pread(self, cursor, size: int, offset: int) -> bytes:
        try:
            return os.pread(cursor.fd, size, offset)
        except OSError as exc:
            raise self._error(f"cannot read {cursor.path!r}: {exc}") from exc

    def _line_start_at_or_after(self, cursor, position: int) -> int:
        offset = position - 1  # a newline just before `position` starts a line there
        while True:
            data = self._pread(cursor, self.chunk_bytes, offset)
            if not data:
                return offset
            newline = data.find(b"\n")
            if newline != -1:
                return offset + newline + 1
            offset += len(data)

    def _read_header(self, cursor) -> bool:
        """The file's first line, the CSV header; False while a followed
        file has none yet."""
        data, _ = self._complete_lines(cursor, 0, None, at_eof_too=not self.follow)
        first = data.split(b"\n", 1)[0]
        if not first and self.follow:
            return False
        try:
            row = self._parse_csv_line(cursor, first, True) if first else None
        except (ValueError, csv.Error) as exc:
            raise self._malformed(cursor, 0, data, 0, first, exc) from exc
        if row is None:
            raise self._error(f"{cursor.path!r} has no header line (header=True)")
        self._headers[cursor.path] = row
        if cursor.offset == 0:
            cursor.offset = len(first) + 1
        return True

    def _complete_lines(self, cursor, offset: int, end, at_eof_too: bool) -> tuple[bytes, bool]:
        """The complete lines from `offset` (at least one when there is one),
        lines starting at or after `end` excluded; and whether the span ends
        with them. At the end of the file, a last line without its newline
        counts when `at_eof_too`."""
        if end is not None and offset >= end:
            return b"", True  # the span's lines are read (or it starts no line)
        size = self.chunk_bytes
        while True:
            data = self._pread(cursor, size, offset)
            short = len(data) < size
            if end is not None and offset + len(data) >= end:
                # the line holding byte end-1 is the span's last
                newline = data.find(b"\n", max(end - offset - 1, 0))
                if newline != -1:
                    return data[: newline + 1], True
            cut = data.rfind(b"\n")
            if short:  # at the end of the file (for now)
                if at_eof_too:
                    return data, True
                return data[: cut + 1], False
            if cut != -1:
                return data[: cut + 1], False
            size *= 2  # a line longer than a chunk

    def _read_chunk(self, cursor) -> bool:
        """Decodes the cursor's next chunk; False when there is none (now)."""
        removed = False
        if self.follow:
            # A followed file read to its end is closed until it grows (a log
            # directory may hold more files than a process may open).
            info = self._stat_followed(cursor)
            if info is None:
                if cursor.fd is None and cursor.inode is not None:
                    cursor.done = True  # removed once read to its end
                    return False
                removed = cursor.fd is not None  # read to its end through the open fd
            elif cursor.fd is None and info.st_size == cursor.seen_size:
                return False  # unchanged since read to its end
        if cursor.fd is None:
            self._open(cursor)
            if cursor.done:
                return False  # followed, and gone
        if self.follow:
            self._check_tail(cursor)
        if self.header and cursor.path not in self._headers and not self._read_header(cursor):
            self._idle(cursor, info, removed)
            return False
        if cursor.in_quote is None:
            cursor.in_quote = self._in_quote_at(cursor, cursor.offset)
        while not cursor.done:
            data, last = self._complete_lines(cursor, cursor.offset, cursor.end, at_eof_too=not self.follow)
            if last and not self.follow:
                cursor.done = True
            if not data:
                if self.follow:
                    self._idle(cursor, info, removed)
                return False
            chunk = self._decode(cursor, cursor.offset, data)
            if chunk.records:
                cursor.chunk = chunk
                return True
            cursor.offset += len(data)  # only blank or skipped lines
            if self.follow:
                cursor.tail = _tail(cursor.tail, data)
            cursor.skipped += len(chunk.skipped)
        return False

    def _idle(self, cursor, info, removed: bool) -> None:
        """A followed file has no complete line to read now: a removed one is
        done (every complete line read); another, past `max_open_followed`
        open files, is closed until its size is other than `info`'s, taken
        before this read."""
        if removed:
            cursor.done = True
        elif self._open_count > self.max_open_followed:
            cursor.seen_size = None if info is None else info.st_size
            self._close(cursor)

    def _stat_followed(self, cursor):
        """The followed file's stat, None if it was removed (an error if it
        shrank or another file took its name)."""
        try:
            info = os.stat(cursor.path)
        except FileNotFoundError:
            return None
        if cursor.inode is not None and (info.st_dev, info.st_ino) != cursor.inode:
            raise self._error(
                f"{cursor.path!r} was replaced while following (another file now has its name); "
                "following reads files that are appended to: give rotated logs new names")
        if info.st_size < cursor.offset:
            raise self._error(
                f"{cursor.path!r} was truncated while following: it has {info.st_size} bytes, "
                f"{cursor.offset} had been read")
        return info

    def _check_tail(self, cursor) -> None:
        # Truncated and written past the offset again since the last read
        # (logrotate's copytruncate, with a busy writer or a busy kernel): the
        # size does not tell, the bytes before the offset do (one pread a read).
        tail = cursor.tail
        if tail and self._pread(cursor, len(tail), cursor.offset - len(tail)) != tail:
            raise self._error(
                f"{cursor.path!r} was truncated and written again while following (its bytes before byte "
                f"{cursor.offset}, where reading goes on, are not those read: rotated by copytruncate?); "
                "following reads files that are appended to: give rotated logs new names")

    # -- decoding ---------------------------------------------------------------------

    def _decode(self, cursor, base: int, data: bytes) -> _Chunk:
        try:
            if self.format == "lines":
                return _Chunk(base, data, self._split_lines(data, base == 0))
            if self.format == "jsonl":
                records = self._decode_json_lines(self._recoded(data, base == 0) if self._recode else data)
                if records is not None:
                    return _Chunk(base, data, records)
        except (ValueError, UnicodeDecodeError, RecursionError):  # (msgspec: a value nested too deep)
            pass  # the slow path finds the line
        return self._decode_each(cursor, base, data)

    def _decode_json_lines(self, data: bytes) -> list | None:
        """The chunk's records when each of its lines is one JSON value,
        else None (the slow path then finds the blank or malformed line).

        Decoded as one array, its lines joined by commas: the grammar of an
        array puts exactly one value between two commas, so a blank line
        fails, and with one value counted a line, so does a line of two,
        `1,2`. (msgspec's `decode_lines` took any whitespace between values:
        `1 2` or `{}{}` on a line was read as two records when a blank line
        in the same chunk made the count come out right, and refused
        otherwise, so the outcome hung on where the chunks were cut.) A
        valid value cut across lines fails too: each cut is next to a
        bracket, comma or colon, which the joining comma doubles. Left
        through: a chunk broken twice over, a line `1,2` and a value cut
        between two items without their comma (`[3`, `4]`, joined as
        `[3,4]`): telling it apart (msgspec's `decode_lines` of `Raw`
        values, which refuses the comma) cost 26% of the reading
        (`benches.files`: 3.04 -> 2.26 M records/s)."""
        body = data[:-1] if data.endswith(b"\n") else data
        records = self._decoder.decode(b"[" + body.replace(b"\n", b",") + b"]")
        return records if len(records) == body.count(b"\n") + 1 else None

    def _text(self, data: bytes, at_start: bool) -> str:
        """`data` decoded; `at_start`: it begins at the file's first byte."""
        text = data.decode(self._decoding)
        if at_start and self._strip_bom and text.startswith("\ufeff"):
            return text[1:]
        return text

    def _recoded(self, data: bytes, at_start: bool) -> bytes:
        return self._text(data, at_start).encode("utf-8")

    def _split_lines(self, data: bytes, at_start: bool) -> list[str]:
        text = self._text(data, at_start)
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()
        if "\r" in text:
            lines = [line[:-1] if line.endswith("\r") else line for line in lines]
        return lines

    def _decode_each(self, cursor, base: int, data: bytes) -> _Chunk:
        """Line by line: the line numbers of blank and malformed lines."""
        lines = data.split(b"\n")
        if data.endswith(b"\n"):
            lines.pop()
        records, line_of, skipped = [], [], []
        for number, raw in enumerate(lines):
            continued = cursor.in_quote
            try:
                if self.format == "lines":
                    record = self._split_lines(raw, base == 0 and number == 0)[0] if raw else ""
                elif self.format == "jsonl":
                    if not raw.strip():
                        continue
                    record = self._decoder.decode(self._recoded(raw, base == 0 and number == 0)
                                                  if self._recode else raw)
                else:
                    if continued:
                        # the rest of a row skipped as malformed: skipped too,
                        # up to the line that closes its quote
                        cursor.in_quote = raw.count(b'"') % 2 == 0
                        raise csv.Error("the rest of a row with a quoted line break")
                    record = self._parse_csv_line(cursor, raw, base == 0 and number == 0)
                    if record is None:
                        continue
            except (ValueError, UnicodeDecodeError, csv.Error, RecursionError) as exc:
                if self.on_error == "raise":
                    raise self._malformed(cursor, base, data, number, raw, exc) from exc
                if self.format == "csv" and not continued and raw.count(b'"') % 2:
                    cursor.in_quote = True  # a quoted field left open: its row goes on below
                self._note_skipped(cursor, base, data, number, exc)
                skipped.append(number)
                continue
            records.append(record)
            line_of.append(number)
        return _Chunk(base, data, records, line_of, skipped)

    def _in_quote_at(self, cursor, offset: int) -> bool:
        """Whether the line at `offset` is inside a malformed CSV row's quoted
        line break, skipped with the row (`_decode_each`): a span that starts
        inside a file (or resumes a snapshot that did not say) reads the file up
        to it, as one reader from the file's start would have. Only the lines
        with an odd number of quotes change that: one that opens a quoted field
        and fails to parse, then the one that closes it."""
        if not (self.format == "csv" and self.on_error == "skip") or offset == 0:
            return False
        in_quote, position = False, 0
        while position < offset:
            data, _ = self._complete_lines(cursor, position, offset, at_eof_too=True)
            if not data:
                break
            # each line's quotes, less their pairs: a quote left on the lines with
            # an odd number (in C: a pass over a file of well-quoted rows costs
            # ~5% of reading them)
            quotes = data.translate(None, _BUT_QUOTES_AND_NEWLINES).replace(b'""', b"")
            if b'"' in quotes:
                lines = data.split(b"\n")
                for number, odd in enumerate(quotes.split(b"\n")):
                    if not odd:
                        continue
                    if in_quote:
                        in_quote = False
                        continue
                    try:
                        self._parse_csv_line(cursor, lines[number], position == 0 and number == 0)
                    except (ValueError, UnicodeDecodeError, csv.Error, RecursionError):
                        in_quote = True
            position += len(data)
        return in_quote

    def _parse_csv_line(self, cursor, raw: bytes, at_start: bool):
        """One CSV row (a dict with header=True), or None for a blank line."""
        text = self._text(raw, at_start)
        if text.endswith("\r"):
            text = text[:-1]
        if not text:
            return None
        row = next(csv.reader([text], strict=True))
        header = self._headers.get(cursor.path)
        if header is None or not self.header:
            return row
        if len(row) != len(header):
            raise csv.Error(f"{len(row)} fields where the header has {len(header)}")
        return dict(zip(header, row))

    # -- errors -------------------------------------------------------------------------

    def _line_number(self, cursor, offset: int) -> int:
        """1 + the newlines before byte `offset` of the file."""
        count, position = 0, 0
        while position < offset:
            data = self._pread(cursor, min(1 << 20, offset - position), position)
            if not data:
                break
            count += data.count(b"\n")
            position += len(data)
        return count + 1

    def _offset_of_line(self, data: bytes, base: int, number: int) -> int:
        offset = 0
        for _ in range(number):
            offset = data.index(b"\n", offset) + 1
        return base + offset

    def _malformed(self, cursor, base, data, number, raw, exc) -> OperatorError:
        line = self._line_number(cursor, self._offset_of_line(data, base, number))
        problem = FileError(f"{cursor.path}, line {line}: malformed {self.format} line: "
                            f"{type(exc).__name__}: {exc}")
        error = OperatorError.wrap(self.name, f"{self.format} decoding", problem, record=raw)
        error.__cause__ = exc
        return error

    def _note_skipped(self, cursor, base, data, number, exc) -> None:
        if cursor.logged:
            return
        cursor.logged = True  # once per file (and span): the count tells the rest
        line = self._line_number(cursor, self._offset_of_line(data, base, number))
        self.context.logger.warning(
            "%s: skipped malformed %s line %d of %s (%s: %s); further malformed lines of this file "
            "are counted (skipped_count), not logged", self.name, self.format, line, cursor.path,
            type(exc).__name__, exc, extra={"step": self.name})

    def _error(self, message: str) -> OperatorError:
        return OperatorError.wrap(self.name, "from_files", FileError(message), has_record=False,
                                  whole_message=True)  # a long path cut from the middle hid what happened
