"""gateway.front.h2_protocol held to a reference: the ``h2`` package's server side,
inbound validation on.

Hypothesis builds requests, ordinary and hostile (names and values with CR, LF, NUL,
other controls, whitespace, upper case, separators; pseudo-headers missing, repeated,
late, unknown or of a response; ``te``, connection-specific fields, ``host``,
``content-length`` against the DATA sent; trailers), encodes each once with HPACK and
cuts the block into HEADERS and CONTINUATION frames at random places; the same bytes go
to ``gateway.front.h2_protocol.ServerConnection`` and to ``h2.connection.H2Connection``. Both must
accept the request (it arrives whole: request, body, end) or both refuse it (stream
reset or connection error).

Where they differ on purpose, RFC 9113 decides; each difference is written out below
from the RFCs, not from the gateway's code (``stricter_than_h2`` and ``length_ok``):

- Names: ``h2`` refuses controls, SP, upper case, non-ASCII and inner colons (RFC 9113
  section 8.2.1's minimum); the gateway also refuses the separators a token excludes
  (``"(),/;<=>?@[\\]{}``), as RFC 9110 section 5.1 (field-name = token) and 8.2.1's note
  say. Values: ``h2`` refuses NUL, CR and LF; the gateway also refuses the other
  controls but HTAB, and DEL (RFC 9110 section 5.5: invalid; the gateway writes the
  value into an HTTP/1.1 head).
- Pseudo-headers: ``h2`` checks presence, order and repetition but only that ``:path``
  is not empty. The gateway also requires ``:method`` to be a token (RFC 9110 section
  9.1), ``:scheme`` a scheme (RFC 3986 section 3.1), ``:path`` origin-form or ``*`` for
  OPTIONS (RFC 9113 section 8.3.1) without SP, HTAB, ``#`` or non-ASCII (the printable
  ASCII RFC 3986 leaves out is let through: browsers send it raw), ``:authority`` (else
  ``host``) a non-empty host and optional port without userinfo (RFC 9113 8.3.1, RFC
  3986 3.2), and for CONNECT ``:authority`` itself (RFC 9113 section 8.5). ``:protocol``
  (extended CONNECT, RFC 8441) is malformed: the gateway never offers it.
- ``content-length`` (RFC 9113 section 8.1.1: it must equal the DATA received, however
  the stream ends): ``h2`` checks it only against DATA frames, not when HEADERS or
  trailers end the stream, and reads a HEAD request's as 0. So ``h2`` is asked about the
  request with ``content-length`` renamed, and the length is judged by ``length_ok``
  (RFC 9110 section 8.6: 1*DIGIT, repeated only with the same value). Trailers here
  carry no ``content-length``: ``h2`` would take one there for the request's (RFC 9110
  section 6.5.1 gives it no meaning; the gateway drops trailers).
- ``host`` beside ``:authority``: ``h2`` wants the same bytes; RFC 9113 section 8.3.1
  wants the same server after scheme-based normalisation (RFC 3986 section 6.2.3: host
  letter case, an empty or default port). ``h2`` is asked with ``host`` set to
  ``:authority``'s bytes when ``same_server`` says they are the same.
- ``h2`` runs with ``normalize_inbound_headers=False``: normalising joins the ``cookie``
  fields and moves them to the end before validation, so a pseudo-header after a
  ``cookie`` field (malformed, RFC 9113 section 8.3) passed. Validation is unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.front import h2_protocol as http2
from gateway.front.h2_protocol import (
    PREFACE,
    End,
    RequestReceived,
    Reset,
    ServerConnection,
    Terminated,
)

Header = tuple[bytes, bytes]

TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
LOWER_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+\-.]*")
_UNRESERVED_SUB_DELIMS = rb"A-Za-z0-9\-._~!$&'()*+,;="
AUTHORITY = re.compile(
    rb"(?:\[[" + _UNRESERVED_SUB_DELIMS + rb":%]+\]"  # IP-literal (RFC 3986 3.2.2)
    rb"|(?:[" + _UNRESERVED_SUB_DELIMS + rb"]|%[0-9A-Fa-f]{2})+)"  # IPv4 or reg-name
    rb"(?::[0-9]*)?"  # port (3.2.3)
)


@dataclass
class Case:
    fields: list[Header]
    body: list[bytes] = field(default_factory=list)
    """DATA frames' payloads; empty: END_STREAM on the HEADERS (unless trailers)."""
    trailers: list[Header] | None = None
    cuts: list[int] = field(default_factory=list)
    """Where the header block is cut into HEADERS and CONTINUATION frames."""
    interrupt: bool = False
    """A PING between HEADERS and its CONTINUATION (RFC 9113 6.10: a connection error)."""

    @property
    def ends_on_headers(self) -> bool:
        return not self.body and self.trailers is None


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return http2._pack(kind, flags, stream_id, payload)


def wire(case: Case, fields: list[Header]) -> bytes:
    encoder = hpack.Encoder()
    block = encoder.encode(fields, huffman=False)
    # Cuts past the block's end are moved to its last byte, so that the same case is cut
    # into as many frames whatever the encoding's length (for_h2 renames content-length,
    # which makes the block longer: a PING "between" pieces must interrupt both or neither).
    cuts = sorted({min(c, len(block) - 1) for c in case.cuts if min(c, len(block) - 1) > 0})
    pieces = [block[a:b] for a, b in zip([0, *cuts], [*cuts, len(block)], strict=True)]
    out = [PREFACE, _frame(http2.SETTINGS, 0, 0, b"")]
    end = http2.FLAG_END_STREAM if case.ends_on_headers else 0
    for i, piece in enumerate(pieces):
        last = http2.FLAG_END_HEADERS if i == len(pieces) - 1 else 0
        kind = http2.HEADERS if i == 0 else http2.CONTINUATION
        out.append(_frame(kind, (end if i == 0 else 0) | last, 1, piece))
        if case.interrupt and i == 0 and len(pieces) > 1:
            out.append(_frame(http2.PING, 0, 0, b"12345678"))
    for i, data in enumerate(case.body):
        last_data = i == len(case.body) - 1 and case.trailers is None
        out.append(_frame(http2.DATA, http2.FLAG_END_STREAM if last_data else 0, 1, data))
    if case.trailers is not None:
        trailer_block = encoder.encode(case.trailers, huffman=False)
        flags = http2.FLAG_END_STREAM | http2.FLAG_END_HEADERS
        out.append(_frame(http2.HEADERS, flags, 1, trailer_block))
    return b"".join(out)


def gateway_accepts(case: Case) -> bool:
    server = ServerConnection()
    events = server.receive(wire(case, case.fields))
    if any(
        isinstance(e, Terminated) or (isinstance(e, Reset) and e.stream_id == 1) for e in events
    ):
        return False
    assert any(isinstance(e, RequestReceived) for e in events) == any(
        isinstance(e, End) for e in events
    )
    return any(isinstance(e, End) and e.stream_id == 1 for e in events)


def h2_verdict(case: Case, fields: list[Header]) -> tuple[bool, bool]:
    """(accepted, refused for the body's length)."""
    config = h2.config.H2Configuration(
        client_side=False,
        validate_inbound_headers=True,
        header_encoding=None,
        normalize_inbound_headers=False,  # see the module's docstring
    )
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    try:
        events = conn.receive_data(wire(case, fields))
    except h2.exceptions.InvalidBodyLengthError:
        return False, True
    except h2.exceptions.ProtocolError:
        return False, False
    if any(isinstance(e, h2.events.StreamReset) and e.stream_id == 1 for e in events):
        return False, False
    return any(isinstance(e, h2.events.StreamEnded) and e.stream_id == 1 for e in events), False


def without_length(fields: list[Header]) -> list[Header]:
    """The same request with ``content-length`` renamed (same place, same value)."""
    return [(b"x-c-length" if n == b"content-length" else n, v) for n, v in fields]


def same_server(host: bytes, authority: bytes, scheme: bytes | None) -> bool:
    """RFC 3986 section 6.2.3 for ``host`` against ``:authority``."""
    port = {b"https": b"443", b"http": b"80"}.get(scheme or b"", b"")

    def normal(value: bytes) -> bytes:
        name, colon, given = value.lower().rpartition(b":")
        if not colon or b"]" in given:
            return value.lower()
        return name if given in (b"", port) else value.lower()

    return normal(host) == normal(authority)


def for_h2(fields: list[Header]) -> list[Header]:
    """The request as ``h2`` is asked about it (see the module's docstring)."""
    fields = without_length(fields)
    pseudo = dict(f for f in fields if f[0][:1] == b":")
    authority = pseudo.get(b":authority")
    if authority is None:
        return fields
    return [
        (n, authority if n == b"host" and same_server(v, authority, pseudo.get(b":scheme")) else v)
        for n, v in fields
    ]


def length_ok(case: Case) -> bool:
    """RFC 9110 section 8.6 and RFC 9113 section 8.1.1."""
    values = [v for n, v in case.fields if n == b"content-length"]
    if not values:
        return True
    if not all(v.isdigit() for v in values) or len(set(values)) > 1:
        return False
    if len(values[0]) > http2.MAX_CONTENT_LENGTH_DIGITS:
        return False  # the gateway's own limit (no body here is that long)
    return int(values[0]) == sum(len(d) for d in case.body)


def _name_ok(name: bytes) -> bool:
    return LOWER_TOKEN.fullmatch(name[1:] if name[:1] == b":" else name) is not None


def _value_ok(value: bytes) -> bool:
    return not any((c < 0x20 and c != 0x09) or c == 0x7F for c in value)


def _path_ok(path: bytes, method: bytes) -> bool:
    if path == b"*":
        return method == b"OPTIONS"
    return path[:1] == b"/" and all(0x21 <= c <= 0x7E and c != 0x23 for c in path)


def stricter_than_h2(case: Case) -> str | None:
    """Why RFC 9113 (with RFC 9110 and 3986) refuses a request ``h2`` accepts, if it does."""
    every = case.fields + (case.trailers or [])
    for name, value in every:
        if not _name_ok(name):
            return f"name {name!r} is not a token"
        if not _value_ok(value):
            return f"value {value!r} has a control character"
    pseudo = dict(f for f in case.fields if f[0][:1] == b":")
    host = next((v for n, v in case.fields if n == b"host"), None)
    method = pseudo[b":method"]
    if not TOKEN.fullmatch(method):
        return "the method is not a token"
    if b":protocol" in pseudo:
        return "extended CONNECT is not offered"
    if method == b"CONNECT":
        authority = pseudo.get(b":authority")
        if authority is None or not AUTHORITY.fullmatch(authority):
            return "CONNECT without a valid :authority"
        return None
    if not SCHEME.fullmatch(pseudo[b":scheme"]):
        return "the scheme is not a scheme"
    if not _path_ok(pseudo[b":path"], method):
        return "the path is not origin-form"
    authority = pseudo.get(b":authority", host)
    if authority is None or not AUTHORITY.fullmatch(authority):
        return "the authority is not a host and port"
    return None


# What hypothesis draws from: ordinary values first, then hostile ones.

METHODS = [b"GET", b"POST", b"HEAD", b"OPTIONS", b"PUT", b"CONNECT", b"get", b"G T", b"GET\r\n"]
METHODS += [b"", b"G(T", b"\xc3\xa9", b"PATCH", b"M-SEARCH"]
SCHEMES = [b"https", b"http", b"", b"h ttp", b"1http", b"web+x", b"HTTPS", b"https\n"]
PATHS = [b"/", b"/k8s/clusters/c-1/api/v1/pods?limit=5", b"*", b"", b"pods", b"/a b"]
PATHS += [b"/a#b", b"/a\tb", b"/\xc3\xa9", b"/a\r\nb", b"//x", b"/%zz", b"/a|b^{}", b"/a\x00"]
PATHS += [b"/x HTTP/1.1\r\nHost: x\r\n\r\nDELETE /y", b"http://gw/x"]
AUTHORITIES = [b"gw:8443", b"gw", b"", b"[::1]:443", b"a b", b"user@gw", b"gw:port", b"gw:"]
AUTHORITIES += [b":443", b"%41b", b"%zz", b"gw\r\nx", b"[v1.x]", b"10.0.0.1:443", b"GW.Example"]
NAMES = [b"x-note", b"user-agent", b"accept", b"authorization", b"cookie", b"te", b"host"]
NAMES += [b"content-length", b"connection", b"keep-alive", b"proxy-connection", b"upgrade"]
NAMES += [b"transfer-encoding", b"X-Note", b"x note", b"x\r\nnote", b"x\x00", b"", b"x:y"]
NAMES += [b"x(y)", b"x\x7f", b"x\xc3\xa9", b"x/y", b"x@y", b"x{y}", b"!#$%&'*+-.^_`|~"]
NAMES += [b":path", b":method", b":scheme", b":authority", b":status", b":protocol", b":x"]
VALUES = [b"a", b"", b"a b", b"trailers", b"TRAILERS", b"gzip", b"0", b"5", b"12", b"05"]
VALUES += [b"5, 5", b"+5", b"-1", b" a", b"a ", b"\ta", b"a\t", b"a\r\nb", b"a\nb", b"a\rb"]
VALUES += [b"a\x00b", b"a\x01b", b"a\x7fb", b"caf\xc3\xa9", b"gw:8443", b"websocket"]
PSEUDO = [b":method", b":scheme", b":authority", b":path"]

GOOD_METHODS = [b"GET", b"GET", b"POST", b"HEAD", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"]
GOOD_PATHS = [b"/k8s/clusters/c-1/api/v1/pods?limit=5", b"/", b"/v3/users", b"/a/b%20c"]
GOOD_NAMES = [b"accept", b"user-agent", b"authorization", b"x-request", b"cookie", b"a!#$%&'*+"]
GOOD_VALUES = [b"application/json", b"kubectl/v1.32.0 (linux/amd64)", b"Bearer t:x", b"a=b", b"x"]

names = st.sampled_from(NAMES) | st.binary(max_size=6)
values = st.sampled_from(VALUES) | st.binary(max_size=8)
good_fields = st.tuples(st.sampled_from(GOOD_NAMES), st.sampled_from(GOOD_VALUES))
trailer_names = names.filter(lambda n: n != b"content-length")
MUTATIONS = [
    "pseudo value",
    "drop pseudo",
    "repeat pseudo",
    "extra pseudo",
    "late pseudo",
    "hostile name",
    "hostile value",
    "te",
    "connection-specific",
    "host",
    "content-length",
    "body",
    "trailers",
    "interrupt",
]
_HOSTILE_PSEUDO = {
    b":method": METHODS,
    b":scheme": SCHEMES,
    b":authority": AUTHORITIES,
    b":path": PATHS,
}


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A valid request (a body or not, trailers or not), then up to three mutations."""
    method = draw(st.sampled_from(GOOD_METHODS))
    path = b"*" if method == b"OPTIONS" and draw(st.booleans()) else None
    pseudo = [
        (b":method", method),
        (b":scheme", draw(st.sampled_from([b"https", b"http"]))),
        (b":authority", draw(st.sampled_from([b"gw:8443", b"gw", b"[::1]:443", b"10.0.0.1"]))),
        (b":path", path or draw(st.sampled_from(GOOD_PATHS))),
    ]
    pseudo = draw(st.permutations(pseudo))
    regular = draw(st.lists(good_fields, max_size=3))
    body: list[bytes] = []
    if draw(st.booleans()):
        body = draw(st.lists(st.binary(max_size=20), min_size=1, max_size=3))
        if draw(st.booleans()):
            regular.append((b"content-length", b"%d" % sum(len(d) for d in body)))
    trailers = [(b"x-trailer", b"1")] if draw(st.integers(0, 4)) == 0 else None
    late = len(pseudo)
    interrupt = False
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), max_size=3)):
        names_now = [n for n, _ in pseudo]
        if mutation == "pseudo value" and pseudo:
            i = draw(st.integers(0, len(pseudo) - 1))
            name = pseudo[i][0]
            hostile = st.sampled_from(_HOSTILE_PSEUDO.get(name, VALUES)) | st.binary(max_size=8)
            pseudo[i] = (name, draw(hostile))
        elif mutation == "drop pseudo" and pseudo:
            del pseudo[draw(st.integers(0, len(pseudo) - 1))]
        elif mutation == "repeat pseudo" and pseudo:
            name = draw(st.sampled_from(names_now))
            pseudo.append((name, draw(st.sampled_from(_HOSTILE_PSEUDO.get(name, VALUES)))))
        elif mutation == "extra pseudo":
            name = draw(st.sampled_from([b":status", b":protocol", b":x", b":", b":Path"]))
            pseudo.append((name, draw(values)))
        elif mutation == "late pseudo" and pseudo:
            late = draw(st.integers(0, len(pseudo) - 1))
        elif mutation == "hostile name":
            regular.insert(draw(st.integers(0, len(regular))), (draw(names), b"v"))
        elif mutation == "hostile value":
            regular.insert(draw(st.integers(0, len(regular))), (b"x-note", draw(values)))
        elif mutation == "te":
            regular.append((b"te", draw(st.sampled_from([b"trailers", b"TRAILERS", b"gzip"]))))
        elif mutation == "connection-specific":
            name = draw(st.sampled_from(NAMES[8:13]))
            regular.append((name, draw(st.sampled_from([b"close", b"chunked", b"h2c"]))))
        elif mutation == "host":
            authority = dict(pseudo).get(b":authority", b"gw:8443")
            other = [authority, authority.upper(), authority + b":", authority + b":443", b"other"]
            regular.append((b"host", draw(st.sampled_from([*other, b"gw:80", b""]))))
        elif mutation == "content-length":
            regular.append((b"content-length", draw(st.sampled_from(VALUES[6:13]))))
        elif mutation == "body":
            body = draw(st.lists(st.binary(max_size=20), max_size=3))
        elif mutation == "trailers":
            trailers = draw(st.lists(st.tuples(trailer_names, values), max_size=3))
        elif mutation == "interrupt":
            interrupt = True
    return Case(
        fields=pseudo[:late] + regular + pseudo[late:],
        body=body,
        trailers=trailers,
        cuts=draw(st.lists(st.integers(1, 120), max_size=3)),
        interrupt=interrupt,
    )


GET = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"gw:8443"),
    (b":path", b"/k8s/clusters/c-1/api/v1/namespaces/default/pods"),
]


def check(case: Case) -> None:
    ours = gateway_accepts(case)
    theirs, length_refused = h2_verdict(case, case.fields)
    if not theirs and not length_refused and for_h2(case.fields) == without_length(case.fields):
        assert not ours, f"h2 refuses what the gateway accepts: {case}"
    reference, _ = h2_verdict(case, for_h2(case.fields))
    stricter = stricter_than_h2(case) if reference else None
    expected = reference and length_ok(case) and stricter is None
    assert ours == expected, (ours, reference, stricter, case)


@settings(max_examples=600, deadline=None)
@given(cases())
@example(Case([*GET, (b"x-note", b"a\r\nImpersonate-User: admin")]))
@example(Case([*GET, (b"x-a\r\nimpersonate-user: admin\r\nx-b", b"c")]))
@example(Case([(n, v + b" HTTP/1.1\r\n\r\nDELETE /x" if n == b":path" else v) for n, v in GET]))
@example(Case([(n, b"DELETE /x HTTP/1.1\r\n\r\nGET" if n == b":method" else v) for n, v in GET]))
@example(Case([*GET, (b"content-length", b"10")], body=[b"x" * 5], trailers=[(b"x-t", b"1")]))
@example(Case([*GET, (b"content-length", b"3")]))  # END_STREAM on HEADERS, 3 promised
@example(Case([(b":method", b"HEAD"), *GET[1:], (b"content-length", b"2")], body=[b"ab"]))
@example(Case([*GET, (b"content-length", b"2"), (b"content-length", b"2")], body=[b"ab"]))
@example(Case([*GET, (b"host", b"gw:8443")], cuts=[3, 9, 20]))
@example(Case([*GET, (b"host", b"other")]))
@example(Case([*GET[:2], (b":authority", b"gw"), *GET[3:], (b"host", b"GW:443")]))
@example(Case([*GET[:2], (b":authority", b"gw"), *GET[3:], (b"host", b"gw:80")]))
@example(Case([(n, b"" if n == b":authority" else v) for n, v in GET]))  # found by this test
@example(Case([*GET, (b"x-n", b"v")], cuts=[5], interrupt=True))
@example(Case([*GET, (b"te", b"trailers")], body=[b"x"], trailers=[(b":path", b"/")]))
@example(  # found by this test: the block cut for h2 only (its content-length renamed)
    Case(
        [*GET[:3], (b":path", b"/"), (b"content-length", b"0")],
        body=[b""],
        trailers=[(b"x-trailer", b"1")],
        cuts=[15],
        interrupt=True,
    )
)
def test_the_gateway_and_h2_agree(case: Case) -> None:
    check(case)


def test_an_ordinary_request_is_accepted_by_both() -> None:
    case = Case([*GET, (b"accept", b"application/json")], cuts=[7])
    assert gateway_accepts(case) and h2_verdict(case, case.fields) == (True, False)
