"""The Redis connection and the one place that spells rubric-judge's Redis key names.

Every key of rubric-judge is ``rubric-judge:<base>:<what>[:<suffix>]``, where ``<base>`` is the short base
model name (``model_loader.short_model_name``), so two base models never share state. RQ keeps its own keys.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from backend.settings import Settings

KEY_PREFIX = "rubric-judge"


def redis_key(base_name: str, what: str, suffix: str = "") -> str:
    """``rubric-judge:<base>:<what>`` plus ``:<suffix>`` when one is given (a project id, a hash)."""
    return f"{KEY_PREFIX}:{base_name}:{what}" + (f":{suffix}" if suffix else "")


def redis_client(settings: Settings) -> Any:
    """A Redis client with short timeouts and no retries, so an outage never blocks a request for long."""
    return Redis.from_url(
        settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
