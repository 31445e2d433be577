"""Where the running ``herdgate`` program is, and whether a command line naming it works.

``python3 -m venv .venv && .venv/bin/pip install .`` (the README's install) puts the
program in ``.venv/bin``, which is not on PATH: a printed ``herdgate agent ...`` line
would fail there with "command not found". :func:`off_path` tells, so the gateway can say
so at start (``gateway.operations.bootstrap.program_note``).
"""

from __future__ import annotations

import os
import shutil

NAME = "herdgate"


def off_path(argv0: str, path_env: str, name: str = NAME) -> str | None:
    """The directory of this program when it was started by its path as ``name`` (a
    virtualenv's ``bin/herdgate``) and ``name`` on ``path_env`` is not this program;
    else None (started as ``python -m herdgate``, or found on PATH)."""
    if os.path.basename(argv0) != name or os.sep not in argv0:
        return None
    program = os.path.realpath(argv0)
    if not os.path.isfile(program):
        return None
    found = shutil.which(name, path=path_env)
    if found is not None and os.path.realpath(found) == program:
        return None
    return os.path.dirname(os.path.abspath(argv0))
