"""The catalog's limits, apart from `_wire` (which imports the links,
aiohttp): the command line checks `--cores` and the other counts against
them while it parses, and a usage error costs no more than Python's start-up."""

# the largest integer a request may carry into the catalog (SQLite's INTEGER holds no
# more: a larger one's every write of its row failed, an OverflowError traceback)
LARGEST_INTEGER = 2**63 - 1
