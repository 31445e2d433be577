"""Plain text for ``--help``: reStructuredText markup taken out of descriptions and help.

Docstrings are written for Sphinx-style readers (double backquotes, roles such as
``:class:``); a terminal should show the words only. :func:`finish` cleans a whole parser
tree once it is built, so a subcommand added later needs nothing of its own.
"""

from __future__ import annotations

import argparse
import re

_ROLE = re.compile(r":[A-Za-z]+(?::[A-Za-z]+)?:`([^`]*)`")
"""``:class:`~a.b.C``` and the like."""
_LITERAL = re.compile(r"``(.*?)``")
_LINK = re.compile(r"`([^`<]*?)\s*(?:<[^>`]*>)?`_{1,2}")
"""```text <https://...>`_`` and ```text`_``."""
_INTERPRETED = re.compile(r"`([^`]*)`")


def _role_text(match: re.Match[str]) -> str:
    target = match.group(1)
    shown = re.sub(r"\s*<[^>]*>$", "", target)
    if shown.startswith("~"):
        return shown[1:].rpartition(".")[2]
    return shown


def plain(text: str) -> str:
    """``text`` without reStructuredText inline markup (any backquote left is dropped)."""
    text = _ROLE.sub(_role_text, text)
    text = _LITERAL.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _INTERPRETED.sub(r"\1", text)
    return text.replace("`", "")


def finish(parser: argparse.ArgumentParser) -> None:
    """Make every description and help line of ``parser`` and its subcommands plain text;
    a subcommand without a description gets its one-line help as one."""
    if parser.description:
        parser.description = plain(parser.description)
    if parser.epilog:
        parser.epilog = plain(parser.epilog)
    for action in parser._actions:
        if isinstance(action.help, str):
            action.help = plain(action.help)
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice for choice in action._choices_actions}
        for name, sub in action.choices.items():
            line = helps.get(name)
            if line is not None and isinstance(line.help, str):
                line.help = plain(line.help)
                if not sub.description:
                    sub.description = line.help
            finish(sub)
