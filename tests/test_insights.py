"""backend.reports.insights: the agreement matrix against α computed independently (exact fractions), the order of
the disagreement list, the label-next queue, greyed cells."""

from __future__ import annotations

import random

import pytest

from backend.reports.insights import JUDGE, agreement_matrix, disagreements, label_next, pairwise_alpha, task_link
from tests.test_agreement import ref_alpha

DIMS = {
    "clarity": {"level": "interval", "ordinal": {"confusion": {"labels": [1, 2, 3, 4, 5]}}},
    "topic": {"level": "nominal"},
}


def rows_and_predictions(n: int = 30, seed: int = 4):
    """Three annotators: a and b agree closely, c rates at random; c saw only the first 8 tasks. The judge
    predicted the last 15 (held-out) tasks."""
    rng = random.Random(seed)
    rows, predictions = [], []
    for i in range(n):
        truth = rng.randint(1, 5)
        topic = rng.choice(["x", "y"])
        annotations = [
            {"annotator": "a", "scores": {"clarity": str(truth), "topic": topic}},
            {"annotator": "b", "scores": {"clarity": str(min(5, truth + rng.choice([0, 0, 1]))), "topic": topic}},
        ]
        if i < 8:
            annotations.append(
                {"annotator": "c", "scores": {"clarity": str(rng.randint(1, 5)), "topic": rng.choice(["x", "y"])}}
            )
        rows.append({"id": 100 + i, "data": {"text": f"task {i} " + "word " * 60}, "annotations": annotations})
        if i >= 15:
            predictions.append(
                {
                    "task_id": 100 + i,
                    "labels": {"clarity": str(max(1, truth - rng.choice([0, 1]))), "topic": topic if i % 4 else "x"},
                    "confidence": round(rng.random(), 3),
                }
            )
    return rows, predictions


def column(rows, predictions, who, dim, as_number):
    if who == JUDGE:
        by_id = {p["task_id"]: p for p in predictions}
        values = [by_id[r["id"]]["labels"][dim] if r["id"] in by_id else None for r in rows]
    else:
        values = [next((a["scores"][dim] for a in r["annotations"] if a["annotator"] == who), None) for r in rows]
    return [None if v is None else (int(v) if as_number else v) for v in values]


def test_matrix_matches_an_independent_alpha():
    rows, predictions = rows_and_predictions()
    matrix = agreement_matrix(rows, predictions, DIMS, "interval")
    checked: set[tuple[str, str, str]] = set()
    for dim, as_number, level in (("clarity", True, "interval"), ("topic", False, "nominal")):
        cell = matrix["dimensions"][dim]
        assert cell["raters"] == ["a", "b", "c", JUDGE]
        for i, x in enumerate(cell["raters"]):
            for j, y in enumerate(cell["raters"]):
                if i == j:
                    assert cell["alpha"][i][j] is None
                    continue
                cx, cy = column(rows, predictions, x, dim, as_number), column(rows, predictions, y, dim, as_number)
                both = [u for u in range(len(rows)) if cx[u] is not None and cy[u] is not None]
                assert cell["shared"][i][j] == len(both)
                try:
                    expected = ref_alpha([[cx[u] for u in both], [cy[u] for u in both]], level) if both else None
                except ZeroDivisionError:  # no variance among the pair's values: alpha is undefined
                    expected = None
                if expected is None:
                    assert cell["alpha"][i][j] is None, (dim, x, y)
                    continue
                assert cell["alpha"][i][j] == pytest.approx(float(expected), abs=1e-9), (dim, x, y)
                checked.add((dim, x, y))
        assert cell["alpha"] == [list(r) for r in zip(*cell["alpha"], strict=True)]  # symmetric
    assert len(checked) >= 16  # most pairs have a defined alpha to compare


def test_cells_with_few_shared_tasks_are_marked_unreliable():
    rows, predictions = rows_and_predictions()
    cell = agreement_matrix(rows, predictions, DIMS, "interval")["dimensions"]["clarity"]
    index = {name: k for k, name in enumerate(cell["raters"])}
    assert cell["shared"][index["a"]][index["c"]] == 8 and not cell["reliable"][index["a"]][index["c"]]
    assert cell["shared"][index["c"]][index[JUDGE]] == 0 and cell["alpha"][index["c"]][index[JUDGE]] is None
    assert cell["shared"][index["a"]][index["b"]] == 30 and cell["reliable"][index["a"]][index["b"]]
    assert cell["shared"][index["a"]][index[JUDGE]] == 15 and cell["reliable"][index["a"]][index[JUDGE]]


def test_flattened_matrix_pools_every_dimension():
    rows, predictions = rows_and_predictions()
    flat = agreement_matrix(rows, predictions, {"clarity": DIMS["clarity"]}, "interval")["flat"]
    clarity = agreement_matrix(rows, predictions, {"clarity": DIMS["clarity"]}, "interval")["dimensions"]["clarity"]
    assert flat["alpha"] == clarity["alpha"]  # one dimension pooled is itself


def test_an_annotator_who_disagrees_with_everyone_stands_out():
    rows, predictions = rows_and_predictions(n=60, seed=9)
    for r in rows:  # c now rated everything, at random
        if not any(a["annotator"] == "c" for a in r["annotations"]):
            r["annotations"].append(
                {"annotator": "c", "scores": {"clarity": str(random.Random(r["id"]).randint(1, 5)), "topic": "x"}}
            )
    cell = agreement_matrix(rows, predictions, DIMS, "interval")["dimensions"]["clarity"]
    index = {name: k for k, name in enumerate(cell["raters"])}
    others = [index["a"], index["b"], index[JUDGE]]
    assert max(cell["alpha"][index["c"]][k] for k in others) < min(
        cell["alpha"][index["a"]][index["b"]], cell["alpha"][index["a"]][index[JUDGE]]
    )


def test_disagreements_are_ordered_worst_first_with_distances_as_defined():
    rows, predictions = rows_and_predictions()
    result = disagreements(rows, predictions, DIMS, project="7", label_studio_url="http://ls:8080/")
    summed = result["summed"]
    assert result["tasks"] == 15 and 0 < len(summed) < 15  # tasks the judge got right are left out
    assert all(e["distance"] > 0 for e in summed)
    assert [e["distance"] for e in summed] == sorted((e["distance"] for e in summed), reverse=True)
    by_id = {r["id"]: r for r in rows}
    for entry in summed:
        row = by_id[entry["task_id"]]
        scores = [int(a["scores"]["clarity"]) for a in row["annotations"]]
        clarity = abs(int(entry["judge"]["clarity"]) - sum(scores) / len(scores)) / 4
        topics = [a["scores"]["topic"] for a in row["annotations"]]
        top = max(set(topics), key=lambda t: (topics.count(t), t == min(topics)))
        topic = 0.0 if entry["judge"]["topic"] == top else 1.0
        assert entry["distance"] == pytest.approx(clarity + topic, abs=1e-6)
        assert entry["link"] == f"http://ls:8080/projects/7/data?task={entry['task_id']}"
        assert entry["humans"].keys() == {a["annotator"] for a in row["annotations"]}
        assert entry["excerpt"]["text"].endswith("…") and len(entry["excerpt"]["text"]) <= 160
    worst_clarity = result["by_dimension"]["clarity"]
    distances = {e["task_id"]: e["distance_by_dimension"]["clarity"] for e in summed}
    clarity_positive = sorted((d for d in distances.values() if d > 0), reverse=True)
    assert [distances[t] for t in worst_clarity] == clarity_positive
    assert len(disagreements(rows, predictions, DIMS, top=5)["summed"]) == 5


def test_label_next_puts_the_least_certain_unannotated_tasks_first():
    tasks = [
        {"id": 1, "data": {"t": "a"}, "predictions": [{"model_version": "m.v1", "score": 0.9}]},
        {"id": 2, "data": {"t": "b"}, "predictions": [{"model_version": "m.v1", "score": 0.2}]},
        {"id": 3, "data": {"t": "c"}, "predictions": [{"model_version": "m.v0", "score": 0.01}]},  # other version
        {
            "id": 4,
            "data": {"t": "d"},
            "annotations": [{"id": 9}],
            "predictions": [{"model_version": "m.v1", "score": 0.0}],
        },  # annotated
        {"id": 5, "data": {"t": "e"}, "predictions": [{"model_version": "m.v1", "score": 0.5}]},
        {"id": 6, "data": {"t": "f"}, "predictions": []},
    ]
    queue = label_next(tasks, "m.v1", project="3", label_studio_url="http://ls")
    assert [e["task_id"] for e in queue] == [2, 5, 1]
    assert [e["score"] for e in queue] == [0.2, 0.5, 0.9]
    assert queue[0]["link"] == "http://ls/projects/3/data?task=2"
    assert [e["task_id"] for e in label_next(tasks, "m.v1", limit=2)] == [2, 5]


def test_pairwise_alpha_is_undefined_with_one_shared_task_and_links_need_a_url():
    cell = pairwise_alpha({"a": [1.0, None], "b": [2.0, 3.0]}, "interval")
    assert cell["shared"][0][1] == 1 and cell["alpha"][0][1] is None and cell["reliable"] == [[False] * 2] * 2
    assert task_link("", "3", 1) is None and task_link("http://x", None, 1) is None


def test_the_heatmap_greys_cells_with_few_shared_tasks_and_says_so():
    from backend.reports.plots import plot_agreement_matrix

    rows, predictions = rows_and_predictions()
    cell = agreement_matrix(rows, predictions, DIMS, "interval")["dimensions"]["clarity"]
    svg = plot_agreement_matrix(cell, "clarity")
    assert svg.startswith("<svg") and svg.count("<svg") == 1
    assert "&lt; 10" in svg or "< 10" in svg  # the a-c, b-c and c-judge cells share fewer than 10 tasks
    assert "#d9d9d9" in svg  # drawn grey
    assert "n=30" in svg and "judge" in svg


def test_tasks_the_judge_got_right_are_not_listed_as_wrong():
    rows = [
        {"id": i, "data": {"t": "x"}, "annotations": [{"annotator": "a", "scores": {"topic": "x"}}]} for i in (1, 2)
    ]
    predictions = [{"task_id": 1, "labels": {"topic": "x"}}, {"task_id": 2, "labels": {"topic": "y"}}]
    result = disagreements(rows, predictions, {"topic": {"level": "nominal"}})
    assert [e["task_id"] for e in result["summed"]] == [2] and result["by_dimension"]["topic"] == [2]


def test_an_annotator_called_judge_is_not_the_judge_and_many_annotators_are_capped():
    from backend.reports.insights import MAX_RATERS

    rows = [
        {
            "id": i,
            "data": {},
            "annotations": [
                {"annotator": who, "scores": {"clarity": str(1 + (i + k) % 5)}}
                for k, who in enumerate(["judge", *[f"u{n}" for n in range(40)]])
                if k <= 35 or i % 2
            ],
        }
        for i in range(12)
    ]
    cell = agreement_matrix(rows, [], {"clarity": DIMS["clarity"]}, "interval")["dimensions"]["clarity"]
    assert "judge (annotator)" in cell["raters"] and cell["raters"][-1] == JUDGE
    assert len(cell["raters"]) == MAX_RATERS + 1


def test_an_empty_prediction_is_not_an_uncertain_one():
    tasks = [
        {"id": 1, "data": {}, "predictions": [{"model_version": "v", "score": 0, "empty": True}]},
        {"id": 2, "data": {}, "predictions": [{"model_version": "v", "score": 0.4, "empty": False}]},
    ]
    assert [e["task_id"] for e in label_next(tasks, "v")] == [2]


def test_the_queue_takes_one_task_per_new_group_least_certain_first_then_the_rest():
    """The queue's order (benchmarks/CURVE.json, ``diverse``)."""
    from backend.reports.insights import label_next

    def task(i: int, score: float) -> dict:
        return {"id": i, "data": {"q": f"task {i}"}, "predictions": [{"model_version": "m.v1", "score": score}]}

    tasks = [task(1, 0.2), task(2, 0.3), task(3, 0.4), task(4, 0.5), task(5, 0.1)]
    groups = {1: "a", 2: "a", 3: "b", 4: "c", 5: "c"}
    plain = [e["task_id"] for e in label_next(tasks, "m.v1")]
    assert plain == [5, 1, 2, 3, 4]  # least certain first
    diverse = [e["task_id"] for e in label_next(tasks, "m.v1", groups=groups, annotated_groups={"c"})]
    assert diverse == [1, 3, 5, 2, 4]  # a and b are new groups (c is annotated already); then the rest
    assert [e["task_id"] for e in label_next(tasks, "m.v1", limit=2, groups=groups)] == [5, 1]
