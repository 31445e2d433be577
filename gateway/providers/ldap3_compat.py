"""ldap3, imported with its import-time deprecation warnings silenced.

ldap3 2.9.1 imports ``tagMap``/``typeMap`` from pyasn1, which pyasn1 0.6 renamed
and warns about (``DeprecationWarning`` at import, harmless). The test suite turns
warnings into errors, so every herdgate module and test takes ldap3 from here;
the filter applies only while ldap3's own modules are imported.
"""

from __future__ import annotations

import warnings

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
