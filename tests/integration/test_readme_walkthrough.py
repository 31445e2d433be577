"""The README's walk-through (its ```sh walkthrough blocks), run as written: a fresh
gateway with its state in ``herdgate-data`` of the directory the script runs in, a
``.venv/bin/herdgate`` there, and ``dev-admin.kubeconfig`` for a stand-in cluster. Only
the gateway's address is changed: ``https://$(hostname):8443`` becomes the test
gateway's (tests talk to 127.0.0.0/8 only, on a free port)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from standin.harness import StandInProcess
from tests.binaries import kubectl
from tests.integration.conftest import AGENT_SA_GROUPS, AGENT_SA_TOKEN, AGENT_SA_USER, agent_objects
from tests.integration.env import REPO_ROOT, Gateway, free_port
from tests.unit.herdgate.test_readme_walkthrough import walkthrough

pytestmark = pytest.mark.integration

README_URL = "https://$(hostname):8443"


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    kubectl_dir = str(Path(kubectl("1.32")).parent)
    standin = StandInProcess.start(
        tmp_path / "apiserver",
        tokens={AGENT_SA_TOKEN: (AGENT_SA_USER, "uid-agent", list(AGENT_SA_GROUPS))},
        objects=agent_objects(),
    )
    gateway = Gateway(tmp_path / "herdgate-data", free_port(), tmp_path / "gateway.log")
    gateway.extra_env["HERDGATE_BOOTSTRAP_PASSWORD"] = ""  # generated, as on a first start
    process: subprocess.Popen[bytes] | None = None
    try:
        gateway.start()
        assert (tmp_path / "herdgate-data" / "bootstrap-password").exists()
        standin.kubeconfig(tmp_path / "dev-admin.kubeconfig", token=AGENT_SA_TOKEN)
        venv_bin = tmp_path / ".venv" / "bin"
        venv_bin.mkdir(parents=True)
        (venv_bin / "herdgate").write_text(
            f'#!/bin/sh\nPYTHONPATH={REPO_ROOT} exec {sys.executable} -m herdgate "$@"\n'
        )
        (venv_bin / "herdgate").chmod(0o755)
        script = walkthrough()
        assert README_URL in script
        script = "set -e\n" + script.replace(README_URL, gateway.url)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HERDGATE_", "KUBE"))}
        env["HOME"] = str(tmp_path / "home")
        env["PATH"] = f"{kubectl_dir}:{env.get('PATH', '')}"
        # Files, not pipes: the agent the script starts in the background keeps them open.
        out_file, err_file = tmp_path / "walkthrough.out", tmp_path / "walkthrough.err"
        with out_file.open("w") as stdout, err_file.open("w") as stderr:
            process = subprocess.Popen(
                ["sh", "-c", script], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                stdout=stdout, stderr=stderr, start_new_session=True,
            )  # fmt: skip
        process.wait(timeout=300)
        out, err = out_file.read_text(), err_file.read_text()
        assert process.returncode == 0, f"{out}\n{err}"
        assert "Traceback" not in err
        assert "cluster dev created (c-" in out
        assert "cluster dev is active" in out
        assert "binding c-" in out and "alice is cluster-member on dev" in out
        assert "Logged in to" in err and "as alice;" in err
        assert "No resources found in default namespace." in err  # kubectl, as alice
        assert (tmp_path / "alice.kubeconfig").exists()
    finally:
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)  # the agent the script left running
            if process.poll() is None:
                process.kill()
            process.wait(10)
        gateway.stop()
        standin.stop()
