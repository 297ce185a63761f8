"""The Flask 3 application: Label Studio's ML backend protocol, auth and request validation.

Routes are thin: they validate the request and call ``backend.service.Service``. The model is loaded once,
when the app is created (gunicorn ``--preload`` or the first worker start), never per request.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from backend.service import RequestError, Service, build_service
from backend.settings import Settings
from backend.state.registry import RegistryError

log = logging.getLogger(__name__)

MAX_JSON_DEPTH = 64


def _wants_html() -> bool:
    """The client prefers an HTML page to JSON (a browser)."""
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def _error(status: int, message: str) -> Response:
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


def create_app(settings: Settings | None = None, service: Service | None = None) -> Flask:
    """Build the app. Without ``service``, loads the judge from ``settings`` (once, here)."""
    settings = settings or Settings.from_env()
    if service is None:
        service = build_service(settings)
    app = Flask("rubric_judge")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions["rubric_judge"] = service

    @app.before_request
    def _authenticate() -> Response | None:
        g.started = time.monotonic()
        if request.path == "/webhook" and settings.webhook_secret:
            # constant-time comparison; the secret opens /webhook only
            given = request.headers.get("X-Webhook-Secret", "")
            if hmac.compare_digest(given.encode("utf-8", "replace"), settings.webhook_secret.encode()):
                return None
            if not settings.auth_enabled:
                log.info("POST /webhook -> 401: missing or wrong X-Webhook-Secret")
                return _error(
                    401, "authentication required: send the header X-Webhook-Secret with the backend's WEBHOOK_SECRET"
                )
        elif not settings.auth_enabled:
            return None
        auth = request.authorization
        user_ok = pass_ok = False
        if auth is not None and auth.type == "basic":
            # both compared every time, in constant time: no early exit tells which one was wrong
            user_ok = hmac.compare_digest(
                (auth.username or "").encode("utf-8", "replace"), settings.basic_auth_user.encode()
            )
            pass_ok = hmac.compare_digest(
                (auth.password or "").encode("utf-8", "replace"), settings.basic_auth_pass.encode()
            )
        if user_ok and pass_ok:
            return None
        log.info("%s %s -> 401: missing or wrong credentials", request.method, request.path)
        response = _error(
            401, "authentication required: send HTTP basic auth with the backend's BASIC_AUTH_USER/BASIC_AUTH_PASS"
        )
        response.headers["WWW-Authenticate"] = 'Basic realm="rubric-judge"'
        return response

    @app.errorhandler(RequestError)
    def _request_error(exc: RequestError) -> Response:
        log.info("%s %s -> %d: %s", request.method, request.path, exc.status, exc.message)
        response = _error(exc.status, exc.message)
        if exc.status == 503:
            response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(RegistryError)
    def _registry_error(exc: RegistryError) -> Response:
        return _error(400, str(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            message = f"request body larger than {settings.max_request_bytes:,} bytes (MAX_REQUEST_BYTES)"
        else:
            message = exc.description or exc.name
        return _error(status, message)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the backend log")

    @app.get("/")
    @app.get("/health")
    def health() -> Response:
        judge = service.judge
        # UP even without Redis: predictions are served from the disk copy of the active versions
        return jsonify(
            {
                "status": "UP",
                "model_class": "RubricJudge",
                "model_loaded": judge is not None,
                "base_model": settings.base_model,
                "model_name": service.registry.base_name,
                "default_rubric": settings.rubric,
                "redis": service.redis_status(),
            }
        )

    @app.post("/setup")
    def setup() -> Response:
        return jsonify(service.setup(read_json_object()))

    @app.post("/predict")
    def predict() -> Response:
        body = read_json_object()
        validate_predict(body, settings.max_tasks_per_request)
        budget = service.settings.predict_budget_s
        return jsonify(service.predict(body, deadline=None if budget is None else g.started + budget))

    @app.get("/versions")
    def versions() -> Response:
        return jsonify(service.versions(request.args.get("project")))

    @app.post("/versions/activate")
    def activate() -> Response:
        return jsonify(service.activate(read_json_object()))

    @app.post("/webhook")
    def webhook() -> Response:
        return jsonify(service.webhook(read_json_object()))

    @app.post("/prelabel")
    def prelabel() -> Response:
        answer = service.prelabel(read_json_object())
        response = jsonify(answer)
        response.status_code = 202 if answer["status"] == "enqueued" else 200
        return response

    @app.get("/jobs/<job_id>")
    def job(job_id: str) -> Response:
        return jsonify(service.job(job_id))

    @app.get("/status")
    def status() -> Response:
        return jsonify(service.status(request.args.get("project")))

    @app.get("/reports")
    def reports_index() -> Response:
        from backend.reports.data import projects_index
        from backend.reports.html import render_index

        index = projects_index(service.registry)
        if _wants_html():
            return Response(render_index(index), mimetype="text/html")
        return jsonify(index)

    @app.get("/reports/<name>")
    def report(name: str) -> Response:
        from backend.reports.data import ReportError, project_report
        from backend.reports.html import render_html

        as_json = name.endswith(".json")
        project = name[: -len(".json")] if as_json else name
        try:
            data = project_report(
                service.registry,
                project,
                service.prefill_policy,
                service.settings.label_studio_url,
            )
        except ReportError as exc:
            return _error(404, str(exc))
        if as_json:
            return jsonify(data)
        return Response(render_html(data), mimetype="text/html")

    @app.get("/reports/<name>/queue")
    def label_queue(name: str) -> Response:
        from backend.reports.html import render_queue

        raw = request.args.get("limit", "20")
        if not (raw.isascii() and raw.isdigit()):
            return _error(400, f"limit={raw!r}: expected a positive integer")
        data = service.label_queue(name, int(raw))
        if _wants_html():
            return Response(render_queue(data), mimetype="text/html")
        return jsonify(data)

    @app.get("/metrics")
    def metrics() -> Response:
        return jsonify({})

    return app
