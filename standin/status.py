"""`Status` objects and the errors that carry them, worded like apimachinery's api/errors."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


def group_resource(group: str, resource: str) -> str:
    """`schema.GroupResource.String()`: "configmaps" or "deployments.apps"."""
    return f"{resource}.{group}" if group else resource


def go_quote(value: str) -> str:
    """Go's `%q` for the plain strings that appear in API messages."""
    return json.dumps(value, ensure_ascii=False)


class ApiError(Exception):
    """An error answered with a `Status` body."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        return failure_status(self.code, self.reason, self.message, self.details)

    def response(self) -> web.Response:
        return status_response(self.status())


def failure_status(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
    }
    if reason:
        body["reason"] = reason
    if details is not None:
        body["details"] = {k: v for k, v in details.items() if v not in ("", None, [], 0)}
    body["code"] = code
    return body


def success_status(details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
    }
    if details is not None:
        body["details"] = {k: v for k, v in details.items() if v not in ("", None, [], 0)}
    return body


def status_response(status: dict[str, Any], code: int | None = None) -> web.Response:
    return web.Response(
        status=code if code is not None else int(status.get("code", 200)),
        body=json.dumps(status, separators=(",", ":")).encode() + b"\n",
        content_type="application/json",
        headers={"Cache-Control": "no-cache, private"},
    )


def _gr_details(group: str, resource: str, name: str) -> dict[str, Any]:
    return {"name": name, "group": group, "kind": resource}


def not_found(group: str, resource: str, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f"{group_resource(group, resource)} {go_quote(name)} not found",
        _gr_details(group, resource, name),
    )


def route_not_found() -> ApiError:
    """What the real server says for a path under /api or /apis that no resource serves."""
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def already_exists(group: str, resource: str, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f"{group_resource(group, resource)} {go_quote(name)} already exists",
        _gr_details(group, resource, name),
    )


def conflict(group: str, resource: str, name: str, why: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f"Operation cannot be fulfilled on {group_resource(group, resource)} "
        f"{go_quote(name)}: {why}",
        _gr_details(group, resource, name),
    )


MODIFIED = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def unauthorized(message: str = "Unauthorized") -> ApiError:
    return ApiError(401, "Unauthorized", message)


def forbidden(group: str, resource: str, name: str, why: str) -> ApiError:
    if not group and not resource:
        message = f"forbidden: {why}"
    elif not name:
        message = f"{group_resource(group, resource)} is forbidden: {why}"
    else:
        message = f"{group_resource(group, resource)} {go_quote(name)} is forbidden: {why}"
    return ApiError(403, "Forbidden", message, _gr_details(group, resource, name))


def method_not_supported(group: str, resource: str, action: str) -> ApiError:
    return ApiError(
        405,
        "MethodNotAllowed",
        f"{action} is not supported on resources of kind "
        f"{go_quote(group_resource(group, resource))}",
        {"group": group, "kind": resource},
    )


def unsupported_media_type(content_type: str, accepted: list[str]) -> ApiError:
    """The negotiation error of apiserver's handlers (415, reason UnsupportedMediaType)."""
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{', '.join(accepted)}",
    )


def not_acceptable(accepted: list[str]) -> ApiError:
    return ApiError(
        406,
        "NotAcceptable",
        f"only the following media types are accepted: {', '.join(accepted)}",
    )


def invalid(group: str, kind: str, name: str, causes: list[dict[str, str]]) -> ApiError:
    """`errors.NewInvalid`: causes are {"type", "message", "field"} (message without the field)."""
    qualified = f"{kind}.{group}" if group else kind
    texts = [f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes]
    if not texts:
        message = f"{qualified} {go_quote(name)} is invalid"
    elif len(texts) == 1:
        message = f"{qualified} {go_quote(name)} is invalid: {texts[0]}"
    else:
        message = f"{qualified} {go_quote(name)} is invalid: [{', '.join(texts)}]"
    return ApiError(
        422,
        "Invalid",
        message,
        {"name": name, "group": group, "kind": kind, "causes": causes},
    )


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def internal_error(message: str) -> ApiError:
    return ApiError(
        500,
        "InternalError",
        f"Internal error occurred: {message}",
        {"causes": [{"message": message}]},
    )
