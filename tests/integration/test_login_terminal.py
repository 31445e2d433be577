"""`herdgate login` asks for the user name and password on a real terminal.

Each program runs on a pseudo-terminal that is its controlling terminal (``/dev/tty``),
as in a terminal window, without ``HERDGATE_USERNAME``/``HERDGATE_PASSWORD``: the test
reads the prompts and types the answers, alone and with kubectl running the plugin.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.binaries import kubectl
from tests.integration.conftest import USER_PASSWORD, World
from tests.integration.env import REPO_ROOT, write_kubeconfig
from tests.integration.output import error_lines
from tests.integration.terminal import on_terminal

pytestmark = pytest.mark.integration


def _env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HERDGATE_", "KUBE")) and k != "PYTHONPATH"
    }
    env.update(HOME=str(home), PYTHONPATH=str(REPO_ROOT), TERM="dumb")
    return env


def _herdgate_program(tmp: Path) -> Path:
    """A ``herdgate`` that runs this checkout's code (what an installed one does)."""
    path = tmp / "bin" / "herdgate"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m herdgate "$@"\n')
    path.chmod(0o755)
    return path


def test_login_prompts_for_name_and_password_on_the_terminal(world: World) -> None:
    _, user_api = world.user("tty-user", role="cluster-member")
    home = world.tmp / "home-tty"
    home.mkdir()
    command = [
        sys.executable, "-m", "herdgate", "login",
        "--server", world.gateway.url,
        "--ca-file", str(world.gateway.ca_file),
        "--cluster", world.cluster_id,
    ]  # fmt: skip
    with on_terminal(command, _env(home), cwd=REPO_ROOT) as tty:
        tty.expect("herdgate local username: ")
        tty.type("tty-user")
        tty.expect("herdgate password for tty-user: ")
        tty.type(USER_PASSWORD)
        code, out = tty.finish()
    assert code == 0, tty.shown
    credential = json.loads(out)
    assert credential["kind"] == "ExecCredential"
    assert credential["status"]["token"].startswith("token-")
    assert b"tty-user" in tty.shown  # the name is echoed...
    assert USER_PASSWORD.encode() not in tty.shown  # ...the password is not
    # The token is the user's, and cached: a second run prompts for nothing.
    token_id = credential["status"]["token"].partition(":")[0]
    assert token_id in {t["id"] for t in user_api.get("/v3/tokens")["data"]}
    with on_terminal(command, _env(home), cwd=REPO_ROOT) as tty:
        code, out = tty.finish()
    assert code == 0 and json.loads(out) == credential
    assert b"username" not in tty.shown


def test_an_empty_name_is_refused_clearly(world: World) -> None:
    home = world.tmp / "home-tty-empty"
    home.mkdir()
    command = [
        sys.executable, "-m", "herdgate", "login",
        "--server", world.gateway.url, "--ca-file", str(world.gateway.ca_file),
    ]  # fmt: skip
    with on_terminal(command, _env(home), cwd=REPO_ROOT) as tty:
        tty.expect("herdgate local username: ")
        tty.type("")
        code, out = tty.finish()
    assert code == 1 and out == ""
    assert b"herdgate login: no user name given" in tty.shown


@pytest.mark.parametrize("version", ["1.32", "1.27"])
def test_kubectl_runs_the_plugin_which_prompts_on_the_terminal(world: World, version: str) -> None:
    """kubectl on a terminal (``interactiveMode: IfAvailable``) runs ``herdgate login``,
    which prompts there; the answer is kubectl's."""
    name = f"tty-kubectl-{version.replace('.', '')}"
    user_id, api = world.user(name, role="cluster-member")
    config = yaml.safe_load(
        api.post(
            f"/v3/clusters/{world.cluster_id}?action=generateKubeconfig", {"credential": "exec"}
        )["config"]
    )
    exec_ = config["users"][0]["user"]["exec"]
    assert exec_["interactiveMode"] == "IfAvailable"
    exec_["command"] = str(_herdgate_program(world.tmp))
    kc = write_kubeconfig(world.tmp / f"kubeconfig-{name}", yaml.safe_dump(config))
    home = world.tmp / f"home-{name}"
    home.mkdir()
    command = [kubectl(version), "--kubeconfig", str(kc), "auth", "whoami", "-o", "json"]
    with on_terminal(command, _env(home)) as tty:
        tty.expect("herdgate local username: ")
        tty.type(name)
        tty.expect(f"herdgate password for {name}: ")
        tty.type(USER_PASSWORD)
        code, out = tty.finish()
    assert code == 0, tty.shown
    assert json.loads(out)["status"]["userInfo"]["username"] == user_id
    assert USER_PASSWORD.encode() not in tty.shown


def test_without_a_terminal_the_error_says_what_to_set(world: World) -> None:
    """No controlling terminal (a new session, as under a CI runner): one line naming the
    variables, and nothing read from standard input."""
    home = world.tmp / "home-no-tty"
    home.mkdir()
    command = [
        sys.executable, "-m", "herdgate", "login",
        "--server", world.gateway.url, "--ca-file", str(world.gateway.ca_file),
    ]  # fmt: skip
    for extra in ({}, {"HERDGATE_USERNAME": "someone"}):
        done = subprocess.run(
            command,
            env={**_env(home), **extra},
            cwd=REPO_ROOT,
            input="guess\n",
            capture_output=True,
            text=True,
            timeout=30,
            start_new_session=True,
            check=False,
        )
        assert (done.returncode, done.stdout) == (1, "")
        assert error_lines(done.stderr) == [
            "herdgate login: no terminal to prompt on; set HERDGATE_USERNAME and HERDGATE_PASSWORD"
        ]
