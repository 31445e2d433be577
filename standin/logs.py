"""`pods/<name>/log`: a deterministic synthetic log.

The initial lines come from the pod annotation `standin.herdgate.dev/log-<container>` or
`standin.herdgate.dev/log` (newline separated), or are `line 1` … `line 5`. With `follow=true`
one more line (`line N+1`, …) is written every 0.2 s until the client disconnects or the pod
is deleted. Timestamps (`timestamps=true`) of the initial lines are the pod's creation time
plus one second per line.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .requestinfo import parse_bool
from .status import bad_request
from .tables import parse_time

LOG_ANNOTATION = "standin.herdgate.dev/log"
DEFAULT_LINES = 5
FOLLOW_INTERVAL = 0.2


def pick_container(pod: dict[str, Any], requested: str) -> str:
    """The container a log/exec/attach request means, with the real server's errors."""
    spec = pod.get("spec") or {}
    names: list[str] = [c.get("name", "") for c in spec.get("containers") or []]
    init = [c.get("name", "") for c in spec.get("initContainers") or []]
    ephemeral = [c.get("name", "") for c in spec.get("ephemeralContainers") or []]
    pod_name = (pod.get("metadata") or {}).get("name", "")
    if not requested:
        if len(names) == 1:
            return names[0]
        message = (
            f"a container name must be specified for pod {pod_name}, "
            f"choose one of: [{' '.join(names)}]"
        )
        if init:
            message += f" or one of the init containers: [{' '.join(init)}]"
        if ephemeral:
            message += f" or one of the ephemeral containers: [{' '.join(ephemeral)}]"
        raise bad_request(message)
    if requested not in names + init + ephemeral:
        raise bad_request(f"container {requested} is not valid for pod {pod_name}")
    return requested


def initial_lines(pod: dict[str, Any], container: str) -> list[str]:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(f"{LOG_ANNOTATION}-{container}", annotations.get(LOG_ANNOTATION))
    if text is None:
        return [f"line {i}" for i in range(1, DEFAULT_LINES + 1)]
    return text.split("\n") if text else []


def _stamp(t: datetime.datetime) -> str:
    """Go's RFC3339Nano (trailing zeros of the fraction trimmed)."""
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{t.microsecond:06d}000".rstrip("0")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


async def serve_logs(
    request: web.Request,
    pod: dict[str, Any],
    still_there: Callable[[], bool],
) -> web.StreamResponse:
    q = request.query
    container = pick_container(pod, q.get("container", ""))
    if parse_bool(q.get("previous")):
        raise bad_request(
            f'previous terminated container "{container}" in pod '
            f'"{(pod.get("metadata") or {}).get("name", "")}" not found'
        )
    follow = parse_bool(q.get("follow"))
    timestamps = parse_bool(q.get("timestamps"))
    tail = q.get("tailLines")
    limit_bytes = q.get("limitBytes")
    remaining = int(limit_bytes) if limit_bytes and limit_bytes.isdigit() else None

    created = parse_time(
        (pod.get("metadata") or {}).get("creationTimestamp")
    ) or datetime.datetime.now(datetime.UTC)
    lines = initial_lines(pod, container)
    stamped = [(created + datetime.timedelta(seconds=i + 1), line) for i, line in enumerate(lines)]
    if tail is not None:
        try:
            n = int(tail)
        except ValueError as exc:
            raise bad_request(f"invalid tailLines: {tail}") from exc
        stamped = stamped[-n:] if n > 0 else []

    resp = web.StreamResponse(
        status=200, headers={"Content-Type": "text/plain", "Cache-Control": "no-cache, private"}
    )
    resp.enable_chunked_encoding()
    await resp.prepare(request)

    async def emit(t: datetime.datetime, line: str) -> bool:
        nonlocal remaining
        data = (f"{_stamp(t)} {line}\n" if timestamps else f"{line}\n").encode()
        if remaining is not None:
            data = data[:remaining]
            remaining -= len(data)
        if data:
            await resp.write(data)
        return remaining is None or remaining > 0

    try:
        going = True
        for t, line in stamped:
            going = await emit(t, line)
            if not going:
                break
        n = len(lines)
        while follow and going:
            await asyncio.sleep(FOLLOW_INTERVAL)
            if request.transport is None or request.transport.is_closing() or not still_there():
                break
            n += 1
            going = await emit(datetime.datetime.now(datetime.UTC), f"line {n}")
        await resp.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass
    return resp
