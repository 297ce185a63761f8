"""The soak loop: N /predict requests over loopback HTTP against the real app (tiny model), memory
before/after/peak. ``benchmarks/soak.py`` runs it with the full count; ``tests/test_soak.py`` with a smaller one.

The server (werkzeug, threaded) runs in this process, so the RSS measured is the backend's (plus a small
client). RSS is read from /proc/self/status: VmRSS now, VmHWM the peak since start. "before" is taken after
a warm-up (model loaded, first requests served, allocator settled), so growth measures leaks, not start-up.
"""

from __future__ import annotations

import gc
import platform
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: RSS may grow at most this much between "before" (after warm-up) and "after" (MiB).
GROWTH_BOUND_MIB = 50.0


def rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB, from /proc/self/status."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def build_app(model_dir: Path, work: Path) -> Any:
    from backend.core.rubric import load_all
    from backend.model.judge import Judge
    from backend.service import Service
    from backend.settings import Settings
    from backend.state.registry import Registry
    from backend.web.app import create_app

    settings = Settings.from_env(
        {},
        base_model=str(model_dir),
        model_dir=work / "models",
        rubric_dir=REPO / "rubric_configs",
        redis_url="redis://127.0.0.1:1/0",
        predict_batch_size=8,
        max_input_tokens=1024,
        log_level="WARNING",
    )
    judge = Judge.from_settings(settings)
    service = Service(
        settings, judge, Registry(settings.model_dir, judge.base_name, None), load_all(settings.rubric_dir)
    )
    return create_app(settings, service)


def run_soak(requests_total: int, model_dir: Path, threads: int = 4, warmup: int = 100) -> dict[str, Any]:
    """Serve ``warmup`` then ``requests_total`` /predict requests (1-4 tasks each); memory and throughput."""
    import logging

    import requests
    from werkzeug.serving import make_server

    from backend.core.labeling import label_config
    from backend.core.rubric import load_rubric
    from support.ls_bodies import QA_DATA, ls_task, predict_body

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    logging.getLogger("backend").setLevel(logging.WARNING)
    xml = label_config(load_rubric("qa-quality"))
    with tempfile.TemporaryDirectory() as work:
        app = build_app(model_dir, Path(work))
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_port}/predict"
        local = threading.local()
        statuses: dict[int, int] = {}
        lock = threading.Lock()

        def one(i: int) -> None:
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            tasks = [
                ls_task(i * 4 + k, {**QA_DATA[(i + k) % 3], "answer": f"{QA_DATA[(i + k) % 3]['answer']} #{i}"})
                for k in range(1 + i % 4)
            ]
            response = session.post(url, json=predict_body(tasks, xml), timeout=60)
            ok = response.status_code == 200 and len(response.json()["results"]) == len(tasks)
            with lock:
                statuses[response.status_code if ok else -response.status_code] = (
                    statuses.get(response.status_code if ok else -response.status_code, 0) + 1
                )

        try:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(one, range(warmup)))
            gc.collect()
            before, peak_before = rss_mib()
            statuses.clear()
            started = time.monotonic()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(one, range(warmup, warmup + requests_total)))
            seconds = time.monotonic() - started
            gc.collect()
            after, peak = rss_mib()
        finally:
            server.shutdown()
            thread.join(timeout=5)
    return {
        "requests": requests_total,
        "warmup_requests": warmup,
        "threads": threads,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(seconds, 1),
        "requests_per_s": round(requests_total / seconds, 1),
        "rss_before_mib": round(before, 1),
        "rss_after_mib": round(after, 1),
        "rss_growth_mib": round(after - before, 1),
        "peak_rss_before_mib": round(peak_before, 1),
        "peak_rss_mib": round(peak, 1),
        "growth_bound_mib": GROWTH_BOUND_MIB,
        "within_bound": after - before <= GROWTH_BOUND_MIB,
        "model": "support/tiny_model.py (random tiny Qwen3, 2 layers)",
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
