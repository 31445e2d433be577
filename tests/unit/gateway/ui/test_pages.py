"""The web page's HTML (gateway.ui.pages): whatever text users and administrators chose
comes out as that text, never as markup; and the pure security rules (gateway.ui.security)."""

from __future__ import annotations

from html.parser import HTMLParser

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.ui import pages, security

VIEWER = pages.Viewer("bob", "", "csrf-token-value")

# Text as it can reach the page: any printable characters, with the dangerous ones often.
TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("<>&\"'=/{}` ;:")),
        st.characters(blacklist_categories=("Cs", "Cc")),
    ),
    max_size=60,
)


class Outline(HTMLParser):
    """The document's tags and attributes, and its text as the browser reads it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, tuple[tuple[str, str | None], ...]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, tuple(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def outline(document: str) -> Outline:
    parser = Outline()
    parser.feed(document)
    parser.close()
    return parser


def shape(document: str) -> list[tuple[str, tuple[str, ...]]]:
    """Tags and attribute names (values aside): what a value could add or change."""
    return [(tag, tuple(name for name, _ in attrs)) for tag, attrs in outline(document).tags]


def cluster(name: str = "dev", description: str = "", state: str = "active") -> pages.ClusterRow:
    return pages.ClusterRow("c-abcde", name, description, state, "v1.32.0", 3, "cluster-member")


def token(description: str = "", cluster_name: str = "") -> pages.TokenRow:
    return pages.TokenRow(
        "token-abcde", "api", description, cluster_name, "2027-01-01T00:00:00Z", "", "", False,
        False,
    )  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(name=TEXT, description=TEXT, state=TEXT, username=TEXT, display=TEXT)
def test_cluster_page_values_stay_text(
    name: str, description: str, state: str, username: str, display: str
) -> None:
    viewer = pages.Viewer(username, display, "csrf-token-value")
    document = pages.clusters_page(viewer, [cluster(name, description, state), cluster()])
    plain = pages.clusters_page(pages.Viewer("u", "", "csrf-token-value"),
                                [cluster("n", "d", "s"), cluster()])  # fmt: skip
    assert shape(document) == shape(plain)
    parsed = outline(document)
    text = "".join(parsed.text)
    for value in (name, description, state, username):
        assert value in text
    # Attribute values are ours: the state's class comes from a fixed table.
    classes = {v for tag, attrs in parsed.tags for k, v in attrs if k == "class"}
    assert classes <= {"brand", "who", "user", "link", "lead", "clusters", "name", "id",
                       "description", "state ok", "state wait", "state bad", "all"}  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(description=TEXT, cluster_name=TEXT, notice=TEXT)
def test_token_page_values_stay_text(description: str, cluster_name: str, notice: str) -> None:
    notice = notice or "n"
    document = pages.tokens_page(VIEWER, [token(description, cluster_name)], notice)
    plain = pages.tokens_page(VIEWER, [token("d", "c")], "n")
    assert shape(document) == shape(plain)
    text = "".join(outline(document).text)
    assert description in text and notice in text
    assert (cluster_name or "all") in text


@settings(max_examples=150, deadline=None)
@given(error=TEXT, username=TEXT, csrf=TEXT)
def test_login_page_values_stay_text(error: str, username: str, csrf: str) -> None:
    choices = [pages.Choice("local", "Local user"), pages.Choice("openldap", "OpenLDAP")]
    oauth = [pages.Choice("oidc", "OpenID Connect")]
    document = pages.login_page(csrf, choices, oauth, error or "e", username, "openldap")
    plain = pages.login_page("t", choices, oauth, "e", "u", "openldap")
    assert shape(document) == shape(plain)
    parsed = outline(document)
    attrs = {k: v for tag, a in parsed.tags if tag == "input" for k, v in a if k == "value"}
    inputs = [dict(a) for tag, a in parsed.tags if tag == "input"]
    assert {"type": "hidden", "name": "csrf", "value": csrf} in inputs
    assert any(i.get("name") == "username" and i.get("value") == username for i in inputs)
    assert attrs  # the values round-trip through the parser as the browser reads them
    assert (error or "e") in "".join(parsed.text)


def test_values_are_escaped_once_and_html_is_kept() -> None:
    assert pages.escape("<a href='x'>&") == "&lt;a href=&#x27;x&#x27;&gt;&amp;"
    safe = pages.render("<b>{x}</b>", x="<i>")
    assert safe == "<b>&lt;i&gt;</b>"
    assert pages.render("<p>{y}</p>", y=safe) == "<p><b>&lt;i&gt;</b></p>"
    assert pages.render("{a}", a="{b}") == "{b}"


def test_pages_have_no_script_and_load_only_the_stylesheet() -> None:
    documents = [
        pages.login_page("t", [pages.Choice("local", "Local")], [pages.Choice("github", "GitHub")]),
        pages.clusters_page(VIEWER, [cluster(), cluster("prod")]),
        pages.clusters_page(VIEWER, []),
        pages.tokens_page(VIEWER, [token()]),
        pages.error_page(404, "Not found", "no such page"),
        pages.logged_in_page(),
    ]
    for document in documents:
        tags = outline(document).tags
        assert not [t for t, _ in tags if t in ("script", "iframe", "object", "embed", "img")]
        links = [dict(a) for t, a in tags if t == "link"]
        assert links == [{"rel": "stylesheet", "href": "/ui/style.css"}]
        for _, attrs in tags:
            assert not [k for k, _ in attrs if k.startswith("on") or k == "style"]
        forms = [dict(a) for t, a in tags if t == "form"]
        assert all(f["method"] == "post" and f["action"].startswith("/ui/") for f in forms)
    # Every form of a logged-in page carries the CSRF token.
    document = pages.clusters_page(VIEWER, [cluster(), cluster("prod")])
    tags = outline(document).tags
    assert sum(1 for t, _ in tags if t == "form") == 4  # logout, two clusters, all
    assert sum(1 for t, a in tags if t == "input" and ("value", "csrf-token-value") in a) == 4


def test_the_all_clusters_button_appears_for_two_clusters_or_more() -> None:
    assert "for all" not in pages.clusters_page(VIEWER, [cluster()])
    assert "for all 2 clusters" in pages.clusters_page(VIEWER, [cluster(), cluster("prod")])
    assert "You may use no cluster yet" in pages.clusters_page(VIEWER, [])


# ---------------------------------------------------------------- security


@settings(max_examples=100, deadline=None)
@given(secret=st.text(min_size=1, max_size=80), other=st.text(min_size=1, max_size=80))
def test_csrf_tokens_belong_to_their_secret(secret: str, other: str) -> None:
    token_value = security.csrf_token(secret)
    assert security.csrf_valid(secret, token_value)
    assert token_value.isascii() and len(token_value) == 43
    if other != secret:
        assert not security.csrf_valid(other, token_value)
    assert not security.csrf_valid(secret, None)
    assert not security.csrf_valid(secret, "")
    assert not security.csrf_valid("", security.csrf_token(""))
    assert not security.csrf_valid(secret, token_value[:-1])


def test_login_secrets_are_random() -> None:
    secrets = {security.new_login_secret() for _ in range(20)}
    assert len(secrets) == 20 and all(len(s) >= 43 for s in secrets)


def test_fetch_metadata_rule() -> None:
    assert security.fetch_allowed(None)
    assert security.fetch_allowed("same-origin")
    assert security.fetch_allowed("none")
    for refused in ("same-site", "cross-site", "", "SAME-ORIGIN"):
        assert not security.fetch_allowed(refused)


@given(name=st.text(max_size=200))
@example(name="0..0")  # found by hypothesis: "kubeconfig-0..0.yaml"
def test_attachment_names_are_safe(name: str) -> None:
    file_name = security.attachment_name(name)
    assert file_name.startswith("kubeconfig") and file_name.endswith(".yaml")
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in file_name)
    assert ".." not in file_name.removesuffix(".yaml") or file_name == "kubeconfig.yaml"


def test_the_policy_is_strict() -> None:
    policy = dict(
        part.strip().split(" ", 1) for part in security.CONTENT_SECURITY_POLICY.split(";")
    )
    assert policy == {
        "default-src": "'none'",
        "style-src": "'self'",
        "form-action": "'self'",
        "frame-ancestors": "'none'",
        "base-uri": "'none'",
    }
    assert security.HEADERS["X-Content-Type-Options"] == "nosniff"
    assert security.HEADERS["Referrer-Policy"] == "no-referrer"
    assert security.SESSION_COOKIE.startswith("__Host-")
    assert security.LOGIN_CSRF_COOKIE.startswith("__Host-")
