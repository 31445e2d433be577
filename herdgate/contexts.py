"""The CLI's contexts: which gateways it knows, how to trust each, and its tokens.

One JSON file, ``$HERDGATE_CONFIG`` or ``~/.herdgate/config.json`` (as rancher's
``~/.rancher/cli2.json``), readable by its owner only (0600, its directory 0700),
written whole and atomically. A context holds a gateway's URL, how its certificate is
checked (a CA kept inline, the system's CAs, or, chosen explicitly, not at all), a
token and who it belongs to; one context is current, as in kubectl's kubeconfig::

    {"currentContext": "admin@gw.example.com:8443",
     "contexts": {"admin@gw.example.com:8443": {"server": "https://gw.example.com:8443",
        "caCerts": "-----BEGIN CERTIFICATE-----...", "token": "token-abcde:...",
        "tokenOwned": true, "provider": "local", "username": "admin", "userId": "u-xxxxx"}}}

The token never appears in a representation of a ``Context`` (``repr``, errors), and
the CLI never prints or logs it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_ENV = "HERDGATE_CONFIG"
"""The file's path, when not ``~/.herdgate/config.json``."""
FILE_MODE = 0o600
DIR_MODE = 0o700
MAX_FILE_BYTES = 4 * 1024 * 1024
"""A bigger file is not a config this CLI wrote; it is refused, not read."""


class ContextFileError(Exception):
    """The file cannot be read, parsed or written; the message says which and why."""


@dataclass(frozen=True)
class Context:
    name: str
    server: str
    """``https://host:port``, without a trailing slash."""
    ca_pem: str = ""
    """The CA that verifies the gateway (PEM); empty: the system's CAs."""
    insecure: bool = False
    """No certificate check at all: only when asked for at login (``--insecure``)."""
    token: str = field(default="", repr=False)
    token_owned: bool = False
    """The token was made by ``herdgate login`` (so ``herdgate logout`` revokes it)."""
    provider: str = ""
    username: str = ""
    user_id: str = ""

    def trust(self) -> str:
        """How the gateway's certificate is checked, in words for ``context list``."""
        if self.insecure:
            return "insecure"
        return "ca" if self.ca_pem else "system"


@dataclass
class Contexts:
    contexts: dict[str, Context] = field(default_factory=dict)
    current: str = ""

    def get(self, name: str) -> Context | None:
        return self.contexts.get(name)

    def put(self, context: Context, make_current: bool = True) -> None:
        self.contexts[context.name] = context
        if make_current:
            self.current = context.name

    def remove(self, name: str) -> None:
        self.contexts.pop(name, None)
        if self.current == name:
            self.current = ""

    def for_server(self, server: str) -> list[Context]:
        return [c for c in self.contexts.values() if c.server == server]


def default_path(environ: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    """``$HERDGATE_CONFIG``, else ``$HOME/.herdgate/config.json``."""
    env = os.environ if environ is None else environ
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser()
    return (home or Path.home()) / ".herdgate" / "config.json"


_FIELDS = {
    "server": "server",
    "caCerts": "ca_pem",
    "insecure": "insecure",
    "token": "token",
    "tokenOwned": "token_owned",
    "provider": "provider",
    "username": "username",
    "userId": "user_id",
}
_BOOLS = {"insecure", "token_owned"}


def parse(text: str, where: str = "config") -> Contexts:
    """The file's text as contexts; a clear error for anything this CLI did not write."""
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise ContextFileError(f"{where} is not JSON ({exc}); fix or remove it") from None
    if not isinstance(data, dict):
        raise ContextFileError(f"{where} must hold a JSON object; fix or remove it")
    raw = data.get("contexts")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ContextFileError(f"{where}: contexts must be an object")
    result = Contexts()
    for name, entry in raw.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("server"), str):
            raise ContextFileError(f"{where}: context {name!r} has no server")
        values: dict[str, Any] = {}
        for key, attribute in _FIELDS.items():
            value = entry.get(key)
            if value is None:
                continue
            wanted = bool if attribute in _BOOLS else str
            if not isinstance(value, wanted):
                raise ContextFileError(
                    f"{where}: context {name!r}: {key} must be a {wanted.__name__}"
                )
            values[attribute] = value
        result.contexts[name] = Context(name=name, **values)
    current = data.get("currentContext") or ""
    if not isinstance(current, str):
        raise ContextFileError(f"{where}: currentContext must be a string")
    result.current = current if current in result.contexts else ""
    return result


def dump(contexts: Contexts) -> str:
    out: dict[str, Any] = {"currentContext": contexts.current, "contexts": {}}
    for name, context in sorted(contexts.contexts.items()):
        entry: dict[str, Any] = {}
        for key, attribute in _FIELDS.items():
            value = getattr(context, attribute)
            if value or key == "server":
                entry[key] = value
        out["contexts"][name] = entry
    return json.dumps(out, indent=2) + "\n"


def load(path: Path) -> Contexts:
    """The contexts in ``path`` (none if it does not exist)."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return Contexts()
    except OSError as exc:
        raise ContextFileError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ContextFileError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ContextFileError(f"{path} is not UTF-8 text; fix or remove it") from None
    return parse(text, str(path))


def too_open(path: Path) -> bool:
    """The file can be read or written by others than its owner."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return bool(stat.S_IMODE(mode) & 0o077)


def write_private(path: Path, data: bytes) -> None:
    """``data`` into ``path`` atomically, readable by its owner only: a temporary file
    (0600) in the same directory, flushed to disk, renamed over ``path``. A symbolic link
    at ``path`` is followed (its target is replaced, the link stays)."""
    target = path.resolve() if path.is_symlink() else path
    directory = target.parent
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise ContextFileError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ContextFileError(f"cannot write {path}: {exc.strerror}") from None


def save(path: Path, contexts: Contexts) -> None:
    write_private(path, dump(contexts).encode())


def without_token(context: Context) -> Context:
    return dataclasses.replace(context, token="", token_owned=False)
