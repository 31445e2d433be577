"""The OpenLDAP and Active Directory provider against a real slapd (tests/fixtures/slapd.py).

Logins in both trees, groups (direct, posixGroup, memberOf, nested), refresh after
directory changes, disabled accounts, LDAPS and StartTLS, fail-over, an outage,
a server that never answers, and LDAP injection attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from config import loader
from config.schema import GatewaySettings, LDAPSettings
from gateway.identity.providers.base import (
    ExternalIdentity,
    InvalidCredentials,
    PasswordProvider,
    ProviderUnavailable,
)
from gateway.identity.providers.ldap import LDAPProvider, ProviderName
from tests.fixtures.slapd import (
    ACTIVEDIRECTORY,
    JSMITH_DN,
    OPENLDAP,
    PASSWORDS,
    Slapd,
    ad_group,
    ad_user,
    free_port,
    ol_group,
    ol_user,
    shared_slapd,
    ssha,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ALL_SECRETS = [*PASSWORDS.values(), OPENLDAP.service_password, ACTIVEDIRECTORY.service_password]


@pytest.fixture(scope="session")
def slapd(request: pytest.FixtureRequest) -> Slapd:
    return shared_slapd(request)


@contextlib.asynccontextmanager
async def ldap(name: ProviderName, settings: LDAPSettings) -> AsyncIterator[LDAPProvider]:
    provider = LDAPProvider(name, settings)
    try:
        yield provider
    finally:
        await provider.close()


def ol_groups(*cns: str) -> set[str]:
    return {f"openldap_group://{ol_group(cn)}" for cn in cns}


def ad_groups(*cns: str) -> set[str]:
    return {f"activedirectory_group://{ad_group(cn)}" for cn in cns}


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections (kernel backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


async def timed(coro: Any) -> tuple[float, Any]:
    start = time.monotonic()
    try:
        result = await coro
    except Exception as exc:  # noqa: BLE001 - returned for the caller to check
        return time.monotonic() - start, exc
    return time.monotonic() - start, result


# -- logins and groups -----------------------------------------------------------------


async def test_openldap_login(slapd: Slapd) -> None:
    async with ldap("openldap", slapd.openldap_settings()) as provider:
        checked: PasswordProvider = provider  # the protocol the gateway uses
        identity = await checked.authenticate("alice", PASSWORDS["alice"])
    assert identity == ExternalIdentity(
        provider="openldap",
        principal_id=f"openldap_user://{ol_user('alice')}",
        login_name="alice",
        display_name="Alice Liddell",
        # groupOfNames (direct), engineering (nested: developers is a member), posixGroup
        groups=tuple(sorted(ol_groups("developers", "ops", "engineering", "staff"))),
        enabled=True,
    )


async def test_login_name_is_the_directory_value(slapd: Slapd) -> None:
    async with ldap("openldap", slapd.openldap_settings()) as provider:
        identity = await provider.authenticate("ALICE", PASSWORDS["alice"])
    assert identity.login_name == "alice"
    assert identity.principal_id == f"openldap_user://{ol_user('alice')}"


async def test_posix_group_only_and_cycles(slapd: Slapd) -> None:
    async with ldap("openldap", slapd.openldap_settings()) as provider:
        dave = await provider.authenticate("dave", PASSWORDS["dave"])
        bob = await provider.authenticate("bob", PASSWORDS["bob"])
    assert set(dave.groups) == ol_groups("staff")
    # loop-a contains loop-b contains loop-a: resolved once each, no endless loop.
    assert set(bob.groups) == ol_groups("developers", "engineering", "loop-a", "loop-b")


async def test_dn_with_comma_and_parentheses(slapd: Slapd) -> None:
    async with ldap("openldap", slapd.openldap_settings()) as provider:
        identity = await provider.authenticate("jsmith", PASSWORDS["jsmith"])
        assert identity.principal_id == f"openldap_user://{JSMITH_DN}"
        assert set(identity.groups) == ol_groups("qa")
        assert identity.display_name == "Smith, John (QA)"
        refreshed = await provider.refresh(identity.principal_id)
    assert refreshed == identity


async def test_active_directory_login_and_nested_groups(slapd: Slapd) -> None:
    async with ldap("activedirectory", slapd.activedirectory_settings()) as provider:
        scully = await provider.authenticate("dscully", PASSWORDS["dscully"])
        skinner = await provider.authenticate("wskinner", PASSWORDS["wskinner"])
        krycek = await provider.authenticate("akrycek", PASSWORDS["akrycek"])
        # slapd is not AD: LDAP_MATCHING_RULE_IN_CHAIN was detected as unsupported.
        assert provider._in_chain is False
    assert scully.principal_id == f"activedirectory_user://{ad_user('Dana Scully')}"
    assert scully.login_name == "dscully"
    assert scully.display_name == "Dana Scully"
    assert set(scully.groups) == ad_groups("Agents", "FBI", "Government", "Loop A", "Loop B")
    assert set(skinner.groups) == ad_groups("FBI", "Government")
    assert krycek.groups == ()


async def test_active_directory_login_by_user_principal_name(slapd: Slapd) -> None:
    settings = slapd.activedirectory_settings(user_login_attribute="userPrincipalName")
    async with ldap("activedirectory", settings) as provider:
        identity = await provider.authenticate("dscully@corp.example.com", PASSWORDS["dscully"])
        assert identity.login_name == "dscully@corp.example.com"
        with pytest.raises(InvalidCredentials):
            await provider.authenticate("dscully", PASSWORDS["dscully"])


async def test_groups_from_member_of(slapd: Slapd) -> None:
    settings = slapd.openldap_settings(group_membership="memberof")
    async with ldap("openldap", settings) as provider:
        alice = await provider.authenticate("alice", PASSWORDS["alice"])
    # memberOf (maintained by the overlay) lists groupOfNames only; nesting is followed.
    assert set(alice.groups) == ol_groups("developers", "ops", "engineering")

    settings = slapd.activedirectory_settings(group_membership="memberof")
    async with ldap("activedirectory", settings) as provider:
        scully = await provider.authenticate("dscully", PASSWORDS["dscully"])
    assert set(scully.groups) == ad_groups("Agents", "FBI", "Government", "Loop A", "Loop B")


async def test_nesting_switched_off_or_bounded(slapd: Slapd) -> None:
    async with ldap("activedirectory", slapd.activedirectory_settings(nested_groups="off")) as p:
        scully = await p.authenticate("dscully", PASSWORDS["dscully"])
    assert set(scully.groups) == ad_groups("Agents", "Loop A")

    settings = slapd.activedirectory_settings(nested_groups_max_depth=1)
    async with ldap("activedirectory", settings) as p:
        scully = await p.authenticate("dscully", PASSWORDS["dscully"])
    assert set(scully.groups) == ad_groups("Agents", "Loop A", "FBI", "Loop B")


async def test_group_searches_are_paged(slapd: Slapd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.identity.providers.ldap.PAGE_SIZE", 1)
    async with ldap("activedirectory", slapd.activedirectory_settings()) as provider:
        scully = await provider.authenticate("dscully", PASSWORDS["dscully"])
    assert set(scully.groups) == ad_groups("Agents", "FBI", "Government", "Loop A", "Loop B")


async def test_user_filter_scope_and_group_filter(slapd: Slapd) -> None:
    settings = slapd.openldap_settings(user_filter="(mail=*@example.org)")
    async with ldap("openldap", settings) as provider:
        await provider.authenticate("alice", PASSWORDS["alice"])
        with pytest.raises(InvalidCredentials):
            await provider.authenticate("bob", PASSWORDS["bob"])  # no mail
        assert await provider.refresh(f"openldap_user://{ol_user('bob')}") is None

    settings = slapd.openldap_settings(user_search_base=OPENLDAP.suffix, user_search_scope="one")
    async with ldap("openldap", settings) as provider:
        with pytest.raises(InvalidCredentials):
            await provider.authenticate("alice", PASSWORDS["alice"])  # two levels down
        assert await provider.refresh(f"openldap_user://{ol_user('alice')}") is None

    # Only groups matching group_filter count, and nesting passes only through them.
    settings = slapd.openldap_settings(group_filter="(|(cn=dev*)(cn=staff))")
    async with ldap("openldap", settings) as provider:
        alice = await provider.authenticate("alice", PASSWORDS["alice"])
    assert set(alice.groups) == ol_groups("developers", "staff")


async def test_forcing_in_chain_on_openldap_finds_nothing(slapd: Slapd) -> None:
    """Why ``auto`` matters: slapd does not implement the AD rule and matches nothing."""
    settings = slapd.activedirectory_settings(nested_groups="in_chain")
    async with ldap("activedirectory", settings) as provider:
        scully = await provider.authenticate("dscully", PASSWORDS["dscully"])
    assert scully.groups == ()


# -- wrong passwords, unknown users, injection ---------------------------------------


@pytest.mark.parametrize(
    ("name", "username", "password"),
    [
        ("openldap", "alice", "wrong"),
        ("openldap", "alice", PASSWORDS["bob"]),
        ("openldap", "nobody", "whatever"),
        ("activedirectory", "dscully", "wrong"),
        ("activedirectory", "nobody", "whatever"),
        ("activedirectory", "svc-herdgate", ACTIVEDIRECTORY.service_password),  # not in users
    ],
)
async def test_refused(slapd: Slapd, name: ProviderName, username: str, password: str) -> None:
    async with ldap(name, slapd.settings(OPENLDAP if name == "openldap" else ACTIVEDIRECTORY)) as p:
        with pytest.raises(InvalidCredentials) as info:
            await p.authenticate(username, password)
    assert str(info.value) == "invalid user name or password"


async def test_unknown_user_does_the_same_work(slapd: Slapd) -> None:
    async with ldap("openldap", slapd.openldap_settings()) as provider:
        binds: list[str] = []
        real_bind = provider._bind_as

        def counting_bind(dn: str, password: str) -> bool:
            binds.append(dn)
            return real_bind(dn, password)

        provider._bind_as = counting_bind  # type: ignore[method-assign]
        await provider.authenticate("alice", PASSWORDS["alice"])  # warm the pool
        wrong: list[float] = []
        unknown: list[float] = []
        for _ in range(15):
            elapsed, exc = await timed(provider.authenticate("alice", "not-her-password"))
            assert isinstance(exc, InvalidCredentials)
            wrong.append(elapsed)
            elapsed, exc = await timed(provider.authenticate("mallory", "not-her-password"))
            assert isinstance(exc, InvalidCredentials)
            unknown.append(elapsed)
    # Every attempt binds once: the unknown user against a DN that does not exist.
    assert len(binds) == 31
    assert binds[2].startswith("cn=herdgate-no-such-user-")
    ratio = statistics.median(unknown) / statistics.median(wrong)
    assert 0.33 < ratio < 3, (wrong, unknown)


INJECTIONS = [
    "*",
    "al*",
    "*ice",
    "alice)(uid=*",
    "*)(|(uid=*",
    "alice)(|(objectClass=*)",
    "alice\x00",
    "alice\\",
    "alice\\2a",
]


@pytest.mark.parametrize("username", INJECTIONS)
async def test_injection_attempts_fail(slapd: Slapd, username: str) -> None:
    """Each would match alice (or everyone) if the name were not escaped."""
    async with ldap("openldap", slapd.openldap_settings()) as provider:
        with pytest.raises(InvalidCredentials):
            await provider.authenticate(username, PASSWORDS["alice"])


@pytest.mark.parametrize("username", ["dscu*", "*", "dscully)(sAMAccountName=*", "*)(|(cn=*"])
async def test_injection_attempts_fail_on_active_directory(slapd: Slapd, username: str) -> None:
    async with ldap("activedirectory", slapd.activedirectory_settings()) as provider:
        with pytest.raises(InvalidCredentials):
            await provider.authenticate(username, PASSWORDS["dscully"])


async def test_empty_password_never_binds(slapd: Slapd) -> None:
    async with ldap("openldap", slapd.openldap_settings()) as provider:
        for username in ["alice", "cn=admin,dc=example,dc=org", ""]:
            with pytest.raises(InvalidCredentials):
                await provider.authenticate(username, "")
        assert provider.pool_stats()["created"] == 0  # nothing was sent


# -- disabled accounts ---------------------------------------------------------------


async def test_disabled_active_directory_account(slapd: Slapd) -> None:
    mulder = ad_user("Fox Mulder")
    async with ldap("activedirectory", slapd.activedirectory_settings()) as provider:
        # slapd accepts the bind (it knows nothing of userAccountControl); herdgate refuses.
        with pytest.raises(InvalidCredentials):
            await provider.authenticate("fmulder", PASSWORDS["fmulder"])
        refreshed = await provider.refresh(f"activedirectory_user://{mulder}")
        assert refreshed is not None
        assert refreshed.enabled is False
        assert set(refreshed.groups) == ad_groups("Agents", "FBI", "Government")

        with slapd.attribute_set(mulder, "userAccountControl", ["512"]):
            identity = await provider.authenticate("fmulder", PASSWORDS["fmulder"])
            assert identity.enabled
        scully = f"activedirectory_user://{ad_user('Dana Scully')}"
        with slapd.attribute_set(ad_user("Dana Scully"), "userAccountControl", ["66050"]):
            refreshed = await provider.refresh(scully)
            assert refreshed is not None
            assert not refreshed.enabled
            with pytest.raises(InvalidCredentials):
                await provider.authenticate("dscully", PASSWORDS["dscully"])


async def test_locked_openldap_account(slapd: Slapd) -> None:
    settings = slapd.openldap_settings(disabled_attribute="pwdAccountLockedTime")
    async with ldap("openldap", settings) as provider:
        with pytest.raises(InvalidCredentials):
            await provider.authenticate("carol", PASSWORDS["carol"])
        carol = await provider.refresh(f"openldap_user://{ol_user('carol')}")
        assert carol is not None
        assert not carol.enabled
        alice = await provider.authenticate("alice", PASSWORDS["alice"])
        assert alice.enabled


async def test_custom_disabled_attribute(slapd: Slapd) -> None:
    settings = slapd.openldap_settings(disabled_attribute="employeeType", disabled_value="disabled")
    async with ldap("openldap", settings) as provider:
        await provider.authenticate("bob", PASSWORDS["bob"])
        with slapd.attribute_set(ol_user("bob"), "employeeType", ["contractor", "Disabled"]):
            with pytest.raises(InvalidCredentials):
                await provider.authenticate("bob", PASSWORDS["bob"])
            bob = await provider.refresh(f"openldap_user://{ol_user('bob')}")
            assert bob is not None
            assert not bob.enabled


# -- refresh -------------------------------------------------------------------------


async def test_refresh_sees_group_changes(slapd: Slapd) -> None:
    async with ldap("openldap", slapd.openldap_settings()) as provider:
        alice = await provider.authenticate("alice", PASSWORDS["alice"])
        assert await provider.refresh(alice.principal_id) == alice
        with slapd.member_removed(ol_group("developers"), ol_user("alice")):
            refreshed = await provider.refresh(alice.principal_id)
            assert refreshed is not None
            # engineering came through developers
            assert set(refreshed.groups) == ol_groups("ops", "staff")
        with slapd.member_removed(ol_group("staff"), "alice", attribute="memberUid"):
            refreshed = await provider.refresh(alice.principal_id)
            assert refreshed is not None
            assert set(refreshed.groups) == ol_groups("developers", "engineering", "ops")
        assert await provider.refresh(alice.principal_id) == alice


async def test_refresh_sees_nested_group_changes(slapd: Slapd) -> None:
    scully = f"activedirectory_user://{ad_user('Dana Scully')}"
    async with ldap("activedirectory", slapd.activedirectory_settings()) as provider:
        with slapd.member_removed(ad_group("FBI"), ad_group("Agents")):
            refreshed = await provider.refresh(scully)
            assert refreshed is not None
            assert set(refreshed.groups) == ad_groups("Agents", "Loop A", "Loop B")
        with slapd.member_removed(ad_group("Agents"), ad_user("Dana Scully")):
            refreshed = await provider.refresh(scully)
            assert refreshed is not None
            assert set(refreshed.groups) == ad_groups("Loop A", "Loop B")
        refreshed = await provider.refresh(scully)
        assert refreshed is not None
        assert set(refreshed.groups) == ad_groups("Agents", "FBI", "Government", "Loop A", "Loop B")


async def test_refresh_of_a_deleted_user(slapd: Slapd) -> None:
    dn = ol_user("temp")
    slapd.add_entry(
        dn,
        ["inetOrgPerson"],
        {"uid": "temp", "cn": "Temp", "sn": "Temp", "userPassword": ssha("temp-password")},
    )
    try:
        slapd.add_member(ol_group("ops"), dn)
        async with ldap("openldap", slapd.openldap_settings()) as provider:
            identity = await provider.authenticate("temp", "temp-password")
            assert set(identity.groups) == ol_groups("ops")
            slapd.delete_entry(dn)  # memberof-refint removes it from ops as well
            assert await provider.refresh(identity.principal_id) is None
            with pytest.raises(InvalidCredentials):
                await provider.authenticate("temp", "temp-password")
    finally:
        with contextlib.suppress(RuntimeError):
            slapd.delete_entry(dn)
    assert ol_user("temp") not in slapd.get_attribute(ol_group("ops"), "member")


async def test_refresh_outside_the_user_base(slapd: Slapd) -> None:
    async with ldap("openldap", slapd.openldap_settings()) as provider:
        assert await provider.refresh(f"openldap_user://{OPENLDAP.service_dn}") is None
        assert await provider.refresh(f"openldap_user://{ol_group('ops')}") is None
        assert (
            await provider.refresh("openldap_user://uid=ghost,ou=people,dc=example,dc=org") is None
        )
        assert await provider.refresh("openldap_user://uid=x,ou=nowhere,dc=example,dc=org") is None


# -- TLS -----------------------------------------------------------------------------


async def test_ldaps_with_the_ca(slapd: Slapd) -> None:
    for url in (slapd.ldaps_url, f"ldaps://localhost:{slapd.ldaps_port}"):
        async with ldap("openldap", slapd.openldap_settings(servers=(url,))) as provider:
            identity = await provider.authenticate("alice", PASSWORDS["alice"])
            assert identity.login_name == "alice"


async def test_start_tls_with_the_ca(slapd: Slapd) -> None:
    async with ldap("activedirectory", slapd.activedirectory_settings(start_tls=True)) as p:
        identity = await p.authenticate("dscully", PASSWORDS["dscully"])
        assert identity.login_name == "dscully"
        pooled = p._pool._idle[0][1]
        assert pooled.tls_started


@pytest.mark.parametrize("mode", ["ldaps", "start_tls"])
async def test_tls_with_the_wrong_ca_fails(slapd: Slapd, mode: str) -> None:
    settings = slapd.openldap_settings(
        servers=(slapd.ldaps_url if mode == "ldaps" else slapd.url,),
        start_tls=mode == "start_tls",
        ca_file=str(slapd.wrong_ca_file),
    )
    async with ldap("openldap", settings) as provider:
        elapsed, exc = await timed(provider.authenticate("alice", PASSWORDS["alice"]))
    assert isinstance(exc, ProviderUnavailable)
    assert str(exc) == "openldap: LDAP server unavailable (TLS handshake failed)"
    assert elapsed < 2

    insecure = slapd.openldap_settings(
        servers=(slapd.ldaps_url,), ca_file=str(slapd.wrong_ca_file), insecure_skip_tls_verify=True
    )
    async with ldap("openldap", insecure) as provider:
        await provider.authenticate("alice", PASSWORDS["alice"])


# -- fail-over, outages, time bounds -------------------------------------------------


@pytest.mark.parametrize("strategy", ["first", "round_robin", "random"])
async def test_fail_over_from_a_dead_server(slapd: Slapd, strategy: str) -> None:
    dead = f"ldap://127.0.0.1:{free_port()}"
    settings = slapd.openldap_settings(
        servers=(dead, slapd.ldaps_url), server_strategy=strategy, pool_size=2
    )
    async with ldap("openldap", settings) as provider:
        for _ in range(6):
            identity = await provider.authenticate("alice", PASSWORDS["alice"])
            assert identity.login_name == "alice"
        # ldap3's ServerPool remembers every connection; herdgate forgets closed ones.
        assert provider.pool_stats()["server_pool_states"] <= 2
        if strategy == "first":
            # The dead server is skipped for server_retry_s (ServerPool's exhaust).
            states = provider._server._pool_state.server_states
            assert [s.available for s in states] == [False, True]


async def test_all_servers_dead(slapd: Slapd) -> None:
    dead = tuple(f"ldap://127.0.0.1:{free_port()}" for _ in range(3))
    async with ldap("openldap", slapd.openldap_settings(servers=dead)) as provider:
        elapsed, exc = await timed(provider.authenticate("alice", PASSWORDS["alice"]))
    assert isinstance(exc, ProviderUnavailable)
    assert str(exc) == "openldap: LDAP server unavailable (no server accepted a connection)"
    assert elapsed < 1.5


async def test_all_servers_down_then_back(slapd: Slapd) -> None:
    """Servers marked down are skipped for server_retry_s, unless all of them are."""
    settings = slapd.openldap_settings(
        servers=(slapd.url, slapd.ldaps_url), server_retry_s=300, pool_size=1
    )
    async with ldap("openldap", settings) as provider:
        alice = await provider.authenticate("alice", PASSWORDS["alice"])
        with slapd.stopped():
            for _ in range(2):
                with pytest.raises(ProviderUnavailable):
                    await provider.refresh(alice.principal_id)
        assert await provider.refresh(alice.principal_id) == alice


async def test_slapd_stopped_then_back(slapd: Slapd) -> None:
    async with ldap("activedirectory", slapd.activedirectory_settings()) as provider:
        scully = await provider.authenticate("dscully", PASSWORDS["dscully"])
        assert provider.pool_stats()["idle"] == 1
        with slapd.stopped():
            for call in (
                provider.authenticate("dscully", PASSWORDS["dscully"]),
                provider.refresh(scully.principal_id),
            ):
                elapsed, exc = await timed(call)
                assert isinstance(exc, ProviderUnavailable), exc
                assert str(exc).startswith("activedirectory: LDAP server unavailable")
                assert elapsed < 1.5
        # The pooled connection died with slapd; a fresh one replaces it.
        assert await provider.refresh(scully.principal_id) == scully
        assert await provider.authenticate("dscully", PASSWORDS["dscully"]) == scully


async def test_a_server_that_never_answers(slapd: Slapd) -> None:
    with silent_server() as port:
        settings = slapd.openldap_settings(
            servers=(f"ldap://127.0.0.1:{port}",), operation_timeout_s=1, request_timeout_s=10
        )
        async with ldap("openldap", settings) as provider:
            ticks: list[float] = []

            async def ticker() -> None:
                while True:
                    ticks.append(time.monotonic())
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(ticker())
            elapsed, exc = await timed(provider.authenticate("alice", PASSWORDS["alice"]))
            task.cancel()
    assert isinstance(exc, ProviderUnavailable)
    assert str(exc) == "openldap: LDAP server unavailable (no answer in time)"
    assert 0.9 < elapsed < 3
    # The event loop kept running while ldap3 waited in its thread.
    assert max(b - a for a, b in itertools.pairwise(ticks)) < 0.5


async def test_request_timeout_bounds_the_whole_call(slapd: Slapd) -> None:
    with silent_server() as port:
        settings = slapd.openldap_settings(
            servers=(f"ldap://127.0.0.1:{port}",), operation_timeout_s=5, request_timeout_s=0.5
        )
        async with ldap("openldap", settings) as provider:
            elapsed, exc = await timed(provider.refresh(f"openldap_user://{ol_user('alice')}"))
    assert isinstance(exc, ProviderUnavailable)
    assert str(exc) == "openldap: the LDAP server did not answer within 0.5s"
    assert elapsed < 1.5


async def test_concurrent_logins_share_a_bounded_pool(slapd: Slapd) -> None:
    async with ldap("openldap", slapd.openldap_settings(pool_size=3)) as provider:
        users = ["alice", "bob", "dave", "jsmith"] * 8
        results = await asyncio.gather(*(provider.authenticate(u, PASSWORDS[u]) for u in users))
        assert [r.login_name for r in results] == users
        stats = provider.pool_stats()
        assert stats["created"] <= 3
        assert stats["idle"] <= 3
        assert stats["server_pool_states"] == 0  # one server: no ldap3 ServerPool


# -- service account ------------------------------------------------------------------


async def test_wrong_service_password(slapd: Slapd, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = slapd.openldap_settings(service_account_password="not-the-password")
    async with ldap("openldap", settings) as provider:
        with pytest.raises(ProviderUnavailable) as info:
            await provider.authenticate("alice", PASSWORDS["alice"])
    assert str(info.value) == "openldap: the service account cannot bind (invalidCredentials)"
    assert "not-the-password" not in caplog.text


async def test_service_password_from_file_and_environment(slapd: Slapd, tmp_path: Path) -> None:
    secret = tmp_path / "ldap-password"
    secret.write_text(OPENLDAP.service_password + "\n")
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "auth:\n"
        "  openldap:\n"
        "    enabled: true\n"
        f"    servers: [{slapd.url}]\n"
        "    start_tls: true\n"
        f"    ca_file: {slapd.ca_file}\n"
        f"    service_account_dn: {OPENLDAP.service_dn}\n"
        f"    service_account_password_file: {secret}\n"
        f"    user_search_base: {OPENLDAP.users}\n"
        f"    group_search_base: {OPENLDAP.groups}\n"
        "  activedirectory:\n"
        "    enabled: true\n"
        f"    servers: [{slapd.ldaps_url}]\n"
        f"    ca_file: {slapd.ca_file}\n"
        f"    service_account_dn: {ACTIVEDIRECTORY.service_dn}\n"
        f"    user_search_base: {ACTIVEDIRECTORY.suffix}\n"
        "    request_timeout: 5s\n"
    )
    environ = {
        "HERDGATE_AUTH__ACTIVEDIRECTORY__SERVICE_ACCOUNT_PASSWORD": ACTIVEDIRECTORY.service_password
    }
    auth = loader.load(GatewaySettings, config, environ=environ).auth
    async with ldap("openldap", auth.openldap) as provider:
        alice = await provider.authenticate("alice", PASSWORDS["alice"])
        assert "openldap_group://cn=ops,ou=groups,dc=example,dc=org" in alice.groups
    async with ldap("activedirectory", auth.activedirectory) as provider:
        scully = await provider.authenticate("dscully", PASSWORDS["dscully"])
        assert set(scully.groups) == ad_groups("Agents", "FBI", "Government", "Loop A", "Loop B")


async def test_secrets_never_logged(slapd: Slapd, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with ldap("openldap", slapd.openldap_settings()) as provider:
        await provider.authenticate("alice", PASSWORDS["alice"])
        with pytest.raises(InvalidCredentials):
            await provider.authenticate("alice", PASSWORDS["bob"])
        with pytest.raises(InvalidCredentials):
            await provider.authenticate("nobody", PASSWORDS["carol"])
    async with ldap("activedirectory", slapd.activedirectory_settings()) as provider:
        with pytest.raises(InvalidCredentials):
            await provider.authenticate("fmulder", PASSWORDS["fmulder"])
    with slapd.stopped():
        async with ldap("openldap", slapd.openldap_settings()) as provider:
            with pytest.raises(ProviderUnavailable):
                await provider.authenticate("alice", PASSWORDS["dave"])
    assert caplog.records
    for secret in ALL_SECRETS:
        assert secret not in caplog.text


async def test_closed_provider(slapd: Slapd) -> None:
    provider = LDAPProvider("openldap", slapd.openldap_settings())
    await provider.authenticate("alice", PASSWORDS["alice"])
    await provider.close()
    await provider.close()
    with pytest.raises(ProviderUnavailable, match="shut down"):
        await provider.authenticate("alice", PASSWORDS["alice"])
