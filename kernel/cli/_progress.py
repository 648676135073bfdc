"""The live line of `python -m kernel.run` on a terminal: records in and
out per second, the watermark, the last complete epoch, the time elapsed,
rewritten in place with a carriage return every PROGRESS_INTERVAL, and a
last line that stays when the run ends.

It is a run plan's `progress` (kernel/execution): it is handed every
kernel's metrics snapshot (`Runtime.metrics_snapshot`) and sums them here.
Records in are what the sources emitted; records out, what reached the
sinks (the steps that emit nothing).
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import threading
import time

import kernel._logging as _logging


def totals(snapshots: list[dict]) -> tuple[int, int, float | None, int | None]:
    """(records in, records out, watermark, last complete epoch) of the
    whole run: the sources' output and the sinks' input summed over
    kernels, the lowest watermark of a sink (None: none yet), the last
    epoch complete on every kernel (None: none)."""
    records_in = records_out = 0
    watermark = None
    complete: list = []
    for snapshot in snapshots:
        for _name, step_in, step_out, step_watermark, *_ in snapshot["steps"]:
            if step_in is None:  # a source
                records_in += step_out or 0
            if step_out is None:  # a sink
                records_out += step_in or 0
                if step_watermark is not None:
                    watermark = step_watermark if watermark is None else min(watermark, step_watermark)
        complete.append(snapshot.get("complete"))
    done = None if not complete or None in complete else min(complete)
    return records_in, records_out, watermark, done


class ProgressLine:
    """`progress(snapshots, final)` for a run plan, writing to `stream` (a terminal)."""

    def __init__(self, stream, clock=time.monotonic) -> None:
        _logging.live_line = stream is sys.stdout  # print() steps blank it before their lines
        if _logging.live_line:  # and so do the warnings printed on stderr
            logging.lastResort.addFilter(_logging.off_the_live_line)
        self._stream = stream
        self._clock = clock
        self._started = clock()
        self._last: tuple[float, int, int] | None = None  # (when, in, out) of the previous line
        self._width = 0  # of the line on screen, to blank what a shorter one leaves
        self._lock = threading.Lock()  # the launcher's ticker and its last call may meet

    def __call__(self, snapshots: list[dict], final: bool) -> None:
        with self._lock:
            now = self._clock()
            records_in, records_out, watermark, epoch = totals(snapshots)
            elapsed = now - self._started
            if final or self._last is None:  # the whole run's mean
                rate_in, rate_out = _per_second(records_in, elapsed), _per_second(records_out, elapsed)
            else:
                when, last_in, last_out = self._last
                rate_in = _per_second(records_in - last_in, now - when)
                rate_out = _per_second(records_out - last_out, now - when)
            self._last = (now, records_in, records_out)
            line = format_line(elapsed, records_in, rate_in, records_out, rate_out, watermark, epoch, final)
            if not final:  # a wrapped line could not be rewritten in place
                line = line[:shutil.get_terminal_size((100, 24)).columns - 1]
            self._stream.write("\r" + line + " " * max(0, self._width - len(line)) + ("\n" if final else ""))
            self._stream.flush()
            self._width = 0 if final else len(line)
            if final:
                _logging.live_line = False
                logging.lastResort.removeFilter(_logging.off_the_live_line)


def format_line(elapsed: float, records_in: int, rate_in: float, records_out: int, rate_out: float,
                watermark: float | None, epoch: int | None, final: bool = False) -> str:
    parts = [
        f"{'done in' if final else 'elapsed'} {_duration(elapsed)}",
        f"in {records_in:,} ({_rate(rate_in)}/s)",
        f"out {records_out:,} ({_rate(rate_out)}/s)",
        f"watermark {_watermark(watermark)}",
        f"epoch {'-' if epoch is None else epoch}",
    ]
    return "  ".join(parts)


def _per_second(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def _rate(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _watermark(value: float | None) -> str:
    if value is None:
        return "-"
    if value == math.inf:
        return "end"
    if value > 1e8:  # seconds since the Unix epoch: a date
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value)) + f".{int(value % 1 * 1000):03d}Z"
    return f"{value:g}"
