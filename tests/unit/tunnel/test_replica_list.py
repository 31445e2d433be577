"""The replica list the gateway sends agents, and the agent's choice of whom to dial
directly (``tunnel.replica_list``, sans I/O)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.replica_list import (
    HELD_MAX_S,
    LIST_BUDGET_BYTES,
    MAX_REPLICAS,
    RETRY_MAX_S,
    DirectDials,
    ReplicaAddress,
    check_advertise_url,
    dial_address,
    encode,
    parse,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)
entry_like = st.dictionaries(
    st.sampled_from(["id", "url", "other"]),
    st.text(max_size=40) | st.integers() | st.none()
    | st.sampled_from(["https://10.0.0.5:8443", "https://[::1]:9", "http://h", "https://0.0.0.0:1"]),
)  # fmt: skip


# -- addresses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://10.0.0.5:8443", ("10.0.0.5", 8443)),
        ("https://gw-2.example.com", ("gw-2.example.com", 443)),
        ("https://[::1]:8443", ("::1", 8443)),
        ("http://127.0.0.1:80", ("127.0.0.1", 80)),
        ("wss://a:1/", ("a", 1)),
        ("", None),
        ("ftp://a:1", None),
        ("https://:8443", None),
        ("https://0.0.0.0:8443", None),
        ("https://[::]:8443", None),
        ("https://user:pw@a:1", None),
        ("https://a:99999", None),
        ("https://a:0", None),
        ("https://a b:1", None),
        ("https://a%0d:1", None),
        ("https://[::1:1", None),
        ("https://" + "a" * 600, None),
    ],
)
def test_dial_address(url: str, expected: tuple[str, int] | None) -> None:
    assert dial_address(url) == expected


@given(st.text(max_size=200))
def test_dial_address_never_raises(url: str) -> None:
    found = dial_address(url)
    if found is not None:
        host, port = found
        assert host and 1 <= port <= 65535
        assert not any(c in host for c in " \r\n/@?#%")


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("https://10.0.0.5:8443", "https://10.0.0.5:8443"),
        ("https://10.0.0.5:8443/", "https://10.0.0.5:8443"),
        ("https://gw-1.internal", "https://gw-1.internal:443"),
        ("https://[fd00::5]:8443", "https://[fd00::5]:8443"),
    ],
)
def test_advertise_url_made_canonical(url: str, canonical: str) -> None:
    assert check_advertise_url(url) == canonical
    assert dial_address(canonical) is not None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://10.0.0.5:8443", "https://"),
        ("10.0.0.5:8443", "https://"),
        ("https://0.0.0.0:8443", "not an address agents can dial"),
        ("https://[::]:8443", "not an address agents can dial"),
        ("https://10.0.0.5:8443/gw", "no path"),
        ("https://10.0.0.5:8443?a=b", "no path"),
        ("https://u:p@10.0.0.5:8443", "user name"),
        ("https://:8443", "no host"),
        ("https://10.0.0.5:http", "not a URL"),
        ("https://" + "a" * 300 + ":1", "longer than"),
    ],
)
def test_advertise_url_refused(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_advertise_url(url)


# -- the list ---------------------------------------------------------------------------


def test_list_round_trips_through_json() -> None:
    replicas = (
        ReplicaAddress("gw-1-100-abc", "https://10.0.0.5:8443"),
        ReplicaAddress("gw-2-200-def", ""),
    )
    wire = json.loads(json.dumps({"replicas": 2, "replicaList": encode(replicas)}))
    assert parse(wire["replicaList"]) == replicas


def test_a_long_list_keeps_within_a_control_frame() -> None:
    replicas = [
        ReplicaAddress(f"{'h' * 60}-{i}-abcdef", f"https://{'g' * 200}.example:8443")
        for i in range(MAX_REPLICAS + 5)
    ]
    wire = encode(replicas)
    assert len(wire) == MAX_REPLICAS
    assert len(json.dumps(wire)) <= LIST_BUDGET_BYTES
    assert wire[0]["url"] and not wire[-1]["url"]  # addresses left out from the end
    assert [e["id"] for e in wire] == [r.id for r in replicas[:MAX_REPLICAS]]


def test_absent_list_means_an_older_gateway() -> None:
    assert parse(None) is None
    assert parse({"id": "a"}) is None
    assert parse([]) == ()


def test_bad_entries_are_skipped_and_bad_urls_emptied() -> None:
    value = [
        {"id": "a", "url": "https://h:1"},
        {"id": "a", "url": "https://other:1"},  # repeated id: the first is kept
        {"id": "", "url": "https://h:1"},
        {"id": "has space"},
        {"id": 5},
        "b",
        {"id": "c", "url": "javascript:alert(1)"},
        {"id": "d", "url": 7},
        {"id": "x" * 200},
    ]
    assert parse(value) == (
        ReplicaAddress("a", "https://h:1"),
        ReplicaAddress("c", ""),
        ReplicaAddress("d", ""),
    )


def test_list_is_capped() -> None:
    value = [{"id": f"r{i}", "url": ""} for i in range(MAX_REPLICAS + 10)]
    parsed = parse(value)
    assert parsed is not None and len(parsed) == MAX_REPLICAS


@given(json_values)
def test_parse_never_raises_on_any_json(value: Any) -> None:
    parse(value)


@given(st.lists(entry_like | json_values, max_size=80))
def test_parsed_entries_are_usable(value: list[Any]) -> None:
    parsed = parse(value)
    assert parsed is not None
    assert len(parsed) <= MAX_REPLICAS
    assert len({r.id for r in parsed}) == len(parsed)
    for r in parsed:
        assert r.id and len(r.id) <= 128 and " " not in r.id
        assert r.url == "" or r.address is not None


# -- whom to dial directly ----------------------------------------------------------------

A = ReplicaAddress("a", "https://10.0.0.1:8443")
B = ReplicaAddress("b", "https://10.0.0.2:8443")
C = ReplicaAddress("c", "https://10.0.0.3:8443")
NO_ADDRESS = ReplicaAddress("n", "")


def test_dials_each_lacking_replica_then_nothing() -> None:
    dials = DirectDials(random.Random(1))
    dials.update((A, B, C), now=0.0, spread_s=0.0)
    assert dials.next({"a"}, 0.0) in (B, C)
    assert dials.next({"a", "b"}, 0.0) == C
    assert dials.next({"a", "b", "c"}, 0.0) is None
    assert dials.wait_s({"a", "b", "c"}, 0.0) is None  # nothing lacking


def test_a_failed_replica_waits_and_the_others_do_not() -> None:
    dials = DirectDials(random.Random(2))
    dials.update((A, B, C), now=0.0, spread_s=0.0)
    delay = dials.failed("b", now=0.0)
    assert 0.25 <= delay <= 0.5
    assert dials.next({"a"}, 0.1) == C
    assert dials.next({"a", "c"}, 0.1) is None
    wait = dials.wait_s({"a", "c"}, 0.1)
    assert wait is not None and abs(wait - (delay - 0.1)) < 1e-9
    assert dials.next({"a", "c"}, delay) == B


def test_failures_back_off_to_a_ceiling() -> None:
    dials = DirectDials(random.Random(3))
    dials.update((A, B), now=0.0, spread_s=0.0)
    delays = [dials.failed("b", now=0.0) for _ in range(12)]
    assert delays[3] > delays[0]
    assert max(delays) <= RETRY_MAX_S
    assert delays[-1] >= RETRY_MAX_S / 2
    dials.connected("b")
    assert dials.next({"a"}, 0.0) == B  # a tunnel held resets its pace


def test_a_refusal_keeps_its_retry_after() -> None:
    dials = DirectDials(random.Random(8))
    dials.update((A, B), now=0.0, spread_s=0.0)
    assert dials.failed("b", now=0.0, at_least_s=30.0) == 30.0
    assert dials.next({"a"}, 29.0) is None
    assert dials.next({"a"}, 30.0) == B
    assert dials.failed("b", now=0.0, at_least_s=1e9) == 300.0  # capped


def test_landing_on_a_held_replica_retries_soon() -> None:
    dials = DirectDials(random.Random(4))
    dials.update((A, B), now=0.0, spread_s=0.0)
    delays = [dials.landed_on_held("b", now=0.0) for _ in range(8)]
    assert max(delays) <= HELD_MAX_S
    assert delays[0] <= 0.1


def test_a_replica_without_an_address_goes_through_the_gateway() -> None:
    dials = DirectDials(random.Random(5))
    dials.update((A, NO_ADDRESS), now=0.0, spread_s=0.0)
    assert dials.next({"a"}, 0.0) is None
    assert dials.wait_s({"a"}, 0.0) is None  # None: dial the gateway's address


def test_new_replicas_are_spread_and_gone_ones_forgotten() -> None:
    dials = DirectDials(random.Random(6))
    dials.update((A,), now=0.0, spread_s=0.0)
    dials.failed("a", now=0.0)
    dials.update((B, C), now=10.0, spread_s=1.0)  # a left, b and c arrive
    wait = dials.wait_s(set(), 10.0)
    assert wait is not None and 0.0 <= wait <= 1.0
    assert dials.next(set(), 11.0) in (B, C)
    dials.update((A, B, C), now=20.0, spread_s=0.0)
    assert dials.failures("a") == 0  # forgotten while it was not listed


ops = st.lists(
    st.tuples(
        st.sampled_from(["update", "failed", "held", "connected", "tick"]),
        st.sets(st.sampled_from(["a", "b", "c", "n"])),
        st.floats(min_value=0, max_value=5),
    ),
    max_size=40,
)


@settings(max_examples=200)
@given(ops)
def test_choice_is_always_a_lacking_replica_with_an_address(steps: list[Any]) -> None:
    everyone = {"a": A, "b": B, "c": C, "n": NO_ADDRESS}
    dials = DirectDials(random.Random(7))
    now = 0.0
    held: set[str] = set()
    for op, ids, step in steps:
        now += step
        if op == "update":
            dials.update(tuple(everyone[i] for i in sorted(ids)), now, spread_s=1.0)
        elif op == "failed":
            for i in ids:
                assert 0 < dials.failed(i, now) <= RETRY_MAX_S
        elif op == "held":
            for i in ids:
                assert 0 < dials.landed_on_held(i, now) <= HELD_MAX_S
        elif op == "connected":
            held |= ids
            for i in ids:
                dials.connected(i)
        else:
            held -= ids
        chosen = dials.next(held, now)
        if chosen is not None:
            assert chosen.id not in held and chosen.address is not None
            assert chosen in dials.known
        wait = dials.wait_s(held, now)
        if wait is not None:
            assert wait >= 0
            assert chosen is None or wait == 0
