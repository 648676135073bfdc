"""The connectors: the library's sources and sinks for the outside world.

One place to import them from (`from kernel.operators.connectors import
FileSource`, or `operators.connectors`); the fluent API reaches the same
classes as `flow.from_files`, `stream.to_files`, `flow.from_redis_stream`,
`stream.to_redis_stream` and `flow.from_partitions`. Each lives in a module
of its own beside this one (`_file_source.py`, `_files.py`, `_redis.py`,
`_partitions.py`).
"""

from kernel.operators._file_source import FileSource
from kernel.operators._files import ToFiles
from kernel.operators._partitions import PartitionSource
from kernel.operators._redis import RedisEntry, RedisStreamSource, ToRedisStream

__all__ = ["FileSource", "PartitionSource", "RedisEntry", "RedisStreamSource", "ToFiles", "ToRedisStream"]
