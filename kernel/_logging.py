"""The library's loggers (`kernel`, and below it `kernel.state`,
`kernel.links`) print nothing until the program configures logging, as the
logging HOWTO asks of libraries: without a handler on the way up, Python's
last-resort handler would print their warnings on the stderr of every
program that imports the kernel. The command line is a program:
`python -m kernel.run` takes this handler off again (kernel/run.py), and
prints them, as text or (`--log-format json`, `use_json_logs`) one JSON
object a line."""

import logging
import re
import sys
import time

LIBRARY_HANDLER = logging.NullHandler()
logging.getLogger("kernel").addHandler(LIBRARY_HANDLER)


# -- structured logs (`python -m kernel.run --log-format json`) ---------------------------

_KERNEL_PREFIX = re.compile(r"^\[kernel \d+\] ")  # the kernel's logger tags text logs so; JSON has a field


def json_line(level: str, message: str, *, created: float | None = None, **fields) -> str:
    """One log record as one line of JSON: time (ISO 8601, UTC), level,
    message, then the fields that are known (None ones are left out)."""
    created = time.time() if created is None else created
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"
    record = {"time": stamp, "level": level, "message": message}
    record.update((key, value) for key, value in fields.items() if value is not None)
    import json  # (here: `import kernel` does without it)

    return json.dumps(record, default=str)


class JsonFormatter(logging.Formatter):
    """Each record as `json_line`: with the kernel's index, the step and
    the job where the record carries them (the kernel's logger adds
    `kernel`, the runtime `job`, stall reports and operators `step`), and
    `job` (the pipeline) for the launcher's own records."""

    def __init__(self, job: str | None = None) -> None:
        super().__init__()
        self.job = job

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        kernel = getattr(record, "kernel", None)
        if kernel is not None:
            message = _KERNEL_PREFIX.sub("", message)
        return json_line(
            record.levelname, message, created=record.created, logger=record.name, kernel=kernel,
            step=getattr(record, "step", None), job=getattr(record, "job", None) or self.job,
            traceback=self.formatException(record.exc_info) if record.exc_info else None)


_json_handler: logging.Handler | None = None


def use_json_logs(stream, job: str | None = None) -> None:
    """Write warnings and errors of every logger (the kernel's, the
    pipeline's) to `stream` as JSON lines, as the command line prints them
    as text otherwise (Python's last-resort handler: WARNING and above)."""
    global _json_handler
    root = logging.getLogger()
    if _json_handler is not None:
        root.removeHandler(_json_handler)
    _json_handler = logging.StreamHandler(stream)
    _json_handler.setFormatter(JsonFormatter(job))
    _json_handler.addFilter(off_the_live_line)
    _json_handler.setLevel(logging.WARNING)
    root.addHandler(_json_handler)


# -- the command's live line (`python -m kernel.run` on a terminal: kernel/cli/_progress.py) ------

# Blanks the line the cursor is on. A `print()` step writes it before its
# lines while the live line is drawn on its stdout (`live_line`): else its
# first line went on the end of the live one ("...  epoch -the 6": the first
# word of examples/wordcount.py on a terminal), which stayed in its text.
BLANK_LINE = "\r\x1b[K"
# Whether the command draws its live line on this process's stdout: set when
# it starts (before kernel processes fork, which inherit it), unset by its last line.
live_line = False


def off_the_live_line(record: logging.LogRecord) -> bool:
    """A filter of the handlers that print the command's warnings on stderr
    (Python's last-resort handler, the JSON one): while the live line is
    drawn, and stderr is a terminal (as a rule, the same one), blank the
    live line before the record is written, or the warning went on its end
    ("...  epoch -[kernel 0] stall: ..."). Lets every record through."""
    if live_line:
        try:
            if sys.stderr.isatty():
                sys.stderr.write(BLANK_LINE)
        except (AttributeError, OSError, ValueError):  # no stderr, or a closed one
            pass
    return True
