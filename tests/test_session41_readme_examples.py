"""README, "The three API levels", the low level's block (skipped by
test_readme: it awaits): run as the body of a coroutine, with a `work`
and `chunks` of its own, every chunk is worked through by `join()`."""

import asyncio
import re
import textwrap
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_low_level_block_runs_its_task_to_the_end():
    [block] = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
               if "from kernel.lowlevel import" in b]
    imports, _, rest = block.partition("\n\n")
    source = f"{imports}\n\nasync def main(work, chunks):\n{textwrap.indent(rest, '    ')}"
    namespace = {}
    exec(compile(source, str(README), "exec"), namespace)
    done = []
    asyncio.run(namespace["main"](done.append, range(100)))
    assert done == list(range(100))
