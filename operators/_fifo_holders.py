"""Whether a named FIFO opened again is still the stream an earlier run read.

A FIFO is one stream (one pipe, what was written staying in it) only while
some process holds it open; once every reader and writer has closed it, it
is opened again as a fresh pipe, fed from its start by whoever writes it
next. (`_live_input._taken_by` took every FIFO opened again for the stream
an earlier run read: a run with a state_dir resuming over it, re-fed by a
new writer after the first had died of the closed reader, was refused,
every line of it there to read.)

Whether it was held in between is not told by the FIFO, so it is judged by
who holds it now: fed anew where it is held (beside the file object opened
again) only by processes started after the earlier run took its first lines,
as a writer run again; a process (this one included) holding it that started
before may have held it meanwhile, the stream going on, and one held by no
other may have been held until it was opened again (a writer closing it
since): the earlier run's refusal stands for both. Processes whose
descriptors cannot be read (another user's) are taken as not holding it.
(A writer started after the failed run's first take that opened the FIFO
before its reader closed it is taken for a new one: the run is not refused.)
"""

from __future__ import annotations

import os
import time

# When each FIFO (its `_link`) last had lines taken by a run, in clock ticks since boot
# (the unit of a process's start time in /proc/<pid>/stat).
_noted_at: dict[str, float] = {}
_TICKS = os.sysconf("SC_CLK_TCK")


def note_taken(link: str) -> None:
    """A run has taken lines of the FIFO `link` (`fifo:[device:inode]`)."""
    _noted_at[link] = _now()


def fed_anew_since_taken(link: str, device: int, inode: int, own_descriptor: int) -> bool:
    """Whether the FIFO `link` (`device`, `inode`), opened again here as
    `own_descriptor`, is a fresh pipe since lines of it were last taken:
    held otherwise only by processes started since (False where unsure: no
    note, no /proc, no other holder)."""
    noted = _noted_at.get(link)
    if noted is None:
        return False
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return False
    here, held = str(os.getpid()), False
    for pid in pids:
        for descriptor in _descriptors_of(pid, device, inode):
            if pid == here and descriptor == own_descriptor:
                continue
            if pid == here or _started(pid) <= noted:  # (ticks: one started in the note's tick may be older)
                return False
            held = True
    return held


def _descriptors_of(pid: str, device: int, inode: int) -> list[int]:
    """Process `pid`'s descriptors of the file (`device`, `inode`) (none where unreadable)."""
    found = []
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # (ended, or another user's)
        return found
    for descriptor in descriptors:
        try:
            if os.readlink(f"/proc/{pid}/fd/{descriptor}").startswith("/"):
                status = os.stat(f"/proc/{pid}/fd/{descriptor}")
                if status.st_ino == inode and status.st_dev == device:
                    found.append(int(descriptor))
        except OSError:
            pass
    return found


def _now() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME) * _TICKS


def _started(pid: str) -> float:
    """Process `pid`'s start, in clock ticks since boot (0 where unknown: taken as started before)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as status:
            return float(status.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0.0
