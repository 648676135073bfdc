"""The errors of the kernel itself: the base of every error a run raises,
and those of work that did not name itself (a low-level task, an
activation). Operators' errors (`OperatorError`) build on them in
`kernel.dataflow`."""

from __future__ import annotations


def describe_exception(exc: BaseException) -> str:
    """`TypeName: message` of `exc`, for the error that names where it came
    from. Its message must not fail that error: an exception whose
    `__str__` raises (a class whose `__str__` returns `self.args[0]`,
    raised with a status code: "__str__ returned non-string") made the
    message itself raise, and the run's error then named the library's
    handler, no record, and in a fused chain or behind a user operator
    another step altogether. Such a message is told as Python's traceback
    tells it, with the exception's repr (which does not call `__str__`)."""
    name = type(exc).__name__
    try:
        return f"{name}: {exc}"
    except KeyboardInterrupt:  # a Ctrl-C, as ever
        raise
    except BaseException:  # a `__str__` that raises a BaseException too
        pass
    try:
        return f"{name}: <exception str() failed> {exc!r}"
    except KeyboardInterrupt:
        raise
    except BaseException:
        return f"{name}: <exception str() failed>"


class KernelError(Exception):
    """Base class of the errors a run raises."""

    _kernel_named = True


class TaskError(KernelError):
    """A low-level task spawned on a kernel raised."""

    def __init__(self, task: str, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else describe_exception(error)
        super().__init__(task, text)
        self.task = task
        self.error = text

    def __str__(self) -> str:
        return f"task {self.task!r} raised {self.error}"


class ActivationError(KernelError):
    """An activation raised something that did not name itself."""

    def __init__(self, activation: str, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else describe_exception(error)
        super().__init__(activation, text)
        self.activation = activation
        self.error = text

    def __str__(self) -> str:
        return f"{self.activation} raised {self.error}"


_CARRIED = "_carried_causes"
_CAUSES = 16  # the most causes carried (a chain is rarely more than two)


def carry_causes(exc: BaseException) -> None:
    """Before `exc` is pickled to another process, which drops `__cause__`:
    its causes go along, each pickled on its own, as a list on `exc`, to
    be `restore_causes`d there. So the caller of a run on several kernels
    finds the user's exception behind an OperatorError
    (`err.__cause__.__cause__`: the ValueError a function raised), as on
    one kernel (`err.__cause__`); before, the chain ended at the
    OperatorError. (Its traceback stays text: `keep_cause_traceback`.)
    Pickles of their own, not the causes themselves: a cause that pickles
    here may not unpickle in the caller (a class of the pipeline file,
    which `python -m kernel.run --cores N` imports in the kernels only),
    and then the chain ends there, where `exc` itself came back whole."""
    import pickle

    carried: list[bytes] = []
    link = exc
    for _ in range(_CAUSES):
        cause = link.__cause__
        if cause is None:
            break
        try:
            blob = pickle.dumps(cause)
            pickle.loads(blob)
        except Exception:  # a cause that does not pickle: the chain ends here
            break
        carried.append(blob)
        link = cause
    if carried:
        try:
            setattr(exc, _CARRIED, carried)
        except Exception:  # (an exception that takes no attribute)
            pass


def restore_causes(exc: BaseException) -> None:
    """In the process that unpickled `exc`: its causes, as `carry_causes`
    sent them, are its `__cause__` chain again, up to the first that does
    not unpickle here."""
    import pickle

    carried = getattr(exc, "__dict__", {}).pop(_CARRIED, None) or ()
    link = exc
    for blob in carried:
        try:
            cause = pickle.loads(blob)
        except Exception:  # (its class is not to be found here): the chain ends here
            return
        link.__cause__ = cause
        link = cause
