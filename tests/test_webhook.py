"""/webhook against a real Redis: coalescing, thresholds, START_TRAINING job ids, auth, outages."""

from __future__ import annotations

import base64
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from rq import Queue

from backend.core.rubric import load_all
from backend.service import Service
from backend.state.redis_conn import redis_client
from backend.state.registry import Registry
from backend.state.triggers import TRAIN_JOB, Triggers
from backend.web.app import create_app
from tests.fixtures.ls_replay import loopback


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
    [
        ({"project": {"id": 1}}, "missing 'action'"),
        ({"action": "START_TRAINING"}, "missing project.id"),
        ({"action": "START_TRAINING", "project": {"id": "x/../1"}}, "not a number"),
        ({"action": "ANNOTATION_CREATED", "project": "7"}, "missing project.id"),
    ],
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
    start = client.post(
        "/webhook", json={"action": "START_TRAINING", "project": {"id": 3}}, headers={"Authorization": f"Basic {basic}"}
    )
    assert start.status_code == 200 and "job" in start.get_json()


def test_redis_down_answers_503_quickly(settings, tiny_judge):
    settings = settings.with_overrides(redis_url="redis://127.0.0.1:1/0")
    redis = redis_client(settings)
    registry = Registry(settings.model_dir, "down", redis)
    service = Service(
        settings, tiny_judge, registry, load_all(settings.rubric_dir), triggers=Triggers(redis, "down", "q")
    )
    client = create_app(settings, service).test_client()
    started = time.monotonic()
    response = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    assert response.status_code == 503 and "not recorded" in response.get_json()["error"]
    assert time.monotonic() - started < 1.0
    # ignored events need no Redis at all
    assert client.post("/webhook", json=event("TASKS_CREATED")).status_code == 200


def flood(url: str, bodies: list[dict], workers: int = 50) -> list[tuple[int, dict]]:
    import requests

    session_per_thread = threading.local()

    def post(body: dict) -> tuple[int, dict]:
        session = getattr(session_per_thread, "s", None) or requests.Session()
        session_per_thread.s = session
        response = session.post(f"{url}/webhook", json=body, timeout=30)
        return response.status_code, response.json()

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(post, bodies))


def test_flood_of_1000_events_makes_one_job_and_at_most_one_follow_up(env):
    make, triggers, queue = env
    bodies = [
        {"action": "START_TRAINING", "project": {"id": 3}} if i % 3 == 0 else event("ANNOTATION_CREATED")
        for i in range(1000)
    ]
    with loopback(make()) as url:
        answers = flood(url, bodies)
        assert [s for s, _ in answers] == [200] * 1000
        assert queue.count == 1
        first = queue.job_ids[0]
        assert {a.get("job") for _, a in answers if a["status"] != "counted"} == {first}
        # the worker starts it; another 1,000 arrive while it trains: none enqueues, all point at it
        assert triggers.start("3", first) is None
        answers = flood(url, bodies)
        assert [s for s, _ in answers] == [200] * 1000
        assert queue.job_ids == [first]
        assert {a["status"] for _, a in answers} <= {"follow-up", "counted"}
    follow = triggers.finish("3", first)
    assert follow is not None and queue.job_ids == [first, follow]
    assert triggers.start("3", follow) is None and triggers.finish("3", follow) is None
    assert queue.job_ids == [first, follow]


def test_flood_for_five_projects_makes_one_job_each(env):
    make, _, queue = env
    bodies = [{"action": "START_TRAINING", "project": {"id": 1 + i % 5}} for i in range(1000)]
    with loopback(make()) as url:
        answers = flood(url, bodies)
    assert [s for s, _ in answers] == [200] * 1000
    assert sorted(queue.fetch_job(j).args[0] for j in queue.job_ids) == ["1", "2", "3", "4", "5"]
    assert sum(a["status"] == "enqueued" for _, a in answers) == 5


def test_a_stale_mark_of_a_failed_job_does_not_block_training(env, redis_client):
    """A worker killed with SIGKILL never clears its running mark; once RQ has failed the job, the next
    trigger sees through the mark and enqueues a fresh job (not a follow-up that nobody would run)."""
    make, triggers, queue = env
    client = make().test_client()
    first = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 4}}).get_json()["job"]
    assert triggers.start("4", first) is None
    job = queue.fetch_job(first)
    assert (
        client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 4}}).get_json()["status"]
        == "follow-up"
    )
    job.set_status("failed")  # what RQ does when the work-horse dies
    again = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 4}}).get_json()
    assert again["status"] == "enqueued" and again["job"] != first
    state = triggers.state("4")
    assert state["queued"] == again["job"] and state["running"] is None and state["follow_up"] is False


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test's own on a free port, which the test may kill and restart."""
    import shutil
    import signal
    import socket
    import subprocess

    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    class Server:
        url = f"redis://127.0.0.1:{port}/0"
        process: subprocess.Popen | None = None

        def start(self) -> None:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(tmp_path),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            from redis import Redis

            client = Redis.from_url(self.url)
            for _ in range(100):
                try:
                    client.ping()
                    return
                except Exception:
                    time.sleep(0.05)
            raise RuntimeError("redis-server did not start")

        def kill(self) -> None:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    server = Server()
    server.start()
    yield server
    if server.process and server.process.poll() is None:
        server.kill()


def write_adapter(model_dir, path) -> None:
    """A real (random) LoRA adapter of the tiny model, as a training run would leave in a version folder."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft.save_pretrained(path)


def test_redis_outage(settings, tiny_judge, tiny_model_dir, private_redis, caplog):
    """Redis dies: /predict keeps serving the last known version (disk copy, logged), /health says so,
    /webhook answers 503 fast. Redis returns: triggers are queued again."""
    from support.ls_bodies import QA_DATA, ls_task, predict_body
    from tests.test_app import QA_XML

    settings = settings.with_overrides(redis_url=private_redis.url, queue_name="rj-outage")
    redis = redis_client(settings)
    registry = Registry(settings.model_dir, "outage", redis)
    service = Service(
        settings,
        tiny_judge,
        registry,
        load_all(settings.rubric_dir),
        triggers=Triggers(redis, "outage", settings.queue_name),
    )
    client = create_app(settings, service).test_client()
    write_adapter(tiny_model_dir, registry.version_dir("12", 1))
    registry.set_active("12", 1)
    tasks = [ls_task(1, QA_DATA[0])]
    assert client.get("/health").get_json()["redis"] == "ok"
    before = client.post("/predict", json=predict_body(tasks, QA_XML)).get_json()["results"][0]
    assert before["model_version"] == "outage.p12.v1"

    private_redis.kill()
    started = time.monotonic()
    health = client.get("/health")
    assert time.monotonic() - started < 1.0
    assert health.status_code == 200 and health.get_json()["status"] == "UP"
    assert health.get_json()["redis"] == "unavailable"
    caplog.set_level("WARNING")
    response = client.post("/predict", json=predict_body(tasks, QA_XML))
    assert response.status_code == 200
    assert response.get_json()["results"][0] == before  # the last known version (disk pointer), same scores
    assert "Redis unavailable" in caplog.text and "from disk" in caplog.text
    started = time.monotonic()
    hook = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 12}})
    assert hook.status_code == 503 and "not recorded" in hook.get_json()["error"]
    assert time.monotonic() - started < 2.0
    assert client.get("/status").status_code == 503

    private_redis.start()  # an empty Redis came back (no persistence)
    assert client.get("/health").get_json()["redis"] == "ok"
    answer = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 12}})
    assert answer.status_code == 200 and answer.get_json()["status"] == "enqueued"
    assert Queue(settings.queue_name, connection=redis).job_ids == [answer.get_json()["job"]]
    assert registry.active_version("12") == 1  # the empty Redis is refilled from the disk pointer
