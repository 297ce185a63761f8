"""The worker's commands (``rubric-judge worker|prelabel|train|evaluate``), wired up by ``rubric_judge.cli``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from redis import Redis
from rq import Queue

from backend.core.metrics import main_report
from backend.core.rubric import load_rubric
from backend.model.head import is_head
from backend.model.judge import Judge
from backend.settings import Settings
from backend.training_keys import FLAG_KEYS
from worker.evaluate import evaluate_judge
from worker.horse import JudgeWorker
from worker.pipeline import run_training
from worker.prelabel import prelabel_project
from worker.source import read_file

log = logging.getLogger(__name__)


def lower_priority(settings: Settings) -> None:
    """Add WORKER_NICE to this process's niceness once (its children, RQ's work-horses, inherit it), so that a
    backend on the same machine keeps the CPU while this process trains."""
    if not settings.worker_nice:
        return
    try:
        now = os.nice(settings.worker_nice)
    except OSError as exc:
        log.warning("cannot lower the worker's priority (WORKER_NICE=%d): %s", settings.worker_nice, exc)
        return
    log.info(
        "training at niceness %d and %d torch thread(s) (WORKER_NICE, WORKER_THREADS): the backend keeps the CPU",
        now,
        settings.for_worker().torch_threads,
    )


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    """An RQ worker on the ``rubric-judge`` queue (``worker.horse.JudgeWorker``: SIGTERM or SIGINT stops it and
    its running job at once; its forks die with it)."""
    lower_priority(settings)

    redis = Redis.from_url(settings.redis_url)
    try:
        redis.ping()
    except Exception as exc:
        raise RuntimeError(f"cannot reach Redis at {settings.redis_url}: {exc}") from None
    if not settings.label_studio_api_key:
        log.warning("LABEL_STUDIO_API_KEY is not set: training jobs will fail until it is")
    queue = Queue(settings.queue_name, connection=redis)
    worker = JudgeWorker([queue], connection=redis, name=args.name)
    log.info(
        "worker listening on queue %r at %s (Label Studio %s)",
        settings.queue_name,
        settings.redis_url,
        settings.label_studio_url,
    )
    worker.work(burst=args.burst, with_scheduler=True)
    return 0


def _overrides(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """TRAIN_* settings, then command-line flags (flags win)."""
    values: dict[str, Any] = dict(settings.training_overrides())
    values.update({k: getattr(args, k) for k in FLAG_KEYS if getattr(args, k, None) is not None})
    if getattr(args, "no_augment", False):
        values["augment"] = False
    return values


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    """Offline twin of the RQ job: train on a JSONL/CSV file and evaluate as the job does (a head on its grouped
    out-of-fold predictions, a LoRA adapter on its held-out groups)."""
    rubric = load_rubric(args.rubric, settings.rubric_dir)
    records = read_file(Path(args.data), rubric, settings.group_by)
    heldout = None
    if args.heldout_data:
        heldout = read_file(Path(args.heldout_data), rubric, settings.group_by)
    if args.limit:
        records = records[: args.limit]
    if heldout is not None and args.heldout_limit:
        heldout = heldout[: args.heldout_limit]
    started = time.monotonic()
    result = run_training(
        settings,
        rubric,
        records,
        Path(args.out),
        overrides=_overrides(args, settings),
        heldout=heldout,
        extra={"data": str(args.data)},
    )
    metrics = result.metrics
    summary = {
        "out": str(result.path),
        "wall_seconds": round(time.monotonic() - started, 1),
        "counts": metrics["counts"],
        "method": metrics["method"],
        "alpha_dims": metrics["alpha_dims"],
        "alpha_dims_base": metrics["base"]["alpha_dims"],
        "alpha_dims_majority": metrics["alpha_dims_majority"],
        "promoted": metrics["promoted"],
        "decision": metrics["decision"],
        "alpha_flat": metrics["alpha_flat"],
        "alpha_flat_base": metrics["base"]["alpha_flat"],
        "alpha_humans_flat": metrics["alpha_humans_flat"],
        "per_dimension": {
            name: {"candidate": _dim_alpha(metrics["candidate"], name), "base": _dim_alpha(metrics["base"], name)}
            for name in rubric.dimension_names
        },
    }
    sys.stdout.write(json.dumps(summary, indent=1) + "\n")
    return 0


def _dim_alpha(metrics: dict[str, Any], name: str) -> float | None:
    return main_report(metrics["dimensions"][name])["alpha_system"]


def run_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    """Score a labelled file with the base model (``v0``/``base``) or an adapter folder, print the metrics."""
    rubric = load_rubric(args.rubric, settings.rubric_dir)
    records = read_file(Path(args.data), rubric, settings.group_by)
    if args.limit:
        records = records[: args.limit]
    judge = Judge.from_settings(settings)
    adapter = None
    if args.model not in ("v0", "base"):
        path = Path(args.model)
        if not (path / "adapter_config.json").is_file() and not is_head(path):
            raise ValueError(
                f"--model {args.model}: expected 'v0', 'base', an adapter folder or a feature-head folder (head.json)"
            )
        judge.load_adapter("evaluated", path)
        adapter = "evaluated"
    metrics = evaluate_judge(judge, rubric, records, adapter)
    if args.output:
        Path(args.output).write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    metrics.pop("predictions", None)
    summary = {
        "model": args.model,
        "n_tasks": metrics["n_tasks"],
        "alpha_dims": metrics["alpha_dims"],
        "alpha_flat": metrics["alpha_flat"],
        "alpha_flat_ci": metrics["alpha_flat_ci"],
        "alpha_humans_flat": metrics["alpha_humans_flat"],
        "per_dimension": {n: _dim_alpha(metrics, n) for n in rubric.dimension_names},
        "scoring_seconds": metrics["scoring_seconds"],
    }
    sys.stdout.write(json.dumps(summary, indent=1) + "\n")
    return 0


def run_prelabel(args: argparse.Namespace, settings: Settings) -> int:
    """``rubric-judge prelabel --project N``: pre-annotate a project's tasks, with a progress bar."""
    bar: Any = None

    def progress(done: int, total: int, written: int) -> None:
        nonlocal bar
        if bar is None:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            bar = tqdm(total=total, unit="task", desc=f"project {args.project}") if tqdm and total else False
        if bar:
            bar.update(done - bar.n)
            bar.set_postfix(written=written)
        else:
            log.info("prelabel: %d/%d task(s) scored, %d prediction(s) written", done, total, written)

    try:
        report = prelabel_project(
            settings, args.project, include_annotated=args.all, batch_size=args.batch_size, progress=progress
        )
    finally:
        if bar:
            bar.close()
    sys.stdout.write(json.dumps(report.as_dict()) + "\n")
    return 0
