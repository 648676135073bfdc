"""Keyed state and snapshots.

Built-in aggregates keep their per-key state in plain dicts for now; keyed
state backends and epoch snapshots arrive with issue 5.
"""

__all__: list[str] = []
