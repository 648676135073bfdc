"""The live progress line of `python -m kernel.run`: on a real
pseudo-terminal it is rewritten in place (carriage returns) and ends with a
line of the run's totals; through a pipe, or with --quiet, there is none."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap
import time

import pytest

from kernel.cli._progress import ProgressLine, format_line, totals

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ~1 s of records at a steady pace (so the line is drawn a few times), with
# event times, so the line has a watermark
PACED = """\
import asyncio
from kernel import Dataflow

async def numbers():
    for start in range(0, 20_000, 1_000):
        for n in range(start, start + 1_000):
            yield n
        await asyncio.sleep(0.05)

flow = Dataflow("paced")
(flow.from_async_iterable(numbers, timestamp=lambda n: 1_700_000_000 + n / 1000)
     .filter(lambda n: n % 2 == 0)
     .collect())
"""

QUICK = """\
from kernel import Dataflow

flow = Dataflow("quick")
flow.from_iterable(range(30_000)).filter(lambda n: n % 3 == 0).collect()
"""


def _on_a_terminal(args, timeout=60.0, stderr_too=False) -> tuple[int, str, str]:
    """Run the CLI with stdout (and with `stderr_too` stderr) on a
    pseudo-terminal; (exit code, what the terminal got, stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # 160 columns
    process = subprocess.Popen([sys.executable, "-m", "kernel.run", *args], cwd=REPO, stdout=slave,
                               stderr=slave if stderr_too else subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer of the terminal has closed it
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    stderr = ""
    if not stderr_too:
        stderr = process.stderr.read().decode()
        process.stderr.close()
    return process.wait(timeout), b"".join(chunks).decode(), stderr


def _write(tmp_path, source: str):
    path = tmp_path / "pipeline.py"
    path.write_text(textwrap.dedent(source))
    return path


def test_a_terminal_gets_one_live_line_then_the_totals(tmp_path):
    code, screen, stderr = _on_a_terminal([_write(tmp_path, PACED)])
    assert code == 0, stderr
    # the terminal turns "\n" into "\r\n": the live lines are the "\r"-separated pieces
    lines = [piece for piece in screen.replace("\r\n", "\n").split("\r") if piece.strip()]
    live, last = lines[:-1], lines[-1]
    assert len(live) >= 2, screen  # redrawn in place while it ran (~1 s, a line every 0.5 s)
    assert all("\n" not in line and line.startswith("elapsed ") for line in live), screen
    counts = [int(re.search(r"in ([\d,]+) ", line).group(1).replace(",", "")) for line in live]
    assert counts == sorted(counts) and 0 < counts[-1] <= 20_000, counts
    assert last.startswith("done in ") and last.endswith("\n"), repr(last)
    assert "in 20,000 (" in last and "out 10,000 (" in last and "watermark end" in last, last


@pytest.mark.parametrize("cores", [1, 2])
def test_the_totals_are_exact(tmp_path, cores):
    code, screen, stderr = _on_a_terminal([_write(tmp_path, QUICK), "--cores", str(cores)])
    assert code == 0, stderr
    last = screen.replace("\r\n", "\n").split("\r")[-1]
    assert re.match(r"done in [\d.]+s  in 30,000 \(\d[\d.kM]*/s\)  out 10,000 \(\d[\d.kM]*/s\)  "
                    r"watermark end  epoch -\n$", last), repr(last)


def _as_seen(screen: str) -> list[str]:
    """The lines a terminal shows for `screen`: a carriage return goes back
    to the line's start (what follows writes over it), ESC [ K blanks the
    line from the cursor on."""
    seen = []
    for text in screen.split("\r\n"):
        line: list[str] = []
        column = at = 0
        while at < len(text):
            if text.startswith("\x1b[K", at):
                del line[column:]
                at += 3
                continue
            if text[at] == "\r":
                column = 0
            elif column < len(line):
                line[column] = text[at]
                column += 1
            else:
                line.append(text[at])
                column += 1
            at += 1
        seen.append("".join(line))
    return seen


def test_printed_records_do_not_go_on_the_end_of_the_live_line():
    """The README's first command on a terminal showed its first word on
    the end of the live line, drawn as the run starts: `elapsed 0.0s  in 0
    (0/s)  out 0 (0/s)  watermark -  epoch -the 6`. Every record is a line
    of its own; the totals are the last."""
    import runpy

    code, screen, stderr = _on_a_terminal(["examples/wordcount.py"])
    assert code == 0, stderr
    *records, last, end = _as_seen(screen)
    assert end == "" and last.startswith("done in "), screen
    words = runpy.run_path(os.path.join(REPO, "examples", "wordcount.py"))["TEXT"].lower().split()
    assert sorted(records) == sorted(f"{word} {words.count(word)}" for word in set(words)), screen


WARNS = """\
import logging
from kernel import Dataflow

def check(n):
    if n == 0:
        logging.getLogger("pipeline").warning("record %d looks odd", n)
    return n

flow = Dataflow("warns")
flow.from_iterable(range(3)).map(check).collect()
"""


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_warnings_on_the_same_terminal_do_not_go_on_the_end_of_the_live_line(tmp_path, log_format):
    """stdout and stderr on one terminal: a warning (the pipeline's own, a
    stall...) printed while the live line was drawn went on its end:
    `...  epoch -record 0 looks odd`."""
    code, screen, _ = _on_a_terminal([_write(tmp_path, WARNS), "--log-format", log_format], stderr_too=True)
    assert code == 0, screen
    seen = _as_seen(screen)
    warning = next(line for line in seen if "record 0 looks odd" in line)
    if log_format == "text":
        assert warning == "record 0 looks odd", seen
    else:
        assert warning.startswith('{"time": '), seen
    assert seen[-2].startswith("done in "), seen


def test_no_line_through_a_pipe_or_with_quiet(tmp_path):
    path = _write(tmp_path, PACED)
    # (the two runs at once: each mostly waits out PACED's pauses)
    piped = subprocess.Popen([sys.executable, "-m", "kernel.run", path], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        code, screen, stderr = _on_a_terminal([path, "--quiet"])
        out, err = piped.communicate(timeout=60)
    finally:
        piped.kill()
    assert (piped.returncode, out) == (0, ""), err
    assert (code, screen) == (0, ""), stderr


def test_the_line_sums_the_kernels_and_measures_rates_between_calls():
    snapshot = {"kernel": 0, "complete": 7, "steps": [
        ["src (step 0)", None, 1000, 50.0, None, 0, False],
        ["map (step 1)", 1000, 900, 40.0, None, 1, False],
        ["out (step 2)", 900, None, 40.0, None, 2, False]]}
    other = {"kernel": 1, "complete": 6, "steps": [
        ["src (step 0)", None, 500, 30.0, None, 0, False],
        ["map (step 1)", 500, 400, 20.0, None, 1, False],
        ["out (step 2)", 400, None, 20.0, None, 2, False]]}
    assert totals([snapshot, other]) == (1500, 1300, 20.0, 6)
    assert totals([snapshot, {**other, "complete": None}])[3] is None

    class Screen:
        text = ""

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    screen, now = Screen(), [100.0]
    line = ProgressLine(screen, clock=lambda: now[0])
    now[0] = 102.0
    line([snapshot], False)  # first call: the mean since the start
    now[0] = 102.5
    line([snapshot, other], False)  # then: the change since the last call
    assert screen.text == ("\r" + format_line(2.0, 1000, 500.0, 900, 450.0, 40.0, 7)
                           + "\r" + format_line(2.5, 1500, 1000.0, 1300, 800.0, 20.0, 6))
    assert "in 1,500 (1000/s)  out 1,300 (800/s)  watermark 20  epoch 6" in screen.text
