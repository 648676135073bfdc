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
        state = system_state(dashboard)
        (row,) = [j for j in state["jobs"] if j["id"] == job]
        (link,) = row["dashboards"]
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
