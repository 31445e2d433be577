"""Configuration errors say where the bad value came from: file and line, variable, flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import loader
from config.errors import ConfigError, Origin
from config.schema import GatewaySettings


def _error(
    tmp_path: Path, text: str, environ: dict[str, str] | None = None, **flags: object
) -> ConfigError:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        loader.load(GatewaySettings, path, flags=flags, environ=environ or {})
    return info.value


def test_unknown_key_two_levels_deep(tmp_path: Path) -> None:
    text = "listen: 0.0.0.0:8443\nauth:\n  oidc:\n    enabled: true\n    isuer_url: https://x\n"
    err = _error(tmp_path, text)
    assert (err.path, err.file, err.line) == (
        "auth.oidc.isuer_url",
        str(tmp_path / "gateway.yaml"),
        5,
    )
    assert str(err) == (
        f"auth.oidc.isuer_url: unknown setting; did you mean issuer_url? ({err.file} line 5)"
    )


def test_unknown_key_without_a_close_match_lists_the_known_ones(tmp_path: Path) -> None:
    err = _error(tmp_path, "tls:\n  cert_file: ''\n  colour: blue\n")
    assert err.path == "tls.colour" and err.line == 3
    assert "unknown setting; known: ca_file, cert_file, key_file" in str(err)


def test_the_first_unknown_key_in_the_file_is_reported(tmp_path: Path) -> None:
    err = _error(tmp_path, "zzz: 1\naaa: 2\n")
    assert (err.path, err.line) == ("zzz", 1)


@pytest.mark.parametrize(
    ("text", "path", "line", "message"),
    [
        ("listen: ':1'\n\nworkers: many\n", "workers", 3, "expected an integer, got 'many'"),
        ("workers: 1.5\n", "workers", 1, "expected an integer, got 1.5"),
        (
            "tokens: {session_ttl: forever}\n",
            "tokens.session_ttl",
            1,
            "expected a duration such as 30s, 16h or 30d, got 'forever'",
        ),
        (
            "tokens:\n  default_ttl: 1d\n  session_ttl: forever\n",
            "tokens.session_ttl",
            3,
            "expected a duration such as 30s, 16h or 30d, got 'forever'",
        ),
        ("tls: 5\n", "tls", 1, "expected a mapping, got 5"),
        ("server_url: [a]\n", "server_url", 1, "expected a string, got a list"),
        ("auth:\n  oidc:\n    enabled: maybe\n", "auth.oidc.enabled", 3, "expected true or false"),
        (
            "store:\n  etcd_endpoints:\n    - {url: x}\n",
            "store.etcd_endpoints",
            2,
            "expected a list of strings, got a mapping in it",
        ),
    ],
)
def test_wrong_types_name_key_file_and_line(
    tmp_path: Path, text: str, path: str, line: int, message: str
) -> None:
    err = _error(tmp_path, text)
    assert (err.path, err.line) == (path, line)
    assert err.file == str(tmp_path / "gateway.yaml")
    assert str(err).startswith(f"{path}: {message}")
    assert str(err).endswith(f"({err.file} line {line})")


def test_a_key_set_twice_is_an_error(tmp_path: Path) -> None:
    err = _error(tmp_path, "tokens:\n  session_ttl: 1h\n  session_ttl: 2h\n")
    assert (err.path, err.line) == ("tokens.session_ttl", 3)
    assert "set twice (first on line 2)" in str(err)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    err = _error(tmp_path, "listen: ':1'\ntls:\n  cert_file: [\n")
    assert err.path == "" and err.line == 4
    assert str(err).startswith("invalid YAML: ")


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    err = _error(tmp_path, "- a\n")
    assert str(err) == f"the top level must be a mapping ({tmp_path / 'gateway.yaml'} line 1)"


def test_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        loader.load(GatewaySettings, tmp_path / "nope.yaml", environ={})
    assert str(info.value) == f"cannot read {tmp_path / 'nope.yaml'}: No such file or directory"


def test_environment_values_name_their_variable(tmp_path: Path) -> None:
    environ = {"HERDGATE_TOKENS__SESSION_TTL": "forever"}
    err = _error(tmp_path, "tokens:\n  session_ttl: 1h\n", environ)  # the variable wins
    assert err.path == "tokens.session_ttl" and err.file == ""
    assert str(err).endswith("got 'forever' (from HERDGATE_TOKENS__SESSION_TTL)")
    err = _error(tmp_path, "", {"HERDGATE_TLS": "x"})
    assert str(err) == "tls: expected a mapping, got 'x' (from HERDGATE_TLS)"


def test_flag_values_say_so(tmp_path: Path) -> None:
    err = _error(tmp_path, "workers: 2\n", workers="many")
    assert str(err) == "workers: expected an integer, got 'many' (from the command line)"


def test_later_errors_are_located_by_the_sources(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("workers: 0\nauth:\n  oidc:\n    enabled: true\n")
    settings, sources = loader.load_with_sources(
        GatewaySettings, path, {"listen": "x"}, {"HERDGATE_TLS__CERT_FILE": "/c"}
    )
    assert settings.workers == 0
    assert sources.find("workers") == Origin(str(path), 1)
    assert sources.find("listen") == Origin(source="the command line")
    assert sources.find("tls.cert_file") == Origin(source="HERDGATE_TLS__CERT_FILE")
    # Not set anywhere: the closest parent that is.
    err = sources.locate(ConfigError("auth.oidc.client_id", "is required"))
    assert str(err) == f"auth.oidc.client_id: is required ({path} line 3)"
    assert str(sources.locate(ConfigError("state_dir", "bad"))) == "state_dir: bad"
    # A location known already is kept.
    err = ConfigError("workers", "must be at least 1", source="HERDGATE_WORKERS")
    assert str(sources.locate(err)) == "workers: must be at least 1 (from HERDGATE_WORKERS)"


def test_errors_without_origin_read_as_before() -> None:
    assert str(ConfigError("listen", "expected HOST:PORT")) == "listen: expected HOST:PORT"
    assert str(ConfigError("", "something")) == "something"
    assert ConfigError("a.b", "c", file="f.yaml", line=7).args == ("a.b", "c")
