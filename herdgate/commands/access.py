"""Who may do what: ``herdgate binding`` (cluster role template bindings),
``herdgate project`` (and its bindings) and ``herdgate roletemplate``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from herdgate import output
from herdgate.client import Client, Resource
from herdgate.commands.common import (
    EXIT_OK,
    Failure,
    Session,
    UsageError,
    find_cluster,
    find_role,
    group,
    leaf,
    subject,
    subject_text,
    user_names,
)

if TYPE_CHECKING:
    from herdgate.commands.common import Subparsers

MAX_TEMPLATE_BYTES = 1024 * 1024


def _subject_options(p: argparse.ArgumentParser) -> None:
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user (name or id)")
    who.add_argument("--group", help="a group principal, e.g. openldap_group://cn=ops,dc=example")
    p.add_argument("--role", required=True, help="role template id or name")


def add_parsers(subparsers: Subparsers) -> None:
    inner = group(subparsers, "binding", "give users and groups a role on a cluster")
    p = leaf(inner, "list", "list cluster role bindings you may see", run_binding_list)
    p.add_argument("--cluster", default="", help="only this cluster's (name or id)")
    p = leaf(
        inner, "create", "give a user or group a role on a cluster (owners)", run_binding_create
    )
    p.add_argument("--cluster", required=True, help="name or id")
    _subject_options(p)
    p = leaf(inner, "delete", "remove cluster role bindings (owners)", run_binding_delete)
    p.add_argument("binding_ids", nargs="+", metavar="ID")

    inner = group(subparsers, "project", "group a cluster's namespaces into projects")
    p = leaf(inner, "list", "list projects", run_project_list)
    p.add_argument("--cluster", default="", help="only this cluster's (name or id)")
    p = leaf(inner, "create", "create a project in a cluster (owners)", run_project_create)
    p.add_argument("name")
    p.add_argument("--cluster", required=True, help="name or id")
    p.add_argument("--description", default="")
    p = leaf(inner, "delete", "delete a project and its bindings (owners)", run_project_delete)
    p.add_argument("project", help="id (c-xxxxx:p-xxxxx) or name")
    p.add_argument("--cluster", default="", help="the project's cluster, to find it by name")
    bindings = group(inner, "binding", "give users and groups a role in a project")
    p = leaf(bindings, "list", "list project role bindings", run_project_binding_list)
    p.add_argument("--project", default="", help="only this project's (id or name)")
    p.add_argument("--cluster", default="", help="the project's cluster, to find it by name")
    p = leaf(
        bindings, "create", "give a user or group a role in a project", run_project_binding_create
    )
    p.add_argument("--project", required=True, help="id or name")
    p.add_argument("--cluster", default="", help="the project's cluster, to find it by name")
    _subject_options(p)
    p = leaf(bindings, "delete", "remove project role bindings", run_project_binding_delete)
    p.add_argument("binding_ids", nargs="+", metavar="ID")

    inner = group(subparsers, "roletemplate", "what a binding grants: role templates")
    p = leaf(inner, "list", "list role templates", run_template_list)
    p.add_argument(
        "--scope",
        choices=("cluster", "project"),
        help="only those bindable in bindings of this kind",
    )
    p = leaf(inner, "show", "show a role template and its rules", run_template_show)
    p.add_argument("template", help="id")
    p = leaf(
        inner, "create", "create a role template from a file (administrators)", run_template_create
    )
    p.add_argument("-f", "--filename", required=True, help="YAML or JSON file ('-': stdin)")
    p = leaf(inner, "delete", "delete role templates (administrators)", run_template_delete)
    p.add_argument("template_ids", nargs="+", metavar="ID")


# -- cluster bindings --------------------------------------------------------------------


def binding_columns(
    cluster_names: Mapping[str, str], names: Mapping[str, str], now: float
) -> list[output.Column]:
    return [
        output.field("id"),
        output.Column(
            "CLUSTER", lambda b: cluster_names.get(str(b.get("clusterId")), b.get("clusterId"))
        ),
        output.Column("SUBJECT", lambda b: subject_text(b, names)),
        output.field("roleTemplateId", "ROLE"),
        output.Column("AGE", lambda b: output.age(b.get("created"), now)),
    ]


def _cluster_names(client: Client) -> dict[str, str]:
    return {str(c.get("id")): str(c.get("name")) for c in client.clusters.items()}


def run_binding_list(session: Session, args: argparse.Namespace) -> int:
    client = session.client
    cluster_id = str(find_cluster(client, args.cluster)["id"]) if args.cluster else ""
    bindings = client.bindings.items(cluster_id)
    columns = binding_columns(_cluster_names(client), user_names(client), time.time())
    session.out(
        output.render(bindings, columns, args.output, "clusterroletemplatebinding", output.by_id)
    )
    return EXIT_OK


def _created(
    session: Session, args: argparse.Namespace, kind: str, item: Resource, what: str
) -> None:
    message = f"binding {output.escape(str(item.get('id')))} created: {what}\n"
    session.out(output.outcome(item, args.output, kind, message))


def run_binding_create(session: Session, args: argparse.Namespace) -> int:
    client = session.client
    cluster = find_cluster(client, args.cluster)
    body = {
        "clusterId": str(cluster["id"]),
        "roleTemplateId": find_role(client, args.role, "cluster"),
        **subject(args, client),
    }
    binding = client.bindings.create(body)
    who = output.escape(args.user or args.group)
    where = output.escape(str(cluster.get("name")))
    _created(
        session,
        args,
        "clusterroletemplatebinding",
        binding,
        f"{who} is {body['roleTemplateId']} on {where}",
    )
    return EXIT_OK


def run_binding_delete(session: Session, args: argparse.Namespace) -> int:
    deleted = [session.client.bindings.delete(i) for i in args.binding_ids]
    _deleted(session, args, "clusterroletemplatebinding", deleted, "binding")
    return EXIT_OK


def _deleted(
    session: Session, args: argparse.Namespace, kind: str, items: list[Resource], word: str
) -> None:
    session.out(
        output.outcomes(
            items, args.output, kind, lambda i: f"{word} {output.escape(output.by_id(i))} deleted\n"
        )
    )


# -- projects ----------------------------------------------------------------------------


def find_project(client: Client, ref: str, cluster_ref: str) -> Resource:
    """A project by id, or by name (in ``cluster_ref``'s cluster when given)."""
    cluster_id = str(find_cluster(client, cluster_ref)["id"]) if cluster_ref else ""
    projects = client.projects.items(cluster_id)
    for project in projects:
        if project.get("id") == ref:
            return project
    named = [p for p in projects if p.get("name") == ref]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise UsageError(
            f"several clusters have a project named {ref!r}: give --cluster, or the project's id"
        )
    raise Failure(f"no project {output.escape(ref)!r}", "herdgate project list shows them")


def run_project_list(session: Session, args: argparse.Namespace) -> int:
    client = session.client
    cluster_id = str(find_cluster(client, args.cluster)["id"]) if args.cluster else ""
    projects = client.projects.items(cluster_id)
    clusters = _cluster_names(client)
    now = time.time()
    columns = [
        output.field("name"),
        output.field("id"),
        output.Column(
            "CLUSTER", lambda p: clusters.get(str(p.get("clusterId")), p.get("clusterId"))
        ),
        output.field("description"),
        output.Column("AGE", lambda p: output.age(p.get("created"), now)),
    ]
    session.out(output.render(projects, columns, args.output, "project", output.by_id))
    return EXIT_OK


def run_project_create(session: Session, args: argparse.Namespace) -> int:
    client = session.client
    cluster = find_cluster(client, args.cluster)
    project = client.create_project(str(cluster["id"]), args.name, args.description)
    message = (
        f"project {output.escape(str(project.get('name')))} created ({project.get('id')}); "
        "a namespace joins it with the annotation "
        f"field.cattle.io/projectId={project.get('id')}\n"
    )
    session.out(output.outcome(project, args.output, "project", message))
    return EXIT_OK


def run_project_delete(session: Session, args: argparse.Namespace) -> int:
    project = find_project(session.client, args.project, args.cluster)
    deleted = session.client.projects.delete(str(project["id"]))
    _deleted(session, args, "project", [deleted], "project")
    return EXIT_OK


def run_project_binding_list(session: Session, args: argparse.Namespace) -> int:
    client = session.client
    project_id = str(find_project(client, args.project, args.cluster)["id"]) if args.project else ""
    bindings = client.project_bindings.items(project_id)
    names = user_names(client)
    now = time.time()
    columns = [
        output.field("id"),
        output.field("projectId", "PROJECT"),
        output.Column("SUBJECT", lambda b: subject_text(b, names)),
        output.field("roleTemplateId", "ROLE"),
        output.Column("AGE", lambda b: output.age(b.get("created"), now)),
    ]
    session.out(
        output.render(bindings, columns, args.output, "projectroletemplatebinding", output.by_id)
    )
    return EXIT_OK


def run_project_binding_create(session: Session, args: argparse.Namespace) -> int:
    client = session.client
    project = find_project(client, args.project, args.cluster)
    body = {
        "projectId": str(project["id"]),
        "roleTemplateId": find_role(client, args.role, "project"),
        **subject(args, client),
    }
    binding = client.project_bindings.create(body)
    who = args.user or args.group
    _created(
        session,
        args,
        "projectroletemplatebinding",
        binding,
        f"{output.escape(who)} is {body['roleTemplateId']} in project "
        f"{output.escape(str(project.get('name')))}",
    )
    return EXIT_OK


def run_project_binding_delete(session: Session, args: argparse.Namespace) -> int:
    deleted = [session.client.project_bindings.delete(i) for i in args.binding_ids]
    _deleted(session, args, "projectroletemplatebinding", deleted, "binding")
    return EXIT_OK


# -- role templates ----------------------------------------------------------------------


def template_columns() -> list[output.Column]:
    return [
        output.field("id"),
        output.field("name"),
        output.field("context"),
        output.Column("BUILTIN", lambda t: "yes" if t.get("builtin") else ""),
        output.Column("LOCKED", lambda t: "yes" if t.get("locked") else ""),
        output.Column("RULES", lambda t: len(t.get("rules") or [])),
        output.field("roleTemplateNames", "INHERITS"),
    ]


def describe_template(template: Mapping[str, Any]) -> str:
    flags = [
        name for name in ("builtin", "locked", "external", "administrative") if template.get(name)
    ]
    text = output.details(
        [
            ("ID", template.get("id")),
            ("Name", template.get("name")),
            ("Context", template.get("context")),
            ("Description", template.get("description")),
            ("Flags", flags),
            ("Inherits", template.get("roleTemplateNames")),
            ("Cluster roles", template.get("clusterRoles")),
        ]
    )
    return text + output.section(
        "Rules",
        ["VERBS", "API-GROUPS", "RESOURCES", "RESOURCE-NAMES", "NON-RESOURCE-URLS"],
        [
            [
                r.get("verbs"),
                r.get("apiGroups"),
                r.get("resources"),
                r.get("resourceNames"),
                r.get("nonResourceURLs"),
            ]
            for r in template.get("rules") or []
            if isinstance(r, dict)
        ],
    )


def run_template_list(session: Session, args: argparse.Namespace) -> int:
    templates = session.client.role_templates.items(args.scope or "")
    session.out(
        output.render(templates, template_columns(), args.output, "roletemplate", output.by_id)
    )
    return EXIT_OK


def run_template_show(session: Session, args: argparse.Namespace) -> int:
    template = session.client.role_templates.get(args.template)
    session.out(
        output.render_one(template, args.output, "roletemplate", output.by_id, describe_template)
    )
    return EXIT_OK


def read_document(name: str) -> dict[str, Any]:
    """A YAML or JSON object from a file (``-``: standard input)."""
    try:
        if name == "-":
            text = sys.stdin.read(MAX_TEMPLATE_BYTES + 1)
        else:
            with Path(name).open() as handle:
                text = handle.read(MAX_TEMPLATE_BYTES + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {name}: {exc}") from None
    if len(text) > MAX_TEMPLATE_BYTES:
        raise UsageError(f"{name} is larger than {MAX_TEMPLATE_BYTES} bytes")
    try:
        doc = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as exc:
        raise UsageError(f"{name} is not YAML or JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{name} must hold one object (name, context, rules ...)")
    json.dumps(doc)  # only JSON's types go to the gateway
    return doc


def run_template_create(session: Session, args: argparse.Namespace) -> int:
    try:
        body = read_document(args.filename)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{args.filename}: {exc}") from None
    template = session.client.role_templates.create(body)
    message = (
        f"role template {output.escape(str(template.get('id')))} created "
        f"({output.escape(str(template.get('name')))})\n"
    )
    session.out(output.outcome(template, args.output, "roletemplate", message))
    return EXIT_OK


def run_template_delete(session: Session, args: argparse.Namespace) -> int:
    deleted = [session.client.role_templates.delete(i) for i in args.template_ids]
    _deleted(session, args, "roletemplate", deleted, "role template")
    return EXIT_OK
