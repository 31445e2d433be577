"""The protocol core must not pull in any I/O machinery."""

from __future__ import annotations

import subprocess
import sys


def test_protocol_imports_no_io_modules():
    code = (
        "import sys, tunnel.protocol, tunnel.frames, tunnel.events, tunnel.errors;"
        "import tunnel.websocket, tunnel.redial, tunnel.replica_list, tunnel.cluster_state;"
        "bad = {'asyncio', 'socket', 'ssl', 'aiohttp', 'uvloop', 'selectors'} & set(sys.modules);"
        "print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
