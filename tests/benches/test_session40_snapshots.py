"""The benchmark's own stateful operators (`HighestOfKernels` and
`LastClosedAverage`, benches/_nexmark_queries.py: keyed state and a heap
of what waits for the watermark, both in their snapshot) had no crash
test. A NEXMark run with a state_dir is killed (SIGKILL) once a complete
epoch holds LastClosedAverage partway (sellers' last prices taken, more
auctions to come), and resumed: q4 and q6, with the auctions broadcast
and keyed, equal the plain-loop references exactly (a state lost on
restore averages fewer prices; a snapshot taken late or restored twice
counts an auction twice). Their heaps are empty at NEXMark's epochs, so
a second test feeds them from a source whose watermark lags (max_delay):
killed while both heaps hold auctions, the resumed run's output equals a
brute force (a heap lost on restore loses those auctions)."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import pytest

from benches import _nexmark_reference as reference
from benches._nexmark_generator import Generator

EVENTS, RATE = 5_000, 150  # as test_nexmark.py: auctions that close mid-stream
ROOT = Path(__file__).resolve().parents[2]
PIPELINE = """
import os, sys, time
sys.path.insert(0, os.environ["ROOT"])
from benches import _nexmark_queries as queries
from benches._nexmark_generator import Generator
from kernel import Dataflow

def paced_share(index, peers):
    # In the run to be killed (HELD_OPEN), the events spread over ~2 s, so
    # that many epochs see the operators partway; the test waits on the
    # store, not on this.
    for n, event in enumerate(generator.share(index, peers)):
        if n % 5 == 0 and PACED:
            time.sleep(0.002 * peers)
        yield event

PACED = bool(os.environ.get("HELD_OPEN"))
generator = Generator(int(os.environ["EVENTS"]), int(os.environ["RATE"]))
flow = Dataflow("nexmark snapshots")
events = flow.from_partitions(paced_share, timestamp=queries.event_time, batch_size=16)
for name in ("q4", "q6"):
    queries.BROADCAST[name](events).to_files(os.path.join(os.environ["OUT"], name + "-broadcast"))
queries.QUERIES["q6"](events).to_files(os.path.join(os.environ["OUT"], "q6"))
"""
OUTPUTS = {"q4-broadcast": "q4", "q6-broadcast": "q6", "q6": "q6"}  # folder -> the reference's query

_spec = importlib.util.spec_from_file_location("_crash_runs", ROOT / "tests" / "_crash_runs.py")
_crash_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_crash_runs)


def _held_parts(snapshots: list[dict]) -> list[list[dict]]:
    """Each kernel's snapshots of the operators that hold a heap (their
    part is `{"states": ..., "held": [...]}`, the last of a step's tuple)."""
    found = []
    for kernel in snapshots:
        parts = [pickle.loads(blob) for blob in kernel.values() if isinstance(blob, bytes)]
        found.append([part[-1] for part in parts
                      if isinstance(part, tuple) and isinstance(part[-1], dict) and "held" in part[-1]])
    return found


def _partway(snapshots: list[dict]) -> bool:
    """Both LastClosedAverage steps have taken auctions (their state holds
    sellers' prices) and the run goes on. (Their heaps, and
    HighestOfKernels' state, are empty at every epoch in practice: a
    winner comes with the watermark that passes it, WinningBids emitting
    it once its own watermark, the same, passed its close.)"""
    steps = list(zip(*_held_parts(snapshots)))
    return len(steps) == 4 and all(any(part["states"].get("recent") for part in step)
                                   for step in steps if "recent" in step[0]["states"])


@pytest.mark.parametrize("cores", [1, 2])
def test_the_benchmark_operators_resume_from_a_snapshot_taken_partway(tmp_path, cores):
    (tmp_path / "pipeline.py").write_text(PIPELINE + _crash_runs.HELD_OPEN)
    settings = {"ROOT": ROOT, "EVENTS": EVENTS, "RATE": RATE, "OUT": tmp_path / "out"}
    _crash_runs.run_cli_until(tmp_path, cores, _partway, HELD_OPEN=_crash_runs.HELD_OPEN_S, **settings)
    _crash_runs.wait_until_unlocked(tmp_path / "state")
    published = {name: len(_crash_runs.visible_lines(tmp_path / "out" / name)) for name in OUTPUTS}
    resumed = _crash_runs.run_cli(tmp_path, cores, None, **settings)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from epoch" in resumed.stderr, resumed.stderr
    events = Generator(EVENTS, RATE).all()
    for name, query in OUTPUTS.items():
        expected = sorted(reference.QUERIES[query](events))
        assert published[name] < len(expected), f"{name}: the killed run had published everything"
        got = sorted(tuple(line) for line in _crash_runs.visible_lines(tmp_path / "out" / name))
        assert got == expected, name


# In NEXMark the heaps are empty at every epoch (above); fed straight from a
# source whose watermark lags its records (max_delay), they hold ~20 auctions
# at every epoch. Auction `a` closes at `a` and has BIDS winners, one from
# each "kernel" of the plan with the auctions broadcast, at distinct prices.
AUCTIONS, BIDS, SELLERS = 300, 3, 7
HELD_PIPELINE = """
import os, sys, time
sys.path.insert(0, os.environ["ROOT"])
from benches import _nexmark_queries as queries
from kernel import Dataflow

AUCTIONS, BIDS, SELLERS = (int(os.environ[name]) for name in ("AUCTIONS", "BIDS", "SELLERS"))
WINNERS = [(a, 10, a % SELLERS, 1000 * a + (a * 37 + j * 11) % 97)  # (as _expected's)
           for a in range(AUCTIONS) for j in range(BIDS)]
PACED = bool(os.environ.get("HELD_OPEN"))

def share(index, peers):
    for n, winner in enumerate(WINNERS[index::peers]):
        if n % 4 == 0 and PACED:  # (the killed run: many epochs; the test waits on the store)
            time.sleep(0.003)
        yield winner

flow = Dataflow("held in time order")
winners = flow.from_partitions(share, timestamp=lambda w: float(w[0]), max_delay=20.0, batch_size=4)
highest = winners.key_by(queries.winner_auction).apply(queries.HighestOfKernels, name="highest")
highest.to_files(os.path.join(os.environ["OUT"], "highest"))
average = winners.key_by(queries.winner_seller).apply(queries.LastClosedAverage, name="average")
average.to_files(os.path.join(os.environ["OUT"], "average"))
"""


def _expected() -> dict[str, list]:
    """Brute force: each auction's highest winner; each seller's mean of
    its last 10 prices after each of its winners, in (close, auction,
    price) order."""
    winners = [(a, 10, a % SELLERS, 1000 * a + (a * 37 + j * 11) % 97)
               for a in range(AUCTIONS) for j in range(BIDS)]
    highest = [max((w for w in winners if w[0] == a), key=lambda w: w[3]) for a in range(AUCTIONS)]
    recent: dict = {}
    average = []
    for _, _, seller, price in sorted((w[0], w[0], w[2], w[3]) for w in winners):
        prices = recent[seller] = (*recent.get(seller, ())[-9:], price)
        average.append((seller, sum(prices) / len(prices)))
    return {"highest": sorted(highest), "average": sorted(average)}


def _both_hold(snapshots: list[dict]) -> bool:
    """Both steps hold auctions for the watermark on every kernel, and
    the average has taken some already."""
    steps = list(zip(*_held_parts(snapshots)))
    return (len(steps) == 2 and all(part["held"] for step in steps for part in step)
            and any(part["states"].get("recent") for step in steps for part in step))


@pytest.mark.parametrize("cores", [1, 2])
def test_their_heaps_held_at_the_snapshot_come_back_on_resume(tmp_path, cores):
    (tmp_path / "pipeline.py").write_text(HELD_PIPELINE + _crash_runs.HELD_OPEN)
    settings = {"ROOT": ROOT, "AUCTIONS": AUCTIONS, "BIDS": BIDS, "SELLERS": SELLERS, "OUT": tmp_path / "out"}
    _crash_runs.run_cli_until(tmp_path, cores, _both_hold, HELD_OPEN=_crash_runs.HELD_OPEN_S, **settings)
    _crash_runs.wait_until_unlocked(tmp_path / "state")
    resumed = _crash_runs.run_cli(tmp_path, cores, None, **settings)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from epoch" in resumed.stderr, resumed.stderr
    for name, expected in _expected().items():
        got = sorted(tuple(line) for line in _crash_runs.visible_lines(tmp_path / "out" / name))
        assert got == expected, name
