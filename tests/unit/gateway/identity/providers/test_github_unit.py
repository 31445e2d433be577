"""GitHub provider pieces that need no server: settings, URLs, Link parsing, error mapping."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from config.errors import ConfigError
from config.loader import load
from config.schema import GatewaySettings, GitHubSettings
from gateway.identity.providers.base import InvalidCredentials, ProviderUnavailable
from gateway.identity.providers.github import GitHubProvider
from gateway.identity.providers.oauth import HttpResponse

GHE = {"web_url": "https://ghe.example.com", "api_url": "https://ghe.example.com/api/v3"}


def make(**overrides: Any) -> GitHubProvider:
    values: dict[str, Any] = {"enabled": True, "client_id": "Iv1.abc", "client_secret": "s"}
    values.update(overrides)
    return GitHubProvider(GitHubSettings(**values))


def response(status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> HttpResponse:
    multi: CIMultiDict[str] = CIMultiDict()
    for key, value in (headers or {}).items():
        multi.add(key, value)
    return HttpResponse(status, CIMultiDictProxy(multi), body)


def test_settings_from_yaml(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("file-secret\n")
    path = tmp_path / "g.yaml"
    path.write_text(
        "auth:\n"
        "  github:\n"
        "    enabled: true\n"
        "    client_id: Iv1.abc\n"
        f"    client_secret_file: {secret}\n"
        "    web_url: https://ghe.example.com\n"
        "    api_url: https://ghe.example.com/api/v3\n"
        "    allowed_orgs: [platform, '1234']\n"
        "    request_timeout: 3s\n"
    )
    s = load(GatewaySettings, path, environ={}).auth.github
    assert s.allowed_orgs == ("platform", "1234")
    assert s.request_timeout_s == 3
    provider = GitHubProvider(s)
    assert provider._client_secret == "file-secret"
    assert "file-secret" not in repr(s)


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"client_id": ""}, "auth.github.client_id"),
        ({"web_url": "http://github.com"}, "auth.github.web_url"),
        ({"api_url": "api.github.com"}, "auth.github.api_url"),
        ({"api_url": "https://ghe.example.com/api/v3?x=1"}, "auth.github.api_url"),
        ({"max_pages": 0}, "auth.github.max_pages"),
        ({"client_secret_file": "/nonexistent"}, "auth.github.client_secret_file"),
    ],
)
def test_bad_settings_refused(overrides: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        make(**overrides)
    assert info.value.path == path


def test_authorization_url() -> None:
    url = make(
        **GHE, redirect_uri="https://gw/cb", scopes=("read:org", "read:user")
    ).authorization_url("a b&c")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        "https://ghe.example.com/login/oauth/authorize"
    )
    query = parse_qs(parts.query)
    assert query == {
        "client_id": ["Iv1.abc"],
        "scope": ["read:org read:user"],
        "state": ["a b&c"],
        "allow_signup": ["false"],
        "redirect_uri": ["https://gw/cb"],
    }
    assert "redirect_uri" not in make().authorization_url("s")
    assert "redirect_uri=https%3A%2F%2Fother" in make().authorization_url("s", "https://other")


def test_next_page_parsing() -> None:
    provider = make(**GHE)
    base = "https://ghe.example.com/api/v3/user/teams"
    link = f'<{base}?page=3>; rel="next", <{base}?page=9>; rel="last", <{base}?page=1>; rel="first"'
    assert provider._next_page(response(200, {"Link": link})) == f"{base}?page=3"
    only_prev = f'<{base}?page=1>; rel="prev"'
    assert provider._next_page(response(200, {"Link": only_prev})) is None
    assert provider._next_page(response(200)) is None


def test_next_page_outside_the_api_is_refused() -> None:
    provider = make(**GHE)
    for foreign in (
        "https://evil.example.com/api/v3/user/teams?page=2",
        "https://ghe.example.com.evil.example/api/v3/user/teams?page=2",
        "https://ghe.example.com/other/user/teams?page=2",
    ):
        with pytest.raises(ProviderUnavailable, match="outside"):
            provider._next_page(response(200, {"Link": f'<{foreign}>; rel="next"'}))


@pytest.mark.parametrize(
    ("headers", "body", "match"),
    [
        ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "0"}, b"{}", "resets at 00:00:00"),
        ({"retry-after": "30"}, b"{}", "retry in 30 s"),
        ({}, b'{"message": "You have exceeded a secondary rate limit"}', "secondary"),
    ],
)
def test_rate_limit_messages(headers: dict[str, str], body: bytes, match: str) -> None:
    with pytest.raises(ProviderUnavailable, match=match):
        GitHubProvider._raise_rate_limited(response(403, headers, body))


def test_plain_403_is_not_a_rate_limit() -> None:
    GitHubProvider._raise_rate_limited(
        response(403, {"x-ratelimit-remaining": "4999"}, b'{"message": "Must have admin rights"}')
    )


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("bad_verification_code", InvalidCredentials),
        ("expired_token", InvalidCredentials),
        ("incorrect_device_code", InvalidCredentials),
        ("access_denied", InvalidCredentials),
        ("incorrect_client_credentials", ProviderUnavailable),
        ("redirect_uri_mismatch", ProviderUnavailable),
        ("device_flow_disabled", ProviderUnavailable),
        ("unsupported_grant_type", ProviderUnavailable),
        ("<script>", ProviderUnavailable),
    ],
)
def test_oauth_error_mapping(error: str, kind: type[Exception]) -> None:
    with pytest.raises(kind) as info:
        make()._raise_oauth_error({"error": error, "error_description": "x"})
    assert "<script>" not in str(info.value)


def test_web_status_errors() -> None:
    provider = make()
    provider._check_web_status(response(200))
    with pytest.raises(ProviderUnavailable, match="web_url"):
        provider._check_web_status(response(404))
    with pytest.raises(ProviderUnavailable, match="HTTP 500"):
        provider._check_web_status(response(500))
    reset = str(int(time.time()) + 60)
    with pytest.raises(ProviderUnavailable, match="rate limit"):
        provider._check_web_status(
            response(403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset})
        )
