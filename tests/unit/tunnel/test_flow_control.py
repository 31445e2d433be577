"""Credit windows: a sender never exceeds its credit, a slow reader holds back only itself."""

from __future__ import annotations

import pytest

from tests.unit.tunnel.pair import Pair
from tunnel import frames
from tunnel.errors import FlowControlError
from tunnel.events import DataReceived, WindowUpdated
from tunnel.protocol import Limits


def test_send_window_starts_at_peer_window_and_shrinks():
    p = Pair(client_limits=Limits(window=10_000))
    sid = p.server.open_stream()
    assert p.server.send_window(sid) == 10_000
    p.server.send_data(sid, b"x" * 4000)
    assert p.server.send_window(sid) == 6000
    with pytest.raises(FlowControlError):
        p.server.send_data(sid, b"x" * 6001)
    assert not p.server.is_terminated


def test_window_returns_after_half_is_consumed():
    p = Pair(client_limits=Limits(window=10_000))
    sid = p.server.open_stream()
    p.server.send_data(sid, b"x" * 10_000)
    p.to_client()
    p.client.acknowledge_received_data(sid, 4999)
    assert p.to_server() == []
    p.client.acknowledge_received_data(sid, 1)
    assert p.to_server() == [WindowUpdated(sid, 5000)]
    assert p.server.send_window(sid) == 5000


def test_peer_exceeding_the_window_is_a_flow_control_error():
    p = Pair(client_limits=Limits(window=1024))
    sid = p.server.open_stream()
    p.to_client()
    with pytest.raises(FlowControlError):
        p.client.receive_data(frames.encode_data_header(sid, 1025, fin=False) + b"x" * 1025)


def test_slow_reader_does_not_stall_other_streams():
    p = Pair(client_limits=Limits(window=4096))
    slow = p.server.open_stream()
    fast = p.server.open_stream()
    p.server.send_data(slow, b"s" * 4096)
    assert p.server.send_window(slow) == 0
    for _ in range(10):
        p.server.send_data(fast, b"f" * 4096)
        events = p.to_client()
        got = sum(
            len(e.data) for e in events if isinstance(e, DataReceived) and e.stream_id == fast
        )
        assert got == 4096
        p.client.acknowledge_received_data(fast, got)
        p.to_server()
    assert p.server.send_window(slow) == 0


def test_large_sends_are_split_into_peer_max_frame():
    p = Pair(client_limits=Limits(window=1 << 20, max_frame=16384))
    sid = p.server.open_stream()
    p.server.send_data(sid, b"z" * 40000, end_stream=True)
    events = p.to_client()
    sizes = [len(e.data) for e in events if isinstance(e, DataReceived)]
    assert sizes == [16384, 16384, 7232]


def test_window_overflow_is_a_flow_control_error():
    p = Pair()
    sid = p.server.open_stream()
    p.to_client()
    with pytest.raises(FlowControlError):
        p.server.receive_data(frames.encode_window(sid, frames.MAX_WINDOW))


def test_zero_window_increment_is_a_protocol_error():
    p = Pair()
    sid = p.server.open_stream()
    p.to_client()
    with pytest.raises(Exception, match="WINDOW"):
        p.server.receive_data(frames.encode_window(sid, 0))
