"""The store settings are checked at start, each problem naming its setting."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.errors import ConfigError
from config.loader import load
from config.schema import GatewaySettings
from config.store_check import check_endpoint


def settings(**store: Any) -> GatewaySettings:
    return load(GatewaySettings, None, {"store": {"backend": "etcd", **store}}, environ={})


def test_a_full_etcd_setup_loads() -> None:
    s = settings(
        etcd_endpoints=["https://10.0.0.1:2379", "https://10.0.0.2:2379"],
        etcd_tls={"ca_file": "/etc/etcd/ca.crt", "cert_file": "/c", "key_file": "/k"},
        etcd_username="herdgate",
        etcd_password_file="/etc/herdgate/etcd-password",
        etcd_prefix="/prod/",
        etcd_request_timeout="3s",
        etcd_dial_timeout="500ms",
        max_feed_lag="20s",
    ).store
    assert s.etcd_tls.ca_file == "/etc/etcd/ca.crt"
    assert (s.etcd_request_timeout_s, s.etcd_dial_timeout_s, s.max_feed_lag_s) == (3, 0.5, 20)


def test_the_password_comes_from_the_environment_and_is_not_shown() -> None:
    s = load(
        GatewaySettings,
        None,
        {"store": {"backend": "etcd", "etcd_endpoints": ["http://127.0.0.1:2379"],
                   "etcd_username": "herdgate"}},
        environ={"HERDGATE_STORE__ETCD_PASSWORD": "s3cret-pw"},
    )  # fmt: skip
    assert s.store.etcd_password == "s3cret-pw"
    assert "s3cret-pw" not in repr(s)


@pytest.mark.parametrize(
    ("store", "setting", "message"),
    [
        ({}, "store.etcd_endpoints", "required"),
        ({"etcd_endpoints": ["127.0.0.1:2379"]}, "store.etcd_endpoints", "scheme"),
        ({"etcd_endpoints": ["http://127.0.0.1"]}, "store.etcd_endpoints", "no port"),
        ({"etcd_endpoints": ["http://h:2379/v3"]}, "store.etcd_endpoints", "only scheme"),
        ({"etcd_endpoints": ["http://h:99999"]}, "store.etcd_endpoints", "not a URL"),
        ({"etcd_endpoints": ["http://a:2379", "https://b:2379"]}, "store.etcd_endpoints",
         "mixes"),
        ({"etcd_endpoints": ["http://a:2379"], "etcd_tls": {"ca_file": "/ca"}}, "store.etcd_tls",
         "https://"),
        ({"etcd_endpoints": ["http://a:2379"], "etcd_prefix": "herdgate/"}, "store.etcd_prefix",
         "must start with /"),
        ({"etcd_endpoints": ["http://a:2379"], "etcd_prefix": "/"}, "store.etcd_prefix",
         "name something"),
        ({"etcd_endpoints": ["http://a:2379"], "etcd_username": "u"}, "store.etcd_password",
         "required"),
        ({"etcd_endpoints": ["http://a:2379"], "etcd_password": "p"}, "store.etcd_username",
         "required"),
        ({"etcd_endpoints": ["http://a:2379"], "etcd_username": "u", "etcd_password": "p",
          "etcd_password_file": "/f"}, "store.etcd_password_file", "not both"),
        ({"etcd_endpoints": ["http://a:2379"], "etcd_request_timeout": "0s"},
         "store.etcd_request_timeout", "positive"),
        ({"etcd_endpoints": ["http://a:2379"], "max_feed_lag": 0}, "store.max_feed_lag",
         "positive"),
    ],
)  # fmt: skip
def test_bad_settings_name_their_setting(store: dict[str, Any], setting: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(**store)
    assert caught.value.path == setting
    assert message in str(caught.value)


def test_an_unknown_backend() -> None:
    with pytest.raises(ConfigError, match="unknown backend 'redis'"):
        load(GatewaySettings, None, {"store": {"backend": "redis"}}, environ={})


def test_sqlite_ignores_the_etcd_settings() -> None:
    s = load(GatewaySettings, None, {"store": {"etcd_username": "u"}}, environ={})
    assert s.store.backend == "sqlite"


@given(st.text(max_size=60))
def test_any_endpoint_text_is_accepted_or_explained(text: str) -> None:
    try:
        assert check_endpoint(text) in ("http", "https")
    except ValueError as exc:
        assert str(exc)
