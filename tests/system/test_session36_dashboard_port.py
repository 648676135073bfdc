"""Session 36: an executor gives each job process's dashboard port 0 (the
system picks a free one as the process binds it) and learns the port from
the process's own `dashboard on http://HOST:PORT/`, which `status` and the
system's page then link to. It picked a free port itself (`_free_port`) and
passed it on: another program taking that port between the pick and the
bind made the attempt fail (`dashboard 127.0.0.1:P: cannot listen there:
Address already in use`), a restart spent each time, and at the end the
job failed."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request

from _system import HEARTBEAT, System, wait_until

# An executor beside which "another program" takes every port the executor
# picks (its links' since session 39: `_listening_socket`, which holds it),
# as soon as it is picked where it can: the race, every time.
SQUATTED = """\
import socket, sys
import kernel.system._executor as executor

picked, held = executor._listening_socket, []

def taken_at_once(host):
    sock = picked(host)
    squatter = socket.socket()
    try:
        squatter.bind((host, sock.getsockname()[1]))
        squatter.listen()
        held.append(squatter)
    except OSError:
        squatter.close()
    return sock

executor._listening_socket = taken_at_once
from kernel.system import main
sys.exit(main(sys.argv[1:]))
"""
ENDLESS = ("import time\nfrom kernel import Dataflow\nflow = Dataflow('endless')\n"
           "flow.from_iterable(range(10**9)).map(lambda n: time.sleep(0.001) or n).sink(id)\n")


def test_a_port_taken_as_soon_as_the_executor_picks_it_spends_no_restart(tmp_path):
    system = System(tmp_path)
    try:
        system.start_coordinator()
        with open(tmp_path / "executor.log", "ab") as log:
            system.executors.append(subprocess.Popen(
                [sys.executable, "-c", SQUATTED, "executor", "--cores", "1", "--workdir",
                 str(tmp_path / "executor1"), "--host", "127.0.0.1", "--heartbeat", str(HEARTBEAT)],
                stdout=log, stderr=log, env=system.env, cwd=tmp_path))
        system.executors_up(1)
        pipeline = tmp_path / "endless.py"
        pipeline.write_text(ENDLESS)
        done = system.cli("submit", pipeline, "--max-restarts", "0")
        assert done.returncode == 0, done.stderr
        job = done.stdout.splitlines()[0]
        log = tmp_path / "executor1" / "logs" / f"{job}.log"

        def linked():
            state = system.job(job)
            assert state["status"] in ("starting", "running"), state
            said = log.exists() and re.search(r"^dashboard on (\S+)$", log.read_text(), re.MULTILINE)
            return said and state["dashboards"] != [None] and (state, said.group(1))

        state, said = wait_until(linked, what=f"{job} to run with its dashboard's link")
        assert (state["status"], state["attempt"], state["restarts"]) == ("running", 1, 0), state
        # the link is the process's own, as it said it in its log, and it serves there
        assert state["dashboards"] == [said] and re.fullmatch(r"http://127\.0\.0\.1:\d+/", said), state
        with urllib.request.urlopen(said + "metrics", timeout=5) as response:
            assert b"streamkernel_records_out_total" in response.read()
        assert system.cli("kill", job).returncode == 0
    finally:
        system.close()


def test_output_without_a_newline_before_the_dashboard_does_not_hide_its_link(tmp_path):
    # (the process's stdout and stderr share its log: a pipeline's unfinished
    # line, 10 kB of it, begins the line that says where its dashboard is)
    system = System(tmp_path)
    try:
        system.start_coordinator()
        system.start_executor(1, "--dashboard-host", "localhost")
        system.executors_up(1)
        pipeline = tmp_path / "endless.py"
        pipeline.write_text("import sys\nsys.stdout.write('x' * 10_000)\nsys.stdout.flush()\n" + ENDLESS)
        done = system.cli("submit", pipeline)
        assert done.returncode == 0, done.stderr
        job = done.stdout.splitlines()[0]
        (link,) = wait_until(lambda: (links := system.job(job)["dashboards"]) != [None] and links,
                             what=f"{job}'s dashboard's link")
        # (named as --dashboard-host names it, a name as a name, as when the executor picked the port)
        assert re.fullmatch(r"http://localhost:\d+/", link), link
        with urllib.request.urlopen(link + "metrics", timeout=5) as response:
            assert b"streamkernel_records_out_total" in response.read()
        assert system.cli("kill", job).returncode == 0
    finally:
        system.close()
