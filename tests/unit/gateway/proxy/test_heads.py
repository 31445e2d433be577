"""gateway.proxy.heads: every head the gateway writes is one request, exactly as given, or refused.

Held to a reference: each head ``request_head`` builds is read back by llhttp (httptools,
strict) and must parse as exactly one request with the same method, target and fields,
and nothing after it. Hostile names, values and targets (generated) must be refused.
"""

from __future__ import annotations

import re
import timeit

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.proxy.heads import UnsafeHead, field_block, is_token, request_head

TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class _Parsed:
    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        self.complete += 1


def parse(head: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], int]:
    parsed = _Parsed()
    parser = httptools.HttpRequestParser(parsed)
    parser.feed_data(head)
    return parser.get_method(), parsed.url, parsed.headers, parsed.complete


def test_a_plain_head() -> None:
    head = request_head(b"GET", b"/api/v1/pods?watch=1", [(b"Host", b"h"), (b"Accept", b"*/*")])
    assert head == b"GET /api/v1/pods?watch=1 HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"


@pytest.mark.parametrize(
    "value",
    [
        b"a\r\nImpersonate-User: smuggled-admin\r\nImpersonate-Group: system:masters",
        b"a\nImpersonate-User: x",
        b"a\rImpersonate-User: x",
        b"a\r",
        b"\n",
        b"a\x00b",
        b"a\x7fb",
        b"a\x0bb",
        b"x\r\n\r\nDELETE /api/v1/namespaces/default HTTP/1.1\r\nHost: h",
    ],
)
def test_values_with_line_breaks_or_controls_are_refused(value: bytes) -> None:
    with pytest.raises(UnsafeHead) as refused:
        request_head(b"GET", b"/", [(b"x-note", value)])
    assert value.decode("latin-1") not in str(refused.value)  # never echoes the value


def test_htab_and_obs_text_are_fine_in_values() -> None:
    head = request_head(b"GET", b"/", [(b"x-a", b"a\tb"), (b"x-b", "é".encode())])
    assert parse(head)[2] == [(b"x-a", b"a\tb"), (b"x-b", "é".encode())]


@pytest.mark.parametrize(
    "name",
    [
        b"x-note: a\r\nImpersonate-User",
        b"Impersonate-User:admin",
        b"x note",
        b"",
        b"x\x00",
        b"(x)",
        "é".encode(),
        b"a:b",
    ],
)
def test_names_that_are_not_tokens_are_refused(name: bytes) -> None:
    with pytest.raises(UnsafeHead):
        request_head(b"GET", b"/", [(name, b"v")])


@pytest.mark.parametrize(
    "target",
    [
        b"/api HTTP/1.1\r\nImpersonate-User: x\r\n\r\nGET /",
        b"/a b",
        b"/a\tb",
        b"/a#frag",
        b"/a\x00",
        "/é".encode(),
        b"",
    ],
)
def test_unsafe_targets_are_refused(target: bytes) -> None:
    with pytest.raises(UnsafeHead):
        request_head(b"GET", target, [])


@pytest.mark.parametrize("method", [b"GET /x HTTP/1.1\r\n", b"G T", b"", b"GET\r\n", b"G\x00"])
def test_methods_that_are_not_tokens_are_refused(method: bytes) -> None:
    with pytest.raises(UnsafeHead):
        request_head(method, b"/", [])


def test_is_token() -> None:
    assert is_token(b"GET") and is_token(b"x-y_z.~")
    assert not is_token(b"") and not is_token(b"a b") and not is_token(b"a:")


tokens = st.binary(min_size=1, max_size=12).filter(lambda b: all(c in TCHAR for c in b)) | (
    st.text(alphabet=TCHAR.decode(), min_size=1, max_size=12).map(str.encode)
)
hostile_bytes = st.binary(max_size=24) | st.sampled_from(
    [b"\r\n", b"\n", b"\r", b"\x00", b": ", b"\r\nImpersonate-User: x", b"#", b" ", b"\t"]
)
fields = st.lists(st.tuples(tokens | hostile_bytes, hostile_bytes | tokens), max_size=6)
methods = st.sampled_from([b"GET", b"POST", b"PATCH", b"DELETE", b"PUT", b"HEAD"]) | tokens
targets = st.text(alphabet="/abc%?=&.-_~", min_size=1, max_size=20).map(
    lambda t: ("/" + t).encode()
) | hostile_bytes.map(lambda b: b"/" + b)


@settings(max_examples=400, deadline=None)
@given(method=methods, target=targets, fields=fields)
def test_a_built_head_reads_back_as_exactly_what_was_given(
    method: bytes, target: bytes, fields: list[tuple[bytes, bytes]]
) -> None:
    try:
        head = request_head(method, target, fields)
    except UnsafeHead:
        # Refused: then something really was unsafe.
        unsafe = (
            not is_token(method)
            or not re.fullmatch(rb"[!\"$-~]+", target)
            or any(not is_token(n) or _CTL.search(v) for n, v in fields)
        )
        assert unsafe
        return
    assert is_token(method)
    assert all(is_token(n) and not _CTL.search(v) for n, v in fields)
    if method not in {b"GET", b"POST", b"PATCH", b"DELETE", b"PUT", b"HEAD"}:
        return  # llhttp knows only registered methods; the rest is checked above
    try:
        parsed = parse(head)
    except httptools.HttpParserError:
        # llhttp is stricter than RFC 9110 in places (obs-text, some values); what it
        # refuses cannot smuggle anything either.
        return
    got_method, url, headers, complete = parsed
    assert (got_method, url, complete) == (method, target, 1)
    # OWS around a value is not part of it (RFC 9110 section 5.5; llhttp keeps a trailing one).
    assert [(n, v.strip(b" \t")) for n, v in headers] == [(n, v.strip(b" \t")) for n, v in fields]


def test_cost_of_a_kubectl_head() -> None:
    """Not a timed assertion: prints the figure quoted in the module docstring, beside
    the cost of joining the same lines unchecked (what the proxy did before)."""
    agent = [(b"Host", b"10.0.0.1:6443"), (b"Authorization", b"Bearer " + b"x" * 900)]
    client = [
        (b"accept", b"application/json;as=Table;v=v1;g=meta.k8s.io,application/json"),
        (b"user-agent", b"kubectl/v1.32.0 (linux/amd64) kubernetes/abcdef"),
        (b"kubectl-command", b"kubectl get"),
        (b"kubectl-session", b"0f9b8d2c-5c1e-4f7e-9a53-2f1d8e2e0e11"),
        (b"accept-encoding", b"gzip"),
        (b"X-Request-Id", b"0f9b8d2c-5c1e-4f7e-9a53-2f1d8e2e0e11"),
        (b"Audit-ID", b"0f9b8d2c-5c1e-4f7e-9a53-2f1d8e2e0e11"),
        (b"X-Forwarded-For", b"127.0.0.1"),
    ]
    identity = [
        (b"Impersonate-User", b"u-abcde"),
        (b"Impersonate-Group", b"herdgate:cluster-member"),
        (b"Impersonate-Group", b"system:authenticated"),
        (b"Impersonate-Extra-username", b"alice"),
        (b"Impersonate-Extra-principalid", b"local://u-abcde"),
    ]
    checked = (field_block(agent), field_block(identity))
    target = b"/api/v1/namespaces/default/pods?limit=500"

    def unchecked() -> bytes:
        parts = [b"GET ", target, b" HTTP/1.1\r\n"]
        for name, value in agent + client + identity:
            parts += [name, b": ", value, b"\r\n"]
        parts.append(b"\r\n")
        return b"".join(parts)

    def built() -> bytes:
        return request_head(b"GET", target, client, *checked)

    assert parse(built())[2] == agent + identity + client
    runs = 5000
    for name, build in (("unchecked join", unchecked), ("request_head", built)):
        seconds = min(timeit.repeat(build, number=runs, repeat=3))
        print(f"{name}: {seconds / runs * 1e6:.2f} us per head")
