"""`python -m kernel COMMAND ...` (and the `streamkernel` script): `run` a
pipeline file (as `python -m kernel.run`), or the system's `coordinator`,
`executor`, `submit`, `status`, `logs`, `kill` (`kernel.system`)."""

import sys

from kernel.system import main

if __name__ == "__main__":
    sys.exit(main())
