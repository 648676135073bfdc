"""streamkernel_link_sent_bytes_total on a real two-process cluster
(`python -m kernel.run --peers ... --dashboard ...`): each process serves
what its relay sent to the other (the byte count itself:
tests/net/test_link_metrics.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from _metrics_helpers import free_port, scrape_until

ROOT = Path(__file__).resolve().parents[2]

PIPELINE = """\
import asyncio
import os
from pathlib import Path
from kernel import Dataflow

async def numbers():
    for n in range(5000):
        yield n
    while not Path(os.environ["GATE"]).exists():  # held open while the test scrapes
        await asyncio.sleep(0.01)

flow = Dataflow("linked")
flow.from_async_iterable(numbers, name="numbers").key_by(lambda n: n % 7).map_values(str).collect()
"""


def _sent(samples: dict) -> dict[tuple[str, str], float]:
    return {(dict(k)["process"], dict(k)["peer"]): v for (name, k), v in samples.items()
            if name == "streamkernel_link_sent_bytes_total"}


def test_each_process_serves_what_its_links_sent(tmp_path):
    (tmp_path / "pipeline.py").write_text(textwrap.dedent(PIPELINE))
    (tmp_path / "secret").write_text("link-metrics-secret\n")
    gate = tmp_path / "release"
    peers = ",".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    dashboards = [free_port() for _ in range(2)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GATE": str(gate)}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "kernel.run", str(tmp_path / "pipeline.py"), "--process-id", str(i),
         "--peers", peers, "--secret-file", str(tmp_path / "secret"),
         "--dashboard", f"127.0.0.1:{dashboards[i]}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    try:
        seen = [_sent(scrape_until(port, lambda s, i=i: _sent(s).get((str(i), str(1 - i)), 0) > 0))
                for i, port in enumerate(dashboards)]
    finally:
        gate.touch()
        outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert set(seen[0]) == {("0", "1")} and set(seen[1]) == {("1", "0")}, seen
    assert seen[0][("0", "1")] > 0 and seen[1][("1", "0")] > 0
