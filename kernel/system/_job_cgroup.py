"""A cgroup (v2) of its own for each job process an executor starts, where
the executor may make them: what the process leaves running is ended by
`cgroup.kill`, exactly the job's processes.

Without it, the executor SIGKILLs the process's group once it has seen the
process's exit (`kernel.system._executor._end_group`). By then the process
has been reaped, and its pid, the group's id, is held only by the group's
members: where the last of them ends between the check that no process
holds that pid and the signal, and the pid is given to a process that
leads a group of its own (a `setsid` daemon, another executor's job
process), that process is killed, no job's. And a process of the job that
left its group (a user's `Popen(..., start_new_session=True)`, a daemon)
was never ended at all. A cgroup names its processes by membership, not by
a number that can be given again, and a process cannot leave it (nor its
children) without writing to a cgroup of the hierarchy.

Made under the executor's own cgroup (`/proc/self/cgroup`'s `0::` line,
below the cgroup2 mount of `/proc/self/mountinfo`): where that is writable
(root, or a delegated subtree: systemd's `Delegate=yes`) and the kernel
has `cgroup.kill` (Linux 5.14). Anywhere else (a container's read-only
/sys/fs/cgroup, a user's session without delegation), the process group as
before, with the window above left.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re

log = logging.getLogger("kernel.system")

# seconds waited for a killed cgroup to empty before it is removed (SIGKILL: a moment);
# one not empty by then is removed at the next end, or stays, empty, where none comes
EMPTY_WITHIN = 2.0
_EMPTY_POLL = 0.005
# a job process's cgroup: kernel-job-EXECUTOR_PID-ITS_START-TOKEN-N (`JobCgroups.made`), or,
# made by an executor of before, without ITS_START
_NAME = re.compile(r"kernel-job-(\d+)(?:-(\d+))?-[0-9a-f]+-\d+")


def own_cgroup_directory(cgroups: str = "/proc/self/cgroup",
                         mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """This process's cgroup v2 directory (None: no cgroup2 mounted, or
    this process not in it as the mount shows it)."""
    try:
        with open(cgroups) as f:
            path = next((line[3:].rstrip("\n") for line in f if line.startswith("0::")), None)
        with open(mountinfo) as f:
            mounts = [line.split() for line in f]
    except OSError:
        return None
    if path is None:
        return None
    for fields in mounts:
        # (fields: id parent major:minor root mount-point options... - type source super-options)
        try:
            kind = fields[fields.index("-") + 1]
        except (ValueError, IndexError):
            continue
        if kind != "cgroup2":
            continue
        root, mount_point = fields[3], fields[4]
        # (a cgroup namespace's mount shows its root as "/", the host's as the path below it)
        inside = path if root == "/" else path[len(root):] if path.startswith(root + "/") or path == root \
            else None
        parts = [part for part in (inside or "").split("/") if part]
        if inside is None or ".." in parts:  # (a cgroup outside this namespace's view: "/../x")
            continue
        directory = os.path.join(mount_point, *parts)
        if os.path.isdir(directory):
            return directory
    return None


class JobCgroups:
    """The cgroups of one executor's job processes, each made before its
    process starts (`made`), which moves into it before it execs
    (`join_in_child`), killed and removed after its end (`end`)."""

    def __init__(self, home: str | None) -> None:
        self.home = home  # where they are made (None: nowhere, the process group is used)
        self._numbers = itertools.count(1)
        self._token = os.urandom(4).hex()  # (this executor's: another's, in this process too, has its own)
        self._left: set[str] = set()  # killed, not yet empty: removed at a later end

    @classmethod
    def here(cls) -> JobCgroups:
        """Under this process's own cgroup, if a job's cgroup can be made
        and killed there (tried once, at the executor's start)."""
        home = own_cgroup_directory()
        cgroups = cls(home)
        probe = cgroups.made() if home else None
        if probe is None:
            return cls(None)
        usable = os.path.exists(os.path.join(probe, "cgroup.kill"))
        try:
            os.rmdir(probe)
        except OSError:
            return cls(None)
        if not usable:
            return cls(None)
        cgroups._remove_the_dead_executors()
        return cgroups

    def _remove_the_dead_executors(self) -> None:
        """Remove the empty cgroups of executors that have ended here
        without their close() (SIGKILL, the OOM killer): each left one per
        job process it ran (its processes died with it, PR_SET_PDEATHSIG).
        (One whose processes run on is left: an executor's to end is its own.)"""
        try:
            names = os.listdir(self.home)
        except OSError:
            return
        for name in names:
            made = _NAME.fullmatch(name)
            if made is None or _runs(int(made.group(1)), made.group(2)):
                continue  # (not an executor's, or its executor runs)
            path = os.path.join(self.home, name)
            if _empty(path):
                try:
                    _remove(path)
                except OSError:
                    pass

    def _make(self, name: str) -> str | None:
        try:
            path = os.path.join(self.home, name)
            os.mkdir(path)
            return path
        except OSError:
            return None

    def made(self) -> str | None:
        """A new, empty cgroup for a job process (None: none can be made)."""
        if self.home is None:
            return None
        # (its pid and its start: the pid alone, given again to the next executor (pid 1 of a
        # container, say), had it take the dead one's cgroups for its own, left for good)
        pid = os.getpid()
        start = started(pid)
        if start is None:  # (no /proc to tell it: the process group, as where none can be made)
            return None
        return self._make(f"kernel-job-{pid}-{start}-{self._token}-{next(self._numbers)}")

    def discard(self, path: str | None) -> None:
        """Remove the cgroup `path`, made and unused (its process not
        started, or not in it); one that cannot go is left, empty."""
        if path is None:
            return
        try:
            _remove(path)
        except OSError as exc:
            log.warning("executor: cannot remove the job's cgroup %s: %s", path, exc)

    def end(self, path: str) -> None:
        """Kill every process in the cgroup `path`, and remove it, and any
        killed before, once empty (SIGKILL takes a moment: one not empty
        yet is removed at a later end, or at `close`)."""
        try:
            with open(os.path.join(path, "cgroup.kill"), "w") as f:
                f.write("1")
        except OSError as exc:
            if not os.path.isdir(path):
                return
            log.warning("executor: cannot kill the processes of the job's cgroup %s: %s", path, exc)
        self._left.add(path)
        self._remove_empty()

    def _remove_empty(self) -> None:
        for left in list(self._left):
            try:
                _remove(left)
            except FileNotFoundError:
                pass
            except OSError:  # (still populated: later)
                continue
            self._left.discard(left)

    async def close(self) -> None:
        """Remove the cgroups killed, once empty (EMPTY_WITHIN s at most)."""
        deadline = asyncio.get_running_loop().time() + EMPTY_WITHIN
        while self._left and not all(_empty(path) for path in self._left) \
                and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(_EMPTY_POLL)
        self._remove_empty()


def started(pid: int) -> int | None:
    """When process `pid` started (clock ticks after the boot: /proc/PID/stat's
    22nd field), which tells it from an earlier holder of its pid; None: no
    such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # (after its name, in parentheses, which may hold spaces and parentheses: field 3 on)
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):  # (gone, or a /proc of another form: not known)
        return None


def _runs(pid: int, start: str | None) -> bool:
    """Whether the executor that made a cgroup named for (`pid`, `start`)
    runs. A name without a start (an executor of before) tells only its pid:
    taken for its own when another process holds that pid, but not this one,
    which makes only names with its start."""
    if start is None:
        return pid != os.getpid() and os.path.exists(f"/proc/{pid}")
    return started(pid) == int(start)


def _remove(path: str) -> None:
    """Remove the cgroup `path` and the cgroups below it, deepest first:
    a cgroup with a child cgroup cannot go (EBUSY), and a job process may
    have made some (a cgroup manager of its own: a nested executor's job
    cgroups, a container runtime's), which `cgroup.kill` emptied with it.
    (With `os.rmdir` alone, its cgroup and theirs were left, for good.)"""
    for below, children, _ in os.walk(path, topdown=False):
        for child in children:
            try:
                os.rmdir(os.path.join(below, child))
            except FileNotFoundError:
                pass  # (its own maker removed it meanwhile)
    os.rmdir(path)


def _empty(path: str) -> bool:
    try:
        with open(os.path.join(path, "cgroup.events")) as f:
            return "populated 0" in f.read()
    except OSError:
        return True


def join_in_child(path: str) -> None:
    """In a job process before exec (`preexec_fn`): move into the cgroup
    `path`, and so do all it starts. Where it cannot, it runs where the
    executor does, and the executor, which checks (`is_member`), ends its
    process group instead. (No exception: one raised here fails the start.)"""
    try:
        fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
    except OSError:
        pass


def is_member(pid: int, path: str) -> bool:
    """Whether process `pid` (a child not yet reaped) is in the cgroup `path`."""
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return str(pid) in f.read().split()
    except OSError:
        return False
