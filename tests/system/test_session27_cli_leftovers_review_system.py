"""The coordinator's side of `submit --epoch-interval` without
`--state-dir` (a client other than the command line may send one): refused
at submit, not stored as a job whose processes would each be refused."""

from __future__ import annotations

import asyncio
import textwrap

import pytest
from _system import System

from kernel.system import Client
from kernel.system._client import pipeline_payload
from kernel.system._wire import KernelSystemError


def test_the_coordinator_refuses_an_epoch_interval_without_a_state_dir(tmp_path):
    pipeline = tmp_path / "tiny.py"
    pipeline.write_text(textwrap.dedent("""\
        from kernel import Dataflow

        flow = Dataflow("tiny")
        flow.from_iterable(range(3)).sink(id)
        """))
    (tmp_path / "system").mkdir()
    system = System(tmp_path / "system")
    try:
        system.start_coordinator()

        async def submit(**fields):
            async with Client((system.host, system.port), system.env["KERNEL_SECRET"].encode()) as client:
                return await client.ask("submit", dict(pipeline_payload(str(pipeline)), cores=1,
                                                       max_restarts=0, **fields))

        with pytest.raises(KernelSystemError, match="submit: --epoch-interval needs --state-dir"):
            asyncio.run(submit(epoch_interval=0.5))
        assert system.status()["jobs"] == []
    finally:
        system.close()
