"""Session 41, review: `logs` whose stdout is read slowly (`logs JOB | less`,
the first page read for a while) is not cut off by the coordinator's
heartbeat.

The command wrote each reply (up to 1 MiB an executor) to stdout on its
event loop: a pipe's reader that takes it slowly held the write, and the
loop with it, so the command neither pinged (`_keep_heard`) nor answered
the coordinator's pings; the coordinator closed its connection ("No PONG
received"), and the next request ended the command: `error: coordinator
at HOST:PORT: connection closed`, exit 1, the log cut at the first MiB
(with the default 5 s heartbeat, a page read for 9 s). It now writes on a
thread (`_printed`).

Real processes: a coordinator (its heartbeat 0.5 s) and an executor; the
test reads the command's stdout as a pager does: a pipe's worth, a pause
of PAUSE s (four periods: the reader, not a wait for anything), then the
rest."""

from __future__ import annotations

import subprocess
import sys

from _system import System, a_logged_job, read_as_a_pager

HEARTBEAT = "0.5"  # seconds: a client silent this long is pinged, and dropped 0.25 s later
PAUSE = 2.0  # seconds the reader takes over its first page
LINES = 3000  # of 100 bytes: 300 kB, more than a pipe holds


def test_logs_read_slowly_by_a_pager_is_printed_whole(tmp_path):
    system = System(tmp_path)
    system.env["KERNEL_COORDINATOR_HEARTBEAT"] = HEARTBEAT  # (the coordinator's and the command's)
    try:
        system.start_coordinator()
        system.start_executor(1)
        system.executors_up(1)
        job = a_logged_job(system, tmp_path, LINES)
        logs = subprocess.Popen([sys.executable, "-m", "kernel", "logs", job], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=system.env, cwd=tmp_path)
        out, err = read_as_a_pager(logs, PAUSE)
        assert err == ""
        numbered = [line[5:10] for line in out.decode().splitlines() if line.startswith("line ")]
        assert numbered == [f"{i:05d}" for i in range(LINES)]
        assert "No PONG" not in system.coordinator_log.read_text()
    finally:
        system.close()
