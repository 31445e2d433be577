"""ldap3, imported with its import-time deprecation warnings silenced, and the one use of
its internals, checked (:mod:`config.compat`).

ldap3 2.9.1 imports ``tagMap``/``typeMap`` from pyasn1, which pyasn1 0.6 renamed
and warns about (``DeprecationWarning`` at import, harmless). The test suite turns
warnings into errors, so every herdgate module and test takes ldap3 from here;
the filter applies only while ldap3's own modules are imported.

Private internals (``ldap3-availability``): each entry of ``Server.address_info`` is a
list whose sixth item (index 5) is the address's availability (None: not tried, True, or
False after a failure), ``Server.reset_availability()`` sets it back to None, and a
single-state ``ServerPool`` keeps its servers' availability in
``_pool_state.server_states[i].available``. ldap3 skips an address for 5 s after it
failed and a pool skips a server for ``server_retry_s``; when everything is being skipped
it fails without trying, so the LDAP provider marks them available again then
(:func:`revive`). Tested: ldap3 2.9.1. The probe (run when an LDAP provider is built, at
start-up) resolves ``127.0.0.1`` (numeric: no DNS, no connection), marks that address
failed and resets it, and builds a ``ServerPool`` of that server registered for one
connection object, reading each of those fields. When it fails: one WARNING, nothing is
reset, and a directory that is back is refused until ldap3's own delays run out.
"""

from __future__ import annotations

import warnings
from typing import Any

from config.compat import Assumption, Broken

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ldap3(\..*)?$")
    from ldap3 import (
        ANONYMOUS,
        BASE,
        FIRST,
        LEVEL,
        MODIFY_ADD,
        MODIFY_DELETE,
        MODIFY_REPLACE,
        NO_ATTRIBUTES,
        NONE,
        RANDOM,
        ROUND_ROBIN,
        SIMPLE,
        SUBTREE,
        SYNC,
        Connection,
        Server,
        ServerPool,
        Tls,
    )
    from ldap3.core.exceptions import LDAPException
    from ldap3.operation.search import MATCH_EQUAL, MATCH_EXTENSIBLE, parse_filter
    from ldap3.protocol.convert import prepare_filter_for_sending
    from ldap3.utils.config import set_config_parameter
    from ldap3.utils.conv import escape_filter_chars

__all__ = [
    "ANONYMOUS",
    "BASE",
    "FIRST",
    "LEVEL",
    "MATCH_EQUAL",
    "MATCH_EXTENSIBLE",
    "MODIFY_ADD",
    "MODIFY_DELETE",
    "MODIFY_REPLACE",
    "NONE",
    "NO_ATTRIBUTES",
    "RANDOM",
    "ROUND_ROBIN",
    "SIMPLE",
    "SUBTREE",
    "SYNC",
    "Connection",
    "LDAPException",
    "Server",
    "ServerPool",
    "Tls",
    "escape_filter_chars",
    "parse_filter",
    "prepare_filter_for_sending",
    "set_config_parameter",
]


def _availability(server: Any) -> object:
    """The availability ldap3 keeps for the server's first address."""
    infos = server.address_info
    if not infos or len(infos[0]) < 6:
        raise Broken("address_info entries have no availability at index 5")
    flag: object = infos[0][5]
    return flag


def _probe_availability() -> None:
    server = Server("127.0.0.1", port=389, connect_timeout=1)
    if _availability(server) is not None:
        raise Broken("a new address is not marked None at index 5")
    server.update_availability(server.address_info[0], False)
    if _availability(server) is not False:
        raise Broken("a failed address is not marked False at index 5")
    server.reset_availability()
    if _availability(server) is not None:
        raise Broken("reset_availability() did not clear index 5")
    pool = ServerPool([server], pool_strategy=FIRST, active=1, exhaust=False)
    pool.initialize(object())
    states = pool._pool_state.server_states
    if len(states) != 1 or states[0].available is not True:
        raise Broken("ServerPool._pool_state.server_states has no available flag")


AVAILABILITY = Assumption(
    "ldap3-availability",
    "ldap3's Server.address_info[i][5] and ServerPool._pool_state.server_states",
    "LDAP servers that failed are retried only after ldap3's own delays",
    _probe_availability,
    programs=(),  # checked when an LDAP provider is built
)


def revive(servers: list[Server], server_or_pool: Server | ServerPool) -> None:
    """Mark available again every address of a server whose addresses all failed, and
    every server of the pool when none is thought available (nothing when the
    assumption does not hold)."""
    if not AVAILABILITY.holds():
        return
    for server in servers:
        infos = server.address_info
        if infos and all(info[5] is False for info in infos):
            server.reset_availability()
    state: Any = getattr(server_or_pool, "_pool_state", None)  # a ServerPool's
    states = getattr(state, "server_states", None) or []
    if states and not any(s.available for s in states):
        for server_state in states:
            server_state.available = True
