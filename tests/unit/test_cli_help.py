"""`herdgate --help` and every subcommand's `--help`: plain text, each subcommand
described (a one-line help in the list, a description on its own page)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from herdgate.cli import build_parser
from herdgate.helptext import plain

REPO_ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = ("gateway", "agent", "webhook", "login")


def _subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    """Every subcommand at any depth: its words, parser and one-line help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, helps.get(name)
                yield from _subcommands(sub, (*path, name))


def _all_help() -> Iterator[tuple[str, str]]:
    parser = build_parser()
    yield "herdgate", parser.format_help()
    for words, sub, _ in _subcommands(parser):
        yield " ".join(("herdgate", *words)), sub.format_help()


def test_there_are_subcommands() -> None:
    names = {words[0] for words, _, _ in _subcommands(build_parser())}
    assert set(PROGRAMS) <= names


@pytest.mark.parametrize(("command", "text"), list(_all_help()))
def test_no_help_output_has_markup(command: str, text: str) -> None:
    assert "`" not in text, f"{command} --help:\n{text}"
    assert ":class:" not in text and ":func:" not in text, f"{command} --help:\n{text}"


def test_every_subcommand_has_a_help_line_and_a_description() -> None:
    """(A subcommand given no description shows its help line as one; the programs
    say more.)"""
    for words, sub, help_line in _subcommands(build_parser()):
        command = " ".join(words)
        assert help_line and "\n" not in help_line, f"herdgate {command}: no one-line help"
        assert sub.description, f"herdgate {command}: no description"
        if command in PROGRAMS:
            assert len(sub.description) > len(help_line) + 40, (
                f"herdgate {command}: the description only repeats the help line"
            )


def test_help_through_the_program() -> None:
    """What a user runs: ``herdgate --help`` and ``herdgate agent --help``."""
    for args in ([], ["agent"]):
        done = subprocess.run(
            [sys.executable, "-m", "herdgate", *args, "--help"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "`" not in done.stdout and done.stdout.startswith("usage: herdgate")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The ``herdgate`` command.", "The herdgate command."),
        ("see :func:`run_program` and `x`", "see run_program and x"),
        (":class:`~tunnel.agent.Agent`", "Agent"),
        ("no markup: 2*3 and a_b", "no markup: 2*3 and a_b"),
        ("a ``literal`` and `a link <https://x>`_", "a literal and a link"),
    ],
)
def test_plain_strips_restructured_text(text: str, expected: str) -> None:
    assert plain(text) == expected
