"""Errors that tell the user where their pipeline failed.

Every error raised out of a run names its origin (the operator and function,
or the task) and keeps the user's own exception as `__cause__`, with its
traceback. The fields are plain strings so the errors pickle across kernel
processes unchanged.
"""

from __future__ import annotations

import reprlib

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
    except Exception as exc:  # a user __repr__ that raises must not hide the real error
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
    module = getattr(fn, "__module__", None)
    if module and module not in ("builtins", "__main__") and not module.startswith("__kernel"):
        return f"{module}.{name}"
    return name


class KernelError(Exception):
    """Base class of the errors a run raises."""

    _kernel_named = True


class OperatorError(KernelError):
    """A user function (or a user operator's handler) raised.

    Attributes: `operator` (the step's name), `function` (the user function's
    name), `record` (a truncated repr of the record it was given, or None when
    there was no single record), `error` (`TypeName: message` of the cause).
    The original exception, with the user's traceback, is `__cause__`.
    """

    def __init__(self, operator: str, function: str, record: str | None, error: str) -> None:
        super().__init__(operator, function, record, error)
        self.operator = operator
        self.function = function
        self.record = record
        self.error = error

    def __str__(self) -> str:
        text = f"operator {self.operator!r}: function {self.function!r} raised {self.error}"
        if self.record is not None:
            text += f"\n  on record: {self.record}"
        return text

    @classmethod
    def wrap(cls, operator: str, fn: object, exc: BaseException, *, record=None, has_record=True):
        err = cls(
            operator,
            describe_function(fn),
            describe_record(record) if has_record else None,
            shorten(f"{type(exc).__name__}: {exc}"),
        )
        err.__cause__ = exc
        return err


class TaskError(KernelError):
    """A low-level task spawned on a kernel raised."""

    def __init__(self, task: str, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        super().__init__(task, text)
        self.task = task
        self.error = text

    def __str__(self) -> str:
        return f"task {self.task!r} raised {self.error}"


class ActivationError(KernelError):
    """An activation raised something that did not name itself."""

    def __init__(self, activation: str, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        super().__init__(activation, text)
        self.activation = activation
        self.error = text

    def __str__(self) -> str:
        return f"{self.activation} raised {self.error}"
