"""``kubectl --as`` decided by the cluster's own RBAC (issue 17): the real kubectl through
gateway, tunnel and agent to the stand-in API server, which authorizes by RBAC.

The gateway asks the cluster, as the caller, whether the caller may impersonate what
``--as``/``--as-group``/``--as-uid`` name (``SelfSubjectAccessReview``s); assertions are
on what the stand-in received (its audit log). The downstream grants are made by hand
here with the agent's credential (the access sync that keeps herdgate's bindings in
step downstream is another part of the issue): the cluster owner's ``cluster-admin``,
the impersonation rights of the test's users.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.binaries import kubectl
from tests.integration.conftest import AGENT_SA_USER, World, start_world, stop_world
from tests.integration.downstream_rbac import (
    admin_id,
    apply,
    binding,
    downstream,
    impersonator_role,
    ok,
)
from tests.integration.env import kubectl_run, wait_until
from tests.integration.test_hostile_requests import assert_status, received, request

pytestmark = pytest.mark.integration

REVIEWS = "selfsubjectaccessreviews"
VERSIONS = ["1.32", "1.27"]
"""1.32: WebSocket exec; 1.27: SPDY/3.1."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    # Administrators here are not cluster-admin downstream (like Rancher's restricted
    # administrators): what they may impersonate is what the cluster grants them.
    w = start_world(
        tmp_path_factory.mktemp("kubectl-as"),
        name="as",
        gateway_config="access_sync:\n  admins_cluster_admin: false\n",
        wait_admin=False,
    )
    try:
        yield w
    finally:
        stop_world(w)


def events(world: World) -> list[dict[str, Any]]:
    """What the API server received, but for the background's own requests (the agent's
    reports of its cluster, the access sync's client), which may fall in any window."""
    return [e for e in world.standin.audit_events() if not _background(e)]


def _background(event: dict[str, Any]) -> bool:
    agent = str(event.get("userAgent", ""))
    return "cluster-state" in agent or agent.startswith("OpenAPI-Generator")


def is_review(event: dict[str, Any]) -> bool:
    return (event.get("objectRef") or {}).get("resource") == REVIEWS


def forbidden(target: str, name: str, user: str) -> str:
    """kube-apiserver's impersonation filter's 403, as kubectl prints it."""
    return (
        f'Error from server (Forbidden): {target} "{name}" is forbidden: User "{user}" cannot '
        f'impersonate resource "{target}" in API group "" at the cluster scope'
    )


@pytest.fixture(scope="module")
def owner(world: World) -> tuple[str, Path]:
    """A cluster owner, who holds ``cluster-admin`` downstream; ``someone`` may view."""
    user_id, api = world.user("as-owner", role="cluster-owner")
    apply(
        world,
        binding("test-as-owner", "cluster-admin", user_id),
        binding("test-as-someone", "edit", "someone"),
    )
    return user_id, world.kubeconfig_for(api, "as-owner")


@pytest.fixture(scope="module")
def member(world: World) -> tuple[str, Path]:
    """A cluster member: may work in the cluster, may not impersonate."""
    user_id, api = world.user("as-member", role="cluster-member")
    apply(world, binding("test-as-member", "edit", user_id))
    return user_id, world.kubeconfig_for(api, "as-member")


@pytest.fixture(scope="module")
def admin(world: World) -> tuple[str, Path]:
    return admin_id(world), world.kubeconfig_for(world.admin, "as-admin")


def test_an_owners_kubectl_as_works_and_is_reviewed_as_the_owner(
    world: World, owner: tuple[str, Path]
) -> None:
    owner_id, kc = owner
    before = len(events(world))
    out = ok(kubectl_run(kubectl(), kc, "--as=someone", "get", "pods", "-o", "json"))
    assert json.loads(out)["kind"] == "List"
    new = events(world)[before:]
    acted = [e for e in new if not is_review(e)]
    assert acted and all(e["impersonatedUser"]["username"] == "someone" for e in acted), acted
    assert all(e["user"]["username"] == AGENT_SA_USER for e in new)
    # The reviews: sent as the owner (the gateway's identity lines), not as the target.
    reviews = [e for e in events(world) if is_review(e)]
    assert reviews, "no SelfSubjectAccessReview reached the API server"
    # (The access sync's own review, whether the agent may escalate, is not impersonated.)
    mine = [e for e in reviews if e.get("impersonatedUser", {}).get("username") == owner_id]
    assert mine, reviews
    assert "herdgate:cluster-owner" in mine[-1]["impersonatedUser"]["groups"]
    assert mine[-1]["verb"] == "create"


def test_a_members_kubectl_as_is_refused_with_the_api_servers_wording(
    world: World, member: tuple[str, Path]
) -> None:
    member_id, kc = member
    ok(kubectl_run(kubectl(), kc, "get", "pods"))  # the member may work, as themselves
    before = len(events(world))
    result = kubectl_run(kubectl(), kc, "--as=someone", "get", "pods")
    assert result.returncode != 0
    assert forbidden("users", "someone", member_id) in result.stderr, result.stderr
    # The API server was only asked whether the member may impersonate: nothing else of
    # that kubectl call reached it.
    new = events(world)[before:]
    assert new and all(is_review(e) for e in new), new
    assert all(e["impersonatedUser"]["username"] == member_id for e in new), new


def test_a_members_refusal_is_the_same_on_http1(world: World, member: tuple[str, Path]) -> None:
    member_id, kc = member
    token = yaml.safe_load(kc.read_text())["users"][0]["user"]["token"]
    answer, probe = request(
        world,
        "GET",
        f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces/default/pods",
        token,
        [("Impersonate-User", "someone"), ("Impersonate-Group", "system:masters")],
    )
    assert_status(answer, 403)
    assert answer.json()["message"] == forbidden("users", "someone", member_id).split(": ", 1)[1]
    assert answer.json()["details"] == {"name": "someone", "kind": "users"}
    assert received(world, probe) == []


# Moved here from test_hostile_requests.py and test_proxy_errors.py, whose worlds' API
# server allows everything (until the access sync): a member without the right to
# impersonate is refused by the cluster's rule, whatever the letter case of the field.


@pytest.mark.parametrize(
    "name", ["Impersonate-User", "impersonate-group", "IMPERSONATE-UID", "iMpErSoNaTe-ExTrA-x"]
)
def test_client_impersonation_in_any_case_is_refused(
    world: World, member: tuple[str, Path], name: str
) -> None:
    _, kc = member
    token = yaml.safe_load(kc.read_text())["users"][0]["user"]["token"]
    answer, probe = request(
        world,
        "GET",
        f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces",
        token,
        [(name, "system:admin")],
    )
    assert_status(answer, 403)
    assert received(world, probe) == []


def test_impersonation_by_non_admin_is_refused(world: World, member: tuple[str, Path]) -> None:
    user_id, kc = member
    # Discovery first, as the member (a 403 on discovery is "Forbidden: unknown" in
    # kubectl, with kube-apiserver as well: its aggregated discovery does not decode it).
    ok(kubectl_run(kubectl("1.32"), kc, "get", "pods"))
    result = kubectl_run(kubectl("1.32"), kc, "get", "pods", "--as=system:admin")
    assert result.returncode != 0
    assert forbidden("users", "system:admin", user_id) in result.stderr, result.stderr
    result = kubectl_run(
        kubectl("1.32"), kc, "auth", "whoami", "--as-group=system:masters", "--as=x"
    )
    assert result.returncode != 0


def test_an_admins_as_group_system_masters_only_when_the_cluster_allows_it(
    world: World, admin: tuple[str, Path]
) -> None:
    admin_id, kc = admin
    impersonate = ["--as=ops-bot", "--as-group=system:masters"]
    whoami = [*impersonate, "auth", "whoami", "-o", "json"]
    get = [*impersonate, "get", "pods"]  # (whoami words a 403 its own way)
    # No grant downstream: even a gateway administrator is refused.
    result = kubectl_run(kubectl(), kc, *get)
    assert result.returncode != 0
    assert forbidden("users", "ops-bot", admin_id) in result.stderr, result.stderr
    # May impersonate the user, not yet the group.
    apply(
        world,
        impersonator_role("test-as-ops-bot", "users", ["ops-bot"]),
        binding("test-as-admin-user", "test-as-ops-bot", admin_id),
    )
    masters_refused = forbidden("groups", "system:masters", admin_id)

    def past_the_user() -> str | None:  # once the cached refusal of the user has expired
        result = kubectl_run(kubectl(), kc, *get)
        assert result.returncode != 0, result.stdout
        return result.stderr if "groups" in result.stderr else None

    stderr = wait_until(past_the_user, 30, "the user grant never took effect", interval=0.5)
    assert masters_refused in stderr, stderr
    # A ClusterRole granting impersonate on groups system:masters, bound to the admin.
    apply(
        world,
        impersonator_role("test-as-masters", "groups", ["system:masters"]),
        binding("test-as-admin-masters", "test-as-masters", admin_id),
    )

    def allowed() -> dict[str, Any] | None:
        result = kubectl_run(kubectl(), kc, *whoami)
        return json.loads(result.stdout) if result.returncode == 0 else None

    info = wait_until(allowed, 30, "the grant never took effect", interval=0.5)
    user = info["status"]["userInfo"]
    assert user["username"] == "ops-bot" and "system:masters" in user["groups"], user


def test_a_revoked_grant_takes_effect_after_the_cache(
    world: World, admin: tuple[str, Path]
) -> None:
    admin_id, kc = admin
    apply(
        world,
        impersonator_role("test-as-revoked", "users", ["revoked-bot"]),
        binding("test-as-revoked", "test-as-revoked", admin_id),
    )
    args = ["--as=revoked-bot", "auth", "whoami"]
    tries: list[str] = []

    def works() -> bool:
        result = kubectl_run(kubectl(), kc, *args)
        tries.append(result.stderr)
        return result.returncode == 0

    try:
        wait_until(works, 30, "the grant never took effect", interval=0.5)
    except TimeoutError:
        raise AssertionError(tries[-1]) from None
    downstream(world, "delete", "clusterrolebinding", "test-as-revoked")

    def refused() -> str | None:
        # (revoked-bot itself may not list pods: the API server's own 403 until then)
        result = kubectl_run(kubectl(), kc, "--as=revoked-bot", "get", "pods")
        return result.stderr if "cannot impersonate" in result.stderr else None

    stderr = wait_until(refused, 30, "the revoked grant still lets the admin impersonate", 0.5)
    assert forbidden("users", "revoked-bot", admin_id) in stderr, stderr


@pytest.fixture(scope="module")
def shell(world: World, owner: tuple[str, Path]) -> str:
    _, kc = owner
    ok(kubectl_run(kubectl(), kc, "run", "as-shell", "--image=busybox", "--restart=Never"))
    return "as-shell"


@pytest.mark.parametrize("version", VERSIONS)
def test_exec_with_as(
    world: World, owner: tuple[str, Path], member: tuple[str, Path], shell: str, version: str
) -> None:
    _, kc = owner
    before = len(events(world))
    out = ok(kubectl_run(kubectl(version), kc, "--as=someone", "exec", shell, "--", "echo", "hi"))
    assert out == "hi\n"
    # (the API server may write an exec's audit line as its session ends)
    execs = wait_until(
        lambda: [e for e in events(world)[before:] if "/exec" in e.get("requestURI", "")],
        10,
        "the exec never reached the API server",
    )
    assert all(e["impersonatedUser"]["username"] == "someone" for e in execs), execs
    member_id, member_kc = member
    before = len(events(world))
    result = kubectl_run(kubectl(version), member_kc, "--as=someone", "exec", shell, "--", "id")
    assert result.returncode != 0
    assert f'is forbidden: User "{member_id}" cannot impersonate' in result.stderr, result.stderr
    assert all(is_review(e) for e in events(world)[before:])
