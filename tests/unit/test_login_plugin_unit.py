"""`herdgate login` pieces: cache, expiry margin, ExecCredential shape."""

from __future__ import annotations

import stat
from pathlib import Path

from herdgate.login import cache_path, exec_credential, read_cache, write_cache


def test_cache_round_trip_and_mode(tmp_path: Path) -> None:
    path = cache_path(tmp_path / "cache", "https://gw", "local", "c-1")
    write_cache(path, "token-a:b", "2030-01-01T00:00:00Z")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read_cache(path, now=0)["token"] == "token-a:b"


def test_expired_or_nearly_expired_tokens_are_not_used(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    write_cache(path, "t", "2030-01-01T00:00:00Z")
    expiry = 1893456000.0  # 2030-01-01T00:00:00Z
    assert read_cache(path, now=expiry - 120) is not None
    assert read_cache(path, now=expiry - 30) is None
    path.write_text("not json")
    assert read_cache(path, now=0) is None


def test_cache_keys_differ_per_server_provider_and_cluster(tmp_path: Path) -> None:
    keys = {
        cache_path(tmp_path, s, p, c)
        for s in ("https://a", "https://b")
        for p in ("local", "ldap")
        for c in ("", "c-1")
    }
    assert len(keys) == 8


def test_exec_credential_shape() -> None:
    cred = exec_credential("tok", "2030-01-01T00:00:00Z", "client.authentication.k8s.io/v1")
    assert cred == {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": "tok", "expirationTimestamp": "2030-01-01T00:00:00Z"},
    }
    assert "expirationTimestamp" not in exec_credential("t", None, "v")["status"]
