"""How an option given blank is said, by `python -m kernel.run` and by the
system's commands (`python -m kernel status --coordinator " "`).

Apart from `_run`, which imports the fluent API and the run's machinery:
the system's commands say their usage errors without them.
"""


def blank_said(flag: str, what: str, given: str, form: str, hint: str = "") -> str:
    """What an empty or blank (only white space) value of `flag` is told:
    `--listen: the address given is blank (' '; HOST:PORT)`, naming what
    was given where it is not plainly empty."""
    if given:
        return f"{flag}: the {what} given is blank ({given!r}; {form}{hint})"
    return f"{flag}: the {what} given is empty ({form}{hint})"
