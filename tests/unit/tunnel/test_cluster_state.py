"""Cluster-state reports (pure): encoding, decoding, the gateway's copy, hostile input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunnel.cluster_state import (
    HEARTBEAT,
    MAX_REPORT_BYTES,
    NAMESPACES,
    NODES,
    REPORT_KEY,
    STOP_MESSAGE,
    WANT_KEY,
    Readiness,
    ReportedState,
    ReportError,
    State,
    WatchTable,
    clean_summary,
    encode_reports,
    node_summary,
    parse_report,
    parse_want,
    project_of,
    want_message,
)
from tunnel.frames import MAX_CONTROL_PAYLOAD

names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)
short = st.text(max_size=30)


@st.composite
def summaries(draw: st.DrawFn, name: str) -> dict[str, Any]:
    node = {
        "metadata": {
            "name": name,
            "labels": {f"node-role.kubernetes.io/{r}": "" for r in draw(st.lists(short))},
        },
        "status": {
            "addresses": [
                {"type": draw(short), "address": draw(short)}
                for _ in range(draw(st.integers(0, 3)))
            ],
            "nodeInfo": {"kubeletVersion": draw(short)},
            "capacity": {"cpu": draw(short)},
            "conditions": [{"type": "Ready", "status": draw(st.sampled_from(["True", "False"]))}],
        },
    }
    return node_summary(node)


@st.composite
def states(draw: st.DrawFn) -> State:
    node_names = draw(st.lists(names, max_size=30, unique=True))
    nodes = {name: draw(summaries(name)) for name in node_names}
    namespaces = draw(st.dictionaries(names, short, max_size=60))
    ready = draw(
        st.one_of(st.none(), st.builds(Readiness, st.booleans(), short, st.text(max_size=300)))
    )
    version = draw(st.one_of(st.none(), st.dictionaries(short, short, max_size=9)))
    listed = frozenset(draw(st.sets(st.sampled_from([NODES, NAMESPACES]))))
    truncated = frozenset(draw(st.sets(st.sampled_from([NODES, NAMESPACES]))))
    return State(ready, version, nodes, namespaces, listed, truncated)


def _feed(reported: ReportedState, payloads: list[bytes]) -> None:
    for payload in payloads:
        assert len(payload) <= MAX_REPORT_BYTES <= MAX_CONTROL_PAYLOAD
        reported.apply(parse_report(json.loads(payload)[REPORT_KEY]))


def _same(a: State, b: State) -> None:
    assert (a.ready, a.version, a.nodes, a.namespaces, a.listed, a.truncated) == (
        b.ready,
        b.version,
        b.nodes,
        b.namespaces,
        b.listed,
        b.truncated,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(old=states(), new=states(), small=st.integers(10_000, MAX_REPORT_BYTES))
def test_a_snapshot_then_changes_bring_the_gateway_to_the_agents_state(
    old: State, new: State, small: int
) -> None:
    reported = ReportedState()
    _feed(reported, encode_reports(None, old, small))
    assert reported.complete
    _same(reported.state, old)
    changes = encode_reports(old, new, small)
    _feed(reported, changes)
    _same(reported.state, new)
    assert encode_reports(new, new) == []


def test_a_big_snapshot_is_cut_into_chunks_that_each_fit_an_info_frame() -> None:
    nodes = {
        f"node-{i}": node_summary({"metadata": {"name": f"node-{i}"}, "status": {}})
        for i in range(2000)
    }
    state = State(Readiness(True), {"gitVersion": "v1"}, nodes, {}, frozenset({NODES}))
    payloads = encode_reports(None, state)
    assert len(payloads) > 10
    assert all(len(p) <= MAX_REPORT_BYTES for p in payloads)
    first, last = (json.loads(p)[REPORT_KEY] for p in (payloads[0], payloads[-1]))
    assert first["full"] and not first.get("last") and last["last"]
    reported = ReportedState()
    for payload in payloads[:-1]:  # half a snapshot is never shown
        reported.apply(parse_report(json.loads(payload)[REPORT_KEY]))
        assert not reported.complete and reported.state.nodes == {}
    _feed(reported, payloads[-1:])
    assert reported.state.nodes == nodes


def test_changes_before_the_first_snapshot_and_heartbeats_change_nothing() -> None:
    reported = ReportedState()
    applied = reported.apply(parse_report({"last": True, "nodes": {"a": None}}))
    assert not applied.changed and not reported.complete
    _feed(reported, encode_reports(None, State(Readiness(True))))
    assert not reported.apply(parse_report(json.loads(HEARTBEAT)[REPORT_KEY])).changed


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    snapshots=st.lists(states(), min_size=1, max_size=3),
    steps=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 40)), max_size=12),
    limits=st.sampled_from([(3, 2), (1000, 1000)]),
)
def test_a_heartbeat_known_without_parsing_is_what_applying_it_gives(
    snapshots: list[State], steps: list[tuple[int, int]], limits: tuple[int, int]
) -> None:
    """``ReportedState.heartbeat`` (the gateway's path for the constant ``HEARTBEAT``
    INFO) against ``apply`` of the parsed message, on twin states fed the same chunks:
    whole or half snapshots (a heartbeat then ends the snapshot, as ``last`` says),
    change sets, tables cut off at small limits."""
    parsed, known = ReportedState(*limits), ReportedState(*limits)
    heartbeat = parse_report(json.loads(HEARTBEAT)[REPORT_KEY])
    current: State | None = None
    for kind, pick in steps:
        target = snapshots[pick % len(snapshots)]
        if kind == 0:  # a heartbeat
            a, b = parsed.apply(heartbeat), known.heartbeat()
            assert (a.changed, a.namespaces) == (b.changed, b.namespaces)
        else:  # a snapshot (whole, or only its first chunks) or a change set
            chunks = encode_reports(None if kind == 1 else current, target, 4_000)
            if kind == 1 and pick % 3 == 0:
                chunks = chunks[: max(1, len(chunks) // 2)]
            for chunk in chunks:
                report = parse_report(json.loads(chunk)[REPORT_KEY])
                a, b = parsed.apply(report), known.apply(report)
                assert (a.changed, a.namespaces) == (b.changed, b.namespaces)
            current = target
        assert parsed.complete == known.complete
        _same(parsed.state, known.state)
        assert (parsed._staging is None) == (known._staging is None)
        assert parsed._dropped == known._dropped


def test_a_heartbeat_in_the_middle_of_a_snapshot_ends_it_on_either_path() -> None:
    """The agent never sends one there; if it did, ``last`` ends the snapshot, and the
    path that does not parse the heartbeat must do the same."""
    nodes = {
        f"node-{i}": node_summary({"metadata": {"name": f"node-{i}"}, "status": {}})
        for i in range(500)
    }
    chunks = encode_reports(None, State(Readiness(True), None, nodes, {}, frozenset({NODES})))
    assert len(chunks) > 2
    parsed, known = ReportedState(), ReportedState()
    _feed(parsed, chunks[:2])
    _feed(known, chunks[:2])
    a = parsed.apply(parse_report(json.loads(HEARTBEAT)[REPORT_KEY]))
    b = known.heartbeat()
    assert a.changed and b.changed and parsed.complete and known.complete
    _same(parsed.state, known.state)
    assert 0 < len(known.state.nodes) < 500
    assert not known.heartbeat().changed  # and after it, nothing


def test_project_changes_are_told_apart_from_other_changes() -> None:
    reported = ReportedState()
    before = State(Readiness(True), None, {}, {"a": "c:p-1", "b": ""}, frozenset({NAMESPACES}))
    _feed(reported, encode_reports(None, before))
    plain = State(Readiness(True), None, {}, {"a": "c:p-1", "b": "", "c": ""}, before.listed)
    [chunk] = encode_reports(before, plain)
    applied = reported.apply(parse_report(json.loads(chunk)[REPORT_KEY]))
    assert applied.changed and not applied.namespaces
    joined = State(Readiness(True), None, {}, {"a": "c:p-1", "b": "c:p-1", "c": ""}, before.listed)
    [chunk] = encode_reports(plain, joined)
    assert reported.apply(parse_report(json.loads(chunk)[REPORT_KEY])).namespaces


def test_the_gateway_keeps_at_most_its_limits_and_says_so() -> None:
    reported = ReportedState(max_nodes=3, max_namespaces=2)
    nodes = {
        f"n{i}": clean_summary(node_summary({"metadata": {"name": f"n{i}"}})) for i in range(5)
    }
    state = State(Readiness(True), None, nodes, {f"ns{i}": "" for i in range(4)})
    _feed(reported, encode_reports(None, state))
    assert len(reported.state.nodes) == 3 and len(reported.state.namespaces) == 2
    assert reported.state.truncated == {NODES, NAMESPACES}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=30,
)
report_like = st.fixed_dictionaries(
    {},
    optional={
        "full": json_values,
        "last": json_values,
        "ready": json_values,
        "version": json_values,
        "listed": json_values,
        "truncated": json_values,
        "nodes": st.dictionaries(st.text(max_size=300), json_values, max_size=3),
        "namespaces": st.dictionaries(st.text(max_size=300), json_values, max_size=3),
    },
)


@settings(max_examples=300, deadline=None)
@given(value=json_values | report_like)
def test_hostile_reports_are_a_report_error_never_a_crash(value: Any) -> None:
    reported = ReportedState()
    _feed(reported, encode_reports(None, State(Readiness(True))))
    try:
        report = parse_report(value)
    except ReportError:
        return
    reported.apply(report)
    # Whatever was accepted is what encode_reports could have made.
    for summary in reported.state.nodes.values():
        assert clean_summary(summary) == summary
    assert all(isinstance(p, str) for p in reported.state.namespaces.values())


@pytest.mark.parametrize(
    "value",
    [
        {"nodes": {"": None}},
        {"nodes": {"a" * 254: None}},
        {"nodes": {"a": {**node_summary({"metadata": {"name": "b"}})}}},
        {"nodes": {"a": {**node_summary({"metadata": {"name": "a"}}), "roles": ["r"] * 17}}},
        {"namespaces": {"a": "p" * 1025}},
        {"ready": {"ok": True, "message": "m" * 1025}},
        {"version": {f"k{i}": "v" for i in range(17)}},
        {"listed": "nodes"},
        {"full": 1},
    ],
)
def test_over_a_limit_or_of_the_wrong_shape_is_refused(value: Any) -> None:
    with pytest.raises(ReportError):
        parse_report(value)


def test_node_summaries_are_capped_to_what_a_report_may_carry() -> None:
    huge = {
        "metadata": {
            "name": "n" * 1000,
            "labels": {f"node-role.kubernetes.io/r{i}": "" for i in range(100)},
        },
        "status": {"addresses": [{"type": "t" * 999, "address": "a"}] * 100},
    }
    summary = node_summary(huge)
    assert clean_summary(summary) == summary
    assert len(json.dumps(summary)) < MAX_REPORT_BYTES // 2
    escaped = {  # each character six bytes of JSON: trimmed to fit, still valid
        "metadata": {
            "name": "\x1f" * 253,
            "labels": {f"node-role.kubernetes.io/{chr(0x100 + i) * 250}": "" for i in range(16)},
        },
        "status": {"nodeInfo": {"kubeletVersion": "\x1f" * 400}},
    }
    summary = node_summary(escaped)
    assert clean_summary(summary) == summary and summary["name"] == "\x1f" * 253


def test_watch_table_keeps_what_it_is_told_and_says_when_it_cut_off() -> None:
    table = WatchTable(2, keep=project_of)
    ns = [
        {"metadata": {"name": f"ns{i}", "annotations": {"field.cattle.io/projectId": f"c:p{i}"}}}
        for i in range(3)
    ]
    table.replace(ns, "5")
    assert table.items == {"ns0": "c:p0", "ns1": "c:p1"} and table.truncated
    assert table.event("DELETED", ns[0])
    assert table.event("ADDED", ns[2]) and table.items["ns2"] == "c:p2"


def test_want_messages() -> None:
    wanted = parse_want(json.loads(want_message(10.0, 60.0))[WANT_KEY])
    assert wanted is not None and (wanted.interval_s, wanted.heartbeat_s) == (10.0, 60.0)
    assert parse_want(json.loads(STOP_MESSAGE)[WANT_KEY]) is None
    odd = parse_want({"interval": 0, "heartbeat": "x"})
    assert odd is not None and odd.interval_s == 1.0 and odd.heartbeat_s == 60.0


class _FakeSession:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.is_closed = False

    def send_info(self, payload: bytes) -> None:
        self.sent.append(payload)


def test_each_tunnel_gets_a_snapshot_first_then_only_changes() -> None:
    from tunnel.cluster_watch import Reports

    reports = Reports()
    first, second = _FakeSession(), _FakeSession()
    reports.want(first)  # type: ignore[arg-type]
    reports.heartbeat()
    assert first.sent == []  # no heartbeat before a snapshot
    one = State(Readiness(True), None, {}, {"a": ""}, frozenset({NAMESPACES}))
    assert reports.flush(one)
    assert json.loads(first.sent[-1])[REPORT_KEY]["full"] is True
    assert not reports.flush(one)  # unchanged: nothing
    reports.want(second)  # type: ignore[arg-type]
    two = State(Readiness(True), None, {}, {"a": "", "b": "c:p"}, frozenset({NAMESPACES}))
    assert reports.flush(two)
    delta = json.loads(first.sent[-1])[REPORT_KEY]
    assert "full" not in delta and delta["namespaces"] == {"b": "c:p"}
    assert json.loads(second.sent[-1])[REPORT_KEY]["full"] is True
    reports.heartbeat()
    assert first.sent[-1] == second.sent[-1] == HEARTBEAT
    second.is_closed = True
    reports.flush(one)
    assert len(reports.bases) == 1
