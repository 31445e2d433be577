"""The ``herdgate`` CLI for people, run as a real command against a real gateway: log in,
register a cluster and its agent with the printed command, add a user and a binding,
get that user's kubeconfig and use it with the real kubectl; and the errors people meet
(wrong password, gateway down, untrusted CA), with their messages and exit codes."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from herdgate.client import ca_checksum
from tests.binaries import kubectl
from tests.integration.conftest import USER_PASSWORD, World, start_world, stop_world
from tests.integration.env import (
    ADMIN_PASSWORD,
    REPO_ROOT,
    Agent,
    ApiError,
    agent_command,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = start_world(tmp_path_factory.mktemp("cli"))
    try:
        yield w
    finally:
        stop_world(w)


def wrapper_dir(world: World) -> Path:
    """A ``herdgate`` on PATH that runs this checkout (as kubectl's exec plugin too)."""
    bin_dir = world.tmp / "bin"
    script = bin_dir / "herdgate"
    if not script.exists():
        bin_dir.mkdir(exist_ok=True)
        script.write_text(
            f'#!/bin/sh\nPYTHONPATH={REPO_ROOT} exec {sys.executable} -m herdgate "$@"\n'
        )
        script.chmod(0o755)
    return bin_dir


def clean_env(world: World, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HERDGATE_", "KUBE"))}
    env["HOME"] = str(home)
    env["PATH"] = f"{wrapper_dir(world)}:{env.get('PATH', '')}"
    env.update(extra)
    return env


def herdgate(
    world: World,
    home: Path,
    *args: str,
    stdin: str | None = None,
    timeout: float = 60.0,
    **extra: str,
) -> subprocess.CompletedProcess[str]:
    """The real command, with no terminal (a new session: no /dev/tty to prompt on)."""
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(wrapper_dir(world) / "herdgate"), *args],
        env=clean_env(world, home, **extra),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        start_new_session=True,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def kubectl_as(
    world: World, kubeconfig: Path, home: Path, *args: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [kubectl("1.32"), "--kubeconfig", str(kubeconfig), "--request-timeout=15s", *args],
        env=clean_env(world, home, **extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        start_new_session=True,
    )


def test_walk_through_with_the_cli_alone(world: World) -> None:
    home = world.tmp / "home-admin"
    url = world.gateway.url
    ca = str(world.gateway.ca_file)

    login = ok(
        herdgate(world, home, "login", url, "--ca", ca, "--username", "admin",
                 "--password-stdin", stdin=ADMIN_PASSWORD + "\n")
    )  # fmt: skip
    assert "Logged in to" in login.stderr and "as admin (administrator)" in login.stderr
    config = home / ".herdgate" / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    stored = json.loads(config.read_text())
    token = stored["contexts"][stored["currentContext"]]["token"]
    assert token.startswith("token-")
    assert token not in login.stdout + login.stderr

    # A cluster, waited for while its agent is started from the printed command.
    waiting = subprocess.Popen(
        [str(wrapper_dir(world) / "herdgate"), "cluster", "create", "prod", "--wait",
         "--timeout", "60s"],
        env=clean_env(world, home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    agent: Agent | None = None
    try:
        wait_until(
            lambda: any(c["name"] == "prod" for c in world.admin.get("/v3/clusters")["data"]),
            20,
            "cluster prod was never created",
        )
        both = ok(herdgate(world, home, "cluster", "import-command", "prod")).stdout.splitlines()
        assert len(both) == 2
        assert both[0].startswith(f"kubectl apply -f {url}/v3/import/crt-")
        assert both[0].endswith(".yaml")
        assert both[1].startswith(f"herdgate agent --server {url} --token crt-")
        insecure = ok(
            herdgate(world, home, "cluster", "import-command", "prod", "--kubectl",
                     "--insecure-download")
        ).stdout  # fmt: skip
        assert insecure.startswith("curl --insecure -sfL ") and "| kubectl apply -f -" in insecure
        managed = ok(
            herdgate(world, home, "cluster", "import-command", "prod", "--kubectl",
                     "--roles-managed")
        ).stdout  # fmt: skip
        assert managed.startswith(f"kubectl apply -f '{url}/v3/import/crt-")
        assert managed.rstrip().endswith(".yaml?roles=managed'")
        line = ok(herdgate(world, home, "cluster", "import-command", "prod", "--agent")).stdout
        assert f"--ca-checksum {ca_checksum(world.gateway.ca_file.read_bytes())}" in line
        agent = Agent(
            agent_command(line.strip(), world.agent_kubeconfig), world.tmp / "cli-agent.log"
        ).start()
        out, err = waiting.communicate(timeout=70)
        assert waiting.returncode == 0, err
        assert out.startswith("cluster prod is active (c-")
        # Progress shows the state the gateway reports while it waits: pending (no agent
        # yet), or unavailable (the agent is connected, its API server not yet probed).
        assert re.search(r"waiting for cluster prod to be active: (pending|unavailable)\n", err)

        ok(herdgate(world, home, "cluster", "wait", "prod", "--timeout", "5s"))
        listed = ok(herdgate(world, home, "cluster", "list")).stdout.splitlines()
        assert listed[0].split() == ["NAME", "ID", "STATE", "VERSION", "NODES", "AGENTS", "AGE"]
        rows = {line.split()[0]: line.split() for line in listed[1:]}
        assert rows["dev"][2] == "active" and rows["prod"][2] == "active"
        as_json = json.loads(ok(herdgate(world, home, "cluster", "list", "-o", "json")).stdout)
        prod = next(c for c in as_json if c["name"] == "prod")
        assert prod["agents"] and prod["state"] == "active"
        shown = ok(herdgate(world, home, "cluster", "show", "prod")).stdout
        assert "State:            active" in shown and "Agents:\n  ROLE" in shown
        assert ok(herdgate(world, home, "cluster", "list", "-o", "name")).stdout.splitlines() == [
            "cluster/dev",
            "cluster/prod",
        ]

        # A user with a role on the cluster.
        created = ok(
            herdgate(world, home, "user", "create", "carol", "--password-stdin",
                     stdin=USER_PASSWORD + "\n")
        )  # fmt: skip
        assert created.stdout.startswith("user carol created (u-")
        binding = json.loads(
            ok(
                herdgate(world, home, "binding", "create", "--cluster", "prod", "--user", "carol",
                         "--role", "cluster-member", "-o", "json")
            ).stdout
        )  # fmt: skip
        assert binding["roleTemplateId"] == "cluster-member"
        world.wait_synced(binding["id"])
        bindings = ok(herdgate(world, home, "binding", "list", "--cluster", "prod")).stdout
        assert "user carol (" in bindings and "cluster-member" in bindings

        # Carol logs in (the CA of this gateway is already known) and gets her kubeconfig.
        ok(
            herdgate(world, home, "login", url, "--username", "carol", "--password-stdin",
                     "--context", "carol", stdin=USER_PASSWORD + "\n")
        )  # fmt: skip
        kc = world.tmp / "carol.kubeconfig"
        ok(herdgate(world, home, "kubeconfig", "prod", "--context", "carol", "-o", str(kc)))
        assert stat.S_IMODE(kc.stat().st_mode) == 0o600
        whoami = kubectl_as(world, kc, world.tmp / "home-kubectl", "auth", "whoami", "-o", "json")
        assert whoami.returncode == 0, whoami.stderr
        carol_id = binding["userId"]
        assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == carol_id
        namespaces = kubectl_as(world, kc, world.tmp / "home-kubectl", "get", "namespaces")
        assert namespaces.returncode == 0, namespaces.stderr

        # Merged into kubectl's own file, with kubectl running `herdgate login` itself.
        kube = world.tmp / "home-carol-kube" / ".kube" / "config"
        kube.parent.mkdir(parents=True)
        kube.write_text(
            yaml.safe_dump(
                {"apiVersion": "v1", "kind": "Config", "current-context": "other",
                 "clusters": [{"name": "other", "cluster": {"server": "https://127.0.0.1:1"}}],
                 "users": [{"name": "other", "user": {"token": "x"}}],
                 "contexts": [{"name": "other", "context": {"cluster": "other", "user": "other"}}]}
            )
        )  # fmt: skip
        merged = ok(
            herdgate(world, home, "kubeconfig", "prod", "--exec", "--merge", "--context", "carol",
                     KUBECONFIG=str(kube))
        )  # fmt: skip
        assert "Merged 1 context for prod" in merged.stderr
        doc = yaml.safe_load(kube.read_text())
        assert [c["name"] for c in doc["contexts"]] == ["other", "prod"]
        assert doc["current-context"] == "prod"
        assert stat.S_IMODE(kube.stat().st_mode) == 0o600
        plugin = kubectl_as(
            world, kube, world.tmp / "home-carol-kube", "auth", "whoami", "-o", "json",
            HERDGATE_USERNAME="carol", HERDGATE_PASSWORD=USER_PASSWORD,
        )  # fmt: skip
        assert plugin.returncode == 0, plugin.stderr
        assert json.loads(plugin.stdout)["status"]["userInfo"]["username"] == carol_id

        # Every cluster she may use (prod, not the world's own cluster), one token with a
        # lifetime of its own.
        every = ok(herdgate(world, home, "kubeconfig", "--all", "--ttl", "1h",
                            "--context", "carol"))  # fmt: skip
        doc = yaml.safe_load(every.stdout)
        assert [c["name"] for c in doc["contexts"]] == ["prod"]
        assert doc["current-context"] == "prod"
        with_exec = herdgate(world, home, "kubeconfig", "--all", "--exec", "--ttl", "1h")
        assert with_exec.returncode == 2 and "--ttl" in with_exec.stderr

        # Carol is not an administrator.
        refused = herdgate(world, home, "user", "list", "--context", "carol")
        assert refused.returncode == 1
        assert "forbidden: only administrators may do this" in refused.stderr
        assert "you need to be a herdgate administrator" in refused.stderr

        tokens = ok(herdgate(world, home, "token", "list", "--context", "carol")).stdout
        assert "herdgate CLI" in tokens and "kubeconfig for prod" in tokens

        # Logging out revokes her token.
        carol_token = json.loads(config.read_text())["contexts"]["carol"]["token"]
        ok(herdgate(world, home, "logout", "--context", "carol"))
        with pytest.raises(ApiError) as revoked:
            world.gateway.api(carol_token).get("/v3/users?me=true")
        assert revoked.value.status == 401
        after = herdgate(world, home, "cluster", "list", "--context", "carol")
        assert after.returncode == 1 and "not logged in" in after.stderr
        stale = herdgate(world, home, "cluster", "list", "--token", carol_token)
        assert stale.returncode == 1
        assert "did not accept your credentials" in stale.stderr
        assert "herdgate login" in stale.stderr

        # Back to the administrator's context; deleting asks first (without a terminal,
        # --yes is needed).
        admin_context = f"admin@127.0.0.1:{world.gateway.port}"
        ok(herdgate(world, home, "context", "use", admin_context))
        contexts = ok(herdgate(world, home, "context", "list")).stdout.splitlines()
        assert [line.split()[:2] for line in contexts[1:]] == [
            ["*", admin_context],
            ["carol", url],
        ]
        refused_delete = herdgate(world, home, "cluster", "delete", "prod")
        assert refused_delete.returncode == 2 and "without --yes" in refused_delete.stderr
        ok(herdgate(world, home, "cluster", "delete", "prod", "--yes"))
        names = ok(herdgate(world, home, "cluster", "list", "-o", "name")).stdout
        assert names.splitlines() == ["cluster/dev"]
    finally:
        if waiting.poll() is None:
            waiting.kill()
        waiting.communicate()
        if agent is not None:
            agent.stop()


def test_errors_people_meet(world: World) -> None:
    home = world.tmp / "home-errors"
    url = world.gateway.url

    ca = str(world.gateway.ca_file)
    wrong = herdgate(world, home, "login", url, "--ca", ca, "--username", "admin",
                     "--password-stdin", stdin="not-the-password\n")  # fmt: skip
    assert wrong.returncode == 1
    assert "login failed: authentication failed: invalid username or password" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    assert not (home / ".herdgate" / "config.json").exists()

    checksum = ca_checksum(world.gateway.ca_file.read_bytes())
    untrusted = herdgate(world, home, "login", url, "--username", "admin", "--password-stdin",
                         stdin=ADMIN_PASSWORD + "\n")  # fmt: skip
    assert untrusted.returncode == 1
    assert f"the certificate of {url} is not trusted" in untrusted.stderr
    assert f"--ca-checksum {checksum}" in untrusted.stderr

    mismatch = herdgate(world, home, "login", url, "--ca-checksum", "0" * 64, "--username",
                        "admin", "--password-stdin", stdin=ADMIN_PASSWORD + "\n")  # fmt: skip
    assert mismatch.returncode == 1
    assert f"has checksum {checksum}, expected {'0' * 64}" in mismatch.stderr

    ok(herdgate(world, home, "login", url, "--ca-checksum", checksum, "--username", "admin",
                "--password-stdin", stdin=ADMIN_PASSWORD + "\n"))  # fmt: skip
    assert ok(herdgate(world, home, "cluster", "list", "-o", "name")).stdout == "cluster/dev\n"

    down = f"https://127.0.0.1:{free_port()}"
    gone = herdgate(world, home, "cluster", "list", "--server", down, "--token", "token-x:y")
    assert gone.returncode == 1
    assert f"cannot connect to {down}: connection refused" in gone.stderr
    assert f"is the gateway running at {down}?" in gone.stderr

    hostname = herdgate(
        world, home, "cluster", "list", "--server", url.replace("127.0.0.1", "127.1"),
        "--token", "token-x:y", "--ca", str(world.gateway.ca_file),
    )  # fmt: skip
    assert hostname.returncode == 1
    assert "does not name that host" in hostname.stderr

    usage = herdgate(world, home, "cluster")
    assert usage.returncode == 2
    missing = herdgate(world, home, "cluster", "show", "nope")
    assert missing.returncode == 1 and "no cluster 'nope'" in missing.stderr


def test_the_credential_plugin_is_unchanged_without_a_terminal(world: World) -> None:
    """``herdgate login --server URL --cluster ID`` as kubectl runs it: an ExecCredential
    on standard output, the token cached 0600."""
    home = world.tmp / "home-plugin-direct"
    result = ok(
        herdgate(
            world, home, "login", "--server", world.gateway.url, "--cluster", world.cluster_id,
            "--ca-file", str(world.gateway.ca_file),
            HERDGATE_USERNAME="admin", HERDGATE_PASSWORD=ADMIN_PASSWORD,
            KUBERNETES_EXEC_INFO=json.dumps(
                {"apiVersion": "client.authentication.k8s.io/v1", "spec": {"interactive": False}}
            ),
        )
    )  # fmt: skip
    credential = json.loads(result.stdout)
    assert credential["kind"] == "ExecCredential"
    assert credential["status"]["token"].startswith("token-")
    cached = list((home / ".herdgate" / "cache").glob("*.json"))
    assert len(cached) == 1 and stat.S_IMODE(cached[0].stat().st_mode) == 0o600
    assert not (home / ".herdgate" / "config.json").exists()
    again = ok(
        herdgate(world, home, "login", "--server", world.gateway.url, "--cluster",
                 world.cluster_id, KUBERNETES_EXEC_INFO="{}")
    )  # fmt: skip
    assert json.loads(again.stdout)["status"]["token"] == credential["status"]["token"]
