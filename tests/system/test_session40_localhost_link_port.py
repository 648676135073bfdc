"""Session 40: an executor on `--host localhost` prepares its job processes'
link port on every address `localhost` resolves to, as the process bound it
itself (`create_server('localhost', port)`: 127.0.0.1 and ::1 where both are
listed), and the process serves each. It was prepared on 127.0.0.1 alone: a
peer that dialled localhost by ::1 was refused.

This machine's /etc/hosts lists localhost as 127.0.0.1 only, so the test
resolves it as a machine that lists ::1 too does (the executors run in this
process); the job processes resolve nothing, they serve what they are handed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket

import pytest

from kernel.system._executor import ExecutorDaemon
from kernel.system._wire import file_fields

PIPELINE = """\
from kernel import Dataflow

flow = Dataflow("mod7")
flow.from_iterable(range(2_000), batch_size=100).key_by(lambda n: n % 7).sum().to_files({out!r})
"""


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")


@pytest.fixture
def localhost_with_ipv6(monkeypatch):
    resolve = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        found = resolve(host, port, *args, **kwargs)
        if isinstance(host, str) and host.lower() == "localhost":
            found += [entry for entry in resolve("::1", port, *args, **kwargs) if entry not in found]
        return found

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


async def _ended(entries, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while any(entry.code is None for entry in entries):
        assert asyncio.get_running_loop().time() < deadline, "the job's processes did not end"
        await asyncio.sleep(0.02)


async def test_a_port_prepared_on_localhost_listens_on_each_of_its_addresses(tmp_path, localhost_with_ipv6):
    executor = ExecutorDaemon(("127.0.0.1", 9), b"localhost-secret", 1, tmp_path / "executor",
                              host="localhost")
    try:
        port = (await executor._request("prepare", {}))["port"]
        for address in (("127.0.0.1", port), ("::1", port)):
            with socket.create_connection(address, timeout=5):
                pass  # (listening: the connection waits in its backlog for the process)
    finally:
        await executor.close()


async def test_a_job_process_on_localhost_serves_a_peer_dialling_it_by_ipv6(tmp_path, localhost_with_ipv6):
    out = tmp_path / "out"
    content = PIPELINE.format(out=str(out)).encode()
    executors = [ExecutorDaemon(("127.0.0.1", 9), b"localhost-secret", 1, tmp_path / f"executor{i}",
                                host="localhost") for i in (0, 1)]
    try:
        a, b = [(await e._request("prepare", {}))["port"] for e in executors]
        # process 1 reaches process 0 by ::1, process 0 is told localhost (the same port)
        for i, peers in enumerate((f"localhost:{a},localhost:{b}", f"[::1]:{a},localhost:{b}")):
            await executors[i]._request("start", {
                "job": "job-1", "attempt": 1, "process": i, "peers": peers, "flow": "flow",
                "filename": "mod7.py", **file_fields(content), "digest": hashlib.sha256(content).hexdigest(),
                "cores": 1})
        entries = [next(iter(e.processes.values())) for e in executors]
        await _ended(entries)
        logs = [entry.log_path.read_text() for entry in entries]
        assert [entry.code for entry in entries] == [0, 0], logs
    finally:
        for executor in executors:
            await executor.close()
    got = sorted(tuple(json.loads(line)) for f in out.glob("part-*.jsonl")
                 for line in f.read_text().splitlines())
    assert got == sorted((k, sum(n for n in range(2_000) if n % 7 == k)) for k in range(7))
