"""Asynchronous pre-annotation against a replayed Label Studio API (real HTTP, label-studio-sdk client), with
the CLI function, the RQ job on a real Redis and the ``POST /prelabel`` route. The real Label Studio run is in
tests/e2e."""

from __future__ import annotations

import uuid

import pytest
from rq import Queue

from backend.core.labeling import label_config
from backend.core.rubric import load_all, load_rubric
from backend.label_studio import label_studio_client, list_tasks
from backend.model.model_loader import short_model_name
from backend.service import Service
from backend.state.registry import Registry
from backend.state.triggers import Triggers
from backend.web.app import create_app
from support.ls_bodies import QA_DATA, ls_task, predict_body
from tests.conftest import REDIS_URL, work_burst
from tests.fixtures.ls_replay import ReplayState, replay_server
from worker.prelabel import PrelabelError, prelabel_project

QA_XML = label_config(load_rubric("qa-quality"))
PROJECT = 5
TOKEN = "test-token-123"


def project_tasks(version: str) -> list[dict]:
    """Ten tasks: 0-2 annotated, 3-4 predicted by ``version``, 5 by an older version, 6 lacks the answer."""
    tasks = [
        ls_task(500 + i, {**QA_DATA[i % 3], "question": f"{QA_DATA[i % 3]['question']} ({i})"}, PROJECT)
        for i in range(10)
    ]
    for task in tasks[:3]:
        task.update(total_annotations=1, is_labeled=True, annotations=[{"id": 1, "result": [], "completed_by": 1}])
    for task, model_version in ((tasks[3], version), (tasks[4], version), (tasks[5], "old-model.p5.v9")):
        task.update(total_predictions=1, predictions=[{"id": 1, "model_version": model_version, "result": []}])
    del tasks[6]["data"]["answer"]
    return tasks


@pytest.fixture
def service(settings, tiny_judge):
    registry = Registry(settings.model_dir, tiny_judge.base_name)
    return Service(settings, tiny_judge, registry, load_all(settings.rubric_dir))


@pytest.fixture
def replay(service):
    version = service.registry.model_version(str(PROJECT), 0)
    state = ReplayState(
        token=TOKEN, projects={PROJECT: {"label_config": QA_XML, "export": [], "tasks": project_tasks(version)}}
    )
    with replay_server(state) as url:
        yield state, url, version


def written(state: ReplayState) -> dict[int, list[dict]]:
    return {t["id"]: [p for p in t["predictions"] if p["id"] >= 1000] for t in state.projects[PROJECT]["tasks"]}


def test_list_tasks_follows_pages(replay):
    state, url, _ = replay
    client = label_studio_client(url, TOKEN)
    tasks = list(list_tasks(client, PROJECT, page_size=4))
    assert [t["id"] for t in tasks] == [500 + i for i in range(10)]
    assert tasks[0]["total_annotations"] == 1 and tasks[3]["predictions"][0]["model_version"]
    assert [r for r in state.requests if r.startswith("GET /api/tasks")][-1].count("page=3") == 1


def test_prelabel_writes_only_what_is_missing_and_is_idempotent(settings, service, replay):
    state, url, version = replay
    settings = settings.with_overrides(label_studio_url=url, label_studio_api_key=TOKEN)
    steps: list[tuple[int, int, int]] = []
    report = prelabel_project(
        settings, PROJECT, batch_size=2, service=service, progress=lambda *step: steps.append(step)
    )
    assert report.model_version == version and report.rubric == "qa-quality"
    assert (report.listed, report.skipped_annotated, report.skipped_predicted) == (10, 3, 2)
    assert report.skipped_missing_inputs == 1 and report.written == 4
    new = written(state)
    assert [task_id for task_id, preds in new.items() if preds] == [505, 507, 508, 509]
    tasks = {t["id"]: t for t in project_tasks(version)}
    expected = service.predict(predict_body([tasks[i] for i in (505, 507, 508, 509)], QA_XML, project=str(PROJECT)))[
        "results"
    ]
    for task_id, item in zip((505, 507, 508, 509), expected, strict=True):
        [prediction] = new[task_id]
        assert prediction["model_version"] == version
        assert prediction["result"] == item["result"]
        assert abs(prediction["score"] - item["score"]) < 1e-4  # other batch companions: same labels, ~same probs
    assert steps[0] == (0, 4, 0) and steps[-1] == (4, 4, 4)  # the task without inputs is not scored

    again = prelabel_project(settings, PROJECT, service=service)
    assert again.written == 0 and again.skipped_predicted == 6
    assert sum(len(p) for p in written(state).values()) == 4

    everything = prelabel_project(settings, PROJECT, include_annotated=True, service=service)
    assert everything.written == 3 and everything.skipped_annotated == 0
    assert all(len(written(state)[500 + i]) == 1 for i in range(3))


def test_day_one_prelabel_writes_the_versions_prediction_without_a_choice(settings, tiny_judge, replay):
    """With the default PREFILL_UNEVALUATED=false an untrained v0 pre-fills nothing: the job still writes each
    task's prediction (model version, score 0, empty result), as Retrieve Predictions stores it, so that the
    task shows which version answered and is not scored again at that version."""
    from backend.settings import Settings

    state, url, version = replay
    settings = settings.with_overrides(
        label_studio_url=url, label_studio_api_key=TOKEN, prefill_unevaluated=Settings().prefill_unevaluated
    )
    service = Service(
        settings, tiny_judge, Registry(settings.model_dir, tiny_judge.base_name), load_all(settings.rubric_dir)
    )
    report = prelabel_project(settings, PROJECT, service=service)
    assert report.written == 4 and report.skipped_missing_inputs == 1, report
    new = [p for preds in written(state).values() for p in preds]
    assert len(new) == 4 and all(p["result"] == [] and p["score"] == 0 for p in new), new
    assert {p["model_version"] for p in new} == {version}
    assert prelabel_project(settings, PROJECT, service=service).written == 0


def test_prelabel_errors_say_what_is_wrong(settings, service, replay):
    state, url, _ = replay
    good = settings.with_overrides(label_studio_url=url, label_studio_api_key=TOKEN)
    with pytest.raises(PrelabelError, match="project 99 does not exist"):
        prelabel_project(good, 99, service=service)
    with pytest.raises(PrelabelError, match="LABEL_STUDIO_API_KEY"):
        prelabel_project(
            settings.with_overrides(label_studio_url=url, label_studio_api_key=""), PROJECT, service=service
        )
    with pytest.raises(PrelabelError, match="token was rejected"):
        prelabel_project(
            settings.with_overrides(label_studio_url=url, label_studio_api_key="wrong-token"), PROJECT, service=service
        )
    state.projects[PROJECT]["label_config"] = label_config(load_rubric("emotion-ekman")).replace(
        'name="emotion"', 'name="feeling"'
    )
    with pytest.raises(PrelabelError, match="does not fit rubric"):
        prelabel_project(good, PROJECT, service=service)


@pytest.fixture
def queued_stack(tiny_model_dir, tmp_path, monkeypatch, redis_client, tiny_judge):
    """The app with a real queue, configured through the environment like the worker sees it."""
    queue_name = f"rj-test-{uuid.uuid4().hex[:8]}"
    base = short_model_name(str(tiny_model_dir))
    state = ReplayState(
        token=TOKEN,
        projects={PROJECT: {"label_config": QA_XML, "export": [], "tasks": project_tasks(f"{base}.p{PROJECT}.v0")}},
    )
    with replay_server(state) as url:
        env = {
            "BASE_MODEL": str(tiny_model_dir),
            "MODEL_DIR": str(tmp_path / "models"),
            "REDIS_URL": REDIS_URL,
            "QUEUE_NAME": queue_name,
            "LABEL_STUDIO_URL": url,
            "LABEL_STUDIO_API_KEY": TOKEN,
            "MAX_INPUT_TOKENS": "4096",
            "RUBRIC": "qa-quality",
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        from backend.settings import Settings

        settings = Settings.from_env()
        service = Service(
            settings,
            tiny_judge,
            Registry(settings.model_dir, base, redis_client),
            load_all(settings.rubric_dir),
            triggers=Triggers(redis_client, base, queue_name),
        )
        yield create_app(settings, service).test_client(), Queue(queue_name, connection=redis_client), state
    for key in redis_client.scan_iter(f"rubric-judge:{base}:*"):
        redis_client.delete(key)


def test_prelabel_route_enqueues_one_job_that_writes_predictions(queued_stack):
    client, queue, state = queued_stack
    first = client.post("/prelabel", json={"project": PROJECT})
    assert first.status_code == 202, first.get_data(as_text=True)
    job_id = first.get_json()["job"]
    assert first.get_json()["status"] == "enqueued" and job_id.startswith(f"prelabel-p{PROJECT}-")
    second = client.post("/prelabel", json={"project": PROJECT})
    assert second.status_code == 200 and second.get_json() == {
        "status": "absorbed",
        "project": str(PROJECT),
        "job": job_id,
    }
    assert len(queue) == 1
    assert client.post("/prelabel", json={"project": "x"}).status_code == 400
    assert client.post("/prelabel", json={"project": PROJECT, "all": "yes"}).status_code == 400

    work_burst(queue)
    job = client.get(f"/jobs/{job_id}").get_json()
    assert job["status"] == "finished", job
    assert (
        job["meta"]["stage"] == "done" and job["meta"]["done"] == job["meta"]["total"] == 4
    )  # the task without inputs is not scored
    assert job["meta"]["written"] == 4
    assert sum(len(p) for p in written(state).values()) == 4
    assert client.get("/jobs/nope").status_code == 404
    # the job finished: a new request enqueues a new job
    third = client.post("/prelabel", json={"project": PROJECT})
    assert third.status_code == 202 and third.get_json()["job"] != job_id


def test_prelabel_command_line(settings, tiny_model_dir, tmp_path, monkeypatch, capsys, replay):
    import json

    from rubric_judge.cli import main

    state, url, _ = replay
    for key, value in {
        "BASE_MODEL": str(tiny_model_dir),
        "MODEL_DIR": str(settings.model_dir),
        "LABEL_STUDIO_URL": url,
        "LABEL_STUDIO_API_KEY": TOKEN,
        "MAX_INPUT_TOKENS": "4096",
        "REDIS_URL": REDIS_URL,
        "PREDICTION_CACHE": "false",
    }.items():
        monkeypatch.setenv(key, value)
    assert main(["prelabel", "--project", str(PROJECT), "--batch-size", "3"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["written"] == 4 and report["skipped_annotated"] == 3
    assert sum(len(p) for p in written(state).values()) == 4
    with pytest.raises(SystemExit) as exc:
        main(["prelabel", "--project", str(PROJECT), "--batch-size", "0"])
    assert exc.value.code == 1
    assert "--batch-size 0" in capsys.readouterr().err
    assert sum(len(p) for p in written(state).values()) == 4


def test_label_queue_orders_unannotated_tasks_by_their_stored_score(settings, service, replay, tiny_judge):
    """What to label next, through the replayed Label Studio: the active version's stored predictions, lowest
    score first; annotated tasks, other versions' predictions and unpredicted tasks are left out; the route
    and the command line say the same."""
    from backend.service import label_queue
    from backend.web.app import create_app

    state, url, version = replay
    tasks = {t["id"]: t for t in state.projects[PROJECT]["tasks"]}
    tasks[503]["predictions"][0]["score"] = 0.61
    tasks[504]["predictions"][0]["score"] = 0.12
    tasks[507].update(total_predictions=1, predictions=[{"id": 7, "model_version": version, "score": 0.35}])
    tasks[500]["predictions"] = [{"id": 8, "model_version": version, "score": 0.01}]  # annotated: skipped
    settings = settings.with_overrides(label_studio_url=url, label_studio_api_key=TOKEN)
    data = label_queue(settings, service.registry, PROJECT, 10)
    assert [e["task_id"] for e in data["queue"]] == [504, 507, 503]
    assert [e["score"] for e in data["queue"]] == [0.12, 0.35, 0.61]
    assert data["queue"][0]["link"] == f"{url}/projects/{PROJECT}/data?task=504"
    assert data["model_version"] == version and data["unannotated"] == 7 and data["predicted_by_active_version"] == 3
    assert [e["task_id"] for e in label_queue(settings, service.registry, PROJECT, 2)["queue"]] == [504, 507]

    client = create_app(settings, Service(settings, tiny_judge, service.registry, service.rubrics)).test_client()
    routed = client.get(f"/reports/{PROJECT}/queue?limit=2")
    assert routed.status_code == 200 and [e["task_id"] for e in routed.get_json()["queue"]] == [504, 507]
    page = client.get(f"/reports/{PROJECT}/queue", headers={"Accept": "text/html"})
    assert page.status_code == 200 and f'href="{url}/projects/{PROJECT}/data?task=504"' in page.get_data(True)
    assert client.get(f"/reports/{PROJECT}/queue?limit=x").status_code == 400
    assert client.get(f"/reports/{PROJECT}/queue?limit=0").status_code == 400
    state.fail_with = 502
    failed = client.get(f"/reports/{PROJECT}/queue")
    assert failed.status_code == 502 and "cannot read project" in failed.get_json()["error"]


def test_label_queue_without_a_token_says_so(settings, service):
    from backend.service import RequestError, label_queue

    with pytest.raises(RequestError, match="LABEL_STUDIO_API_KEY") as info:
        label_queue(settings.with_overrides(label_studio_api_key=""), service.registry, PROJECT)
    assert info.value.status == 500


def test_a_deadline_answers_what_it_scored_and_defers_the_rest_to_a_background_job(queued_stack):
    client, queue, state = queued_stack
    service = client.application.extensions["rubric_judge"]
    service.settings = service.settings.with_overrides(predict_deadline_s=0.001)  # only the first chunk fits
    tasks = [t for t in state.projects[PROJECT]["tasks"] if "answer" in t["data"]]
    response = client.post("/predict", json=predict_body(tasks, QA_XML, project=str(PROJECT)))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    results, timing = body["results"], body["timing"]
    assert len(results) == len(tasks) == 9
    scored = [t["id"] for t, r in zip(tasks, results, strict=True) if r != []]
    deferred = [t["id"] for t, r in zip(tasks, results, strict=True) if r == []]
    assert len(scored) == 1 and len(deferred) == 8, results  # the first chunk (1 task) always runs
    assert timing["scored"] == 1 and timing["deferred"] == 8 and timing["background_job"]
    status = client.get(f"/status?project={PROJECT}").get_json()["projects"][str(PROJECT)]
    assert status["last_deferral"]["deferred"] == 8 and status["last_deferral"]["job"] == timing["background_job"]
    # the background job writes the deferred tasks that need a prediction (not the annotated ones, not the
    # ones the active version already predicted), and nothing else
    work_burst(queue)
    job = client.get(f"/jobs/{timing['background_job']}").get_json()
    assert job["status"] == "finished", job
    done = {task_id for task_id, predictions in written(state).items() if predictions}
    annotated_or_predicted = {500, 501, 502, 503, 504}
    assert done == set(deferred) - annotated_or_predicted, (done, deferred)


def test_new_tasks_are_read_ahead_by_one_background_job_that_writes_nothing(queued_stack):
    """TASKS_CREATED (Label Studio sends the new tasks with it): one job for exactly those tasks, their data
    from the event; it writes no prediction (Retrieve Predictions does, once), and the next /predict of those
    tasks comes from what the job stored, without the model."""
    client, queue, state = queued_stack
    new = [t for t in state.projects[PROJECT]["tasks"] if t["id"] in (505, 507, 508)]
    event = {"action": "TASKS_CREATED", "project": {"id": PROJECT, "label_config": QA_XML}, "tasks": new}
    answer = client.post("/webhook", json=event)
    assert answer.status_code in (200, 201), answer.get_data(as_text=True)
    body = answer.get_json()
    assert body["status"] == "enqueued" and body["tasks"] == 3 and len(queue) == 1
    job = queue.fetch_job(body["job"])
    assert job.args[3] is None and [t["id"] for t in job.args[4]] == [505, 507, 508] and job.args[5] == QA_XML
    work_burst(queue)
    finished = client.get(f"/jobs/{body['job']}").get_json()
    assert finished["status"] == "finished" and finished["meta"]["done"] == 3, finished
    assert not any(written(state).values())  # nothing written to Label Studio
    # no tasks in the event, or READAHEAD_MAX_TASKS=0: nothing is enqueued
    assert client.post("/webhook", json={**event, "tasks": []}).get_json()["status"] == "ignored"
    service = client.application.extensions["rubric_judge"]
    service.settings = service.settings.with_overrides(readahead_max_tasks=0)
    off = client.post("/webhook", json=event).get_json()
    assert off["status"] == "ignored" and "READAHEAD_MAX_TASKS" in off["reason"] and len(queue) == 0


def test_read_ahead_stores_the_events_tasks_so_that_they_are_read_once(settings, tiny_judge, tmp_path):
    """The job scores the event's tasks with the active version (v0 here) through the feature store: the
    next scoring of them reads none through the model; a task without the rubric's inputs is counted."""
    from backend.model.feature_store import FeatureStore

    registry = Registry(settings.model_dir, tiny_judge.base_name)
    service = Service(settings, tiny_judge, registry, load_all(settings.rubric_dir))
    previous = tiny_judge.feature_store
    tiny_judge.feature_store = FeatureStore(tmp_path / "features", tiny_judge.model_fingerprint(), 64 << 20)
    try:
        tasks = [{"id": i, "data": {**QA_DATA[i % 3], "question": f"read ahead {i}"}} for i in range(5)]
        tasks.append({"id": 99, "data": {"question": "no answer"}})
        report = prelabel_project(settings, PROJECT, tasks=tasks, service=service)
        assert report.scored == 5 and report.skipped_missing_inputs == 1 and report.written == 0
        store = tiny_judge.feature_store
        assert store.stats.written == 5
        ctx = service.context(str(PROJECT), QA_XML)
        service.score_inputs(ctx, [t["data"] for t in tasks[:5]])
        assert store.stats.hits == 5 and store.stats.written == 5  # read once
    finally:
        tiny_judge.feature_store = previous
