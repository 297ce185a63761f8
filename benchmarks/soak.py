"""Soak: N /predict requests over loopback HTTP against the real app (tiny model), memory before/after/peak.

    .venv/bin/python -m benchmarks.soak --requests 10000          # writes benchmarks/SOAK.md and SOAK.json

The server (werkzeug, threaded) runs in this process, so the RSS measured is the backend's (plus a small
client). RSS is read from /proc/self/status: VmRSS now, VmHWM the peak since start. "before" is taken after
a warm-up (model loaded, first requests served, allocator settled), so growth measures leaks, not start-up.
``tests/test_soak.py`` runs the same loop with a smaller count (marker ``soak``).
"""

from __future__ import annotations

import argparse
import gc
import json
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
    from tests.fixtures.ls_bodies import QA_DATA, ls_task, predict_body

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
        "model": "tests/tiny_model.py (random tiny Qwen3, 2 layers)",
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }


def write_report(result: dict[str, Any], out: Path) -> None:
    (out / "SOAK.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    rows = "\n".join(f"| {k} | {v} |" for k, v in result.items())
    (out / "SOAK.md").write_text(
        "# Soak: /predict over loopback HTTP\n\n"
        f"`.venv/bin/python -m benchmarks.soak --requests {result['requests']}` on "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}: the real app and the tiny test model, a threaded werkzeug "
        f"server in the measuring process, {result['threads']} client threads, 1-4 tasks per request. RSS from "
        "/proc/self/status (VmRSS, VmHWM = peak); *before* is taken after "
        f"{result['warmup_requests']} warm-up requests. Bound: growth <= {GROWTH_BOUND_MIB:.0f} MiB.\n\n"
        "| measure | value |\n|---|---|\n" + rows + "\n",
        encoding="utf-8",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--out", default=str(REPO / "benchmarks"))
    args = parser.parse_args()
    from tests.tiny_model import build_tiny_model

    model_dir = build_tiny_model(Path(tempfile.gettempdir()) / "rubric-judge-soak-tiny-qwen3")
    result = run_soak(args.requests, model_dir, threads=args.threads)
    print(json.dumps(result, indent=1))
    write_report(result, Path(args.out))
    return 0 if result["within_bound"] and set(result["statuses"]) == {"200"} else 1


if __name__ == "__main__":
    raise SystemExit(main())
