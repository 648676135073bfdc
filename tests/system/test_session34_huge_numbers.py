"""Session 34: integers beyond what the catalog (SQLite) holds. A submit's
`--max-restarts 100000000000000000000` was the coordinator's `internal
error: OverflowError: Python int too large to convert to SQLite INTEGER`,
a traceback in its log; an executor's `--cores 100000000000000000000`
registered, and every write of its row failed so. The CLI refuses them
(exit 2, before anything is sent), and the coordinator refuses them from
any client, saying what the option takes."""

from __future__ import annotations

import asyncio

import pytest
from _system import System
from test_system import NOOP, write

from kernel.system import Client
from kernel.system._client import pipeline_payload
from kernel.system._wire import EXECUTOR, RequestError, dial

HUGE = 10**20
MOST = 2**63 - 1


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    system = System(tmp_path_factory.mktemp("system"))
    try:
        system.start_coordinator()
        yield system
    finally:
        system.close()


@pytest.mark.parametrize(("command", "option", "least"), [
    ("submit", "--max-restarts", 0), ("submit", "--cores", 1), ("submit", "--processes", 1),
    ("executor", "--cores", 1)])
def test_the_cli_refuses_an_integer_beyond_the_catalogs(system, tmp_path, command, option, least):
    args = [write(tmp_path / "noop.py", NOOP)] if command == "submit" else ["--workdir", tmp_path / "w"]
    done = system.cli(command, *args, option, str(HUGE))
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1].endswith(
        f"error: argument {option}: must be an integer from {least} to {MOST}, got '{HUGE}'"), done.stderr


def _ask(system: System, role: int, op: str, **fields) -> str:
    async def ask():
        if role == EXECUTOR:
            session, http = await dial((system.host, system.port), system.env["KERNEL_SECRET"].encode(), role,
                                       lambda op, m: None)
            reader = asyncio.ensure_future(session.run())
            try:
                await session.request(op, **fields)
            finally:
                await session.close()
                await http.close()
                await asyncio.wait([reader], timeout=2)
        else:
            async with Client((system.host, system.port), system.env["KERNEL_SECRET"].encode()) as client:
                await client.request(op, **fields)

    with pytest.raises(RequestError) as refused:
        asyncio.run(ask())
    return str(refused.value)


def test_the_coordinator_refuses_them_from_any_client(system, tmp_path):
    payload = pipeline_payload(str(write(tmp_path / "noop.py", NOOP)))
    said = _ask(system, 0, "submit", **payload, max_restarts=HUGE)
    assert said == f"submit: --max-restarts must be an integer from 0 to {MOST}"
    said = _ask(system, EXECUTOR, "register", executor=None, instance="x", host="127.0.0.1", cores=HUGE,
                processes=[])
    assert said == "register: cores must be a positive int (below 2**63) and host a name"
    assert "Traceback" not in system.coordinator_log.read_text()
    assert system.status() == {"executors": [], "jobs": [], "topics": []}
