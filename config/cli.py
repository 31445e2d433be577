"""Plumbing shared by every ``herdgate`` subcommand: common flags, settings, exit codes.

Exit codes: 0 done, 1 the program could not start or failed (its message says why),
2 the configuration is wrong (the message names the setting and, where it can, the file and
line or the variable it came from: ``herdgate gateway: configuration error: tls.cert_file:
cannot read /etc/herdgate/tls.crt: No such file or directory (gateway.yaml line 21)``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from config import checks, loader
from config.errors import ConfigError, StartError
from config.logging import configure_logging

S = TypeVar("S")


def add_common_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("--config", help=f"YAML settings file (see {example})")
    parser.add_argument("--log-level", help="debug, info, warning or error")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="print the effective settings (secrets redacted) and exit",
    )


def load_settings(cls: type[S], args: argparse.Namespace, flags: dict[str, Any]) -> S:
    """``cls`` from ``--config``, the given flags (None = not given) and ``--log-level``.

    Where each setting came from is kept in ``args.config_sources``, so that
    :func:`run_program` can locate errors found later.
    """
    if args.log_level:
        flags = {**flags, "logging": {"level": args.log_level}}
    settings, args.config_sources = loader.load_with_sources(cls, args.config, flags)
    return settings


def run_program(
    name: str,
    args: argparse.Namespace,
    settings_from: Callable[[argparse.Namespace], S],
    main: Callable[[S], int | None],
    failures: tuple[type[Exception], ...] = (),
) -> int:
    """Load and check settings and the files they name, honour ``--check-config``, set up
    logging, run ``main``. ``StartError`` and ``failures`` are one line and exit 1."""
    cannot_start: tuple[type[Exception], ...] = (StartError, *failures)
    try:
        settings = settings_from(args)
        checks.check_files(settings)
        if args.check_config:
            print(json.dumps(loader.redacted(settings), indent=2))
            return 0
        configure_logging(settings.logging)  # type: ignore[attr-defined]
        return main(settings) or 0
    except ConfigError as exc:
        sources = getattr(args, "config_sources", None)
        if isinstance(sources, loader.Sources):
            sources.locate(exc)
        print(f"herdgate {name}: configuration error: {exc}", file=sys.stderr)
        return 2
    except cannot_start as exc:
        print(f"herdgate {name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
