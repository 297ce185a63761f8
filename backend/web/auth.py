"""Authentication before every route: HTTP basic auth (``BASIC_AUTH_*``) and, for ``/webhook``, the
``X-Webhook-Secret`` header (``WEBHOOK_SECRET``); both compared in constant time."""

from __future__ import annotations

import hmac
import logging

from flask import Response, request

from backend.settings import Settings
from backend.web.checks import error

log = logging.getLogger(__name__)


def _same(given: str | None, expected: str) -> bool:
    return hmac.compare_digest((given or "").encode("utf-8", "replace"), expected.encode())


def authenticate(settings: Settings) -> Response | None:
    """None when the request may pass, else the 401 to answer."""
    if request.path == "/webhook" and settings.webhook_secret:
        # constant-time comparison; the secret opens /webhook only
        if _same(request.headers.get("X-Webhook-Secret", ""), settings.webhook_secret):
            return None
        if not settings.auth_enabled:
            log.info("POST /webhook -> 401: missing or wrong X-Webhook-Secret")
            return error(
                401, "authentication required: send the header X-Webhook-Secret with the backend's WEBHOOK_SECRET"
            )
    elif not settings.auth_enabled:
        return None
    auth = request.authorization
    user_ok = pass_ok = False
    if auth is not None and auth.type == "basic":
        # both compared every time, in constant time: no early exit tells which one was wrong
        user_ok = _same(auth.username, settings.basic_auth_user)
        pass_ok = _same(auth.password, settings.basic_auth_pass)
    if user_ok and pass_ok:
        return None
    log.info("%s %s -> 401: missing or wrong credentials", request.method, request.path)
    response = error(
        401, "authentication required: send HTTP basic auth with the backend's BASIC_AUTH_USER/BASIC_AUTH_PASS"
    )
    response.headers["WWW-Authenticate"] = 'Basic realm="rubric-judge"'
    return response
