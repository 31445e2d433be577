"""Settings precedence, units and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import loader
from config.errors import ConfigError
from config.schema import AgentSettings, GatewaySettings

EXAMPLES = Path(__file__).resolve().parents[3] / "config"


def test_defaults() -> None:
    s = loader.load(GatewaySettings, None, environ={})
    assert s.listen == "0.0.0.0:8443"
    assert s.state_dir == "./herdgate-data"
    assert s.tokens.session_ttl_s == 16 * 3600


def test_file_then_flags_then_env(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("listen: 1.2.3.4:1\nstate_dir: /a\ntokens: {session_ttl: 2h, max_ttl: 30d}\n")
    s = loader.load(
        GatewaySettings,
        path,
        flags={"listen": "5.6.7.8:2", "state_dir": None},
        environ={"HERDGATE_LISTEN": "9.9.9.9:3", "HERDGATE_TOKENS__MAX_TTL": "1d",
                 "HERDGATE_UNRELATED": "x", "HERDGATE_BOOTSTRAP_PASSWORD": "p"},
    )  # fmt: skip
    assert s.listen == "9.9.9.9:3"
    assert s.state_dir == "/a"
    assert s.tokens.session_ttl_s == 7200
    assert s.tokens.max_ttl_s == 86400


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("lisen: x\n", "lisen"),
        ("tokens: {session_tll: 1h}\n", "tokens.session_tll"),
        ("tokens: {session_ttl: soon}\n", "tokens.session_ttl"),
        ("tunnel: {stream_window: lots}\n", "tunnel.stream_window"),
        ("tunnel: {max_streams: many}\n", "tunnel.max_streams"),
        ("tls: 5\n", "tls"),
        ("- a\n", ""),
    ],
)
def test_errors_name_the_setting(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        loader.load(GatewaySettings, path, environ={})
    assert info.value.path.endswith(where) or where in str(info.value)


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("listen: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        loader.load(GatewaySettings, path, environ={})


def test_sizes_and_lists(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("tunnel: {stream_window: 128KiB}\nstore: {etcd_endpoints: [http://a:2379]}\n")
    s = loader.load(GatewaySettings, path, environ={"HERDGATE_STORE__ETCD_ENDPOINTS": "x,y"})
    assert s.tunnel.stream_window == 131072
    assert s.store.etcd_endpoints == ("x", "y")


def test_redacted_hides_tokens() -> None:
    s = loader.load(AgentSettings, None, flags={"token": "crt-x:secret"}, environ={})
    assert loader.redacted(s)["token"] == "<redacted>"


@pytest.mark.parametrize("name", ["gateway.yaml", "agent.yaml"])
def test_documented_examples_load(name: str) -> None:
    cls = GatewaySettings if name == "gateway.yaml" else AgentSettings
    loader.load(cls, EXAMPLES / name, environ={})
