"""The two reads of SCORE_READ side by side on DialSummEval: v0 and the default feature head, per dimension,
each read's α with its interval and the paired difference (one-pass minus sequential) with a paired
group-bootstrap interval, on dev and on test.

    python benchmarks/reads.py [--tag NAME] [--note TEXT] [--data-dir ../shared/data]

Both reads go through the feature store under MODEL_DIR (a task read once under a read is not read again, so
run it with the MODEL_DIR of the quality runs that read them: ``quality.py dialsummeval`` with SCORE_READ set).
The head is the one ``rubric-judge train`` fits (``worker.pipeline.fit_feature_head``, the default
configuration) on the 980 training summaries; dev and test are the 210 summaries of each split, grouped by
dialogue. Recorded in ``benchmarks/RESULTS.json`` under ``reads/<tag>``; RESULTS.md is rewritten.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.core.rubric import Rubric, load_rubric  # noqa: E402
from backend.settings import READS, Settings  # noqa: E402
from benchmarks.quality import DEFAULT_DATA, Phases, load_dialsummeval, machine, record_run  # noqa: E402
from benchmarks.usercli import start  # noqa: E402
from worker.source import Record  # noqa: E402

log = logging.getLogger("benchmarks.reads")


def _scores(judge: Any, rubric: Rubric, splits: dict[str, list[Record]]) -> dict[str, dict[str, list[Any]]]:
    """Per split (dev, test) and system (v0, head): the scores of one read."""
    from backend.model.judge import apply_head
    from worker.pipeline import extract_features, fit_feature_head
    from worker.train import TrainConfig

    config = TrainConfig.build(rubric, {})
    fitted = fit_feature_head(judge, rubric, splits["train"], [], config)
    out: dict[str, dict[str, list[Any]]] = {}
    for split in ("dev", "test"):
        base, features = extract_features(judge, rubric, splits[split], split)
        out[split] = {"v0": base, "head": apply_head(rubric, fitted.head, features)}
    return out


def _compare(rubric: Rubric, records: list[Record], reads: dict[str, list[Any]]) -> dict[str, Any]:
    """Per dimension: each read's α with its interval, and one-pass minus sequential, paired; how many distinct
    labels each read predicted (1: a constant)."""
    from worker.evaluate import evidence_entry, paired_comparison

    rows: dict[str, Any] = {}
    for dim in rubric.dimensions:
        row = {read: evidence_entry(dim, records, scores, 1)["evidence"] for read, scores in reads.items()}
        alone = dataclasses.replace(rubric, dimensions=(dim,))
        difference = paired_comparison(alone, records, reads["one-pass"], reads["sequential"])
        distinct = {read: len({s.dimensions[dim.name].label for s in scores}) for read, scores in reads.items()}
        rows[dim.name] = {**row, "one-pass minus sequential": difference.as_dict(), "distinct_labels": distinct}
    return rows


def _compare_expected(rubric: Rubric, records: list[Record], reads: dict[str, list[Any]]) -> dict[str, Any]:
    """``_compare`` for the expected score under the judge's label distribution (interval α; a scale only)."""
    from backend.core.evidence import DimensionData, paired_difference
    from worker.evaluate import consensus_values, dimension_evidence

    groups = [r.split_key for r in records]
    rows: dict[str, Any] = {}
    for dim in rubric.dimensions:
        values = {read: [s.dimensions[dim.name].expected for s in scores] for read, scores in reads.items()}
        row = {read: dimension_evidence(dim, records, v)[0].as_dict() for read, v in values.items()}
        pair = DimensionData(consensus_values(dim, records), values["one-pass"], values["sequential"], "interval", None)
        rows[dim.name] = {**row, "one-pass minus sequential": paired_difference([pair], groups).as_dict()}
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default="r1")
    parser.add_argument("--note", default="")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    args = parser.parse_args(argv)
    if not start(args.data_dir, log):
        return 0
    from backend.model.judge import Judge
    from backend.model.model_loader import load_base_model

    phases = Phases()
    settings = Settings.from_env()
    rubric = load_rubric("summary-quality", settings.rubric_dir)
    splits = load_dialsummeval(Path(args.data_dir), rubric)
    model, tokenizer, name = load_base_model(settings)
    scored: dict[str, Any] = {}
    for read in READS:
        judge = Judge(model, tokenizer, name, settings.with_overrides(score_read=read))
        judge.open_feature_store()
        scored[read] = phases.run(f"{read}: read, fit, score", _scores, judge, rubric, splits)
        log.info("%s: read and fitted (store hits so far %s)", read, judge.feature_store.stats.as_dict())
    results = {
        split: {
            system: _compare(rubric, splits[split], {read: scored[read][split][system] for read in READS})
            for system in ("v0", "head")
        }
        for split in ("dev", "test")
    }
    for split in ("dev", "test"):
        results[split]["v0 expected score"] = _compare_expected(
            rubric, splits[split], {read: scored[read][split]["v0"] for read in READS}
        )
    run = {
        "dataset": "reads",
        "tag": args.tag,
        "note": args.note,
        "base_model": settings.base_model,
        "sizes": {k: len(v) for k, v in splits.items()},
        "results": results,
        "phases": phases.rows,
        "machine": machine(),
        "command": "python benchmarks/reads.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    record_run(run)
    for split, systems in results.items():
        for system, dims in systems.items():
            for dim, row in dims.items():
                log.info("%s %s %s: %s", split, system, dim, row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
