"""A pipeline file as a request carries it (`file_fields`), and what
`submit` checks of it and of its options before it dials the coordinator
(`submit_payload`). Light on purpose: a submit's usage error is said with
Python's start-up and these, not with the client's modules (asyncio,
aiohttp: ~0.3 s of CPU; tests/system/test_session44_submit_usage_light.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import msgspec

MAX_MESSAGE = 64 << 20  # a submitted pipeline file travels in one message
# a pipeline file's JSON text, at most: the rest of MAX_MESSAGE for the other fields of
# its requests (`submit`, and the job master's `start` to each executor: its peers...)
FILE_ROOM = MAX_MESSAGE - (1 << 20)


def file_fields(data: bytes) -> dict:
    """A pipeline file's bytes as the requests' `content` (JSON text):
    UTF-8 text as it is; other bytes (a file in the encoding its coding
    line names, latin-1...) as latin-1 text, with `encoding: latin-1`,
    which gives back every byte (`file_bytes`)."""
    try:
        return {"content": data.decode()}
    except UnicodeDecodeError:
        return {"content": data.decode("latin-1"), "encoding": "latin-1"}


def file_bytes(m: dict) -> bytes:
    """The bytes `file_fields` sent (a ValueError for what it never sends)."""
    content, encoding = m.get("content"), m.get("encoding", "utf-8")
    if not isinstance(content, str) or encoding not in ("utf-8", "latin-1"):
        raise ValueError("a pipeline file's text (and its encoding, utf-8 or latin-1) is needed")
    return content.encode(encoding)


def pipeline_payload(target: str) -> dict:
    """`FILE[:NAME]` -> the file's name, text and SHA-256, and the flow's name."""
    from kernel.cli._run import UsageError, _check_pipeline_path, split_target

    path, flow = split_target(target)
    _check_pipeline_path(path)  # (a directory said "pipeline file not found")
    if path.suffix != ".py":
        # (as `kernel run` says it: it was sent, and the coordinator's refusal, exit 1, read
        # "a pipeline file name (NAME.py) and its text are needed")
        raise UsageError(f"cannot import {path}: not a Python file (NAME.py)")
    try:  # (sent as JSON text, and kept as text in the catalog: it failed there, a traceback)
        path.name.encode()
    except UnicodeEncodeError:
        raise UsageError(f"the pipeline file's name {os.fsencode(path.name)!r} is not UTF-8, which the "
                         "system keeps its names in: rename it to submit it") from None
    data = path.read_bytes()
    _check_syntax(data, path)
    fields = file_fields(data)
    # (its JSON text: a latin-1 byte above 0x7f is two bytes there, a control character six; one
    # too large was sent all the same, and the coordinator's closed connection said "Connection lost")
    if (size := len(msgspec.json.encode(fields["content"]))) > FILE_ROOM:
        raise UsageError(f"{path}: too large to submit: its {len(data)} bytes are {size} of a request's "
                         f"JSON text, over the {FILE_ROOM} one message carries")
    return {"filename": path.name, **fields, "digest": hashlib.sha256(data).hexdigest(), "flow": flow}


def submit_payload(target: str, *, state_dir, epoch_interval, shared_state: bool = False) -> dict:
    """What `submit` checks before it dials the coordinator (a UsageError:
    nothing is sent): its options, and the file (`pipeline_payload`)."""
    from kernel.cli._run import UsageError

    if state_dir is None and shared_state:
        raise UsageError("--shared-state-dir needs --state-dir")
    if state_dir is None and epoch_interval is not None:
        raise UsageError("--epoch-interval needs --state-dir")  # (epochs drive the snapshots, nothing else)
    if epoch_interval is not None:
        # (the run's options' own module: the facade imports the run's machinery, asyncio and aiohttp
        # with it, ~0.4 s before a usage error was said)
        from kernel.execution._run_options import check_epoch_interval

        try:  # (as `kernel run` says it: nan and inf went as JSON's null, the job run at the default
            check_epoch_interval(epoch_interval)  # interval; 0 was the coordinator's refusal, exit 1)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return pipeline_payload(target)


def _check_syntax(data: bytes, path: Path) -> None:
    """The file compiled, not run (a pipeline may import what only the
    executors' machines have): a syntax error is a usage error here, named
    at the user's path, not a failed job naming the executor's copy. Its
    bytes are compiled, as kernel.run's import reads them (`source_error`:
    its coding line or BOM, else UTF-8)."""
    from kernel.cli._run import source_error, syntax_error

    if (exc := source_error(data, path)) is not None:
        raise syntax_error(exc, path)
