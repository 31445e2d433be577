"""The authorized cluster endpoint (ACE): the contract between the gateway and the webhook.

A cluster with ACE enabled runs ``herdgate webhook`` beside its API server; the webhook
answers TokenReviews from records the gateway keeps in the cluster. This package is what
both sides must agree on, and nothing else: the CRDs and their record format
(:mod:`ace.records`, also what a record means: when a token is accepted, and the keys
of the extra fields the API server sees of a caller, impersonated or reviewed), the token
hash format (:mod:`ace.hashes`), and the documents that install the webhook
(:mod:`ace.manifests`, also served by the gateway per cluster).

It sits below both ``gateway`` and ``webhook`` and imports neither (only ``config``):
the webhook runs inside a cluster without the gateway, and the gateway writes what the
webhook reads. Pure: no I/O, no asyncio, no aiohttp.
"""

from __future__ import annotations
