"""The cluster state machine (pure): events in, conditions and state out."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.controllers.cluster_health import (
    ACTIVE,
    CONNECTED,
    PENDING,
    READY,
    SYNCED,
    UNAVAILABLE,
    AgentView,
    ClusterHealth,
    same_status,
    status_doc,
)
from gateway.store.records import iso
from tunnel.cluster_state import Backoff, TokenBucket, WatchTable, node_summary

CLUSTER_AGENT = AgentView("", "r-1", 100.0, "127.0.0.1:5000")
NODE_AGENT = AgentView("node-1", "r-1", 110.0, "127.0.0.1:5001")


def _status(health: ClusterHealth, kind: str) -> tuple[str, str]:
    condition = health.conditions[kind]
    return condition.status, condition.reason


def test_a_new_cluster_is_pending_with_unknown_conditions() -> None:
    health = ClusterHealth("c-1")
    assert health.state == PENDING
    assert [c["status"] for c in health.condition_docs()] == ["Unknown"] * 3
    assert [c["type"] for c in health.condition_docs()] == [CONNECTED, READY, SYNCED]


def test_pending_active_unavailable_active() -> None:
    health = ClusterHealth("c-1")
    assert health.agents_changed((CLUSTER_AGENT,), 10.0)
    assert health.state == PENDING  # connected, first probe not answered yet
    assert health.probe_ok(11.0)
    assert health.state == ACTIVE
    assert health.probe_failed("ServiceUnavailable", "connection refused", 20.0)
    assert health.state == UNAVAILABLE
    assert _status(health, READY) == ("False", "ServiceUnavailable")
    assert health.probe_ok(30.0)
    assert health.state == ACTIVE
    assert health.agents_changed((), 40.0)
    assert health.state == UNAVAILABLE
    assert _status(health, CONNECTED) == ("False", "NoAgentTunnel")
    assert health.conditions[READY].status == "Unknown"
    assert health.agents_changed((CLUSTER_AGENT,), 50.0)
    assert health.state == UNAVAILABLE  # until the API server answers again
    assert health.probe_ok(51.0)
    assert health.state == ACTIVE


def test_an_api_server_never_ready_is_unavailable_not_pending() -> None:
    health = ClusterHealth("c-1")
    health.agents_changed((CLUSTER_AGENT,), 10.0)
    health.probe_failed("HTTP500", "/readyz answered 500", 11.0)
    assert health.state == UNAVAILABLE


def test_transition_time_changes_only_with_the_status() -> None:
    health = ClusterHealth("c-1")
    health.agents_changed((CLUSTER_AGENT,), 10.0)
    health.probe_ok(11.0)
    assert health.conditions[READY].last_transition == 11.0
    assert not health.probe_ok(12.0)  # nothing changed: nothing to write
    assert health.conditions[READY].last_transition == 11.0
    health.probe_failed("A", "first", 20.0)
    health.probe_failed("B", "second", 25.0)  # reason changes, status does not
    assert health.conditions[READY].last_transition == 20.0
    assert _status(health, READY) == ("False", "B")
    # A node agent joining changes the message, not the transition time.
    assert health.agents_changed((CLUSTER_AGENT, NODE_AGENT), 30.0)
    assert health.conditions[CONNECTED].last_transition == 10.0
    assert "node-1" in health.conditions[CONNECTED].message
    # The cluster agent leaving while the node agent stays: still connected.
    assert health.agents_changed((NODE_AGENT,), 40.0)
    assert health.conditions[CONNECTED].status == "True"
    assert health.conditions[CONNECTED].last_transition == 10.0


def test_synced_is_set_by_others_and_does_not_decide_the_state() -> None:
    health = ClusterHealth("c-1")
    health.agents_changed((CLUSTER_AGENT,), 10.0)
    health.probe_ok(11.0)
    assert health.set_condition(SYNCED, False, "SyncFailed", "forbidden", 12.0)
    assert health.state == ACTIVE
    assert health.set_condition(SYNCED, True, "Synced", "", 13.0)
    assert health.conditions[SYNCED].last_transition == 13.0
    with pytest.raises(ValueError):
        health.set_condition("Bogus", True, "", "", 14.0)


def test_resumes_from_a_stored_status() -> None:
    health = ClusterHealth("c-1")
    health.agents_changed((CLUSTER_AGENT,), 10.0)
    health.probe_ok(11.0)
    health.version_seen({"gitVersion": "v1.32.0"})
    doc = status_doc(health, [], ["default"], "r-1", 3)
    again = ClusterHealth.from_status("c-1", doc)
    assert again.conditions == health.conditions
    assert again.version == {"gitVersion": "v1.32.0"}
    assert again.ever_connected
    again.agents_changed((CLUSTER_AGENT,), 12.0)
    assert again.state == ACTIVE
    assert again.conditions[READY].last_transition == 11.0


def test_status_docs_compare_without_their_write_time() -> None:
    health = ClusterHealth("c-1")
    doc = status_doc(health, [], [], "r-1", 1)
    assert same_status({**doc, "updated": 5.0}, doc)
    assert not same_status(None, doc)
    assert not same_status({**doc, "state": ACTIVE}, doc)


def test_agent_views_show_role_replica_and_time() -> None:
    assert NODE_AGENT.doc() == {
        "node": "node-1",
        "role": "node",
        "replica": "r-1",
        "connectedSince": iso(110.0),
        "remote": "127.0.0.1:5001",
    }
    assert CLUSTER_AGENT.role == "cluster"


NODE: dict[str, Any] = {
    "metadata": {
        "name": "cp-1",
        "resourceVersion": "7",
        "labels": {
            "node-role.kubernetes.io/control-plane": "",
            "node-role.kubernetes.io/etcd": "true",
            "kubernetes.io/hostname": "cp-1",
        },
    },
    "status": {
        "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
        "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110", "hugepages-2Mi": "0"},
        "nodeInfo": {"kubeletVersion": "v1.32.1"},
        "conditions": [
            {"type": "MemoryPressure", "status": "False"},
            {"type": "Ready", "status": "True"},
        ],
    },
}


def test_node_summary() -> None:
    assert node_summary(NODE) == {
        "name": "cp-1",
        "roles": ["control-plane", "etcd"],
        "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
        "kubeletVersion": "v1.32.1",
        "ready": "True",
        "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
    }


JSON = st.recursive(
    st.none() | st.booleans() | st.text(max_size=5) | st.integers(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    ["name", "labels", "addresses", "capacity", "nodeInfo", "conditions", "kubeletVersion"]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(st.sampled_from(["metadata", "status"]), st.dictionaries(FIELDS, JSON) | JSON)
)
def test_node_summary_takes_any_json(node: dict[str, Any]) -> None:
    summary = node_summary(node)  # whatever a watch brings: no exception
    assert isinstance(summary["name"], str) and isinstance(summary["roles"], list)


def test_watch_table_follows_events_and_keeps_the_resource_version() -> None:
    table = WatchTable(limit=2)
    table.replace([NODE], "10")
    assert table.names() == ["cp-1"] and table.resource_version == "10"
    other = {"metadata": {"name": "w-1", "resourceVersion": "11"}}
    assert table.event("ADDED", other)
    assert table.resource_version == "11"
    assert not table.event("BOOKMARK", {"metadata": {"resourceVersion": "12"}})
    assert table.resource_version == "12"
    assert not table.event("ADDED", {"metadata": {"name": "w-2", "resourceVersion": "13"}})
    assert table.names() == ["cp-1", "w-1"]  # bounded
    assert table.event("DELETED", {"metadata": {"name": "w-1", "resourceVersion": "14"}})
    assert table.names() == ["cp-1"]
    assert not table.event("MODIFIED", NODE)  # the same object again


def test_token_bucket_bounds_the_rate() -> None:
    bucket = TokenBucket(rate=5.0, burst=2.0, now=0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(0.2)  # the third waits a fifth of a second
    assert bucket.take(10.0) == 0.0  # refilled, never above the burst
    assert bucket.take(10.0) == 0.0
    assert bucket.take(10.0) > 0


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.5, 4.0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next() == 0.5
