"""The README's walk-through (its ```sh walkthrough blocks) is valid shell, and every
``herdgate`` command in it is one the CLI accepts; tests/integration/test_readme_walkthrough.py
runs it against a gateway and a cluster."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from herdgate import cli

README = Path(__file__).resolve().parents[3] / "README.md"
BLOCK = re.compile(r"^```sh walkthrough\n(.*?)^```", re.MULTILINE | re.DOTALL)


def walkthrough() -> str:
    blocks = BLOCK.findall(README.read_text())
    assert len(blocks) >= 2, "the README's walk-through blocks are gone"
    return "\n".join(blocks)


def herdgate_commands(script: str) -> list[list[str]]:
    """Every ``herdgate ...`` invocation, its words as the shell gives them to it."""
    text = script.replace("\\\n", " ")
    text = re.sub(r"\|\s*\n", "| ", text)
    found: list[list[str]] = []
    for raw in text.splitlines():
        code = raw.split(" #", 1)[0] if not raw.lstrip().startswith("#") else ""
        code = code.replace('"$GW"', "https://gw.example:8443")
        inner = re.findall(r"\$\((herdgate [^)]*)\)", code)
        pieces = inner + re.split(r"\||&&|;|&", re.sub(r"\$\(herdgate [^)]*\)", "X", code))
        for piece in pieces:
            words = shlex.split(re.sub(r"<\s*\S+", "", piece))
            if words and words[0] == "herdgate":
                found.append(words[1:])
    return found


def test_the_walkthrough_is_valid_shell() -> None:
    result = subprocess.run(
        ["sh", "-n"], input=walkthrough(), capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_every_herdgate_command_of_the_walkthrough_parses() -> None:
    commands = herdgate_commands(walkthrough())
    assert [c[0] for c in commands].count("login") == 2
    assert ["kubeconfig", "--all", "--context", "alice", "-o", "alice.kubeconfig"] in commands
    parser = cli.build_parser()
    for argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:  # pragma: no cover - the assertion says which
            pytest.fail(f"herdgate {' '.join(argv)}: not a valid command")
