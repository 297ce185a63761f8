"""The Flask 3 application: Label Studio's ML backend protocol, auth and request validation.

Routes are thin (``backend.web.routes``): they validate the request and call ``backend.service.Service``. The
model is loaded once, when the app is created (gunicorn ``--preload`` or the first worker start), never per
request.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from backend.service import RequestError, Service, build_service
from backend.settings import Settings
from backend.state.registry import RegistryError
from backend.web.auth import authenticate
from backend.web.checks import SERVICE, SETTINGS, error
from backend.web.routes import admin, protocol, reports

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, service: Service | None = None) -> Flask:
    """Build the app. Without ``service``, loads the judge from ``settings`` (once, here)."""
    settings = settings or Settings.from_env()
    if service is None:
        service = build_service(settings)
    app = Flask("rubric_judge")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions[SERVICE] = service
    app.extensions[SETTINGS] = settings

    @app.before_request
    def _authenticate() -> Response | None:
        g.started = time.monotonic()
        return authenticate(settings)

    _register_errors(app, settings)
    for blueprint in (protocol, admin, reports):
        app.register_blueprint(blueprint)
    return app


def _register_errors(app: Flask, settings: Settings) -> None:
    """Every error answers JSON ``{"status", "error"}``."""

    @app.errorhandler(RequestError)
    def _request_error(exc: RequestError) -> Response:
        log.info("%s %s -> %d: %s", request.method, request.path, exc.status, exc.message)
        response = error(exc.status, exc.message)
        if exc.status == 503:
            response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(RegistryError)
    def _registry_error(exc: RegistryError) -> Response:
        return error(400, str(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            message = f"request body larger than {settings.max_request_bytes:,} bytes (MAX_REQUEST_BYTES)"
        else:
            message = exc.description or exc.name
        return error(status, message)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error(500, f"internal error ({type(exc).__name__}); see the backend log")
