"""OpenLDAP and Active Directory as password providers (ldap3).

Login: take a bound service-account connection from the pool, search the one
user whose login attribute (``uid``, ``sAMAccountName``, ``userPrincipalName``)
equals the typed name, check the password by binding as that entry's DN on a
fresh connection, refuse disabled accounts, then read the groups with the
service account. An unknown or ambiguous name does the same work (a bind to a
DN that does not exist), so it takes about as long as a wrong password. Empty
passwords are refused before anything is sent: a simple bind with a DN and an
empty password is an "unauthenticated bind" that many servers accept.

Groups: searched (``member`` holding the user's DN, ``memberUid`` holding the
login name) or read from the user's ``memberOf``. Nested groups use Active
Directory's LDAP_MATCHING_RULE_IN_CHAIN when the server announces itself as AD;
other servers (OpenLDAP ignores the rule and matches nothing) get the nesting
resolved here, breadth first, bounded and cycle-safe.

ldap3 is synchronous: every LDAP exchange runs in this provider's thread pool
(``pool_size`` threads), bounded by ``request_timeout_s`` on the event loop and
by socket timeouts in the thread. Network and server failures become
``ProviderUnavailable`` naming the provider. Passwords are never logged (nor
ldap3 ``Connection`` objects, whose repr shows the password).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from config.schema import LDAPSettings
from gateway.identity.providers import ldap3_compat
from gateway.identity.providers import ldap_filters as filters
from gateway.identity.providers.base import (
    ExternalIdentity,
    InvalidCredentials,
    ProviderUnavailable,
)
from gateway.identity.providers.ldap3_compat import (
    ANONYMOUS,
    BASE,
    FIRST,
    LEVEL,
    NO_ATTRIBUTES,
    NONE,
    RANDOM,
    ROUND_ROBIN,
    SIMPLE,
    SUBTREE,
    SYNC,
    Connection,
    LDAPException,
    Server,
    ServerPool,
    set_config_parameter,
)
from gateway.identity.providers.ldap_connections import (
    ConnectionPool,
    ContextTls,
    Entry,
    LDAPFailure,
    close_connection,
    failure_reason,
    tls_context,
)
from gateway.identity.providers.ldap_model import (
    canonical_dn,
    dn_key,
    is_under,
    parse_dn,
    principal_dn,
    principal_id,
    resolve_nested,
    supports_in_chain,
)
from gateway.identity.providers.ldap_settings import (
    resolve_settings,
)
from gateway.telemetry import metrics

logger = logging.getLogger(__name__)

ProviderName = Literal["openldap", "activedirectory"]
T = TypeVar("T")

LOGIN_FAILED = "invalid user name or password"
MAX_USERNAME = 256
PAGE_SIZE = 500
MAX_PAGES = 200
NESTING_BATCH = 50

# Result codes (RFC 4511) of a user bind that mean "not this password / not now
# for this account", as opposed to a server failure.
_BIND_REFUSED = {
    19,  # constraintViolation (password policy)
    32,  # noSuchObject
    48,  # inappropriateAuthentication
    49,  # invalidCredentials (AD adds "data 52e/530/531/532/533/701/773/775")
    50,  # insufficientAccessRights
    53,  # unwillingToPerform
}
_SUCCESS, _SIZE_LIMIT, _REFERRAL, _NO_SUCH_OBJECT = 0, 4, 10, 32
_PAGED_RESULTS = "1.2.840.113556.1.4.319"


class LDAPProvider:
    """A :class:`~gateway.identity.providers.base.PasswordProvider` for OpenLDAP or AD."""

    def __init__(self, name: ProviderName, settings: LDAPSettings) -> None:
        self.name: str = name
        self.config = resolve_settings(name, settings)
        cfg = self.config
        self._tls = ContextTls(tls_context(cfg.ca_file, cfg.insecure_skip_tls_verify))
        self._servers: list[Server] = []
        self._server: Server | ServerPool = self._make_servers()
        ldap3_compat.AVAILABILITY.holds()  # the start-up check of ldap3's internals
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=cfg.pool_size, thread_name_prefix=f"herdgate-{name}"
        )
        self._pool = ConnectionPool(
            self._new_service_connection, cfg.pool_size, cfg.pool_idle_timeout_s
        )
        self._in_chain: bool | None = {"in_chain": True, "auto": None}.get(cfg.nested_groups, False)
        # An unknown user name is checked against this DN, which does not exist.
        self._decoy_dn = f"cn=herdgate-no-such-user-{secrets.token_hex(8)},{cfg.user_search_base}"
        self._user_attributes = sorted(
            {
                a
                for a in (
                    cfg.user_login_attribute,
                    cfg.user_display_name_attribute,
                    cfg.disabled.attribute,
                    "memberOf" if cfg.group_membership == "memberof" else "",
                )
                if a
            }
        )
        self._closed = False

    # -- PasswordProvider ------------------------------------------------------------

    async def authenticate(self, username: str, password: str) -> ExternalIdentity:
        if not password:
            raise InvalidCredentials(LOGIN_FAILED)
        if not username or len(username) > MAX_USERNAME or not _utf8(username, password):
            raise InvalidCredentials(LOGIN_FAILED)
        with _timed(self.name, "login"):
            return await self._run(lambda: self._authenticate(username, password))

    async def refresh(self, principal_id: str) -> ExternalIdentity | None:
        dn = principal_dn(self.name, "user", principal_id)
        with _timed(self.name, "refresh"):
            return await self._run(lambda: self._service(lambda conn: self._refresh(conn, dn)))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(asyncio.to_thread(self._pool.close), timeout=5)
        except TimeoutError:
            logger.warning("%s: closing LDAP connections timed out", self.name)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- running ldap3 off the event loop ---------------------------------------------

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise ProviderUnavailable(f"{self.name}: the provider is shut down")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.config.request_timeout_s):
                return await loop.run_in_executor(self._executor, self._guarded, fn)
        except TimeoutError:
            logger.warning(
                "%s: LDAP request timed out after %gs", self.name, self.config.request_timeout_s
            )
            raise ProviderUnavailable(
                f"{self.name}: the LDAP server did not answer within "
                f"{self.config.request_timeout_s:g}s"
            ) from None
        except RuntimeError:
            if self._closed:  # the executor was shut down under us
                raise ProviderUnavailable(f"{self.name}: the provider is shut down") from None
            raise

    def _guarded(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except LDAPFailure as exc:
            logger.warning("%s: %s", self.name, exc)
            raise ProviderUnavailable(f"{self.name}: {exc}") from None
        except (LDAPException, OSError) as exc:
            reason = failure_reason(exc)
            logger.warning(
                "%s: LDAP server unavailable (%s): %s: %s",
                self.name,
                reason,
                type(exc).__name__,
                exc,
            )
            raise ProviderUnavailable(f"{self.name}: LDAP server unavailable ({reason})") from None

    # -- connections --------------------------------------------------------------------

    def _make_servers(self) -> Server | ServerPool:
        cfg = self.config
        self._servers = servers = [
            Server(
                address.host,
                port=address.port,
                use_ssl=address.ldaps,
                tls=self._tls,
                get_info=NONE,
                connect_timeout=cfg.connect_timeout_s,
            )
            for address in cfg.servers
        ]
        if len(servers) == 1:
            return servers[0]
        # ldap3 sleeps POOLING_LOOP_TIMEOUT (10 s) after every round in which no server
        # answered, even the last round before it gives up; herdgate makes one round
        # (active=1) and reports the outage at once. Process-wide, but only this
        # module uses ldap3.
        set_config_parameter("POOLING_LOOP_TIMEOUT", 0)
        strategy = {"first": FIRST, "round_robin": ROUND_ROBIN, "random": RANDOM}[cfg.strategy]
        retry = math.ceil(cfg.server_retry_s)
        return ServerPool(servers, pool_strategy=strategy, active=1, exhaust=retry or False)

    def _connection(self, user: str | None, password: str | None) -> Connection:
        return Connection(
            self._server,
            user=user,
            password=password,
            authentication=SIMPLE if user else ANONYMOUS,
            client_strategy=SYNC,
            read_only=True,
            raise_exceptions=False,
            receive_timeout=self.config.operation_timeout_s,
            auto_referrals=False,
            check_names=False,
            return_empty_attributes=False,
        )

    def _revive_addresses(self) -> None:
        """Let ldap3 try again what failed recently when nothing is left to try.

        ldap3 skips an address for 5 s (RESET_AVAILABILITY_TIMEOUT) after it failed,
        and a ServerPool skips a server for ``server_retry_s`` (exhaust). When every
        address of a server, or every server of the pool, is being skipped, ldap3
        fails without trying, so a directory that is back would still be refused for
        a while. Skipping stays in force while at least one server is thought up.
        """
        ldap3_compat.revive(self._servers, self._server)

    def _open(self, conn: Connection) -> None:
        self._revive_addresses()
        conn.open(read_server_info=False)
        if self.config.start_tls and not conn.server.ssl:
            conn.start_tls(read_server_info=False)

    def _service_password(self) -> str:
        cfg = self.config
        if not cfg.service_account_password_file:
            return cfg.service_account_password
        try:
            text = Path(cfg.service_account_password_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise LDAPFailure(
                f"cannot read service_account_password_file ({exc.strerror})"
            ) from None
        password = text.rstrip("\r\n")
        if not password:
            raise LDAPFailure("service_account_password_file is empty")
        return password

    def _new_service_connection(self) -> Connection:
        dn = self.config.service_account_dn
        conn = self._connection(dn or None, self._service_password() if dn else None)
        try:
            self._open(conn)
            if not conn.bind(read_server_info=False):
                logger.error(
                    "%s: the service account %s cannot bind: %s",
                    self.name,
                    dn or "(anonymous)",
                    _describe(conn.result),
                )
                raise LDAPFailure(f"the service account cannot bind ({_result_name(conn.result)})")
        except BaseException:
            close_connection(conn)
            raise
        return conn

    def _service(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` on a pooled service connection; a stale reused one is replaced once."""
        conn, reused = self._pool.acquire()
        try:
            result = fn(conn)
        except (LDAPException, OSError) as exc:
            close_connection(conn)
            if not reused:
                raise
            logger.debug(
                "%s: pooled connection failed (%s), retrying", self.name, failure_reason(exc)
            )
            conn, _ = self._pool.acquire()
            try:
                result = fn(conn)
            except BaseException:
                close_connection(conn)
                raise
        except BaseException:
            close_connection(conn)
            raise
        self._pool.release(conn)
        return result

    def _bind_as(self, dn: str, password: str) -> bool:
        """Whether ``password`` is the password of ``dn`` (a bind on a fresh connection)."""
        if not password:
            return False
        conn = self._connection(dn, password)
        try:
            self._open(conn)
            if conn.bind(read_server_info=False):
                return True
            code = conn.result.get("result") if conn.result else None
            if code in _BIND_REFUSED:
                logger.debug("%s: bind as %s refused: %s", self.name, dn, _describe(conn.result))
                return False
            raise LDAPFailure(f"the password check failed ({_result_name(conn.result)})")
        finally:
            close_connection(conn)

    # -- searches -----------------------------------------------------------------------

    def _search(
        self,
        conn: Connection,
        base: str,
        search_filter: str,
        scope: str,
        attributes: Sequence[str],
        size_limit: int = 0,
        paged: bool = False,
    ) -> tuple[list[Entry], int]:
        """Entries and the final result code; a missing base gives no entries."""
        entries: list[Entry] = []
        cookie: bytes | None = None
        for _ in range(MAX_PAGES):
            kwargs: dict[str, Any] = {}
            if paged:
                kwargs = {"paged_size": PAGE_SIZE, "paged_cookie": cookie}
            conn.search(
                search_base=base,
                search_filter=search_filter,
                search_scope=scope,
                attributes=list(attributes) or [NO_ATTRIBUTES],
                size_limit=size_limit,
                time_limit=self.config.operation_timeout_s,
                **kwargs,
            )
            result = conn.result or {}
            code = result.get("result")
            entries.extend(self._entries(conn.response or []))
            if code in {_NO_SUCH_OBJECT, _REFERRAL}:
                return entries, code
            if code == _SIZE_LIMIT and size_limit:
                return entries, code
            if code != _SUCCESS:
                logger.warning(
                    "%s: search under %s failed: %s",
                    self.name,
                    base or "(root DSE)",
                    _describe(result),
                )
                raise LDAPFailure(f"a directory search failed ({_result_name(result)})")
            control = (result.get("controls") or {}).get(_PAGED_RESULTS) or {}
            cookie = (control.get("value") or {}).get("cookie")
            if not paged or not cookie:
                return entries, code
        logger.warning("%s: search under %s stopped after %d pages", self.name, base, MAX_PAGES)
        return entries, _SUCCESS

    def _entries(self, response: Sequence[dict[str, Any]]) -> list[Entry]:
        out: list[Entry] = []
        for item in response:
            if item.get("type") != "searchResEntry":
                continue  # continuation references (AD: DomainDnsZones and the like)
            try:
                dn = canonical_dn(str(item.get("dn", "")))
            except ValueError:
                logger.warning("%s: ignoring an entry with an unreadable DN", self.name)
                continue
            raw = item.get("raw_attributes") or {}
            attributes = {
                str(key).lower(): [
                    v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                    for v in (values if isinstance(values, list) else [values])
                ]
                for key, values in raw.items()
            }
            out.append(Entry(dn, attributes))
        return out

    def _scope(self) -> str:
        return str(LEVEL if self.config.user_search_scope == "one" else SUBTREE)

    def _find_user(self, conn: Connection, username: str) -> Entry | None:
        cfg = self.config
        query = filters.user_search(
            cfg.user_object_class, cfg.user_login_attribute, username, cfg.user_filter
        )
        entries, code = self._search(
            conn, cfg.user_search_base, query, self._scope(), self._user_attributes, size_limit=2
        )
        if len(entries) == 1 and code == _SUCCESS:
            return entries[0]
        if entries:
            logger.warning(
                "%s: user name %r matches several entries; login refused", self.name, username
            )
        return None

    def _refresh(self, conn: Connection, dn: str) -> ExternalIdentity | None:
        cfg = self.config
        if not is_under(dn, cfg.user_search_base):
            return None
        if (
            cfg.user_search_scope == "one"
            and len(parse_dn(dn)) != len(parse_dn(cfg.user_search_base)) + 1
        ):
            return None
        query = filters.user_entry(cfg.user_object_class, cfg.user_filter)
        entries, _ = self._search(conn, dn, query, BASE, self._user_attributes)
        if len(entries) != 1:
            return None
        user = entries[0]
        enabled = not cfg.disabled.is_disabled(user.values(cfg.disabled.attribute))
        return self._identity(user, self._groups(conn, user), enabled)

    def _authenticate(self, username: str, password: str) -> ExternalIdentity:
        user = self._service(lambda conn: self._find_user(conn, username))
        # The same work whether or not the user exists: one search, one bind.
        accepted = self._bind_as(user.dn if user else self._decoy_dn, password)
        if user is None or not accepted:
            logger.info(
                "%s: login failed for %r (%s)",
                self.name,
                username,
                "unknown user name" if user is None else "wrong password",
            )
            raise InvalidCredentials(LOGIN_FAILED)
        if self.config.disabled.is_disabled(user.values(self.config.disabled.attribute)):
            logger.info("%s: login refused for %r: the account is disabled", self.name, username)
            raise InvalidCredentials(LOGIN_FAILED)
        groups = self._service(lambda conn: self._groups(conn, user))
        return self._identity(user, groups, enabled=True, typed=username)

    def _identity(
        self, user: Entry, groups: Sequence[str], enabled: bool, typed: str = ""
    ) -> ExternalIdentity:
        cfg = self.config
        logins = user.values(cfg.user_login_attribute)
        login = next((v for v in logins if v.casefold() == typed.casefold()), "") if typed else ""
        login = login or (logins[0] if logins else typed)
        return ExternalIdentity(
            provider=self.name,
            principal_id=principal_id(self.name, "user", user.dn),
            login_name=login,
            display_name=user.first(cfg.user_display_name_attribute) or login,
            groups=tuple(sorted(principal_id(self.name, "group", dn) for dn in groups)),
            enabled=enabled,
        )

    # -- groups -------------------------------------------------------------------------

    def _groups(self, conn: Connection, user: Entry) -> list[str]:
        cfg = self.config
        login = user.first(cfg.user_login_attribute)
        found: list[str] = []
        if cfg.group_membership == "memberof":
            for value in user.values("memberOf"):
                try:
                    found.append(canonical_dn(value))
                except ValueError:
                    logger.warning("%s: ignoring an unreadable memberOf value", self.name)
        if self._use_in_chain(conn):
            query = filters.groups_in_chain(
                cfg.group_object_classes, cfg.group_member_attribute, user.dn, cfg.group_filter
            )
            found += self._group_dns(conn, query)
            if cfg.group_member_uid_attribute and login:
                query = filters.groups_with_members(
                    cfg.group_object_classes, "", [], cfg.group_member_uid_attribute, login,
                    cfg.group_filter,
                )  # fmt: skip
                found += self._group_dns(conn, query)
            return _unique(found)
        if cfg.group_membership == "search":
            query = filters.groups_with_members(
                cfg.group_object_classes,
                cfg.group_member_attribute,
                [user.dn],
                cfg.group_member_uid_attribute,
                login,
                cfg.group_filter,
            )
            found += self._group_dns(conn, query)
        if cfg.nested_groups == "off":
            return _unique(found)
        nesting = resolve_nested(
            found, lambda dns: self._parent_groups(conn, dns), cfg.nested_groups_max_depth
        )
        if nesting.truncated:
            logger.warning(
                "%s: groups of %s nest deeper than nested_groups_max_depth=%d; "
                "the deeper ones are left out",
                self.name,
                user.dn,
                cfg.nested_groups_max_depth,
            )
        return list(nesting.groups)

    def _group_dns(self, conn: Connection, query: str) -> list[str]:
        entries, _ = self._search(
            conn, self.config.group_search_base, query, SUBTREE, [], paged=True
        )
        return [entry.dn for entry in entries]

    def _parent_groups(self, conn: Connection, dns: Sequence[str]) -> list[str]:
        cfg = self.config
        out: list[str] = []
        for start in range(0, len(dns), NESTING_BATCH):
            query = filters.groups_with_members(
                cfg.group_object_classes,
                cfg.group_member_attribute,
                dns[start : start + NESTING_BATCH],
                extra=cfg.group_filter,
            )
            out += self._group_dns(conn, query)
        return out

    def _use_in_chain(self, conn: Connection) -> bool:
        if self._in_chain is None:
            try:
                entries, _ = self._search(
                    conn, "", "(objectClass=*)", BASE, ["supportedCapabilities", "vendorName"]
                )
            except LDAPFailure:  # the root DSE is not readable: assume not AD
                entries = []
            self._in_chain = supports_in_chain(entries[0].attributes if entries else {})
            logger.info(
                "%s: nested groups are resolved %s",
                self.name,
                "by the server (LDAP_MATCHING_RULE_IN_CHAIN)"
                if self._in_chain
                else "by herdgate (the server is not Active Directory)",
            )
        return self._in_chain

    # -- for tests and diagnostics ------------------------------------------------------

    def pool_stats(self) -> dict[str, int]:
        """Connections created and idle in the service-account pool, and ldap3 pool entries."""
        states = getattr(self._server, "pool_states", {})
        return {
            "created": self._pool.created,
            "idle": self._pool.idle(),
            "server_pool_states": len(states),
        }


def _unique(dns: Sequence[str]) -> list[str]:
    seen: dict[str, str] = {}
    for dn in dns:
        seen.setdefault(dn_key(dn), dn)
    return list(seen.values())


def _utf8(*texts: str) -> bool:
    try:
        for text in texts:
            text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _result_name(result: dict[str, Any] | None) -> str:
    if not result:
        return "no result"
    return str(result.get("description") or result.get("result"))


def _describe(result: dict[str, Any] | None) -> str:
    if not result:
        return "no result"
    message = str(result.get("message") or "").strip()
    text = f"{result.get('description')} ({result.get('result')})"
    return f"{text}: {message}" if message else text


@contextlib.contextmanager
def _timed(provider: str, operation: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        metrics.PROVIDER_SECONDS.labels(provider, operation).observe(time.perf_counter() - started)
