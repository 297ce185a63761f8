"""The ``rubric-judge`` command line: ``serve``, ``label-config``, ``predict`` and ``report`` from the backend;
``worker``, ``prelabel``, ``train`` and ``evaluate`` from the worker (``worker.cli``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backend.core.labeling import label_config
from backend.core.prefill import PrefillPolicy
from backend.core.rubric import load_rubric
from backend.model.model_loader import short_model_name
from backend.reports.data import project_report, run_report
from backend.reports.html import render_html
from backend.service import RequestError, build_service, label_queue
from backend.settings import Settings, SettingsError
from backend.state.redis_conn import redis_client
from backend.state.registry import Registry
from worker import cli as worker_cli

log = logging.getLogger("rubric_judge")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
        stream=sys.stderr,
    )


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides = {k: v for k, v in extra.items() if v is not None}
    return Settings.from_env(**overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(
        args, rubric=args.rubric, port=args.port, host=args.host, workers=args.workers, threads=args.threads
    )
    from gunicorn.app.base import BaseApplication

    from backend.web.app import create_app

    class _Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{settings.host}:{settings.port}")
            self.cfg.set("workers", settings.workers)
            self.cfg.set("threads", settings.threads)
            self.cfg.set("timeout", 0)
            self.cfg.set("preload_app", True)
            self.cfg.set("accesslog", "-")
            self.cfg.set("loglevel", settings.log_level.lower())

        def load(self) -> Any:
            return create_app(settings)

    log.info(
        "serving rubric-judge on http://%s:%d (rubric %s, base model %s)",
        settings.host,
        settings.port,
        settings.rubric,
        settings.base_model,
    )
    _Server().run()
    return 0


def cmd_label_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    rubric = load_rubric(args.rubric, settings.rubric_dir)
    sys.stdout.write(label_config(rubric, rationale=not args.no_rationale))
    return 0


def read_tasks(path: Path) -> list[dict[str, Any]]:
    """Label Studio-style tasks from a JSON list or JSON Lines file; bare data objects are wrapped."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        items = json.loads(text)
    else:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    tasks = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: item {index} is not an object")
        tasks.append(item if isinstance(item.get("data"), dict) else {"id": index, "data": item})
    return tasks


def cmd_predict(args: argparse.Namespace) -> int:
    settings = _settings(args, rubric=args.rubric)

    tasks = read_tasks(Path(args.input))
    service = build_service(settings)
    out = service.predict({"tasks": tasks, "project": args.project, "label_config": None}, rubric=settings.rubric)
    sink = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    try:
        for task, result in zip(tasks, out["results"], strict=True):
            sink.write(json.dumps({"id": task.get("id"), **result}, ensure_ascii=False) + "\n")
    finally:
        if sink is not sys.stdout:
            sink.close()
    log.info("wrote %d prediction(s)%s", len(tasks), f" to {args.output}" if args.output else "")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.run:
        data = run_report(Path(args.run))
    else:
        data = project_report(
            _registry(settings),
            args.project,
            PrefillPolicy.from_settings(settings),
            settings.label_studio_url,
        )
    if args.html:
        Path(args.html).write_text(render_html(data), encoding="utf-8")
        log.info("wrote %s", args.html)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1), encoding="utf-8")
        log.info("wrote %s", args.json)
    if not args.html and not args.json:
        sys.stdout.write(json.dumps(data, indent=1) + "\n")
    return 0


def _registry(settings: Settings) -> Any:
    return Registry(
        settings.model_dir, short_model_name(settings.base_model, settings.quantization), redis_client(settings)
    )


def cmd_queue(args: argparse.Namespace) -> int:
    """What to label next: the least certain unannotated tasks of a project, from its stored predictions."""
    settings = _settings(args)
    try:
        data = label_queue(settings, _registry(settings), args.project, args.limit)
    except RequestError as exc:
        raise RuntimeError(exc.message) from None
    if args.json:
        sys.stdout.write(json.dumps(data, indent=1) + "\n")
        return 0
    lines = [
        f"project {data['project']}: {data['unannotated']} unannotated task(s), "
        f"{data['predicted_by_active_version']} predicted by {data['model_version']}; least certain first"
    ]
    for entry in data["queue"]:
        lines.append(f"{entry['score']:.3f}  task {entry['task_id']}  {entry['link'] or ''}")
    if not data["queue"] and data["predicted_by_active_version"]:
        lines.append(
            f"{data['model_version']} pre-fills nothing yet, so there is no uncertainty to rank by: annotate tasks "
            "of many different groups (dialogues, questions) and press Start Training; once a dimension is proven, "
            "this queue ranks the tasks by it"
        )
    elif not data["queue"]:
        lines.append(
            "no unannotated task has a prediction by the active version: run `rubric-judge prelabel` "
            "or Retrieve Predictions first"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _worker_command(run: Any) -> Any:
    """A ``worker.cli`` command (``run(args, settings)``) as a subcommand."""

    def command(args: argparse.Namespace) -> int:
        return int(run(args, _settings(args, rubric=None)) or 0)

    return command


def _training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, help="LoRA: training epochs (rubric's training.epochs, else 3)")
    parser.add_argument("--learning-rate", type=float, help="LoRA: learning rate")
    parser.add_argument("--batch-size", type=int, help="LoRA: examples per optimizer step")
    parser.add_argument(
        "--max-length", type=int, help="LoRA: max tokens per example (inputs trimmed, never the target)"
    )
    parser.add_argument("--lora-r", type=int, help="LoRA: rank (16)")
    parser.add_argument("--lora-alpha", type=int, help="LoRA: alpha (32)")
    parser.add_argument(
        "--heldout-fraction",
        type=float,
        help="LoRA only: share of task groups held out as the adapter's evidence (0.2); a feature head is "
        "judged out of fold on every task",
    )
    parser.add_argument(
        "--targets",
        choices=["each", "consensus", "distribution"],
        help="LoRA: one example per annotator, per task, or per task against the label distribution (a feature "
        "head learns each task's human mean or consensus)",
    )
    parser.add_argument(
        "--method",
        choices=["auto", "head", "lora"],
        help="head: a feature head fitted in seconds; lora: a LoRA adapter; auto (default): head "
        "for rating rubrics, lora for classification",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        help="LoRA: training precision (auto: bf16 autocast where the hardware makes it fast)",
    )
    parser.add_argument("--seed", type=int, help="LoRA: random seed of the split, shuffling and augmentation (3407)")
    parser.add_argument("--no-augment", action="store_true", help="LoRA: turn augmentation off")
    parser.add_argument("--limit", type=int, help="use only the first N tasks of --data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rubric-judge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the Label Studio ML backend with gunicorn")
    serve.add_argument("--rubric", help="default rubric (RUBRIC)")
    serve.add_argument("--host", help="bind address (HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (PORT, default 9090)")
    serve.add_argument("--workers", type=int, help="gunicorn processes (WORKERS, default 1)")
    serve.add_argument("--threads", type=int, help="threads per process (THREADS, default 4)")
    serve.set_defaults(func=cmd_serve)

    config = sub.add_parser("label-config", help="print the Label Studio labeling config of a rubric")
    config.add_argument("rubric", help="rubric name (file in RUBRIC_DIR) or path to a YAML file")
    config.add_argument("--no-rationale", action="store_true", help="leave out the rationale text area")
    config.set_defaults(func=cmd_label_config)

    predict = sub.add_parser("predict", help="score Label Studio-style tasks offline")
    predict.add_argument("--rubric", help="rubric name (RUBRIC)")
    predict.add_argument("--input", required=True, help="tasks as JSON list or JSONL ({id, data: {...}})")
    predict.add_argument("--output", help="JSONL output (default: stdout)")
    predict.add_argument("--project", default="0", help="project id whose active adapter to use (default 0)")
    predict.set_defaults(func=cmd_predict)

    report = sub.add_parser("report", help="agreement report of a project or of an offline run (HTML/JSON)")
    which = report.add_mutually_exclusive_group(required=True)
    which.add_argument("--project", help="Label Studio project id (reads MODEL_DIR)")
    which.add_argument("--run", help="a `rubric-judge train --out` folder")
    report.add_argument("--html", help="write the HTML page here")
    report.add_argument("--json", help="write the JSON data here")
    report.set_defaults(func=cmd_report)

    queue = sub.add_parser(
        "queue",
        help="what to label next: the unannotated tasks whose stored prediction is "
        "least certain (reads Label Studio's API; scores nothing)",
    )
    queue.add_argument("--project", required=True, help="Label Studio project id")
    queue.add_argument("--limit", type=int, default=20, help="how many tasks (20)")
    queue.add_argument("--json", action="store_true", help="print the JSON instead of a list")
    queue.set_defaults(func=cmd_queue)

    worker = sub.add_parser(
        "worker", help="run the RQ worker (queue QUEUE_NAME): training jobs and background pre-annotation"
    )
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.add_argument("--name", help="worker name (default: RQ's)")
    worker.set_defaults(func=_worker_command(worker_cli.run_worker))

    prelabel = sub.add_parser(
        "prelabel",
        help="pre-annotate a Label Studio project's tasks (writes predictions through the API; no 100 s limit)",
    )
    prelabel.add_argument("--project", required=True, help="Label Studio project id")
    prelabel.add_argument("--all", action="store_true", help="also tasks that already have annotations")
    prelabel.add_argument("--batch-size", type=int, default=32, help="tasks scored and written per round (32)")
    prelabel.set_defaults(func=_worker_command(worker_cli.run_prelabel))

    train = sub.add_parser(
        "train", help="build and evaluate a version (feature head or LoRA adapter) offline from a JSONL/CSV file"
    )
    train.add_argument("--rubric", required=True, help="rubric name or YAML path")
    train.add_argument("--data", required=True, help="JSONL ({id, data, annotations|label}) or CSV")
    train.add_argument(
        "--heldout-data",
        help="also score this file (stored as 'heldout' in metrics.json); a LoRA adapter is judged on it instead "
        "of a split of --data, a feature head is still judged out of fold on --data",
    )
    train.add_argument("--heldout-limit", type=int, help="use only the first N tasks of --heldout-data")
    train.add_argument("--out", required=True, help="new folder for the head or adapter, metrics and data snapshot")
    _training_options(train)
    train.set_defaults(func=_worker_command(worker_cli.run_train))

    evaluate = sub.add_parser("evaluate", help="agreement of the base model or a trained version with a labelled file")
    evaluate.add_argument("--rubric", required=True, help="rubric name or YAML path")
    evaluate.add_argument("--data", required=True, help="JSONL or CSV with human labels")
    evaluate.add_argument(
        "--model", default="v0", help="'v0' (base model) or a version folder (feature head or LoRA adapter)"
    )
    evaluate.add_argument("--limit", type=int, help="use only the first N tasks")
    evaluate.add_argument("--output", help="write the full metrics JSON here")
    evaluate.set_defaults(func=_worker_command(worker_cli.run_evaluate))

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        parser.exit(2, f"rubric-judge: configuration error: {exc}\n")
    setup_logging(settings.log_level)
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        parser.exit(2, f"rubric-judge: configuration error: {exc}\n")
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        log.debug("command failed", exc_info=True)
        parser.exit(1, f"rubric-judge: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
