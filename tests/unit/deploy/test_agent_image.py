"""scripts/agent_image.py's pure parts: dpkg's status, the package closure, the wheel."""

from __future__ import annotations

import zipfile
from pathlib import Path

from scripts import agent_image

STATUS = """\
Package: python3.11-minimal
Status: install ok installed
Pre-Depends: libc6 (>= 2.36)
Depends: libpython3.11-minimal (= 3.11.2-6), libexpat1 (>= 2.1~beta3), zlib1g (>= 1:1.2.0)

Package: libpython3.11-minimal
Status: install ok installed
Depends: libc6 (>= 2.14), libssl3 (>= 3.0.0)
Description: a description
 that goes on over
 lines: with colons

Package: libpython3.11-stdlib
Status: install ok installed
Depends: libpython3.11-minimal, media-types | mime-support, libtirpc3:any, debconf | debconf-2.0

Package: media-types
Status: install ok installed
Provides: mime-support-virtual

Package: libc6
Status: install ok installed
Depends: libgcc-s1

Package: libgcc-s1
Status: install ok installed
Depends: gcc-12-base (= 12.2.0-14), libc6 (>= 2.35)

Package: gcc-12-base
Status: install ok installed

Package: libssl3
Status: install ok installed
Depends: libc6 (>= 2.34)

Package: libexpat1
Status: install ok installed

Package: zlib1g
Status: install ok installed

Package: libtirpc3
Status: install ok installed
Depends: libtirpc-common

Package: libtirpc-common
Status: install ok installed

Package: debconf
Status: install ok installed
Pre-Depends: perl-base (>= 5.20.1-3~)
Provides: debconf-2.0

Package: perl-base
Status: install ok installed

Package: python3-minimal
Status: deinstall ok config-files
Depends: dpkg
"""


def packages(tmp_path: Path) -> dict[str, agent_image.Package]:
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(STATUS)
    return agent_image.installed_packages(tmp_path)


def test_names_drop_versions_and_architectures() -> None:
    assert agent_image._names("a (>= 1), b:any | c, d") == [["a"], ["b", "c"], ["d"]]
    assert agent_image._names("") == []


def test_status_keeps_installed_packages_and_their_dependencies(tmp_path: Path) -> None:
    found = packages(tmp_path)
    assert "python3-minimal" not in found  # removed, configuration left
    assert found["python3.11-minimal"].depends == [
        ["libc6"],
        ["libpython3.11-minimal"],
        ["libexpat1"],
        ["zlib1g"],
    ]
    assert found["debconf"].provides == ["debconf-2.0"]
    assert "that goes on over" in found["libpython3.11-minimal"].stanza


def test_closure_follows_dependencies_but_not_the_maintainer_scripts_tools(
    tmp_path: Path,
) -> None:
    names = agent_image.closure(
        packages(tmp_path), ["python3.11-minimal", "libpython3.11-stdlib", "not-installed"]
    )
    assert names == sorted(
        [
            "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
            "libc6", "libgcc-s1", "gcc-12-base", "libssl3", "libexpat1", "zlib1g",
            "media-types", "libtirpc3", "libtirpc-common",
        ]
    )  # fmt: skip
    assert "debconf" not in names and "perl-base" not in names


def test_documentation_is_left_out_but_the_licences() -> None:
    assert agent_image._wanted_path("/usr/share/doc/libc6/copyright")
    assert agent_image._wanted_path("/usr/share/doc/libc6")
    assert not agent_image._wanted_path("/usr/share/doc/libc6/changelog.Debian.gz")
    assert not agent_image._wanted_path("/usr/share/man/man1/python3.11.1.gz")
    assert agent_image._wanted_path("/usr/lib/python3.11/os.py")


def test_the_compiled_wheel_is_the_pure_one_plus_the_extensions(tmp_path: Path) -> None:
    pure = tmp_path / "herdgate-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(pure, "w") as zf:
        zf.writestr("tunnel/frames.py", "x = 1\n")
        zf.writestr("herdgate-0.1.0.dist-info/WHEEL", "Root-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("herdgate-0.1.0.dist-info/RECORD", "stale\n")
    native = tmp_path / "native"
    (native / "tunnel").mkdir(parents=True)
    (native / "tunnel/frames.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    (native / "herdgate_native__mypyc.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF2")
    (native / "sources.sha256").write_text("abc\n")
    target = tmp_path / "herdgate-0.1.0-cp311-cp311-linux_x86_64.whl"
    agent_image.add_native(pure, native, target)
    with zipfile.ZipFile(target) as zf:
        names = set(zf.namelist())
        wheel = zf.read("herdgate-0.1.0.dist-info/WHEEL").decode()
        record = zf.read("herdgate-0.1.0.dist-info/RECORD").decode().splitlines()
    assert "tunnel/frames.cpython-311-x86_64-linux-gnu.so" in names
    assert "herdgate_native__mypyc.cpython-311-x86_64-linux-gnu.so" in names
    assert "sources.sha256" not in names
    assert "Root-Is-Purelib: false" in wheel and "Tag: cp311-cp311-linux_x86_64" in wheel
    recorded = {line.split(",")[0] for line in record}
    assert recorded == names
    assert "stale" not in record
