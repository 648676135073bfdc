"""A loop's outer watermark beside an entry whose inputs are at +inf.

A source says +inf just before its end. `Frontier` (kernel/runtime/_progress)
took a channel there for an active one, so beside an idle input the
frontier was +inf, every window closed, and the idle input's later events
were late (tests/kernel/test_session45_ended_beside_idle.py). A loop's
control takes the same rule across its entries (`_outer_frontier`): an
entry whose inputs are all at +inf, not yet ended, is done too."""

from __future__ import annotations

import math
from types import SimpleNamespace

from kernel.runtime._loops import LoopControl
from kernel.runtime._progress import Frontier

INF = math.inf


def _entry(*marks: float, idle: bool = False) -> SimpleNamespace:
    outer = Frontier()
    for mark in marks:
        channel = outer.add_channel()
        outer.observe_watermark(channel, mark)
        if idle:
            outer.observe_idle(channel)
    return SimpleNamespace(outer=outer)


def _control(*entries) -> LoopControl:
    control = object.__new__(LoopControl)  # (only its entries are read)
    control.entries = list(entries)
    return control


def test_an_entry_at_inf_beside_an_idle_one_leaves_the_idle_ones_watermark():
    assert _control(_entry(INF), _entry(2.0, idle=True))._outer_frontier() == (2.0, True)


def test_an_entry_at_inf_beside_an_active_one_leaves_the_active_ones_watermark():
    assert _control(_entry(INF), _entry(3.0))._outer_frontier() == (3.0, False)


def test_entries_all_at_inf_give_inf():
    assert _control(_entry(INF), _entry(INF, INF))._outer_frontier() == (INF, False)
