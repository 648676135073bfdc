"""Kernel processes stopped on purpose: said, and waited for.

A kernel stopped by SIGSTOP (`kill -STOP`), by job control, or held by a
debugger (ptrace) neither computes nor fails: the run pauses with no word,
and the kernel's stall detector, once it was continued, blamed the
operator it had been running ("stall: ... ran 3012.3 ms without
yielding"). The supervisor looks at its kernels' states (/proc/<pid>/stat)
every POLL_INTERVAL while it waits; one found stopped twice in a row (a
debugger's brief attach, py-spy's dump, is not worth a notice) is said so,
and so is its resumption.

It is waited for, not killed: stopping a process is someone's deliberate
act (a breakpoint, a pause to look at it), and killing it would end the
very session that stopped it. Ctrl-C still ends the run (SIGKILL ends a
stopped process too). A kernel's own stall detector leaves out the time it
was stopped (kernel/scheduling/_continues.py), but a debugger resumes it
without SIGCONT: that stall is still reported.
"""

from __future__ import annotations

import logging
import time

POLL_INTERVAL = 1.0  # seconds between two looks at the kernels' states
_NOTICED_AFTER = 2  # looks in a row that find a process stopped before it is said

log = logging.getLogger("kernel")


def process_state(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat (R, S, D, T stopped, t traced,
    Z...), None when it cannot be read (gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # after the command's name, in parentheses, which may hold spaces and ")"
            return stat.read().rpartition(b")")[2].split()[0].decode()
    except (OSError, IndexError):
        return None


WAITED = "the run waits for it"
# A cluster's relay stopped: its heartbeats stop too, and the other processes
# give it up after two of them (net/_links.py); the run here waits all the same.
RELAY_WAITED = "the other processes of the cluster give it up after two missed heartbeats"


class StoppedWatch:
    """Looks at `processes` ((name, pid, kernel index or None for the
    links process) each) when `look_if_due` is called POLL_INTERVAL or
    more after its last look."""

    def __init__(self, processes: list[tuple[str, int, int | None]], clock=time.monotonic) -> None:
        self._processes = processes
        self._clock = clock
        self._due = clock() + POLL_INTERVAL
        self._looks = [0] * len(processes)  # looks in a row that found each stopped
        self._since: list[float | None] = [None] * len(processes)  # first look that found it stopped
        self._until = [0.0] * len(processes)  # last look that found it stopped

    def timeout(self) -> float:
        """Seconds until the next look is due."""
        return max(0.0, self._due - self._clock())

    def look_if_due(self) -> None:
        now = self._clock()
        if now < self._due:
            return
        self._due = now + POLL_INTERVAL
        for i, (name, pid, kernel) in enumerate(self._processes):
            state = process_state(pid)
            if state in ("T", "t"):
                self._looks[i] += 1
                self._until[i] = now
                if self._looks[i] == _NOTICED_AFTER:
                    self._since[i] = now - POLL_INTERVAL
                    how = ("held by a debugger (traced)" if state == "t" else
                           f"stopped (SIGSTOP or a debugger; kill -CONT {pid} resumes it)")
                    log.warning("%s (pid %d) is %s: %s", name, pid, how,
                                WAITED if kernel is not None else RELAY_WAITED,
                                extra={"kernel": kernel} if kernel is not None else None)
                continue
            self._say_continued(i)

    def end(self) -> None:
        """Every process has finished: those said stopped had continued."""
        for i in range(len(self._processes)):
            self._say_continued(i)

    def _say_continued(self, i: int) -> None:
        name, pid, kernel = self._processes[i]
        if self._since[i] is not None:  # (how long: as the looks saw it, give or take one interval)
            stopped_for = self._until[i] - self._since[i]
            log.warning("%s (pid %d) continues, stopped for %.1f s", name, pid, stopped_for,
                        extra={"kernel": kernel} if kernel is not None else None)
        self._looks[i] = 0
        self._since[i] = None
