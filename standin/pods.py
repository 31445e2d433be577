"""The pods' filesystems: a private root directory per container, and real programs run in it.

``kubectl cp`` needs a real ``tar`` in the container (``tar cf - <path>`` to download,
``test -d <dir>`` then ``tar -xmf - -C <dir>`` to upload, all over exec). The stand-in gives
each container of each pod its own root directory under one directory per stand-in (a temp
directory, removed when the stand-in stops, or ``--pod-root``) and runs the host's programs
there the way a container runtime would: in a private mount namespace, ``chroot``-ed into
that root, so that every path the program meets (its arguments, ``-C``, ``..``, absolute
and relative symlinks, even ones a previous upload made) resolves inside the pod's root, as
in a container. The root holds what a small image would: ``/usr`` (the host's, bound
read-only, where the programs and their libraries are), the host's ``/bin``, ``/lib``…
(as the same symlinks into ``/usr`` on a merged-/usr host, else bound read-only), a minimal
``/etc/passwd`` and ``/etc/group``, ``/tmp`` (1777) and ``/root``. Everything else there is
the pod's.

As root the mount namespace is all it takes (``unshare --mount``, propagation private, so
the bind mounts vanish with the process); as another user, a user namespace maps that user
to root inside (``--map-root-user``), as rootless containers do. Only that one user can be
mapped without setuid helpers, so tar could not give extracted files their archived owners
(it would fail, exit 2, on every ``kubectl cp`` of the user's own files):
``TAR_OPTIONS=--no-same-owner`` is set there, and files keep the invoking user.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

READ_CHUNK: Final = 256 * 1024
"""Bytes read from a program's stdout/stderr at a time."""
_LIB_DIRS: Final = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
"""Top-level host directories the programs may need, copied as symlinks or bound read-only."""
_PASSWD: Final = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
_GROUP: Final = "root:x:0:\nnogroup:x:65534:\n"
_SANDBOX_SCRIPT: Final = (
    'set -e; mount=$1; chroot=$2; root=$3; wd=$4; shift 4; while [ "$1" != -- ]; do '
    '"$mount" --bind -o ro "/$1" "$root/$1"; shift; done; shift; '
    'exec "$chroot" "$root" /usr/bin/env -C "$wd" -- "$@"'
)
"""Runs in the new mount namespace: bind the host's directories, then chroot and exec."""
_HOST_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Writer = Callable[[bytes], Awaitable[None]]
Reader = Callable[[], Awaitable[bytes]]


class PodFilesystems:
    """The root directories of every pod's containers, under ``base`` (a temp dir if None)."""

    def __init__(self, base: Path | None = None) -> None:
        self._given = base
        self._base: Path | None = None
        self._tools = [_host_program(name) for name in ("unshare", "mount", "chroot")]
        self._unshare = [self._tools[0], "--mount", "--propagation", "private"]
        self._extra_env: dict[str, str] = {}
        if os.geteuid() != 0:
            self._unshare += ["--user", "--map-root-user"]
            # Only root is mapped inside: keep tar from chown-ing to anyone else (it could
            # not), as if the runtime had mapped every owner.
            self._extra_env["TAR_OPTIONS"] = "--no-same-owner"
        self._binds = [d for d in ("usr", *_LIB_DIRS) if _host_dir_to_bind(d)]
        self._made: set[Path] = set()

    def root(self, pod: Mapping[str, Any], container: str) -> Path:
        """The root directory of ``container`` in ``pod`` (made, with its skeleton, once)."""
        meta = pod.get("metadata") or {}
        key = f"{meta.get('namespace', '')}\0{meta.get('name', '')}\0{meta.get('uid', '')}"
        digest = hashlib.sha256(f"{key}\0{container}".encode()).hexdigest()[:32]
        root = self.base() / digest
        if root not in self._made:
            _make_skeleton(root)
            self._made.add(root)
        return root

    def base(self) -> Path:
        """The directory of every root (the temp directory is made on first use)."""
        if self._base is None:
            if self._given is None:
                self._base = Path(tempfile.mkdtemp(prefix="standin-pods-"))
            else:
                self._base = self._given
                self._base.mkdir(parents=True, exist_ok=True)
        return self._base

    def close(self) -> None:
        """Remove the temp directory (not a directory given by the caller)."""
        if self._given is None and self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None
            self._made.clear()

    def command(self, root: Path, argv: Sequence[str], workdir: str = "/") -> list[str]:
        """The host command that runs ``argv`` inside ``root`` (see the module docstring)."""
        return [
            *self._unshare,
            "--",
            "/bin/sh",
            "-c",
            _SANDBOX_SCRIPT,
            "sandbox",
            *self._tools[1:],
            str(root),
            workdir or "/",
            *self._binds,
            "--",
            *argv,
        ]

    async def run(
        self,
        root: Path,
        argv: Sequence[str],
        env: Sequence[tuple[str, str]],
        *,
        stdin: Reader | None,
        stdout: Writer,
        stderr: Writer,
        workdir: str = "/",
    ) -> int:
        """Run ``argv`` in ``root``, streaming stdin/stdout/stderr; its exit code.

        Output is passed on as it comes (at most :data:`READ_CHUNK` at a time, waiting for
        each write, so a slow client slows the program down); stdin is copied in until its
        end (then closed) or until the program stops reading. Cancelling kills the program.
        """
        process = await asyncio.create_subprocess_exec(
            *self.command(root, argv, workdir),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**dict(env), **self._extra_env},
            start_new_session=True,
        )
        assert process.stdout is not None and process.stderr is not None
        pumps = [
            asyncio.ensure_future(_copy_out(process.stdout, stdout)),
            asyncio.ensure_future(_copy_out(process.stderr, stderr)),
        ]
        feeder = None
        if stdin is not None:
            assert process.stdin is not None
            feeder = asyncio.ensure_future(_copy_in(stdin, process.stdin))
        try:
            await asyncio.gather(*pumps)
            code = await process.wait()
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
            for task in (*pumps, feeder):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        return 128 - code if code < 0 else code


def _host_program(name: str) -> str:
    """The host's ``name`` (util-linux, coreutils), found whatever the container's PATH."""
    return shutil.which(name, path=_HOST_PATH) or name


def _host_dir_to_bind(name: str) -> bool:
    host = Path("/") / name
    return host.is_dir() and not host.is_symlink()


def _make_skeleton(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)  # noqa: S103 - a container's /
    (root / "usr").mkdir(exist_ok=True)
    for name in _LIB_DIRS:
        host, mine = Path("/") / name, root / name
        if mine.exists() or mine.is_symlink():
            continue
        if host.is_symlink():
            os.symlink(os.readlink(host), mine)
        elif host.is_dir():
            mine.mkdir()
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "passwd").write_text(_PASSWD)
    (root / "etc" / "group").write_text(_GROUP)
    (root / "tmp").mkdir(exist_ok=True)
    os.chmod(root / "tmp", 0o1777)  # noqa: S103 - /tmp, sticky
    (root / "root").mkdir(mode=0o700, exist_ok=True)


async def _copy_out(source: asyncio.StreamReader, write: Writer) -> None:
    while data := await source.read(READ_CHUNK):
        await write(data)


async def _copy_in(read: Reader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await read():
            sink.write(data)
            await sink.drain()
    except (BrokenPipeError, ConnectionResetError):
        return  # the program stopped reading (exited): the rest of stdin goes nowhere
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sink.close()
        await sink.wait_closed()
