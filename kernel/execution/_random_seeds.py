"""`random` in kernel processes: seeded from the caller's generator.

CPython seeds `random`'s generator again in every forked child, from the
system's entropy: a caller that seeded it (`random.seed(42)`, a test that
wants the same numbers every time) got other numbers in every run of two
kernels, where one kernel (the caller's own generator) gave the same ones.

So the launcher draws one number from the caller's generator before it
forks (`draw_for_kernels`), and each kernel seeds its own from that number
and its index (`seed_kernel`): the kernels' sequences differ from one
another, the same for a caller seeded alike, and new at every run (the
caller's generator has moved on by one draw).
"""

from __future__ import annotations

import random

_drawn = 0  # the launcher's draw, inherited by the kernels it forks


def draw_for_kernels() -> None:
    """In the launcher, before it forks the kernels of a run."""
    global _drawn
    _drawn = random.getrandbits(64)


def seed_kernel(index: int) -> None:
    """In kernel `index`, just forked."""
    random.seed(_drawn << 32 | index)  # (an int: a str is hashed first, 61 -> 17 us in a fresh kernel)
