"""Session 40 review (second round): process 0, its start-up timeout
passed with process 1 not linked, dials process 1 once to hear why (a twin
of ours linked there?). Where process 1's own link to process 0 completed
while that question was on its way, process 1 took the question for a second
process 0: it ended its run saying "two processes claim process id 0", and
process 0 said "process 1 ... did not connect", though it had (both exit 1).
Now each process tells a token of its own in the handshake: the question of
the very process 0 it linked is refused quietly as its own link, no twin, and
process 0, process 1 linked as it asked, goes on: the run completes.

Made deterministic by two proxies the test holds: one on process 1's way to
process 0 (its link), one on process 0's way to process 1 (its question)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest
from _ports import free_ports, wait_until
from _procs import without_stall_reports
from test_session35_cluster_links_review import PIPELINE, SECRET

PROMPTLY = 60.0  # seconds: an upper bound, never a synchronisation

pytestmark = pytest.mark.usefixtures("no_leaks")


def _pump(source: socket.socket, to: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            to.sendall(data)
    except OSError:
        pass
    finally:
        try:
            to.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _forward(held: socket.socket, port: int, pumps: list[threading.Thread]) -> socket.socket:
    onward = socket.create_connection(("127.0.0.1", port), timeout=PROMPTLY)
    onward.settimeout(None)
    held.settimeout(None)
    for source, to in ((held, onward), (onward, held)):
        pumps.append(threading.Thread(target=_pump, args=(source, to), daemon=True))
        pumps[-1].start()
    return onward


def _start(tmp_path, process: int, peers: str, timeout: str) -> subprocess.Popen:
    env = {**os.environ, "KERNEL_SECRET": SECRET, "REVIEW_DIR": str(tmp_path)}
    name = f"p{process}"
    with open(tmp_path / f"{name}.out", "w") as out, open(tmp_path / f"{name}.err", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "kernel.run", str(tmp_path / "pipeline.py"), "--process-id", str(process),
             "--peers", peers, "--startup-timeout", timeout], stdout=out, stderr=err, env=env)


def _let_go(procs: list, socks: tuple, pumps: list[threading.Thread]) -> None:
    """The processes killed, the proxies' sockets closed, their pumps ended."""
    for p in procs:
        p.kill()
        p.wait()
    for sock in socks:
        sock.close()
    for pump in pumps:
        pump.join(PROMPTLY)


def _ended_without_a_word(tmp_path, codes: list[int]) -> None:
    """Processes 1 and 0 (started in that order) ended the run, exit 0,
    saying nothing, process 0 with the run's results."""
    errors = {name: without_stall_reports((tmp_path / f"{name}.err").read_text()) for name in ("p0", "p1")}
    assert codes == [0, 0], errors
    assert errors == {"p0": "", "p1": ""}
    assert (tmp_path / "p0.out").read_text() != ""  # the run's results, on process 0


def test_process_zeros_question_crossing_process_ones_link_to_it_is_no_twin(tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    a, b, to_zero, to_one = free_ports(4)
    # (the meta, which both must agree on, does not hold the addresses: each lists a proxy)
    on_way_to_zero = socket.create_server(("127.0.0.1", to_zero))
    on_way_to_one = socket.create_server(("127.0.0.1", to_one))
    procs, held, pumps = [], [], []
    try:
        for sock in (on_way_to_zero, on_way_to_one):
            sock.settimeout(PROMPTLY)
        procs.append(_start(tmp_path, 1, f"127.0.0.1:{to_zero},127.0.0.1:{b}", "30"))
        held.append(on_way_to_zero.accept()[0])  # process 1's link to process 0, held here
        procs.append(_start(tmp_path, 0, f"127.0.0.1:{a},127.0.0.1:{to_one}", "2"))
        held.append(on_way_to_one.accept()[0])  # process 0's timeout passed: its question, held here
        held.append(_forward(held[0], a, pumps))  # process 1 links process 0 now
        wait_until(lambda: (tmp_path / "started").exists(), timeout=PROMPTLY, what="process 1 to link")
        held.append(_forward(held[1], b, pumps))  # the question reaches process 1, linked to its asker
        (tmp_path / "go").touch()
        codes = [p.wait(PROMPTLY) for p in procs]
    finally:
        _let_go(procs, (*held, on_way_to_zero, on_way_to_one), pumps)
    _ended_without_a_word(tmp_path, codes)
