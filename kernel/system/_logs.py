"""A job's log on an executor, served in pieces (`ExecutorDaemon._log`):
each piece at most LOG_CHUNK bytes, decoded on its own, a character cut at
its end left for the next."""

from __future__ import annotations

LOG_CHUNK = 1 << 20  # the most bytes of a log one `logs` request answers with, per executor


def cut_character(data: bytes) -> int:
    """How many bytes at the end of `data` are a UTF-8 character begun and
    not finished: the next piece starts with them. (Each piece is decoded on
    its own: a character cut by the 1 MiB boundary, or by a read while the
    job was writing it, came out as replacement characters.)"""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return 0  # ASCII: nothing begun
        if byte >= 0xC0:  # a lead byte: how long is its character?
            size = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return back if size > back else 0
    return 0  # (continuation bytes only: not UTF-8 to mend)


def log_piece(data: bytes, offset: int) -> dict:
    """The `logs` answer for `data`, read at `offset`: its text, less a
    character not finished, and the offset after it."""
    data = data[: len(data) - cut_character(data)]
    return {"text": data.decode(errors="replace"), "offset": offset + len(data)}
