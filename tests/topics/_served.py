"""What the topics tests against a coordinator served in the test's loop
share: tests/system's served_coordinator and SECRET, and the registration
a publisher of the topic "readings" sends (`topic_publish`)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import SECRET, served_coordinator  # noqa: F401  (imported from here)


def publisher(uid: str) -> dict:
    return {"name": "readings", "id": uid, "job": f"app:{uid}", "partition": 0, "partitions": 1,
            "address": "127.0.0.1:1"}
