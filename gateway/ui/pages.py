"""The web page's HTML and stylesheet (pure: strings in, a string out).

Every value reaches the HTML through ``render``, which escapes it (``&<>"'``) unless it
is already ``Html`` made here. Values go only into element text and double-quoted
attribute values, never into a URL, a script or a style: a cluster's or a token's id
travels in a hidden form field, not in a path. The pages carry no script.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.ui.security import CSRF_FIELD


class Html(str):
    """Markup that is safe as it is (made by ``render`` from escaped values)."""

    __slots__ = ()


def escape(value: object) -> Html:
    """``value`` as text in HTML: itself if it is ``Html``, else escaped."""
    if isinstance(value, Html):
        return value
    return Html(html.escape(str(value), quote=True))


def render(template: str, **values: object) -> Html:
    """``template`` (a constant of this module) with ``{name}`` replaced by the escaped
    values; a value's own braces are not read again."""
    return Html(template.format_map({name: escape(v) for name, v in values.items()}))


def join(parts: Iterable[Html]) -> Html:
    return Html("".join(escape(p) for p in parts))


@dataclass(frozen=True)
class Viewer:
    """Who is logged in, for the page's header."""

    username: str
    display_name: str
    csrf: str
    is_admin: bool = False


@dataclass(frozen=True)
class ClusterRow:
    id: str
    name: str
    description: str
    state: str
    version: str
    node_count: int
    role: str


@dataclass(frozen=True)
class TokenRow:
    id: str
    kind: str
    description: str
    cluster: str
    created: str
    expires: str
    last_used: str
    current: bool
    expired: bool


@dataclass(frozen=True)
class Choice:
    value: str
    label: str


STATE_CLASSES = {"active": "ok", "pending": "wait", "provisioning": "wait"}
"""The CSS class of a cluster's state (``bad`` for any other, such as unavailable)."""

_LAYOUT = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{title} · herdgate</title>
<link rel="stylesheet" href="/ui/style.css">
</head>
<body>
<header><span class="brand">herdgate</span>{nav}</header>
<main>
{body}
</main>
</body>
</html>
"""

_NAV = """<nav>
<a href="/ui/"{clusters_current}>Clusters</a>
<a href="/ui/tokens"{tokens_current}>Tokens</a>
</nav>
<div class="who"><span class="user">{name}</span>
<form method="post" action="/ui/logout">{csrf}
<button type="submit" class="link">Log out</button></form>
</div>"""

_CSRF = '<input type="hidden" name="' + CSRF_FIELD + '" value="{token}">'

_ERROR = '<p class="error" role="alert">{message}</p>'
_NOTICE = '<p class="notice" role="status">{message}</p>'


def csrf_input(token: str) -> Html:
    return render(_CSRF, token=token)


def layout(title: str, body: Html, viewer: Viewer | None = None, current: str = "") -> Html:
    """The whole document; ``current`` (``clusters`` or ``tokens``) marks the nav link."""
    nav = Html("")
    if viewer is not None:
        mark = Html(' aria-current="page"')
        name = viewer.username
        if viewer.display_name and viewer.display_name != viewer.username:
            name = f"{viewer.display_name} ({viewer.username})"
        nav = render(
            _NAV,
            clusters_current=mark if current == "clusters" else Html(""),
            tokens_current=mark if current == "tokens" else Html(""),
            name=name,
            csrf=csrf_input(viewer.csrf),
        )
    return render(_LAYOUT, title=title, nav=nav, body=body)


_LOGIN = """<h1>Log in</h1>
{error}
<form method="post" action="/ui/login" class="login">
{csrf}
<label for="provider">Sign in with</label>
<select id="provider" name="provider">{options}</select>
<label for="username">User name</label>
<input id="username" name="username" autocomplete="username" required maxlength="256"
 value="{username}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required
 maxlength="4096">
<button type="submit">Log in</button>
</form>
{oauth}"""

_OPTION = '<option value="{value}"{selected}>{label}</option>'
_OAUTH = """<div class="oauth"><p>Or sign in with</p>{buttons}</div>"""
_OAUTH_BUTTON = '<a class="button" href="/ui/login/{value}">{label}</a>'
"""A link, not a form: the gateway answers it with a redirect to the provider, which
``form-action 'self'`` would forbid after a form's post. Starting a login changes
nothing; the login itself is bound to this browser (``gateway.api.oauth_login``)."""


def login_page(
    csrf: str,
    providers: list[Choice],
    oauth: list[Choice],
    error: str = "",
    username: str = "",
    provider: str = "",
) -> Html:
    options = join(
        render(
            _OPTION,
            value=p.value,
            label=p.label,
            selected=Html(" selected") if p.value == provider else Html(""),
        )
        for p in providers
    )
    buttons = join(render(_OAUTH_BUTTON, value=o.value, label=o.label) for o in oauth)
    body = render(
        _LOGIN,
        error=render(_ERROR, message=error) if error else Html(""),
        csrf=csrf_input(csrf),
        options=options,
        username=username,
        oauth=render(_OAUTH, buttons=buttons) if oauth else Html(""),
    )
    return layout("Log in", body)


_CLUSTERS = """<h1>Clusters</h1>
{notice}
<p class="lead">The clusters you may use, as the gateway sees them now. A kubeconfig holds
a new token for its cluster (revoke it under Tokens).</p>
{table}
{all_form}"""

_CLUSTER_TABLE = """<table class="clusters">
<thead><tr><th>Name</th><th>State</th><th>Version</th><th>Nodes</th><th>Your role</th>
<th></th></tr></thead>
<tbody>
{rows}
</tbody>
</table>"""

_CLUSTER_ROW = """<tr>
<td><span class="name">{name}</span> <span class="id">{id}</span>
<div class="description">{description}</div></td>
<td><span class="state {state_class}">{state}</span></td>
<td>{version}</td>
<td>{nodes}</td>
<td>{role}</td>
<td><form method="post" action="/ui/kubeconfig">{csrf}
<input type="hidden" name="cluster" value="{id}">
<button type="submit">Download kubeconfig</button></form></td>
</tr>"""

_ALL_FORM = """<form method="post" action="/ui/kubeconfig" class="all">{csrf}
<input type="hidden" name="cluster" value="*">
<button type="submit">Download a kubeconfig for all {count} clusters</button></form>"""

_NO_CLUSTERS = """<p class="empty">You may use no cluster yet: an administrator gives access.</p>"""


def clusters_page(viewer: Viewer, clusters: list[ClusterRow], notice: str = "") -> Html:
    csrf = csrf_input(viewer.csrf)
    rows = join(
        render(
            _CLUSTER_ROW,
            id=c.id,
            name=c.name,
            description=c.description,
            state=c.state,
            state_class=STATE_CLASSES.get(c.state, "bad"),
            version=c.version or "—",
            nodes=c.node_count,
            role=c.role,
            csrf=csrf,
        )
        for c in clusters
    )
    body = render(
        _CLUSTERS,
        notice=render(_NOTICE, message=notice) if notice else Html(""),
        table=render(_CLUSTER_TABLE, rows=rows) if clusters else Html(_NO_CLUSTERS),
        all_form=(
            render(_ALL_FORM, csrf=csrf, count=len(clusters)) if len(clusters) > 1 else Html("")
        ),
    )
    return layout("Clusters", body, viewer, "clusters")


_TOKENS = """<h1>Your tokens</h1>
{notice}
<p class="lead">Every token you hold: this page's session, your logins, API tokens and the
tokens of your kubeconfigs. A revoked token stops working at once.</p>
<table class="tokens">
<thead><tr><th>Token</th><th>Kind</th><th>Description</th><th>Cluster</th><th>Created</th>
<th>Expires</th><th>Last used</th><th></th></tr></thead>
<tbody>
{rows}
</tbody>
</table>"""

_TOKEN_ROW = """<tr{row_class}>
<td><span class="id">{id}</span>{mark}</td>
<td>{kind}</td>
<td class="description">{description}</td>
<td>{cluster}</td>
<td class="time">{created}</td>
<td class="time">{expires}</td>
<td class="time">{last_used}</td>
<td><form method="post" action="/ui/tokens/revoke">{csrf}
<input type="hidden" name="token" value="{id}">
<button type="submit" class="danger">{label}</button></form></td>
</tr>"""


def tokens_page(viewer: Viewer, tokens: list[TokenRow], notice: str = "") -> Html:
    csrf = csrf_input(viewer.csrf)
    rows = join(
        render(
            _TOKEN_ROW,
            row_class=Html(' class="expired"') if t.expired else Html(""),
            id=t.id,
            mark=Html(' <span class="tag">this session</span>') if t.current else Html(""),
            kind=t.kind,
            description=t.description,
            cluster=t.cluster or "all",
            created=t.created,
            expires=t.expires or "never",
            last_used=t.last_used or "—",
            csrf=csrf,
            label="Revoke and log out" if t.current else "Revoke",
        )
        for t in tokens
    )
    body = render(
        _TOKENS, notice=render(_NOTICE, message=notice) if notice else Html(""), rows=rows
    )
    return layout("Tokens", body, viewer, "tokens")


_ERROR_PAGE = """<h1>{title}</h1>
<p class="error" role="alert">{message}</p>
<p><a href="/ui/">Back to the clusters</a> · <a href="/ui/login">Log in</a></p>"""


def error_page(status: int, title: str, message: str) -> Html:
    return layout(f"{status} {title}", render(_ERROR_PAGE, title=title, message=message))


_MOVE_ON = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="0; url=/ui/">
<meta name="referrer" content="no-referrer">
<title>Logged in · herdgate</title>
<link rel="stylesheet" href="/ui/style.css">
</head>
<body><main><p>Logged in. <a href="/ui/">Continue to the clusters</a>.</p></main></body>
</html>
"""


def logged_in_page() -> Html:
    """The answer to a provider's callback: it moves on to ``/ui/`` by itself. A redirect
    would keep the navigation cross-site (it began at the provider), and a
    ``SameSite=Strict`` cookie is not sent with it; this page's own navigation is
    same-site."""
    return Html(_MOVE_ON)


STYLE = """:root { color-scheme: light; --fg: #1d2430; --muted: #5b6575; --line: #d8dde6;
  --accent: #1f5fbf; --bg: #f5f7fa; --ok: #17803d; --wait: #a86400; --bad: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--fg); background: var(--bg); }
header { display: flex; align-items: center; gap: 1.5rem; padding: .7rem 1.5rem;
  background: #16202e; color: #fff; }
header .brand { font-weight: 700; letter-spacing: .02em; }
header nav { display: flex; gap: 1rem; flex: 1; }
header nav a { color: #c9d6ea; text-decoration: none; }
header nav a[aria-current] { color: #fff; border-bottom: 2px solid #7fb0ff; }
header .who { display: flex; align-items: center; gap: .8rem; color: #c9d6ea; }
header form { margin: 0; }
main { max-width: 72rem; margin: 1.5rem auto; padding: 0 1.5rem; }
h1 { font-size: 1.4rem; margin: 0 0 .8rem; }
.lead { color: var(--muted); }
table { width: 100%; border-collapse: collapse; background: #fff; border: 1px solid var(--line); }
th, td { text-align: left; padding: .55rem .7rem; border-bottom: 1px solid var(--line);
  vertical-align: top; overflow-wrap: break-word; }
th { font-size: .8rem; text-transform: uppercase; color: var(--muted); background: #eef1f6;
  white-space: nowrap; }
td.time { white-space: nowrap; font-size: .9rem; }
td form { margin: 0; }
.name { font-weight: 600; }
.id { font-family: ui-monospace, monospace; font-size: .85rem; color: var(--muted); }
.description { color: var(--muted); font-size: .9rem; white-space: pre-wrap; }
.state { font-weight: 600; }
.state.ok { color: var(--ok); }
.state.wait { color: var(--wait); }
.state.bad { color: var(--bad); }
.tag { font-size: .75rem; background: #e3ecfb; color: var(--accent); padding: .1rem .4rem;
  border-radius: .6rem; }
tr.expired td { color: var(--muted); text-decoration: line-through; }
button, .button { display: inline-block; font: inherit; font-size: .9rem; padding: .4rem .8rem;
  border: 1px solid var(--accent); border-radius: .3rem; background: var(--accent); color: #fff;
  cursor: pointer; text-decoration: none; }
button.danger { background: #fff; color: var(--bad); border-color: var(--bad); }
button.link { background: none; border: 1px solid #52627a; color: #fff; padding: .2rem .6rem; }
form.all { margin-top: 1rem; }
form.login { display: grid; gap: .4rem; max-width: 22rem; background: #fff; padding: 1.2rem;
  border: 1px solid var(--line); border-radius: .4rem; }
form.login input, form.login select { font: inherit; padding: .4rem; border: 1px solid var(--line);
  border-radius: .3rem; }
form.login button { margin-top: .6rem; }
.oauth { margin-top: 1.2rem; display: flex; gap: .6rem; align-items: center; }
.oauth p { margin: 0; color: var(--muted); }
.error { color: var(--bad); background: #fbeaea; padding: .5rem .8rem; border-radius: .3rem; }
.notice { color: var(--ok); background: #e8f5ec; padding: .5rem .8rem; border-radius: .3rem; }
.empty { color: var(--muted); }
"""
