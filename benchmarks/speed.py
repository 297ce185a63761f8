"""Speed benchmark: the judge's fast scoring paths against a naive baseline, HTTP latency, training throughput,
and /predict latency while a training job runs beside the backend.

    python benchmarks/speed.py                 # everything below, writes SPEED.md and SPEED.json
    python benchmarks/speed.py --only judge    # one part: judge | http | train | contention
    python benchmarks/speed.py --quick         # fewer tasks and requests (a smoke run, not for the record)

Parts:

* **contention**: p50 of 10-task ``/predict`` requests and one 30-task request with no training, with a LoRA
  training job beside the backend at ``WORKER_NICE=10`` on one thread (every core but one here), and with that
  job at full priority on every thread (the behaviour before those settings).
* **judge**: tasks/s of ``Judge.score`` on 64 ``qa-quality`` tasks of realistic length (a SAMSum dialogue as
  the context, a question about it and a system summary as the answer, read from ``../shared/data`` at run
  time), against a **naive baseline in the same run**: one ``model.generate`` per task with a free-text
  prompt, greedy decoding and a regex parse, as most LLM-judge code does. The ratio and the share of naive
  outputs that failed to parse are reported, then each fast path is switched off alone (ablation). Labels of
  every judge configuration are checked to be equal to the plain path's.
* **http**: p50/p99 latency of ``/health``, ``/setup``, ``/webhook`` and ``/predict`` (1 task) under 1 and 50
  concurrent clients against ``rubric-judge serve`` on loopback with the model loaded, and the wall time of
  one 100-task ``/predict``.
* **train**: tokens/s, padding share and peak memory of LoRA training in fp32, under bf16 autocast and on a
  4-bit NF4 base (QLoRA), each in its own process so that its peak memory is its own.

The embedded model (SmolLM2-135M) is used unless ``--base-model`` says otherwise; on a GPU machine pass
``--base-model Qwen/Qwen3-1.7B --quantization 4bit`` for the paper's setting.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.core.rubric import load_rubric  # noqa: E402
from backend.settings import Settings  # noqa: E402
from support.naive import naive_score  # noqa: E402

log = logging.getLogger("benchmarks.speed")

SPEED_JSON = REPO / "benchmarks" / "SPEED.json"
SPEED_MD = REPO / "benchmarks" / "SPEED.md"
DEFAULT_DATA = REPO.parent / "shared" / "data"
QUESTIONS = (
    "What happened in this conversation?",
    "What did the people in the chat agree on?",
    "Summarise the dialogue in one or two sentences.",
    "What is the main point of the conversation?",
)


# --------------------------------------------------------------------------------------------------
# tasks


def qa_tasks(data_dir: Path, n: int, offset: int = 0) -> list[dict[str, str]]:
    """``n`` qa-quality tasks built from DialSummEval rows: dialogue as context, a question, a summary as the
    answer. Deterministic (rows in file order, every 7th system so that dialogues vary)."""
    path = data_dir / "dialsummeval" / "ratings.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    picked = rows[offset::7][:n]
    if len(picked) < n:
        raise ValueError(f"{path} has too few rows for {n} tasks")
    return [
        {"context": r["data"]["dialogue"], "question": QUESTIONS[i % len(QUESTIONS)], "answer": r["data"]["summary"]}
        for i, r in enumerate(picked)
    ]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb(pid: int | None = None) -> float:
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------------
# part 1: judge throughput and ablation


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[Any, float]:
    """The result of the last call and the best wall time of ``repeat`` calls."""
    best = float("inf")
    value = None
    for _ in range(repeat):
        started = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - started)
    return value, best


def judge_part(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from backend.model.judge import Judge
    from backend.model.model_loader import load_base_model

    rubric = load_rubric("qa-quality", settings.rubric_dir)
    n = 16 if args.quick else 64
    tasks = qa_tasks(Path(args.data_dir), n)
    model, tokenizer, name = load_base_model(settings)
    lengths = [len(Judge(model, tokenizer, name, settings).prompt_ids(rubric, t)) for t in tasks]
    log.info(
        "%d qa-quality tasks, prompt tokens mean %.0f, min %d, max %d",
        n,
        statistics.mean(lengths),
        min(lengths),
        max(lengths),
    )

    configs = ablation_configs(settings)
    results: dict[str, Any] = {}
    reference: list[dict[str, str]] = []

    def measure(label: str, judge: Any, overrides: dict[str, Any]) -> None:
        """Time ``judge`` on all tasks after a warm-up; compare its labels with the first configuration's."""
        judge.score(rubric, tasks[:2])  # warm-up (and the prefix cache, where it is on)
        scores, seconds = timed(lambda: judge.score(rubric, tasks))
        labels = [s.labels for s in scores]
        if not reference:  # the first configuration (all fast paths) is the reference
            reference.extend(labels)
        same = sum(1 for a, b in zip(labels, reference, strict=True) if a == b)
        results[label] = {
            "seconds": round(seconds, 2),
            "tasks_per_s": round(n / seconds, 3),
            "same_labels_as_fast": f"{same}/{n}",
            "overrides": overrides,
        }
        log.info(
            "judge %-32s %.2f s  %.3f tasks/s  labels equal to the full fast path: %d/%d",
            label,
            seconds,
            n / seconds,
            same,
            n,
        )

    for label, overrides in configs:
        measure(
            label,
            Judge(model, tokenizer, name, Settings.from_env(**{**settings_overrides(args), **overrides})),
            overrides,
        )

    naive_n = 8 if args.quick else min(n, args.naive_tasks)
    naive = run_naive(model, tokenizer, rubric, tasks[:naive_n], "fp32")
    fast = results[configs[0][0]]
    out = {
        "tasks": n,
        "prompt_tokens": {"mean": round(statistics.mean(lengths)), "min": min(lengths), "max": max(lengths)},
        "judge": results,
        "naive": naive,
        "ratio_vs_naive": round(fast["tasks_per_s"] / naive["tasks_per_s"], 1),
    }
    if settings.model_precision != "bf16":  # the same two measurements with bf16 weights (MODEL_PRECISION=bf16)
        del model
        bf16_settings = Settings.from_env(**{**settings_overrides(args), "model_precision": "bf16"})
        model, tokenizer, name = load_base_model(bf16_settings)
        label = "all fast paths, bf16 weights (MODEL_PRECISION=bf16)"
        measure(label, Judge(model, tokenizer, name, bf16_settings), {"model_precision": "bf16"})
        out["naive_bf16"] = run_naive(model, tokenizer, rubric, tasks[:naive_n], "bf16")
        out["ratio_bf16_vs_naive_fp32"] = round(results[label]["tasks_per_s"] / naive["tasks_per_s"], 1)
        out["ratio_bf16_vs_naive_bf16"] = round(results[label]["tasks_per_s"] / out["naive_bf16"]["tasks_per_s"], 1)
    out["peak_rss_mb"] = round(peak_rss_mb())
    return out


def run_naive(
    model: Any, tokenizer: Any, rubric: Any, tasks: Sequence[Mapping[str, str]], precision: str
) -> dict[str, Any]:
    """The naive baseline (``support/naive.py``) on ``tasks``: one greedy ``generate`` per task, regex parse."""
    max_new = 8 * len(rubric.dimensions)
    naive_results, seconds = timed(lambda: naive_score(model, tokenizer, rubric, tasks, max_new_tokens_per_dimension=8))
    failed = sum(1 for r in naive_results if r.parse_failed)
    n = len(tasks)
    log.info(
        "naive generate+regex (%s): %.2f s for %d tasks, %.3f tasks/s, %d/%d failed to parse",
        precision,
        seconds,
        n,
        n / seconds,
        failed,
        n,
    )
    return {
        "tasks": n,
        "seconds": round(seconds, 2),
        "tasks_per_s": round(n / seconds, 3),
        "precision": precision,
        "parse_failures": failed,
        "parse_failure_share": round(failed / n, 3),
        "max_new_tokens": max_new,
        "example_outputs": [r.text for r in naive_results][:3],
    }


def ablation_configs(settings: Settings) -> list[tuple[str, dict[str, Any]]]:
    """The full fast path first, then each fast path switched off alone, then all of them off."""
    switches = [
        (name, key)
        for name, key in (("prefix KV cache", "prefix_cache"), ("length batching", "length_batching"))
        if hasattr(settings, key)
    ]
    batch = settings.predict_batch_size
    configs: list[tuple[str, dict[str, Any]]] = [("all fast paths", {})]
    configs += [(f"without {name}", {key: False}) for name, key in switches]
    configs.append(("without batching (1 task per pass)", {"predict_batch_size": 1}))
    configs.append(
        ("plain (all off, 1 task per pass)", {**{key: False for _, key in switches}, "predict_batch_size": 1})
    )
    log.info("ablation: %s (batch size %d)", ", ".join(c[0] for c in configs), batch)
    return configs


# --------------------------------------------------------------------------------------------------
# part 2: HTTP latency


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(args: argparse.Namespace, port: int, env_extra: Mapping[str, str]) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "BASE_MODEL": args.base_model,
        "QUANTIZATION": args.quantization,
        "LOG_LEVEL": "WARNING",
        **env_extra,
    }
    proc = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "rubric-judge"), "serve", "--threads", "4"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    import requests

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not answer /health within 300 s")


def latency(url: str, make_request: Callable[[int], tuple[str, Any]], clients: int, total: int) -> dict[str, Any]:
    """Send ``total`` requests from ``clients`` threads, each over its own keep-alive connection; p50/p99 in
    ms. The client is ``http.client`` (not ``requests``): on a 2-core machine the load generator shares the
    CPU with the server, and a lighter client leaves more of it to the server being measured."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    times: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def work() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                method, body = make_request(i)
                payload = json.dumps(body).encode() if body is not None else None
                headers = {"Content-Type": "application/json"} if payload is not None else {}
                started = time.perf_counter()
                conn.request(method, parts.path, body=payload, headers=headers)
                response = conn.getresponse()
                text = response.read()
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    times.append(elapsed)
                    if response.status >= 400:
                        errors.append(f"{response.status} {text[:100]!r}")
        finally:
            conn.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(work) for _ in range(clients)]:
            future.result()
    wall = time.perf_counter() - started
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(round(q * (len(times) - 1))))]  # noqa: E731
    return {
        "requests": len(times),
        "clients": clients,
        "p50_ms": round(pick(0.5), 1),
        "p99_ms": round(pick(0.99), 1),
        "max_ms": round(times[-1], 1),
        "requests_per_s": round(len(times) / wall, 1),
        "errors": len(errors),
        "first_errors": errors[:3],
    }


def http_part(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from backend.core.labeling import label_config

    rubric = load_rubric("qa-quality", settings.rubric_dir)
    config = label_config(rubric)
    n_tasks = 20 if args.quick else 200
    tasks = qa_tasks(Path(args.data_dir), n_tasks, offset=3)
    redis_url = args.redis_url
    port = free_port()
    # a high threshold: webhook events are counted, never enqueue training
    env = {"REDIS_URL": redis_url, "TRAIN_MIN_NEW_ANNOTATIONS": "1000000000", "PREDICTION_CACHE": "false"}
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {}
    with serving(args, port, env) as proc:
        out["server"] = {"threads": 4, "rss_mb_loaded": round(current_rss_mb(proc.pid))}
        setup_body = {"project": "9001", "schema": config, "hostname": "http://localhost:8080", "access_token": "x"}
        webhook_body = {"action": "ANNOTATION_CREATED", "project": {"id": 9001}, "annotation": {"id": 1}}
        small = 100 if args.quick else 1000
        routes: dict[str, tuple[str, Callable[[int], tuple[str, Any]], int]] = {
            "/health": ("/health", lambda i: ("GET", None), small),
            "/setup": ("/setup", lambda i: ("POST", setup_body), small),
            "/webhook": ("/webhook", lambda i: ("POST", webhook_body), small),
            "/predict (1 task)": (
                "/predict",
                lambda i: (
                    "POST",
                    {"tasks": [{"id": i, "data": tasks[i % len(tasks)]}], "label_config": config, "project": "9001"},
                ),
                0,
            ),
        }
        for name, (path, make, count) in routes.items():
            for clients in (1, 50):
                total = count or (10 if clients == 1 else 100)
                if args.quick and not count:
                    total = 4 if clients == 1 else 20
                result = latency(base + path, make, clients, total)
                out[f"{name} x{clients}"] = result
                log.info(
                    "%-18s %2d client(s): p50 %.1f ms, p99 %.1f ms, %d requests, %d errors",
                    name,
                    clients,
                    result["p50_ms"],
                    result["p99_ms"],
                    result["requests"],
                    result["errors"],
                )
        big = 20 if args.quick else 100
        body = {
            "tasks": [
                {"id": 10_000 + i, "data": t} for i, t in enumerate(qa_tasks(Path(args.data_dir), big, offset=5))
            ],
            "label_config": config,
            "project": "9001",
        }
        import requests

        started = time.perf_counter()
        response = requests.post(base + "/predict", json=body, timeout=600)
        seconds = time.perf_counter() - started
        results = response.json().get("results", [])
        out[f"/predict {big} tasks"] = {
            "seconds": round(seconds, 1),
            "status": response.status_code,
            "results": len(results),
            "under_100_s": seconds < 100,
        }
        log.info(
            "/predict with %d tasks: %.1f s (status %d, %d results)", big, seconds, response.status_code, len(results)
        )
        out["server"]["rss_mb_after"] = round(current_rss_mb(proc.pid))
    # the light routes again with two gunicorn processes (one torch thread each): Python serves one request
    # at a time per process, so on 2 cores a second process is what raises the request rate
    with serving(args, port, {**env, "WORKERS": "2", "TORCH_THREADS": "1"}):
        for name in ("/health", "/setup", "/webhook"):
            path, make, count = routes[name]
            result = latency(base + path, make, 50, count)
            out[f"{name} [WORKERS=2] x50"] = result
            log.info("%-18s 50 clients, 2 workers: p50 %.1f ms, p99 %.1f ms", name, result["p50_ms"], result["p99_ms"])
    return out


@contextlib.contextmanager
def serving(args: argparse.Namespace, port: int, env: Mapping[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``rubric-judge serve`` on ``port`` for the block; stopped and its Redis keys removed afterwards."""
    proc = start_server(args, port, env)
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        _flush_benchmark_keys(env["REDIS_URL"])


def _flush_benchmark_keys(redis_url: str) -> None:
    from redis import Redis

    try:
        client = Redis.from_url(redis_url, socket_timeout=2)
        for key in client.scan_iter(match="*9001*"):
            client.delete(key)
    except Exception as exc:  # the benchmark's figures are written either way
        log.warning("could not clean the benchmark's Redis keys: %s", exc)


# --------------------------------------------------------------------------------------------------
# part 3: training throughput (each configuration in its own process)


def train_once(args: argparse.Namespace) -> dict[str, Any]:
    """One LoRA epoch on DialSummEval-based summary-quality examples; called in a child process."""
    from backend.model.model_loader import load_base_model
    from worker.dataset import targets_for
    from worker.source import read_file
    from worker.train import TrainConfig, train_lora

    settings = Settings.from_env(**settings_overrides(args))
    rubric = load_rubric("summary-quality", settings.rubric_dir)
    records = read_file(Path(args.data_dir) / "dialsummeval" / "ratings.jsonl", rubric)[: args.train_examples]
    targets = targets_for(rubric, records, "consensus")
    before = current_rss_mb()
    model, tokenizer, _ = load_base_model(settings)
    loaded = current_rss_mb()
    config = TrainConfig.build(
        rubric,
        {
            "epochs": 1,
            "batch_size": 8,
            "precision": args.precision,
            "augment": False,
            "share_prefix": not args.no_share_prefix,
        },
    )
    result = train_lora(model, tokenizer, rubric, targets, [], config, quantized=args.quantization != "none")
    return {
        "quantization": args.quantization,
        "precision": result.precision,
        "examples": len(targets),
        "model_precision": args.model_precision,
        "share_prefix": config.share_prefix,
        "micro_batch_size": config.micro_batch_size,
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "tokens": result.tokens,
        "computed_tokens": result.computed_tokens,
        "tokens_per_s": round(result.tokens / result.seconds, 1),
        "padding_share": result.padding_share,
        "rss_mb_before_load": round(before),
        "rss_mb_loaded": round(loaded),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def train_part(args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    examples = 16 if args.quick else args.train_examples
    runs = [
        ("none", "fp32", True, "auto"),
        ("none", "bf16", True, "auto"),
        ("none", "bf16", False, "auto"),
        ("none", "bf16", True, "bf16"),
        ("4bit", "fp32", True, "auto"),
        ("4bit", "bf16", True, "auto"),
    ]
    for quant, precision, shared, weights in runs:
        key = (
            f"{quant}/{precision}"
            + ("" if shared else "/no-shared-prefix")
            + ("/bf16-weights" if weights == "bf16" else "")
        )
        command = [
            sys.executable,
            __file__,
            "--only",
            "_train",
            "--quantization",
            quant,
            "--precision",
            precision,
            "--train-examples",
            str(examples),
            "--base-model",
            args.base_model,
            "--data-dir",
            args.data_dir,
            "--model-precision",
            weights,
        ]
        command += [] if shared else ["--no-share-prefix"]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            out[key] = {"error": proc.stderr[-1500:]}
            log.warning("training %s failed: %s", key, proc.stderr[-500:])
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        out[key] = result
        log.info(
            "training %s: %.1f tokens/s, padding %.1f%%, peak RSS %d MB",
            key,
            result["tokens_per_s"],
            100 * result["padding_share"],
            result["peak_rss_mb"],
        )
    return out


# --------------------------------------------------------------------------------------------------
# part 4: serving while a training job runs on the same machine


def trainer_once(args: argparse.Namespace) -> None:
    """A LoRA training job as the RQ worker runs it (WORKER_NICE, WORKER_THREADS, WORKER_PAUSE_FOR_SERVING from
    the flags), until killed; prints ``started`` once the model is loaded. Called in a child process."""
    from backend.model.model_loader import load_base_model
    from backend.state.redis_conn import redis_client
    from backend.state.serving import ServingGate, pause_hooks
    from worker.cli import lower_priority
    from worker.dataset import targets_for
    from worker.source import read_file
    from worker.train import TrainConfig, train_lora

    settings = Settings.from_env(
        **settings_overrides(args),
        worker_nice=args.worker_nice,
        worker_threads=max(0, args.worker_threads),
        redis_url=args.redis_url,
        worker_pause_for_serving=args.worker_pause,
    )
    lower_priority(settings)
    if args.worker_threads >= 0:  # -1: torch's own default (every core), the behaviour before WORKER_THREADS
        settings = settings.for_worker()
    rubric = load_rubric("summary-quality", settings.rubric_dir)
    records = read_file(Path(args.data_dir) / "dialsummeval" / "ratings.jsonl", rubric)[:400]
    model, tokenizer, _ = load_base_model(settings)
    sys.stdout.write("started\n")
    sys.stdout.flush()
    config = TrainConfig.build(rubric, {"epochs": 5, "method": "lora", "targets": "consensus"})
    with pause_hooks(model, ServingGate.for_worker(settings, redis_client(settings))):
        train_lora(model, tokenizer, rubric, targets_for(rubric, records, "consensus"), [], config)


def contention_part(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """``/predict`` latency (p50 of 10-task requests, and one 30-task request: Label Studio's *Retrieve
    Predictions* on a small project) with no training, and with a LoRA training job beside the backend: with
    the worker's defaults (WORKER_NICE=10, every thread, pausing while the backend scores), without the pause,
    and at full priority without the pause (the behaviour before WORKER_NICE). The trainer's optimizer steps
    during each case show what the pause costs training."""
    import requests

    from backend.core.labeling import label_config

    config = label_config(load_rubric("qa-quality", settings.rubric_dir))
    requests_per_case = 2 if args.quick else 5
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cases = [
        ("no training", None),
        ("training, defaults: WORKER_NICE=10, WORKER_PAUSE_FOR_SERVING=auto", (10, 0, "auto")),
        ("training, WORKER_NICE=10, WORKER_PAUSE_FOR_SERVING=never (before the pause)", (10, 0, "never")),
        ("training, nice 0, no pause (before WORKER_NICE)", (0, -1, "never")),
    ][: 2 if args.quick else 4]
    out: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with serving(args, port, {"REDIS_URL": args.redis_url, "PREDICTION_CACHE": "false"}):

        def post(tasks: list[dict[str, str]], first: int) -> Any:
            body = {
                "tasks": [{"id": first + i, "data": t} for i, t in enumerate(tasks)],
                "label_config": config,
                "project": "9001",
            }
            return requests.post(base + "/predict", timeout=900, json=body)

        post(qa_tasks(Path(args.data_dir), 2, offset=6), 0)  # warm-up
        for index, (name, worker) in enumerate(cases):
            trainer = None
            trainer_log = Path(tempfile.mkstemp(prefix="rj-trainer-", suffix=".log")[1])
            if worker is not None:
                with trainer_log.open("w") as err:
                    trainer = subprocess.Popen(
                        [
                            sys.executable,
                            __file__,
                            "--only",
                            "_trainer",
                            "--worker-nice",
                            str(worker[0]),
                            "--worker-threads",
                            str(worker[1]),
                            "--worker-pause",
                            worker[2],
                            "--base-model",
                            args.base_model,
                            "--data-dir",
                            args.data_dir,
                            "--redis-url",
                            args.redis_url,
                        ],
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                        start_new_session=True,
                    )
                assert trainer.stdout is not None
                trainer.stdout.readline()  # "started": the model is loaded
                time.sleep(10)  # the training loop is running
            steps_before = trainer_log.read_text().count("train step")
            try:
                chunk = qa_tasks(Path(args.data_dir), 10 * requests_per_case + 30, offset=index + 1)  # unseen
                times = []
                for r in range(requests_per_case):
                    started = time.perf_counter()
                    post(chunk[10 * r : 10 * r + 10], 100 * (index + 1) + 10 * r).raise_for_status()
                    times.append(time.perf_counter() - started)
                started = time.perf_counter()
                post(chunk[-30:], 1000 * (index + 1)).raise_for_status()
                retrieve = time.perf_counter() - started
            finally:
                if trainer is not None:
                    os.killpg(trainer.pid, signal.SIGKILL)
                    trainer.wait(timeout=30)
            text = trainer_log.read_text()
            trainer_log.unlink()
            seconds = sum(times) + retrieve
            out[name] = {
                "predict_10_tasks_p50_s": round(statistics.median(times), 2),
                "predict_10_tasks_s": [round(t, 2) for t in times],
                "predict_30_tasks_s": round(retrieve, 1),
                "case_seconds": round(seconds, 1),
                "training_steps": text.count("train step") - steps_before if worker else None,
                "training_pauses": text.count("pausing training") if worker else None,
            }
            log.info(
                "%s: 10-task /predict p50 %.2f s, 30 tasks %.1f s, %s training steps meanwhile",
                name,
                statistics.median(times),
                retrieve,
                out[name]["training_steps"],
            )
    return out


# --------------------------------------------------------------------------------------------------
# results


def machine() -> dict[str, Any]:
    import torch

    info = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "unknown")
    flags = set(next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), []))
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def store_section(name: str, record: dict[str, Any]) -> None:
    """Keep ``record`` under ``name`` in SPEED.json (the other sections unchanged), rewrite SPEED.md, and print
    the record: how the single-purpose speed benchmarks (readonce, readlimit, busy) record a run."""
    stored = json.loads(SPEED_JSON.read_text(encoding="utf-8")) if SPEED_JSON.is_file() else {}
    stored[name] = record
    SPEED_JSON.write_text(json.dumps(stored, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    write_markdown(stored)
    sys.stdout.write(json.dumps(record, indent=1) + "\n")


def write_markdown(record: dict[str, Any]) -> None:
    lines = [
        "# Speed benchmark",
        "",
        "Produced by "
        + " and ".join(f"`{c}`" for c in record.get("commands", [record["command"]]))
        + f" (last run {record['date']}); machine: {record['machine']['cpu']}, "
        f"{record['machine']['cores']} cores, {record['machine']['memory_gb']} GB, GPU "
        f"{record['machine']['gpu'] or 'none'}, torch {record['machine']['torch']}; base model "
        f"{record['base_model']} (quantization {record['quantization']}). Figures from one run; "
        "ratios compare configurations measured side by side in that run.",
        "",
    ]
    judge = record.get("judge")
    if judge:
        tokens = judge["prompt_tokens"]
        lines += [
            f"## Judge throughput ({judge['tasks']} qa-quality tasks, prompt {tokens['mean']} tokens on "
            f"average, {tokens['min']}–{tokens['max']})",
            "",
            "| configuration | seconds | tasks/s | labels equal to the full fast path |",
            "|---|---|---|---|",
        ]
        for name, row in judge["judge"].items():
            lines.append(f"| {name} | {row['seconds']} | {row['tasks_per_s']} | {row['same_labels_as_fast']} |")
        naive = judge["naive"]
        for key in ("naive", "naive_bf16"):
            row = judge.get(key)
            if row:
                lines.append(
                    f"| naive `generate` + regex, {row.get('precision', 'fp32')} ({row['tasks']} tasks, ≤ "
                    f"{row['max_new_tokens']} new tokens) | {row['seconds']} | {row['tasks_per_s']} | – |"
                )
        lines += [
            "",
            f"**The judge (fp32) scores {judge['ratio_vs_naive']}× as many tasks per second as the naive "
            "baseline (fp32)**"
            + (
                f"; with bf16 weights {judge['ratio_bf16_vs_naive_fp32']}× the fp32 baseline and "
                f"{judge['ratio_bf16_vs_naive_bf16']}× a bf16 baseline"
                if "naive_bf16" in judge
                else ""
            )
            + f". {naive['parse_failures']} of {naive['tasks']} naive outputs "
            f"({naive['parse_failure_share']:.0%}) failed to parse into valid scores for all dimensions, "
            "so the naive baseline's rate of usable pre-annotations is lower still. "
            "First naive output: `"
            + (naive["example_outputs"][0][:160].replace("\n", " ⏎ ") if naive["example_outputs"] else "")
            + "`",
            "",
        ]
    http = record.get("http")
    if http:
        threads = http.get("server", {}).get("threads", 4)
        lines += [
            "## HTTP latency (loopback, model loaded)",
            "",
            f"`rubric-judge serve` with the defaults (`WORKERS=1`, `THREADS={threads}`), except the rows marked "
            "`[WORKERS=2]` (two gunicorn processes, `TORCH_THREADS=1`). The clients are threads of the "
            "benchmark process, each on its own keep-alive connection, sending back to back; they share the "
            "2 cores with the server.",
            "",
            "| route | clients | requests | p50 ms | p99 ms | max ms | req/s | errors |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, row in http.items():
            if "clients" in row:
                route = name.rsplit(" x", 1)[0]
                lines.append(
                    f"| {route} | {row['clients']} | {row['requests']} | {row['p50_ms']} | {row['p99_ms']} "
                    f"| {row['max_ms']} | {row['requests_per_s']} | {row['errors']} |"
                )
        for name, row in http.items():
            if name.startswith("/predict") and "seconds" in row:
                lines += [
                    "",
                    f"One `{name}` call: **{row['seconds']} s** (status {row['status']}, "
                    f"{row['results']} results; Label Studio's limit is 100 s).",
                ]
        server = http.get("server", {})
        lines += [
            f"Server RSS: {server.get('rss_mb_loaded')} MB after start, {server.get('rss_mb_after')} MB at the end.",
            "",
        ]
    train = record.get("train")
    if train:
        micro = next((row.get("micro_batch_size") for row in train.values() if "micro_batch_size" in row), "?")
        lines += [
            f"## Training throughput (one LoRA epoch of summary-quality examples, r=16 on all projections, "
            f"batch 8, micro-batch {micro})",
            "",
            "Tokens/s counts every example's whole prompt; with the shared prefix the rubric's common "
            "prompt part is computed once per micro-batch (the computed tokens column).",
            "",
            "| base | precision | shared prefix | examples | tokens/s | computed tokens / tokens | padding "
            "| seconds | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, row in train.items():
            if "error" in row:
                lines.append(f"| {name} | failed: {row['error'].splitlines()[-1][:120]} | | | | | | | |")
                continue
            ratio = f"{row['computed_tokens']:,} / {row['tokens']:,}" if "computed_tokens" in row else "–"
            weights = " (bf16 weights)" if row.get("model_precision") == "bf16" else ""
            lines.append(
                f"| {row['quantization']} | {row['precision']}{weights} "
                f"| {'yes' if row.get('share_prefix') else 'no'} "
                f"| {row['examples']} | {row['tokens_per_s']} | {ratio} | {row['padding_share']:.1%} "
                f"| {row['seconds']} | {row['peak_rss_mb']:,} |"
            )
        lines.append("")
    contention = dict(record.get("contention") or {})
    if contention:
        where = contention.pop("machine", record["machine"])
        when = contention.pop("date", record["date"])
        lines += [
            "## Serving while a training job runs on the same machine",
            "",
            "The backend (default settings, prediction cache off) answers qa-quality `/predict` requests "
            "while a LoRA training job of summary-quality runs beside it as the RQ worker would run it. "
            "A 30-task request is Label Studio's *Retrieve Predictions* on a small project (its limit: "
            f"100 s). Measured {when} on {where['cpu']}, {where['cores']} cores; the backend serves in fp32, "
            "the training job runs under TRAIN_PRECISION=auto (bf16 autocast where the CPU has AVX512-BF16 "
            f"or AMX; this CPU: AVX512-BF16 {_yes(where.get('avx512_bf16'))}, AMX "
            f"{_yes(where.get('amx_bf16'))}). The training steps column counts the job's optimizer steps "
            "while the requests ran: the price of serving first.",
            "",
            "| case | 10-task /predict p50 (s) | 30-task /predict (s) | training steps during the requests "
            "(seconds) | pauses |",
            "|---|---|---|---|---|",
        ]
        for name, row in contention.items():
            steps = row.get("training_steps")
            lines.append(
                f"| {name} | {row['predict_10_tasks_p50_s']} | {row['predict_30_tasks_s']} | "
                + (f"{steps} ({row['case_seconds']} s)" if steps is not None else "–")
                + " | "
                + (str(row["training_pauses"]) if row.get("training_pauses") is not None else "–")
                + " |"
            )
        lines.append("")
    lines += readonce_markdown(record.get("readonce"))
    lines += readlimit_markdown(record.get("readlimit"))
    lines += busy_markdown(record.get("busy"))
    SPEED_MD.write_text("\n".join(lines), encoding="utf-8")


def readonce_markdown(readonce: dict[str, Any] | None) -> list[str]:
    """The section of ``benchmarks/readonce.py``: time to a new head version, cold and with the feature store."""
    if not readonce:
        return []
    m = readonce["machine"]
    lines = [
        "## Read each task once: time to a new feature-head version (DialSummEval)",
        "",
        f"`{readonce['command']}`, {readonce['date']}, {m['cpu']}, {m['cores']} cores, AVX512-BF16 "
        f"{_yes(m.get('avx512_bf16'))}, fp32. `rubric-judge train` as a "
        "user runs it: N summaries with an empty feature store (cold), then the same N plus 10 new ones with the "
        "store the first run filled (warm), then those N + 10 cold in another empty store.",
        "",
        "| tasks | cold N (s; features / fit) | warm N + 10 (s; features / fit) | warm / cold N | "
        "cold N + 10 (s; features / fit) | heads equal | max relative difference | out-of-fold labels equal |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def run(r: dict[str, Any]) -> str:
        return f"{r['seconds']} ({r['feature_seconds']} / {r['fit_seconds']})"

    def row(n: str, e: dict[str, Any]) -> str:
        w, c, h = e["warm_all_but_10"], e.get("cold_same_data"), e.get("warm_vs_cold_head")
        ratio = e.get("warm_over_cold_n", round(w["seconds"] / e["cold"]["seconds"], 3))
        same = "-" if h is None else "byte-identical" if h["head_bytes_equal"] else "no"
        return (
            f"| {n} | {run(e['cold'])} | {run(w)} | {ratio} | {'not run' if c is None else run(c)} | {same} | "
            f"{'-' if h is None else format(h['max_relative_difference'], '.1e')} | "
            f"{'-' if h is None else h['out_of_fold_labels_equal']} |"
        )

    for n, e in readonce["sizes"].items():
        lines.append(row(n, e))
        if "read_alone" in e:
            lines.append(row(f"{n}, each task read alone (`PREDICT_BATCH_SIZE=1`)", e["read_alone"]))
    stored = readonce.get("predict_100_stored")
    if stored:
        lines += [
            "",
            f"`/predict` of {stored['tasks']} tasks on the warm head version, prediction cache off, features "
            f"stored: **{stored['seconds']} s** ({stored['from_store']} from the store, {stored['deferred']} "
            "deferred).",
        ]
        refresh = stored.get("refresh")
        if refresh:
            lines.append(
                f"Refresh after a promotion (the pre-annotation job's scoring of every stored task with the new "
                f"head version, Label Studio writes not included): {refresh['tasks']} tasks in "
                f"**{refresh['seconds']} s** ({refresh['from_store']} from the store)."
            )
    return lines + [""]


def readlimit_markdown(readlimit: dict[str, Any] | None) -> list[str]:
    """The section of ``benchmarks/readlimit.py``: v0 scoring against one plain forward pass, side by side, with
    each read (SCORE_READ) when the run measured both."""
    if not readlimit:
        return []
    m = readlimit["machine"]
    read = readlimit.get("read", "sequential")
    other = readlimit.get("other_read")
    lines = [
        "## The read itself: v0 scoring against one plain forward pass",
        "",
        f"`{readlimit['command']}`, {readlimit['date']}, {m['cpu']}, {m['cores']} cores, AVX512-BF16 "
        f"{_yes(m.get('avx512_bf16'))}; {readlimit['tasks']} qa-quality tasks (prompt "
        f"{readlimit['prompt_tokens_mean']} tokens on average), {readlimit['precision']} weights, "
        f"{readlimit['torch_threads']} torch threads, "
        "prediction cache off, best of the repeats after a warm-up. *Plain forward*: each prompt through the model "
        "once, alone, last position's logits only: the least a read costs.",
        "",
        "| path | tasks/s | share of the plain forward |",
        "|---|---|---|",
        f"| plain forward (the limit) | {readlimit['plain_forward_tasks_per_s']} | 1.0 |",
        f"| `Judge.score` (v0, SCORE_READ={read}) | {readlimit['judge_tasks_per_s']} | "
        f"{readlimit['judge_over_plain']} |",
    ]
    if other:
        lines.append(
            f"| `Judge.score` (v0, SCORE_READ={other['read']}) | {other['tasks_per_s']} | {other['over_plain']} |"
        )
    lines.append(
        f"| `/predict` (v0, SCORE_READ={read}, Flask test client) | {readlimit['predict_tasks_per_s']} | "
        f"{readlimit['predict_over_plain']} |"
    )
    for name, row in readlimit.get("variants", {}).items():
        lines.append(f"| `Judge.score` with {name} | {row['tasks_per_s']} | {row['over_plain']} |")
    lines.append("")
    for label, b in [(read, readlimit["breakdown_s"])] + ([(other["read"], other["breakdown_s"])] if other else []):
        lines += _breakdown_lines(label, b)
    lines.append(
        f"Batches: {readlimit['batches']} (batch token budget {readlimit['batch_token_budget']}); each forward call "
        "re-reads every weight."
    )
    read = readlimit.get("feature_read_s")
    if read:
        ways = "; ".join(f"{k} **{v} s**" for k, v in read.items() if k not in ("tasks", "rubric"))
        lines += [
            "",
            f"The feature read of training (`extract_features`, feature store off) on the first {read['tasks']} "
            f"summaries of DialSummEval's dev split ({read['rubric']}), in the same run: {ways}.",
        ]
    return lines + [""]


def _breakdown_lines(read: str, b: dict[str, Any]) -> list[str]:
    lines = [
        f"SCORE_READ={read}: one `Judge.score` call's {b['total']} s: prompt forward {b['prompt']} s, dimension "
        f"steps {b['dimension steps']} s, label tries {b['label tries']} s, everything else {b['other']} s."
    ]
    calls = b.get("forward_calls")
    if calls:
        lines[-1] += (
            f" Forward calls: {calls['total']} in {calls['batches']} batch(es), **{calls['per_batch']} per batch**, "
            f"{calls['per_task']} per task (prompt {calls['prompt']}, dimension steps {calls['dimension steps']}, "
            f"label tries {calls['label tries']})."
        )
    return lines + [""]


def busy_markdown(busy: dict[str, Any] | None) -> list[str]:
    """The section of ``benchmarks/busy.py``: Retrieve Predictions against the real Label Studio, idle and
    beside a CPU hog, under the /predict deadline; the latest run, then the earlier ones it keeps."""
    if not busy:
        return []
    m = busy["machine"]
    lines = [
        "## Retrieve Predictions on a busy machine",
        "",
        f"`{busy['command']}`, {busy['date']}, {m['cpu']}, {m['cores']} cores, AVX512-BF16 "
        f"{_yes(m.get('avx512_bf16'))}. A real Label Studio 1.23.2, `rubric-judge serve` with its defaults "
        "(PREDICT_DEADLINE_S 60 s = 0.6 × Label Studio's 100 s, fp32) and one `rubric-judge worker` (WORKER_NICE=10) "
        "on this machine; a project of distinct qa-quality tasks (`support/e2e/qa_tasks.json`, each question made "
        "unique: nothing from the prediction cache) and *Retrieve Predictions* on all of them. *Busy*: a CPU hog, "
        "one `while True: pass` process per core at normal priority, runs from just before the call until every "
        "task has its prediction. Overshoot: the backend's scoring time minus its budget (negative: the last chunk "
        "ended before the deadline). Background: when the last prediction the pre-annotation job wrote was stored. "
        "Seconds after the call started.",
        "",
        "| run | case | tasks | Retrieve Predictions (s) | backend scoring / budget (s) | overshoot (s) | backend "
        "cores used | scored in the response | deferred | last background prediction (s) | tasks with 0 / 1 / 2+ "
        "predictions | model versions |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in [busy, *busy.get("earlier", [])]:
        label = f"{run['date']}, {run.get('commit') or '?'}" + (f": {run['note']}" if run.get("note") else "")
        for name, c in run["cases"].items():
            counts = c["tasks_with_predictions"]
            budget = "–" if c["budget_s"] is None else c["budget_s"]
            lines.append(
                f"| {label} | {name} ({c['hog_processes']} hog processes) | {c['tasks']} | {c['retrieve_s']} | "
                f"{c['backend_scoring_s']} / {budget} | {'–' if c['overshoot_s'] is None else c['overshoot_s']} | "
                f"{c['backend_cores_used']} | {c['scored_inline']} | {c['deferred']} | "
                f"{c['last_background_prediction_s'] or '–'} | {counts['0']} / {counts['1']} / {counts['2+']} | "
                f"{', '.join(c['model_versions'])} |"
            )
    return lines + [""]


def _yes(flag: Any) -> str:
    return "unknown" if flag is None else ("yes" if flag else "no")


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"base_model": args.base_model, "quantization": args.quantization, "model_precision": args.model_precision}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["judge", "http", "train", "contention", "_train", "_trainer"])
    parser.add_argument("--worker-nice", type=int, default=10, help="_trainer: WORKER_NICE")
    parser.add_argument("--worker-threads", type=int, default=0, help="_trainer: WORKER_THREADS (-1: torch's default)")
    parser.add_argument(
        "--worker-pause", default="auto", choices=["auto", "always", "never"], help="_trainer: WORKER_PAUSE_FOR_SERVING"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run with small counts (not for the record)")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--base-model", default="smollm2-135m")
    parser.add_argument("--quantization", default="none", choices=["none", "4bit", "8bit"])
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16"], help="training autocast (TRAIN_PRECISION)"
    )
    parser.add_argument(
        "--model-precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="MODEL_PRECISION: the weights' dtype (auto: fp32 on CPU)",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--naive-tasks", type=int, default=16, help="tasks for the naive baseline (slow)")
    parser.add_argument("--train-examples", type=int, default=48)
    parser.add_argument("--no-share-prefix", action="store_true", help="train part: no shared-prefix training")
    parser.add_argument("--output", default=str(SPEED_JSON))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.only == "_train":
        sys.stdout.write(json.dumps(train_once(args)) + "\n")
        return 0
    if args.only == "_trainer":
        trainer_once(args)
        return 0
    if not (Path(args.data_dir) / "dialsummeval").is_dir():
        log.warning(
            "no shared data at %s: the speed benchmark builds realistic tasks from ../shared/data "
            "(DialSummEval); nothing was run",
            args.data_dir,
        )
        return 0
    settings = Settings.from_env(**settings_overrides(args))
    record: dict[str, Any] = {
        "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "base_model": args.base_model,
        "quantization": args.quantization,
    }
    if args.only in (None, "judge"):
        record["judge"] = judge_part(args, settings)
    if args.only in (None, "http"):
        record["http"] = http_part(args, settings)
    if args.only in (None, "train"):
        record["train"] = train_part(args)
    if args.only in (None, "contention"):
        record["contention"] = contention_part(args, settings)
    output = Path(args.output)
    if args.only and output.is_file():  # one part: keep the other parts' figures from earlier runs
        earlier = json.loads(output.read_text(encoding="utf-8"))
        commands = earlier.get("commands", [earlier.get("command")]) if earlier.get("command") else []
        listed = [c.strip() for c in [*commands, record["command"]] if c]
        record = {**earlier, **record, "commands": list(dict.fromkeys(listed))}
        if args.only == "contention":  # it records its own machine and date; the header keeps the others'
            record.update(machine=earlier.get("machine", record["machine"]), date=earlier.get("date", record["date"]))
    output.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if output == SPEED_JSON:
        write_markdown(record)
    log.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
