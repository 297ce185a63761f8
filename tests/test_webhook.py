"""/webhook against a real Redis: coalescing, thresholds, START_TRAINING job ids, auth, outages."""

from __future__ import annotations

import base64
import threading
import time
import uuid

import pytest
from rq import Queue

from backend.app import create_app, redis_client
from backend.registry import Registry
from backend.rubric import load_all
from backend.service import Service
from backend.triggers import TRAIN_JOB, Triggers


@pytest.fixture
def env(settings, tiny_judge, redis_client):
    queue_name = f"rj-test-{uuid.uuid4().hex[:8]}"
    base = f"test-{uuid.uuid4().hex[:8]}"
    settings = settings.with_overrides(queue_name=queue_name, train_min_new_annotations=10)
    triggers = Triggers(redis_client, base, queue_name)
    registry = Registry(settings.model_dir, base, redis_client)

    def make(**overrides):
        s = settings.with_overrides(**overrides) if overrides else settings
        service = Service(s, tiny_judge, registry, load_all(s.rubric_dir), triggers=triggers)
        return create_app(s, service)

    yield make, triggers, Queue(queue_name, connection=redis_client)
    for key in redis_client.scan_iter(f"rubric-judge:{base}:*"):
        redis_client.delete(key)
    Queue(queue_name, connection=redis_client).empty()


def event(action: str, project: int = 3, **extra):
    body = {"action": action, "project": {"id": project, "title": "p", "label_config": "<View/>"}}
    if action.startswith("ANNOTATION_"):
        body["annotation"] = {"id": 1, "project": project, "result": [], "was_cancelled": False}
        body["task"] = {"id": 1, "data": {}}
    body.update(extra)
    return body


@pytest.mark.parametrize("action", ["TASKS_CREATED", "PROJECT_UPDATED", "LABEL_LINK_CREATED", "TASKS_DELETED"])
def test_other_events_are_ignored(env, action):
    make, _, queue = env
    response = make().test_client().post("/webhook", json=event(action))
    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"
    assert queue.count == 0


def test_start_training_returns_a_job_and_repeats_are_absorbed(env):
    make, triggers, queue = env
    client = make().test_client()
    first = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}}).get_json()
    assert first["status"] == "enqueued" and first["job"].startswith("train-p3-")
    second = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}}).get_json()
    assert second["status"] == "absorbed" and second["job"] == first["job"]
    assert queue.job_ids == [first["job"]]
    job = queue.fetch_job(first["job"])
    assert job.func_name == TRAIN_JOB and job.args == ("3", triggers.base_name)


def test_annotation_events_wait_for_the_threshold(env):
    make, _, queue = env
    client = make().test_client()
    for n in range(1, 10):
        body = client.post("/webhook", json=event("ANNOTATION_CREATED")).get_json()
        assert body["status"] == "counted" and body["pending"] == n and body["threshold"] == 10
    assert queue.count == 0
    tenth = client.post("/webhook", json=event("ANNOTATION_UPDATED")).get_json()
    assert tenth["status"] == "enqueued"
    assert queue.count == 1


def test_bulk_event_counts_its_annotations(env):
    make, _, queue = env
    client = make().test_client()
    body = event("ANNOTATIONS_CREATED", annotations=[{"id": i} for i in range(12)])
    assert client.post("/webhook", json=body).get_json()["status"] == "enqueued"


def test_burst_yields_one_job_and_at_most_one_follow_up(env):
    make, triggers, queue = env
    app = make()
    answers: list[dict] = []
    lock = threading.Lock()

    def fire(n: int) -> None:
        client = app.test_client()
        for i in range(n):
            action = "START_TRAINING" if i % 7 == 0 else "ANNOTATION_CREATED"
            body = client.post("/webhook", json=event(action)).get_json()
            with lock:
                answers.append(body)

    threads = [threading.Thread(target=fire, args=(30,)) for _ in range(5)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(answers) == 150
    assert queue.count == 1
    first = queue.job_ids[0]
    # the worker starts the job; a second burst arrives while it runs
    assert triggers.start("3", first) is None
    threads = [threading.Thread(target=fire, args=(30,)) for _ in range(5)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert {a.get("job") for a in answers[150:] if a["status"] != "counted"} == {first}
    assert queue.count == 1  # nothing new while it runs
    follow = triggers.finish("3", first)
    assert follow is not None and follow != first
    assert queue.job_ids == [first, follow]
    # the follow-up runs and ends with no new triggers: nothing more is queued
    assert triggers.start("3", follow) is None
    assert triggers.finish("3", follow) is None
    assert queue.job_ids == [first, follow]


def test_five_projects_get_one_job_each(env):
    make, _, queue = env
    client = make().test_client()
    for _ in range(20):
        for project in range(1, 6):
            client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project}})
    assert sorted(queue.fetch_job(j).args[0] for j in queue.job_ids) == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [({"project": {"id": 1}}, "missing 'action'"), ({"action": "START_TRAINING"}, "missing project.id"),
     ({"action": "START_TRAINING", "project": {"id": "x/../1"}}, "not a number"),
     ({"action": "ANNOTATION_CREATED", "project": "7"}, "missing project.id")],
)
def test_bad_webhook_payloads(env, body, fragment):
    make, _, _ = env
    response = make().test_client().post("/webhook", json=body)
    assert response.status_code == 400 and fragment in response.get_json()["error"]


def test_project_id_from_annotation_when_project_object_is_absent(env):
    make, _, queue = env
    client = make().test_client()
    body = {"action": "ANNOTATIONS_DELETED", "annotation": {"project": 9}, "annotations": [{"id": 1}] * 10}
    assert client.post("/webhook", json=body).get_json()["status"] == "enqueued"
    assert queue.fetch_job(queue.job_ids[0]).args[0] == "9"


def test_webhook_secret_header(env):
    make, _, _ = env
    client = make(basic_auth_user="ls", basic_auth_pass="pw", webhook_secret="hook-secret").test_client()
    ok = client.post("/webhook", json=event("TASKS_CREATED"), headers={"X-Webhook-Secret": "hook-secret"})
    assert ok.status_code == 200
    wrong = client.post("/webhook", json=event("TASKS_CREATED"), headers={"X-Webhook-Secret": "nope"})
    assert wrong.status_code == 401 and "hook-secret" not in wrong.get_data(as_text=True)
    # the secret opens /webhook only
    other = client.post("/predict", json={"tasks": []}, headers={"X-Webhook-Secret": "hook-secret"})
    assert other.status_code == 401
    basic = base64.b64encode(b"ls:pw").decode()
    start = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}},
                        headers={"Authorization": f"Basic {basic}"})
    assert start.status_code == 200 and "job" in start.get_json()


def test_redis_down_answers_503_quickly(settings, tiny_judge):
    settings = settings.with_overrides(redis_url="redis://127.0.0.1:1/0")
    redis = redis_client(settings)
    registry = Registry(settings.model_dir, "down", redis)
    service = Service(settings, tiny_judge, registry, load_all(settings.rubric_dir),
                      triggers=Triggers(redis, "down", "q"))
    client = create_app(settings, service).test_client()
    started = time.monotonic()
    response = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    assert response.status_code == 503 and "not recorded" in response.get_json()["error"]
    assert time.monotonic() - started < 1.0
    # ignored events need no Redis at all
    assert client.post("/webhook", json=event("TASKS_CREATED")).status_code == 200
