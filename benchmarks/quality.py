"""Quality benchmark: how well the judge agrees with real human annotators, next to the references a user
might pick instead.

    python benchmarks/quality.py dialsummeval [--tag NAME] [training options]
    python benchmarks/quality.py goemotions --train-size 1200 [--tag NAME] [training options]
    python benchmarks/quality.py report            # rewrite RESULTS.md from RESULTS.json

Data come from ``../shared/data`` (``--data-dir``); they are never copied into the repository. Without them the
script says so and exits 0 having done nothing.

* **DialSummEval** (``summary-quality`` rubric): train on the ``train`` dialogues of ``split.json``, select on
  ``dev``, report on ``test`` (split by dialogue, so no dialogue's summaries leak across splits). Per dimension:
  Krippendorff's alpha (interval and ordinal) of each system against the human consensus, the human-human
  alpha, and the "one more annotator" delta-alpha.
* **GoEmotions-Ekman** (``emotion-ekman`` rubric): train on a seeded subsample of ``train`` (``--train-size``),
  report on the full ``dev`` split: accuracy, macro-F1 and nominal alpha.

Systems: the most frequent training label (majority), TF-IDF + ridge regression (scores) or logistic
regression (classes), the embedded base model zero-shot (v0) and the LoRA adapter trained by
``worker.pipeline.run_training`` -- the same code the RQ job runs -- with argmax and expected-score decoding.

Every run is appended to ``benchmarks/RESULTS.json`` under its tag (same tag: replaced) and RESULTS.md is
rewritten from it. Wall time and peak resident memory of each phase are recorded; peak memory is the process's
high-water mark after the phase (``ru_maxrss``), so it covers every earlier phase too.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import platform
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.core.rubric import Rubric, load_rubric  # noqa: E402
from backend.core.scores import DimensionScore, TaskScore  # noqa: E402
from backend.model.judge import Judge  # noqa: E402
from backend.settings import Settings  # noqa: E402
from support import runs as run_records  # noqa: E402
from support.runs import load_runs, reused_v0  # noqa: E402
from support.sampling import class_of, tempered_sample  # noqa: E402
from worker.dataset import TARGET_MODES, record_consensus  # noqa: E402
from worker.evaluate import evaluate_judge, evaluate_predictions, majority_scores, scored_metrics  # noqa: E402
from worker.source import Record, read_file  # noqa: E402

log = logging.getLogger("benchmarks.quality")

RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"
DEFAULT_DATA = REPO.parent / "shared" / "data"


# --------------------------------------------------------------------------------------------------
# data


def load_dialsummeval(data_dir: Path, rubric: Rubric) -> dict[str, list[Record]]:
    """Records of ratings.jsonl, split by dialogue as in split.json."""
    folder = data_dir / "dialsummeval"
    split = json.loads((folder / "split.json").read_text(encoding="utf-8"))
    of = {d: name for name in ("train", "dev", "test") for d in split[name]}
    out: dict[str, list[Record]] = {"train": [], "dev": [], "test": []}
    for record in read_file(folder / "ratings.jsonl", rubric):
        dialogue = record.task_id.rsplit("-", 1)[0]
        if dialogue not in of:
            raise ValueError(f"dialogue {dialogue} of {record.task_id} is in no split of split.json")
        out[of[dialogue]].append(dataclasses.replace(record, group=f"dialogue={dialogue}"))  # 14 summaries each
    return out


def load_goemotions(
    data_dir: Path, rubric: Rubric, train_size: int, seed: int, class_power: float | None = None
) -> dict[str, list[Record]]:
    """A seeded subsample of ``train`` (``train_size`` rows; 0 = all) and the whole ``dev`` split.
    ``class_power``: None draws rows uniformly (classes in their natural proportions); p gives class c a
    quota proportional to count_c ** p (1: natural, 0.5: square-root tempered, 0: balanced)."""
    folder = data_dir / "goemotions-ekman"
    everything = read_file(folder / "train.jsonl", rubric)
    train = everything
    if train_size and train_size < len(everything):
        rng = random.Random(seed)
        train = (
            rng.sample(everything, train_size)
            if class_power is None
            else tempered_sample(rubric, everything, train_size, class_power, rng)
        )
    return {"train": train, "train_all": everything, "dev": read_file(folder / "dev.jsonl", rubric)}


# --------------------------------------------------------------------------------------------------
# references


def _consensus_values(rubric: Rubric, records: Sequence[Record], name: str) -> list[float]:
    """Per record, the mean human score of a scale dimension (None-free: records without it are skipped by
    the caller through NaN handling)."""
    out = []
    for record in records:
        values = [int(a.labels[name]) for a in record.annotations if name in a.labels]
        out.append(sum(values) / len(values) if values else float("nan"))
    return out


def _score(rubric: Rubric, labels: dict[str, str], expected: dict[str, float | None]) -> TaskScore:
    dims = {}
    for dim in rubric.dimensions:
        label = labels[dim.name]
        dims[dim.name] = DimensionScore(
            label=label, probs={lab: float(lab == label) for lab in dim.labels}, expected=expected.get(dim.name)
        )
    return TaskScore(dims)


def _text(rubric: Rubric, record: Record) -> str:
    return "\n".join(record.inputs[name] for name in rubric.input_names)


def _vectorizer() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion(
        [
            ("words", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, lowercase=False)),
            (
                "chars",
                TfidfVectorizer(
                    analyzer="char_wb",
                    ngram_range=(2, 5),
                    min_df=2,
                    sublinear_tf=True,
                    lowercase=False,
                    max_features=50000,
                ),
            ),
        ]
    )


def ridge_predictions(
    rubric: Rubric, train: Sequence[Record], dev: Sequence[Record], test: Sequence[Record]
) -> tuple[list[TaskScore], list[TaskScore], dict[str, float]]:
    """TF-IDF (word 1-2-grams and character 2-5-grams of the summary and of the dialogue) + ridge regression
    on the consensus mean per dimension; the ridge strength is chosen per dimension on ``dev`` by interval
    alpha. Labels are the prediction rounded into the scale; ``expected`` keeps the raw prediction."""
    import numpy as np
    from sklearn.linear_model import Ridge

    from backend.core.agreement import krippendorff_alpha

    target = rubric.target.name
    others = [n for n in rubric.input_names if n != target]
    vec_target, vec_other = _vectorizer(), _vectorizer()
    x_train = _stack(
        vec_target.fit_transform([r.inputs[target] for r in train]),
        vec_other.fit_transform(["\n".join(r.inputs[n] for n in others) for r in train]) if others else None,
    )

    def features(records: Sequence[Record]) -> Any:
        return _stack(
            vec_target.transform([r.inputs[target] for r in records]),
            vec_other.transform(["\n".join(r.inputs[n] for n in others) for r in records]) if others else None,
        )

    x_dev, x_test = features(dev), features(test)
    raw_dev: dict[str, Any] = {}
    raw_test: dict[str, Any] = {}
    chosen: dict[str, float] = {}
    for dim in rubric.dimensions:
        y = np.array(_consensus_values(rubric, train, dim.name))
        keep = ~np.isnan(y)
        human_dev = np.array(_consensus_values(rubric, dev, dim.name))
        best = None
        for strength in (0.3, 1.0, 3.0, 10.0, 30.0):
            model = Ridge(alpha=strength).fit(x_train[keep], y[keep])
            pred = model.predict(x_dev)
            score = krippendorff_alpha([list(human_dev), list(pred)], "interval")
            if best is None or score > best[0]:
                best = (score, strength, model)
        assert best is not None
        chosen[dim.name] = best[1]
        raw_dev[dim.name] = best[2].predict(x_dev)
        raw_test[dim.name] = best[2].predict(x_test)

    def to_scores(raw: dict[str, Any], n: int) -> list[TaskScore]:
        out = []
        for i in range(n):
            labels, expected = {}, {}
            for dim in rubric.dimensions:
                values = dim.values or []
                value = float(raw[dim.name][i])
                labels[dim.name] = str(min(values, key=lambda v, x=value: abs(v - x)))
                expected[dim.name] = value
            out.append(_score(rubric, labels, expected))
        return out

    return to_scores(raw_dev, len(dev)), to_scores(raw_test, len(test)), chosen


def _stack(a: Any, b: Any) -> Any:
    from scipy.sparse import hstack

    return a.tocsr() if b is None else hstack([a, b]).tocsr()


def logreg_predictions(
    rubric: Rubric, train: Sequence[Record], test: Sequence[Record]
) -> tuple[list[TaskScore], dict[str, Any]]:
    """TF-IDF + logistic regression (balanced class weights); C chosen by 3-fold cross-validated macro-F1 on
    the training split (the dev split is where results are reported, so it is not used for choosing)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    dim = rubric.dimensions[0]
    labels = [record_consensus(rubric, r)[dim.name] for r in train]
    pipe = Pipeline([("tfidf", _vectorizer()), ("clf", LogisticRegression(max_iter=2000, class_weight="balanced"))])
    search = GridSearchCV(pipe, {"clf__C": [1.0, 3.0, 10.0]}, scoring="f1_macro", cv=3, n_jobs=1)
    search.fit([_text(rubric, r) for r in train], labels)
    predicted = search.predict([_text(rubric, r) for r in test])
    return [_score(rubric, {dim.name: str(p)}, {}) for p in predicted], {"C": search.best_params_["clf__C"]}


# --------------------------------------------------------------------------------------------------
# summaries


def scale_row(rubric: Rubric, metrics: dict[str, Any]) -> dict[str, Any]:
    """Per-dimension alpha (interval, ordinal), delta-alpha, expected-decoding alpha, plus the flat figures."""
    row: dict[str, Any] = {
        "alpha_dims": metrics.get("alpha_dims"),
        "delta_alpha_dims": metrics.get("delta_alpha_dims"),
        "alpha_flat": metrics["alpha_flat"],
        "alpha_flat_ci": metrics["alpha_flat_ci"],
        "alpha_flat_ordinal": metrics["alpha_flat_ordinal"],
        "alpha_flat_expected": metrics.get("alpha_flat_expected"),
        "delta_alpha_flat": metrics["delta_alpha_flat"],
        "dimensions": {},
    }
    for dim in rubric.dimensions:
        entry = metrics["dimensions"][dim.name]
        row["dimensions"][dim.name] = {
            "alpha_interval": entry["interval"]["alpha_system"],
            "alpha_interval_ci": entry["interval"]["alpha_system_ci"],
            "alpha_ordinal": entry["ordinal"]["alpha_system"],
            "delta_alpha": entry["interval"]["delta_alpha"],
            "alpha_expected": entry.get("alpha_expected"),
            "alpha_humans": entry["interval"]["alpha_humans"],
            "alpha_humans_ordinal": entry["ordinal"]["alpha_humans"],
            "exact": entry["interval"]["exact"],
            "mae": entry["interval"]["mae"],
            "evidence": entry.get("evidence"),
            "predicted": entry.get("predicted_distribution"),
            "distinct_labels": sum(1 for v in (entry.get("predicted_distribution") or {}).values() if v),
        }
    return row


def class_row(rubric: Rubric, metrics: dict[str, Any]) -> dict[str, Any]:
    entry = metrics["dimensions"][rubric.dimensions[0].name]["nominal"]
    return {
        "accuracy": entry["exact"],
        "macro_f1": entry["macro_f1"],
        "alpha_nominal": entry["alpha_system"],
        "alpha_nominal_ci": entry["alpha_system_ci"],
        "per_class_f1": entry["per_class_f1"],
        "predicted": metrics["dimensions"][rubric.dimensions[0].name].get("predicted_distribution"),
    }


class Phases:
    """Wall time and peak memory (process high-water mark) per phase."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, float]] = {}

    def run(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        log.info("phase %s ...", name)
        value = fn(*args, **kwargs)
        seconds = time.monotonic() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.rows[name] = {"seconds": round(seconds, 1), "peak_rss_mb": round(peak)}
        log.info("phase %s: %.1f s, peak RSS %.0f MB", name, seconds, peak)
        return value


def machine() -> dict[str, Any]:
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem, 1),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "avx512_bf16": "avx512_bf16" in _cpu_flags(),
    }


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# --------------------------------------------------------------------------------------------------
# runs


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "lora_r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "targets": args.targets,
        "precision": args.precision,
        "seed": args.seed,
        "token_dropout_rate": args.token_dropout_rate,
        "micro_batch_size": args.micro_batch_size,
        "method": args.method,
    }
    out = {k: v for k, v in values.items() if v is not None}
    if args.no_augment:
        out["augment"] = False
    if args.no_share_prefix:
        out["share_prefix"] = False
    return out


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {"base_model": args.base_model}
    if args.rubric_dir:
        overrides["rubric_dir"] = Path(args.rubric_dir)
    return Settings.from_env(**overrides)


def _train_and_score(
    args: argparse.Namespace,
    settings: Settings,
    rubric: Rubric,
    train: Sequence[Record],
    dev: Sequence[Record],
    test: Sequence[Record],
    phases: Phases,
    evaluate: Any,
) -> dict[str, Any]:
    """v0 and the fine-tuned adapter on dev and test; returns their rows and the training figures."""
    from backend.model.head import is_head
    from backend.model.judge import apply_head
    from worker.pipeline import extract_features, run_training
    from worker.train import TrainConfig

    out: dict[str, Any] = {}
    judge = phases.run("load base model", Judge.from_settings, settings)
    method = TrainConfig.build(rubric, _overrides(args)).method_for(rubric)
    if args.reuse_v0:
        out["v0"] = {"test": reused_v0(args, rubric, len(test))}
    elif method == "lora" or args.skip_train:  # a feature head scores v0 on test in its own pass (below)
        out["v0"] = {"test": evaluate(phases.run("v0 on test", evaluate_judge, judge, rubric, test, None))}
    else:
        out["v0"] = {}
    if args.skip_train:
        out["v0"]["dev"] = evaluate(phases.run("v0 on dev", evaluate_judge, judge, rubric, dev, None))
        return out
    work = Path(args.work_dir) / f"{args.dataset}-{args.tag}-{int(time.time())}"
    result = phases.run(
        "train",
        run_training,
        settings,
        rubric,
        train,
        work,
        overrides=_overrides(args),
        heldout=dev,
        extra={"benchmark": args.tag},
    )
    metrics = result.metrics
    scored_dev = metrics.get("heldout") or metrics  # a feature head: dev is its extra held-out set
    out["v0"]["dev"] = evaluate(scored_dev["base"])  # run_training scored the base model on dev already
    judge.load_adapter("bench", work)
    if is_head(work):  # one base-model pass on test gives v0's scores and the head's features
        scores, features = phases.run("features of test", extract_features, judge, rubric, test, "test")
        if not args.reuse_v0:
            out["v0"]["test"] = evaluate(scored_metrics(rubric, test, scores, 0.0, "base model"))
        test_metrics = scored_metrics(
            rubric, test, apply_head(rubric, judge.head("bench"), features), 0.0, "feature head"
        )
    else:
        test_metrics = phases.run("adapter on test", evaluate_judge, judge, rubric, test, "bench")
    out["adapter"] = {
        "dev": evaluate(scored_dev["candidate"]),
        "test": evaluate(test_metrics),
        "method": metrics["method"],
    }
    out["decisions"] = product_decisions(rubric, metrics, settings)
    out["training"] = {
        **metrics["training"],
        "config": metrics["config"],
        "counts": metrics["counts"],
        "history": metrics["history"],
        "adapter_dir": str(work),
        "method": metrics["method"],
    }
    return out


def product_decisions(rubric: Rubric, metrics: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """What the product would do with the version trained on the training split: its evidence (out-of-fold
    over the training tasks for a feature head), the pre-fill decision per dimension with its interval, and the
    promotion decision against v0."""
    from backend.core.prefill import PrefillPolicy

    decisions = PrefillPolicy.from_settings(settings).decide(rubric.dimension_names, metrics["candidate"])
    return {
        "evidence": metrics.get("evidence"),
        "prefill": {
            name: {
                "prefilled": decision.prefilled,
                "reason": decision.reason,
                "evidence": metrics["candidate"]["dimensions"][name].get("evidence"),
            }
            for name, decision in decisions.items()
        },
        "promoted": metrics["promoted"],
        "decision": metrics["decision"],
        "comparison": metrics.get("comparison"),
    }


def run_dialsummeval(args: argparse.Namespace) -> dict[str, Any]:
    settings = _settings(args)
    rubric = load_rubric("summary-quality", settings.rubric_dir)
    phases = Phases()
    splits = phases.run("load data", load_dialsummeval, Path(args.data_dir), rubric)
    train, dev, test = splits["train"], splits["dev"], splits["test"]
    if args.train_limit:
        train = train[: args.train_limit]
    if args.eval_limit:
        dev, test = dev[: args.eval_limit], test[: args.eval_limit]
    log.info("DialSummEval: %d train, %d dev, %d test summaries", len(train), len(dev), len(test))

    def evaluate(metrics: dict[str, Any]) -> dict[str, Any]:
        return scale_row(rubric, metrics)

    systems: dict[str, Any] = {}
    humans_only = evaluate_predictions(rubric, test, None)
    systems["majority"] = {
        s: evaluate(evaluate_predictions(rubric, recs, majority_scores(rubric, train, len(recs))))
        for s, recs in (("dev", dev), ("test", test))
    }
    dev_ridge, test_ridge, chosen = phases.run("tfidf+ridge", ridge_predictions, rubric, train, dev, test)
    systems["tfidf_ridge"] = {
        "dev": evaluate(evaluate_predictions(rubric, dev, dev_ridge)),
        "test": evaluate(evaluate_predictions(rubric, test, test_ridge)),
        "ridge_alpha": chosen,
    }
    systems.update(_train_and_score(args, settings, rubric, train, dev, test, phases, evaluate))
    training = systems.pop("training", None)
    decisions = systems.pop("decisions", None)
    humans = {
        d.name: {
            "interval": humans_only["dimensions"][d.name]["interval"]["alpha_humans"],
            "ordinal": humans_only["dimensions"][d.name]["ordinal"]["alpha_humans"],
        }
        for d in rubric.dimensions
    }
    return {
        "dataset": "dialsummeval",
        "rubric": rubric.name,
        "sizes": {"train": len(train), "dev": len(dev), "test": len(test)},
        "humans_test": humans,
        "humans_test_flat": humans_only["alpha_humans_flat"],
        "systems": systems,
        "training": training,
        "decisions": decisions,
        "phases": phases.rows,
    }


# --------------------------------------------------------------------------------------------------
# probe: does the judge LM's representation carry per-task signal?


def _feature_cache(args: argparse.Namespace, settings: Settings) -> Path:
    if args.features_cache:
        return Path(args.features_cache)
    return Path(args.work_dir) / f"features-{args.base_model}-{settings.model_precision}"


def cached_features(
    folder: Path, split: str, rubric: Rubric, records: Sequence[Record], judge_factory: Any
) -> tuple[list[TaskScore], list[Any]]:
    """The base model's scores and features of ``records`` (``Judge.score_with_features``), read from
    ``folder/<split>.npz|json`` when an earlier run stored them for the same task ids, else computed and stored."""
    import numpy as np

    from backend.core.scores import TaskFeatures
    from worker.pipeline import extract_features

    arrays_path, meta_path = folder / f"{split}.npz", folder / f"{split}.json"
    ids = [r.task_id for r in records]
    if arrays_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta["ids"] == ids:
            with np.load(arrays_path) as stored:  # read each array once (indexing the NpzFile re-reads it)
                arrays = {key: stored[key] for key in stored.files}
            features = [
                TaskFeatures(
                    shared=arrays["shared"][i], dimensions={d: arrays[f"dim.{d}"][i] for d in rubric.dimension_names}
                )
                for i in range(len(ids))
            ]
            scores = [
                TaskScore(
                    {
                        name: DimensionScore(label=v["label"], probs=v["probs"], expected=v["expected"])
                        for name, v in row.items()
                    }
                )
                for row in meta["scores"]
            ]
            log.info("features of %s read from %s", split, arrays_path)
            return scores, features
    scores, features = extract_features(judge_factory(), rubric, records, split)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"shared": np.stack([f.shared for f in features])}
    arrays.update({f"dim.{d}": np.stack([f.dimensions[d] for f in features]) for d in rubric.dimension_names})
    np.savez(arrays_path, **arrays)
    meta_path.write_text(
        json.dumps(
            {
                "ids": ids,
                "scores": [
                    {
                        k: {"label": v.label, "probs": dict(v.probs), "expected": v.expected}
                        for k, v in sc.dimensions.items()
                    }
                    for sc in scores
                ],
            }
        ),
        encoding="utf-8",
    )
    return scores, features


def _lazy_judge(settings: Settings) -> Any:
    """A function that loads the judge on its first call only (cached features need no model)."""
    return functools.lru_cache(maxsize=1)(lambda: Judge.from_settings(settings))


def _cut(features: Any, shared: slice, dims: slice) -> Any:
    """``features`` (``TaskFeatures``) keeping the ``shared`` slice of its shared part and the ``dims`` slice of
    each dimension's part."""
    from backend.core.scores import TaskFeatures

    return TaskFeatures(shared=features.shared[shared], dimensions={d: v[dims] for d, v in features.dimensions.items()})


def _subsets(hidden: int) -> dict[str, Any]:
    """Feature subsets the probe compares: (shared part slice, dimension part slice)."""
    both, last = slice(0, 2 * hidden), slice(hidden, 2 * hidden)
    return {
        "label position, last layer": (slice(0, 0), last),
        "label position, middle + last layer": (slice(0, 0), both),
        "label position + the judge's label distribution": (slice(0, 0), slice(0, None)),
        "the judge's label distribution only (calibrating v0)": (slice(0, 0), slice(2 * hidden, None)),
        "target tokens pooled, middle + last layer": (both, slice(0, 0)),
        "LM statistics of the target (3 numbers)": (slice(2 * hidden, None), slice(0, 0)),
        "target pooled + LM statistics (the feature head's default, head_features=target)": (
            slice(0, None),
            slice(0, 0),
        ),
        "all (head_features=all)": (slice(0, None), slice(0, None)),
    }


def run_probe(args: argparse.Namespace) -> dict[str, Any]:
    """Linear probes (the feature head's cross-validated ridge + calibration) on subsets of the base model's
    features: does the representation carry per-task signal, and where?"""
    import numpy as np

    from backend.model.head import fit_head
    from backend.model.judge import apply_head
    from worker.pipeline import head_targets

    settings = _settings(args)
    rubric = load_rubric("summary-quality", settings.rubric_dir)
    phases = Phases()
    splits = phases.run("load data", load_dialsummeval, Path(args.data_dir), rubric)
    folder = _feature_cache(args, settings)
    factory = _lazy_judge(settings)
    feats = {
        name: phases.run(f"features of {name}", cached_features, folder, name, rubric, splits[name], factory)[1]
        for name in ("train", "dev", "test")
    }
    hidden = (len(feats["train"][0].shared) - 3) // 2
    targets = head_targets(rubric, splits["train"])
    groups = [r.split_key for r in splits["train"]]
    rows: dict[str, Any] = {}
    for name, (shared_part, dim_part) in _subsets(hidden).items():
        cut = functools.partial(_cut, shared=shared_part, dims=dim_part)
        matrices = {d: np.stack([cut(f).vector(d) for f in feats["train"]]) for d in rubric.dimension_names}
        started = time.monotonic()
        head = fit_head(rubric.dimensions, matrices, targets, groups)
        seconds = time.monotonic() - started
        size = int(matrices[rubric.dimension_names[0]].shape[1])
        row: dict[str, Any] = {
            "fit_seconds": round(seconds, 2),
            "features": size,
            "oof_correlation": {d: h.cv.get("oof_correlation") for d, h in head.dimensions.items()},
        }
        for split in ("train", "dev", "test"):
            predictions = apply_head(rubric, head, [cut(f) for f in feats[split]])
            row[split] = scale_row(rubric, evaluate_predictions(rubric, splits[split], predictions, n_boot=1))
        rows[name] = row
        log.info("probe %s: dev alpha per dimension %s", name, _fmt(row["dev"]["alpha_dims"]))
    dev_ridge, test_ridge, _ = ridge_predictions(rubric, splits["train"], splits["dev"], splits["test"])
    ridge = {
        "dev": scale_row(rubric, evaluate_predictions(rubric, splits["dev"], dev_ridge, n_boot=1)),
        "test": scale_row(rubric, evaluate_predictions(rubric, splits["test"], test_ridge, n_boot=1)),
    }
    return {
        "dataset": "probe",
        "rubric": rubric.name,
        "hidden_size": hidden,
        "sizes": {k: len(v) for k, v in splits.items()},
        "probes": rows,
        "tfidf_ridge": ridge,
        "phases": phases.rows,
    }


def run_probe_goemotions(args: argparse.Namespace) -> dict[str, Any]:
    """The feature head on GoEmotions-Ekman: fitted on the training subsample, chosen on ``select`` (1,000
    other training rows, so dev stays the reporting split), reported on dev, next to TF-IDF + logreg."""
    import numpy as np

    from backend.model.head import fit_head
    from backend.model.judge import apply_head
    from worker.pipeline import head_targets

    settings = _settings(args)
    rubric = load_rubric("emotion-ekman", settings.rubric_dir)
    phases = Phases()
    loaded = phases.run(
        "load data", load_goemotions, Path(args.data_dir), rubric, args.train_size, args.seed or 0, args.class_power
    )
    taken = {r.task_id for r in loaded["train"]}
    rest = [r for r in loaded["train_all"] if r.task_id not in taken]
    splits = {"train": loaded["train"], "select": random.Random(1).sample(rest, 1000), "dev": loaded["dev"]}
    if args.eval_limit:
        splits["dev"] = splits["dev"][: args.eval_limit]
    folder = _feature_cache(args, settings) / "goemotions"
    factory = _lazy_judge(settings)
    feats = {
        name: phases.run(f"features of {name}", cached_features, folder, name, rubric, recs, factory)[1]
        for name, recs in splits.items()
    }
    hidden = (len(feats["train"][0].shared) - 3) // 2
    subsets = {
        "target pooled + LM statistics (head_features=target)": (slice(0, None), slice(0, 0)),
        "label position, middle + last layer": (slice(0, 0), slice(0, 2 * hidden)),
        "all (head_features=all)": (slice(0, None), slice(0, None)),
        "the judge's label distribution only (calibrating v0)": (slice(0, 0), slice(2 * hidden, None)),
    }
    targets = head_targets(rubric, splits["train"])
    rows: dict[str, Any] = {}
    for name, (shared_part, dim_part) in subsets.items():
        cut = functools.partial(_cut, shared=shared_part, dims=dim_part)
        matrices = {d: np.stack([cut(f).vector(d) for f in feats["train"]]) for d in rubric.dimension_names}
        head = fit_head(rubric.dimensions, matrices, targets, [r.split_key for r in splits["train"]])
        row: dict[str, Any] = {"features": int(matrices[rubric.dimension_names[0]].shape[1])}
        for split in ("select", "dev"):
            predictions = apply_head(rubric, head, [cut(f) for f in feats[split]])
            row[split] = class_row(rubric, evaluate_predictions(rubric, splits[split], predictions, n_boot=1))
        rows[name] = row
        log.info(
            "probe %s: select macro-F1 %s, dev macro-F1 %s",
            name,
            _fmt(row["select"]["macro_f1"]),
            _fmt(row["dev"]["macro_f1"]),
        )
    reference = {}
    for split in ("select", "dev"):
        predicted, _ = logreg_predictions(rubric, splits["train"], splits[split])
        reference[split] = class_row(rubric, evaluate_predictions(rubric, splits[split], predicted, n_boot=1))
    return {
        "dataset": "probe-goemotions",
        "rubric": rubric.name,
        "hidden_size": hidden,
        "sizes": {k: len(v) for k, v in splits.items()},
        "probes": rows,
        "tfidf_logreg": reference,
        "phases": phases.rows,
    }


def _probe_goemotions_md(run: dict[str, Any]) -> list[str]:
    lines = [
        "| features (base model) | size | select macro-F1 | dev accuracy | dev macro-F1 | dev α (nominal) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in list(run["probes"].items()) + [
        ("TF-IDF + logreg (reference)", {**run["tfidf_logreg"], "features": "–"})
    ]:
        lines.append(
            f"| {name} | {row['features']} | {_fmt(row['select']['macro_f1'])} | "
            f"{_fmt(row['dev']['accuracy'])} | {_fmt(row['dev']['macro_f1'])} | "
            f"{_fmt(row['dev']['alpha_nominal'])} |"
        )
    return lines


def _probe_md(run: dict[str, Any]) -> list[str]:
    dims = list(next(iter(run["probes"].values()))["dev"]["dimensions"])
    lines = [
        "| features (base model) | size | dev α per dim | test α per dim | test flat α | "
        + " | ".join(f"test {d} α (expected)" for d in dims)
        + " | train α per dim (in-sample) | "
        "cross-validated r on train |",
        "|---|---|---|---|---|" + "---|" * len(dims) + "---|---|",
    ]
    for name, row in run["probes"].items():
        test = row["test"]
        cells = [
            f"{_fmt(test['dimensions'][d]['alpha_interval'])} ({_fmt(test['dimensions'][d]['alpha_expected'])})"
            for d in dims
        ]
        cv = " / ".join(_fmt(row["oof_correlation"][d], 2) for d in dims)
        lines.append(
            f"| {name} | {row['features']} | {_fmt(row['dev']['alpha_dims'])} | {_fmt(test['alpha_dims'])} | "
            f"{_fmt(test['alpha_flat'])} | " + " | ".join(cells) + f" | {_fmt(row['train']['alpha_dims'])} | {cv} |"
        )
    ridge = run["tfidf_ridge"]["test"]
    cells = [
        f"{_fmt(ridge['dimensions'][d]['alpha_interval'])} ({_fmt(ridge['dimensions'][d]['alpha_expected'])})"
        for d in dims
    ]
    lines.append(
        f"| TF-IDF + ridge (reference) | – | {_fmt(run['tfidf_ridge']['dev']['alpha_dims'])} | "
        f"{_fmt(ridge['alpha_dims'])} | {_fmt(ridge['alpha_flat'])} | " + " | ".join(cells) + " | – | – |"
    )
    return lines


def run_goemotions(args: argparse.Namespace) -> dict[str, Any]:
    settings = _settings(args)
    rubric = load_rubric("emotion-ekman", settings.rubric_dir)
    phases = Phases()
    splits = phases.run(
        "load data", load_goemotions, Path(args.data_dir), rubric, args.train_size, args.seed or 0, args.class_power
    )
    train, dev = splits["train"], splits["dev"]
    if args.eval_limit:
        dev = dev[: args.eval_limit]
    log.info("GoEmotions-Ekman: %d train (of %d), %d dev", len(train), len(splits["train_all"]), len(dev))

    def evaluate(metrics: dict[str, Any]) -> dict[str, Any]:
        return class_row(rubric, metrics)

    systems: dict[str, Any] = {
        "majority": {"test": evaluate(evaluate_predictions(rubric, dev, majority_scores(rubric, train, len(dev))))}
    }
    predicted, chosen = phases.run("tfidf+logreg", logreg_predictions, rubric, train, dev)
    systems["tfidf_logreg"] = {"test": evaluate(evaluate_predictions(rubric, dev, predicted)), **chosen}
    if args.all_train_reference:
        predicted, chosen = phases.run("tfidf+logreg (all train)", logreg_predictions, rubric, splits["train_all"], dev)
        systems["tfidf_logreg_all_train"] = {
            "test": evaluate(evaluate_predictions(rubric, dev, predicted)),
            **chosen,
            "train_size": len(splits["train_all"]),
        }
    # no separate selection split here: the adapter's held-out set during training is a slice of dev
    # (its first 300 rows) used only for the validation loss and the promotion figure; results are on all of dev
    scored = _train_and_score(args, settings, rubric, train, dev[:300], dev, phases, evaluate)
    for name in ("v0", "adapter"):
        if name in scored:
            systems[name] = {"test": scored[name]["test"]}
    return {
        "dataset": "goemotions",
        "rubric": rubric.name,
        "sizes": {
            "train": len(train),
            "train_available": len(splits["train_all"]),
            "dev": len(dev),
            "train_classes": dict(sorted(Counter(class_of(rubric, r) for r in train).items())),
        },
        "systems": systems,
        "training": scored.get("training"),
        "phases": phases.rows,
    }


# --------------------------------------------------------------------------------------------------
# results files


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}".replace("-", "−")
    return str(value)


SYSTEM_NAMES = {
    "majority": "majority label",
    "tfidf_ridge": "TF-IDF + ridge",
    "tfidf_logreg": "TF-IDF + logreg",
    "tfidf_logreg_all_train": "TF-IDF + logreg (all 39,555 train rows)",
    "v0": "v0 (base, zero-shot)",
    "adapter": "fine-tuned adapter",
}


def _dialsummeval_md(run: dict[str, Any]) -> list[str]:
    dims = list(run["humans_test"])
    lines = [
        "| system (test) | α per dimension (mean) | flat α (interval) | "
        + " | ".join(f"{d} α int / ord / Δα" for d in dims)
        + " | distinct labels |",
        "|---|---|---|" + "---|" * len(dims) + "---|",
    ]
    humans = [run["humans_test"][d]["interval"] for d in dims]
    lines.append(
        "| humans (3 annotators; coherence 2) | "
        + _fmt(sum(humans) / len(humans))
        + " | "
        + _fmt(run["humans_test_flat"])
        + " | "
        + " | ".join(
            f"{_fmt(run['humans_test'][d]['interval'])} / {_fmt(run['humans_test'][d]['ordinal'])} / –" for d in dims
        )
        + " | – |"
    )
    for name, system in run["systems"].items():
        row = system["test"]
        if not row:
            continue
        cells = [
            f"{_fmt(row['dimensions'][d]['alpha_interval'])} / {_fmt(row['dimensions'][d]['alpha_ordinal'])} / "
            f"{_fmt(row['dimensions'][d]['delta_alpha'])}"
            for d in dims
        ]
        distinct = " / ".join(str(row["dimensions"][d].get("distinct_labels", "–")) for d in dims)
        lines.append(
            f"| {_system_name(name, row, system)} | {_fmt(row.get('alpha_dims'))} | "
            f"{_fmt(row['alpha_flat'])} | " + " | ".join(cells) + f" | {distinct} |"
        )
        if row.get("alpha_flat_expected") is not None and name != "majority":
            label = (
                "raw prediction"
                if name == "tfidf_ridge"
                else (
                    "calibrated mean (continuous, not served)"
                    if system.get("method") == "head"
                    else "expected-score decoding"
                )
            )
            cells = [_fmt(row["dimensions"][d]["alpha_expected"]) for d in dims]
            lines.append(
                f"| {_system_name(name, row, system)}, {label} | – | {_fmt(row['alpha_flat_expected'])} | "
                + " | ".join(f"{c} (interval)" for c in cells)
                + " | – |"
            )
    dev = [
        "",
        "Dev split (selection), α per dimension / flat interval α: "
        + "; ".join(
            f"{_system_name(n, {}, s)} {_fmt(s['dev'].get('alpha_dims'))} / {_fmt(s['dev']['alpha_flat'])}"
            + (
                f" (expected {_fmt(s['dev']['alpha_flat_expected'])})"
                if s["dev"].get("alpha_flat_expected") is not None and n != "majority"
                else ""
            )
            for n, s in run["systems"].items()
            if "dev" in s
        ),
    ]
    decisions = run.get("decisions")
    if decisions:
        ev = decisions.get("evidence") or {}
        dev += [
            "",
            f"What the product decides from the training split ({ev.get('kind')} evidence: {ev.get('tasks')} tasks "
            f"in {ev.get('groups')} groups): promoted over v0: {decisions['promoted']} ({decisions['decision']}).",
            "",
            "| dimension | pre-filled | α (evidence) | 95% group-bootstrap interval |",
            "|---|---|---|---|",
        ]
        for name, d in decisions["prefill"].items():
            e = d.get("evidence") or {}
            dev.append(
                f"| {name} | {'yes' if d['prefilled'] else 'no'} | {_fmt(e.get('estimate'))} | "
                f"[{_fmt(e.get('low'))}, {_fmt(e.get('high'))}] |"
            )
        test_cells = []
        for name in dims:
            e = ((run["systems"].get("adapter") or {}).get("test") or {}).get("dimensions", {}).get(name, {})
            e = e.get("evidence") or {}
            if e:
                test_cells.append(f"{name} {_fmt(e.get('estimate'))} [{_fmt(e.get('low'))}, {_fmt(e.get('high'))}]")
        if test_cells:
            dev += ["", "Test α of the version with its 95% group-bootstrap interval: " + "; ".join(test_cells) + "."]
    return lines + dev


def _curve_md(run: dict[str, Any]) -> list[str]:
    curves = run["curves"]
    sizes = sorted({int(n) for c in curves.values() for n in c})
    per_task = run.get("annotators")
    what = "annotated training tasks"
    if per_task:
        what += (
            f", each with {per_task} of its annotations drawn at random per task and repeat (each point's count of "
            f"annotations is in `benchmarks/CURVE.json`; test labels: the consensus of every annotator)"
        )
    plot = f"curve-{per_task}-annotator.svg" if per_task else "curve.svg"
    lines = [
        f"Test α per dimension (mean ± sd over repeats) and the mean number of the 4 dimensions the version would "
        f"pre-fill, by {what}; split `{run['split']}`. Plot: `benchmarks/{plot}`.",
        "",
        "| order | " + " | ".join(str(n) for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for order, points in curves.items():
        cells = []
        for n in sizes:
            p = points.get(str(n))
            cells.append(
                "–" if p is None else f"{p['alpha_dims']:.3f} ± {p['alpha_dims_sd']:.3f} ({p['prefilled']:.1f})"
            )
        lines.append(f"| {order} | " + " | ".join(cells) + " |")
    return lines


def _interval(e: dict[str, Any]) -> str:
    if e.get("estimate") is None:
        return "undefined"
    low, high = e.get("low"), e.get("high")
    bounds = f" [{low:+.3f}, {high:+.3f}]" if low is not None and high is not None else ""
    return f"{e['estimate']:+.3f}{bounds}"


def _reads_md(run: dict[str, Any]) -> list[str]:
    lines = [
        "α per dimension against the human consensus with its 95% group-bootstrap interval (dialogues as groups), "
        "for each read, and the paired difference one-pass − sequential (the same bootstrap draws for both). The "
        "head: the default feature head fitted on the training split by each read's own features. *v0 expected "
        "score*: v0's expected score under its label distribution, at interval level. ¹ a constant: every task "
        "got the same label from that read.",
        "",
        "| split | system | dimension | sequential | one-pass | one-pass − sequential |",
        "|---|---|---|---|---|---|",
    ]
    for split, systems in run["results"].items():
        for system, dims in systems.items():
            for dim, row in dims.items():
                distinct = row.get("distinct_labels", {})
                mark = {r: "¹" if distinct.get(r) == 1 else "" for r in ("sequential", "one-pass")}
                lines.append(
                    f"| {split} | {system} | {dim} | {_interval(row['sequential'])}{mark['sequential']} | "
                    f"{_interval(row['one-pass'])}{mark['one-pass']} | {_interval(row['one-pass minus sequential'])} |"
                )
    return lines


def _permuted_md(run: dict[str, Any]) -> list[str]:
    lines = [
        f"{run['tasks']} training summaries of {run['groups']} dialogues, `rubric-judge train` with the default "
        f"configuration. Permuted labels: {run['permuted_prefilled']} of {run['permuted_decisions']} dimension "
        f"decisions pre-filled, {run['permuted_promoted']} version(s) promoted; real labels: "
        f"{run['real_prefilled']} dimension(s) pre-filled.",
        "",
        "| labels | evidence | promoted | " + " | ".join(next(iter(run["runs"].values()))["prefill"]) + " |",
        "|---|---|---|" + "---|" * len(next(iter(run["runs"].values()))["prefill"]),
    ]
    for name, r in run["runs"].items():
        ev = r.get("evidence") or {}
        cells = []
        for d in r["prefill"].values():
            e = d.get("evidence") or {}
            mark = "**pre-filled**" if d["prefilled"] else "empty"
            cells.append(f"{mark} {_fmt(e.get('estimate'))} [{_fmt(e.get('low'))}, {_fmt(e.get('high'))}]")
        lines.append(
            f"| {name} | {ev.get('tasks')} tasks / {ev.get('groups')} groups | {r['promoted']} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _system_name(name: str, row: dict[str, Any], system: dict[str, Any] | None = None) -> str:
    reused = f" (copied from run `{row['reused_from']}`)" if row.get("reused_from") else ""
    method = (system or {}).get("method")
    label = "feature head (fast tier)" if name == "adapter" and method == "head" else SYSTEM_NAMES.get(name, name)
    return label + reused


def _goemotions_md(run: dict[str, Any]) -> list[str]:
    classes = sorted(next(iter(run["systems"].values()))["test"].get("per_class_f1", {}))
    lines = [
        "| system (dev) | accuracy | macro-F1 | α (nominal) | " + " | ".join(f"F1 {c}" for c in classes) + " |",
        "|---|---|---|---|" + "---|" * len(classes),
    ]
    for name, system in run["systems"].items():
        row = system["test"]
        lines.append(
            f"| {_system_name(name, row)} | {_fmt(row['accuracy'])} | {_fmt(row['macro_f1'])} | "
            f"{_fmt(row['alpha_nominal'])} | "
            + " | ".join(_fmt(row.get("per_class_f1", {}).get(c), 2) for c in classes)
            + " |"
        )
    if run["sizes"].get("train_classes"):
        lines += ["", f"Training rows per class: {run['sizes']['train_classes']}."]
    return lines


def _phases_md(run: dict[str, Any]) -> list[str]:
    cells = [f"{name} {p['seconds']:.0f} s ({p['peak_rss_mb']:,} MB)" for name, p in run["phases"].items()]
    out = ["", "Wall time (peak RSS so far): " + "; ".join(cells) + "."]
    training = run.get("training")
    if training and training.get("method") == "head":
        cv = {
            name: c.get("oof_correlation", c.get("oof_accuracy"))
            for name, c in training.get("cross_validation", {}).items()
        }
        out.append(
            f"Training (feature head): {training['counts']}, {training['seconds']:.0f} s (features "
            f"{training['feature_seconds']:.0f} s, fit {training['fit_seconds']:.1f} s), "
            f"{training['feature_size']} features per dimension; cross-validated correlation (or accuracy) "
            f"on the training tasks: {cv}."
        )
    elif training:
        cfg = training["config"]
        out.append(
            f"Training: {training['counts']}, {training['steps']} steps, {training['seconds']:.0f} s, "
            f"{training['tokens_per_s']} tokens/s, padding {training['padding_share']:.1%}, "
            f"precision {training.get('precision', 'fp32')}; config: epochs {cfg['epochs']}, lr "
            f"{cfg['learning_rate']}, batch {cfg['batch_size']}, r {cfg['lora_r']}/α {cfg['lora_alpha']}, "
            f"targets {cfg['targets']}, augment {cfg['augment']}, max_length {cfg['max_length']}, "
            f"micro-batch {cfg.get('micro_batch_size', 2)}, shared prefix {cfg.get('share_prefix', False)}."
        )
    return out


def write_markdown(runs: dict[str, Any]) -> None:
    lines = [
        "# Quality benchmark results",
        "",
        "Produced by `benchmarks/quality.py` (see `benchmarks/README.md`); every run below lists its exact "
        "command, date and machine. Data: `../shared/data` (DialSummEval, GoEmotions-Ekman), never copied "
        "into the repository. α is Krippendorff's alpha of a system against the per-task human consensus "
        "(mean of the annotators for interval α); Δα is α(humans + system) − α(humans).",
        "",
    ]
    order = sorted(runs.values(), key=lambda r: (r["dataset"], r.get("order", 0), r["tag"]))
    for run in order:
        title = {
            "dialsummeval": "DialSummEval (summary-quality), test split",
            "probe": "DialSummEval probe: linear probes on the base model's features",
            "probe-goemotions": "GoEmotions-Ekman probe: the feature head on the base model's features",
            "permuted": "DialSummEval: does noise pass the pre-fill gate? (`benchmarks/permuted.py`)",
            "curve": "DialSummEval learning curve and labeling order (`benchmarks/curve.py`)",
            "reads": "DialSummEval: the one-pass read against the sequential read (`benchmarks/reads.py`)",
        }.get(run["dataset"], "GoEmotions-Ekman (emotion-ekman), dev split")
        lines += [f"## {title} — run `{run['tag']}`", ""]
        if run.get("note"):
            lines += [run["note"], ""]
        lines += [
            f"- command: `{run['command']}`",
            f"- date: {run['date']}",
            f"- machine: {run['machine']['cpu']}, {run['machine']['cores']} cores, "
            f"{run['machine']['memory_gb']} GB, GPU {run['machine']['gpu'] or 'none'}, "
            f"torch {run['machine']['torch']}; base model {run['base_model']}",
            f"- sizes: {run['sizes']}",
            "",
        ]
        lines += {
            "dialsummeval": _dialsummeval_md,
            "probe": _probe_md,
            "probe-goemotions": _probe_goemotions_md,
            "permuted": _permuted_md,
            "curve": _curve_md,
            "reads": _reads_md,
        }.get(run["dataset"], _goemotions_md)(run)
        lines += _phases_md(run) + [""]
    RESULTS_MD.write_text("\n".join(lines), encoding="utf-8")


def record_run(run: dict[str, Any]) -> None:
    runs = load_runs()
    key = f"{run['dataset']}/{run['tag']}"
    run["order"] = runs.get(key, {}).get("order", len(runs))
    runs[key] = run
    run_records.RESULTS_JSON.write_text(json.dumps(runs, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    write_markdown(runs)


# --------------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "dataset",
        choices=["dialsummeval", "goemotions", "probe", "probe-goemotions", "report"],
        help="probe: linear probes on the base model's features (DialSummEval); probe-goemotions: "
        "the feature head on GoEmotions-Ekman, chosen on 1,000 other training rows",
    )
    parser.add_argument("--features-cache", help="probe: folder of cached features (default: under --work-dir)")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA), help="the shared data folder (../shared/data)")
    parser.add_argument("--tag", default="default", help="name of this run in RESULTS.json/RESULTS.md")
    parser.add_argument("--note", help="one line describing the run, shown in RESULTS.md")
    parser.add_argument("--base-model", default="smollm2-135m", help="BASE_MODEL for the judge")
    parser.add_argument("--rubric-dir", help="a rubric folder other than rubric_configs/ (prompt experiments)")
    parser.add_argument("--work-dir", default="/tmp/rubric-judge-bench", help="where adapters are written")
    parser.add_argument("--skip-train", action="store_true", help="references and v0 only")
    parser.add_argument("--train-limit", type=int, help="DialSummEval: first N training summaries only")
    parser.add_argument("--train-size", type=int, default=1200, help="GoEmotions: training subsample size")
    parser.add_argument(
        "--class-power",
        type=float,
        help="GoEmotions: class quotas proportional to count ** P (1 natural, 0.5 square root, "
        "0 balanced); default: a uniform sample",
    )
    parser.add_argument(
        "--reuse-v0",
        metavar="TAG",
        help="copy the v0 rows of an earlier run of the same dataset, base model, rubric and "
        "split sizes instead of scoring v0 again (v0 is deterministic)",
    )
    parser.add_argument(
        "--all-train-reference",
        action="store_true",
        help="GoEmotions: also fit TF-IDF + logreg on all 39,555 training rows (minutes)",
    )
    parser.add_argument("--eval-limit", type=int, help="first N rows of each evaluation split only (quick checks)")
    for flag, kind in (
        ("--epochs", int),
        ("--learning-rate", float),
        ("--batch-size", int),
        ("--max-length", int),
        ("--lora-r", int),
        ("--lora-alpha", int),
        ("--seed", int),
        ("--token-dropout-rate", float),
        ("--micro-batch-size", int),
    ):
        parser.add_argument(flag, type=kind)
    parser.add_argument("--targets", choices=TARGET_MODES)
    parser.add_argument(
        "--method",
        choices=["auto", "head", "lora"],
        help="what training builds (default: TrainConfig's, auto: head for rating rubrics)",
    )
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--no-share-prefix", action="store_true", help="train without the shared-prefix KV reuse")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.dataset == "report":
        write_markdown(load_runs())
        return 0
    if not Path(args.data_dir).is_dir():
        log.warning(
            "no shared data at %s: the quality benchmark needs ../shared/data (DialSummEval, "
            "GoEmotions-Ekman); nothing was run",
            args.data_dir,
        )
        return 0
    started = time.monotonic()
    run = {
        "dialsummeval": run_dialsummeval,
        "probe": run_probe,
        "probe-goemotions": run_probe_goemotions,
        "goemotions": run_goemotions,
    }[args.dataset](args)
    run.update(
        {
            "tag": args.tag,
            "note": args.note,
            "base_model": args.base_model,
            "command": "python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": machine(),
            "wall_seconds": round(time.monotonic() - started, 1),
        }
    )
    record_run(run)
    log.info("recorded %s/%s in %s (%.0f s)", run["dataset"], args.tag, RESULTS_MD, run["wall_seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
