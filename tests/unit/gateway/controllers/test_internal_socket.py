from __future__ import annotations

from pathlib import Path

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
