from __future__ import annotations

import json

import pytest

from gateway.clusters.tunnels import AgentInfo, BadAgentInfo


def test_parse_and_update() -> None:
    raw = json.dumps({"apiHost": "10.43.0.1:443", "authorization": "Bearer a", "node": "n1"})
    info = AgentInfo.parse(raw.encode())
    assert (info.api_host, info.authorization, info.node_name) == (
        b"10.43.0.1:443",
        b"Bearer a",
        "n1",
    )
    assert "Bearer" not in repr(info)
    assert info.updated(b'{"authorization": "Bearer b"}').authorization == b"Bearer b"
    assert info.updated(b"not json") is info
    assert info.updated(b'{"authorization": "bad\\r\\nX: y"}').authorization == b"Bearer a"


@pytest.mark.parametrize(
    "raw",
    [b"[]", b"nope", b"{}", b'{"apiHost": ""}', b'{"apiHost": "h\\r\\nX: 1"}',
     b'{"apiHost": "h", "authorization": 5}'],
)  # fmt: skip
def test_bad_metadata_is_rejected(raw: bytes) -> None:
    with pytest.raises(BadAgentInfo):
        AgentInfo.parse(raw)
