"""The agent's container image, built from Debian packages without a registry.

``scripts/build-agent-image [NAME [TAG]]`` runs :func:`build`: it makes an OCI image
(an OCI layout directory, and the same as an ``oci-archive`` tar that ``podman load``
reads) whose root filesystem holds Python from Debian bookworm's packages, the
project's wheel compiled with mypyc and its dependencies' wheels, and nothing else: no
shell, no package manager. The Dockerfile at the top level makes the same image with
``docker build``; its rootfs stage runs :func:`assemble` on its own Debian image.

The steps, each cached under ``--cache`` (default ``~/.cache/herdgate/agent-image``):

1. Debian's packages: ``debootstrap --variant=minbase
   --include=python3,ca-certificates,netbase --make-tarball`` downloads them once into
   a tarball (the only step that needs the Debian mirror), and ``debootstrap
   --unpack-tarball`` installs them into a staging tree (maintainer scripts run there:
   the certificate bundle, byte-code).
2. :func:`assemble` copies from the staging tree only the files of the packages Python
   needs at run time (the closure of ``python3.11-minimal`` and ``libpython3.11-stdlib``
   over dpkg's Depends, without the shell, dpkg, debconf and perl that only maintainer
   scripts use), the certificate bundle, and writes a passwd with the numeric non-root
   user.
3. The wheel: the pure wheel (``HERDGATE_PURE=1 pip wheel``) with the compiled modules
   of ``.native/`` added (``python -m config.native build`` makes them when they do not
   match the sources): the same extension modules ``pip wheel .`` compiles, compiled
   once for the tests and the image. The dependencies' wheels are downloaded for
   CPython 3.11 on x86_64 and kept.
4. Three layers, from the least to the most often changed: Debian's Python, the
   dependencies, the project; an image config (numeric user, ``ENTRYPOINT
   ["herdgate", "agent"]``, OCI labels), a manifest and the layout's index.

Everything runs as root (debootstrap and chroot need it). One build at a time: a lock
on the cache; a build whose inputs match the last one's output returns at once, so the
tests can start a build in the background and a test can run the same command to wait
for it. Only the standard library: the Dockerfile runs this file with Debian's Python.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
INCLUDE = ("python3", "ca-certificates", "netbase")
"""What debootstrap installs beside the minimal base."""
ROOTS = ("base-files", "python3-minimal", "python3.11-minimal", "libpython3.11-stdlib", "netbase")
"""The packages the image holds, with their dependencies (``netbase``: /etc/services)."""
LEFT_OUT = frozenset(
    {
        # used only by maintainer scripts, which never run in the image
        "dpkg",
        "debconf",
        "perl-base",
        "bash",
        "dash",
        "coreutils",
        "debianutils",
        "sensible-utils",
        "install-info",
        "tar",
        "diffutils",
        "findutils",
        "sed",
        "grep",
        "gzip",
        "mawk",
        "init-system-helpers",
        "libc-bin",
        "readline-common",
    }
)
"""Dependencies not copied: the shell and the tools of dpkg's maintainer scripts."""
SKIP_PREFIXES = ("/usr/share/man/", "/usr/share/info/", "/usr/share/lintian/", "/usr/share/locale/")
UID = 10001
"""The image's user and group: numeric, not root, owns nothing in the image but its home;
the same number as the agents' manifest's ``runAsUser``."""
SITE = "/usr/local/lib/python3.11/dist-packages"
"""Where the wheels go: on Debian's Python's path, apart from Debian's own packages."""
PLATFORMS = ("linux_x86_64", "manylinux_2_36_x86_64", "manylinux2014_x86_64")
"""Wheel platforms Debian bookworm's glibc 2.36 on x86_64 runs."""
LAUNCHER = (
    b"#!/usr/bin/python3 -I\nimport sys\n\nfrom herdgate.cli import main\n\nsys.exit(main())\n"
)
"""/usr/local/bin/herdgate: started by the kernel (no shell); ``-I``: no PYTHON*
variables, no user site, no working directory on the path."""


def log(message: str) -> None:
    print(f"build-agent-image: {message}", file=sys.stderr, flush=True)


def run(*cmd: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    subprocess.run([str(c) for c in cmd], check=True, env=env, cwd=cwd)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def project_version(root: Path = ROOT) -> str:
    data = tomllib.loads((root / "pyproject.toml").read_text())
    return str(data["project"]["version"])


def default_name(root: Path = ROOT) -> str:
    return f"herdgate/agent:{project_version(root)}"


# -- Debian's packages -------------------------------------------------------------


def debs_key(suite: str, mirror: str) -> str:
    return hashlib.sha256(f"{suite}\0{mirror}\0{','.join(INCLUDE)}".encode()).hexdigest()[:16]


def staging_tree(cache: Path, suite: str, mirror: str) -> Path:
    """Debian's minimal base with Python, installed by debootstrap (cached)."""
    key = debs_key(suite, mirror)
    debs = cache / f"debs-{suite}-{key}.tgz"
    staging = cache / f"staging-{suite}-{key}"
    done = staging / ".herdgate-complete"
    if done.exists():
        return staging
    include = f"--include={','.join(INCLUDE)}"
    if not debs.exists():
        log(f"downloading Debian {suite}'s packages from {mirror}")
        work = Path(tempfile.mkdtemp(prefix="debs-", dir=cache))
        partial = debs.with_suffix(".partial")
        try:
            run(
                "debootstrap",
                "--variant=minbase",
                include,
                f"--make-tarball={partial}",
                suite,
                work,
                mirror,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        partial.rename(debs)
    log(f"installing Debian {suite} into {staging}")
    shutil.rmtree(staging, ignore_errors=True)
    run(
        "debootstrap",
        "--variant=minbase",
        include,
        f"--unpack-tarball={debs}",
        suite,
        staging,
        mirror,
    )
    done.write_text(f"{sha256_file(debs)}\n")
    return staging


@dataclass
class Package:
    name: str
    stanza: str
    depends: list[list[str]] = field(default_factory=list)
    provides: list[str] = field(default_factory=list)


def _names(field_value: str) -> list[list[str]]:
    """``a (>= 1), b:any | c`` -> [["a"], ["b", "c"]]."""
    groups: list[list[str]] = []
    for part in field_value.split(","):
        alternatives = [re.split(r"[\s(:]", alt.strip(), maxsplit=1)[0] for alt in part.split("|")]
        alternatives = [a for a in alternatives if a]
        if alternatives:
            groups.append(alternatives)
    return groups


def installed_packages(tree: Path) -> dict[str, Package]:
    """dpkg's status file of ``tree``: the installed packages."""
    text = (tree / "var/lib/dpkg/status").read_text()
    packages: dict[str, Package] = {}
    for stanza in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line[:1] in {" ", "\t"} and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "install ok installed" not in fields.get("Status", ""):
            continue
        package = Package(fields["Package"], stanza)
        for name in ("Pre-Depends", "Depends"):
            package.depends += _names(fields.get(name, ""))
        package.provides = [g[0] for g in _names(fields.get("Provides", ""))]
        packages[package.name] = package
    return packages


def closure(packages: dict[str, Package], roots: Iterable[str]) -> list[str]:
    """The installed packages ``roots`` need over Depends and Pre-Depends, without
    :data:`LEFT_OUT`; an alternative is met by the first installed choice."""
    providers: dict[str, str] = {}
    for package in packages.values():
        for virtual in package.provides:
            providers.setdefault(virtual, package.name)
    wanted: set[str] = set()
    todo = [r for r in roots if r in packages]
    while todo:
        name = todo.pop()
        if name in wanted or name in LEFT_OUT:
            continue
        wanted.add(name)
        for alternatives in packages[name].depends:
            for alt in alternatives:
                real = alt if alt in packages else providers.get(alt)
                if real is not None:
                    todo.append(real)
                    break
    return sorted(wanted)


def package_files(tree: Path, name: str) -> list[str]:
    info = tree / "var/lib/dpkg/info"
    for candidate in (info / f"{name}.list", info / f"{name}:amd64.list"):
        if candidate.exists():
            return [line for line in candidate.read_text().splitlines() if line]
    raise FileNotFoundError(f"no file list for {name} in {info}")


def _wanted_path(path: str) -> bool:
    if path.startswith(SKIP_PREFIXES):
        return False
    if path.startswith("/usr/share/doc/"):
        return path.endswith("/copyright") or path.count("/") == 4  # keep the licences
    return True


def _copy_entry(src_root: Path, dst_root: Path, path: str) -> None:
    src = src_root / path.lstrip("/")
    dst = dst_root / path.lstrip("/")
    if not os.path.lexists(src):
        return  # a file a maintainer script removed (or a diversion)
    st = src.lstat()
    if os.path.islink(src):
        if os.path.lexists(dst):
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        if not os.path.lexists(dst):  # an existing symlink (/lib -> usr/lib) stays
            dst.mkdir(parents=True)
            os.chmod(dst, st.st_mode & 0o7777)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)


ETC_FILES = {
    "etc/passwd": (
        "root:x:0:0:root:/root:/sbin/nologin\n"
        f"herdgate:x:{UID}:{UID}:herdgate:/home/herdgate:/sbin/nologin\n"
    ),
    "etc/group": f"root:x:0:\nherdgate:x:{UID}:\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\nservices: files\n",
    # mount points for the runtime's own (a read-only root cannot create them)
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
    "etc/resolv.conf": "",
    "etc/hostname": "",
}


def assemble(staging: Path, rootfs: Path) -> list[str]:
    """Copy Python's run-time packages from ``staging`` (a Debian tree) into an empty
    ``rootfs``, with the users, the mount points and ``/usr/local/bin/herdgate`` (the
    wheels go in after); returns the package names. The Dockerfile runs it on ``/``."""
    packages = installed_packages(staging)
    names = closure(packages, ROOTS)
    rootfs.mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib64"):  # merged /usr: the top-level links first
        src = staging / link
        if src.is_symlink():
            (rootfs / "usr" / link).mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(src), rootfs / link)
    for name in names:
        for path in package_files(staging, name):
            if _wanted_path(path):
                _copy_entry(staging, rootfs, path)
    # The CA bundle (made by ca-certificates' maintainer script) and OpenSSL's links to it.
    for path in (
        "/etc/ssl/certs/ca-certificates.crt",
        "/usr/lib/ssl/cert.pem",
        "/usr/lib/ssl/certs",
        "/etc/ssl/openssl.cnf",
        "/usr/lib/ssl/openssl.cnf",
    ):
        _copy_entry(staging, rootfs, path)
    # Byte-code of the standard library (made by python3's maintainer script).
    stdlib = "usr/lib/python3.11"
    for cache in sorted((staging / stdlib).rglob("__pycache__")):
        target = rootfs / cache.relative_to(staging)
        if target.parent.is_dir() and not target.exists():
            shutil.copytree(cache, target)
    for rel, text in ETC_FILES.items():
        (rootfs / rel).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / rel).write_text(text)
    for rel, mode in (
        ("tmp", 0o1777),
        ("var/tmp", 0o1777),
        ("root", 0o700),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("home", 0o755),
    ):
        (rootfs / rel).mkdir(parents=True, exist_ok=True)
        os.chmod(rootfs / rel, mode)
    home = rootfs / "home/herdgate"
    home.mkdir(exist_ok=True)
    os.chown(home, UID, UID)
    os.chmod(home, 0o700)
    (rootfs / "usr/local/bin").mkdir(parents=True, exist_ok=True)
    launcher = rootfs / "usr/local/bin/herdgate"
    launcher.write_bytes(LAUNCHER)
    launcher.chmod(0o755)
    # What is installed, for scanners (dpkg's status format), without dpkg itself.
    status = rootfs / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True, exist_ok=True)
    status.write_text("\n\n".join(packages[n].stanza for n in names) + "\n")
    return names


# -- the wheels --------------------------------------------------------------------


def source_digest(root: Path) -> str:
    """The tracked files of the project (what the wheel is made from)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    h = hashlib.sha256()
    for rel in sorted(p.decode() for p in listed if p):
        path = root / rel
        if path.is_file() and not rel.startswith(("tests/", "docs/", "bench/", "scripts/")):
            h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def native_modules(root: Path, python: str) -> Path:
    """``root/.native`` built from the sources as they are (built now if not)."""
    sys.path.insert(0, str(root))
    try:
        from config import native
    finally:
        sys.path.remove(str(root))
    build = root / native.BUILD_DIR
    stamp = build / native.STAMP
    if not stamp.exists() or stamp.read_text().strip() != native.digest(root):
        log("compiling the request path with mypyc (python -m config.native build)")
        run(python, "-m", "config.native", "build", cwd=root)
    return build


KEEP_WHEELS = 4
"""Wheels of earlier sources kept in the cache (switching branches back and forth)."""


def compiled_wheel(root: Path, cache: Path, python: str) -> Path:
    """The project's wheel with its mypyc modules (cached by the sources' digest)."""
    digest = source_digest(root)[:16]
    out = cache / "wheels" / digest
    done = list(out.glob("herdgate-*-cp311-cp311-linux_x86_64.whl"))
    if done:
        return done[0]
    native_dir = native_modules(root, python)
    kept = sorted((cache / "wheels").glob("*"), key=lambda p: p.stat().st_mtime)
    for old in kept[:-KEEP_WHEELS]:  # wheels of older sources
        shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log("building the wheel")
    env = dict(os.environ, HERDGATE_PURE="1")
    run(python, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, root, env=env)
    pure = next(out.glob("herdgate-*-py3-none-any.whl"))
    target = out / pure.name.replace("-py3-none-any.whl", "-cp311-cp311-linux_x86_64.whl")
    add_native(pure, native_dir, target)
    pure.unlink()
    return target


def _record_line(name: str, data: bytes) -> str:
    import base64

    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def add_native(pure: Path, native_dir: Path, target: Path) -> None:
    """``pure`` plus the extension modules of ``native_dir``: a platform wheel."""
    extensions = sorted(p for p in native_dir.rglob("*.so") if p.is_file())
    if not extensions:
        raise SystemExit(f"no compiled modules in {native_dir}")
    with zipfile.ZipFile(pure) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        wheel_name = record_name.replace("RECORD", "WHEEL")
        lines: list[str] = []
        for info in src.infolist():
            if info.filename == record_name:
                continue
            data = src.read(info)
            if info.filename == wheel_name:
                text = data.decode()
                text = text.replace("Root-Is-Purelib: true", "Root-Is-Purelib: false")
                text = text.replace("Tag: py3-none-any", "Tag: cp311-cp311-linux_x86_64")
                data = text.encode()
            dst.writestr(info, data)
            lines.append(_record_line(info.filename, data))
        for ext in extensions:
            name = ext.relative_to(native_dir).as_posix()
            data = ext.read_bytes()
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o755 << 16
            dst.writestr(info, data, zipfile.ZIP_DEFLATED)
            lines.append(_record_line(name, data))
        lines.append(f"{record_name},,")
        dst.writestr(record_name, "\n".join(lines) + "\n")


def pip_target_args() -> list[str]:
    args = [
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--abi",
        "cp311",
    ]
    for platform in PLATFORMS:
        args += ["--platform", platform]
    return args


def dependency_wheels(wheel: Path, cache: Path, python: str) -> Path:
    """The dependencies' wheels for CPython 3.11 on x86_64 (kept while they are the
    same requirements)."""
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA")))
    requires = sorted(
        line.split(":", 1)[1].strip()
        for line in metadata.decode().splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    )
    key = hashlib.sha256("\n".join(requires).encode()).hexdigest()[:16]
    house = cache / f"wheelhouse-{key}"
    if (house / ".complete").exists():
        return house
    log("downloading the dependencies' wheels")
    shutil.rmtree(house, ignore_errors=True)
    house.mkdir(parents=True)
    run(python, "-m", "pip", "download", "-q", "-d", house, *pip_target_args(), *requires)
    (house / ".complete").write_text("\n".join(requires) + "\n")
    return house


def install_wheels(
    python: str, target: Path, wheels: list[Path], find_links: Path | None, deps: bool
) -> None:
    args = [
        python,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-compile",
        "--no-index",
        "--target",
        str(target),
        *pip_target_args(),
    ]
    if find_links is not None:
        args += ["--find-links", str(find_links)]
    if not deps:
        args.append("--no-deps")
    run(*args, *[str(w) for w in wheels])
    shutil.rmtree(target / "bin", ignore_errors=True)  # pip's launchers name this Python


# -- the OCI image -----------------------------------------------------------------


def _normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Owned by root (but for the user's home); modification times kept: the standard
    library's byte-code is checked against them."""
    if info.uid != UID:
        info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def layer_tar(tree: Path, members: Iterable[str], out: Path) -> tuple[str, str, int]:
    """A gzipped layer of ``tree``'s ``members`` (and what is under them):
    (diff_id, digest, size)."""
    paths: list[Path] = []
    for member in members:
        top = tree / member
        if not os.path.lexists(top):
            continue
        paths.append(top)
        if top.is_dir() and not top.is_symlink():
            for dirpath, dirnames, filenames in os.walk(top):  # symlinks not followed
                paths += [Path(dirpath, n) for n in dirnames + filenames]
    seen: set[str] = set()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        # parents first, each once (a layer lists the directories it writes into)
        for path in sorted(set(paths), key=lambda p: p.relative_to(tree).as_posix()):
            rel = path.relative_to(tree).as_posix()
            parts = rel.split("/")
            for i in range(1, len(parts) + 1):
                name = "/".join(parts[:i])
                if name in seen:
                    continue
                seen.add(name)
                info = tar.gettarinfo(str(tree / name), arcname=name)
                _normalize(info)
                if info.isreg():
                    with (tree / name).open("rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    data = raw.getvalue()
    diff_id = hashlib.sha256(data).hexdigest()
    packed = gzip.compress(data, compresslevel=6, mtime=0)
    digest = hashlib.sha256(packed).hexdigest()
    out.mkdir(parents=True, exist_ok=True)
    (out / digest).write_bytes(packed)
    return diff_id, digest, len(packed)


def _blob(blobs: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return digest, len(data)


def _git(root: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    return result.stdout.strip()


def write_layout(
    tree: Path,
    layers: list[tuple[str, list[str]]],
    layout: Path,
    name: str,
    labels: dict[str, str],
    epoch: int,
) -> str:
    """The OCI layout of ``tree`` cut into ``layers`` (comment, top-level members);
    returns the manifest's digest. ``epoch``: the image's creation time."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    descriptors: list[dict[str, object]] = []
    diff_ids: list[str] = []
    history: list[dict[str, object]] = []
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    for comment, members in layers:
        diff_id, digest, size = layer_tar(tree, members, blobs)
        descriptors.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": f"sha256:{digest}",
                "size": size,
            }
        )
        diff_ids.append(f"sha256:{diff_id}")
        history.append({"created": created, "created_by": comment})
    config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": f"{UID}:{UID}",
            "Entrypoint": ["herdgate", "agent"],
            "Env": [
                "PATH=/usr/local/bin:/usr/bin",
                "HOME=/home/herdgate",
                "PYTHONUNBUFFERED=1",
                "PYTHONDONTWRITEBYTECODE=1",
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
            ],
            "WorkingDir": "/",
            "Labels": labels,
            "StopSignal": "SIGTERM",
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    config_digest, config_size = _blob(blobs, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": f"sha256:{config_digest}",
            "size": config_size,
        },
        "layers": descriptors,
        "annotations": labels,
    }
    manifest_digest, manifest_size = _blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": f"sha256:{manifest_digest}",
                "size": manifest_size,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    # the reference podman/skopeo use (oci:DIR:TAG) and the full name
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                    "io.containerd.image.name": name,
                },
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return f"sha256:{manifest_digest}"


def archive(layout: Path, out: Path) -> None:
    """The layout as an ``oci-archive`` tar (``podman load -i``)."""
    partial = out.with_suffix(".partial")
    with tarfile.open(partial, "w") as tar:
        for path in sorted(layout.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(layout).as_posix())
            _normalize(info)
            if info.isreg():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    partial.rename(out)


@contextlib.contextmanager
def locked(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits for a build already running
        yield


@dataclass
class Result:
    layout: Path
    archive: Path
    name: str
    manifest: str
    seconds: float
    reused: bool


def build(
    name: str,
    out: Path,
    cache: Path,
    root: Path = ROOT,
    suite: str = SUITE,
    mirror: str = MIRROR,
    python: str = sys.executable,
) -> Result:
    """Build the image ``name`` (``repository:tag``) into ``out`` (``out/oci``: the OCI
    layout, ``out/image.tar``: the same as an oci-archive)."""
    started = time.monotonic()
    with locked(cache):
        wheel = compiled_wheel(root, cache, python)
        inputs = hashlib.sha256(
            f"{name}\0{suite}\0{mirror}\0{sha256_file(wheel)}\0".encode()
            + Path(__file__).read_bytes()
        ).hexdigest()
        stamp = out / "inputs.sha256"
        if stamp.exists() and stamp.read_text().strip() == inputs:
            manifest = json.loads((out / "oci" / "index.json").read_text())
            log(f"{name} is up to date in {out}")
            return Result(
                out / "oci",
                out / "image.tar",
                name,
                manifest["manifests"][0]["digest"],
                time.monotonic() - started,
                True,
            )
        staging = staging_tree(cache, suite, mirror)
        house = dependency_wheels(wheel, cache, python)
        out.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="image-", dir=out))
        try:
            rootfs = work / "rootfs"
            log("assembling the root filesystem")
            names = assemble(staging, rootfs)
            site = rootfs / SITE.lstrip("/")
            deps_dir = work / "deps"
            install_wheels(python, deps_dir, sorted(house.glob("*.whl")), house, deps=True)
            install_wheels(python, site, [wheel], None, deps=False)
            # dependencies beside the project in the same directory, in their own layer
            deps_names = sorted(p.name for p in deps_dir.iterdir())
            for entry in deps_names:
                os.rename(deps_dir / entry, site / entry)
            # byte-code (the root is read-only at run time): CPython 3.11's, as the image's
            run(
                python,
                "-m",
                "compileall",
                "-q",
                "-j0",
                "--invalidation-mode",
                "unchecked-hash",
                "-s",
                rootfs,
                "-p",
                "/",
                site,
            )
            # the image's own Python imports what the agent needs, before it is packed
            run(
                "chroot",
                "--userspec",
                f"{UID}:{UID}",
                rootfs,
                "/usr/bin/python3",
                "-I",
                "-c",
                "import herdgate.cli, tunnel.agent, config.native as n; print(n.describe())",
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            )
            project = sorted(p.name for p in site.iterdir() if p.name not in deps_names)
            epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
            commit = _git(root, "rev-parse", "HEAD")
            version = name.rsplit(":", 1)[1]
            labels = {
                "org.opencontainers.image.title": "herdgate-agent",
                "org.opencontainers.image.description": "herdgate's cluster agent: holds the "
                "reverse tunnel from a Kubernetes cluster to the herdgate gateway",
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.revision": commit,
                "org.opencontainers.image.licenses": "Apache-2.0",
                "org.opencontainers.image.ref.name": name,
                "org.opencontainers.image.created": time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)
                ),
            }
            top = sorted(p.name for p in rootfs.iterdir())
            layout = work / "oci"
            digest = write_layout(
                rootfs,
                [
                    (
                        f"debian {suite}: python3.11 ({len(names)} packages)",
                        [t for t in top if t != "usr"]
                        + [
                            f"usr/{p.name}"
                            for p in sorted((rootfs / "usr").iterdir())
                            if p.name != "local"
                        ]
                        + [
                            f"usr/local/{p.name}"
                            for p in sorted((rootfs / "usr/local").iterdir())
                            if p.name not in {"lib", "bin"}
                        ],
                    ),
                    ("dependencies' wheels", [f"{SITE.lstrip('/')}/{n}" for n in deps_names]),
                    (
                        f"herdgate {version} (mypyc)",
                        [f"{SITE.lstrip('/')}/{n}" for n in project] + ["usr/local/bin/herdgate"],
                    ),
                ],
                layout,
                name,
                labels,
                epoch,
            )
            archive(layout, work / "image.tar")
            shutil.rmtree(out / "oci", ignore_errors=True)
            os.rename(layout, out / "oci")
            os.replace(work / "image.tar", out / "image.tar")
            (out / "packages.txt").write_text("\n".join(names) + "\n")
            stamp.write_text(inputs + "\n")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - started
    log(f"{name} built in {seconds:.0f} s: {out / 'oci'} ({digest})")
    return Result(out / "oci", out / "image.tar", name, digest, seconds, False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build-agent-image", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the image (an OCI layout and an oci-archive)")
    b.add_argument("name", nargs="?", default="herdgate/agent", help="repository")
    b.add_argument("tag", nargs="?", default=None, help="tag (default: the project's version)")
    b.add_argument("--out", type=Path, default=ROOT / "build" / "agent-image")
    b.add_argument("--cache", type=Path, default=Path.home() / ".cache/herdgate/agent-image")
    b.add_argument("--suite", default=SUITE)
    b.add_argument("--mirror", default=MIRROR)
    b.add_argument("--python", default=sys.executable, help="Python with pip (and mypy)")
    a = sub.add_parser("assemble", help="copy Python's run-time packages from a Debian tree")
    a.add_argument("staging", type=Path)
    a.add_argument("rootfs", type=Path)
    args = parser.parse_args(argv)
    if args.command == "assemble":
        names = assemble(args.staging, args.rootfs)
        log(f"{len(names)} packages: {' '.join(names)}")
        return 0
    name = f"{args.name}:{args.tag or project_version()}"
    result = build(
        name, args.out, args.cache, suite=args.suite, mirror=args.mirror, python=args.python
    )
    print(
        json.dumps(
            {
                "name": result.name,
                "layout": str(result.layout),
                "archive": str(result.archive),
                "manifest": result.manifest,
                "seconds": round(result.seconds, 1),
                "reused": result.reused,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
