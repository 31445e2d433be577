"""Run a herdgate program under tracemalloc; SIGUSR2 writes a snapshot.

``python -m bench.tracemem OUT_DIR gateway --listen ...``: the same as
``python -m herdgate gateway --listen ...`` with ``tracemalloc`` tracing every Python
allocation (one frame each: by line); each SIGUSR2 writes ``OUT_DIR/snapshot-<n>.pickle``
(``tracemalloc.Snapshot.load``). Used by ``bench.tunnel_memory`` to see where the
gateway's memory per idle tunnel goes; what tracemalloc does not see (OpenSSL's own
allocations, the kernel's socket buffers are not RSS) is the RSS growth it does not
explain. Slows the process down and doubles its Python memory: for profiles, not figures.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import runpy
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    taken = [0]

    def dump(signum: int, frame: FrameType | None) -> None:
        taken[0] += 1
        tracemalloc.take_snapshot().dump(str(out / f"snapshot-{taken[0]}.pickle"))
        counts: collections.Counter[str] = collections.Counter()
        sizes: collections.Counter[str] = collections.Counter()
        for obj in gc.get_objects():
            name = f"{type(obj).__module__}.{type(obj).__qualname__}"
            counts[name] += 1
            sizes[name] += sys.getsizeof(obj)
        running = asyncio._get_running_loop()  # the handler runs inside a loop callback
        tasks = len(asyncio.all_tasks(running)) if running is not None else -1
        handles = counts.get("uvloop.loop.TimerHandle", 0)
        types = {name: [counts[name], sizes[name]] for name in counts}
        doc = {"tasks": tasks, "timers": handles, "types": types}
        (out / f"objects-{taken[0]}.json").write_text(json.dumps(doc))
        (out / f"snapshot-{taken[0]}.done").write_text("")

    tracemalloc.start(1)
    signal.signal(signal.SIGUSR2, dump)
    # As ``python -m herdgate ...`` (bench and herdgate are side by side: no import).
    sys.argv = ["herdgate", *argv[1:]]
    runpy.run_module("herdgate", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
