"""The in-memory view of every stored record type, not only identity's: users, tokens,
role bindings, clusters, registration tokens and replicas (``gateway.store.records``).

A new record type is loaded here (the kind list in ``load``) and kept current here (the
dispatch in ``apply``); the store's backends keep generic ``(kind, key)`` documents and
need no change. It lives in ``identity`` because most of what it answers is who a caller
is and what they may do.

Reads on the request path (token validation, access checks) are dictionary
lookups. Writes go to the store first and then to memory; the store's change feed
applies other processes' writes through the same ``apply`` method.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from aiohttp import web

from config.identity import Identity
from gateway.identity import feed, hashing
from gateway.identity.providers.base import ExternalIdentity
from gateway.store.base import AlreadyExists, Change, Compacted, Store, StoreError
from gateway.store.records import (
    BINDING,
    BUILTIN_TEMPLATES,
    CLUSTER,
    CLUSTER_STATUS,
    PROJECT,
    PROJECT_BINDING,
    REGISTRATION,
    REPLICA,
    ROLE_RANK,
    ROLE_TEMPLATE,
    TOKEN,
    USER,
    USERNAME,
    Binding,
    Cluster,
    ClusterStatus,
    Project,
    ProjectBinding,
    RegistrationToken,
    Replica,
    RoleTemplate,
    Token,
    User,
    fold_username,
    from_doc,
    gateway_role,
    role_template_from_doc,
    to_doc,
    token_scope,
)
from gateway.telemetry import metrics

logger = logging.getLogger(__name__)

R = TypeVar("R")
Clock = Callable[[], float]

SYSTEM_AUTHENTICATED = "system:authenticated"
MAX_PENDING_ECHOES = 10_000
MAX_CACHED_IDENTITIES = 100_000


_CASELESS_PRINCIPALS = ("openldap_group://", "activedirectory_group://")


def group_key(principal: str) -> str:
    """Directory names compare without regard to case; other principals exactly."""
    return principal.casefold() if principal.startswith(_CASELESS_PRINCIPALS) else principal


class AuthenticationFailed(Exception):
    """The credential is not valid; the message is safe to show the caller."""


class TooManyTokens(Exception):
    """The user already holds as many tokens as allowed; the message says what to do."""


class UsernameTaken(Exception):
    """Another local user holds this name (in some spelling that folds to it)."""


_KINDS = (
    USER,
    TOKEN,
    CLUSTER,
    ROLE_TEMPLATE,
    BINDING,
    PROJECT,
    PROJECT_BINDING,
    REGISTRATION,
    REPLICA,
    CLUSTER_STATUS,
)
"""Every kind the directory holds, in the order they are loaded."""

STALE_CLAIM_S = 60.0
"""A name claim whose user does not exist this long after the claim was made is left
over from a process that stopped between the two writes; it may be taken over."""


class Directory:
    def __init__(self, store: Store, clock: Clock = time.time) -> None:
        self.store = store
        self.clock = clock
        self.users: dict[str, User] = {}
        self.user_ids_by_name: dict[str, list[str]] = {}
        """Local users by folded login name (``fold_username``; provider users are found
        by principal). More than one only for names an older version let through."""
        self.user_ids_by_principal: dict[str, str] = {}
        self.tokens: dict[str, Token] = {}
        self._tokens_by_user: dict[str, set[str]] = {}
        """Token ids of each user (``issue_token`` bounds them)."""
        self.clusters: dict[str, Cluster] = {}
        self.bindings: dict[str, Binding] = {}
        self.bindings_by_cluster: dict[str, dict[str, Binding]] = {}
        self.role_templates: dict[str, RoleTemplate] = dict(BUILTIN_TEMPLATES)
        """The built-ins and the administrators' templates (stored)."""
        self._gateway_roles: dict[str, str] = {}
        """The coarse role each template implies (``records.gateway_role``), cached."""
        self.projects: dict[str, Project] = {}
        self.project_bindings: dict[str, ProjectBinding] = {}
        self.project_bindings_by_cluster: dict[str, dict[str, ProjectBinding]] = {}
        self.registrations: dict[str, RegistrationToken] = {}
        self.replicas: dict[str, Replica] = {}
        self.statuses: dict[str, ClusterStatus] = {}
        """Each cluster's status as its controller last wrote it."""
        self.revision = 0
        self.reloads = 0
        """How often everything was read again (``reload``)."""
        self._refollow = asyncio.Event()
        """Set when ``follow`` must restart its feed (from ``revision``), after a reload
        if ``_needs_reload``."""
        self._needs_reload = False
        self._listeners: list[Callable[[str, str], None]] = []
        self._token_hashes: dict[str, tuple[bytes, bytes]] = {}
        """Salt and digest of each token, parsed once (the request path only hashes)."""
        self._seen: dict[tuple[str, str], int] = {}
        """Revision of our own latest write per record, until the feed passes it."""
        self._last_used: dict[str, float] = {}
        """Token uses not yet written to the store (see ``flush_last_used``)."""
        self._echo: collections.deque[tuple[int, float]] = collections.deque()
        """(revision, monotonic time) of our own writes the feed has not brought back."""
        self._reopened_at = -math.inf
        """When ``feed_stalled`` last had the feed reopened (monotonic)."""
        self.max_feed_lag_s = 10.0
        """Beyond this ``feed_lag``, ``/readyz`` says the caches may be stale."""
        self._identities: dict[str, tuple[User, Identity]] = {}
        """The ``Identity`` built for each token, with the user record it was built from
        (used while that record is the same object; at most ``MAX_CACHED_IDENTITIES``)."""

    # -- loading and change application ----------------------------------------------

    async def load(self) -> None:
        self.revision = await self.store.revision()
        for kind in _KINDS:
            for doc in await self.store.list(kind):
                self.apply(kind, str(doc["id"]), doc)

    async def reload(self) -> None:
        """Read every record again and make memory match it: for a process that fell
        behind the store's change feed (``Compacted``). The feed is then followed from the
        revision read before the lists, so writes made meanwhile are applied (again)."""
        self._needs_reload = False
        try:
            revision = await self.store.revision()
            lists = {kind: await self.store.list(kind) for kind in _KINDS}
        except BaseException:
            self._needs_reload = True  # still needed: ``follow`` tries again
            raise
        self._rebuild(revision, lists)

    def _rebuild(self, revision: int, lists: Mapping[str, Iterable[dict[str, Any]]]) -> None:
        """Make memory hold ``lists`` (every record of every kind, read at or after
        ``revision``): records that changed or went are applied (listeners hear of
        each: a revoked token's streams end), unchanged ones are left alone. The lists
        are read before, and applied here without a pause: a request sees the old view
        or the new one."""
        # A store behind what we saw went back in time (etcd restored from a backup):
        # the revisions we remember name other writes now, and the lists win.
        rewound = revision < self.revision
        if rewound:
            self._seen.clear()
            self._echo.clear()
        for kind in _KINDS:
            docs = {str(doc["id"]): doc for doc in lists.get(kind, ()) if "id" in doc}
            # A record we wrote ourselves after ``revision`` is newer than anything the
            # list may have read before it (and a newer write comes through the feed).
            mine = {key for (k, key), r in self._seen.items() if k == kind and r > revision}
            for key in [k for k in self._keys(kind) if k not in docs and k not in mine]:
                self.apply(kind, key, None)
            for key, doc in docs.items():
                if key not in mine and not self._holds_safely(kind, key, doc):
                    self._apply_safely(kind, key, doc)
        self._seen = {k: r for k, r in self._seen.items() if r > revision}
        self.revision = revision
        self._progress(revision)
        self.reloads += 1
        metrics.STORE_FEED_RELOADS.inc()
        logger.warning("store: caches rebuilt from the store at revision %d", revision)

    def _table(self, kind: str) -> dict[str, Any]:
        tables: dict[str, dict[str, Any]] = {
            USER: self.users,
            TOKEN: self.tokens,
            CLUSTER: self.clusters,
            BINDING: self.bindings,
            ROLE_TEMPLATE: self.role_templates,
            PROJECT: self.projects,
            PROJECT_BINDING: self.project_bindings,
            REGISTRATION: self.registrations,
            REPLICA: self.replicas,
            CLUSTER_STATUS: self.statuses,
        }
        return tables[kind]

    def _keys(self, kind: str) -> list[str]:
        keys = list(self._table(kind))
        return [k for k in keys if k not in BUILTIN_TEMPLATES] if kind == ROLE_TEMPLATE else keys

    def _holds(self, kind: str, key: str, doc: dict[str, Any]) -> bool:
        """Whether memory already holds ``doc`` for this record."""
        current = self._table(kind).get(key)
        if current is None:
            return False
        if kind == ROLE_TEMPLATE:
            return bool(current == role_template_from_doc(doc))
        return bool(current == from_doc(type(current), doc))

    def _holds_safely(self, kind: str, key: str, doc: dict[str, Any]) -> bool:
        try:
            return self._holds(kind, key, doc)
        except (TypeError, ValueError, KeyError, AttributeError):
            return False  # unreadable: ``_apply_safely`` says so

    def on_change(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(kind, key)`` after every applied change."""
        self._listeners.append(listener)

    async def follow(self) -> None:
        """Apply the store's change feed forever (other workers' and replicas' writes):
        ``gateway.identity.feed`` (reloads when fallen behind, reopens a stalled feed)."""
        await feed.follow(self)

    def feed_stalled(self) -> bool:
        """Whether our own writes are not back on the feed within ``max_feed_lag_s``;
        if so the stall is counted and the wait starts afresh (the feed is reopened)."""
        lag = self.feed_lag()
        now = time.monotonic()
        if lag <= self.max_feed_lag_s or now - self._reopened_at <= self.max_feed_lag_s:
            return False
        logger.warning("store change feed: our writes are not back after %.0fs; reopening", lag)
        # Not again at once: the new feed gets its own time to catch up. The lag itself is
        # left as it is (``feed_lag``, /readyz): the caches stay stale until the reopened
        # feed has brought our writes back.
        self._reopened_at = now
        metrics.STORE_FEED_RESTARTS.inc()
        return True

    def needs_reload(self) -> bool:
        return self._needs_reload

    def reload_needed(self) -> None:
        self._needs_reload = True

    @property
    def refollow(self) -> asyncio.Event:
        """Set to drop the feed and open it again (``catch_up`` saw it fall behind)."""
        return self._refollow

    def apply_change(self, change: Change) -> None:
        """One change from the feed (``gateway.identity.feed``)."""
        if not change.kind:  # a progress mark: every write up to it was delivered
            self.revision = max(self.revision, change.revision)
            self._progress(change.revision)
            return
        self._progress(change.revision)
        if change.revision <= self.revision:
            return  # already seen (through ``catch_up`` or the feed)
        self.revision = change.revision
        key = (change.kind, change.key)
        if change.revision <= self._seen.get(key, 0):
            return  # older than our own write to the same record, already applied
        self._seen.pop(key, None)
        self._apply_safely(change.kind, change.key, change.value)

    def _apply_safely(self, kind: str, key: str, doc: dict[str, Any] | None) -> None:
        """``apply``, but a document this version cannot read (written by hand, or by a
        newer version) is logged and treated as absent: the feed must go on past it, not
        stop there and leave every later write unseen."""
        try:
            self.apply(kind, key, doc)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            logger.error("store: %s %r cannot be read (%s); ignored", kind, key, exc)
            self.apply(kind, key, None)

    def catch_up(self) -> None:
        """Apply other processes' writes now, so a revocation holds on the next request."""
        try:
            changes = self.store.recent_changes(self.revision)
        except Compacted as exc:
            # Fallen behind: nothing is applied past the gap. A store that can read
            # everything at once (SQLite) handed it over: rebuilt here, before this request
            # is authenticated. Else ``follow`` reloads now.
            logger.warning("fell behind the store's change feed (%s): reloading", exc)
            if exc.snapshot is not None:
                lists: dict[str, list[dict[str, Any]]] = {}
                for kind, _, doc in exc.snapshot.documents:
                    lists.setdefault(kind, []).append(doc)
                self._rebuild(exc.snapshot.revision, lists)
            else:
                self._needs_reload = True
            self._refollow.set()
            return
        if changes:
            for change in changes:
                self.apply_change(change)

    def apply(self, kind: str, key: str, doc: dict[str, Any] | None) -> None:
        if kind == USER:
            old = self.users.pop(key, None)
            if old is not None:
                if old.provider == "local":
                    self._unname(old)
                for principal in old.principal_ids:
                    self.user_ids_by_principal.pop(principal, None)
            if doc is not None:
                user = from_doc(User, doc)
                self.users[key] = user
                if user.provider == "local":
                    self.user_ids_by_name.setdefault(fold_username(user.username), []).append(key)
                for principal in user.principal_ids:
                    self.user_ids_by_principal[principal] = key
        elif kind == TOKEN:
            old_token = self.tokens.get(key)
            if old_token is not None:
                owned = self._tokens_by_user.get(old_token.user_id)
                if owned is not None:
                    owned.discard(key)
                    if not owned:
                        del self._tokens_by_user[old_token.user_id]
            self._set(self.tokens, key, Token, doc)
            token = self.tokens.get(key)
            if token is not None:
                self._tokens_by_user.setdefault(token.user_id, set()).add(key)
            parts = None if token is None else hashing.parse_token_hash(token.hash)
            if parts is None:
                self._token_hashes.pop(key, None)
            else:
                self._token_hashes[key] = parts
        elif kind == CLUSTER:
            self._set(self.clusters, key, Cluster, doc)
        elif kind == BINDING:
            old_binding = self.bindings.pop(key, None)
            if old_binding is not None:
                self.bindings_by_cluster.get(old_binding.cluster_id, {}).pop(key, None)
            if doc is not None:
                binding = from_doc(Binding, doc)
                self.bindings[key] = binding
                self.bindings_by_cluster.setdefault(binding.cluster_id, {})[key] = binding
        elif kind == ROLE_TEMPLATE:
            if key not in BUILTIN_TEMPLATES:  # a stored record never replaces a built-in
                if doc is None:
                    self.role_templates.pop(key, None)
                else:
                    self.role_templates[key] = role_template_from_doc(doc)
                self._gateway_roles.clear()
        elif kind == PROJECT:
            self._set(self.projects, key, Project, doc)
        elif kind == PROJECT_BINDING:
            old_pb = self.project_bindings.pop(key, None)
            if old_pb is not None:
                self.project_bindings_by_cluster.get(old_pb.cluster_id, {}).pop(key, None)
            if doc is not None:
                pb = from_doc(ProjectBinding, doc)
                self.project_bindings[key] = pb
                self.project_bindings_by_cluster.setdefault(pb.cluster_id, {})[key] = pb
        elif kind == REGISTRATION:
            self._set(self.registrations, key, RegistrationToken, doc)
        elif kind == REPLICA:
            self._set(self.replicas, key, Replica, doc)
        elif kind == CLUSTER_STATUS:
            self._set(self.statuses, key, ClusterStatus, doc)
        for listener in self._listeners:
            listener(kind, key)

    def _unname(self, user: User) -> None:
        folded = fold_username(user.username)
        ids = self.user_ids_by_name.get(folded)
        if ids is not None and user.id in ids:
            ids.remove(user.id)
            if not ids:
                del self.user_ids_by_name[folded]

    @staticmethod
    def _set(table: dict[str, Any], key: str, cls: type[Any], doc: dict[str, Any] | None) -> None:
        if doc is None:
            table.pop(key, None)
        else:
            table[key] = from_doc(cls, doc)

    # -- writes ------------------------------------------------------------------------

    async def put(self, kind: str, record: Any) -> None:
        doc = to_doc(record)
        # Not our high-water mark: another process may have written a lower revision we
        # have not seen yet. The feed brings our write back; ``_seen`` skips it.
        revision = await self.store.put(kind, record.id, doc)
        self._apply_own(kind, record.id, doc, revision)

    async def replace(self, kind: str, old: Any, new: Any) -> bool:
        """Write ``new`` over ``old`` only if the store still holds ``old`` (compare and
        set): a read-modify-write from memory never loses another process's update.
        False (nothing written, memory refreshed from the store) when the record changed
        or went away meanwhile."""
        current = await self.store.get(kind, new.id)
        parse: Callable[[dict[str, Any]], Any] = (
            role_template_from_doc if kind == ROLE_TEMPLATE else lambda d: from_doc(type(old), d)
        )
        doc = to_doc(new)
        # The stored document, as read, is what the swap compares (not a re-encoding of
        # ``old``, which may differ in form: tuples, fields another version added).
        revision = None
        if current is not None and parse(current) == old:
            revision = await self.store.swap(kind, new.id, current, doc)
        if revision is None:
            self.apply(kind, new.id, await self.store.get(kind, new.id))
            return False
        self._apply_own(kind, new.id, doc, revision)
        return True

    async def create_unique(self, kind: str, prefix: str, make: Callable[[str], R]) -> R:
        """Create a record under a fresh random id, retrying on the rare collision."""
        for _ in range(20):
            record = make(hashing.new_id(prefix))
            doc = to_doc(record)
            try:
                revision = await self.store.create(kind, doc["id"], doc)
            except AlreadyExists:
                continue
            self._apply_own(kind, doc["id"], doc, revision)
            return record
        raise RuntimeError(f"could not allocate a {prefix} id")

    async def patch(self, kind: str, key: str, **changes: Any) -> bool:
        """Change some fields of a record that must still exist; False if it is gone."""
        result = await self.store.patch(kind, key, changes)
        if result is None:
            self.apply(kind, key, None)
            return False
        self._apply_own(kind, key, result[1], result[0])
        return True

    async def delete(self, kind: str, key: str) -> bool:
        revision = await self.store.delete(kind, key)
        self._apply_own(kind, key, None, revision)
        return revision > 0

    def _apply_own(self, kind: str, key: str, doc: dict[str, Any] | None, revision: int) -> None:
        """Apply our own write now; the change feed will skip it and anything older."""
        if revision:
            self._seen[kind, key] = max(self._seen.get((kind, key), 0), revision)
            if revision > self.revision and len(self._echo) < MAX_PENDING_ECHOES:
                self._echo.append((revision, time.monotonic()))
        self.apply(kind, key, doc)

    def _progress(self, revision: int) -> None:
        """The feed delivered everything up to ``revision``: our writes up to it are back."""
        echo = self._echo
        while echo and echo[0][0] <= revision:
            echo.popleft()

    def feed_lag(self) -> float:
        """Seconds since the oldest of our own writes that the change feed has not
        brought back yet (0: none outstanding). Every process writes its heartbeat every
        few seconds, so a feed that stalls, breaks or lost its place shows here."""
        return time.monotonic() - self._echo[0][1] if self._echo else 0.0

    async def delete_user(self, user_id: str) -> None:
        """Delete the user with every token and binding that names it, and free its name."""
        user = self.users.get(user_id)
        await asyncio.gather(
            *(self.delete(TOKEN, t.id) for t in list(self.tokens.values()) if t.user_id == user_id),
            *(
                self.delete(BINDING, b.id)
                for b in list(self.bindings.values())
                if b.user_id == user_id
            ),
        )
        await self.delete(USER, user_id)
        if user is not None and user.provider == "local":
            folded = fold_username(user.username)
            claim = await self.store.get(USERNAME, folded)
            if claim is not None and claim.get("userId") == user_id:
                await self.store.swap(USERNAME, folded, claim, None)

    async def delete_cluster(self, cluster_id: str) -> None:
        bindings = list(self.bindings_by_cluster.get(cluster_id, {}))
        project_bindings = list(self.project_bindings_by_cluster.get(cluster_id, {}))
        projects = [p.id for p in self.projects.values() if p.cluster_id == cluster_id]
        registrations = [r.id for r in self.registrations.values() if r.cluster_id == cluster_id]
        scoped = [t for t in self.tokens.values() if t.cluster_id and t.valid_on(cluster_id)]
        # A token scoped to this cluster alone goes; one scoped to others too is narrowed.
        only_here = [t.id for t in scoped if t.scope == (cluster_id,)]
        narrowed = [
            (t.id, token_scope(c for c in t.scope if c != cluster_id))
            for t in scoped
            if t.scope != (cluster_id,)
        ]
        await asyncio.gather(
            *(self.delete(BINDING, b) for b in bindings),
            *(self.delete(PROJECT_BINDING, b) for b in project_bindings),
            *(self.delete(REGISTRATION, r) for r in registrations),
            *(self.delete(TOKEN, t) for t in only_here),
            *(self.patch(TOKEN, t, **fields) for t, fields in narrowed),
        )
        await asyncio.gather(*(self.delete(PROJECT, p) for p in projects))
        await self.delete(CLUSTER, cluster_id)
        await self.delete(CLUSTER_STATUS, cluster_id)

    # -- users and tokens --------------------------------------------------------------

    def user_by_name(self, username: str) -> User | None:
        """The local user whose name folds to the same as ``username`` (any spelling).

        Two users whose names fold together exist only if an older version created
        them; then only the exact name finds its user.
        """
        ids = self.user_ids_by_name.get(fold_username(username))
        if not ids:
            return None
        if len(ids) == 1:
            return self.users.get(ids[0])
        for user_id in ids:
            user = self.users.get(user_id)
            if user is not None and user.username == username:
                return user
        return None

    async def create_local_user(self, username: str, make: Callable[[str], User]) -> User:
        """Create a local user called ``username`` (``make`` builds it from its new id).

        The name is claimed in the store first (a ``usernames`` record keyed by its
        folded form, created only if absent), so two processes creating ``carol`` and
        ``CAROL`` at once cannot both succeed; the in-memory check before it covers
        users stored before claims existed. Raises ``UsernameTaken``.
        """
        folded = fold_username(username)
        self.catch_up()
        if folded in self.user_ids_by_name:
            raise UsernameTaken(username)
        for _ in range(20):
            user_id = hashing.new_id("u")
            claim = {"id": folded, "userId": user_id, "created": self.clock()}
            try:
                await self.store.create(USERNAME, folded, claim)
            except AlreadyExists:
                if not await self._take_stale_claim(folded):
                    raise UsernameTaken(username) from None
                continue
            user = make(user_id)
            doc = to_doc(user)
            try:
                revision = await self.store.create(USER, user_id, doc)
            except AlreadyExists:  # an id collision: free the claim, try another id
                await self.store.delete(USERNAME, folded)
                continue
            except Exception:
                await self.store.delete(USERNAME, folded)
                raise
            self._apply_own(USER, user_id, doc, revision)
            return user
        raise RuntimeError("could not allocate a user id")

    async def _take_stale_claim(self, folded: str) -> bool:
        """Remove a claim whose user never appeared (see ``STALE_CLAIM_S``); whether the
        name may be claimed again."""
        claim = await self.store.get(USERNAME, folded)
        if claim is None:
            return True  # freed in the meantime
        user_id = str(claim.get("userId", ""))
        if user_id and await self.store.get(USER, user_id) is not None:
            return False
        created = claim.get("created")
        if isinstance(created, int | float) and self.clock() - created < STALE_CLAIM_S:
            return False  # its user is probably being created right now
        logger.warning("user name claim %r has no user; taking it over", folded)
        # Only that claim: another process may have taken the name over meanwhile.
        return await self.store.swap(USERNAME, folded, claim, None) is not None

    async def issue_token(
        self,
        user: User,
        ttl_s: float | None,
        kind: str,
        description: str = "",
        cluster_id: str = "",
        max_per_user: int = 0,
        cluster_ids: Sequence[str] = (),
    ) -> tuple[Token, str]:
        """Create a token; returns it with its one-time plaintext ``token-xxxxx:<secret>``.

        ``cluster_id`` scopes it to one cluster, ``cluster_ids`` to several (either, not
        both); neither: not scoped to clusters.

        With ``max_per_user``, the user's expired tokens are removed first, and a user
        who holds that many already gets ``TooManyTokens`` for an API token, while a login
        (``session``) or a kubeconfig replaces the oldest session or kubeconfig token (a
        user must always be able to log in).
        """
        now = self.clock()
        if max_per_user:
            await self._make_room(user.id, kind, max_per_user, now)
        secret = hashing.new_secret()
        token_hash = hashing.hash_token(secret)
        expires = None if not ttl_s else now + ttl_s
        scope = token_scope(cluster_ids or ((cluster_id,) if cluster_id else ()))
        token = await self.create_unique(
            TOKEN,
            "token",
            lambda token_id: Token(
                id=token_id,
                user_id=user.id,
                hash=token_hash,
                created=now,
                expires_at=expires,
                kind=kind,
                description=description,
                **scope,
            ),
        )
        return token, f"{token.id}:{secret}"

    async def _make_room(self, user_id: str, kind: str, limit: int, now: float) -> None:
        held = [self.tokens[t] for t in self._tokens_by_user.get(user_id, ()) if t in self.tokens]
        expired = [t.id for t in held if t.is_expired(now)]
        if expired:
            await asyncio.gather(*(self.delete(TOKEN, t) for t in expired))
            held = [t for t in held if not t.is_expired(now)]
        excess = len(held) - limit + 1
        if excess <= 0:
            return
        if kind == "api":
            raise TooManyTokens(
                f"this user already holds {len(held)} tokens (the most allowed); delete some first"
            )
        replaceable = sorted((t for t in held if t.kind != "api"), key=lambda t: (t.created, t.id))[
            :excess
        ]
        if len(replaceable) < excess:
            raise TooManyTokens(
                f"this user already holds {len(held)} API tokens (the most allowed); "
                "delete some first"
            )
        await asyncio.gather(*(self.delete(TOKEN, t.id) for t in replaceable))

    def identity_of(self, user: User, token_id: str = "") -> Identity:
        return Identity(
            user_id=user.id,
            username=user.username,
            principal_id=user.principal_id,
            groups=user.group_principals,
            is_admin=user.admin,
            token_id=token_id,
        )

    def authenticate(self, authorization: str | None) -> tuple[Identity, Token]:
        """Validate an ``Authorization`` header value (hot path: no I/O).

        Accepts ``Bearer token-xxxxx:<secret>`` and ``Basic base64(token-xxxxx:<secret>)``.
        """
        if not authorization:
            raise AuthenticationFailed("no credentials")
        self.catch_up()
        scheme, _, value = authorization.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "basic":
            try:
                value = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise AuthenticationFailed("malformed basic credentials") from None
        elif scheme != "bearer":
            raise AuthenticationFailed("unsupported authorization scheme")
        token_id, sep, secret = value.partition(":")
        if not sep or not secret:
            raise AuthenticationFailed("malformed token")
        token = self.tokens.get(token_id)
        parts = self._token_hashes.get(token_id)
        if token is None or parts is None or not hashing.verify_token_parts(secret, *parts):
            raise AuthenticationFailed("invalid token")
        if token.is_expired(self.clock()):
            raise AuthenticationFailed("token expired")
        user = self.users.get(token.user_id)
        if user is None or not user.enabled:
            raise AuthenticationFailed("user disabled")
        self._last_used[token.id] = self.clock()
        # One Identity per token while its user record stays the same object (records are
        # frozen and replaced on change): building one costs more than the rest of this.
        cached = self._identities.get(token.id)
        if cached is not None and cached[0] is user:
            return cached[1], token
        identity = self.identity_of(user, token.id)
        if len(self._identities) >= MAX_CACHED_IDENTITIES:
            self._identities.clear()
        self._identities[token.id] = (user, identity)
        return identity, token

    def last_used(self, token: Token) -> float | None:
        return self._last_used.get(token.id, token.last_used)

    async def flush_last_used(self) -> int:
        """Write pending last-use times to the store; returns how many were written.
        When the store fails (etcd down), those not written yet are kept for next time."""
        pending, self._last_used = self._last_used, {}
        written = 0
        left = list(pending.items())
        try:
            while left:
                token_id, when = left[0]
                token = self.tokens.get(token_id)
                if token is not None and (token.last_used or 0) < when:
                    written += await self.patch(TOKEN, token_id, last_used=when)
                left.pop(0)
        except StoreError:
            for token_id, when in left:  # a use recorded meanwhile is newer
                self._last_used[token_id] = max(self._last_used.get(token_id, 0.0), when)
            raise
        return written

    # -- users from identity providers ---------------------------------------------------

    def user_by_principal(self, principal_id: str) -> User | None:
        user_id = self.user_ids_by_principal.get(principal_id)
        return None if user_id is None else self.users.get(user_id)

    async def link_external(self, identity: ExternalIdentity) -> User:
        """The herdgate user of an external principal, created on its first login.

        Groups, display name and the enabled flag follow the provider.
        """
        now = self.clock()
        user = self.user_by_principal(identity.principal_id)
        if user is None:
            return await self.create_unique(
                USER,
                "u",
                lambda user_id: User(
                    id=user_id,
                    username=identity.login_name,
                    password_hash="",
                    created=now,
                    display_name=identity.display_name,
                    enabled=identity.enabled,
                    provider=identity.provider,
                    principal_ids=(identity.principal_id,),
                    group_principals=identity.groups,
                    last_login=now,
                    groups_refreshed=now,
                ),
            )
        await self.patch(
            USER,
            user.id,
            display_name=identity.display_name or user.display_name,
            enabled=identity.enabled,
            group_principals=list(identity.groups),
            last_login=now,
            groups_refreshed=now,
        )
        return self.users.get(user.id, user)

    async def identity_for_external(self, identity: ExternalIdentity) -> Identity:
        """The caller behind a provider credential presented directly (an OIDC ID token).

        The first use creates the user; later uses update its groups when they change.
        """
        user = self.user_by_principal(identity.principal_id)
        if user is None or user.group_principals != identity.groups:
            user = await self.link_external(identity)
        if not user.enabled:
            raise AuthenticationFailed("user disabled")
        return self.identity_of(user)

    async def apply_refresh(self, user: User, identity: ExternalIdentity | None) -> User:
        """Record what the provider said about a user now (None: the account is gone)."""
        now = self.clock()
        if identity is None:
            changes: dict[str, Any] = {"enabled": False, "groups_refreshed": now}
        else:
            changes = {
                "enabled": identity.enabled,
                "group_principals": list(identity.groups),
                "groups_refreshed": now,
            }
        if changes.get("enabled") != user.enabled or (
            identity is not None and identity.groups != user.group_principals
        ):
            await self.patch(USER, user.id, **changes)
        return self.users.get(user.id, user)

    # -- access --------------------------------------------------------------------------

    def gateway_role(self, template_id: str) -> str | None:
        """The coarse role (``ROLE_RANK``) a binding to the template gives at the gateway;
        None for a template that does not exist (any more)."""
        role = self._gateway_roles.get(template_id)
        if role is None:
            template = self.role_templates.get(template_id)
            if template is None:
                return None
            role = self._gateway_roles[template_id] = gateway_role(template, self.role_templates)
        return role

    def role_on(self, identity: Identity, cluster_id: str) -> str | None:
        """The strongest role the caller holds on the cluster, or None: from the
        cluster's bindings and from the bindings of its projects (a project member
        reaches the cluster at the gateway; the cluster's RBAC confines them)."""
        if identity.is_admin:
            return "cluster-owner"
        best: str | None = None
        best_rank = 0
        groups = {group_key(g) for g in identity.groups} if identity.groups else set()
        bindings: Iterable[Binding | ProjectBinding] = itertools.chain(
            self.bindings_by_cluster.get(cluster_id, {}).values(),
            self.project_bindings_by_cluster.get(cluster_id, {}).values(),
        )
        for binding in bindings:
            matches = binding.user_id == identity.user_id or (
                binding.group_principal_id != "" and group_key(binding.group_principal_id) in groups
            )
            if not matches:
                continue
            role = self.gateway_role(binding.role)
            if role is not None and ROLE_RANK[role] > best_rank:
                best, best_rank = role, ROLE_RANK[role]
        return best

    # -- registration tokens -----------------------------------------------------------

    def registration_for(self, credential: str) -> RegistrationToken | None:
        """The registration token ``crt-xxxxx:<secret>`` names, if it is valid now (known,
        the secret matches, not expired, its cluster exists)."""
        reg_id, sep, secret = credential.partition(":")
        registration = self.registrations.get(reg_id)
        if not sep or registration is None or not hashing.verify_token(secret, registration.hash):
            return None
        if registration.is_expired(self.clock()) or registration.cluster_id not in self.clusters:
            return None
        return registration

    async def new_registration(
        self, cluster_id: str, expires_at: float | None = None
    ) -> tuple[RegistrationToken, str]:
        """A new registration token; returns it with its one-time plaintext."""
        secret = hashing.new_secret()
        token_hash = hashing.hash_token(secret)
        now = self.clock()
        registration = await self.create_unique(
            REGISTRATION,
            "crt",
            lambda reg_id: RegistrationToken(reg_id, cluster_id, token_hash, now, expires_at),
        )
        return registration, f"{registration.id}:{secret}"

    async def rotate_registration(
        self, old: RegistrationToken, previous_valid_s: float
    ) -> tuple[RegistrationToken, str] | None:
        """Replace ``old`` with a new token (same expiry, if it had one); ``old`` stays
        valid ``previous_valid_s`` longer (never longer than it would have), or is
        revoked at once when that is 0. None if ``old`` was revoked meanwhile."""
        now = self.clock()
        new, plaintext = await self.new_registration(old.cluster_id, old.expires_at)
        if previous_valid_s > 0:
            until = now + previous_valid_s
            if old.expires_at is not None:
                until = min(until, old.expires_at)
            kept = await self.patch(REGISTRATION, old.id, expires_at=until, rotated_to=new.id)
        else:
            kept = await self.delete(REGISTRATION, old.id)
        if not kept:
            await self.delete(REGISTRATION, new.id)
            return None
        return new, plaintext


DIRECTORY = web.AppKey("directory", Directory)
