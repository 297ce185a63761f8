"""How fast the judge becomes useful: the learning curve of the feature head, and the order of labeling.

    python benchmarks/curve.py [--sizes 10,20,40,80,160,320,all] [--repeats 5] [--orders random,uncertainty,...]
                               [--annotators 1] [--split dev] [--head head_lexical=on|off] [--head head_share=on|off]

DialSummEval, default configuration (the product's ``fit_head`` with grouped folds and its own capacity choice,
``worker.pipeline.head_design``). Features come from the base model once (the feature store under MODEL_DIR,
so a second run reads nothing). For every size n and repeat:

* **random**: n tasks drawn at random from the training split (summaries of many dialogues, as a team labels);
* **uncertainty** (the queue's order): 10 random tasks, then each step doubles the set with the tasks the current
  version is least certain about (the prediction ``score`` the queue sorts by: the mean probability of the
  labels);
* **disagreement**: like uncertainty, but the tasks on which the out-of-fold heads disagree most (the spread of
  their expected scores): expected disagreement between folds;
* **diverse**: like uncertainty, but at most one task per dialogue per step, least certain first;
* **spread**: like diverse, but the tasks of new dialogues drawn at random instead of least certain first (no
  model needed to order them).

At each point: test alpha per dimension of the version fitted on the n tasks, and how many dimensions it would
pre-fill under the default gate (``PrefillPolicy`` on its grouped out-of-fold evidence), with the x-axis counted
both ways: ``tasks`` (n) and ``annotations`` (the annotations of those tasks, mean over repeats). Test stays
separate by dialogue.

``--annotators K`` (the curve a team lives on, K = 1: most projects annotate each task once): every training
task keeps K of its annotations, drawn at random per task (``support.sampling.keep_annotations``, seed
``ANNOTATOR_SEED`` + repeat: the same draw for every order and size of a repeat, recorded in RESULTS.json); the
head learns that one person's label and its evidence is alpha against it. The test labels stay the consensus of
all annotators. Without it every annotation of a task is kept (DialSummEval: 3 per task).

``--head FIELD=on|off`` measures a lever against the default (``TrainConfig.head_lexical``, ``head_share``):
its curves are stored under ``<base model> <field>=<on|off> ...`` instead of the base model's name, which holds
the default's.

Results: ``benchmarks/CURVE.json`` (``dialsummeval``; with ``--annotators 1``, ``dialsummeval-1-annotator``;
``-dev`` appended for ``--split dev``) under the base model, with ``shipped``: the order the product's label
queue follows (``support.curves.SHIPPED_ORDER``); a section of RESULTS.md via ``benchmarks/RESULTS.json``
(``curve/<tag>``); and the plot, ``benchmarks/curve.svg`` (``curve-1-annotator.svg`` with ``--annotators 1``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.core.prefill import PrefillPolicy  # noqa: E402
from backend.core.rubric import Rubric, load_rubric  # noqa: E402
from backend.model.head import cross_fitted, fit_head  # noqa: E402
from backend.model.judge import Judge, apply_head  # noqa: E402
from backend.settings import Settings  # noqa: E402
from benchmarks.quality import DEFAULT_DATA, load_dialsummeval, machine, record_run  # noqa: E402
from benchmarks.usercli import start  # noqa: E402
from support.curves import ANNOTATOR_SEED, curve_key, curve_orders, store_curves  # noqa: E402
from support.sampling import keep_annotations  # noqa: E402
from worker.evaluate import evaluate_predictions  # noqa: E402
from worker.pipeline import (  # noqa: E402
    HeadDesign,
    extract_features,
    head_design,
    head_targets,
    out_of_fold_scores,
)
from worker.source import Record  # noqa: E402
from worker.train import TrainConfig  # noqa: E402

log = logging.getLogger("benchmarks.curve")
CURVE_JSON = REPO / "benchmarks" / "CURVE.json"
CURVE_SVG = REPO / "benchmarks" / "curve.svg"
START = 10


class Data:
    """One split's records and the base model's features of them, as the matrices the head reads (``design``)."""

    def __init__(self, rubric: Rubric, records: Sequence[Record], features: Sequence[Any], design: HeadDesign) -> None:
        self.records = list(records)
        self.features = list(features)
        self.matrices = design.matrices(rubric, features)
        self.targets = head_targets(rubric, records)
        self.groups = [r.split_key for r in records]

    def relabelled(self, rubric: Rubric, records: Sequence[Record]) -> Data:
        """The same tasks (same order, same features) with other annotations: only the targets change."""
        if [r.task_id for r in records] != [r.task_id for r in self.records]:
            raise ValueError("relabelled records must be the same tasks in the same order")
        out = Data.__new__(Data)
        out.records, out.features, out.matrices = list(records), self.features, self.matrices
        out.targets = head_targets(rubric, records)
        out.groups = [r.split_key for r in records]
        return out


def training_draws(
    rubric: Rubric, train: Data, annotators: int | None, repeats: int
) -> tuple[list[Data], list[dict[str, Any]]]:
    """The training split of each repeat: ``train`` itself (every annotation), or with ``annotators``
    annotations per task drawn at random (seed ``ANNOTATOR_SEED`` + repeat), and what each draw kept."""
    if annotators is None:
        return [train] * repeats, []
    datas, draws = [], []
    for repeat in range(repeats):
        seed = ANNOTATOR_SEED + repeat
        records, draw = keep_annotations(train.records, annotators, seed)
        datas.append(train.relabelled(rubric, records))
        by_annotator = Counter(who for kept in draw.values() for who in kept)
        labels = {
            d.name: sum(1 for r in records for a in r.annotations if d.name in a.labels) for d in rubric.dimensions
        }
        draws.append(
            {
                "repeat": repeat,
                "seed": seed,
                "annotations": sum(len(r.annotations) for r in records),
                "by_annotator": dict(sorted(by_annotator.items())),
                "labels_by_dimension": labels,
            }
        )
    return datas, draws


def _fit(rubric: Rubric, data: Data, rows: Sequence[int], spec: HeadDesign, meta: dict[str, Any]) -> Any:
    head = fit_head(
        rubric.dimensions,
        {k: v[list(rows)] for k, v in data.matrices.items()},
        {k: [v[i] for i in rows] for k, v in data.targets.items()},
        [data.groups[i] for i in rows],
        quiet=True,
        subsets=spec.subsets,
        blends=spec.blends,
    )
    head.meta = dict(meta)
    return head


def _evidence(rubric: Rubric, data: Data, rows: Sequence[int], spec: HeadDesign, meta: dict[str, Any]) -> Any:
    """Out-of-fold scores of ``rows`` (the version's evidence) and the fold heads."""
    heads, fold = cross_fitted(
        rubric.dimensions,
        {k: v[list(rows)] for k, v in data.matrices.items()},
        {k: [v[i] for i in rows] for k, v in data.targets.items()},
        [data.groups[i] for i in rows],
        subsets=spec.subsets,
        blends=spec.blends,
    )
    scores = out_of_fold_scores(rubric, heads, fold, [data.features[i] for i in rows], meta)
    return scores, heads


def _point(
    rubric: Rubric, train: Data, test: Data, rows: Sequence[int], spec: HeadDesign, meta: dict[str, Any]
) -> dict[str, Any]:
    head = _fit(rubric, train, rows, spec, meta)
    tested = evaluate_predictions(rubric, test.records, apply_head(rubric, head, test.features), n_boot=1)
    prefilled = None
    scores, _ = _evidence(rubric, train, rows, spec, meta)
    if all(s is not None for s in scores):
        evidence = evaluate_predictions(rubric, [train.records[i] for i in rows], scores, n_boot=1)
        decisions = PrefillPolicy().decide(rubric.dimension_names, evidence)
        prefilled = sum(d.prefilled for d in decisions.values())
    else:
        prefilled = 0
    return {
        "alpha_dims": tested["alpha_dims"],
        "prefilled": prefilled,
        "tasks": len(rows),
        "annotations": sum(len(train.records[i].annotations) for i in rows),
        "head": head,
    }


def _acquire(
    order: str,
    rubric: Rubric,
    train: Data,
    chosen: list[int],
    k: int,
    head: Any,
    spec: HeadDesign,
    meta: dict[str, Any],
    rng: random.Random,
) -> list[int]:
    """The next ``k`` training tasks by ``order`` among those not chosen."""
    taken = set(chosen)
    pool = [i for i in range(len(train.records)) if i not in taken]
    if order == "random":
        return rng.sample(pool, min(k, len(pool)))
    if order == "spread":  # one task per dialogue not yet labeled, drawn at random; then at random
        return _one_per_group(train, chosen, rng.sample(pool, len(pool)), k)
    if order in ("uncertainty", "diverse"):
        scores = apply_head(rubric, head, [train.features[i] for i in pool])
        ranked = [i for _, i in sorted(zip([s.confidence for s in scores], pool, strict=True))]
        if order == "uncertainty":
            return ranked[:k]
        return _one_per_group(train, chosen, ranked, k)  # least certain first
    if order == "disagreement":
        _, heads = _evidence(rubric, train, chosen, spec, meta)
        spread = np.zeros(len(pool))
        usable = [h for h in heads if h is not None]
        for dim in rubric.dimensions:
            values = []
            for h in usable:
                h.meta = dict(meta)
                values.append(
                    [
                        s.dimensions[dim.name].expected or 0.0
                        for s in apply_head(rubric, h, [train.features[i] for i in pool])
                    ]
                )
            spread += np.std(np.array(values), axis=0)
        return [pool[j] for j in np.argsort(-spread)[:k]]
    raise ValueError(f"unknown order {order!r}")


def _one_per_group(train: Data, chosen: Sequence[int], ranked: Sequence[int], k: int) -> list[int]:
    """The first ``k`` of ``ranked`` taking one task per dialogue not yet chosen; filled up in ``ranked``'s
    order when there are too few new dialogues."""
    picked, seen = [], {train.groups[i] for i in chosen}
    for i in ranked:
        if train.groups[i] not in seen:
            picked.append(i)
            seen.add(train.groups[i])
        if len(picked) == k:
            return picked
    return picked + [i for i in ranked if i not in picked][: k - len(picked)]


def _log_point(order: str, n: int, repeat: int, point: dict[str, Any]) -> None:
    alpha = point["alpha_dims"] or 0
    log.info("%s n=%d repeat %d: alpha %.3f, pre-filled %s", order, n, repeat, alpha, point["prefilled"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.from_env(base_model=args.base_model)
    rubric = load_rubric("summary-quality", settings.rubric_dir)
    splits = load_dialsummeval(Path(args.data_dir), rubric)
    judge = Judge.from_settings(settings)
    started = time.monotonic()
    features = {name: extract_features(judge, rubric, splits[name], name)[1] for name in ("train", args.split)}
    if getattr(args, "also_base", None):  # a second base's pooled states in front of the first's features
        other = Judge.from_settings(Settings.from_env(base_model=args.also_base))
        for name in features:
            extra = extract_features(other, rubric, splits[name], name)[1]
            features[name] = [
                dataclasses.replace(f, shared=np.concatenate([e.shared, f.shared]))
                for f, e in zip(features[name], extra, strict=True)
            ]
    feature_seconds = time.monotonic() - started
    config = TrainConfig.build(rubric, args.head)
    spec = head_design(config, rubric, features["train"][0])
    train = Data(rubric, splits["train"], features["train"], spec)
    test = Data(rubric, splits[args.split], features[args.split], spec)
    meta = spec.meta
    sizes = [len(train.records) if s == "all" else int(s) for s in args.sizes.split(",")]
    annotators = getattr(args, "annotators", None)
    trains, draws = training_draws(rubric, train, annotators, args.repeats)
    curves: dict[str, dict[str, Any]] = {}
    for order in args.orders.split(","):
        per_n: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
        for repeat in range(args.repeats):
            train = trains[repeat]  # the same tasks and features each repeat; with --annotators, other labels
            rng = random.Random(1000 * repeat + 7)
            if order == "random":
                shuffled = list(range(len(train.records)))
                rng.shuffle(shuffled)
                for n in sizes:
                    if n == len(train.records) and repeat and annotators is None:
                        per_n[n].append(per_n[n][0])  # every task, every annotation: no draw to repeat
                        continue
                    point = _point(rubric, train, test, shuffled[:n], spec, meta)
                    per_n[n].append({k: v for k, v in point.items() if k != "head"})
                    _log_point(order, n, repeat, point)
                continue
            chosen = rng.sample(range(len(train.records)), START)
            point = _point(rubric, train, test, chosen, spec, meta)
            for n in sizes:
                while len(chosen) < n:
                    k = min(len(chosen), n - len(chosen))  # double the set each step
                    chosen += _acquire(order, rubric, train, chosen, k, point["head"], spec, meta, rng)
                    point = _point(rubric, train, test, chosen, spec, meta)
                per_n[n].append({k: v for k, v in point.items() if k != "head"})
                _log_point(order, n, repeat, point)
        curves[order] = {
            str(n): {
                "alpha_dims": float(np.mean([p["alpha_dims"] for p in points])),
                "alpha_dims_sd": float(np.std([p["alpha_dims"] for p in points])),
                "prefilled": float(np.mean([p["prefilled"] for p in points])),
                "repeats": len(points),
                "tasks": n,
                "annotations": float(np.mean([p["annotations"] for p in points])),
            }
            for n, points in per_n.items()
        }
    return {
        "curves": curves,
        "sizes": {"train": len(train.records), args.split: len(test.records)},
        "split": args.split,
        "annotators": annotators,
        "levers": args.levers,
        "also_base": getattr(args, "also_base", None),
        "annotator_draws": draws,
        "test_labels": "consensus of every annotation of a task",
        "feature_seconds": round(feature_seconds, 1),
        "feature_store": judge.feature_store.stats.as_dict() if judge.feature_store else None,
    }


def plot(entry: dict[str, Any], title: str, path: Path = CURVE_SVG, per_task: int | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for order, points in curve_orders(entry).items():
        ns = sorted(int(n) for n in points)
        xs = [points[str(n)].get("annotations", n) if per_task else n for n in ns]
        mean = np.array([points[str(n)]["alpha_dims"] for n in ns])
        sd = np.array([points[str(n)]["alpha_dims_sd"] for n in ns])
        ax.plot(xs, mean, marker="o", label=f"{order} (shipped)" if order == entry.get("shipped") else order)
        ax.fill_between(xs, mean - sd, mean + sd, alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel(f"training annotations ({per_task} per task)" if per_task else "annotated training tasks")
    ax.set_ylabel("test alpha per dimension")
    ax.set_title(title)
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,20,40,80,160,320,all")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--orders", default="random,uncertainty")
    parser.add_argument("--split", default="test", choices=["dev", "test"])
    parser.add_argument("--base-model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--tag", default="default")
    parser.add_argument(
        "--annotators",
        type=int,
        default=None,
        help="keep this many annotations per training task, drawn at random per repeat (default: all); "
        "the test labels stay the consensus of all",
    )
    parser.add_argument(
        "--head",
        action="append",
        default=[],
        metavar="FIELD=on|off",
        help="a lever against the default head (repeatable): head_lexical or head_share (TrainConfig) on or off; "
        "the curves are stored in CURVE.json under '<base model> <field>=<on|off> ...'",
    )
    parser.add_argument(
        "--also-base",
        help="a second base model whose target-pooled states are read too and put in front of the first's "
        "features (stored as '<base model>+<also base>')",
    )
    args = parser.parse_args(argv)
    levers = {}
    for item in args.head:
        name, _, value = item.partition("=")
        if name not in ("head_lexical", "head_share") or value not in ("on", "off"):
            parser.error(f"--head {item!r}: expected head_lexical=on|off or head_share=on|off")
        levers[name] = value
    args.levers = [f"{k}={v}" for k, v in sorted(levers.items())]
    args.head = {k: v == "on" for k, v in levers.items()}
    if args.annotators is not None and args.annotators < 1:
        parser.error("--annotators: expected at least 1")
    if not start(args.data_dir, log):
        return 0
    started = time.monotonic()
    result = run(args)
    stored = json.loads(CURVE_JSON.read_text(encoding="utf-8")) if CURVE_JSON.is_file() else {}
    key = curve_key(args.split, args.annotators)
    variant = " ".join([args.base_model + (f"+{args.also_base}" if args.also_base else ""), *args.levers])
    store_curves(stored, key, variant, result["curves"])
    CURVE_JSON.write_text(json.dumps(stored, indent=1) + "\n", encoding="utf-8")
    if args.split == "test" and not args.levers and not args.also_base:
        per_task = args.annotators
        plot(
            stored[key][args.base_model],
            f"DialSummEval, {args.base_model}"
            + (f", {per_task} annotation(s) per training task" if per_task else "")
            + ": test alpha per dimension",
            CURVE_SVG.with_name(f"curve-{per_task}-annotator.svg") if per_task else CURVE_SVG,
            per_task,
        )
    record_run(
        {
            "dataset": "curve",
            "tag": args.tag,
            "note": None,
            "base_model": args.base_model,
            "command": "python benchmarks/curve.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": machine(),
            "phases": {"features (store)": {"seconds": result["feature_seconds"], "peak_rss_mb": 0}},
            "wall_seconds": round(time.monotonic() - started, 1),
            **result,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
