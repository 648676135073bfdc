"""Which step, and which of its functions, a blocked activation is in.

The watchdog (kernel/scheduling/_watchdog.py) reports an activation that
has not handed the loop back. The scheduler's activation is a chain's
first step: a `map` fed by its source runs inside the source's activation,
and fused steps (operators/_fusion.py, a count that took its key_by) run as
one handler, so the report named `from_iterable (step 0)` for a map's
function blocked three steps further on. An error raised there names the
step and the function; so does the report now, read from the loop thread's
frames when it is made (nothing is done per record or per batch):

* the user's function is the outermost frame of the innermost run of the
  user's own frames (the one the library called);
* from it outwards, the first frame that knows its step names it: a line of
  a fused chain's generated comprehension (its globals map each step's
  line to the step, `STEPS_BY_LINE`), a helper of the library that calls a
  step's function with the step's name at hand (`STEP_CALLERS`), or a
  method of an operator (its `self`: a user's operator's handler, or a
  built-in step calling the user's function).
"""

from __future__ import annotations

from kernel.dataflow._errors import STEP_CALLERS, STEPS_BY_LINE, describe_function, described_name
from kernel.dataflow._operator import Operator
from kernel.scheduling._watchdog import _MACHINERY

_FUSED = "<fused chain "  # a fused chain's generated code's file name (operators/_fusion.py)


def blocked_step(frames: list, within: str, own: str | None = None) -> tuple[str, str] | None:
    """The step and function that `frames` (the loop thread's, innermost
    first, up to the activation's own) are in, as the report names them,
    with what they run `within` ("the activation of from_iterable (step
    0)") unless the step is that activation's `own`, and the step's name
    (the report's `step`: a log filter or a structured log's reader asks
    for the step blocked, not the activation it ran in); None where no
    step is found (the report names the activation alone)."""
    try:
        found = _step_and_function(frames)
    except Exception:  # (a user's object in a frame, its __qualname__ raising): the watchdog that
        return None  # called this stops watching a kernel whose look fails, so the activation alone
    if found is None:
        return None
    step, function = found
    said = [f"function {function!r}"] if function is not None else []
    if step != own:
        said.append(f"run in {within}")
    return f"operator {step!r}" + "".join(f", {part}" for part in said) + ("," if said else ""), step


def _step_and_function(frames: list) -> tuple[str, str | None] | None:
    users = None  # the user's function: the outermost of the innermost user frames
    for at, frame in enumerate(frames):
        if not frame.f_code.co_filename.startswith(_MACHINERY):
            users = at
        elif users is not None:
            break
    function = None
    if users is not None:
        code = frames[users].f_code
        function = described_name(frames[users].f_globals.get("__name__"), code.co_qualname)
    for frame in frames[users or 0:]:
        code = frame.f_code
        if code.co_filename.startswith(_FUSED):
            step = frame.f_globals.get(STEPS_BY_LINE, {}).get(frame.f_lineno)
            if step is not None:
                return step[0], describe_function(step[1])
        elif code in STEP_CALLERS:
            step_local, fn_local = STEP_CALLERS[code]
            local = frame.f_locals
            if isinstance(local.get(step_local), str):
                fn = local.get(fn_local)
                return local[step_local], function if fn is None else describe_function(fn)
        else:
            op = frame.f_locals.get("self")
            # (by its type: isinstance asks a user's `self` its __class__, which
            # may raise, a proxy's, and the report lost the step it had found)
            if issubclass(type(op), Operator):
                return op.name, function
    return None
