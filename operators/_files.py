"""`to_files(directory)`: JSON Lines output that a crash cannot duplicate.

Each kernel writes the records of the current epoch to a hidden file,
`.part-k{kernel}-e{epoch}.jsonl`. At the epoch's marker the file is flushed,
fsynced and closed, and the next epoch's file begins. Only when the epoch is
complete on every kernel (`on_commit`) is the file renamed to its visible
name, `part-k{kernel}-e{epoch}.jsonl`, and the directory fsynced: a rename
is atomic, so a reader sees a whole epoch or nothing.

After a crash, a resumed run restores the snapshot of the last complete
epoch E: hidden files of epochs up to E are published (their epoch was
complete), files after E are deleted, hidden or visible (the resumed run
writes those records again; visible ones are there when the newest snapshot
was corrupt and the run fell back to an older one). So the visible files
hold every record exactly once. A run that already finished, run again,
publishes what its final epoch left hidden. Without a `state_dir` there are
no epochs and the files are published when the run ends (an earlier run's
files in the directory are replaced then, not before: a run that fails
leaves them); after a source that never ends
(follow=True) such a run is refused at its start, as nothing would appear.

Records are written with `json.dumps`: tuples (and windows) as arrays, a
dict's int, float, bool or None keys as their JSON text (`{1: "a"}` reads
back as `{"1": "a"}`: not refused, as that would walk every record). NaN
and the infinities are refused, naming the record: `json.dumps` writes them
as `NaN` and `Infinity`, which are no JSON, and `from_files(format="jsonl")`
refused the files to_files had written.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re

from kernel._durable import directory_unwritable, fsync_directory, make_directories
from kernel._faults import crash_point
from kernel.dataflow import EVERY_EPOCH
from kernel.dataflow._errors import PASSES_THROUGH, KernelError, OperatorError
from kernel.dataflow._operator import Operator

from ._calls import failing_record

_NAME = re.compile(r"^\.?part-k(\d+)-e(\d+)\.jsonl$")

# json.dumps with these options: one encoder, made once (json.dumps makes one
# a call when an option differs from its defaults, as ensure_ascii does).
# allow_nan=False: a NaN or an infinity raises ValueError, which names the record.
# Made by the first batch written: a process that writes no files does without json.
@functools.cache
def _encoder():
    import json

    return json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode


# Characters JSON writes as they are (ensure_ascii=False) that str.splitlines()
# takes for line ends: written escaped (the same JSON string), so that every
# way of reading the lines, the README's `read_text().splitlines()` too,
# finds one record a line (a record holding U+2028 read as two halves).
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def _one_line_each(text: str) -> str:
    if text.isascii() or not ("\x85" in text or "\u2028" in text or "\u2029" in text):
        return text  # (the common case: three scans in C, no copy)
    return text.translate(_LINE_BREAKS)


def file_in_the_way(directory: str) -> str | None:
    """Why to_files cannot have `directory`: a file (not a directory) there,
    or at the nearest of its parents that exists ("cannot make the directory
    ...: File exists" did not say so). None when nothing is in the way."""
    path = os.path.abspath(directory)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    if os.path.isdir(path):
        return None
    if path == os.path.abspath(directory):
        detail = f"{directory} is a file, not a directory"
    else:
        detail = f"{path} is a file, not a directory (to_files makes {directory} in it)"
    return detail + "; give to_files a directory (it writes its part files into it)"


# what follows a failed write, fsync or rename of a run without a state_dir
_NOT_PUBLISHED = "the run's output is not published"


class ToFiles(Operator):
    def __init__(self, directory, after_endless=()) -> None:
        self.directory = os.fspath(directory)
        self.after_endless = list(after_endless)  # the labels of sources before it that never end

    def open(self, context):
        if self.after_endless and not context.snapshots:
            # Without a state_dir the files are published when the run ends, and
            # a followed source's run only ends by being cancelled, which
            # publishes nothing: every record would be lost (the hidden file,
            # not even flushed, is emptied by the next run).
            raise KernelError(
                f"{self.name}: without a state_dir its files appear when the run ends, and "
                f"{' and '.join(self.after_endless)} never end{'s' if len(self.after_endless) == 1 else ''} "
                "(follow=True): nothing would ever be written; give the run a state_dir (its files "
                "appear as each epoch completes)")
        in_the_way = file_in_the_way(self.directory)  # (made since the build: see Stream.to_files)
        if in_the_way is not None:
            raise KernelError(f"{self.name}: {in_the_way}")
        try:
            make_directories(self.directory)  # (its name durable: a complete epoch's files are in it)
        except OSError as exc:
            raise self._disk_error(exc, f"make the directory {self.directory}") from exc
        why = directory_unwritable(self.directory)  # (else said by the first batch, its records handled)
        if why is not None:
            raise KernelError(f"{self.name}: the directory {self.directory} {why}, so it cannot write its "
                              "files there; give to_files a directory it may write")
        self.kernel = context.index
        self.peers = context.peers
        self.epoch = 1  # the epoch whose records are being written
        self._file = None
        self._first_commit = True
        self._snapshots = context.snapshots
        self._unpublished: set[int] = set()  # epochs of hidden files this run wrote
        # A write that failed: Python's buffer drops what it could not write,
        # so the next flush and fsync "succeed" on a file that lacks it. The
        # epoch must never complete after that (a resumed run writes it again).
        self._write_failed: str | None = None

    def _path(self, epoch: int, hidden: bool) -> str:
        name = f"part-k{self.kernel}-e{epoch:08d}.jsonl"
        return os.path.join(self.directory, "." + name if hidden else name)

    def on_batch(self, port, batch):
        # The failing record is where the iterator stopped (`_calls`): found
        # again by encoding the records once more, only TypeError and
        # ValueError were named; whatever else a record's own code raised
        # (a dict subclass's items(), a RecursionError from a nesting too
        # deep, a `class Stop(BaseException)`) named `on_batch` and no record,
        # and a record that failed only once was never found.
        it, encode = iter(batch), _encoder()
        try:
            lines = [encode(record) for record in it]
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            found, bad = failing_record(batch, it)
            hint = NOT_JSON_NUMBER if found and isinstance(exc, ValueError) and _has_no_json_number(bad) \
                else None
            raise OperatorError.wrap(self.name, "json.dumps", exc, record=bad, has_record=found,
                                     hint=hint) from exc
        half = len(lines) // 2
        try:
            if self._file is None:
                self._file = open(self._path(self.epoch, hidden=True), "w", encoding="utf-8")
                self._unpublished.add(self.epoch)
            self._file.write(_one_line_each("".join(line + "\n" for line in lines[:half])))
            crash_point("batch", self.kernel)  # tests: a crash with half a batch written
            self._file.write(_one_line_each("".join(line + "\n" for line in lines[half:])))
        except OSError as exc:  # a full disk, an I/O error: name the file (no record is to blame)
            raise self._refuse_epoch(self._disk_error(
                exc, f"write {self._path(self.epoch, hidden=True)}", self._not_durable())) from exc
        except UnicodeEncodeError as exc:
            # a str with a lone surrogate (bytes decoded with surrogateescape, a
            # JSON "\udcff" escape) passes json.dumps but is no UTF-8: name it
            # (found among the lines: no record's own code runs again)
            # (the half of the batch before it may be in the file: as above)
            bad = next(r for r, line in zip(batch, lines) if not _utf8(line))
            raise self._refuse_epoch(OperatorError.wrap(self.name, "json.dumps", exc, record=bad)) from exc

    def _close_epoch(self) -> None:
        """The epoch's file durable, data and name: its directory is fsynced
        too (one fsync a directory an epoch), or a power loss could take the
        file of an epoch the store then says is complete. A failed fsync
        fails the run: the epoch never completes (fsync is not retried, as
        a retry may "succeed" with the data lost)."""
        if self._write_failed is not None:
            raise KernelError(self._write_failed)
        if self._file is not None:
            file, self._file = self._file, None
            try:
                try:
                    file.flush()
                    os.fsync(file.fileno())
                finally:
                    file.close()
            except OSError as exc:
                raise self._refuse_epoch(self._disk_error(exc, f"write {file.name}", self._not_durable())) \
                    from exc
            self._fsync_directory(self._not_durable())

    def _release(self) -> None:
        """The run failed or was cancelled (`Runtime.release`): the epoch's
        hidden file, never published, is closed (the next run replaces it)."""
        file, self._file = getattr(self, "_file", None), None
        if file is not None:
            with contextlib.suppress(OSError):  # (what it still buffered is of no use: a full disk)
                file.close()

    def _refuse_epoch(self, error: KernelError) -> KernelError:
        """`error`, which left the epoch's file short of what it was given:
        the epoch never closes after it (`_write_failed`)."""
        self._write_failed = str(error)
        return error

    def _fsync_directory(self, after: str) -> None:
        try:
            fsync_directory(self.directory)
        except OSError as exc:
            raise self._disk_error(exc, f"fsync the directory {self.directory} (its part files' names)",
                                   after) from exc

    def _not_durable(self) -> str:
        if self._snapshots:
            return (f"epoch {self.epoch} does not complete (its records are not durable): a run resumed "
                    "from the state_dir writes them again")
        return _NOT_PUBLISHED

    def _disk_error(self, exc: OSError, doing: str, after: str = "") -> KernelError:
        """A failed write, fsync or rename of the sink's files, as one line
        naming the file (an OSError's own message named none, and blamed
        the sink's on_epoch as if it were the user's code)."""
        full = " (the disk is full)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        why = f"{exc.strerror or exc}{full}" + (f"; {after}" if after else "")
        return KernelError(f"{self.name}: cannot {doing}: {why}")

    def on_epoch(self, epoch):
        self._close_epoch()  # the records of `epoch` are durable before its snapshot is
        self.epoch = epoch + 1
        return {"epoch": self.epoch}

    def on_end(self):
        self._close_epoch()  # published with the final commit

    def restore(self, snapshot):
        self.epoch = snapshot["epoch"]

    def rescale(self, snapshots, owns):
        # every kernel writes the same epoch numbers; the files of kernels
        # this run does not have are taken over by kernel 0 (`on_commit`)
        return {"epoch": max(s["epoch"] for s in snapshots if s != self.ENDED)}

    def on_commit(self, epoch):
        # The first commit of a run is the restored epoch (0 on a fresh
        # start): the directory is read once. Hidden files up to it were
        # complete: they are published now. Every file after it, hidden or
        # visible, is an earlier run's output for epochs this run writes
        # again, so it goes: hidden ones never completed; visible ones
        # exist when the newest snapshot failed its checksum and the run
        # fell back to an older epoch (left in place, a file whose epoch the
        # replay writes nothing to would repeat records written again later).
        # Later commits publish the files this run wrote (no directory listing).
        if not self._snapshots:
            # No epochs: a commit at the start (0), then one at the end. The
            # earlier run's files go only at the end, with this run's output
            # ready to take their place: deleted at the start, a run that
            # then failed left the directory with neither run's output.
            if epoch != EVERY_EPOCH:
                return
            self._replace_earlier_output()
        elif self._first_commit:
            self._first_commit = False
            self._take_over_directory(epoch)
        after = (f"epoch {epoch} is complete: a run resumed from the state_dir publishes its files"
                 if self._snapshots else _NOT_PUBLISHED)
        renamed = False
        for file_epoch in sorted(self._unpublished):
            if file_epoch > epoch or (file_epoch == self.epoch and self._file is not None):
                continue  # not complete yet, or still being written
            hidden = self._path(file_epoch, hidden=True)
            try:
                os.replace(hidden, self._path(file_epoch, hidden=False))
            except OSError as exc:
                raise self._disk_error(exc, f"publish {hidden}", after) from exc
            self._unpublished.discard(file_epoch)
            renamed = True
            crash_point("commit", self.kernel)  # tests: a crash between renames
        if renamed:
            self._fsync_directory(after)

    def _take_over_directory(self, epoch: int) -> None:
        """What earlier runs left for this kernel: files up to `epoch` stay
        (hidden ones to be published), later ones go. Kernel 0 also takes
        the files of kernels this run does not have (a run resumed on fewer
        kernels): their hidden files up to `epoch` are published now."""
        changed = False
        after = f"the run stops before writing anything (it resumes epoch {epoch} when run again)"
        for name, kernel, file_epoch in self._files_to_take_over():
            path = os.path.join(self.directory, name)
            try:
                if file_epoch > epoch:
                    os.unlink(path)
                    changed = True
                elif name.startswith(".") and kernel != self.kernel:
                    os.replace(path, os.path.join(self.directory, name[1:]))
                    changed = True
            except OSError as exc:
                raise self._disk_error(exc, f"{'remove' if file_epoch > epoch else 'publish'} {path}",
                                       after) from exc
            if name.startswith(".") and file_epoch <= epoch and kernel == self.kernel:
                self._unpublished.add(file_epoch)
        if changed:
            self._fsync_directory(after)  # gone before anything of this run is published

    def _replace_earlier_output(self) -> None:
        """At the end of a run without a state_dir: every file an earlier
        run left for this kernel (see `_files_to_take_over`) goes, but the
        hidden one this run has just written, which is then published."""
        mine = {os.path.basename(self._path(e, hidden=True)) for e in self._unpublished}
        changed = False
        for name, _, _ in self._files_to_take_over():
            if name not in mine:
                try:
                    os.unlink(os.path.join(self.directory, name))
                except OSError as exc:
                    raise self._disk_error(exc, f"remove {os.path.join(self.directory, name)}",
                                           _NOT_PUBLISHED) from exc
                changed = True
        if changed:
            self._fsync_directory(_NOT_PUBLISHED)

    def _files_to_take_over(self):
        """This kernel's files; kernel 0 also takes those of kernels this run
        does not have (an earlier run on more kernels wrote them)."""
        for name in os.listdir(self.directory):
            match = _NAME.match(name)
            if match:
                kernel = int(match.group(1))
                if kernel == self.kernel or (self.kernel == 0 and kernel >= self.peers):
                    yield name, kernel, int(match.group(2))


NOT_JSON_NUMBER = ("NaN and the infinities are no JSON numbers (from_files would refuse the file): "
                   "map them to None or a str before to_files")


def _has_no_json_number(record) -> bool:
    """Whether all that keeps `record` from JSON is a NaN or an infinity
    (the error path only: the record's own code may raise anything)."""
    import json

    try:
        json.dumps(record, ensure_ascii=False)
    except PASSES_THROUGH:
        raise
    except BaseException:
        return False
    return True


def _utf8(line: str) -> bool:
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
