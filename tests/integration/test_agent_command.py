"""The agent command the gateway prints, and a gateway run from a virtualenv not on PATH.

The README's install puts ``herdgate`` in ``.venv/bin``, which is not on PATH: the printed
``herdgate agent ...`` line would not run as it is. The gateway says so when it starts
(and what to do), and ``registration.agent_program`` makes the line name the program as
installed where the agents run.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.env import (
    ADMIN_PASSWORD,
    REPO_ROOT,
    Api,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.integration

NOTE = "note: the agent commands this gateway prints run 'herdgate', which is not on PATH"


def _venv_program(root: Path) -> Path:
    """``<root>/bin/herdgate`` as pip writes a console script (this checkout's code)."""
    program = root / "bin" / "herdgate"
    program.parent.mkdir(parents=True)
    program.write_text(
        f"#!{sys.executable}\nimport sys\nfrom herdgate.cli import main\n"
        "if __name__ == '__main__':\n    sys.exit(main())\n"
    )
    program.chmod(0o755)
    return program


@contextmanager
def _gateway(tmp: Path, program: Path, path_env: str, **env: str) -> Iterator[tuple[str, Api]]:
    """The gateway started as ``program gateway``: its banner and an admin client."""
    port = free_port()
    state = tmp / f"state-{port}"
    log = tmp / f"gateway-{port}.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HERDGATE_")}
    environ.update(
        PATH=path_env, PYTHONPATH=str(REPO_ROOT), HERDGATE_BOOTSTRAP_PASSWORD=ADMIN_PASSWORD, **env
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(program), "gateway", "--listen", f"127.0.0.1:{port}", "--state-dir", str(state)],
            cwd=tmp, env=environ, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(lambda: "listening on" in log.read_text(), 30, f"no gateway:\n{log.read_text()}")
        api = Api(f"https://127.0.0.1:{port}", state / "tls" / "ca.crt")
        api.token = api.login("admin", ADMIN_PASSWORD)
        yield log.read_text(), api
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def _agent_lines(api: Api) -> tuple[str, str]:
    cluster = api.post("/v3/clusters", {"name": f"c{free_port()}"})
    reg = api.post("/v3/clusterregistrationtokens", {"clusterId": cluster["id"]})
    return reg["command"].splitlines()[0], reg["nodeCommand"]


def test_a_gateway_from_a_venv_not_on_path_says_what_to_do(tmp_path: Path) -> None:
    program = _venv_program(tmp_path / "venv")
    path_env = "/usr/bin:/bin"
    with _gateway(tmp_path, program, path_env) as (banner, api):
        command, node = _agent_lines(api)
    assert command == node and shlex.split(node)[:2] == ["herdgate", "agent"]
    (note,) = [line for line in banner.splitlines() if line.startswith("note:")]
    assert note.startswith(NOTE), note
    assert str(program.parent) in note and "registration.agent_program" in note, note
    assert "`" not in note


def test_agent_program_names_the_installed_program(tmp_path: Path) -> None:
    program = _venv_program(tmp_path / "venv")
    with _gateway(
        tmp_path,
        program,
        "/usr/bin:/bin",
        HERDGATE_REGISTRATION__AGENT_PROGRAM="/opt/herdgate/bin/herdgate",
    ) as (banner, api):
        command, node = _agent_lines(api)
    assert NOTE not in banner
    assert command == node
    assert shlex.split(node)[:2] == ["/opt/herdgate/bin/herdgate", "agent"]


def test_no_note_when_herdgate_is_on_path(tmp_path: Path) -> None:
    program = _venv_program(tmp_path / "venv")
    with _gateway(tmp_path, program, f"{program.parent}:/usr/bin:/bin") as (banner, api):
        _, node = _agent_lines(api)
    assert NOTE not in banner and shlex.split(node)[0] == "herdgate"
