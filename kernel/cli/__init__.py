"""The command line: `python -m kernel.run pipeline.py[:name]` (`_run.py`).

Imports the public face of `kernel` (`run`, the run plan); nothing below
it reaches back here.
"""
