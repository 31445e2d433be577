"""The web page end to end in headless Chromium, against a real gateway, agent and
stand-in API server: log in as a local user, see the cluster and its state, download a
kubeconfig and use it with the real kubectl, revoke its token on the page and see
kubectl refused, log out (and the session's token is gone); screenshots render; what
users and administrators named things is shown as text; the OIDC button logs in across
sites (the provider's site, then the gateway's).

``HERDGATE_UI_SCREENSHOTS=<folder>`` also saves the screenshots there (docs/ holds the
ones the README shows).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.binaries import kubectl
from tests.fakes.oidc_issuer import FakeIssuer, gateway_oidc_settings, running_issuer
from tests.integration.browser import WINDOW, check_screenshot, chromium, spki_hash, wait_for_file
from tests.integration.conftest import USER_PASSWORD, World
from tests.integration.env import ApiError, Gateway, free_port, kubectl_run

pytestmark = pytest.mark.integration

HEADER_COLOUR = (0x16, 0x20, 0x2E)
"""The header bar's background (gateway/ui/pages.py STYLE): drawn only if the
stylesheet loaded under the Content-Security-Policy."""


@pytest.fixture(scope="module")
def module_browser(
    world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, Path]]:
    """One Chromium for the tests against ``world`` (a start costs seconds)."""
    tmp = tmp_path_factory.mktemp("browser")
    downloads = tmp / "downloads"
    downloads.mkdir()
    trusted = [spki_hash("127.0.0.1", world.gateway.port)]
    with chromium(tmp / "profile", downloads, trusted) as driver:
        yield driver, downloads


@pytest.fixture
def browser(module_browser: tuple[Any, Path]) -> Iterator[tuple[Any, Path]]:
    """The module's Chromium as a new one: every test starts on a blank page with no
    cookie and an empty downloads folder, and leaves it so."""
    driver, downloads = module_browser

    def fresh() -> None:
        driver.get("about:blank")
        driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
        assert driver.execute_cdp_cmd("Network.getAllCookies", {})["cookies"] == []
        for path in downloads.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    fresh()
    yield driver, downloads
    fresh()


def wait(driver: Any, condition: Any, timeout: float = 15.0) -> Any:
    """Until ``condition`` holds; elements read from a page that is being replaced (the
    answer to a form) are looked for again, not taken for a failure."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=ignored).until(
        condition
    )


def by_css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def screenshot(driver: Any, name: str, tmp_path: Path) -> None:
    """Take it, check it, keep it (and in ``HERDGATE_UI_SCREENSHOTS``)."""
    data = driver.get_screenshot_as_png()
    colours = check_screenshot(data, WINDOW)
    assert colours[HEADER_COLOUR] > WINDOW[0] * 20, "the stylesheet was not applied"
    (tmp_path / name).write_bytes(data)
    keep = os.environ.get("HERDGATE_UI_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / name, Path(keep) / name)


def log_in(driver: Any, url: str, username: str, password: str) -> None:
    driver.get(url + "/ui/")
    wait(driver, lambda d: d.current_url == url + "/ui/login")
    by_css(driver, "#username").send_keys(username)
    by_css(driver, "#password").send_keys(password)
    by_css(driver, "form.login button[type=submit]").click()
    wait(driver, lambda d: d.current_url == url + "/ui/" and all_css(d, "header .user"))


def session_cookie(driver: Any) -> dict[str, Any] | None:
    for cookie in driver.get_cookies():
        if cookie["name"] == "__Host-herdgate-session":
            return dict(cookie)
    return None


def test_log_in_download_use_revoke_log_out(
    world: World, browser: tuple[Any, Path], tmp_path: Path
) -> None:
    driver, downloads = browser
    url = world.gateway.url
    world.user("alice", role="cluster-member")
    kubectl_binary = kubectl()

    driver.get(url + "/")
    wait(driver, lambda d: d.current_url == url + "/ui/login")
    assert driver.title == "Log in · herdgate"
    screenshot(driver, "web-login.png", tmp_path)
    log_in(driver, url, "alice", USER_PASSWORD)

    # The session cookie, as the browser keeps it.
    cookie = session_cookie(driver)
    assert cookie is not None
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/" and cookie["domain"] == "127.0.0.1"
    session = cookie["value"]

    # The cluster, its live state, version and nodes.
    assert by_css(driver, "header .user").text == "alice"
    [row] = all_css(driver, "table.clusters tbody tr")
    assert by_css(row, ".name").text == world.cluster_name
    assert by_css(row, ".state").text == "active"
    assert "ok" in by_css(row, ".state").get_attribute("class").split()
    cells = [c.text for c in all_css(row, "td")]
    view = world.cluster()
    assert cells[2] == view["version"]["gitVersion"] and cells[2].startswith("v1.")
    assert cells[3] == str(view["nodeCount"])
    assert cells[4] == "cluster-member"
    screenshot(driver, "web-clusters.png", tmp_path)

    # Download its kubeconfig and use it.
    by_css(row, "form button[type=submit]").click()
    kubeconfig = wait_for_file(downloads, f"kubeconfig-{world.cluster_name}.yaml")
    assert driver.current_url == url + "/ui/"  # a download, the page stays
    result = kubectl_run(kubectl_binary, kubeconfig, "get", "namespaces", "-o", "name")
    assert result.returncode == 0, result.stderr
    assert "namespace/default" in result.stdout.split()

    # Its token is on the tokens page; revoked there, kubectl is refused.
    by_css(driver, "header nav a[href='/ui/tokens']").click()
    wait(driver, lambda d: d.current_url == url + "/ui/tokens")
    rows = all_css(driver, "table.tokens tbody tr")
    described = {by_css(r, ".description").text: r for r in rows}
    assert f"kubeconfig for {world.cluster_name}" in described
    assert "this session" in described["web page"].text
    by_css(described[f"kubeconfig for {world.cluster_name}"], "button.danger").click()
    wait(
        driver,
        lambda d: (
            f"kubeconfig for {world.cluster_name}"
            not in [by_css(r, ".description").text for r in all_css(d, "table.tokens tbody tr")]
        ),
    )
    screenshot(driver, "web-tokens.png", tmp_path)
    result = kubectl_run(kubectl_binary, kubeconfig, "get", "namespaces")
    assert result.returncode != 0
    assert "Unauthorized" in result.stderr, result.stderr

    # Log out: back at the login form, the cookie gone, the token refused everywhere.
    by_css(driver, "header form button").click()
    wait(driver, lambda d: d.current_url == url + "/ui/login")
    assert session_cookie(driver) is None
    driver.get(url + "/ui/tokens")
    wait(driver, lambda d: d.current_url == url + "/ui/login")
    with pytest.raises(ApiError) as refused:
        world.gateway.api(session).get("/v3/tokens")
    assert refused.value.status == 401


HOSTILE_USER = "<img/src=x/onerror=document.title='owned'>&amp;\"'"
HOSTILE_DESCRIPTION = "<script>document.title='owned'</script><b>bold</b> & {csrf}"


def test_names_are_shown_as_text(world: World, browser: tuple[Any, Path], tmp_path: Path) -> None:
    driver, _ = browser
    url = world.gateway.url
    world.user(HOSTILE_USER, role="read-only")
    before = world.cluster()["description"]
    world.admin.put(f"/v3/clusters/{world.cluster_id}", {"description": HOSTILE_DESCRIPTION})
    try:
        log_in(driver, url, HOSTILE_USER, USER_PASSWORD)
        assert by_css(driver, "header .user").text == HOSTILE_USER
        assert by_css(driver, "table.clusters .description").text == HOSTILE_DESCRIPTION
        assert driver.title == "Clusters · herdgate"
        assert all_css(driver, "img") == [] and all_css(driver, "main b") == []
        assert all_css(driver, "script") == []
        # The CSRF token is not the description's "{csrf}" filled in.
        assert "{csrf}" in by_css(driver, "table.clusters .description").text
    finally:
        world.admin.put(f"/v3/clusters/{world.cluster_id}", {"description": before})


@pytest.fixture(scope="module")
def oidc_gateway(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Gateway, FakeIssuer, str]]:
    """A gateway with OIDC against the fake issuer, browsed as ``https://localhost:<port>``
    while the issuer is ``https://127.0.0.1:<port>``: two sites, as in real life."""
    tmp = tmp_path_factory.mktemp("ui-oidc")
    port = free_port()
    base = f"https://localhost:{port}"
    with running_issuer(tmp / "issuer", consent_page=True) as (issuer, _):
        config = gateway_oidc_settings(issuer, redirect_uri=base + "/v1/auth/oidc/callback")
        (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
        gateway = Gateway(tmp / "gateway", port, tmp / "gateway.log")
        gateway.extra_args = ["--config", str(tmp / "gateway.yaml")]
        try:
            gateway.start()
            yield gateway, issuer, base
        finally:
            gateway.stop()


def test_the_oidc_button_logs_in_across_sites(
    oidc_gateway: tuple[Gateway, FakeIssuer, str], tmp_path: Path
) -> None:
    """The user approves on the issuer's page, so the navigation to the callback starts on
    the issuer's site; the ``SameSite=Strict`` session cookie the callback sets would not
    be sent on a redirect of that navigation, so the callback answers with a page that
    moves on by itself, a navigation of this site's own, which carries it."""
    gateway, issuer, base = oidc_gateway
    issuer_address = urlsplit(issuer.url)
    trusted = [
        spki_hash("127.0.0.1", gateway.port),
        spki_hash(issuer_address.hostname or "", issuer_address.port or 443),
    ]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with chromium(tmp_path / "profile", downloads, trusted) as driver:
        driver.get(base + "/ui/login")
        assert by_css(driver, ".oauth a.button").text == "OpenID Connect"
        by_css(driver, ".oauth a.button").click()
        wait(driver, lambda d: d.current_url.startswith(issuer.url) and all_css(d, "#approve"))
        by_css(driver, "#approve").click()
        wait(driver, lambda d: d.current_url == base + "/ui/" and all_css(d, "header .user"))
        assert by_css(driver, "header .user").text == "Alice Example (alice@example.com)"
        assert issuer.hits["authorize"] == 1 and issuer.hits["token"] == 1
        cookie = session_cookie(driver)
        assert cookie is not None and cookie["sameSite"] == "Strict"
        assert cookie["domain"] == "localhost" and cookie["secure"] and cookie["httpOnly"]
        assert "You may use no cluster yet" in by_css(driver, "main").text
        # The page's token is the user's session, shown as such.
        by_css(driver, "header nav a[href='/ui/tokens']").click()
        wait(driver, lambda d: d.current_url == base + "/ui/tokens")
        assert "web page (oidc)" in by_css(driver, "table.tokens").text
