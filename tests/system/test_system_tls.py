"""The system over TLS (`--tls-cert`, `--tls-key`, `--tls-ca` on every
process, the links' options): a job completes; a client without TLS, or
with a certificate the CA did not sign, is refused; a job of two processes
links them over TLS too (the executors hand their files on); an executor
whose coordinator's certificate does not verify exits 1 saying so, and one
whose TLS handshakes are reset says so once and dials on."""

from __future__ import annotations

import itertools
import re
import socket
import ssl
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _system import System, wait_until

from tests._certificates import make_ca, self_signed, sign


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, str]:
    """A CA and a certificate it signs for 127.0.0.1, and one it did not sign (openssl)."""
    d = tmp_path_factory.mktemp("tls")
    make_ca(d)
    sign(d, "node", "127.0.0.1", "extendedKeyUsage=serverAuth,clientAuth\n")
    self_signed(d, "other", "127.0.0.1")
    # the CA's, for another address: a node that presents it on 127.0.0.1 does not verify there
    sign(d, "elsewhere", "10.9.9.9")
    return {name: str(d / name) for name in ("ca.pem", "node.pem", "node.key", "other.pem", "other.key",
                                             "elsewhere.pem", "elsewhere.key")}


def node_options(certificates) -> list[str]:
    """The --tls-* options of a node with the CA's certificate."""
    return ["--tls-cert", certificates["node.pem"], "--tls-key", certificates["node.key"],
            "--tls-ca", certificates["ca.pem"]]


@pytest.fixture(scope="module")
def tls_system(certificates, tmp_path_factory):
    """A coordinator and one executor of one core over TLS, up, for the
    tests that only submit a job each and look at it (and at clients
    refused): one system's start-up for them all. The executor's --tls-*
    options only, no KERNEL_TLS: what a job process needs of TLS it gets
    from its executor."""
    system = System(tmp_path_factory.mktemp("tls-system"), options=node_options(certificates))
    system.env.pop("KERNEL_TLS", None)
    try:
        system.start_coordinator()
        system.start_executor(cores=1)
        system.executors_up(1)
        yield system
    finally:
        system.close()


def a_job_done_over_tls(system: System, pipeline: Path, flow_text: str) -> str:
    """Submit the pipeline `flow_text` (after `from kernel import Dataflow`)
    to `system` (up: `tls_system`) and wait for it: the job's id, once it
    succeeded."""
    pipeline.write_text("from kernel import Dataflow\n" + flow_text)
    done = system.cli("submit", pipeline, "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()[0]


def test_a_system_over_tls_runs_a_job_and_refuses_clients_without_it(certificates, tls_system, tmp_path):
    system = tls_system
    job = a_job_done_over_tls(system, tmp_path / "p.py", "flow = Dataflow('p')\n"
                              "flow.from_iterable(range(100)).map(lambda n: n * 2).print('n ')\n")
    printed = [line for line in system.cli("logs", job).stdout.splitlines() if line.startswith("n ")]
    assert sorted(printed) == sorted(f"n {2 * n}" for n in range(100))
    unsigned = ["--tls-cert", certificates["other.pem"], "--tls-key", certificates["other.key"],
                "--tls-ca", certificates["ca.pem"]]
    # (both at once: each client retries for its 2 s before it gives up)
    with ThreadPoolExecutor(2) as both:
        plain, stranger = both.map(lambda options: system.cli("status", options=options), [[], unsigned])
    # each told what to check (it said "Connection reset by peer", as for no coordinator there)
    for refused in (plain, stranger):
        assert refused.returncode == 1 and "error: could not reach" in refused.stderr
        assert "the coordinator closed the connection before any answer: it may serve TLS to a " \
               "client without it, refuse this client's certificate" in refused.stderr, refused.stderr
    assert system.coordinator.poll() is None and system.cli("status").returncode == 0


def link_addresses(under: Path) -> set[tuple[str, int]]:
    """The link addresses of the job processes started under `under` (their
    `--peers`, read from /proc: the processes themselves say where they listen)."""
    ports = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode().split("\0")
        except OSError:
            continue
        if "--peers" in argv and any(str(under) in arg for arg in argv):
            for peer in argv[argv.index("--peers") + 1].split(","):
                host, port = peer.rsplit(":", 1)
                ports.add((host.strip("[]"), int(port)))
    return ports


def listening(address) -> bool:
    try:
        socket.create_connection(address, timeout=5).close()
    except ConnectionRefusedError:
        return False
    return True


def test_a_job_of_two_processes_links_them_over_tls(certificates, tmp_path):
    """While the job runs, each of its processes' link port answers a TLS
    handshake with the executors' certificate (signed by the CA, for
    127.0.0.1): the links do not speak plain HTTP. The job then completes
    with the same results as without TLS."""
    system = System(tmp_path, options=node_options(certificates))
    try:
        system.start_coordinator()
        system.start_executor(cores=1), system.start_executor(cores=1)
        system.executors_up(2)
        go = tmp_path / "go"
        pipeline = tmp_path / "p.py"
        pipeline.write_text(textwrap.dedent(f"""
            import os, time
            from kernel import Dataflow

            def held(n):
                while not os.path.exists({str(go)!r}):  # until the test has looked at the links
                    time.sleep(0.01)
                return n * 2

            flow = Dataflow('p')
            flow.from_iterable(range(100)).map(held).key_by(lambda n: n % 3).count().print('c ')
        """))
        job = system.cli("submit", pipeline, "--processes", "2").stdout.splitlines()[0]
        wait_until(lambda: system.job(job)["status"] == "running", what="the job to run")
        context = ssl.create_default_context(cafile=certificates["ca.pem"])
        context.load_cert_chain(certificates["node.pem"], certificates["node.key"])
        addresses = link_addresses(tmp_path)
        assert len(addresses) == 2, addresses
        for address in addresses:  # (each process listens once it has started up)
            wait_until(lambda address=address: listening(address), what=f"a link server at {address}")
            with socket.create_connection(address, timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as link:
                assert dict(x[0] for x in link.getpeercert()["subject"])["commonName"] == "127.0.0.1"
        go.write_text("")
        wait_until(lambda: system.job(job)["status"] in ("completed", "failed"), timeout=60,
                   what="the job to end")
        assert system.job(job)["status"] == "completed", system.cli("logs", job).stdout
        log = system.cli("logs", job).stdout
        printed = sorted(line.split("] ", 1)[1] for line in log.splitlines() if "] c " in line)
        counts = {}
        for n in range(100):
            counts[2 * n % 3] = counts.get(2 * n % 3, 0) + 1
        assert printed == sorted(f"c {pair}" for pair in counts.items()), log
    finally:
        system.close()


def test_a_job_of_a_tls_system_publishes_a_topic_through_its_coordinator(tls_system, tmp_path):
    """A job an executor started with TLS starts reaches its coordinator (to
    register its topic) over TLS too: told only KERNEL_COORDINATOR, it
    dialled it in plain HTTP and failed after 10 s ("cannot reach the
    coordinator ... Server disconnected"). (`tls_system`: the executor's
    --tls-* options only, no KERNEL_TLS.)"""
    job = a_job_done_over_tls(tls_system, tmp_path / "pub.py", "flow = Dataflow('pub')\n"
                              "flow.from_iterable(range(100)).publish('numbers')\n")
    assert tls_system.job(job)["status"] == "completed"


@pytest.mark.parametrize("wrong", ["the executor's CA", "the coordinator's address"])
def test_an_executor_whose_coordinator_certificate_does_not_verify_exits_1_saying_why(
        certificates, tmp_path, wrong):
    """A configuration error, as a wrong secret is: no retry mends it. The
    executor retried every 0.5 s for ever, one warning in its log, nothing
    in the coordinator's, and its supervisor saw a healthy process."""
    system = System(tmp_path)  # (the options of each process its own)
    try:
        if wrong == "the executor's CA":  # the coordinator's certificate is not signed by it
            coordinator = node_options(certificates)
            executor = [*node_options(certificates)[:4], "--tls-ca", certificates["other.pem"]]
            why = ".+"  # (OpenSSL's words for it vary with its version)
        else:  # signed by the CA, but for 10.9.9.9: the executor dials 127.0.0.1
            coordinator = ["--tls-cert", certificates["elsewhere.pem"], "--tls-key",
                           certificates["elsewhere.key"], "--tls-ca", certificates["ca.pem"]]
            executor = node_options(certificates)
            why = "IP address mismatch, certificate is not valid for '127.0.0.1'."
        system.start_coordinator(*coordinator)
        process = system.start_executor(1, *executor)
        assert process.wait(timeout=20) == 1
        log = (tmp_path / "executor1.log").read_text()
        assert re.search(
            rf"^error: the coordinator at 127\.0\.0\.1:{system.port} presented a TLS certificate that "
            rf"does not verify \({why}\): start the executor with a --tls-ca that signs the "
            r"coordinator's --tls-cert, a certificate issued for the address it dials \(127\.0\.0\.1\)$",
            log, re.MULTILINE), log
    finally:
        system.close()


RESETTING = """\
import socket, struct, sys
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("listening", flush=True)
while True:  # each connection reset in the middle of its TLS handshake
    connection, _ = server.accept()
    connection.recv(16)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()
    print("reset", flush=True)
"""


def test_an_executor_whose_tls_handshakes_are_reset_says_so_once_and_registers_once_they_are_not(
        certificates, tmp_path):
    """What a coordinator restarting may look like: it dials on, saying
    once why it cannot connect (it said `cannot reach`, with the ssl
    context's repr in the middle of aiohttp's text), and registers once
    a coordinator answers there."""
    system = System(tmp_path, options=node_options(certificates))
    resetting = subprocess.Popen([sys.executable, "-c", RESETTING, str(system.port)],
                                 stdout=subprocess.PIPE, text=True)
    try:
        assert resetting.stdout.readline() == "listening\n"
        system.start_executor(1)
        log = tmp_path / "executor1.log"
        said = (f"executor: the TLS handshake with the coordinator at 127.0.0.1:{system.port} failed "
                "([Errno 104] Connection reset by peer); retrying, each time later, up to every 10 s, as it "
                "may be restarting (if this goes on: does it listen with --tls-cert, and does its --tls-ca "
                "sign this executor's certificate?)")
        wait_until(lambda: said in log.read_text(), timeout=20, what="the executor to say why")
        for _ in range(3):  # (0.25-0.5 s, then 0.5-1 s apart)
            assert resetting.stdout.readline() == "reset\n"
        assert log.read_text().count("TLS handshake") == 1, log.read_text()
        assert system.executors[0].poll() is None
        resetting.kill()
        resetting.wait()
        system.start_coordinator()
        system.executors_up(1)
    finally:
        resetting.kill()
        resetting.wait()
        resetting.stdout.close()
        system.close()


def refusal_times(log: str) -> list[float]:
    """The times (seconds, from the coordinator's log) of its refusals of a
    TLS handshake, in order."""
    found = re.findall(r"^\S+ (\d\d):(\d\d):(\d\d),(\d\d\d) WARNING .*TLS handshake failed", log,
                       re.MULTILINE)
    return [int(h) * 3600 + int(m) * 60 + int(sec) + int(ms) / 1000 for h, m, sec, ms in found]


@pytest.fixture(scope="module")
def refused_executor(certificates, tmp_path_factory):
    """A coordinator with the CA's certificate and an executor with one the
    CA did not sign (mutual TLS: refused in each handshake), dialling on:
    (the system, the executor). Its tests only read the logs, which each
    refusal adds to."""
    system = System(tmp_path_factory.mktemp("refused-executor"))
    try:
        system.start_coordinator(*node_options(certificates))
        executor = system.start_executor(1, "--tls-cert", certificates["other.pem"], "--tls-key",
                                         certificates["other.key"], "--tls-ca", certificates["ca.pem"])
        yield system, executor
    finally:
        system.close()


def test_an_executor_the_coordinator_refuses_backs_off(refused_executor):
    """A coordinator refusing an executor's certificate (mutual TLS: the
    executor sees only the connection closed, as a coordinator over its
    limit of pending connections looks) was dialled 13 times in 2 s (the
    dial's own retries, 10 ms apart at first) and again 0.5 s later, for
    ever: a TLS handshake on both sides and a refusal in the coordinator's
    log each time. It now waits 0.25-0.5 s, then twice as long each time
    (up to 10 s), saying once why, and runs on: a refusal of this kind may
    be a coordinator restarting, which no client can tell apart."""
    system, executor = refused_executor
    times = wait_until(lambda: len(found := refusal_times(system.coordinator_log.read_text())) >= 4
                       and found, timeout=20, what="four refusals")
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.45 and gaps[2] >= 0.95, gaps
    assert executor.poll() is None
    log = (system.root / "executor1.log").read_text()
    assert log.count("TLS handshake with the coordinator") == 1, log
    assert "retrying, each time later, up to every 10 s" in log


def test_a_coordinator_that_refuses_an_executors_certificate_says_so_naming_it(refused_executor):
    """Mutual TLS: an executor whose certificate the coordinator's --tls-ca
    did not sign is refused in the TLS handshake. Neither side said so:
    asyncio's TLS server drops a failed handshake in silence, and the
    executor sees only the connection closed."""
    system, _ = refused_executor
    said = re.compile(r"refused a system connection from 127\.0\.0\.1: TLS handshake failed "
                      r"\(self.signed certificate\)")
    wait_until(lambda: said.search(system.coordinator_log.read_text()), timeout=20,
               what="the coordinator to say why")
