"""CPython's ``ssl`` internals and OpenSSL's ``SSL_CTX``, reached for speed by the TLS paths.

What herdgate relies on, and what runs when it does not hold (one WARNING each):

1. ``ssl-socket-direct``: ``ssl.SSLSocket._sslobj``, the C ``_ssl._SSLSocket`` under the
   Python wrapper, with ``read(len, buffer)``, ``write(data)`` and ``pending()``.
   :class:`tunnel.tls.TLSTransport` calls them directly (the wrappers' checks were a large
   share of its time per small request: docs/design.md section 3, "TLS"). Fallback: the
   public ``SSLSocket.read``, ``write`` and ``pending``, which take the same arguments
   (and turn a ragged EOF into 0, which the transport reads as end of stream as well).
2. ``ssl-object-direct``: ``ssl.SSLObject._create`` (the classmethod
   ``SSLContext.wrap_bio`` calls on ``SSLContext.sslobject_class``) and
   ``SSLObject._sslobj``: :class:`DirectSSLObject` binds the C ``read``, ``write`` and
   ``pending`` on the instance, so the event loop's TLS (memory BIOs) calls them without
   a Python frame per record. Fallback: contexts keep the standard ``ssl.SSLObject``.
3. ``openssl-read-ahead``: the ``SSL_CTX *`` of an ``ssl.SSLContext`` is the first field
   after the object header (CPython's ``PySSLContext``), and ``SSL_CTX_ctrl``,
   ``SSL_CTX_get_options`` and ``SSL_CTX_get_verify_mode`` are found in the library
   ``_ssl`` links (through ``ctypes``). :func:`enable_read_ahead` sets read-ahead, so
   OpenSSL takes every record that has arrived in one ``recv`` instead of two per record
   (docs/design.md section 3, "TLS", has what that costs). Fallback: no read-ahead (correct,
   slower). The pointer is read only on CPython versions whose ``PySSLContext`` layout
   was checked (:data:`LAYOUT_CHECKED`); even when the probe passed, each context's
   pointer is checked against that context's options and verify mode before it is used.
4. ``openssl-has-pending``: the ``SSL *`` of an ``ssl.SSLSocket``'s C object is the second
   field after the object header (CPython's ``PySSLSocket``: the socket's weak reference,
   then ``ssl``), and ``SSL_has_pending``, ``SSL_get_SSL_CTX`` and ``SSL_get_fd`` are
   found in libssl. :func:`pending_check` gives :class:`tunnel.tls.TLSTransport` a call
   that says whether OpenSSL holds anything not yet read (a record read ahead, processed
   or not), so a read that took a short record and left nothing inside OpenSSL ends there
   instead of asking again, which costs a ``recv`` that fails and an ``SSLWantReadError``
   built and caught (docs/design.md section 3, "TLS"). Each socket's pointer is checked
   before it is used: OpenSSL must name the socket's descriptor and its context's
   ``SSL_CTX`` for it. Fallback: read until OpenSSL asks for more (correct, slower).

5. ``openssl-session-ref``: the same ``SSL *`` (checked as in 4), and
   ``SSL_get_session``, ``SSL_SESSION_dup``, ``SSL_set_session``, ``SSL_SESSION_free``,
   ``SSL_SESSION_has_ticket`` and ``SSL_SESSION_is_resumable`` in libssl.
   :func:`session_of` copies an ending client connection's TLS session with
   ``SSL_SESSION_dup`` (a copy of the structure; the certificates are shared by
   reference) into a :class:`SessionRef`, and :func:`resume` hands it to the next
   connection before its handshake. CPython's own ``SSLSocket.session`` copies the
   session too (a workaround for an OpenSSL 1.1.0 bug), but by serialising it and
   parsing it back, the server's certificate with it, which OpenSSL 3.0 makes a large
   share of the agent's CPU per dialled connection (docs/design.md section 4, "Relay").
   A copy, not a second reference to the connection's own: OpenSSL marks a connection's
   session not resumable when the connection is freed with no close_notify sent (an
   abort, or a server that closed first), which would reach a shared one. A session is
   resumed only on a connection of the context it came from (CPython's setter checks
   the same). Fallback: ``SSLSocket.session``, as before.

Tested: CPython 3.11.7 with OpenSSL 3.0.19 (Debian 12). The probes: (1) and (2) wrap a
socket pair's end and a pair of memory BIOs in a client context and call ``read``,
``write`` and ``pending`` on the C object before any handshake (each must ask to read,
``SSLWantReadError``, and ``pending`` be 0); (3) reads a fresh context's options and
verify mode through the pointer, changes both from Python and reads them again (they
must follow), then sets read-ahead and reads it back; (4) wraps a socket pair's end,
finds its ``SSL *`` (OpenSSL must give back the socket's descriptor and the context's
``SSL_CTX`` for it) and asks ``SSL_has_pending``, which must say nothing is held; (5)
finds a fresh socket's ``SSL *`` likewise, which must hold no session, sets a new empty
session on it and must get that same session back (and a copy of it), with no ticket
and not resumable.
"""

from __future__ import annotations

import _ssl
import contextlib
import ctypes
import functools
import logging
import socket
import ssl
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from config.compat.assumption import AGENT, GATEWAY, Assumption, Broken

logger = logging.getLogger(__name__)

_SSL_CTRL_GET_READ_AHEAD = 40
_SSL_CTRL_SET_READ_AHEAD = 41
_VERIFY_MODES = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}
"""Python's verify modes as OpenSSL's SSL_VERIFY_* bits."""
_read_ahead_on: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()
"""Contexts already set (each connection asks again)."""
_lib: list[ctypes.CDLL] = []
"""The libssl handle, loaded on first use."""


def _bare_client_context() -> ssl.SSLContext:
    """A client context that verifies nothing: the probes never finish a handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _check_c_object(inner: Any) -> None:
    """``inner`` answers ``pending``, ``read(len, buffer)`` and ``write`` as the C object
    does before its handshake: nothing pending, and both want to read."""
    if inner is None:
        raise Broken("no _sslobj")
    if inner.pending() != 0:
        raise Broken("pending() is not 0 before the handshake")
    for name, args in (("read", (1, bytearray(1))), ("write", (b"x",))):
        try:
            getattr(inner, name)(*args)
        except ssl.SSLWantReadError:
            continue
        raise Broken(f"{name} before the handshake did not ask to read")


# 1. SSLSocket._sslobj


@contextlib.contextmanager
def _fresh_tls_socket() -> Iterator[ssl.SSLSocket]:
    """A client TLS socket on one end of a socket pair, before any handshake."""
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        sock = _bare_client_context().wrap_socket(ours, do_handshake_on_connect=False)
        try:
            yield sock
        finally:
            sock.close()
    finally:
        ours.close()
        theirs.close()


def _probe_socket() -> None:
    with _fresh_tls_socket() as sock:
        _check_c_object(getattr(sock, "_sslobj", None))


SOCKET_DIRECT = Assumption(
    "ssl-socket-direct",
    "ssl.SSLSocket._sslobj (CPython's C object under the socket)",
    "TLS connections use the public SSLSocket methods (slower)",
    _probe_socket,
    programs=(GATEWAY, AGENT),
)


def direct(sock: ssl.SSLSocket) -> Any:
    """What :class:`tunnel.tls.TLSTransport` calls ``read``, ``write`` and ``pending`` on:
    the C object under ``sock`` when the assumption holds, else ``sock`` itself."""
    if SOCKET_DIRECT.holds():
        inner = getattr(sock, "_sslobj", None)
        if inner is not None:
            return inner
    return sock


# 2. SSLObject._create and SSLObject._sslobj


class DirectSSLObject(ssl.SSLObject):
    """``ssl.SSLObject`` whose ``read``, ``write`` and ``pending`` are the C methods
    themselves, not Python wrappers calling them.

    The event loop's TLS transport calls ``read`` once per TLS record (16 KiB) and
    ``pending`` after it: a Python frame each time, for every record of every connection.
    Contexts hand it out through ``SSLContext.sslobject_class`` (:func:`use_direct_objects`).
    """

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> DirectSSLObject:
        self: DirectSSLObject = super()._create(*args, **kwargs)  # type: ignore[misc]
        inner = getattr(self, "_sslobj", None)  # CPython's; without it, the wrappers stay
        if inner is not None:
            self.read = inner.read  # type: ignore[method-assign]
            self.write = inner.write  # type: ignore[method-assign]
            self.pending = inner.pending  # type: ignore[method-assign]
        return self


def _probe_object() -> None:
    context = _bare_client_context()
    context.sslobject_class = DirectSSLObject
    obj = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
    if not isinstance(obj, DirectSSLObject):
        raise Broken("SSLContext.wrap_bio did not use sslobject_class")
    inner: Any = getattr(obj, "_sslobj", None)
    _check_c_object(inner)
    if obj.read != inner.read or obj.pending != inner.pending:
        raise Broken("SSLObject._create did not hand the C methods over")


OBJECT_DIRECT = Assumption(
    "ssl-object-direct",
    "ssl.SSLObject._create and SSLObject._sslobj (CPython)",
    "TLS contexts keep the standard ssl.SSLObject (slower)",
    _probe_object,
    programs=(GATEWAY, AGENT),
)


def use_direct_objects(context: ssl.SSLContext) -> None:
    """Let ``context`` hand out :class:`DirectSSLObject` (if the assumption holds)."""
    if OBJECT_DIRECT.holds():
        context.sslobject_class = DirectSSLObject


# 3. SSL_CTX read-ahead through ctypes


_P, _INT = ctypes.c_void_p, ctypes.c_int
_SIGNATURES: dict[str, tuple[list[Any], Any]] = {
    "SSL_CTX_get_options": ([_P], ctypes.c_uint64),
    "SSL_CTX_get_verify_mode": ([_P], _INT),
    "SSL_CTX_ctrl": ([_P, _INT, ctypes.c_long, _P], ctypes.c_long),
    "SSL_get_SSL_CTX": ([_P], _P),
    "SSL_get_fd": ([_P], _INT),
    "SSL_has_pending": ([_P], _INT),
    "SSL_get1_session": ([_P], _P),
    "SSL_get_session": ([_P], _P),
    "SSL_SESSION_dup": ([_P], _P),
    "SSL_set_session": ([_P, _P], _INT),
    "SSL_SESSION_new": ([], _P),
    "SSL_SESSION_free": ([_P], None),
    "SSL_SESSION_has_ticket": ([_P], _INT),
    "SSL_SESSION_is_resumable": ([_P], _INT),
}
"""The libssl functions called, with their C argument and result types."""


def _libssl() -> ctypes.CDLL:
    """The libssl that Python's ssl module uses (found through ``_ssl``'s own links)."""
    if not _lib:
        lib = ctypes.CDLL(_ssl.__file__)
        for name, (arguments, result) in _SIGNATURES.items():
            function = getattr(lib, name)
            function.argtypes = arguments
            function.restype = result
        _lib.append(lib)
    return _lib[0]


LAYOUT_CHECKED = ((3, 11), (3, 12), (3, 13))
"""CPython versions whose ``PySSLContext`` has the ``SSL_CTX *`` first and whose
``PySSLSocket`` has the socket's weak reference then the ``SSL *`` (read in
Modules/_ssl.c; run on 3.11). On others no pointer is even read: following a wrong one
could crash the process, which no probe could catch."""


def _layout_checked() -> bool:
    return sys.implementation.name == "cpython" and sys.version_info[:2] in LAYOUT_CHECKED


def _require_checked_layout() -> None:
    if not _layout_checked():
        raise Broken(
            f"the layout of {sys.implementation.name} {sys.version.split()[0]} is unchecked"
        )


def _ssl_ctx(context: ssl.SSLContext) -> int | None:
    """``context``'s ``SSL_CTX *`` if what it points at has the context's options and
    verify mode, else None."""
    if not _layout_checked():
        return None
    lib = _libssl()
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if (
        not pointer
        or pointer % ctypes.sizeof(ctypes.c_void_p)
        or lib.SSL_CTX_get_options(pointer) != context.options
        or lib.SSL_CTX_get_verify_mode(pointer) != _VERIFY_MODES.get(context.verify_mode)
    ):
        return None
    return pointer


def _probe_read_ahead() -> None:
    _require_checked_layout()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verify mode CERT_REQUIRED
    if _ssl_ctx(context) is None:
        raise Broken("the pointer after the object header is not the context's SSL_CTX")
    context.options ^= ssl.OP_NO_TICKET
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    pointer = _ssl_ctx(context)
    if pointer is None:
        raise Broken("SSL_CTX options or verify mode do not follow the context's")
    lib = _libssl()
    lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_READ_AHEAD, 1, None)
    if lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_GET_READ_AHEAD, 0, None) != 1:
        raise Broken("read-ahead did not read back as set")


READ_AHEAD = Assumption(
    "openssl-read-ahead",
    "the SSL_CTX pointer inside ssl.SSLContext (CPython) and SSL_CTX_ctrl (libssl, ctypes)",
    "TLS reads without read-ahead (two recv calls per record)",
    _probe_read_ahead,
    programs=(GATEWAY, AGENT),
)


def enable_read_ahead(context: ssl.SSLContext) -> bool:
    """Let connections made from ``context`` read as many records as have arrived at once.

    Without read-ahead OpenSSL reads a record's 5-byte header and then its body: two
    ``recv`` calls per record, which made the tunnel's small frames cost more per request
    than through memory BIOs (docs/design.md section 3, "TLS", has the figure). Python has
    no setting for it, so this calls ``SSL_CTX_ctrl`` on the context's ``SSL_CTX``
    (checked against the context's options and verify mode before it is used; on any
    mismatch nothing is changed and False is returned). False as well, without a word, when
    the start-up probe failed (that was reported once).
    """
    if context in _read_ahead_on:
        return True
    if not READ_AHEAD.holds():
        return False
    try:
        pointer = _ssl_ctx(context)
        if pointer is None:
            logger.warning("cannot reach OpenSSL's SSL_CTX: TLS reads without read-ahead")
            return False
        lib = _libssl()
        lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_READ_AHEAD, 1, None)
        on = bool(lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_GET_READ_AHEAD, 0, None))
    except (OSError, AttributeError, ValueError) as exc:
        logger.warning("cannot set TLS read-ahead: %s", exc)
        return False
    if on:
        _read_ahead_on.add(context)
    return on


# 4. SSL_has_pending through ctypes


def _ssl_of(sock: ssl.SSLSocket, inner: Any) -> int | None:
    """The ``SSL *`` of ``inner`` (``sock``'s C object) if OpenSSL names ``sock``'s
    descriptor and its context's ``SSL_CTX`` for it, else None."""
    if not _layout_checked():
        return None
    if inner is None or type(inner) is not getattr(_ssl, "_SSLSocket", None):
        return None
    context = _ssl_ctx(sock.context)
    if context is None:
        return None
    lib = _libssl()
    size = ctypes.sizeof(ctypes.c_void_p)
    pointer = ctypes.c_void_p.from_address(id(inner) + object.__basicsize__ + size).value
    if (
        not pointer
        or pointer % size
        or lib.SSL_get_SSL_CTX(pointer) != context
        or lib.SSL_get_fd(pointer) != sock.fileno()
    ):
        return None
    return pointer


def _probe_has_pending() -> None:
    _require_checked_layout()
    with _fresh_tls_socket() as sock:
        pointer = _ssl_of(sock, getattr(sock, "_sslobj", None))
        if pointer is None:
            raise Broken("the second pointer after the object header is not the SSL *")
        if _libssl().SSL_has_pending(pointer) != 0:
            raise Broken("SSL_has_pending says a fresh connection holds data")


HAS_PENDING = Assumption(
    "openssl-has-pending",
    "the SSL pointer inside ssl.SSLSocket's C object (CPython) and SSL_has_pending "
    "(libssl, ctypes)",
    "TLS reads ask OpenSSL again after each record until it wants more (a failed recv each)",
    _probe_has_pending,
    programs=(GATEWAY, AGENT),
)


def pending_check(sock: ssl.SSLSocket, inner: Any) -> Callable[[], int] | None:
    """For a connection read through ``inner`` (``sock``'s C object, which must be kept
    alive as long as the call is used): a call answering non-zero while OpenSSL holds
    anything of it not yet read (``SSL_has_pending``: a record read ahead, processed or
    not). None when the assumption does not hold or this socket's pointer does not check
    out (then read until OpenSSL wants more)."""
    if not HAS_PENDING.holds():
        return None
    try:
        pointer = _ssl_of(sock, inner)
    except (OSError, AttributeError, ValueError) as exc:
        logger.warning("cannot reach OpenSSL's SSL: %s", exc)
        return None
    if pointer is None:
        return None
    return functools.partial(_libssl().SSL_has_pending, pointer)


# 5. TLS sessions by reference through ctypes


class SessionRef:
    """A client TLS session (OpenSSL's ``SSL_SESSION *``, a copy of the connection's own)
    held by reference, with the context of the connection it came from; released once
    (``SSL_SESSION_free``), by :func:`resume` or when dropped."""

    __slots__ = ("_pointer", "context")

    def __init__(self, pointer: int, context: ssl.SSLContext) -> None:
        self._pointer: int | None = pointer
        self.context = context

    @property
    def released(self) -> bool:
        return self._pointer is None

    def release(self) -> None:
        pointer, self._pointer = self._pointer, None
        if pointer is not None:
            _libssl().SSL_SESSION_free(pointer)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # (at interpreter exit libssl may be gone)
            self.release()


Session = SessionRef | ssl.SSLSession
"""A session to resume: held by reference, or CPython's copy (the fallback)."""


def _probe_session_ref() -> None:
    _require_checked_layout()
    lib = _libssl()
    with _fresh_tls_socket() as sock:
        pointer = _ssl_of(sock, getattr(sock, "_sslobj", None))
        if pointer is None:
            raise Broken("the second pointer after the object header is not the SSL *")
        held = lib.SSL_get1_session(pointer)
        if held:
            lib.SSL_SESSION_free(held)
            raise Broken("a fresh connection holds a session")
        session = lib.SSL_SESSION_new()
        if not session:
            raise Broken("SSL_SESSION_new failed")
        try:
            if lib.SSL_set_session(pointer, session) != 1:
                raise Broken("SSL_set_session refused a new session")
            back = lib.SSL_get1_session(pointer)
            if back:
                lib.SSL_SESSION_free(back)
            if back != session or lib.SSL_get_session(pointer) != session:
                raise Broken("SSL_get1_session did not give back the session set")
            copy = lib.SSL_SESSION_dup(session)
            if not copy:
                raise Broken("SSL_SESSION_dup failed")
            lib.SSL_SESSION_free(copy)
            if copy == session:
                raise Broken("SSL_SESSION_dup did not copy")
            if lib.SSL_SESSION_has_ticket(session) or lib.SSL_SESSION_is_resumable(session):
                raise Broken("an empty session has a ticket or is resumable")
        finally:
            lib.SSL_SESSION_free(session)


SESSION_REF = Assumption(
    "openssl-session-ref",
    "the SSL pointer inside ssl.SSLSocket's C object (CPython) and SSL_get1_session, "
    "SSL_set_session (libssl, ctypes)",
    "TLS sessions are resumed through SSLSocket.session (a copy of each, parsed back)",
    _probe_session_ref,
    programs=(AGENT,),
)


def session_of(sock: ssl.SSLSocket, inner: Any) -> Session | None:
    """The session of ``sock`` (a client connection about to close; ``inner`` its C
    object) to resume later, if it holds a ticket and can be resumed: by reference when
    the assumption holds and the socket's pointer checks out, else CPython's copy."""
    if SESSION_REF.holds():
        try:
            pointer = _ssl_of(sock, inner)
        except (OSError, AttributeError, ValueError) as exc:
            logger.warning("cannot reach OpenSSL's SSL: %s", exc)
            pointer = None
        if pointer is not None:
            lib = _libssl()
            own = lib.SSL_get_session(pointer)  # the connection's (borrowed)
            if not own or not lib.SSL_SESSION_has_ticket(own):
                return None
            if not lib.SSL_SESSION_is_resumable(own):
                return None
            copy = lib.SSL_SESSION_dup(own)
            return SessionRef(copy, sock.context) if copy else None
    copied = sock.session
    if copied is None or not copied.has_ticket:
        return None
    return copied


def resume(sock: ssl.SSLSocket, inner: Any, session: Session) -> None:
    """Offer ``session`` on ``sock`` (a client connection before its handshake; ``inner``
    its C object). A :class:`SessionRef` is released here (the connection holds its own
    reference). A session from another context, or one that cannot be set, is not
    offered: the handshake is then a full one, never a failed dial."""
    if not isinstance(session, SessionRef):
        with contextlib.suppress(ValueError):  # another context's: CPython refuses it
            sock.session = session
        return
    try:
        if session.released or session.context is not sock.context:
            return
        pointer = _ssl_of(sock, inner)
        if pointer is not None:
            _libssl().SSL_set_session(pointer, session._pointer)
    except (OSError, AttributeError, ValueError) as exc:
        logger.warning("cannot offer a TLS session: %s", exc)
    finally:
        session.release()
