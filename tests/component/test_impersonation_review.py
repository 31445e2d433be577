"""``kubectl --as`` reviews over a real tunnel session to a fake API server that answers
``SelfSubjectAccessReview``s: what it received (the caller's identity, the agent's
credential, one review per question), and a cluster that cannot answer is no allow."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from config.identity import Identity
from gateway.clusters.upstream import StreamPool
from gateway.errors import GatewayError
from gateway.proxy.heads import field_block
from gateway.proxy.impersonation import identity_block
from gateway.proxy.impersonation_review import (
    ImpersonationReviews,
    Question,
    ask_cluster,
    reviews_for,
)
from tunnel.errors import TunnelError
from tunnel.protocol import Side
from tunnel.session import Session
from tunnel.streams import TunnelStream
from tunnel.transport import MemoryTransport

ALICE = Identity("u-alice", "alice", "local://u-alice", groups=("ldap://ops",))
AGENT = field_block([(b"Host", b"api.internal"), (b"Authorization", b"Bearer agent-token")])


class ReviewingApiServer:
    """Agent side: reads HTTP/1.1 requests from each stream and answers every
    SelfSubjectAccessReview with ``decide(attributes, head)``."""

    def __init__(self, decide: Callable[[dict[str, Any]], bool | int]) -> None:
        self.decide = decide
        self.received: list[tuple[bytes, dict[str, Any]]] = []
        self.session: Session | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def on_stream(self, stream: TunnelStream) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(self.serve(stream)))

    async def serve(self, stream: TunnelStream) -> None:
        with contextlib.suppress(TunnelError):
            assert self.session is not None
            self.session.accept(stream)
            buffer = b""
            for _ in range(100):  # requests on one kept-alive stream
                while b"\r\n\r\n" not in buffer:
                    data = await stream.read()
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += await stream.read()
                body, buffer = buffer[:length], buffer[length:]
                review = json.loads(body)
                self.received.append((head, review))
                verdict = self.decide(review["spec"]["resourceAttributes"])
                if verdict is True or verdict is False:
                    review["status"] = {"allowed": verdict}
                    answer = json.dumps(review).encode()
                    status = b"201 Created"
                elif verdict == 0:
                    return  # never answers
                else:
                    answer = b'{"kind":"Status","message":"boom"}'
                    status = b"%d Error" % verdict
                await stream.write(
                    b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (status, len(answer), answer)
                )


async def make(
    decide: Callable[[dict[str, Any]], bool | int],
) -> tuple[StreamPool, ReviewingApiServer]:
    server = ReviewingApiServer(decide)
    a, b = MemoryTransport.pair()
    agent = Session(a, Side.CLIENT, on_stream=server.on_stream)
    gateway = Session(b, Side.SERVER)
    server.session = agent
    await asyncio.gather(agent.handshake(), gateway.handshake())
    agent.start()
    gateway.start()
    return StreamPool(gateway), server


def _ask(pool: StreamPool, role: str = "cluster-owner") -> Any:
    return partial(ask_cluster, pool, AGENT, identity_block(ALICE, role), request_id="req-1")


HEADERS = [
    (b"Impersonate-User", b"jane"),
    (b"Impersonate-Group", b"devs"),
    (b"Impersonate-Group", b"system:masters"),
    (b"Impersonate-Extra-Scopes", b"view"),
    (b"Impersonate-Uid", b"1234"),
]


async def test_every_question_is_reviewed_as_the_caller() -> None:
    pool, server = await make(lambda attrs: True)
    reviews = ImpersonationReviews()
    questions = reviews_for(HEADERS)
    assert await reviews.check("c-1", ALICE, "cluster-owner", questions, _ask(pool)) is None
    asked = sorted(
        (a["resource"], a.get("subresource", ""), a["name"])
        for a in (review["spec"]["resourceAttributes"] for _, review in server.received)
    )
    assert asked == [
        ("groups", "", "devs"),
        ("groups", "", "system:masters"),
        ("uids", "", "1234"),
        ("userextras", "scopes", "view"),
        ("users", "", "jane"),
    ]
    for head, review in server.received:
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews HTTP/1.1"
        assert b"Authorization: Bearer agent-token" in lines
        assert b"Impersonate-User: u-alice" in lines
        assert b"Impersonate-Group: herdgate:cluster-owner" in lines
        assert b"Impersonate-Group: ldap://ops" in lines
        assert b"Audit-ID: req-1" in lines
        # The client's own impersonation is what is reviewed, never sent as who asks.
        assert b"Impersonate-User: jane" not in lines
        assert review["kind"] == "SelfSubjectAccessReview"
        assert review["spec"]["resourceAttributes"]["verb"] == "impersonate"
    # Answers are reused: asked again, nothing new reaches the API server.
    assert await reviews.check("c-1", ALICE, "cluster-owner", questions, _ask(pool)) is None
    assert len(server.received) == len(questions)


async def test_a_denied_group_refuses_with_the_api_servers_wording() -> None:
    pool, _ = await make(lambda attrs: attrs["name"] != "system:masters")
    reviews = ImpersonationReviews()
    refused = await reviews.check("c-1", ALICE, "cluster-owner", reviews_for(HEADERS), _ask(pool))
    assert refused is not None and refused.status == 403
    assert refused.message == (
        'groups "system:masters" is forbidden: User "u-alice" cannot impersonate resource '
        '"groups" in API group "" at the cluster scope'
    )


@pytest.mark.parametrize("answer", [500, 403, 401])
async def test_an_error_answer_is_a_503(answer: int) -> None:
    pool, _ = await make(lambda attrs: answer)
    with pytest.raises(GatewayError) as info:
        await ImpersonationReviews().check(
            "c-1", ALICE, "cluster-owner", (Question("users", "jane"),), _ask(pool)
        )
    assert info.value.status == 503
    assert f"answered {answer}: boom" in info.value.message


async def test_a_tunnel_that_goes_away_is_a_503() -> None:
    pool, server = await make(lambda attrs: True)
    assert server.session is not None
    await server.session.close()
    with pytest.raises(GatewayError) as info:
        await ImpersonationReviews().check(
            "c-1", ALICE, "cluster-owner", (Question("users", "jane"),), _ask(pool)
        )
    assert info.value.status == 503


async def test_an_api_server_that_never_answers_is_a_504(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.proxy.impersonation_review.TIMEOUT_S", 0.2)
    pool, _ = await make(lambda attrs: 0)
    with pytest.raises(GatewayError) as info:
        await ImpersonationReviews().check(
            "c-1", ALICE, "cluster-owner", (Question("users", "jane"),), _ask(pool)
        )
    assert info.value.status == 504
