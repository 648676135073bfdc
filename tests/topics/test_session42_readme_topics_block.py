"""README, "Topics between jobs": its example block runs as written, its
two jobs against a real coordinator (the block's address replaced by the
test's). It lacked its imports, its Dataflow, `sensor_feed`, the records'
class and B's run: job A ended at once with "NameError: name 'flow' is not
defined".

Real processes: a coordinator, job A (readings.py) and job B (totals.py)
as the block writes them; B prints each sensor's total every second."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import System, wait_until

README = Path(__file__).resolve().parent.parent.parent / "README.md"
ADDRESS = "10.0.0.1:7700"


def the_block() -> dict[str, str]:
    """The block's two jobs, by file name: split where its comments name them."""
    section = README.read_text().split("## Topics between jobs", 1)[1]
    block = re.search(r"```py\n(.*?)```", section, re.S).group(1)
    jobs = re.split(r"^# job [AB]: (\S+)\.py.*\n", block, flags=re.M)
    assert jobs[0] == "" and len(jobs) == 5, block
    return {f"{jobs[1]}.py": jobs[2], f"{jobs[3]}.py": jobs[4]}


def test_the_readme_topics_block_runs_as_written(tmp_path):
    jobs = the_block()
    system = System(tmp_path)
    started = []
    try:
        system.start_coordinator()
        for name, text in jobs.items():
            assert ADDRESS in text, text
            (tmp_path / name).write_text(text.replace(ADDRESS, f"127.0.0.1:{system.port}"))
            with open(tmp_path / f"{name}.out", "wb") as out, open(tmp_path / f"{name}.err", "wb") as err:
                started.append(subprocess.Popen([sys.executable, name], cwd=tmp_path, env=system.env,
                                                stdout=out, stderr=err))
        out = tmp_path / "totals.py.out"

        def printed() -> list:  # ("s1", Window(start, end), total), each a line
            line = r"^\('(s\d)', Window\(([\d.]+), ([\d.]+)\), ([\d.e-]+)\)$"
            return [(m[1], float(m[3]) - float(m[2]), float(m[4])) for m in
                    re.finditer(line, out.read_text(), re.M)]

        # (a window printed once the watermark passes its end: B read A's records, typed, and their times)
        wait_until(lambda: printed() or any(p.poll() is not None for p in started), timeout=30,
                   what="job B to print a window's total")
        assert all(p.poll() is None for p in started), \
            [(tmp_path / f"{name}.err").read_text()[-2000:] for name in jobs]
        sensor, width, total = printed()[0]
        assert sensor in ("s1", "s2", "s3") and width == 1.0 and total > 0, out.read_text()
    finally:
        for proc in started:
            proc.kill()
            proc.wait()
        system.close()
