"""The gateway's web page (``/ui/``): log in, see the clusters one may use, download
kubeconfigs, see and revoke one's own tokens. Server-rendered HTML, no script, nothing
loaded from elsewhere.

- ``pages`` — the HTML, built from Python strings with every value escaped (pure).
- ``security`` — cookie names, the CSRF token derived from the session, the response
  headers (Content-Security-Policy and the rest), the ``Sec-Fetch-Site`` rule (pure).
- ``kubeconfigs`` — the kubeconfig of one cluster and of all of them (``all_clusters``,
  the one place to switch to ``POST /v3/kubeconfigs``).
- ``handlers`` — the aiohttp handlers and ``install``, which adds the routes.

Layer: above ``api`` and ``front`` and below ``operations``, which installs it in the
application (pyproject.toml's import contracts). It uses the management API's own
pieces (password checks and their limits, the OAuth browser flows, session tokens,
``cluster_view``, ``token_view``) and ``identity``, ``store`` and ``keys`` below them;
it imports nothing of ``front``. The session cookie is read only here: ``/v3`` accepts
``Authorization`` alone, and the proxy drops ``Cookie`` before the API server, so a
cross-site request can act through neither.
"""
