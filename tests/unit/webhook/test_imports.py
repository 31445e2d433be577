"""The webhook runs inside a cluster without the gateway; its core does no I/O."""

from __future__ import annotations

import subprocess
import sys


def _modules(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return out.stdout.strip()


def test_webhook_never_imports_the_gateway() -> None:
    code = (
        "import sys, webhook.cli, webhook.server, webhook.app, webhook.cache, ace.manifests;"
        "print(sorted(m for m in sys.modules if m == 'gateway' or m.startswith('gateway.')))"
    )
    assert _modules(code) == "[]"


def test_review_and_records_are_sans_io() -> None:
    code = (
        "import sys, webhook.review, ace.records, ace.hashes, ace.manifests;"
        "bad = {'asyncio', 'socket', 'ssl', 'aiohttp', 'uvloop', 'selectors'} & set(sys.modules);"
        "print(sorted(bad))"
    )
    assert _modules(code) == "[]"
