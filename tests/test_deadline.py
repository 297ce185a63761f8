"""/predict answers before Label Studio gives up: it scores in chunks until its budget (PREDICT_DEADLINE_S), answers
the scored tasks, gives the others an empty list (Label Studio stores no prediction for them) and hands them
to the background pre-annotation job."""

from __future__ import annotations

import time

import pytest

from backend.service import DEADLINE_FIRST_CHUNK, DEADLINE_GROWTH, DEADLINE_SAFETY, DeadlineEstimate
from backend.settings import Settings, SettingsError
from support.ls_bodies import QA_DATA, ls_task, predict_body
from tests.test_prelabel import QA_XML


def test_the_estimate_follows_the_last_chunk_and_cuts_the_next_one_to_what_fits():
    estimate = DeadlineEstimate()
    # nothing measured yet: the first chunk is one task, and it always runs
    assert estimate.fitting(8, deadline=0.0, now=10.0) == DEADLINE_FIRST_CHUNK == 1
    estimate.observe(1, 2.0)  # a first task, warming up, on a busy CPU
    assert estimate.fitting(64, deadline=1000.0, now=0.0) == DEADLINE_GROWTH  # at most so many times the last
    assert estimate.fitting(8, deadline=1000.0, now=0.0) == 8
    assert estimate.fitting(8, deadline=100.0 + 5.5 * 2.0 * DEADLINE_SAFETY, now=100.0) == 5  # 2 s each, at most
    estimate.observe(2, 3.0)
    estimate.observe(4, 4.0)
    estimate.observe(8, 6.0)  # 0.75 s per task in a chunk of 8; one task alone still costs 2 s
    assert estimate.cost(8) == pytest.approx(6.0) and estimate.cost(1) == pytest.approx(2.0)
    assert estimate.cost(3) == pytest.approx(4.0)  # the smallest chunk seen that holds 3 tasks
    safety = DEADLINE_SAFETY
    assert estimate.fitting(8, deadline=100.0 + 6.0 * safety, now=100.0) == 8
    assert estimate.fitting(8, deadline=100.0 + 4.5 * safety, now=100.0) == 4  # cut to what fits
    assert estimate.fitting(8, deadline=100.0 + 2.5 * safety, now=100.0) == 1
    assert estimate.fitting(8, deadline=100.0 + 1.9 * safety, now=100.0) == 0  # not one: stop
    estimate.observe(8, 18.0)  # the CPU got shared: the chunk of 8 costs 3x, and so does everything else
    assert estimate.cost(1) == pytest.approx(6.0) and estimate.cost(4) == pytest.approx(12.0)
    assert estimate.fitting(8, deadline=100.0 + 7.0 * safety, now=100.0) == 1


def test_chunks_end_before_the_deadline_when_each_task_costs_its_share_and_more_alone():
    """A simulated machine where a chunk costs a fixed part plus a part per task (the measured shape: 1.7 s for one
    task alone, 1.1 s each in a chunk of 4), slowing down halfway by less than DEADLINE_SAFETY: scoring ends
    before the deadline. (A slowdown beyond DEADLINE_SAFETY within one chunk can overrun by that chunk.)"""
    for fixed, per_task in ((0.6, 1.1), (0.0, 1.0), (3.0, 0.2)):
        estimate, now, deadline, scored = DeadlineEstimate(), 0.0, 60.0, 0
        while scored < 100:
            size = estimate.fitting(8, deadline, now=now)
            if size == 0:
                break
            slow = 1.4 if now > 30 else 1.0
            cost = slow * (fixed + per_task * size)
            now += cost
            scored += size
            estimate.observe(size, cost)
        assert now <= deadline, (fixed, per_task, now)
        assert scored >= 10


def test_the_budget_is_derived_from_label_studios_timeout():
    assert Settings().predict_budget_s == pytest.approx(60.0)
    assert Settings(ml_timeout_predict=300).predict_budget_s == pytest.approx(180.0)
    assert Settings(predict_deadline_s=20).predict_budget_s == 20
    assert Settings(predict_deadline_s=-1).predict_budget_s is None
    with pytest.raises(SettingsError, match="PREDICT_DEADLINE_S"):
        Settings.from_env({"PREDICT_DEADLINE_S": "120"})


def test_scoring_in_chunks_under_a_deadline_gives_the_plain_answers(settings, tiny_judge):
    from backend.core.rubric import load_all
    from backend.service import Service
    from backend.state.registry import Registry

    service = Service(settings, tiny_judge, Registry(settings.model_dir, tiny_judge.base_name))
    ctx = service.context("12", None, "qa-quality")
    inputs = [{**QA_DATA[i % 3], "question": f"{QA_DATA[i % 3]['question']} ({'x' * i})"} for i in range(13)]
    plain = service.score_inputs(ctx, inputs)
    chunked = service.score_inputs(ctx, inputs, deadline=time.monotonic() + 3600)
    assert all(score is not None for score in chunked)
    for a, b in zip(plain, chunked, strict=True):  # batch invariance: the same labels, probabilities to 1e-4
        assert a.labels == b.labels
        for name, dim in a.dimensions.items():
            assert all(abs(p - b.dimensions[name].probs[label]) < 1e-4 for label, p in dim.probs.items())
    assert load_all(settings.rubric_dir)  # the service read the shipped rubrics


def test_without_label_studio_credentials_the_next_retrieve_picks_the_deferred_tasks_up(settings, tiny_judge):
    from tests.test_app import make_client

    client, _ = make_client(settings, tiny_judge, predict_deadline_s=0.001)
    tasks = [ls_task(i, {**QA_DATA[i % 3], "question": f"q{i}"}) for i in range(10)]
    body = client.post("/predict", json=predict_body(tasks, QA_XML)).get_json()
    assert body["timing"]["deferred"] == 9 and body["timing"]["background_job"] is None
    again = [t for t, r in zip(tasks, body["results"], strict=True) if r == []]
    second = client.post("/predict", json=predict_body(again, QA_XML)).get_json()
    assert second["timing"]["scored"] >= 1  # the next call starts with what the first left
    unlimited, _ = make_client(settings, tiny_judge, predict_deadline_s=-1)
    full = unlimited.post("/predict", json=predict_body(tasks, QA_XML)).get_json()
    assert full["timing"]["deferred"] == 0 and all(r != [] for r in full["results"])
    first_scored = {t["id"]: r for t, r in zip(tasks, body["results"], strict=True) if r != []}
    for task, result in zip(tasks, full["results"], strict=True):
        if task["id"] in first_scored:  # the same prediction as the plain path
            assert first_scored[task["id"]]["result"] == result["result"]
            assert first_scored[task["id"]]["score"] == pytest.approx(result["score"], abs=1e-4)
