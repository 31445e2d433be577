"""User names end to end (a gateway process, its SQLite store): every spelling that folds
to a taken name is refused, any spelling logs in, and the login limiter counts them as
one user."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.env import ADMIN_PASSWORD, Api, ApiError, Gateway, free_port

pytestmark = pytest.mark.integration

FULLWIDTH_ADMIN = "\uff41\uff44\uff4d\uff49\uff4e"
PASSWORD = "a-long-user-password"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("usernames")
    gw = Gateway(tmp / "gateway", free_port(), tmp / "gateway.log").start()
    try:
        yield gw
    finally:
        gw.stop()


def _users(gateway: Gateway) -> list[str]:
    with sqlite3.connect(Path(gateway.state_dir) / "herdgate.db") as db:
        rows = db.execute("SELECT value FROM objects WHERE kind='users'").fetchall()
    return sorted(json.loads(v)["username"] for (v,) in rows)


@pytest.mark.parametrize(
    "spelling", ["ADMIN", "Admin", FULLWIDTH_ADMIN, "\uff21\uff24\uff2d\uff29\uff2e", "admin"]
)
def test_a_spelling_of_a_taken_name_is_refused(gateway: Gateway, spelling: str) -> None:
    admin = gateway.admin()
    before = _users(gateway)
    with pytest.raises(ApiError) as err:
        admin.post("/v3/users", {"username": spelling, "password": PASSWORD})
    assert err.value.status == 409 and err.value.body["code"] == "NotUnique", err.value.body
    assert _users(gateway) == before


@pytest.mark.parametrize("spelling", ["ADMIN", FULLWIDTH_ADMIN, "aDmIn"])
def test_any_spelling_logs_in_as_the_one_user(gateway: Gateway, spelling: str) -> None:
    api: Api = gateway.api()
    token = api.login(spelling, ADMIN_PASSWORD)
    me = api.get("/v3/users?me=true", token=token)["data"][0]
    assert me["username"] == "admin" and me["admin"] is True


def test_failed_logins_in_other_spellings_count_for_the_same_user(gateway: Gateway) -> None:
    admin = gateway.admin()
    admin.post("/v3/users", {"username": "carol", "password": PASSWORD})
    api = gateway.api()
    for spelling in ("CAROL", "\uff43\uff41\uff52\uff4f\uff4c", "Carol", "cArol", "caroL"):
        with pytest.raises(ApiError) as err:
            api.login(spelling, "wrong-password-here")
        assert err.value.status == 401
    with pytest.raises(ApiError) as err:  # the right password, but the user is over its limit
        api.login("carol", PASSWORD)
    assert err.value.status == 429, err.value.body


def test_a_deleted_users_name_can_be_taken_again(gateway: Gateway) -> None:
    admin = gateway.admin()
    dave = admin.post("/v3/users", {"username": "dave", "password": PASSWORD})
    admin.delete(f"/v3/users/{dave['id']}")
    again = admin.post("/v3/users", {"username": "DAVE", "password": PASSWORD})
    assert again["username"] == "DAVE"
    assert gateway.api().login("dave", PASSWORD)
