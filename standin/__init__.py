"""A stand-in kube-apiserver: the Kubernetes API server herdgate's tests and bench run against.

An in-memory imitation of kube-apiserver that real kubectl 1.27 … 1.33 works against
(discovery, REST verbs, watch, tables, exec/attach/port-forward, authentication, impersonation,
RBAC authorization, audit); README.md says what of the real server it imitates and where it
knowingly differs.
Run it with ``python -m standin --dir DIR`` or, from tests, ``standin.harness.StandInProcess``.

It is not part of the product: the wheel does not ship it (pyproject's package list leaves it
out), and it runs from the checkout, as tests/ and bench/ do. It may import ``config`` (for
``config.tls``) and nothing else of herdgate.
"""

from __future__ import annotations
