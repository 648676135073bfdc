"""Session 42: what a job process leaves running is ended by its cgroup
(`kernel.system._job_cgroup`), where the executor can make one, not by its
process group's id, a pid. Ended by the group's id once the process was
reaped (`_end_group`), two things went wrong:

- the group's last member could end between the check that no process
  holds that pid and the signal, its pid given meanwhile to a process that
  leads a group of its own (a `setsid` daemon, another executor's job
  process): that one was SIGKILLed, a process of no job's;
- a process of the job's that left the group (`Popen(...,
  start_new_session=True)`, a daemon) was never ended: it ran on after the
  job, and after the executor.

In this process: one executor, never connected (its id set as a register
would). The first case is made exact: this process a child subreaper (the
job's orphan is its own to reap), and, at the signal's call in `_end_group`
(a profile hook, this thread's), the group's last member killed and reaped
and a process given its pid (the kernel's `ns_last_pid`)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys

import pytest

from kernel.system._job_cgroup import JobCgroups, is_member, join_in_child, started
from tests.system.test_session40_job_children_end import _closed, _completed, _executor, _gone, _started
from tests.system.test_session40_reused_group_id_review import (
    NS_LAST_PID,
    a_moment_to_die,
    end_newcomers,
)

needs_ns_last_pid = pytest.mark.skipif(not os.access(NS_LAST_PID, os.W_OK),
                                       reason="needs a writable ns_last_pid (root)")

PR_SET_CHILD_SUBREAPER = 36
ATTEMPTS = 5


def _cgroups_home() -> str:
    """Where job cgroups are made (`JobCgroups.here().home`); the test skipped where there is none."""
    home = JobCgroups.here().home
    if home is None:
        pytest.skip("no cgroup v2 with cgroup.kill that this process may write")
    return home


def _an_ended_pid() -> int:
    """The pid of a process that has ended (as a killed executor's)."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    return ended.pid


async def test_a_process_the_job_started_in_a_session_of_its_own_ends_with_it(tmp_path):
    executor = _executor(tmp_path)
    _cgroups_home()
    child = None
    try:
        entry, pid_file = await _started(executor, tmp_path, "job-1", own_session=True)
        child = await _completed(entry, pid_file)
        assert _gone(child), f"the job's child {child}, in a session of its own, runs on after the job"
    finally:
        await _closed(executor, child)


class _GroupEmptiedAtTheSignal:
    """A profile hook (this thread's): at `os.killpg`'s call from
    `_end_group`, the job's child (the group's last member, this process's
    to reap) killed and reaped, and a process that leads a session of its
    own given the group's id (`ns_last_pid`)."""

    def __init__(self, pgid: int, child: int, newcomers: list) -> None:
        self.pgid, self.child, self.newcomers = pgid, child, newcomers
        self.newcomer = None
        self.fired = False

    def __call__(self, frame, event, arg) -> None:
        if event != "c_call" or arg is not os.killpg or frame.f_code.co_name != "_end_group" or self.fired:
            return
        self.fired = True
        os.kill(self.child, signal.SIGKILL)
        os.waitpid(self.child, 0)
        with open(NS_LAST_PID, "w") as f:
            f.write(str(self.pgid - 1))
        newcomer = subprocess.Popen(["sleep", "60"], start_new_session=True)
        self.newcomers.append(newcomer)
        if newcomer.pid == self.pgid:
            self.newcomer = newcomer


@needs_ns_last_pid
async def test_a_process_given_the_group_id_as_the_leftovers_are_ended_is_not_killed(tmp_path):
    executor = _executor(tmp_path)
    _cgroups_home()
    libc = ctypes.CDLL(None)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    newcomers: list = []
    children: list[int] = []
    try:
        for attempt in range(1, ATTEMPTS + 1):
            hook = None
            entry, pid_file = await _started(executor, tmp_path, f"job-{attempt}", own_session=False)
            while not pid_file.exists() and entry.code is None:
                await asyncio.sleep(0.01)
            children.append(int(pid_file.read_text()))
            hook = _GroupEmptiedAtTheSignal(entry.proc.pid, children[-1], newcomers)
            sys.setprofile(hook)
            try:
                await asyncio.wait_for(asyncio.shield(entry.followed), 60)
            finally:
                sys.setprofile(None)
            assert entry.code == 0, entry.log_path.read_text()
            if not hook.fired:  # (nothing signalled by a number: the job's child ended by its cgroup)
                assert _gone(children[-1]), "the job's child runs on after the job"
                return
            if hook.newcomer is not None:
                break
        else:
            pytest.fail(f"other processes took the group's id first {ATTEMPTS} times")
        a_moment_to_die(hook.newcomer)
        assert hook.newcomer.poll() is None, \
            f"process {hook.newcomer.pid}, no job's, was killed (exit {hook.newcomer.returncode})"
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        await executor.close()
        end_newcomers(newcomers)
        for child in children:
            try:
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def test_the_executors_own_cgroup_is_found_below_the_cgroup2_mount(tmp_path):
    """`/proc/self/cgroup`'s `0::` path below the cgroup2 mount of
    mountinfo: at its root ("/", a cgroup namespace's view), or below the
    path it shows (the host's view, no namespace); none outside the view."""
    from kernel.system._job_cgroup import own_cgroup_directory

    mount = tmp_path / "unified"
    (mount / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b").mkdir(parents=True)  # (what "/../a/b" would name, outside the mount)
    cgroups, mountinfo = tmp_path / "cgroup", tmp_path / "mountinfo"

    def found(path: str, root: str) -> str | None:
        cgroups.write_text(f"4:memory:/x\n0::{path}\n")
        mountinfo.write_text(f"30 25 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
                             f"35 25 0:31 {root} {mount} rw,relatime - cgroup2 cgroup2 rw\n")
        return own_cgroup_directory(str(cgroups), str(mountinfo))

    assert found("/a/b", "/") == str(mount / "a" / "b")
    assert found("/host/a/b", "/host") == str(mount / "a" / "b")
    assert found("/../a/b", "/") is None
    assert found("/a/c", "/") is None  # (not there)


def test_an_executor_removes_the_empty_cgroups_of_executors_killed_before_it(tmp_path):
    """An executor SIGKILLed leaves the cgroup of each job process it ran
    (empty: they died with it); the next one started there removes them,
    not those of an executor that runs, nor one whose processes run on."""
    home = _cgroups_home()
    ended = _an_ended_pid()
    dead_empty = os.path.join(home, f"kernel-job-{ended}-00c0ffee-1")
    dead_busy = os.path.join(home, f"kernel-job-{ended}-00c0ffee-2")
    alive = os.path.join(home, f"kernel-job-{os.getpid()}-{started(os.getpid())}-00c0ffee-3")
    made = [dead_empty, dead_busy, alive]
    sleeper = None
    try:
        for path in made:
            os.mkdir(path)
        sleeper = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: join_in_child(dead_busy))
        assert is_member(sleeper.pid, dead_busy)
        JobCgroups.here()
        assert not os.path.exists(dead_empty)
        assert os.path.exists(dead_busy) and os.path.exists(alive)
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        for path in made:
            if os.path.exists(path):
                os.rmdir(path)
