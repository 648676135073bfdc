"""A real Prometheus (Debian's `prometheus` package) scrapes a running job
on two kernels, and its HTTP API gives back exactly the records the job
handled."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest
from _metrics_helpers import free_port, held_source

from kernel import Dataflow, run

RECORDS = 2000


def _prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:  # never skipped: CI must have it
        pytest.fail("the `prometheus` binary is not installed: `apt-get install -y prometheus` "
                    "(Debian's package; .ci/run installs it when it runs as root)")
    return binary


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def _query(port: int, promql: str):
    """The value of an instant query's one sample, or None (no sample yet)."""
    query = urllib.parse.urlencode({"query": promql})
    body = json.loads(_get(f"http://127.0.0.1:{port}/api/v1/query?{query}"))
    assert body["status"] == "success", body
    result = body["data"]["result"]
    return None if not result else float(result[0]["value"][1])


def _wait_for(condition, timeout: float, what: str, log) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except OSError:  # not listening yet
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}; prometheus said:\n{log()}")
        time.sleep(0.05)


def test_prometheus_scrapes_the_records_the_job_handled(tmp_path, no_leaks):
    binary = _prometheus_binary()
    job_port, prometheus_port = free_port(), free_port()
    while prometheus_port == job_port:
        prometheus_port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 100ms\n  scrape_timeout: 100ms\n"
        "scrape_configs:\n  - job_name: streamkernel\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{job_port}']\n")
    gate = tmp_path / "release"
    flow = Dataflow("scraped")
    texts = (flow.from_async_iterable(held_source(list(range(RECORDS)), gate), name="numbers")
             .map(str, name="text").collect())
    failures: list = []

    def job():
        try:
            run(flow, cores=2, dashboard=f"127.0.0.1:{job_port}")
        except BaseException as exc:
            failures.append(exc)

    log_path = tmp_path / "prometheus.log"
    with open(log_path, "w") as log:
        prometheus = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    runner = threading.Thread(target=job)
    runner.start()
    try:
        _wait_for(lambda: _get(f"http://127.0.0.1:{prometheus_port}/-/ready"), 30, "prometheus to be ready",
                  log_path.read_text)
        handled = 'sum(streamkernel_records_in_total{step="text (step 1)"})'
        _wait_for(lambda: _query(prometheus_port, handled) == RECORDS, 30,
                  f"a scrape with {handled} == {RECORDS}", log_path.read_text)
        read = 'sum(streamkernel_records_out_total{step="numbers (step 0)"})'
        assert _query(prometheus_port, read) == RECORDS
        assert _query(prometheus_port, 'count(up{job="streamkernel"} == 1)') == 1
        assert _query(prometheus_port, "count(streamkernel_stalls_total)") == 2  # one per kernel
    finally:
        gate.touch()
        runner.join()
        prometheus.terminate()
        prometheus.wait(10)
    assert not failures
    assert sorted(texts.items, key=int) == [str(n) for n in range(RECORDS)]
