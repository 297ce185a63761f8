"""The routes as blueprints, each thin: check the request, call ``backend.service.Service``, answer JSON.

``protocol``: what Label Studio calls (``/health``, ``/setup``, ``/predict``, ``/webhook``, ``/metrics``);
``admin``: versions, pre-annotation, jobs and status; ``reports``: the report pages and what to label next.
"""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request

from backend.reports.data import ReportError
from backend.reports.html import render_html, render_index, render_queue
from backend.web.checks import current_service, current_settings, error, read_json_object, validate_predict, wants_html

protocol = Blueprint("protocol", __name__)
admin = Blueprint("admin", __name__)
reports = Blueprint("reports", __name__)


@protocol.get("/")
@protocol.get("/health")
def health() -> Response:
    service, settings = current_service(), current_settings()
    # UP even without Redis: predictions are served from the disk copy of the active versions
    return jsonify(
        {
            "status": "UP",
            "model_class": "RubricJudge",
            "model_loaded": service.judge is not None,
            "base_model": settings.base_model,
            "model_name": service.registry.base_name,
            "default_rubric": settings.rubric,
            "redis": service.redis_status(),
        }
    )


@protocol.post("/setup")
def setup() -> Response:
    return jsonify(current_service().setup(read_json_object()))


@protocol.post("/predict")
def predict() -> Response:
    service = current_service()
    body = read_json_object()
    validate_predict(body, current_settings().max_tasks_per_request)
    budget = service.settings.predict_budget_s
    return jsonify(service.predict(body, deadline=None if budget is None else g.started + budget))


@protocol.post("/webhook")
def webhook() -> Response:
    return jsonify(current_service().webhook(read_json_object()))


@protocol.get("/metrics")
def metrics() -> Response:
    return jsonify({})


@admin.get("/versions")
def versions() -> Response:
    return jsonify(current_service().versions(request.args.get("project")))


@admin.post("/versions/activate")
def activate() -> Response:
    return jsonify(current_service().activate(read_json_object()))


@admin.post("/prelabel")
def prelabel() -> Response:
    answer = current_service().prelabel(read_json_object())
    response = jsonify(answer)
    response.status_code = 202 if answer["status"] == "enqueued" else 200
    return response


@admin.get("/jobs/<job_id>")
def job(job_id: str) -> Response:
    return jsonify(current_service().job(job_id))


@admin.get("/status")
def status() -> Response:
    return jsonify(current_service().status(request.args.get("project")))


@reports.get("/reports")
def reports_index() -> Response:
    index = current_service().reports_index()
    if wants_html():
        return Response(render_index(index), mimetype="text/html")
    return jsonify(index)


@reports.get("/reports/<name>")
def report(name: str) -> Response:
    as_json = name.endswith(".json")
    project = name[: -len(".json")] if as_json else name
    try:
        data = current_service().report(project)
    except ReportError as exc:
        return error(404, str(exc))
    if as_json:
        return jsonify(data)
    return Response(render_html(data), mimetype="text/html")


@reports.get("/reports/<name>/queue")
def label_queue(name: str) -> Response:
    raw = request.args.get("limit", "20")
    if not (raw.isascii() and raw.isdigit()):
        return error(400, f"limit={raw!r}: expected a positive integer")
    data = current_service().label_queue(name, int(raw))
    if wants_html():
        return Response(render_queue(data), mimetype="text/html")
    return jsonify(data)
