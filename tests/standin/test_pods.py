"""The pods' own filesystems (standin.pods): real ``tar`` and ``test`` inside each root.

Run through ``streaming.run_command``, the code path of every exec, with the commands
``kubectl cp`` sends; and the ways a path could leave a pod's root (``..``, absolute and
relative symlinks made by an earlier upload or inside the same archive, ``-C``, ``-h``),
each checked on the host's disk.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from standin.pods import PodFilesystems
from standin.streaming import Inbound, ProcessIO, run_command

REPO_ROOT = Path(__file__).resolve().parents[2]


def _pod(name: str = "p", uid: str = "uid-1") -> dict[str, Any]:
    return {
        "metadata": {"namespace": "default", "name": name, "uid": uid},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    }


POD = _pod()


@pytest.fixture
def files(tmp_path: Path) -> Iterator[PodFilesystems]:
    found = PodFilesystems(tmp_path / "pods")
    yield found
    found.close()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host directory beside the pods' roots that no pod may read or write."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret").write_text("host secret\n")
    return path


async def run(
    files: PodFilesystems,
    argv: list[str],
    stdin: bytes | None = None,
    pod: dict[str, Any] = POD,
) -> tuple[int, bytes, bytes]:
    out, err = bytearray(), bytearray()
    inbound = None
    if stdin is not None:
        inbound = Inbound()
        inbound.feed(stdin)
        inbound.feed_eof()

    async def write_out(data: bytes) -> None:
        out.extend(data)

    async def write_err(data: bytes) -> None:
        err.extend(data)

    process = ProcessIO(stdin=inbound, stdout=write_out, stderr=write_err, tty=False)
    code = await run_command(argv, process, pod, "main", files)
    return code, bytes(out), bytes(err)


def archive(*members: tuple[str, bytes | str]) -> bytes:
    """A tar stream (as kubectl's makeTar writes): bytes are a file, a str a symlink."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        out = {}
        for member in tar:
            extracted = tar.extractfile(member) if member.isfile() else None
            out[member.name] = extracted.read() if extracted is not None else b""
        return out


def host_files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


async def test_kubectl_cp_commands_round_trip(files: PodFilesystems) -> None:
    payload = os.urandom(300_000)
    # kubectl cp local pod:/tmp → test -d /tmp, then tar -xmf - -C /tmp
    assert (await run(files, ["test", "-d", "/tmp"]))[0] == 0
    code, out, err = await run(
        files, ["tar", "-xmf", "-", "-C", "/tmp"], stdin=archive(("data.bin", payload))
    )
    assert (code, out, err) == (0, b"", b"")
    root = files.root(POD, "main")
    assert (root / "tmp" / "data.bin").read_bytes() == payload
    # kubectl cp pod:/tmp/data.bin local → tar cf - /tmp/data.bin
    code, out, err = await run(files, ["tar", "cf", "-", "/tmp/data.bin"])
    assert code == 0
    assert err == b"tar: Removing leading `/' from member names\n"
    assert members(out) == {"tmp/data.bin": payload}
    # the --no-preserve form, and a path under /bin works as on PATH
    code, _, _ = await run(
        files,
        ["/bin/tar", "--no-same-permissions", "--no-same-owner", "-xmf", "-", "-C", "/root"],
        stdin=archive(("again.bin", b"x")),
    )
    assert code == 0 and (root / "root" / "again.bin").read_bytes() == b"x"


async def test_exit_status_and_stderr_are_tars(files: PodFilesystems) -> None:
    code, _, err = await run(files, ["tar", "cf", "-", "/nothere"])
    assert code == 2
    assert b"tar: /nothere: Cannot stat: No such file or directory\n" in err
    assert (await run(files, ["test", "-d", "/nothere"]))[0] == 1
    assert (await run(files, ["sh", "-c", "test -d /tmp && echo dir"]))[1] == b"dir\n"
    code, _, err = await run(files, ["tar", "-xmf", "-", "-C", "/tmp"], stdin=b"not a tar" * 100)
    assert code == 2 and b"This does not look like a tar archive" in err


async def test_dot_dot_stays_in_the_root(files: PodFilesystems, tmp_path: Path) -> None:
    root = files.root(POD, "main")
    before = host_files(tmp_path)
    code, _, err = await run(
        files, ["tar", "-xmf", "-", "-C", "/../../../.."], stdin=archive(("top.txt", b"t"))
    )
    assert code == 0, err
    code, _, err = await run(
        files,
        ["tar", "-xmf", "-", "-C", "/tmp"],
        stdin=archive(("../../../../../../up.txt", b"u")),
    )
    assert code == 2 and b"Member name contains '..'" in err  # GNU tar's own refusal
    assert (root / "top.txt").read_bytes() == b"t"
    new = set(host_files(tmp_path)) - set(before)
    assert new == {str((root / "top.txt").relative_to(tmp_path))}
    # the pod's /etc/passwd, not the host's
    code, out, _ = await run(files, ["tar", "cf", "-", "/../../../etc/passwd"])
    assert code == 0
    assert members(out)["etc/passwd"] == (root / "etc" / "passwd").read_bytes()


@pytest.mark.parametrize("target", ["absolute", "relative"])
async def test_symlinks_an_upload_left_stay_in_the_root(
    files: PodFilesystems, outside: Path, target: str
) -> None:
    root = files.root(POD, "main")
    link = str(outside) if target == "absolute" else "../" * 12 + str(outside).lstrip("/")
    # an earlier upload left /tmp/out pointing at a host directory (as seen from the host)
    os.symlink(link, root / "tmp" / "out")
    code, _, _ = await run(
        files, ["tar", "-xmf", "-", "-C", "/tmp/out"], stdin=archive(("evil", b"e"))
    )
    assert code == 2  # inside the pod, that directory does not exist
    code, _, _ = await run(
        files, ["tar", "-xmf", "-", "-C", "/tmp"], stdin=archive(("out/evil", b"e"))
    )
    assert code == 2
    for argv in (
        ["tar", "cf", "-", "/tmp/out/secret"],
        ["tar", "chf", "-", "/tmp/out/secret"],
        ["tar", "chf", "-", "/tmp/out"],
    ):
        code, out, _ = await run(files, argv)
        assert code == 2 and b"host secret" not in out, argv
    assert (await run(files, ["test", "-d", "/tmp/out"]))[0] == 1
    assert (await run(files, ["test", "-d", str(outside)]))[0] == 1
    assert host_files(outside) == ["secret"]
    assert (outside / "secret").read_text() == "host secret\n"


async def test_symlinks_inside_one_archive_stay_in_the_root(
    files: PodFilesystems, outside: Path
) -> None:
    root = files.root(POD, "main")
    stream = archive(("link", str(outside)), ("link/evil", b"e"), ("up", "../../.."))
    await run(files, ["tar", "-xmf", "-", "-C", "/tmp"], stdin=stream)
    code, _, _ = await run(
        files, ["tar", "-xmf", "-", "-C", "/tmp/up"], stdin=archive(("at-top", b"t"))
    )
    assert code == 0  # /tmp/up is "/" inside the pod
    assert (root / "at-top").read_bytes() == b"t"
    assert host_files(outside) == ["secret"]


async def test_each_container_has_its_own_root(files: PodFilesystems) -> None:
    await run(files, ["tar", "-xmf", "-", "-C", "/tmp"], stdin=archive(("mine", b"m")))
    assert (await run(files, ["test", "-e", "/tmp/mine"]))[0] == 0
    other_pod = _pod("q", "uid-2")
    recreated = _pod("p", "uid-3")  # same name, a new pod
    for pod in (other_pod, recreated):
        assert (await run(files, ["test", "-e", "/tmp/mine"], pod=pod))[0] == 1
    assert len({files.root(p, "main") for p in (POD, other_pod, recreated)}) == 3
    assert files.root(POD, "main") != files.root(POD, "sidecar")


async def test_cancelled_exec_kills_the_program(files: PodFilesystems) -> None:
    stdin = Inbound()  # never ends: tar waits for more of the archive
    stdin.feed(archive(("a", b"a" * 10_000))[:4096])

    async def discard(_: bytes) -> None:
        return None

    process = ProcessIO(stdin=stdin, stdout=discard, stderr=discard, tty=False)
    task = asyncio.ensure_future(
        run_command(["tar", "-xmf", "-", "-C", "/tmp"], process, POD, "main", files)
    )
    root = str(files.root(POD, "main"))

    def running() -> list[str]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "root") == root:  # chroot-ed into the pod's root
                    found.append(entry.name)
            except OSError:
                continue
        return found

    for _ in range(200):  # until the sandbox has started (bounded: 10 s)
        if running():
            break
        await asyncio.sleep(0.05)
    assert running()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert running() == []


def test_temp_directory_is_removed() -> None:
    files = PodFilesystems()
    base = files.base()
    root = files.root(POD, "main")
    assert root.parent == base and (root / "tmp").is_dir()
    files.close()
    assert not base.exists()
    files.close()


_AS_USER = """
import asyncio, io, json, sys, tarfile
from pathlib import Path
from standin.pods import PodFilesystems
from standin.streaming import Inbound, ProcessIO, run_command

async def main():
    files = PodFilesystems(Path(sys.argv[1]))
    pod = {"metadata": {"namespace": "d", "name": "p", "uid": "u"}}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("owned.txt")
        info.size, info.uid, info.gid = 3, 1000, 1000  # kubectl's tar: the local owner
        tar.addfile(info, io.BytesIO(b"abc"))
    results = []
    for argv, data in ((["tar", "-xmf", "-", "-C", "/tmp"], buffer.getvalue()),
                       (["tar", "cf", "-", "/tmp/owned.txt"], None)):
        out = bytearray()
        async def write(chunk):
            out.extend(chunk)
        stdin = None
        if data is not None:
            stdin = Inbound()
            stdin.feed(data)
            stdin.feed_eof()
        io_ = ProcessIO(stdin=stdin, stdout=write, stderr=write, tty=False)
        code = await run_command(argv, io_, pod, "main", files)
        results.append([code, len(out)])
    print(json.dumps(results))

asyncio.run(main())
"""


def test_works_as_another_user_than_root(tmp_path: Path) -> None:
    """Not root: a user namespace maps the user to root inside; an archive's owners
    (kubectl sends the local file's) do not make tar fail."""
    shared = Path(tempfile.mkdtemp(prefix="standin-pods-user-"))
    try:
        os.chmod(shared, 0o777)  # noqa: S103 - the other user's pods directory, removed below
        # The other user may not read this checkout or its virtual environment (a clone in
        # a 0700 folder): it gets a copy of what the child imports, and the base interpreter.
        python = _readable_copy(shared / "lib", "standin.pods", "standin.streaming")
        command = [python, "-c", _AS_USER, str(shared / "pods")]
        if os.geteuid() == 0:  # as the tests usually run: become nobody for this one
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(shared / "lib")}
        done = subprocess.run(
            command, cwd=shared, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        (extract_code, extract_out), (create_code, create_out) = json.loads(done.stdout)
        assert (extract_code, extract_out) == (0, 0)
        assert create_code == 0 and create_out >= 1024
    finally:
        shutil.rmtree(shared, ignore_errors=True)


_IMPORTED = """
import importlib, json, sys, sysconfig
before = set(sys.modules)
for name in sys.argv[1:]:
    importlib.import_module(name)
stdlib = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])
paths = set()
for name in set(sys.modules) - before:
    top = sys.modules.get(name.split(".")[0])
    file = getattr(top, "__file__", None)
    if file and ("site-packages" in file or not file.startswith(stdlib)):
        paths.add(file)
print(json.dumps({"python": sys._base_executable, "paths": sorted(paths)}))
"""


def _readable_copy(into: Path, *modules: str) -> str:
    """Copy the packages that importing ``modules`` loads from outside the standard
    library (this checkout's and the virtual environment's) into ``into``, readable by
    all; the base interpreter to run them with."""
    found = subprocess.run(
        [sys.executable, "-c", _IMPORTED, *modules],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    answer = json.loads(found.stdout)
    into.mkdir()
    for file in map(Path, answer["paths"]):
        if file.name == "__init__.py":
            shutil.copytree(file.parent, into / file.parent.name)
        else:
            shutil.copy2(file, into / file.name)
    for path in [into, *into.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return str(answer["python"])
