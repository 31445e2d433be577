"""The compiled build: the request path's modules as C extensions, made by mypyc.

The modules in ``COMPILED`` carry every request and every tunnel byte. mypyc compiles
them from the same typed source (mypy strict) into C extension modules: measured in
docs/benchmarks.md, section "The compiled build". The source stays the reference: with
no C compiler, or with ``HERDGATE_PURE=1``, the same modules run as Python.

Where a compiled module comes from:

- an installed package (``pip install .``): ``setup.py`` compiles them beside their
  sources in the wheel;
- a development tree: ``python -m config.native build`` compiles them into ``.native/``
  and writes a stamp of the sources it was built from. ``gateway`` and ``tunnel`` put
  ``.native/<package>`` first on their ``__path__`` only while that stamp matches the
  sources, so an edited module is never shadowed by a stale compiled copy (it runs as
  Python, with a line on standard error, until the next build).

What compiled code enforces that Python does not: annotations are checked at run time
(a ``cast`` that lies raises ``TypeError``), compiled classes cannot be patched or
subclassed from Python, and async generators are not supported (async iterator classes
instead). The test suite runs against the compiled build (CI requires it).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import sys
from pathlib import Path

COMPILED: tuple[str, ...] = (
    "gateway/proxy/access.py",
    "gateway/telemetry/audit.py",
    "gateway/identity/directory.py",
    "gateway/proxy/exchange.py",
    "gateway/front/connection.py",
    "gateway/front/h2.py",
    "gateway/front/request.py",
    "gateway/proxy/heads.py",
    "gateway/front/hpack.py",
    "gateway/front/hpack_tables.py",
    "gateway/front/h1_protocol.py",
    "gateway/front/h2_protocol.py",
    "gateway/proxy/impersonation.py",
    "gateway/proxy/paths.py",
    "gateway/pieces.py",
    "gateway/proxy/handler.py",
    "gateway/proxy/model.py",
    "gateway/proxy/rawresponse.py",
    "gateway/proxy/requestinfo.py",
    "gateway/proxy/sessions.py",
    "gateway/clusters/tunnels.py",
    "gateway/clusters/chunked.py",
    "gateway/clusters/upstream.py",
    "tunnel/frames.py",
    "tunnel/kubequery.py",
    "tunnel/protocol.py",
    "tunnel/pump.py",
    "tunnel/relay.py",
    "tunnel/session.py",
    "tunnel/streams.py",
    "tunnel/tls.py",
    "tunnel/websocket.py",
    "tunnel/wsconn.py",
)
"""Source files compiled, relative to the project root."""
GROUP = "herdgate_native"
"""mypyc's group: the shared library is the top-level module ``herdgate_native__mypyc``."""
PURE_ENV = "HERDGATE_PURE"
ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ".native"
"""The development build, under the project root."""
STAMP = "sources.sha256"

_digests: dict[Path, str] = {}
_warned = False


def pure_requested() -> bool:
    """``HERDGATE_PURE`` set (to anything but 0): run and build the source as Python."""
    return os.environ.get(PURE_ENV, "") not in {"", "0"}


def module_names() -> list[str]:
    return [path.removesuffix(".py").replace("/", ".") for path in COMPILED]


def digest(root: Path = ROOT) -> str:
    """SHA-256 over the compiled modules' sources (and their names)."""
    h = hashlib.sha256()
    for rel in COMPILED:
        h.update(rel.encode() + b"\0")
        h.update((root / rel).read_bytes())
    return h.hexdigest()


def _digest_once(root: Path) -> str:
    if root not in _digests:
        _digests[root] = digest(root)
    return _digests[root]


def use_build(package: str, package_path: list[str], root: Path = ROOT) -> bool:
    """Put a development build of ``package`` first on its ``__path__`` if it was built
    from the sources as they are now. Called at import by ``tunnel``, ``gateway`` and
    each gateway package that holds compiled modules."""
    global _warned  # noqa: PLW0603 - one warning per process
    if pure_requested():
        return False
    build = root / BUILD_DIR
    try:
        recorded = (build / STAMP).read_text().strip()
        current = _digest_once(root)
    except OSError:
        return False  # no development build (an installed package has its own)
    if recorded != current:
        if not _warned:
            _warned = True
            print(
                f"herdgate: {build} was built from other sources; running them as "
                "Python (python -m config.native build)",
                file=sys.stderr,
            )
        return False
    compiled = str(build / package.replace(".", "/"))
    if compiled not in package_path:
        package_path.insert(0, compiled)
    if str(build) not in sys.path:
        sys.path.append(str(build))  # the group's shared library
    return True


def loaded() -> tuple[int, int]:
    """(compiled, total): how many of ``COMPILED`` import as extension modules (those
    imported already, as they were; the others as they would be)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    compiled = 0
    for name in module_names():
        module = sys.modules.get(name)
        if module is not None:
            origin = getattr(module, "__file__", None) or ""
        else:
            spec = importlib.util.find_spec(name)
            origin = (spec.origin if spec is not None else None) or ""
        if origin.endswith(suffixes):
            compiled += 1
    return compiled, len(COMPILED)


def describe() -> str:
    """For start-up logs and benchmark reports."""
    compiled, total = loaded()
    if compiled == total:
        return f"compiled (mypyc, {compiled} modules)"
    if compiled:
        return f"partly compiled ({compiled} of {total} modules)"
    return "pure Python"


def can_compile() -> str | None:
    """None if a C compiler and Python's headers are here, else what is missing."""
    import sysconfig

    include = sysconfig.get_paths().get("include", "")
    if not (Path(include) / "Python.h").is_file():
        return f"Python's headers ({include}/Python.h; Debian: python3-dev)"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"a C compiler ({compiler}; Debian: gcc)"
    return None


def extensions() -> list[object]:
    """setuptools extension modules for ``COMPILED`` (run with the project root as the
    working directory)."""
    from mypyc.build import mypycify

    return list(mypycify(list(COMPILED), group_name=GROUP, opt_level="3"))


def build(root: Path = ROOT) -> None:
    """Compile ``COMPILED`` into ``root/.native`` and stamp it with their digest."""
    from setuptools import setup

    missing = can_compile()
    if missing is not None:
        raise SystemExit(f"cannot compile: no {missing}")
    os.chdir(root)
    target = root / BUILD_DIR
    shutil.rmtree(target, ignore_errors=True)
    current = digest(root)
    setup(
        name="herdgate-native",
        ext_modules=extensions(),
        script_args=[
            "-q",
            "build_ext",
            "--build-lib",
            str(target),
            "--build-temp",
            str(root / "build" / "native"),
        ],
    )
    if digest(root) != current:
        raise SystemExit("the sources changed during the build; build again")
    (target / STAMP).write_text(current + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["build"]:
        raise SystemExit("usage: python -m config.native build")
    build()
