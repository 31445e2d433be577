"""Merging a kubeconfig into kubectl's file (herdgate/kubeconfigs.py)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from herdgate.kubeconfigs import (
    KubeconfigError,
    default_target,
    merge_into_file,
    merge_kubeconfigs,
    parse,
)


def config(*names: str, current: str = "", server: str = "https://gw") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": n, "cluster": {"server": f"{server}/{n}"}} for n in names],
        "users": [{"name": n, "user": {"token": f"t-{n}"}} for n in names],
        "contexts": [{"name": n, "context": {"cluster": n, "user": n}} for n in names],
        "current-context": current or (names[0] if names else ""),
    }


def test_new_entries_are_added_and_same_names_replaced_in_place() -> None:
    existing = config("kind", "dev", "minikube", current="kind")
    existing["preferences"] = {"colors": True}
    incoming = config("dev", "prod", server="https://new")
    merged = merge_kubeconfigs(existing, incoming)
    assert [c["name"] for c in merged["contexts"]] == ["kind", "dev", "minikube", "prod"]
    servers = {c["name"]: c["cluster"]["server"] for c in merged["clusters"]}
    assert servers == {
        "kind": "https://gw/kind",
        "dev": "https://new/dev",
        "minikube": "https://gw/minikube",
        "prod": "https://new/prod",
    }
    assert merged["current-context"] == "dev"
    assert merged["preferences"] == {"colors": True}
    assert existing == config("kind", "dev", "minikube", current="kind") | {
        "preferences": {"colors": True}
    }  # not changed


def test_merging_into_nothing_gives_the_new_config() -> None:
    assert merge_kubeconfigs({}, config("dev")) == config("dev")


@given(
    st.lists(st.sampled_from("abcdef"), unique=True),
    st.lists(st.sampled_from("abcdef"), unique=True),
)
def test_every_name_once_and_the_new_entries_win(old: list[str], new: list[str]) -> None:
    merged = merge_kubeconfigs(config(*old), config(*new, server="https://new"))
    for section in ("clusters", "users", "contexts"):
        names = [e["name"] for e in merged[section]]
        assert sorted(names) == sorted(set(old) | set(new))
    for cluster in merged["clusters"]:
        expected = "https://new" if cluster["name"] in new else "https://gw"
        assert cluster["cluster"]["server"].startswith(expected)


def test_the_file_is_written_private_and_whole(tmp_path: Path) -> None:
    path = tmp_path / ".kube" / "config"
    merge_into_file(path, yaml.safe_dump(config("dev")))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    merge_into_file(path, yaml.safe_dump(config("prod")))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = yaml.safe_load(path.read_text())
    assert [c["name"] for c in doc["contexts"]] == ["dev", "prod"]
    assert doc["current-context"] == "prod"
    assert sorted(p.name for p in path.parent.iterdir()) == ["config"]


def test_a_file_that_is_no_kubeconfig_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("- just\n- a list\n")
    with pytest.raises(KubeconfigError, match="not a kubeconfig"):
        merge_into_file(path, yaml.safe_dump(config("dev")))
    assert path.read_text() == "- just\n- a list\n"
    with pytest.raises(KubeconfigError, match="named entries"):
        parse("contexts: [1, 2]\n", "x")
    with pytest.raises(KubeconfigError, match="not YAML"):
        parse("a: [\n", "x")


def test_the_target_is_kubectls_file(tmp_path: Path) -> None:
    assert default_target({}, tmp_path) == tmp_path / ".kube" / "config"
    env = {"KUBECONFIG": f":{tmp_path}/a:{tmp_path}/b"}
    assert default_target(env, tmp_path) == tmp_path / "a"
