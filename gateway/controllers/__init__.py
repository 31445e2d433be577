"""Controllers: the gateway's own work inside each downstream cluster.

The gateway's API client per cluster (``kubeapi.KubeClient`` on ``downstream``'s
internal Unix-socket listener that forwards through the cluster's tunnel as the agent's
service account, the same forwarding path as kubectl's) and what runs on it: the ACE
sync of users and token hashes into each cluster (``ace_sync``); role templates, cluster and
project bindings kept in step in each cluster's RBAC (``access_sync``); the per-cluster
controllers of the cluster issue land here too.

May import: ``gateway.proxy`` (its forwarding), ``gateway.clusters``,
``gateway.identity``, ``gateway.store``, ``gateway.telemetry``, ``tunnel``, ``ace`` (the
records it syncs), ``config``.
"""
