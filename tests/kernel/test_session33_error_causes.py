"""The user's exception behind a failed run on several kernels
(kernel/scheduling/_errors.py `carry_causes`): pickled back from the
kernel process, an error lost its `__cause__`, so the chain ended at the
OperatorError, where one kernel's goes on to the ValueError the function
raised."""

from __future__ import annotations

import pytest

from kernel import Dataflow, KernelProcessError, OperatorError, run


class Unpicklable(Exception):
    """An exception holding a lambda: it does not pickle."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.callback = lambda: None


def parse(x):
    if x == 3:
        raise ValueError(f"bad record {x}")
    return x


def parse_unpicklably(x):
    if x == 3:
        raise Unpicklable(f"bad record {x}")
    return x


def _chain(error: BaseException) -> list[BaseException]:
    chain = []
    while error is not None:
        chain.append(error)
        error = error.__cause__
    return chain


def _operator_error(error: BaseException) -> OperatorError:
    return next(link for link in _chain(error) if isinstance(link, OperatorError))


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_the_functions_exception_is_the_operator_errors_cause_on_any_number_of_kernels(cores):
    flow = Dataflow("causes")
    flow.from_iterable(range(8)).map(parse).collect()
    with pytest.raises((OperatorError, KernelProcessError)) as info:
        run(flow, cores=cores)
    error = _operator_error(info.value)
    assert type(error.__cause__) is ValueError
    assert str(error.__cause__) == "bad record 3"
    assert error.__cause__.__cause__ is None


def test_a_cause_that_does_not_pickle_ends_the_chain_and_the_error_still_comes_back():
    flow = Dataflow("unpicklable")
    flow.from_iterable(range(8)).map(parse_unpicklably).collect()
    with pytest.raises(KernelProcessError) as info:
        run(flow, cores=2)
    error = _operator_error(info.value)
    assert error.__cause__ is None
    assert "raised Unpicklable: bad record 3" in str(info.value)
    assert "parse_unpicklably" in error.cause_traceback_text
