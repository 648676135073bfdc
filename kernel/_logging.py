"""The library's loggers (`kernel`, and below it `kernel.state`,
`kernel.links`) print nothing until the program configures logging, as the
logging HOWTO asks of libraries: without a handler on the way up, Python's
last-resort handler would print their warnings on the stderr of every
program that imports the kernel. The command line is a program:
`python -m kernel.run` takes this handler off again (kernel/run.py), and
prints them."""

import logging

LIBRARY_HANDLER = logging.NullHandler()
logging.getLogger("kernel").addHandler(LIBRARY_HANDLER)
