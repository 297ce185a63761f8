"""Read each task once: time to a new feature-head version with and without the feature store, and /predict of
stored tasks on a head version.

    python benchmarks/readonce.py [--sizes 30,300] [--identity-up-to 300] [--data-dir ../shared/data]

For each size N: ``rubric-judge train`` (a subprocess, as a user runs it) on N DialSummEval summaries (the training
split's 980 in a seeded order over many dialogues, then the dev split's) with an empty feature store (cold), then
on the same N plus 10 new ones with the store the first run filled (warm: all but the last 10 stored), then the N +
10 cold in another empty store; the warm and the cold head are compared (sizes up to ``--identity-up-to``). For
sizes up to ``--alone-up-to`` the three runs are repeated with ``PREDICT_BATCH_SIZE=1``: every task read alone, so
its features do not depend on which tasks it was read with, and the warm and cold heads can be compared byte for
byte at that cost. Then, for the largest size, a 100-task ``/predict`` (Flask test client, prediction cache off) on
the warm head version, whose tasks' features are stored, and the refresh after a promotion: all N + 10 stored tasks
scored with that version as the pre-annotation job scores them. Recorded in ``benchmarks/SPEED.json`` under
``readonce``; SPEED.md is rewritten.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.settings import Settings  # noqa: E402
from benchmarks.quality import DEFAULT_DATA, machine  # noqa: E402
from benchmarks.speed import store_section  # noqa: E402
from benchmarks.usercli import rated_summaries, start, train_cli, write_jsonl  # noqa: E402

log = logging.getLogger("benchmarks.readonce")
PROJECT = "990001"  # a project number no real Label Studio uses, in this run's own MODEL_DIR


def _rows(data_dir: Path, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rated summaries: the training split's 980 in a seeded order, then (beyond 980) the dev split's (a
    speed benchmark: which split a task comes from changes only which tasks are timed)."""
    rows: list[dict[str, Any]] = []
    for split in ("train", "dev"):
        part = rated_summaries(data_dir, split)
        random.Random(seed).shuffle(part)
        rows += part
    if len(rows) < n:
        raise SystemExit(f"DialSummEval has {len(rows)} training and dev summaries; {n} were asked for")
    return rows[:n]


def _model_dir(root: Path, base: Path) -> Path:
    """An empty MODEL_DIR (empty feature store) that shares the converted embedded model."""
    root.mkdir(parents=True)
    if base.is_dir():
        os.symlink(base, root / "base")
    return root


def _train(data: Path, out: Path, model_dir: Path, batch_size: int | None = None) -> dict[str, Any]:
    env = {"MODEL_DIR": str(model_dir)}
    if batch_size is not None:
        env["PREDICT_BATCH_SIZE"] = str(batch_size)
    seconds, metrics = train_cli(data, out, env)
    return {
        "seconds": seconds,
        "feature_seconds": metrics["training"]["feature_seconds"],
        "fit_seconds": metrics["training"]["fit_seconds"],
        "alpha_dims": metrics["alpha_dims"],
    }


def _compare(a: Path, b: Path) -> dict[str, Any]:
    from backend.model.head import load_head

    ha, hb = load_head(a), load_head(b)
    worst = 0.0
    same_strength = True
    for name, da in ha.dimensions.items():
        db = hb.dimensions[name]
        same_strength &= da.strength == db.strength
        for key in ("mean", "scale", "weights", "bias"):
            x, y = getattr(da, key), getattr(db, key)
            worst = max(worst, float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-12)))
    files_equal = (a / "head.npz").read_bytes() == (b / "head.npz").read_bytes()
    ma = json.loads((a / "metrics.json").read_text())
    mb = json.loads((b / "metrics.json").read_text())
    labels_a = [p["labels"] for p in ma["candidate"]["predictions"]]
    labels_b = [p["labels"] for p in mb["candidate"]["predictions"]]
    return {
        "head_bytes_equal": files_equal,
        "max_relative_difference": worst,
        "same_ridge_strengths": same_strength,
        "out_of_fold_labels_equal": labels_a == labels_b,
        "alpha_dims": [ma["alpha_dims"], mb["alpha_dims"]],
    }


def _predict_stored(model_dir: Path, version: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A 100-task /predict on ``version`` as v1 of project PROJECT, prediction cache off, tasks in the store."""
    from backend.core.labeling import label_config
    from backend.service import build_service
    from backend.web.app import create_app

    settings = Settings.from_env(model_dir=model_dir, prediction_cache=False)
    service = build_service(settings, serving_mark=False)
    registry = service.registry
    target = registry.version_dir(PROJECT, 1)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(version, target)
    registry.set_active(PROJECT, 1)
    client = create_app(settings, service).test_client()
    xml = label_config(service.rubrics["summary-quality"])
    tasks = [{"id": i, "data": r["data"]} for i, r in enumerate(rows[:100])]
    body = {"tasks": tasks, "project": f"{PROJECT}.1", "label_config": xml}
    before = service.judge.feature_store.stats.hits
    started = time.monotonic()
    response = client.post("/predict", json=body)
    seconds = time.monotonic() - started
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    answer = response.get_json()
    out = {
        "tasks": len(tasks),
        "seconds": round(seconds, 2),
        "from_store": service.judge.feature_store.stats.hits - before,
        "deferred": answer["timing"]["deferred"],
        "model_version": answer["results"][0]["model_version"],
    }
    # the refresh after a promotion: the pre-annotation job scores every stored task with the new version
    # (``Service.predict_tasks``, as ``worker.prelabel`` does; writing through Label Studio's API not included)
    ctx = service.context(PROJECT, xml)
    everything = [{"id": i, "data": r["data"]} for i, r in enumerate(rows)]
    before = service.judge.feature_store.stats.hits
    started = time.monotonic()
    service.predict_tasks(ctx, everything)
    out["refresh"] = {
        "tasks": len(everything),
        "seconds": round(time.monotonic() - started, 2),
        "from_store": service.judge.feature_store.stats.hits - before,
    }
    return out


def _runs(
    work: Path, label: str, first: Path, second: Path, base: Path, again: bool, batch_size: int | None = None
) -> dict[str, Any]:
    """Cold N into an empty store, warm N + 10 with that store and, when ``again``, cold N + 10 in another empty
    store with the two heads compared; ``label`` names the folders (``models-<label>``, ``warm-<label>``)."""
    store = _model_dir(work / f"models-{label}", base)
    cold = _train(first, work / f"cold-{label}", store, batch_size)
    warm = _train(second, work / f"warm-{label}", store, batch_size)
    entry = {"cold": cold, "warm_all_but_10": warm, "warm_over_cold_n": round(warm["seconds"] / cold["seconds"], 3)}
    if again:
        fresh = _model_dir(work / f"models-{label}-again", base)
        cold_again = _train(second, work / f"cold-again-{label}", fresh, batch_size)
        entry["cold_same_data"] = cold_again
        entry["warm_over_cold"] = round(warm["seconds"] / cold_again["seconds"], 3)
        entry["warm_vs_cold_head"] = _compare(work / f"warm-{label}", work / f"cold-again-{label}")
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="30,300")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument(
        "--identity-up-to", type=int, default=300, help="train N + 10 cold again (the head comparison) up to this N"
    )
    parser.add_argument(
        "--alone-up-to", type=int, default=30, help="repeat the three runs with PREDICT_BATCH_SIZE=1 up to this N"
    )
    args = parser.parse_args(argv)
    if not start(args.data_dir, log):
        return 0
    settings = Settings.from_env()
    base = settings.model_dir / "base"
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = _rows(Path(args.data_dir), max(sizes) + 10)
    record: dict[str, Any] = {"sizes": {}, "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="readonce-") as tmp:
        work = Path(tmp)
        for n in sizes:
            first, second = (
                write_jsonl(work / f"{n}.jsonl", rows[:n]),
                write_jsonl(work / f"{n}+10.jsonl", rows[: n + 10]),
            )
            entry = _runs(work, str(n), first, second, base, n <= args.identity_up_to)
            if n <= args.alone_up_to:  # every task read alone (PREDICT_BATCH_SIZE=1)
                entry["read_alone"] = _runs(work, f"{n}-alone", first, second, base, True, batch_size=1)
            record["sizes"][str(n)] = entry
            log.info("%d tasks: %s", n, entry)
            if n == max(sizes) and n + 10 >= 100:
                record["predict_100_stored"] = _predict_stored(work / f"models-{n}", work / f"warm-{n}", rows[: n + 10])
                log.info("/predict of 100 stored tasks: %s", record["predict_100_stored"])
    record["command"] = "python benchmarks/readonce.py " + " ".join(sys.argv[1:] if argv is None else argv)
    record["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    store_section("readonce", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
