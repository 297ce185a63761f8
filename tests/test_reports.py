"""Agreement reports rendered from stored evaluation results, checked against an independent alpha."""

from __future__ import annotations

import json
import random
from statistics import mean

import pytest

from backend.core.rubric import load_all, load_rubric
from backend.core.scores import DimensionScore, TaskScore
from backend.reports.data import project_report, run_report
from backend.reports.html import render_html
from backend.service import Service
from backend.state.registry import Registry
from backend.web.app import create_app
from tests.test_agreement import ref_alpha
from worker.evaluate import evaluate_predictions
from worker.source import Annotation, Record

RUBRIC = load_rubric("summary-quality")


def make_records(n: int, annotators: int, seed: int) -> list[Record]:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        truth = rng.randint(1, 5)
        anns = []
        for a in range(annotators):
            labels = {d.name: str(min(5, max(1, truth + rng.choice([-1, 0, 0, 1])))) for d in RUBRIC.dimensions}
            anns.append(Annotation(f"a{a}", labels))
        records.append(Record(str(i), {"dialogue": "d", "summary": "s"}, tuple(anns)))
    return records


def predictions(records: list[Record], noise: float, seed: int) -> list[TaskScore]:
    rng = random.Random(seed)
    out = []
    for record in records:
        dims = {}
        for d in RUBRIC.dimensions:
            value = round(mean(int(a.labels[d.name]) for a in record.annotations))
            if rng.random() < noise:
                value = rng.randint(1, 5)
            dims[d.name] = DimensionScore(
                str(value), {str(v): 1.0 if v == value else 0.0 for v in d.values}, expected=float(value)
            )
        out.append(TaskScore(dims))
    return out


def store_run(folder, records, noise, seed, promoted, created="2026-11-24T10:00:00Z"):
    candidate = evaluate_predictions(RUBRIC, records, predictions(records, noise, seed), n_boot=100)
    base = evaluate_predictions(RUBRIC, records, predictions(records, 0.9, seed + 1), n_boot=100)
    metrics = {
        "rubric": RUBRIC.name,
        "model_name": "tiny",
        "created": created,
        "alpha_flat": candidate["alpha_flat"],
        "alpha_flat_ci": candidate["alpha_flat_ci"],
        "alpha_humans_flat": candidate["alpha_humans_flat"],
        "candidate": candidate,
        "base": base,
        "incumbent": None,
        "promoted": promoted,
        "decision": "promoted" if promoted else "worse",
        "config": {"epochs": 2},
        "counts": {
            "tasks": len(records) * 4,
            "train_tasks": len(records) * 3,
            "heldout_tasks": len(records),
            "annotations": 1234,
            "annotators": 2,
            "train_examples": 99,
            "multi_annotator_heldout_tasks": sum(len(r.annotations) > 1 for r in records),
        },
        "history": [{"step": s, "epoch": s / 4, "train_loss": 2.0 / s} for s in range(1, 9)]
        + [{"step": 4, "epoch": 1, "val_loss": 0.9}, {"step": 8, "epoch": 2, "val_loss": 0.7}],
        "training": {"steps": 8, "seconds": 12.5},
    }
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return metrics


@pytest.fixture
def registry(tmp_path):
    registry = Registry(tmp_path, "tiny", None)
    store_run(registry.version_dir("1", 1), make_records(40, 2, 1), 0.2, 1, True)
    registry.set_active("1", 1)
    for number, (noise, promoted) in enumerate([(0.5, True), (0.7, False), (0.1, True)], start=1):
        store_run(registry.version_dir("2", number), make_records(40, 2, 2), noise, number, promoted)
    registry.set_active("2", 3)
    store_run(registry.version_dir("3", 1), make_records(12, 1, 3), 0.2, 3, True)
    registry.set_active("3", 1)
    return registry


def test_json_values_match_an_independent_alpha(registry):
    report = project_report(registry, "1")
    metrics = json.loads((registry.version_dir("1", 1) / "metrics.json").read_text())
    records = make_records(40, 2, 1)
    preds = predictions(records, 0.2, 1)
    flat_consensus, flat_system = [], []
    for row, dim in zip(report["dimensions"], RUBRIC.dimensions, strict=True):
        humans = [
            [int(next(a for a in r.annotations if a.annotator == who).labels[dim.name]) for r in records]
            for who in ("a0", "a1")
        ]
        consensus = [mean(values) for values in zip(*humans, strict=True)]
        system = [int(p.dimensions[dim.name].label) for p in preds]
        assert row["name"] == dim.name
        assert row["judge"]["alpha"] == pytest.approx(ref_alpha([consensus, system], "interval"), abs=1e-9)
        assert row["ceiling"]["alpha"] == pytest.approx(ref_alpha(humans, "interval"), abs=1e-9)
        assert row["delta_alpha"] == pytest.approx(
            ref_alpha([*humans, system], "interval") - ref_alpha(humans, "interval"), abs=1e-9
        )
        low, high = row["judge"]["ci"]
        assert low <= row["judge"]["alpha"] <= high
        flat_consensus += consensus
        flat_system += system
    assert report["flat"]["alpha"] == pytest.approx(ref_alpha([flat_consensus, flat_system], "interval"), abs=1e-9)
    assert report["flat"]["floor"] == pytest.approx(metrics["base"]["alpha_flat"])
    # expected-score decoding: with one-hot distributions the expectation equals the argmax label
    assert metrics["candidate"]["alpha_flat_expected"] == pytest.approx(report["flat"]["alpha"], abs=1e-9)
    assert report["active_version"] == "tiny.p1.v1" and len(report["versions"]) == 1
    assert sum(sum(line) for line in report["dimensions"][0]["confusion"]["matrix"]) == 40


def test_several_versions(registry):
    report = project_report(registry, "2")
    assert [v["version"] for v in report["versions"]] == ["tiny.p2.v1", "tiny.p2.v2", "tiny.p2.v3"]
    assert [v["promoted"] for v in report["versions"]] == [True, False, True]
    assert [v["active"] for v in report["versions"]] == [False, False, True]
    assert report["shown_version"] == "tiny.p2.v3"
    alphas = [v["alpha_flat"] for v in report["versions"]]
    assert alphas[2] > alphas[0] > alphas[1]  # less noise, more agreement


def test_no_multi_annotator_tasks_has_no_ceiling_and_warns(registry):
    report = project_report(registry, "3")
    assert report["flat"]["ceiling"] is None
    assert all(row["ceiling"]["alpha"] is None for row in report["dimensions"])
    assert any("two or more annotators" in w for w in report["warnings"])
    assert any("Only 12 held-out" in w for w in report["warnings"])


def test_html_has_every_section_and_one_svg_per_plot(registry):
    page = render_html(project_report(registry, "2"))
    for section in ("summary", "warnings", "dimensions", "confusion", "losses", "versions", "counts"):
        assert f"<section id={section}>" in page
    assert page.count("<svg") == 1 + len(RUBRIC.dimensions) + 1 + 1
    assert "1,234" in page  # thousands separators
    assert "<script" not in page and "<link" not in page
    assert 'src="http' not in page and 'href="http' not in page and "@import" not in page


def test_a_new_column_reaches_the_json_and_the_html(registry, monkeypatch):
    """Adding a metric to the report is one Column in backend.core.metrics (plus computing it): the row and the
    table both follow."""
    from backend.core import metrics

    column = metrics.Column(("judge", "alpha_expected"), lambda v: v.entry.get("alpha_expected"), "expected-score α")
    monkeypatch.setattr(metrics, "DIMENSION_COLUMNS", (*metrics.DIMENSION_COLUMNS, column))
    report = project_report(registry, "1")
    stored = json.loads((registry.version_dir("1", 1) / "metrics.json").read_text())["candidate"]["dimensions"]
    for row in report["dimensions"]:
        assert row["judge"]["alpha_expected"] == pytest.approx(stored[row["name"]]["alpha_expected"])
    page = render_html(report)
    assert "<th>expected-score α</th>" in page
    first = report["dimensions"][0]
    assert f"{first['judge']['alpha_expected']:.3f}" in page


def test_html_escapes_what_it_shows(registry):
    report = project_report(registry, "1")
    report["warnings"] = ["<script>alert(1)</script>"]
    report["rubric"] = "<b>x</b>"
    page = render_html(report)
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;x&lt;/b&gt;" in page


def test_a_report_from_an_older_metrics_file_renders(registry):
    """Keys missing from an older metrics.json show as '–', they do not fail the page."""
    report = project_report(registry, "1")
    for row in report["dimensions"]:
        row.pop("majority")
        row["judge"].pop("exact")
    report.pop("headline")
    page = render_html(report)
    assert "<section id=dimensions>" in page and "–" in page


def test_report_has_the_agreement_matrix_and_the_worst_tasks(tmp_path):
    """A run folder with its data snapshot: the matrix (annotators and the judge) and the disagreement list
    appear in the JSON and as sections of the HTML, one SVG per matrix, every link into Label Studio."""
    registry = Registry(tmp_path, "tiny", None)
    records = make_records(24, 2, 5)
    folder = registry.version_dir("4", 1)
    metrics = store_run(folder, records, 0.3, 5, True)
    preds = predictions(records, 0.3, 5)
    metrics["candidate"]["predictions"] = [
        {"task_id": r.task_id, "labels": p.labels, "confidence": p.confidence}
        for r, p in zip(records, preds, strict=True)
    ]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    rows = [
        {
            "id": r.task_id,
            "data": dict(r.inputs),
            "annotations": [{"annotator": a.annotator, "scores": dict(a.labels)} for a in r.annotations],
        }
        for r in records
    ]
    (folder / "heldout.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "train.jsonl").write_text("")
    registry.set_active("4", 1)
    report = project_report(registry, "4", label_studio_url="http://ls.example:8080")
    matrix = report["agreement_matrix"]
    assert set(matrix["dimensions"]) == set(RUBRIC.dimension_names)
    assert matrix["flat"]["raters"] == ["a0", "a1", "judge"]
    index = {name: k for k, name in enumerate(matrix["flat"]["raters"])}
    assert matrix["flat"]["shared"][index["a0"]][index["judge"]] == 24 * len(RUBRIC.dimensions)
    worst = report["disagreements"]["summed"]
    assert len(worst) == 20 and worst[0]["distance"] >= worst[-1]["distance"]
    assert worst[0]["link"] == f"http://ls.example:8080/projects/4/data?task={worst[0]['task_id']}"
    page = render_html(report)
    for section in ("agreement-matrix", "disagreements"):
        assert f"<section id={section}>" in page
    assert page.count("<svg") == 1 + len(RUBRIC.dimensions) + 1 + 1 + (1 + len(RUBRIC.dimensions))
    assert 'href="http://ls.example:8080/projects/4/data?task=' in page
    assert "<script" not in page and 'src="http' not in page


def test_offline_run_report(registry, tmp_path):
    report = run_report(registry.version_dir("1", 1))
    assert report["flat"]["alpha"] == project_report(registry, "1")["flat"]["alpha"]
    with pytest.raises(LookupError):
        run_report(tmp_path / "nothing")


def test_report_routes(registry, settings, tiny_judge):
    settings = settings.with_overrides(model_dir=registry.model_dir, basic_auth_user="u", basic_auth_pass="p")
    service = Service(settings, tiny_judge, registry, load_all(settings.rubric_dir))
    client = create_app(settings, service).test_client()
    auth = {"Authorization": "Basic dTpw"}
    assert client.get("/reports/1.json").status_code == 401
    index = client.get("/reports", headers=auth).get_json()
    assert [p["project"] for p in index["projects"]] == ["1", "2", "3"]
    assert index["projects"][1]["active_version"] == "tiny.p2.v3"
    assert client.get("/reports/2.json", headers=auth).get_json()["shown_version"] == "tiny.p2.v3"
    page = client.get("/reports/2", headers=auth)
    assert page.status_code == 200 and page.mimetype == "text/html" and "<svg" in page.get_data(as_text=True)
    html_index = client.get("/reports", headers={**auth, "Accept": "text/html"})
    assert html_index.mimetype == "text/html"
    missing = client.get("/reports/99.json", headers=auth)
    assert missing.status_code == 404 and "no training runs" in missing.get_json()["error"]
    assert client.get("/reports/..%2F..%2Fetc.json", headers=auth).status_code in (400, 404)
