"""Settings precedence, units and error messages."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from config import loader
from config.errors import ConfigError
from config.schema import AgentSettings, GatewaySettings, WebhookSettings

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
        ("access_sync: {recheck: 10ms}\n", "access_sync.recheck"),
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


EXAMPLE_CLASSES = {
    "gateway.yaml": GatewaySettings,
    "agent.yaml": AgentSettings,
    "webhook.yaml": WebhookSettings,
}


@pytest.mark.parametrize("name", sorted(EXAMPLE_CLASSES))
def test_documented_examples_load(name: str) -> None:
    loader.load(EXAMPLE_CLASSES[name], EXAMPLES / name, environ={})


def _setting_paths(cls: type[Any], prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    for field in dataclasses.fields(cls):
        path = prefix + loader.yaml_key(field)
        kind = hints[field.name]
        out += _setting_paths(kind, path + ".") if dataclasses.is_dataclass(kind) else [path]
    return out


def _yaml_paths(data: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in data.items():
        out.add(prefix + key)
        if isinstance(value, dict):
            out |= _yaml_paths(value, prefix + key + ".")
    return out


@pytest.mark.parametrize("name", sorted(EXAMPLE_CLASSES))
def test_every_setting_is_in_its_example(name: str) -> None:
    """Each key appears in the example file: as a key, or (secrets) as a commented line;
    Active Directory is documented by openldap's keys, which it shares."""
    text = (EXAMPLES / name).read_text()
    present = _yaml_paths(yaml.safe_load(text))
    commented = {line.strip()[2:].split(":")[0] for line in text.splitlines() if "# " in line}
    missing = [
        path
        for path in _setting_paths(EXAMPLE_CLASSES[name])
        if path not in present
        and path.rsplit(".", 1)[-1] not in commented
        and path.replace("auth.activedirectory.", "auth.openldap.") not in present
    ]
    assert not missing, f"{name} does not document {missing}"
