"""A dashboard's `HOST:PORT`, read (`parse_address`) and written
(`host_port`). Apart from the dashboard's server (asyncio, its threads), so
that a coordinator's bad `--dashboard` is said without importing them
(tests/system/test_session44_submit_usage_light.py); in the microkernel's
package because it imports nothing, and the metrics package may import
only the microkernel (tests/metrics/test_metrics.py)."""

from __future__ import annotations


def parse_address(value) -> tuple[str, int]:
    """`"HOST:PORT"` (`"[::1]:9464"` for IPv6) -> (host, port); ValueError otherwise."""
    example = "e.g. '127.0.0.1:9464'"
    if not isinstance(value, str):
        raise ValueError(f"dashboard must be a 'HOST:PORT' string ({example}), got {value!r}")
    host, sep, port = value.rpartition(":")
    if value.startswith("[") and value.endswith("]"):  # ('[::1]' said the port was '1]')
        raise ValueError(f"dashboard must be 'HOST:PORT' ({example}), got {value!r}: no port")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        # an IPv6 address's own colons cannot be told from the port's: '::1'
        # was host ':' port 1, and failed as "dashboard [:]:1: unknown host"
        raise ValueError(f"dashboard {value!r}: an IPv6 host goes in brackets, '[HOST]:PORT' "
                         "(e.g. '[::1]:9464')")
    if not sep:
        raise ValueError(f"dashboard must be 'HOST:PORT' ({example}), got {value!r}: no port")
    if host in ("", "[]"):  # (':8080' said "no port"; '[]:8080' said "dashboard :8080: unknown host")
        raise ValueError(f"dashboard must be 'HOST:PORT' ({example}), got {value!r}: no host "
                         "('0.0.0.0:PORT' for every interface)")
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:  # (not '٩٤٦٤', nor '²')
        raise ValueError(f"dashboard {value!r}: the port must be a number from 0 to 65535, got {port!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def host_port(host: str, port: int) -> str:
    """`HOST:PORT` as the address is written (and `parse_address` reads it
    back): an IPv6 host in brackets, `[::1]:9464` (`::1:9464` was printed)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
