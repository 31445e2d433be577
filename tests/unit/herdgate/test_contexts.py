"""The CLI's context file (herdgate/contexts.py): where it is, what it holds, who may read it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herdgate.contexts import (
    Context,
    ContextFileError,
    Contexts,
    default_path,
    dump,
    load,
    parse,
    save,
    too_open,
    without_token,
)

SECRET = "token-abcde:s3cr3t-value-never-shown"


def sample() -> Contexts:
    contexts = Contexts()
    contexts.put(
        Context(
            name="admin@gw:8443",
            server="https://gw:8443",
            ca_pem="-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n",
            token=SECRET,
            token_owned=True,
            provider="local",
            username="admin",
            user_id="u-abcde",
        )
    )
    contexts.put(Context(name="ci", server="https://other:443", insecure=True), make_current=False)
    return contexts


def test_path_from_the_environment_or_the_home_directory(tmp_path: Path) -> None:
    assert default_path({}, tmp_path) == tmp_path / ".herdgate" / "config.json"
    assert default_path({"HERDGATE_CONFIG": str(tmp_path / "c.json")}, tmp_path) == (
        tmp_path / "c.json"
    )


def test_round_trip_through_the_file_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "home" / ".herdgate" / "config.json"
    save(path, sample())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not too_open(path)
    loaded = load(path)
    assert loaded.current == "admin@gw:8443"
    assert loaded.contexts == sample().contexts
    doc = json.loads(path.read_text())
    assert doc["contexts"]["admin@gw:8443"]["token"] == SECRET
    assert "token" not in doc["contexts"]["ci"]
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temporary left


def test_saving_replaces_a_readable_file_with_a_private_one(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{}")
    path.chmod(0o644)
    assert too_open(path)
    save(path, sample())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_symlinked_file_keeps_its_link(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "herdgate.json"
    real.parent.mkdir()
    real.write_text("{}")
    link = tmp_path / "config.json"
    link.symlink_to(real)
    save(link, sample())
    assert link.is_symlink() and load(real).current == "admin@gw:8443"


def test_the_token_is_never_in_a_representation() -> None:
    context = sample().contexts["admin@gw:8443"]
    assert SECRET not in repr(context) and SECRET not in str(context)
    assert without_token(context).token == "" and not without_token(context).token_owned


def test_missing_file_is_no_contexts(tmp_path: Path) -> None:
    assert load(tmp_path / "absent.json").contexts == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "is not JSON"),
        ("[]", "must hold a JSON object"),
        ('{"contexts": []}', "contexts must be an object"),
        ('{"contexts": {"a": {}}}', "has no server"),
        ('{"contexts": {"a": {"server": "https://x", "insecure": "yes"}}}', "must be a bool"),
        ('{"contexts": {"a": {"server": "https://x"}}, "currentContext": 3}', "must be a string"),
    ],
)
def test_a_broken_file_gets_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(ContextFileError, match=message):
        parse(text, "config.json")


def test_an_unreadable_file_gets_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ContextFileError, match="not UTF-8"):
        load(path)
    if os.geteuid() != 0:  # root reads anything
        path.write_text("{}")
        path.chmod(0)
        with pytest.raises(ContextFileError, match="cannot read"):
            load(path)


def test_a_current_context_that_is_gone_is_no_current_context() -> None:
    assert parse('{"contexts": {}, "currentContext": "gone"}').current == ""


@given(st.text(), st.text(), st.booleans())
def test_any_context_survives_the_file(name: str, token: str, insecure: bool) -> None:
    contexts = Contexts()
    contexts.put(Context(name=name, server="https://gw", token=token, insecure=insecure))
    assert parse(dump(contexts)).contexts == contexts.contexts
