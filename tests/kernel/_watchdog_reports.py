"""The watchdog's reports, quickly: a fixture for tests of what it reports."""

import logging
import threading

import pytest

from kernel.scheduling import _watchdog

BLOCKED = "has not handed the event loop back"


class Reports(logging.Handler):
    """The watchdog's reports on logger `kernel`; `arrived` is set at the first."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []
        self.arrived = threading.Event()

    def emit(self, record) -> None:
        if BLOCKED in record.getMessage():
            self.messages.append(record.getMessage())
            self.arrived.set()


@pytest.fixture
def reports(monkeypatch):
    """The watchdog looking every 20 ms and reporting from 0.3 s."""
    monkeypatch.setattr(_watchdog, "REPORT_AFTER", 0.3)
    monkeypatch.setattr(_watchdog, "CHECK", 0.02)
    _watchdog._wake.set()  # (the process's thread, still there after an earlier run, looks at once)
    handler = Reports()
    logging.getLogger("kernel").addHandler(handler)
    yield handler
    logging.getLogger("kernel").removeHandler(handler)
