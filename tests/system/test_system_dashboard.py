"""The system's dashboard (`coordinator --dashboard HOST:PORT`) and the
job processes' own (each executor gives every job process one): a real
coordinator and executor, a submitted job, and a headless Chromium that
loads the system's page, finds the executor and the running job, and
follows the job's link to its live dashboard."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import urllib.request
from pathlib import Path

from _system import System, free_port, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "metrics"))
from _chromium import Chromium

ENDLESS = ("import time\nfrom kernel import Dataflow\nflow = Dataflow('endless')\n"
           "flow.from_iterable(range(10**9)).map(lambda n: time.sleep(0.001) or n, name='pace').sink(id)\n")

_JOB_ROWS = """Array.from(document.querySelectorAll('#jobs tbody tr')).map((row) => ({
  cells: Array.from(row.children).map((td) => td.textContent),
  links: Array.from(row.querySelectorAll('a.job-dashboard')).map((a) => a.href)}))"""


def get(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


def system_state(port: int) -> dict:
    return json.loads(get(f"http://127.0.0.1:{port}/api/system")[2])


def test_the_system_page_shows_the_running_job_and_links_to_its_dashboard(tmp_path):
    dashboard = free_port()
    system = System(tmp_path)
    try:
        system.start_coordinator("--dashboard", f"127.0.0.1:{dashboard}")
        executor = system.start_executor(cores=1)
        system.executors_up(1)
        pipeline = tmp_path / "endless.py"
        pipeline.write_text(ENDLESS)
        job = system.cli("submit", pipeline).stdout.splitlines()[0]
        wait_until(lambda: system.job(job)["status"] == "running", what="the job to run")
        # (its link shown once the process says where its dashboard listens)
        (link,) = wait_until(lambda: [j for j in system_state(dashboard)["jobs"] if j["id"] == job
                                      and j["dashboards"] != [None]], what="the job's link")[0]["dashboards"]
        assert link.startswith("http://127.0.0.1:") and link.endswith("/")
        # the job process serves its own page and /metrics there, once its run is up
        wait_until(lambda: _serves(link + "metrics"), what="the job's dashboard")
        assert b"streamkernel_records_out_total" in get(link + "metrics")[2]
        executor_id = system.executor_id(executor)
        rows, executors, shot, job_page = asyncio.run(_browse(f"http://127.0.0.1:{dashboard}/"))
        assert executor_id in executors and "up" in executors, executors
        (shown,) = rows
        assert shown["cells"][:3] == [job, "endless.py:flow", "running"] and shown["links"] == [link], shown
        assert "pace" in job_page  # the job's own dashboard, its steps
        png = base64.b64decode(shot["data"])
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        (tmp_path / "system.png").write_bytes(png)
        print(f"system dashboard screenshot: {tmp_path / 'system.png'}")
        assert system.cli("kill", job).returncode == 0
        wait_until(lambda: system_state(dashboard)["jobs"][0]["status"] == "killed", what="the job killed")
    finally:
        system.close()


def test_an_executor_without_dashboards_gives_its_jobs_none(tmp_path):
    dashboard = free_port()
    system = System(tmp_path)
    try:
        system.start_coordinator("--dashboard", f"127.0.0.1:{dashboard}")
        system.start_executor(1, "--no-dashboard")
        system.executors_up(1)
        pipeline = tmp_path / "endless.py"
        pipeline.write_text(ENDLESS)
        job = system.cli("submit", pipeline).stdout.splitlines()[0]
        wait_until(lambda: system.job(job)["status"] == "running", what="the job to run")
        (row,) = system_state(dashboard)["jobs"]
        assert row["dashboards"] == [None]
        status, content_type, body = get(f"http://127.0.0.1:{dashboard}/")
        assert status == 200 and content_type.startswith("text/html") and b"streamkernel system" in body
        assert system.cli("kill", job).returncode == 0
    finally:
        system.close()


def _serves(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except OSError:
        return False


async def _browse(url: str):
    """The system page's job rows, executors table and screenshot, and
    the text of the page its first job's link leads to."""
    async with Chromium() as page:
        await page.call("Page.enable")
        await page.call("Page.navigate", url=url)
        await page.evaluate("""new Promise((done) => { const check = () =>
            document.querySelector('#jobs tbody tr') ? done() : setTimeout(check, 50); check(); })""")
        rows = await page.evaluate(_JOB_ROWS)
        executors = await page.evaluate("document.querySelector('#executors').innerText")
        shot = await page.call("Page.captureScreenshot", format="png")
        await page.call("Page.navigate", url=rows[0]["links"][0])
        await page.evaluate("""new Promise((done) => { const check = () =>
            document.body && document.body.innerText.includes('pace') ? done() : setTimeout(check, 50);
            check(); })""")
        job_page = await page.evaluate("document.body.innerText")
    return rows, executors, shot, job_page


def test_a_dashboard_port_taken_is_a_one_line_error_before_the_coordinator_listens(tmp_path):
    """Found by a review: a raw OSError traceback, once the coordinator
    already listened on its own port."""
    import os
    import socket
    import subprocess

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy, listen = taken.getsockname()[1], free_port()
        done = subprocess.run(
            [sys.executable, "-m", "kernel", "coordinator", "--listen", f"127.0.0.1:{listen}",
             "--data", str(tmp_path / "data"), "--dashboard", f"127.0.0.1:{busy}"],
            env=dict(os.environ, KERNEL_SECRET="system-test-secret"), capture_output=True, text=True,
            timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: dashboard 127.0.0.1:{busy}: cannot listen there: Address already in use"), done.stderr
    assert "coordinator listening" not in done.stderr


def test_an_event_stream_client_that_stops_reading_does_not_hold_up_the_coordinators_stop(
        seconds_to_clean_up_beside_a_stuck_client):
    """Found by a review: with aiohttp's default shutdown timeout (60 s,
    twice) a client that stopped reading /api/events (a pager, a laptop
    asleep) held the coordinator's stop up for two minutes."""
    import socket

    from kernel.system._dashboard import dashboard_socket, serve_dashboard

    jobs = [{"id": f"job-{n}", "name": "flow", "status": "failed", "message": "x" * 1000}
            for n in range(2000)]  # ~2 MB an event: the socket's buffers fill at once

    async def scenario() -> float:
        sock = dashboard_socket("127.0.0.1", 0)
        port = sock.getsockname()[1]
        runner = await serve_dashboard(sock, lambda: {"executors": [], "jobs": jobs, "topics": []})
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        client.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", port))
            client.send(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
            return await seconds_to_clean_up_beside_a_stuck_client(runner)
        finally:
            client.close()

    # (the server waits 0.5 s at most, SHUTDOWN_TIMEOUT twice; the rest is the
    # machine's: a job's own dashboard took 0.78-0.95 s beside a load of 6.7 on
    # 2 CPUs, tests/metrics. A second of aiohttp's timeout held it 2 s, its
    # default 120 s: 1.2 s still tells them apart.)
    took = asyncio.run(scenario())
    assert took < 1.2, f"the dashboard's cleanup took {took:.2f} s beside a client that stopped reading"
