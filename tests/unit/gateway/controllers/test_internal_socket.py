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


async def test_clients_share_one_session_and_build_no_ssl_context_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each controller call takes a client; building kubernetes-asyncio's own made an SSL
    context with the system's CA store every time (20-35 ms of CPU: at thousands of
    clusters probed every 10 s, more than the CPU there is). Clients are copies of one,
    on one session that dials the socket."""
    import ssl

    from kubernetes_asyncio.client import rest

    made: list[int] = []
    real = ssl.create_default_context

    def counting(*args: object, **kwargs: object) -> ssl.SSLContext:
        made.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(rest.ssl, "create_default_context", counting)
    listener = InternalListener(_app(), tmp_path)
    sessions = set()
    hosts = set()
    for i in range(50):
        async with listener.client(f"c-{i % 5}") as api:
            sessions.add(id(api.rest_client.pool_manager))
            hosts.add(api.configuration.host)
    assert len(made) <= 1
    assert len(sessions) == 1
    assert hosts == {f"http://herdgate-internal/clusters/c-{i}" for i in range(5)}
    await listener.stop()
