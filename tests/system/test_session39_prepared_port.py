"""Session 39: the port an executor gives a job process's links (its answer
to the coordinator's `prepare`) listens from the moment it is picked, and
the process serves that very socket (inherited, `KERNEL_LINK_FD`). It was
picked free, closed (`_free_port`) and bound again by the process once it
started: another program (or an outgoing connection's port) taking it in
between made the attempt fail, `cannot listen`, a restart spent.

Two executors in this process (no coordinator: the test asks them as it
would), each starting one process of a two-process job on loopback."""

from __future__ import annotations

import asyncio
import errno
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


def _cannot_take(port: int) -> None:
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        with pytest.raises(OSError) as refused:
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
    finally:
        squatter.close()
    assert refused.value.errno == errno.EADDRINUSE


async def _ended(entries, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while any(entry.code is None for entry in entries):
        assert asyncio.get_running_loop().time() < deadline, "the job's processes did not end"
        await asyncio.sleep(0.02)


async def test_a_prepared_port_is_held_until_the_job_process_serves_it(tmp_path):
    out = tmp_path / "out"
    content = PIPELINE.format(out=str(out)).encode()
    executors = [ExecutorDaemon(("127.0.0.1", 9), b"prepared-secret", 1, tmp_path / f"executor{i}",
                                host="127.0.0.1") for i in (0, 1)]
    try:
        ports = [(await e._request("prepare", {}))["port"] for e in executors]
        for port in ports:  # another program, as soon as the port is picked: it is taken
            _cannot_take(port)
        peers = ",".join(f"127.0.0.1:{port}" for port in ports)
        for i, executor in enumerate(executors):
            await executor._request("start", {
                "job": "job-1", "attempt": 1, "process": i, "peers": peers, "flow": "flow",
                "filename": "mod7.py", **file_fields(content), "digest": hashlib.sha256(content).hexdigest(),
                "cores": 1})
            # ... nor once the process started, before it listens itself (it is still importing):
            # it holds the executor's socket from its first instruction
            _cannot_take(ports[i])
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
    # (freed once served: the executor kept no copy)
    for port in ports:
        with socket.socket() as free:
            free.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            free.bind(("127.0.0.1", port))


async def test_a_prepared_port_never_started_is_freed_when_the_executor_closes(tmp_path):
    executor = ExecutorDaemon(("127.0.0.1", 9), b"prepared-secret", 1, tmp_path / "executor",
                              host="127.0.0.1")
    port = (await executor._request("prepare", {}))["port"]
    await executor.close()
    with socket.socket() as free:
        free.bind(("127.0.0.1", port))
