"""A request's query parameters as kube-apiserver reads them (Go's ``url.ParseQuery``):
pairs split at ``&``, a pair holding ``;`` skipped, names and values percent- and
``+``-decoded, the first of a name counts; a boolean parameter is true when present and
not "false" or "0". One reading for the gateway's (``gateway.proxy.requestinfo``) and
the agent's (``tunnel.h2translate.long_running``), so that ``?w%61tch=1`` is a watch to
both as to the API server. Sans I/O; compiled (``config.native``: on the request path).
"""

from __future__ import annotations

from urllib.parse import unquote_plus

FALSE = frozenset({"false", "0"})


def query_value(query: str, key: str) -> str | None:
    """The first value of ``key``, None if absent. (The gateway has refused bad ``%``
    escapes before: ``gateway.proxy.paths``.)"""
    if not query:
        return None
    for pair in query.split("&"):
        if not pair or ";" in pair:
            continue
        name, _, value = pair.partition("=")
        if name != key and ("%" in name or "+" in name):
            name = unquote_plus(name)
        if name == key:
            return unquote_plus(value)
    return None


def query_flag(query: str, key: str) -> bool:
    """A boolean parameter: present and not "false" or "0"."""
    value = query_value(query, key)
    return value is not None and value.lower() not in FALSE
