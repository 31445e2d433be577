"""The commands of the ``herdgate`` CLI that talk to a gateway's management API.

Each module registers its subcommands (``add_parsers``); ``common`` holds what they
share. They import ``herdgate.client``, ``herdgate.contexts``, ``herdgate.output`` and
``herdgate.kubeconfigs``, ``config`` and the standard library: never the gateway, the
tunnel or the webhook (pyproject.toml's import contracts say so).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from herdgate.commands import access, auth, clusters, kubeconfig, users

if TYPE_CHECKING:
    from herdgate.commands.common import Subparsers


def add_parsers(subparsers: Subparsers) -> None:
    """``login`` (people, and kubectl's credential plugin), ``logout``, ``context``,
    ``cluster``, ``user``, ``token``, ``binding``, ``project``, ``roletemplate``,
    ``kubeconfig``."""
    auth.add_parsers(subparsers)
    clusters.add_parsers(subparsers)
    users.add_parsers(subparsers)
    access.add_parsers(subparsers)
    kubeconfig.add_parsers(subparsers)
