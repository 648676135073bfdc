"""Session 35's review of the links between a cluster's processes, as a
demanding user and a hostile network would try them, with real processes
and sockets:

* a second process given the same --process-id (its --peers list naming
  another port of its own) is refused by process 0 in the handshake and
  ends with a line that says so, while the cluster it tried to join gives
  exactly the results of plain Python (tests/net/test_session35_links_review.py:
  any dialler a server does not take is told why);
* a peer's address where another program answers HTTP is said so, at once;
* TLS on one process and off another is said so on both; a peer's
  certificate that does not verify is said in the link's words;
* processes of different flows each say so once;
* a process frozen (SIGSTOP) long enough to be given up says, once thawed,
  that its peer heard nothing from it;
* a process whose --peers list has two peers swapped tells them so.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest
from _ports import _sockets_on, descendants, free_ports, listening, wait_until
from _procs import without_stall_reports

from tests._certificates import make_ca, self_signed, sign

SECRET = "cluster-review-secret"
PROMPTLY = 60.0  # seconds: an upper bound, never a synchronisation

pytestmark = pytest.mark.usefixtures("no_leaks")

PIPELINE = """\
import asyncio, os, pathlib
from kernel import Dataflow

here = pathlib.Path(os.environ["REVIEW_DIR"])


async def numbers():
    (here / "started").touch()  # every link is up: kernels start only then
    while not (here / "go").exists():
        await asyncio.sleep(0.01)
    for n in range(300):
        yield n


flow = Dataflow("dup")
flow.from_async_iterable(numbers).key_by(lambda n: n % 7).sum().print()
"""


def start(tmp_path, process: int, peers: str, name: str, *options: str) -> subprocess.Popen:
    env = {**os.environ, "KERNEL_SECRET": SECRET, "REVIEW_DIR": str(tmp_path)}
    with open(tmp_path / f"{name}.out", "w") as out, open(tmp_path / f"{name}.err", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "kernel.run", str(tmp_path / "pipeline.py"),
                                 "--process-id", str(process), "--peers", peers, "--startup-timeout", "30",
                                 *options], stdout=out, stderr=err, env=env)


def _exit_codes(procs: list[subprocess.Popen]) -> list[int]:
    """How each of `procs` ended (waited for PROMPTLY each); none is left
    running, whatever the wait met."""
    try:
        return [p.wait(PROMPTLY) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()

def test_a_second_process_with_the_same_process_id_is_refused_saying_so(tmp_path):
    """It was refused only after the handshake, its link closed with code
    1008: it ended with `error: lost process 0 (...): link to process 0
    closed: code 1008 before the run finished`, as if process 0 had died.
    (Since session 39 the cluster it tried to join ends too, saying why:
    which of the two is the process meant no end can tell,
    tests/kernel/test_session39_twin_process_id.py.)"""
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    a, b, c = free_ports(3)
    peers = f"127.0.0.1:{a},127.0.0.1:{b}"
    procs = [start(tmp_path, 0, peers, "p0"), start(tmp_path, 1, peers, "p1")]
    try:
        wait_until(lambda: (tmp_path / "started").exists(), what="the cluster to form", timeout=PROMPTLY)
        twin = start(tmp_path, 1, f"127.0.0.1:{a},127.0.0.1:{c}", "twin")
        procs.append(twin)
        assert twin.wait(PROMPTLY) == 1
        assert without_stall_reports((tmp_path / "twin.err").read_text()) == (
            f"error: process 0 at http://127.0.0.1:{a} refused this process (1): process 1 at 127.0.0.1 is "
            "already linked there (is --process-id 1 given to two processes, or do the --peers lists "
            "differ?)\n")
        assert (tmp_path / "twin.out").read_text() == ""
        assert [p.wait(PROMPTLY) for p in procs[:2]] == [1, 1]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    twins = ("two processes claim process id 1: one at 127.0.0.1 (linked), another at 127.0.0.1 (refused): "
             "is --process-id 1 given to two processes, or do the --peers lists differ?")
    assert without_stall_reports((tmp_path / "p0.err").read_text()) == (
        "refused a link from 127.0.0.1: process 1 at 127.0.0.1 is already linked\n"
        f"error: {twins}\n")
    assert without_stall_reports((tmp_path / "p1.err").read_text()) == (
        f"error: process 0 (127.0.0.1:{a}) failed: {twins}\n")


def test_another_program_answering_http_at_a_peers_address_is_said_so(tmp_path):
    """It said `could not reach process 0 at http://...: within 30 s: 404,
    message='Invalid response status', url=...`, aiohttp's words, though it
    gave up at once and the link code had said better."""
    (tmp_path / "pipeline.py").write_text("from kernel import Dataflow\nflow = Dataflow('x')\n"
                                          "flow.from_iterable(range(10)).print()\n")
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    serving = threading.Thread(target=other.serve_forever, daemon=True)
    serving.start()
    try:
        port = other.server_address[1]
        (free,) = free_ports(1)
        process = start(tmp_path, 1, f"127.0.0.1:{port},127.0.0.1:{free}", "p1")
        try:
            assert process.wait(PROMPTLY) == 1
        finally:
            process.kill()
            process.wait()
    finally:
        other.shutdown()
        other.server_close()
        serving.join()
    assert without_stall_reports((tmp_path / "p1.err").read_text()) == (
        f"error: process 0 at http://127.0.0.1:{port} answered, but not as a kernel server (404 Not "
        "Found): another program listens there, or --peers gives the wrong port\n")


def test_another_program_with_a_banner_at_a_peers_address_is_said_so_on_one_line(tmp_path):
    """A program that answers what is not HTTP: aiohttp's words for it took
    four lines of the error, the last a caret under nothing."""
    (tmp_path / "pipeline.py").write_text("from kernel import Dataflow\nflow = Dataflow('x')\n"
                                          "flow.from_iterable(range(10)).print()\n")
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        (free,) = free_ports(1)
        process = start(tmp_path, 1, f"127.0.0.1:{port},127.0.0.1:{free}", "p1")
        try:
            other.settimeout(PROMPTLY)
            connection, _ = other.accept()
            with connection:
                request = b""
                while b"\r\n\r\n" not in request:  # (a banner before it may find aiohttp not reading yet)
                    request += connection.recv(4096)
                connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
                assert process.wait(PROMPTLY) == 1
        finally:
            process.kill()
            process.wait()
    error = without_stall_reports((tmp_path / "p1.err").read_text())
    assert error.startswith(f"error: process 0 at http://127.0.0.1:{port} answered, but not as a kernel "
                            "server (400 Bad status line")
    assert "SSH-2.0-OpenSSH_9.6" in error
    assert error.endswith("): another program listens there, or --peers gives the wrong port\n")
    assert error.count("\n") == 1, error


def _a_pair_with_certificates(tmp_path) -> tuple[list[str], tuple[int, int], str]:
    """A ten-record pipeline, a CA and a node certificate in `tmp_path`:
    the TLS options, two free ports and the --peers of a pair of processes."""
    (tmp_path / "pipeline.py").write_text("from kernel import Dataflow\nflow = Dataflow('x')\n"
                                          "flow.from_iterable(range(10)).print()\n")
    make_ca(tmp_path)
    sign(tmp_path, "node", "127.0.0.1", "extendedKeyUsage=serverAuth,clientAuth\n")
    tls = ["--tls-cert", str(tmp_path / "node.pem"), "--tls-key", str(tmp_path / "node.key"),
           "--tls-ca", str(tmp_path / "ca.pem")]
    a, b = free_ports(2)
    return tls, (a, b), f"127.0.0.1:{a},127.0.0.1:{b}"

@pytest.mark.parametrize("tls_on", [0, 1])
def test_tls_on_one_process_and_off_the_other_is_said_so_on_both(tmp_path, tls_on):
    """Process 0 said only `process 1 (...) did not connect within 4 s`; a
    dialler with TLS to a server without it retried until its time was up,
    then said `Cannot connect to host ... ssl:<ssl.SSLContext object at
    0x7f...> [[SSL: WRONG_VERSION_NUMBER] wrong version number ...]`; one
    without TLS to a server with it, `Server disconnected` (the server
    closes the connection, saying nothing it could read: a hint now)."""
    tls, (a, b), peers = _a_pair_with_certificates(tmp_path)
    procs = [start(tmp_path, i, peers, f"p{i}", "--startup-timeout", "4", *(tls if i == tls_on else []))
             for i in (0, 1)]
    assert _exit_codes(procs) == [1, 1]
    errors = [without_stall_reports((tmp_path / f"p{i}.err").read_text()).splitlines() for i in (0, 1)]
    if tls_on == 0:
        why = "plain HTTP, on a TLS port: TLS is off there (no --tls-cert) and on here?"
        assert errors[1][-1].startswith(f"error: could not reach process 0 at http://127.0.0.1:{a} "
                                        "within 4 s: ")
        assert errors[1][-1].endswith(" (it closed the connection before answering: TLS on there and off "
                                      "here, or too many connections pending there?)")
    else:
        why = "a TLS handshake, on a port without TLS: TLS is on there (--tls-cert) and off here?"
        assert errors[1] == [f"error: process 0 at https://127.0.0.1:{a} answered without TLS: TLS is on "
                             "here (--tls-cert) and off there, or another program listens there"]
    assert errors[0][-1] == (f"error: process 1 (127.0.0.1:{b}) did not connect within 4 s; refused "
                             f"meanwhile: 127.0.0.1 sent {why}")
    assert set(errors[0][:-1]) == {f"refused a link from 127.0.0.1: {why}"}


def test_a_tls_peer_that_ended_before_the_last_try_is_still_said_to_have_closed_the_tries(tmp_path):
    """Process 0 (TLS) gives up first and ends; process 1 (no TLS) tries
    on, and its last try finds nothing listening: its error said only
    `Connect call failed`, the hint of the tries process 0 closed before
    answering lost (CI's run of the test above, once, under load)."""
    tls, (a, _), peers = _a_pair_with_certificates(tmp_path)
    procs = [start(tmp_path, 0, peers, "p0", "--startup-timeout", "2.5", *tls),
             start(tmp_path, 1, peers, "p1", "--startup-timeout", "5")]
    assert _exit_codes(procs) == [1, 1]
    # (process 0 refused process 1's tries, plain HTTP on its TLS port, before it ended)
    assert "sent plain HTTP, on a TLS port" in (tmp_path / "p0.err").read_text()
    last = without_stall_reports((tmp_path / "p1.err").read_text()).splitlines()[-1]
    assert last.startswith(f"error: could not reach process 0 at http://127.0.0.1:{a} within 5 s: "
                           "Cannot connect to host"), last
    assert "Connect call failed" in last
    assert last.endswith(" (it closed the connection before answering: TLS on there and off here, or too "
                         "many connections pending there?)"), last

def test_a_peer_certificate_that_does_not_verify_is_said_in_the_links_words(tmp_path):
    """The links said `presented a TLS certificate that does not verify
    (...): no retry mends that (...)`; the relay put in its place `could
    not reach process 0 at https://... within 30 s: Cannot connect to host
    127.0.0.1:... ssl:<ssl.SSLContext object at 0x7f...> [[SSL:
    CERTIFICATE_VERIFY_FAILED] ...`, "within 30 s" though it gave up at once."""
    (tmp_path / "pipeline.py").write_text("from kernel import Dataflow\nflow = Dataflow('x')\n"
                                          "flow.from_iterable(range(10)).print()\n")
    make_ca(tmp_path)
    sign(tmp_path, "node", "127.0.0.1", "extendedKeyUsage=serverAuth,clientAuth\n")
    self_signed(tmp_path, "other", "127.0.0.1")
    a, b = free_ports(2)
    peers = f"127.0.0.1:{a},127.0.0.1:{b}"
    procs = [start(tmp_path, i, peers, f"p{i}", "--tls-cert", str(tmp_path / f"{name}.pem"),
                   "--tls-key", str(tmp_path / f"{name}.key"), "--tls-ca", str(tmp_path / "ca.pem"),
                   "--startup-timeout", "4")
             for i, name in ((0, "other"), (1, "node"))]
    try:
        assert procs[1].wait(PROMPTLY) == 1
        assert procs[0].wait(PROMPTLY) == 1
    finally:
        for p in procs:
            p.kill()
            p.wait()
    error = without_stall_reports((tmp_path / "p1.err").read_text())
    assert error.startswith(f"error: process 0 at https://127.0.0.1:{a} presented a TLS certificate that "
                            "does not verify (self-signed certificate)"), error
    assert error.endswith(": no retry mends that (is the certificate signed by the CA given, and issued for "
                          "this address?)\n"), error
    assert error.count("\n") == 1


def test_processes_of_different_flows_each_say_so_once(tmp_path):
    """Process 0 said it twice: its relay logged the mismatch, then the run
    ended with it."""
    flows = {0: "count()", 1: "count().map(lambda kv: kv)"}
    for i, tail in flows.items():
        (tmp_path / f"pipeline{i}.py").write_text(
            "from kernel import Dataflow\nflow = Dataflow('x')\n"
            f"flow.from_iterable(range(10)).key_by(lambda n: n % 3).{tail}.print()\n")
    a, b = free_ports(2)
    peers = f"127.0.0.1:{a},127.0.0.1:{b}"
    env = {**os.environ, "KERNEL_SECRET": SECRET}
    procs = [subprocess.Popen([sys.executable, "-m", "kernel.run", str(tmp_path / f"pipeline{i}.py"),
                               "--process-id", str(i), "--peers", peers, "--startup-timeout", "30"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in (0, 1)]
    try:
        outs = [p.communicate(timeout=PROMPTLY) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert [p.returncode for p in procs] == [1, 1]
    assert [out for out, _ in outs] == ["", ""]
    errors = [without_stall_reports(err).splitlines() for _, err in outs]
    assert [len(lines) for lines in errors] == [1, 1], errors
    assert errors[0][0].startswith("error: process 1 at 127.0.0.1 is incompatible (flow='")
    assert errors[1][0].startswith(f"error: process 0 at http://127.0.0.1:{a} is incompatible (flow='")
    for lines in errors:
        assert lines[0].endswith("every process of a cluster must run the same flow with the same cores and "
                                 "peers, each with a state_dir or none")


ENDLESS = """\
import asyncio, os, pathlib
from kernel import Dataflow

here = pathlib.Path(os.environ["REVIEW_DIR"])


async def ticks():
    (here / "started").touch()
    n = 0
    while True:
        await asyncio.sleep(0.01)
        n += 1
        yield n


flow = Dataflow("endless")
flow.from_async_iterable(ticks).key_by(lambda n: n % 5).count().print()
"""


def test_a_process_frozen_until_given_up_says_its_peer_heard_nothing_from_it(tmp_path):
    """Thawed, it said `lost process 0 (...): link to process 0 closed: code
    1001 before the run finished`, as if process 0 had gone wrong: now the
    close's reason, that process 0 heard nothing from it."""
    (tmp_path / "pipeline.py").write_text(ENDLESS)
    a, b = free_ports(2)
    peers = f"127.0.0.1:{a},127.0.0.1:{b}"
    procs = [start(tmp_path, i, peers, f"p{i}", "--heartbeat", "0.3") for i in (0, 1)]
    frozen: list[int] = []
    try:
        wait_until(lambda: (tmp_path / "started").exists(), what="the cluster to run", timeout=PROMPTLY)
        frozen = descendants(procs[1].pid)  # the process, its kernel and its relay
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        assert procs[0].wait(PROMPTLY) == 1
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        assert procs[1].wait(PROMPTLY) == 1
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for p in procs:
            p.kill()
            p.wait()
    errors = [without_stall_reports((tmp_path / f"p{i}.err").read_text()).splitlines() for i in (0, 1)]
    assert errors[0][-1] == (f"error: lost process 1 (127.0.0.1:{b}): process 1 did not answer for 0.6 s "
                             "(peer dead or network cut) before the run finished")
    assert errors[1][-1] == (f"error: lost process 0 (127.0.0.1:{a}): link to process 0 closed: code 1001 "
                             "(no heartbeat: nothing heard from this end for 0.6 s) before the run finished")


def test_a_process_whose_peers_list_is_in_another_order_tells_the_peers_it_dialled(tmp_path):
    """Process 2 said `127.0.0.1:B answered as process 1, not 0: check the
    order of --peers`, and closed the links it had dialled: processes 0 and
    1 said only `lost process 2 (...): it closed the link (code 1000)`."""
    (tmp_path / "pipeline.py").write_text("from kernel import Dataflow\nflow = Dataflow('x')\n"
                                          "flow.from_iterable(range(10)).print()\n")
    a, b, c = free_ports(3)
    peers = f"127.0.0.1:{a},127.0.0.1:{b},127.0.0.1:{c}"
    procs = [start(tmp_path, i, peers, f"p{i}") for i in (0, 1)]
    try:
        # processes 0 and 1 linked (else one may end before the other dials it, and say only that)
        wait_until(lambda: listening(b) and any(state == "01" for state, _ in _sockets_on(a)),
                   what="processes 0 and 1 to link", timeout=PROMPTLY)
        procs.append(start(tmp_path, 2, f"127.0.0.1:{b},127.0.0.1:{a},127.0.0.1:{c}", "p2"))
        assert [p.wait(PROMPTLY) for p in procs] == [1, 1, 1]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    errors = [without_stall_reports((tmp_path / f"p{i}.err").read_text()).splitlines() for i in (0, 1, 2)]
    said = (f"127.0.0.1:{b} answered as process 1, not 0: check the order of --peers",
            f"127.0.0.1:{a} answered as process 0, not 1: check the order of --peers")
    assert len(errors[2]) == 1 and errors[2][0].removeprefix("error: ") in said, errors[2]
    for i in (0, 1):  # told by process 2, or by the other, told by process 2
        assert errors[i][-1].startswith(tuple(f"error: process {p} (" for p in (2, 1 - i))), errors
        assert errors[i][-1].endswith(said), errors
