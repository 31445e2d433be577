"""The GitHub provider against a stand-in for GitHub's OAuth endpoints and REST API
(HTTPS on 127.0.0.1): code and device login, pagination, groups, allowed
organizations, the GitHub Enterprise API path, and error mapping."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from config.schema import GitHubSettings
from config.tls import client_context
from gateway.identity.providers.base import (
    ExternalIdentity,
    InvalidCredentials,
    ProviderUnavailable,
)
from gateway.identity.providers.github import GitHubProvider
from tests.fakes.github_api import FakeGitHub, FakeUser

CALLBACK = "https://gateway.test:8443/v1/auth/github/callback"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=["", "/api/v3"], ids=["github.com", "enterprise"])
async def github(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FakeGitHub]:
    fake = FakeGitHub(tmp_path / "github", api_prefix=request.param)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def dotcom(tmp_path: Path) -> AsyncIterator[FakeGitHub]:
    fake = FakeGitHub(tmp_path / "dotcom")
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def alice(github: FakeGitHub) -> FakeUser:
    user = github.add_user(583231, "octocat", "The Octocat")
    herd = user.add_org(9001, "Herd")
    other = user.add_org(9002, "side-project")
    user.add_team(71, "ops", herd)
    user.add_team(72, "dev", herd)
    user.add_team(73, "maintainers", other)
    return user


@pytest.fixture
async def make_provider(github: FakeGitHub, clock: Clock) -> AsyncIterator[Any]:
    made: list[GitHubProvider] = []

    def make(**overrides: Any) -> GitHubProvider:
        values: dict[str, Any] = {
            "enabled": True,
            "client_id": github.client_id,
            "client_secret": github.client_secret,
            "web_url": github.web_url,
            "api_url": github.api_url,
            "ca_file": github.ca_file,
            "redirect_uri": CALLBACK,
            "request_timeout_s": 5.0,
        }
        values.update(overrides)
        provider = GitHubProvider(GitHubSettings(**values), clock=clock)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.close()


async def browser_login(github: FakeGitHub, url: str) -> dict[str, str]:
    ssl_ctx = client_context(ca_file=github.ca_file)
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, ssl=ssl_ctx, allow_redirects=False) as resp,
    ):
        assert resp.status == 302, await resp.text()
        location = resp.headers["Location"]
    assert location.startswith(CALLBACK + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def test_code_exchange_end_to_end(
    github: FakeGitHub, make_provider: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    alice(github)
    provider = make_provider()
    url = provider.authorization_url("st-1")
    query = parse_qs(urlsplit(url).query)
    assert url.startswith(github.web_url + "/login/oauth/authorize?")
    assert query["scope"] == ["read:org"]
    assert query["redirect_uri"] == [CALLBACK]
    back = await browser_login(github, url)
    assert back["state"] == "st-1"
    identity = await provider.exchange_code(back["code"])
    assert identity == ExternalIdentity(
        provider="github",
        principal_id="github_user://583231",
        login_name="octocat",
        display_name="The Octocat",
        groups=(
            "github_org://9001",
            "github_org://9002",
            "github_team://71",
            "github_team://72",
            "github_team://73",
        ),
    )
    assert github.redirect_uris == [CALLBACK]
    api_paths = [r["path"] for r in github.requests]
    assert api_paths == ["/user", "/user/orgs", "/user/teams"]
    for r in github.requests:
        assert r["headers"]["Authorization"].startswith("Bearer gho_")
        assert r["headers"]["X-GitHub-Api-Version"] == "2022-11-28"
    assert github.requests[1]["query"] == {"per_page": "100"}
    # The code is single use.
    with pytest.raises(InvalidCredentials, match="invalid or has expired"):
        await provider.exchange_code(back["code"])
    assert github.client_secret not in caplog.text
    assert "gho_" not in caplog.text


async def test_pagination(github: FakeGitHub, make_provider: Any) -> None:
    user = github.add_user(1, "many")
    orgs = [user.add_org(10_000 + i, f"org-{i}") for i in range(250)]
    for i in range(130):
        user.add_team(20_000 + i, f"team-{i}", orgs[i % 3])
    identity = await make_provider().refresh_with_token(github.token_for(user))
    org_groups = [g for g in identity.groups if g.startswith("github_org://")]
    team_groups = [g for g in identity.groups if g.startswith("github_team://")]
    assert org_groups == [f"github_org://{10_000 + i}" for i in range(250)]
    assert team_groups == [f"github_team://{20_000 + i}" for i in range(130)]
    assert github.hits["/user/orgs"] == 3
    assert github.hits["/user/teams"] == 2
    pages = [r["query"].get("page") for r in github.requests if r["path"] == "/user/orgs"]
    assert pages == [None, "2", "3"]


async def test_page_limit(
    github: FakeGitHub, make_provider: Any, caplog: pytest.LogCaptureFixture
) -> None:
    user = github.add_user(1, "many")
    for i in range(250):
        user.add_org(i + 1, f"org-{i}")
    identity = await make_provider(max_pages=2).refresh_with_token(github.token_for(user))
    assert len(identity.groups) == 200
    assert "max_pages" in caplog.text


async def test_team_implies_its_organization(github: FakeGitHub, make_provider: Any) -> None:
    user = github.add_user(5, "quiet")
    user.add_team(77, "sre", {"id": 4242, "login": "HiddenOrg"})
    identity = await make_provider().refresh_with_token(github.token_for(user))
    assert identity.groups == ("github_org://4242", "github_team://77")
    assert identity.display_name == "quiet"  # no name: the login


@pytest.mark.parametrize("allowed", [("herd",), ("9001",), ("HERD", "elsewhere")])
async def test_allowed_orgs_restrict_and_filter(
    github: FakeGitHub, make_provider: Any, allowed: tuple[str, ...]
) -> None:
    user = alice(github)
    identity = await make_provider(allowed_orgs=allowed).refresh_with_token(github.token_for(user))
    assert identity.groups == ("github_org://9001", "github_team://71", "github_team://72")


async def test_allowed_orgs_refuse_outsiders(github: FakeGitHub, make_provider: Any) -> None:
    alice(github)
    provider = make_provider(allowed_orgs=("elsewhere",))
    back = await browser_login(github, provider.authorization_url("s"))
    with pytest.raises(InvalidCredentials, match="not a member of an allowed organization"):
        await provider.exchange_code(back["code"])


async def test_enterprise_api_path_is_used(tmp_path: Path, clock: Clock) -> None:
    ghe = FakeGitHub(tmp_path / "ghe", api_prefix="/api/v3")
    await ghe.start()
    user = alice(ghe)
    settings = GitHubSettings(
        enabled=True,
        client_id=ghe.client_id,
        client_secret=ghe.client_secret,
        web_url=ghe.web_url,
        api_url=ghe.web_url + "/api/v3/",  # a trailing slash is tolerated
        ca_file=ghe.ca_file,
    )
    provider = GitHubProvider(settings, clock=clock)
    wrong = GitHubProvider(dataclasses.replace(settings, api_url=ghe.web_url), clock=clock)
    try:
        identity = await provider.refresh_with_token(ghe.token_for(user))
        assert identity.principal_id == "github_user://583231"
        assert ghe.hits["/user"] == 1
        with pytest.raises(ProviderUnavailable, match="api_url"):
            await wrong.refresh_with_token(ghe.token_for(user))
    finally:
        await provider.close()
        await wrong.close()
        await ghe.stop()


# ---------------------------------------------------------------------- errors


def _reset_in(seconds: int) -> str:
    return str(int(time.time()) + seconds)


@pytest.mark.parametrize(
    ("path", "failure", "error", "match"),
    [
        ("/user", {"status": 500}, ProviderUnavailable, "HTTP 500"),
        ("/user/teams", {"status": 502}, ProviderUnavailable, "HTTP 502"),
        ("/user/orgs", {"status": 503}, ProviderUnavailable, "HTTP 503"),
        (
            "/user",
            {
                "status": 403,
                "headers": {"x-ratelimit-remaining": "0", "x-ratelimit-reset": _reset_in(600)},
                "body": {"message": "API rate limit exceeded for user ID 583231."},
            },
            ProviderUnavailable,
            r"rate limit exceeded; it resets at \d\d:\d\d:\d\d UTC",
        ),
        (
            "/user/orgs",
            {"status": 429, "headers": {"retry-after": "60"}, "body": {"message": "slow"}},
            ProviderUnavailable,
            "rate limit exceeded; retry in 60 s",
        ),
        (
            "/user/teams",
            {
                "status": 403,
                "body": {"message": "You have exceeded a secondary rate limit."},
            },
            ProviderUnavailable,
            "secondary rate limit",
        ),
        (
            "/user/teams",
            {"status": 403, "body": {"message": "Resource protected by SAML enforcement."}},
            InvalidCredentials,
            "refused access",
        ),
        ("/user", {"status": 401}, InvalidCredentials, "did not accept"),
        ("/user/orgs", {"status": 200, "delay": 2.0}, ProviderUnavailable, "in time"),
    ],
)
async def test_error_mapping(
    github: FakeGitHub,
    make_provider: Any,
    path: str,
    failure: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    user = alice(github)
    github.fail(path, **failure)
    provider = make_provider(request_timeout_s=0.5)
    with pytest.raises(error, match=match):
        await provider.refresh_with_token(github.token_for(user))


async def test_revoked_token_is_invalid(github: FakeGitHub, make_provider: Any) -> None:
    user = alice(github)
    token = github.token_for(user)
    provider = make_provider()
    assert (await provider.refresh_with_token(token)).login_name == "octocat"
    github.revoke(token)
    with pytest.raises(InvalidCredentials):
        await provider.refresh_with_token(token)


async def test_wrong_client_secret_is_unavailable(github: FakeGitHub, make_provider: Any) -> None:
    alice(github)
    provider = make_provider(client_secret="nope")
    back = await browser_login(github, provider.authorization_url("s"))
    with pytest.raises(ProviderUnavailable, match="client id or secret"):
        await provider.exchange_code(back["code"])


async def test_unreachable_and_untrusted(github: FakeGitHub, make_provider: Any) -> None:
    user = alice(github)
    untrusted = make_provider(ca_file="")
    with pytest.raises(ProviderUnavailable, match="unreachable"):
        await untrusted.refresh_with_token(github.token_for(user))
    provider = make_provider()
    token = github.token_for(user)
    await github.stop()
    with pytest.raises(ProviderUnavailable, match="unreachable"):
        await provider.refresh_with_token(token)
    with pytest.raises(ProviderUnavailable):
        await provider.exchange_code("whatever")


# ---------------------------------------------------------------------- device flow


async def test_device_flow_end_to_end(dotcom: FakeGitHub, clock: Clock) -> None:
    alice(dotcom)
    provider = GitHubProvider(
        GitHubSettings(
            enabled=True,
            client_id=dotcom.client_id,
            web_url=dotcom.web_url,
            api_url=dotcom.api_url,
            ca_file=dotcom.ca_file,
        ),
        clock=clock,
    )
    try:
        flow = await provider.start_device_flow()
        assert flow.verification_uri == dotcom.web_url + "/login/device"
        assert flow.expires_in == 900
        assert await provider.poll_device_flow(flow.device_code) is None
        dotcom.approve(flow.user_code)
        identity = await provider.poll_device_flow(flow.device_code)
        assert identity is not None
        assert identity.principal_id == "github_user://583231"
        assert len(identity.groups) == 5
    finally:
        await provider.close()


async def test_device_flow_slow_down_and_denial(
    github: FakeGitHub, clock: Clock, make_provider: Any
) -> None:
    alice(github)
    provider = make_provider()
    flow = await provider.start_device_flow()
    github.force_slow_down = True
    assert await provider.poll_device_flow(flow.device_code) is None
    assert provider.device_poll_interval(flow.device_code) == 5
    polls = github.hits["/login/oauth/access_token"]
    github.approve(flow.user_code, deny=True)
    assert await provider.poll_device_flow(flow.device_code) is None  # too early
    assert github.hits["/login/oauth/access_token"] == polls
    clock.advance(5)
    with pytest.raises(InvalidCredentials, match="denied"):
        await provider.poll_device_flow(flow.device_code)
    with pytest.raises(InvalidCredentials, match="invalid or has expired"):
        await provider.poll_device_flow("0" * 40)
