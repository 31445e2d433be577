"""``herdgate gateway --check-config`` stops with exit code 2 and one message naming the key,
the file and the line: an unknown key, a wrong type, a missing certificate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("text", "key", "line", "why"),
    [
        ("listen: 0.0.0.0:8443\ntls:\n  cert_fil: /x.crt\n", "tls.cert_fil", 3, "unknown setting"),
        ("listen: 0.0.0.0:8443\n\nworkers: many\n", "workers", 3, "expected an integer"),
        (
            "tls:\n  key_file: /nonexistent/tls.key\n  cert_file: /nonexistent/tls.crt\n",
            "tls.cert_file",
            3,
            "cannot read /nonexistent/tls.crt: No such file or directory",
        ),
        (
            "listen: 0.0.0.0:8443\nreplica:\n  advertise_url: https://0.0.0.0:8443\n",
            "replica.advertise_url",
            3,
            "0.0.0.0 is not an address agents can dial",
        ),
        (
            "replica:\n  advertise_url: http://10.0.0.5:8443/gw\n",
            "replica.advertise_url",
            2,
            "expected an https:// URL",
        ),
    ],
)
def test_check_config_reports_key_file_and_line(
    tmp_path: Path, text: str, key: str, line: int, why: str
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERDGATE_")}
    done = subprocess.run(
        [sys.executable, "-m", "herdgate", "gateway", "--config", str(config), "--check-config"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    message = done.stderr.strip()
    assert "\n" not in message  # one message, no traceback
    assert message.startswith(f"herdgate gateway: configuration error: {key}: ")
    assert why in message
    assert message.endswith(f"({config} line {line})")
