"""One annotation per task, end to end: most Label Studio projects annotate each task once (issue 31).

A feature head trained on the tiny model on 40 tasks in 10 groups, each task annotated by one person: the
evidence is alpha against that person (with its interval, tasks and groups counted), the pre-fill gate and
promotion decide with reasons, the human ceiling is reported as undefined (there is no pair of annotators), and
the report (JSON and HTML, project and offline run) and its agreement matrix render. The same for three people
who never annotate the same task (DialSummEval's one-annotator curve: one of its annotators drawn per task).
"""

from __future__ import annotations

import json
import random

import pytest

from backend.core.prefill import PrefillPolicy
from backend.core.rubric import load_rubric
from backend.reports.data import project_report, run_report
from backend.reports.html import render_html
from backend.state.registry import Registry
from tests.conftest import REPO
from tests.test_agreement import ref_alpha
from worker.source import Annotation, Record

SUMMARY = load_rubric("summary-quality", REPO / "rubric_configs")


def one_annotation_each(n: int, annotators: list[str], seed: int = 0) -> list[Record]:
    """``n`` summaries in groups of 4 whose quality shows in a word ('excellent' rated high, 'garbled' low),
    each rated once, by ``annotators`` in turn."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        good = i % 2 == 0
        word = "excellent" if good else "garbled"
        base = 5 if good else 1
        labels = {
            d.name: str(max(1, min(5, base + rng.choice([-1, 0, 0, 1]) * (1 if good else -1))))
            for d in SUMMARY.dimensions
        }
        out.append(
            Record(
                task_id=str(200 + i),
                inputs={"dialogue": f"A: the library opens at {i % 12}am.", "summary": f"{word} {word} book {word}"},
                annotations=(Annotation(annotators[i % len(annotators)], labels),),
                group=f"d{i // 4}",
            )
        )
    return out


@pytest.mark.parametrize("annotators", [["ann"], ["a1", "a2", "a3"]], ids=["one-person", "three-never-overlapping"])
def test_one_annotation_per_task_trains_decides_and_reports(settings, tiny_judge, annotators):
    from worker.pipeline import run_training

    records = one_annotation_each(40, annotators)
    registry = Registry(settings.model_dir, tiny_judge.base_name, None)
    folder = registry.version_dir("31", 1)
    result = run_training(settings, SUMMARY, records, folder)
    metrics = result.metrics

    # the evidence: out-of-fold alpha against the one annotation of each task, with its interval
    assert metrics["evidence"] == {"kind": "out-of-fold", "tasks": 40, "groups": 10, "folds": 5}
    assert metrics["counts"]["annotations"] == 40 and metrics["counts"]["annotators"] == len(annotators)
    candidate = metrics["candidate"]
    assert candidate["n_annotations"] == 40 and candidate["n_multi_annotator_tasks"] == 0
    for name, entry in candidate["dimensions"].items():
        evidence = entry["evidence"]
        assert (evidence["tasks"], evidence["groups"]) == (40, 10), name
        assert evidence["low"] is not None and evidence["low"] <= evidence["estimate"] <= evidence["high"], name
        assert entry["interval"]["alpha_system"] == pytest.approx(evidence["estimate"], abs=1e-4), name
        # no two people rated one task: the human-human alpha and delta-alpha are undefined, not an error
        assert entry["interval"]["alpha_humans"] is None and entry["interval"]["delta_alpha"] is None, name
        # ... and it is alpha against the one person who rated each task (an independent implementation)
        person = [int(r.annotations[0].labels[name]) for r in records]
        judged = [int(p["labels"][name]) for p in candidate["predictions"]]
        assert entry["interval"]["alpha_system"] == pytest.approx(ref_alpha([person, judged], "interval")), name
    assert [p["task_id"] for p in candidate["predictions"]] == [r.task_id for r in records]
    assert candidate["alpha_humans_flat"] is None and candidate["delta_alpha_dims"] is None
    assert candidate["alpha_dims"] > 0.5, "the word shows the quality: the head learns it from one person"

    # the gate and promotion decide, with reasons
    decisions = PrefillPolicy().decide(SUMMARY.dimension_names, candidate)
    assert all(d.reason for d in decisions.values())
    assert sum(d.prefilled for d in decisions.values()) >= 1, {n: d.reason for n, d in decisions.items()}
    assert result.promoted and metrics["decision"], metrics["decision"]
    assert metrics["comparison"]["against"] == "v0" and metrics["comparison"]["low"] is not None

    # the report: JSON and HTML, from the registry and from the folder
    registry.set_active("31", 1)
    report = project_report(registry, "31")
    assert json.loads(json.dumps(report)) == report  # strict JSON: no NaN
    assert report["flat"]["ceiling"] is None and report["headline"]["delta_alpha_dims"] is None
    assert all(row["ceiling"]["alpha"] is None for row in report["dimensions"])
    assert all(row["judge"]["alpha"] is not None and row["judge"]["ci"] for row in report["dimensions"])
    assert any(
        w.startswith("No out-of-fold evidence task has two or more annotators") and "one person's label" in w
        for w in report["warnings"]
    ), report["warnings"]
    assert report["evidence"] == "Evidence: 40 task(s) in 10 group(s), out-of-fold (5 folds)"
    assert [row["prefill"]["prefilled"] for row in report["dimensions"]] == [
        decisions[n].prefilled for n in SUMMARY.dimension_names
    ]
    # the agreement matrix: each annotator against the judge on their own tasks, no annotator pair defined
    matrix = report["agreement_matrix"]["flat"]
    assert matrix["raters"] == [*sorted(annotators), "judge"]
    judge = matrix["raters"].index("judge")
    for i, who in enumerate(matrix["raters"][:-1]):
        theirs = sum(1 for r in records if r.annotations[0].annotator == who)
        assert matrix["shared"][i][judge] == theirs * len(SUMMARY.dimensions), who
        assert matrix["alpha"][i][judge] is not None, who
        for j in range(len(annotators)):
            assert i == j or (matrix["shared"][i][j] == 0 and matrix["alpha"][i][j] is None)
    assert report["disagreements"]["tasks"] == 40
    page = render_html(report)
    for section in ("summary", "warnings", "dimensions", "agreement-matrix", "disagreements"):
        assert f"<section id={section}>" in page
    offline = run_report(folder)
    assert offline["flat"] == report["flat"] and offline["agreement_matrix"] == report["agreement_matrix"]
    assert "<section id=agreement-matrix>" in render_html(offline)
