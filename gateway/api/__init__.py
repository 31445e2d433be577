"""The management API (Rancher v3 paths and field names).

Logins: ``login`` (``/v3-public/<type>Providers/<name>``: local and password providers,
and the dispatch), ``oauth_login`` (OIDC and GitHub: browser redirects, device flows),
``login_common`` (what every login ends with: the failed-login limits, the login metric
and the session token). Tokens, users, clusters, bindings, role templates
(``roletemplates``), projects and their bindings (``projects``) have a module each;
kubeconfigs two: ``kubeconfigs`` (``POST /v3/kubeconfigs``, and the one kubeconfig
``generateKubeconfig`` makes) and ``kubeconfig`` (the documents, pure). ``auditing``
writes the management API's audit records and ``jsonbody`` reads every body.
"""

from __future__ import annotations
