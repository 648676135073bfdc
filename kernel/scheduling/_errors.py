"""The errors of the kernel itself: the base of every error a run raises,
and those of work that did not name itself (a low-level task, an
activation). Operators' errors (`OperatorError`) build on them in
`kernel.dataflow`."""

from __future__ import annotations


class KernelError(Exception):
    """Base class of the errors a run raises."""

    _kernel_named = True


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
