"""Shared by the metrics tests: a flow held open until the test has looked
at its metrics (its source yields everything, then waits for a file), and
scraping /metrics into {(family, labels): value}."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def held_source(records: list, gate: Path):
    """An async generator function: yields `records`, then waits until
    `gate` exists (so the run stays up while the test scrapes it)."""

    async def numbers():
        for record in records:
            yield record
        while not gate.exists():
            await asyncio.sleep(0.005)

    return numbers


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """/metrics text, through prometheus_client's own parser."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.read().decode()


def per_step(samples: dict, name: str) -> dict[str, float]:
    """A family's values summed over kernels, by step name without its '(step N)'."""
    out: dict[str, float] = {}
    for (family, labels), value in samples.items():
        if family == name:
            step = re.sub(r" \(step \d+\)", "", dict(labels)["step"])
            out[step] = out.get(step, 0) + value
    return out


def scrape_until(port: int, condition, timeout: float = 20.0) -> dict:
    """Scrape until `condition(samples)` holds; the last samples either way
    (the caller asserts on them, so a miss shows what was there)."""
    deadline = time.monotonic() + timeout
    samples: dict = {}
    while time.monotonic() < deadline:
        try:
            samples = parse(scrape(port))
        except OSError:  # not listening yet
            samples = {}
        if samples and condition(samples):
            break
        time.sleep(0.02)
    return samples
