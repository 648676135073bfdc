"""Errors that tell the user where their pipeline failed.

Every error raised out of a run names its origin (the operator and function,
or the task) and keeps the user's own exception as `__cause__`, with its
traceback. The fields are plain strings so the errors pickle across kernel
processes unchanged.
"""

from __future__ import annotations

import asyncio
import errno
import os
import reprlib
import traceback
from pathlib import Path
from typing import Any

from kernel.scheduling._errors import ActivationError, KernelError, TaskError, describe_exception

__all__ = ["ActivationError", "KernelError", "OperatorError", "TaskError"]

_record_repr = reprlib.Repr()
_record_repr.maxstring = 200
_record_repr.maxother = 200
_record_repr.maxlist = 10
_record_repr.maxtuple = 10
_record_repr.maxdict = 10
_record_repr.maxlevel = 3


def describe_record(record: object) -> str:
    """A repr of `record` cut to a readable size (reprlib keeps nesting honest)."""
    try:
        return _record_repr.repr(record)
    except PASSES_THROUGH:
        raise
    except BaseException as exc:  # a user __repr__ that raises (anything) must not hide the real error
        return f"<unrepresentable {type(record).__name__}: {type(exc).__name__}>"


def shorten(text: str, limit: int = 300) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}...{text[-half:]}"


def describe_function(fn: object) -> str:
    """A user function's name for messages (a str is taken as the name)."""
    if isinstance(fn, str):
        return fn
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        return repr(fn)
    return described_name(getattr(fn, "__module__", None), name)


def described_name(module: str | None, name: str) -> str:
    """A function's name for messages, given its module and qualified name."""
    if module and module not in ("builtins", "__main__") and not module.startswith("__kernel"):
        return f"{module}.{name}"
    return name


# The library's helpers that call a step's user function with the step's
# name at hand (`operators/_calls.py`: `call_each`, `over_batch`): their code
# -> (the local holding the step's name, the local holding the function).
# The watchdog's report names the step and function a blocked thread is in
# from them (`kernel/runtime/_blocked_step.py`): a fused handler (a count
# that took the key_by before it) runs the key_by's function from the
# count's own frame.
STEP_CALLERS: dict = {}
# The global of a fused chain's generated code (`operators/_fusion.py`) that
# maps each line of a step's clause to (the step's name, its function).
STEPS_BY_LINE = "__steps_by_line__"


def calls_a_steps_function(step: str = "operator", fn: str = "fn"):
    """Registers a helper in `STEP_CALLERS` (its locals `step` and `fn`
    name the step and its function); the helper itself is unchanged."""
    def register(helper):
        STEP_CALLERS[helper.__code__] = (step, fn)
        return helper

    return register


# What the library needs of records and keys, said beside the errors that
# break it (the `hint` line of an OperatorError).
UNHASHABLE_KEY = (
    "a key must be hashable (a str, a number, a tuple of those...: a tuple rather than a list, "
    "a frozenset rather than a set); the key is what the function given to key_by returned"
)
def itself(record):
    """What `Stream.distinct` keys a record by: the record (an exchange that
    cannot hash such a key says the record must be hashable)."""
    return record


UNHASHABLE_RECORD = (
    "distinct() keeps the records it has seen in a set, so a record must be hashable (a tuple "
    "rather than a list, a frozenset rather than a set)"
)
UNPICKLABLE_RECORD = (
    "records that cross kernels (key_by's output, sent to the kernel that owns the key, and "
    "broadcast()'s, sent to every kernel, with several kernels) must be picklable; plain scalars and "
    "tuples of them cross by msgpack"
)
UNRESTORABLE_RECORD = (
    "a record that leaves its kernel (to another kernel, or collected back to the caller, with several "
    "kernels) is rebuilt from its pickle, and this one's does not rebuild it: pickle.loads(pickle.dumps"
    "(record)) fails (an Exception subclass whose __init__ takes other arguments than it passes to "
    "Exception.__init__, say); give its class a __reduce__ that rebuilds it"
)
UNHASHABLE_ACROSS_KERNELS = (
    "a key that crosses kernels is hashed the same in every process: str, bytes, numbers, "
    "tuples and frozensets of those directly, any other type by its pickle, so it must be picklable"
)

# What a step lets through as it is when its function fails. Whatever else
# a user function raises is its failure, named by the step with the
# function and the record, an Exception or not: a `class
# Stop(BaseException)` and GeneratorExit were caught by nothing on their way
# and blamed on the activation that ran the chain (the source step), and
# SystemExit(0) ended a one-kernel run as if it had completed. Not these:
# an error already named (a step further down failed), a Ctrl-C (a
# KeyboardInterrupt lands in whatever runs and means "stop", not "this
# record failed"), and a task's cancellation (it comes from outside).
# Caught as `except PASSES_THROUGH: raise` before `except BaseException`,
# around a whole batch: nothing is added per record.
PASSES_THROUGH = (KernelError, KeyboardInterrupt, asyncio.CancelledError)


def closed_here(exc: GeneratorExit) -> bool:
    """Whether `exc`, caught in a coroutine of the library around an await
    of user code (an async iterator's `__anext__`, a handler's awaitable),
    was thrown in by closing that coroutine (`coro.close()`: a task
    collected unfinished, say) rather than raised by the user's code.

    Closing a coroutine throws GeneratorExit at its await, so its traceback
    holds the catching frame alone; one the user's code raised comes up
    through the user's frames as well. Looked at only once one is caught:
    nothing is added to the data path."""
    return exc.__traceback__ is None or exc.__traceback__.tb_next is None


# said under a step's error when its function raised SystemExit
EXIT_IN_FUNCTION = (
    "a step's function cannot end the run: SystemExit (sys.exit()) raised in it fails the run, "
    "whatever its code"
)

# In a kernel process that let go of some of the application's pipes and
# sockets (kernel/execution/_inherited_descriptors.py): which, said with the
# error a step's use of one of them gets (EPIPE, EBADF, ENOTCONN), which was
# a bare BrokenPipeError, telling nothing of why.
let_go_hint: str | None = None
_LET_GO_ERRNOS = frozenset({errno.EPIPE, errno.EBADF, errno.ENOTCONN})

#: a keyed step's record that is not a pair: only a loop on a keyed stream
#: (its feedback read as the loop's keyed input) can bring one
NOT_A_PAIR = (
    "a keyed stream's records are (key, value) pairs (key_by makes them): a loop on a keyed stream "
    "must feed such pairs back"
)
#: the "function" a keyed step's error names when a record is not a pair
READ_AS_PAIR = "(key, value) = record"


def not_a_pair(operator: str, exc: BaseException, record: Any) -> OperatorError:
    """The error of a step that reads `record` as `(key, value)` and cannot:
    a keyed stream's record that is no pair (a loop's feedback)."""
    return OperatorError.wrap(operator, READ_AS_PAIR, exc, record=record, hint=NOT_A_PAIR)


def is_not_a_pair(record: Any) -> bool:
    """Whether `record` cannot be read as `(key, value)` (the error path only)."""
    try:
        _key, _value = record
    except PASSES_THROUGH:
        raise
    except BaseException:  # a record's __iter__ that raises anything: no pair
        return True
    return False


def is_unhashable(key: object) -> bool:
    """Whether `hash(key)` fails (for error messages: the error path only)."""
    try:
        hash(key)
    except PASSES_THROUGH:
        raise
    except BaseException:  # a __hash__ that raises anything: the key cannot be used
        return True
    return False


class OperatorError(KernelError):
    """A user function (or a user operator's handler) raised, or returned
    something the library cannot use.

    Attributes: `operator` (the step's name), `function` (the user function's
    name), `record` (a truncated repr of the record it was given, or None when
    there was no single record), `error` (`TypeName: message` of the cause;
    with `verb="returned"`, the repr of the value returned), `hint` (a line
    saying what the library needs, or None). The original exception, with
    the user's traceback, is `__cause__`.
    """

    def __init__(self, operator: str, function: str, record: str | None, error: str,
                 hint: str | None = None, verb: str = "raised") -> None:
        super().__init__(operator, function, record, error, hint, verb)
        self.operator = operator
        self.function = function
        self.record = record
        self.error = error
        self.hint = hint
        self.verb = verb

    def __str__(self) -> str:
        text = f"operator {self.operator!r}: function {self.function!r} {self.verb} {self.error}"
        if self.record is not None:
            text += f"\n  on record: {self.record}"
        if self.hint is not None:
            text += f"\n  {self.hint}"
        return text

    @classmethod
    def wrap(cls, operator: str, fn: object, exc: BaseException, *, record=None, has_record=True,
             hint: str | None = None, whole_message: bool = False):
        """`whole_message`: `exc` is the library's own, with a message of a
        known size (a path in it): kept whole, where a user's is shortened."""
        message = describe_exception(exc)
        if hint is None and isinstance(exc, SystemExit):
            hint = EXIT_IN_FUNCTION
        elif hint is None and isinstance(exc, OSError) and exc.errno in _LET_GO_ERRNOS:
            hint = let_go_hint
        err = cls(
            operator,
            describe_function(fn),
            describe_record(record) if has_record else None,
            message if whole_message else shorten(message),
            hint,
        )
        err.__cause__ = exc
        return err

    @classmethod
    def returned(cls, operator: str, fn: object, value: object, *, record, hint: str):
        """`fn` returned `value`, which the library cannot use (no exception
        behind it: `hint` says what it needs)."""
        return cls(operator, describe_function(fn), describe_record(record), describe_record(value),
                   hint, "returned")


# The library's folders: `kernel/` (which, installed, holds `kernel/net/` and
# the others too) and, in a checkout, the folders `kernel.net`,
# `kernel.operators` and `kernel.state` are built from, beside it.
_KERNEL_DIR = Path(__file__).resolve().parents[1]
_LIBRARY_DIRS = tuple(
    str(path) + os.sep
    for path in (_KERNEL_DIR, *(_KERNEL_DIR.parent / pkg for pkg in ("operators", "net", "state")))
)


def user_traceback(exc: BaseException) -> str:
    """The traceback of `exc` without the library's own frames (nor
    importlib's, nor a fused chain's generated comprehension), or "" where
    none is the user's (the error's line says it all then)."""
    frames = [
        frame for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith(_LIBRARY_DIRS) and not frame.filename.startswith(_NOT_USERS)
    ]
    if not frames:
        return ""
    lines = ["Traceback (most recent call last, library frames hidden):\n"]
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(exc)
    return "".join(lines)


_NOT_USERS = ("<frozen importlib", "<fused chain ")  # frames that are no user's code either


def keep_cause_traceback(exc: BaseException) -> None:
    """Store the user's traceback of `exc.__cause__` as text on `exc`, so it
    survives pickling to another process (which drops causes and tracebacks)."""
    if exc.__cause__ is not None and not hasattr(exc, "cause_traceback_text"):
        exc.cause_traceback_text = user_traceback(exc.__cause__)


def cause_traceback(exc: BaseException) -> str:
    """The user's traceback behind `exc`, live or carried from another process."""
    carried = getattr(exc, "cause_traceback_text", "")
    if exc.__cause__ is not None and (exc.__cause__.__traceback__ is not None or not carried):
        return user_traceback(exc.__cause__)
    return carried
