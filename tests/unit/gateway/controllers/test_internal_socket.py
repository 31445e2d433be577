from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from gateway.clusters.replicas import REPLICAS
from gateway.clusters.tunnels import TUNNELS
from gateway.controllers.downstream import MAX_SOCKET_PATH, InternalListener
from gateway.identity.directory import DIRECTORY


def _app() -> web.Application:
    app = web.Application()
    app[DIRECTORY] = None  # type: ignore[assignment]  # not used before start()
    app[TUNNELS] = None  # type: ignore[assignment]
    app[REPLICAS] = None  # type: ignore[assignment]
    return app


def test_socket_lives_in_the_state_dir(tmp_path: Path) -> None:
    listener = InternalListener(_app(), tmp_path)
    assert listener.path.parent == tmp_path.resolve() / "run"


def test_deep_state_dirs_fall_back_to_a_private_temporary_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    listener = InternalListener(_app(), deep)
    assert len(str(listener.path)) <= MAX_SOCKET_PATH
    assert (listener.path.parent.stat().st_mode & 0o777) == 0o700


async def test_clients_share_one_session_and_build_no_ssl_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each controller call takes a client; kubernetes-asyncio's own made an SSL context
    with the system's CA store every time (20-35 ms of CPU: at thousands of clusters
    probed every 10 s, more than the CPU there is). Clients are views of one session
    that dials the socket."""
    import ssl

    made: list[int] = []
    real = ssl.create_default_context

    def counting(*args: object, **kwargs: object) -> ssl.SSLContext:
        made.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl, "create_default_context", counting)
    listener = InternalListener(_app(), tmp_path)
    sessions = set()
    bases = set()
    for i in range(50):
        api = listener.client(f"c-{i % 5}")
        sessions.add(id(api._session))
        bases.add(api.base)
    assert made == []
    assert len(sessions) == 1
    assert bases == {f"http://herdgate-internal/clusters/c-{i}" for i in range(5)}
    await listener.stop()


def test_the_gateway_does_not_load_kubernetes_asyncio() -> None:
    """Its ``client`` package imports every generated model: tens of megabytes in each
    gateway process and an event-loop stall when the first cluster's controller
    started (docs/benchmarks.md, "The controllers' own client"). No module of the
    gateway names it (the controllers imported it inside functions), and importing
    every one of them loads none of it."""
    import subprocess
    import sys

    import gateway

    root = Path(gateway.__file__).parent
    naming = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "kubernetes_asyncio" in path.read_text()
    ]
    assert naming == []
    code = (
        "import importlib, pkgutil, sys, gateway\n"
        "for m in pkgutil.walk_packages(gateway.__path__, 'gateway.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('kubernetes')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
