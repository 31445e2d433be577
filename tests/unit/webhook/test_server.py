"""Settings, the CLI, and the server's listener (plain and TLS) without a reachable cluster."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from config import loader, tls
from config.errors import ConfigError
from config.schema import WebhookSettings
from herdgate.cli import build_parser, main
from webhook import cli as webhook_cli
from webhook.server import serve, split_listen

EXAMPLE = Path(__file__).resolve().parents[3] / "config" / "webhook.yaml"


def test_documented_example_is_the_defaults() -> None:
    assert loader.load(WebhookSettings, EXAMPLE, environ={}) == WebhookSettings()
    s = WebhookSettings()
    assert s.listen == "127.0.0.1:6440" and s.namespace == "herdgate-system"
    assert s.max_body == 1024 * 1024 and s.kubeconfig == ""


def args(*argv: str) -> Any:
    return build_parser().parse_args(["webhook", *argv])


def test_flags_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERDGATE_NAMESPACE", "from-env")
    monkeypatch.setenv("HERDGATE_WATCH_IDLE", "45s")
    s = webhook_cli.settings_from(
        args(
            "--listen", "[::1]:7000", "--kubeconfig", "/k", "--namespace", "from-flag",
            "--tls-cert-file", "/c", "--tls-private-key-file", "/k2", "--log-level", "debug",
        )
    )  # fmt: skip
    assert s.listen == "[::1]:7000" and s.kubeconfig == "/k"
    assert s.namespace == "from-env"  # the environment wins, as for every herdgate program
    assert (s.tls.cert_file, s.tls.key_file) == ("/c", "/k2")
    assert s.watch_idle_s == 45 and s.logging.level == "debug"


@pytest.mark.parametrize("listen", ["6440", "host:", "host:99999", "host:x"])
def test_bad_listen(listen: str) -> None:
    with pytest.raises(ConfigError):
        split_listen(listen)


def test_listen_forms() -> None:
    assert split_listen("127.0.0.1:6440") == ("127.0.0.1", 6440)
    assert split_listen("[::1]:6440") == ("::1", 6440)
    assert split_listen(":6440") == ("127.0.0.1", 6440)


def test_cli_check_config_and_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["webhook", "--check-config", "--namespace", "ns1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["namespace"] == "ns1" and shown["listen"] == "127.0.0.1:6440"
    assert main(["webhook", "--listen", "nope"]) == 2
    assert "configuration error" in capsys.readouterr().err
    assert main(["webhook", "--tls-cert-file", str(tmp_path / "c"), "--listen", ":1"]) == 2
    assert "cert_file and key_file go together" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: 1.2.3.4:1\nsurprise: 1\n")
    assert main(["webhook", "--config", str(bad)]) == 2
    assert "surprise" in capsys.readouterr().err
    missing = tmp_path / "missing.kubeconfig"
    assert main(["webhook", "--kubeconfig", str(missing), "--listen", "127.0.0.1:0"]) == 2
    assert "kubeconfig: cannot read" in capsys.readouterr().err  # checked at start
    missing.write_text("garbage: 1\n")  # readable, but not a kubeconfig
    assert main(["webhook", "--kubeconfig", str(missing), "--listen", "127.0.0.1:0"]) == 1
    assert "cannot load cluster credentials" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unreachable_kubeconfig(path: Path) -> Path:
    """A kubeconfig for an API server that is not there (the cache keeps backing off)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def write_cert(directory: Path) -> tuple[Path, Path, Path]:
    ca_cert, ca_key = tls.make_ca("test-ca")
    cert, key = tls.issue_server_cert(ca_cert, ca_key, ["127.0.0.1"])
    paths = directory / "ca.crt", directory / "tls.crt", directory / "tls.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.mark.parametrize("use_tls", [False, True])
async def test_serves_before_the_cache_syncs_and_stops(tmp_path: Path, use_tls: bool) -> None:
    port = free_port()
    fields: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "kubeconfig": str(unreachable_kubeconfig(tmp_path / "kc")),
    }
    ctx: ssl.SSLContext | bool = False
    if use_tls:
        ca, cert, key = write_cert(tmp_path)
        fields["tls"] = {"cert_file": str(cert), "key_file": str(key)}
        ctx = ssl.create_default_context(cafile=str(ca))
    settings = loader.build(WebhookSettings, {**fields, "backoff_initial": "50ms"})
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    scheme = "https" if use_tls else "http"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            for _ in range(100):
                try:
                    async with session.get(f"{scheme}://127.0.0.1:{port}/livez", ssl=ctx) as r:
                        assert r.status == 200
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.05)
            async with session.get(f"{scheme}://127.0.0.1:{port}/healthz", ssl=ctx) as r:
                assert r.status == 503
            review = {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                      "spec": {"token": "token-a:b"}}  # fmt: skip
            async with session.post(
                f"{scheme}://127.0.0.1:{port}/v1/authenticate", json=review, ssl=ctx
            ) as r:
                assert r.status == 503
                assert (await r.json())["reason"] == "ServiceUnavailable"
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def test_port_in_use_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        kubeconfig = unreachable_kubeconfig(tmp_path / "kc")
        code = main(["webhook", "--listen", f"127.0.0.1:{port}", "--kubeconfig", str(kubeconfig)])
    assert code == 1
    assert "address already in use" in capsys.readouterr().err.lower()
