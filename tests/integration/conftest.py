"""One running world per test module: stand-in API server, gateway, agent, users."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from ace.manifests import NAMESPACE
from gateway.clusters import agent_rbac
from gateway.controllers import access_sync
from standin.harness import StandInProcess, kubectl_env
from tests.binaries import kubectl
from tests.fixtures.notify import FakeSystemd, fake_systemd
from tests.integration.env import (
    Agent,
    Api,
    Gateway,
    agent_command,
    free_port,
    wait_until,
    write_kubeconfig,
)

AGENT_SA_TOKEN = "agent-service-account-token"
AGENT_SA_USER = "system:serviceaccount:herdgate-system:herdgate-agent"
AGENT_SA_GROUPS = (
    "system:serviceaccounts",
    "system:serviceaccounts:herdgate-system",
    "system:authenticated",
)
"""The groups a pod's service-account token gives the agent (instead of system:masters)."""
CLUSTER_ADMIN_TOKEN = "cluster-admin-token"
"""The cluster's own administrator (system:masters), as the operator who applies the
manifest; ``World.cluster_admin_kubeconfig``."""
USER_PASSWORD = "a-long-user-password"


NO_AGENT = cast(Agent, None)
"""Placeholder until the world's agent is started (it needs the world to be built)."""


@dataclass
class World:
    tmp: Path
    standin: StandInProcess
    gateway: Gateway
    admin: Api
    cluster_id: str
    cluster_name: str
    agent: Agent
    agent_kubeconfig: Path
    agent_args: tuple[str, ...] = ()
    """Given to every agent the world starts (``old_agent_args``: one without reports)."""

    def user(self, name: str, role: str | None = None, admin: bool = False) -> tuple[str, Api]:
        """Create a user (optionally bound to the cluster); returns its id and an API client.

        With ``role``, returns once the access sync has made the binding's
        ClusterRoleBindings in the stand-in (so the cluster's RBAC already grants it)."""
        created = self.admin.post(
            "/v3/users", {"username": name, "password": USER_PASSWORD, "admin": admin}
        )
        if role:
            binding = self.admin.post(
                "/v3/clusterroletemplatebindings",
                {"clusterId": self.cluster_id, "userId": created["id"], "roleTemplateId": role},
            )
            self.wait_synced(binding["id"])
        api = self.gateway.api()
        api.token = api.login(name, USER_PASSWORD)
        return str(created["id"]), api

    def pod(self, api: Api, name: str) -> str:
        """Create a one-container pod ``name`` in ``default`` through the gateway as
        ``api``'s user; returns the namespace's pods path."""
        pods = f"/k8s/clusters/{self.cluster_id}/api/v1/namespaces/default/pods"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]},
        }
        assert api.post(pods, pod)["metadata"]["name"] == name
        return pods

    def downstream(self, path: str, token: str = AGENT_SA_TOKEN) -> Any:
        """GET from the stand-in as the agent's service account; None on 404."""
        context = ssl.create_default_context(cafile=str(self.standin.ca_file))
        request = urllib.request.Request(
            self.standin.url + path, headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def downstream_as_admin(self, path: str) -> Any:
        """GET from the stand-in as the cluster's own administrator; None on 404."""
        return self.downstream(path, CLUSTER_ADMIN_TOKEN)

    def wait_admin_synced(self, timeout: float = 15.0) -> None:
        """Until the gateway's administrator is ``cluster-admin`` in the cluster (the
        access sync's ``herdgate-admin-<id>``)."""
        wait_until(
            lambda: any(
                item["metadata"]["name"].startswith("herdgate-admin-")
                for item in self.downstream_as_admin(
                    "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
                )["items"]
            ),
            timeout,
            "the admin's cluster-admin binding never reached the cluster",
            interval=0.1,
        )

    def synced_objects(self, binding_id: str, resource: str = "clusterrolebindings") -> list[Any]:
        """The RBAC objects the access sync made for a binding (by its label)."""
        selector = urllib.parse.quote(f"herdgate.dev/binding={binding_id.rpartition(':')[2]}")
        listed = self.downstream(
            f"/apis/rbac.authorization.k8s.io/v1/{resource}?labelSelector={selector}"
        )
        return list(listed["items"]) if listed else []

    def wait_synced(self, binding_id: str, timeout: float = 15.0) -> None:
        """Until the cluster binding's ClusterRoleBindings exist downstream."""
        wait_until(
            lambda: self.synced_objects(binding_id),
            timeout,
            f"binding {binding_id} never reached the cluster's RBAC",
            interval=0.1,
        )

    def cluster_admin_kubeconfig(self) -> Path:
        """kubectl straight at the stand-in as its administrator (``CLUSTER_ADMIN_TOKEN``,
        known to worlds from ``start_least_privilege_world``)."""
        path = self.tmp / "cluster-admin-kubeconfig"
        if not path.exists():
            self.standin.kubeconfig(path, token=CLUSTER_ADMIN_TOKEN)
        return path

    def grant_downstream(self, user: str, cluster_role: str = "view") -> None:
        """The cluster's own administrator binds ``user`` (a name the API server sees, not a
        herdgate user) to ``cluster_role``, as an operator does by hand for identities that
        herdgate's access sync does not manage (for example a target of ``--as``)."""
        name = "hand-made-" + "".join(c if c.isalnum() else "-" for c in user.lower())
        body = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": cluster_role,
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }
        context = ssl.create_default_context(cafile=str(self.standin.ca_file))
        request = urllib.request.Request(
            self.standin.url + "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {CLUSTER_ADMIN_TOKEN}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=10):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise

    def kubeconfig_for(self, api: Api, name: str) -> Path:
        config = api.post(f"/v3/clusters/{self.cluster_id}?action=generateKubeconfig")["config"]
        return write_kubeconfig(self.tmp / f"kubeconfig-{name}", config)

    def registration_command(self) -> str:
        reg = self.admin.post("/v3/clusterregistrationtokens", {"clusterId": self.cluster_id})
        return str(reg["command"])

    def apply_manifest(self, query: str = "") -> str:
        """The cluster's administrator runs ``kubectl apply -f <manifest URL>`` (as after
        changing role templates); returns kubectl's output. ``query``: e.g.
        ``?roles=managed``."""
        reg = self.admin.post("/v3/clusterregistrationtokens", {"clusterId": self.cluster_id})
        env = kubectl_env(self.tmp / "kubectl-home")
        env["SSL_CERT_FILE"] = str(self.gateway.ca_file)  # Go's roots, for -f https://
        done = subprocess.run(
            [
                kubectl(),
                "--kubeconfig",
                str(self.cluster_admin_kubeconfig()),
                "--request-timeout=15s",
                "apply",
                "-f",
                str(reg["manifestUrl"]) + query,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start_agent(self, *extra: str, log_name: str = "agent") -> Agent:
        command = agent_command(
            self.registration_command(), self.agent_kubeconfig, *self.agent_args, *extra
        )
        return Agent(command, self.tmp / f"{log_name}.log").start()

    def cluster(self) -> dict[str, object]:
        result: dict[str, object] = self.admin.get(f"/v3/clusters/{self.cluster_id}")
        return result

    def wait_settled(self, timeout: float = 15.0) -> None:
        """Until the cluster's status holds what the agent's first reports and the first
        access sync bring (version, nodes, ``Synced`` True): a test that compares the
        store before and after something then sees none of those first writes."""

        def settled() -> bool:
            view: Any = self.cluster()
            synced = [c for c in view["conditions"] if c["type"] == "Synced"]
            return bool(
                view["state"] == "active"
                and view["version"]
                and view["nodes"]
                and synced
                and synced[0]["status"] == "True"
            )

        wait_until(settled, timeout, f"the cluster's status never settled: {self.cluster()}")

    def wait_state(self, state: str, timeout: float = 15.0) -> None:
        wait_until(
            lambda: self.cluster()["state"] == state,
            timeout,
            f"cluster never became {state}: {self.cluster()}",
        )


BULK_LIST_BYTES = 100 * 1000 * 1000


def start_world_with_env(tmp: Path, env: dict[str, str], **kw: Any) -> World:
    """``start_world`` with ``env`` set while it starts the processes (the stand-in and
    the agent inherit it), then the environment as it was."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        return start_world(tmp, **kw)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def start_world(
    tmp: Path,
    name: str = "dev",
    gateway_config: str = "",
    gateway_env: dict[str, str] | None = None,
    gateway_ca: Path | None = None,
    standin_args: Sequence[str] = (),
    standin_tokens: dict[str, tuple[str, str, list[str]]] | None = None,
    agent_groups: Sequence[str] = AGENT_SA_GROUPS,
    prepare: Callable[[StandInProcess, Path], None] | None = None,
    standin_objects: Sequence[dict[str, Any]] | None = None,
    authorization_mode: str = "RBAC",
    wait_admin: bool = True,
    agent_args: Sequence[str] = (),
) -> World:
    """``gateway_ca``: the CA of a certificate given in ``gateway_config``;
    ``standin_args``/``standin_tokens``: more for the stand-in; ``agent_groups``: the
    groups of the agent's token (``AGENT_SA_GROUPS`` for exactly a service account's);
    ``prepare(standin, tmp)``: run before the agent starts; ``standin_objects``: created
    by the stand-in at start (``--bootstrap-objects``: the agent's RBAC, namespaces);
    ``authorization_mode``: the stand-in's (``RBAC`` or ``AlwaysAllow``); ``wait_admin``:
    return once the gateway's administrator is cluster-admin in the cluster (``False`` with
    ``access_sync.admins_cluster_admin: false``); ``agent_args``: given to every agent the
    world starts (``old_agent_args``: one that does not report its cluster's state).

    By default every world is least privilege, as a real cluster: the stand-in enforces
    RBAC, the agent holds exactly the manifest's rights (``agent_objects``: its service
    account's groups, no system:masters), and users' rights there come only from the
    access sync; the cluster's own administrator is ``CLUSTER_ADMIN_TOKEN``.

    The stand-in and the gateway need nothing of each other, so they start side by side
    (each is mostly a Python process importing its modules); the agent, which needs both,
    after them."""
    gateway = Gateway(tmp / "gateway", free_port(), tmp / "gateway.log")
    gateway.extra_env.update(gateway_env or {})
    gateway.ca_path = gateway_ca
    if gateway_config:
        (tmp / "gateway.yaml").write_text(gateway_config)
        gateway.extra_args = ["--config", str(tmp / "gateway.yaml")]

    def start_standin() -> StandInProcess:
        standin = StandInProcess.start(
            tmp / "apiserver",
            tokens={
                AGENT_SA_TOKEN: (AGENT_SA_USER, "uid-agent", list(agent_groups)),
                CLUSTER_ADMIN_TOKEN: ("cluster-admin", "uid-admin", ["system:masters"]),
                **(standin_tokens or {}),
            },
            args=["--bulk-list-bytes", str(BULK_LIST_BYTES), *standin_args],
            objects=agent_objects() if standin_objects is None else standin_objects,
            authorization_mode=authorization_mode,
        )
        if prepare is not None:
            try:
                prepare(standin, tmp)
            except BaseException:
                standin.stop()
                raise
        return standin

    standin = start_side_by_side(gateway, start_standin)
    admin = gateway.admin()
    cluster = admin.post("/v3/clusters", {"name": name})
    agent_kubeconfig = standin.kubeconfig(tmp / "agent-kubeconfig", token=AGENT_SA_TOKEN)
    world = World(
        tmp,
        standin,
        gateway,
        admin,
        cluster["id"],
        name,
        NO_AGENT,
        agent_kubeconfig,
        tuple(agent_args),
    )
    world.agent = world.start_agent()
    world.wait_state("active")
    if authorization_mode == "RBAC" and wait_admin:
        world.wait_admin_synced()
    return world


def old_agent_args(tmp: Path) -> tuple[str, ...]:
    """Agent arguments for one that does not offer reports of its cluster's state
    (``cluster_state: false``): the gateway probes and watches through the tunnel, as
    with agents from before reports."""
    config = tmp / "old-agent.yaml"
    config.write_text("cluster_state: false\n")
    return ("--config", str(config))


AGENT_MODES = ("reports", "probes")
"""``reports``: the agent reports its cluster's state; ``probes``: an old agent."""


def agent_args_for(mode: str, tmp: Path) -> tuple[str, ...]:
    return old_agent_args(tmp) if mode == "probes" else ()


def start_side_by_side(
    gateway: Gateway, start_standin: Callable[[], StandInProcess]
) -> StandInProcess:
    """``gateway.start()`` in a thread while ``start_standin()`` runs here: the two need
    nothing of each other, and each is mostly a Python process importing its modules. If
    either fails, the other is stopped too."""
    with ThreadPoolExecutor(1, thread_name_prefix="gateway-start") as pool:
        gateway_started = pool.submit(gateway.start)
        try:
            standin = start_standin()
        except BaseException:
            with contextlib.suppress(Exception):
                gateway_started.result()
            gateway.stop()
            raise
        try:
            gateway_started.result()
        except BaseException:
            gateway.stop()
            standin.stop()
            raise
    return standin


def agent_objects(manage_roles: bool = False) -> list[dict[str, Any]]:
    """What the manifest gives the agent in a cluster with no custom role template: its
    namespace, service account, roles and bindings (``gateway.clusters.agent_rbac``), the
    ClusterRoles herdgate binds and owns (``access_sync.owned_cluster_roles``), and nothing
    else. ``manage_roles``: the ``?roles=managed`` manifest's (``herdgate-agent-roles``)."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    return [
        namespace,
        *agent_rbac.agent_rbac(manage_roles=manage_roles),
        *access_sync.owned_cluster_roles({}),
    ]


def start_least_privilege_world(tmp: Path, **kwargs: Any) -> World:
    """A world whose stand-in enforces RBAC and whose agent holds exactly the agent's
    rights (``agent_objects``, a service account's groups: no system:masters); users'
    rights there come only from the access sync. Every ``start_world`` is that now."""
    return start_world(tmp, **kwargs)


def stop_world(world: World) -> None:
    """Agent, gateway and stand-in stopped side by side (each SIGTERM and a wait: the
    stops need nothing of each other)."""
    stops = (world.agent.stop, world.gateway.stop, world.standin.stop)
    with ThreadPoolExecutor(len(stops), thread_name_prefix="stop") as pool:
        for done in [pool.submit(stop) for stop in stops]:
            try:
                done.result()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"teardown: {exc}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration is marked ``integration`` (for ``-m``)."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module", autouse=True)
def _collect_after_module() -> Iterator[None]:
    """Collect garbage when a module ends, so a process object a test dropped while its
    process still ran is reported (a ResourceWarning, an error) by the module that
    dropped it, not by whichever later test the collector happens to run in."""
    yield
    gc.collect()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = start_world(tmp_path_factory.mktemp("world"))
    try:
        yield w
    finally:
        stop_world(w)


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    """A stand-in for systemd's notify socket (pass ``systemd.env()`` to a process)."""
    with fake_systemd() as fake:
        yield fake
