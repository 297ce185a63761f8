"""The fault-injection hook of the tests (``FAULT_PAUSE_AT``): a named point where a training job sleeps, so
that a test can stop or kill the worker exactly there."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from backend.settings import Settings

log = logging.getLogger(__name__)


def fault_point(settings: Settings, name: str, progress: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Test hook (FAULT_PAUSE_AT): sleep at the named point so a test can SIGKILL the worker there."""
    if settings.fault_pause_at != name:
        return
    log.warning("FAULT_PAUSE_AT=%s: pausing %.0f s", name, settings.fault_pause_seconds)
    if progress:
        progress({"stage": f"paused at {name}", "pid": os.getpid()})
    time.sleep(settings.fault_pause_seconds)
