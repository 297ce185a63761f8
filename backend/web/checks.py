"""What every route shares: JSON errors, the request body as a checked JSON object, the ``/predict`` body
checks, and whether the client wants HTML."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flask import Response, current_app, jsonify, request

from backend.service import RequestError, Service
from backend.settings import Settings

MAX_JSON_DEPTH = 64
#: where ``create_app`` keeps the service and the settings in ``app.extensions``
SERVICE, SETTINGS = "rubric_judge", "rubric_judge.settings"


def current_service() -> Service:
    """The app's ``Service`` (``create_app``)."""
    service: Service = current_app.extensions[SERVICE]
    return service


def current_settings() -> Settings:
    """The settings the app was created with (``create_app``)."""
    settings: Settings = current_app.extensions[SETTINGS]
    return settings


def wants_html() -> bool:
    """The client prefers an HTML page to JSON (a browser)."""
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def error(status: int, message: str) -> Response:
    """The JSON error every route answers: ``{"status", "error"}`` with that HTTP status."""
    response = jsonify({"status": status, "error": message})
    response.status_code = status
    return response


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, stopping at ``limit``."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def read_json_object() -> dict[str, Any]:
    """The request body as a JSON object, or a ``RequestError`` that says what is wrong with it."""
    raw = request.get_data(cache=True)
    if not raw:
        raise RequestError("the request body is empty; expected a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RequestError(f"the request body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise RequestError(f"expected a JSON object, got {type(body).__name__}")
    if _depth(body, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise RequestError(f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels")
    return body


def validate_predict(body: Mapping[str, Any], max_tasks: int) -> None:
    """A ``/predict`` body: a non-empty list of at most ``max_tasks`` task objects, each with a ``data`` object."""
    tasks = body.get("tasks")
    if tasks is None:
        raise RequestError('missing \'tasks\': expected {"tasks": [{"id": ..., "data": {...}}, ...]}')
    if not isinstance(tasks, list):
        raise RequestError(f"'tasks' must be a list, got {type(tasks).__name__}")
    if not tasks:
        raise RequestError("'tasks' is empty; send at least one task")
    if len(tasks) > max_tasks:
        raise RequestError(
            f"{len(tasks):,} tasks in one request; the limit is {max_tasks:,} (MAX_TASKS_PER_REQUEST)", 413
        )
    for index, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise RequestError(f"tasks[{index}] must be an object, got {type(task).__name__}")
        if "data" not in task:
            raise RequestError(f"tasks[{index}] has no 'data' object")
        if not isinstance(task["data"], dict):
            raise RequestError(f"tasks[{index}].data must be an object, got {type(task['data']).__name__}")
