"""The Redis Streams tests' server and client (test_redis*.py): a real
`redis-server` on a free port in a temporary directory, one per test module
(tests/_redis_server.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import redis

_HELPER = Path(__file__).parents[1] / "_redis_server.py"
# tests/ is not a package (and its `kernel/` folder would shadow the library): load the helper by path
_spec = importlib.util.spec_from_file_location("_redis_server", _HELPER)
_redis_server = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_redis_server)


@pytest.fixture(scope="module")
def url():
    with _redis_server.redis_server() as address:
        yield address


@pytest.fixture
def client(url):
    """A client of `url`'s server, emptied first, that reads text."""
    connection = redis.Redis.from_url(url, decode_responses=True)
    connection.flushdb()
    yield connection
    connection.close()
