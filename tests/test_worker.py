"""The retraining journey against a real Redis and a real RQ worker; Label Studio's API is replayed.

webhook START_TRAINING -> RQ job -> export fetched through label-studio-sdk -> LoRA on the tiny model ->
held-out alpha -> new version registered -> promoted only if not worse -> /setup and /predict use it.
"""

from __future__ import annotations

import json
import uuid

import pytest
from rq import Queue, SimpleWorker
from rq.job import JobStatus

from backend.app import create_app
from backend.judge import short_model_name
from backend.labeling import label_config
from backend.registry import Registry
from backend.rubric import load_all, load_rubric
from backend.service import Service
from backend.triggers import Triggers
from tests.conftest import REDIS_URL
from tests.fixtures.ls_bodies import ls_task, predict_body, setup_body
from tests.fixtures.ls_replay import ReplayState, replay_server
from tests.fixtures.synthetic import KEYWORDS, ls_export, synthetic_items

EMOTION_XML = label_config(load_rubric("emotion-ekman"))
PROJECT = 7


@pytest.fixture
def stack(tiny_model_dir, tmp_path, monkeypatch, redis_client, tiny_judge):
    """Backend app + replayed Label Studio + queue, all configured through the environment like production."""
    queue_name = f"rj-test-{uuid.uuid4().hex[:8]}"
    state = ReplayState(token="test-token-123", projects={
        PROJECT: {"label_config": EMOTION_XML, "export": ls_export(synthetic_items(48))}})
    with replay_server(state) as url:
        env = {"BASE_MODEL": str(tiny_model_dir), "MODEL_DIR": str(tmp_path / "models"), "REDIS_URL": REDIS_URL,
               "QUEUE_NAME": queue_name, "LABEL_STUDIO_URL": url, "LABEL_STUDIO_API_KEY": "test-token-123",
               "MAX_INPUT_TOKENS": "4096", "TRAIN_EPOCHS": "12", "TRAIN_LEARNING_RATE": "0.003",
               "TRAIN_BATCH_SIZE": "8", "RUBRIC": "emotion-ekman"}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        from backend.settings import Settings

        settings = Settings.from_env()
        base = short_model_name(str(tiny_model_dir))
        registry = Registry(settings.model_dir, base, redis_client)
        triggers = Triggers(redis_client, base, queue_name)
        tiny_judge.settings = tiny_judge.settings.with_overrides(model_dir=settings.model_dir)
        service = Service(settings, tiny_judge, registry, load_all(settings.rubric_dir), triggers=triggers)
        client = create_app(settings, service).test_client()
        yield client, registry, Queue(queue_name, connection=redis_client), state
    for key in redis_client.scan_iter(f"rubric-judge:{base}:*"):
        redis_client.delete(key)


def run_worker(queue: Queue) -> None:
    SimpleWorker([queue], connection=queue.connection).work(burst=True)


def test_training_job_promotes_a_better_adapter_and_serves_it(stack):
    client, registry, queue, state = stack
    setup = client.post("/setup", json=setup_body(EMOTION_XML, project=f"{PROJECT}.1712586036")).get_json()
    assert setup["model_version"].endswith(f".p{PROJECT}.v0")

    answer = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}}).get_json()
    job_id = answer["job"]
    run_worker(queue)
    job = queue.fetch_job(job_id)
    assert job.get_status() == JobStatus.FINISHED, job.latest_result().exc_string if job.latest_result() else ""
    assert job.return_value()["promoted"] is True
    assert job.meta["stage"] == "done" and job.meta["total_steps"] > 0
    assert any(r.startswith("GET /api/projects/7/export") for r in state.requests)

    version_dir = registry.version_dir(str(PROJECT), 1)
    metrics = json.loads((version_dir / "metrics.json").read_text())
    assert (version_dir / "adapter_config.json").is_file()
    assert (version_dir / "export.json").is_file() and (version_dir / "train.jsonl").is_file()
    train_ids = {json.loads(line)["id"] for line in (version_dir / "train.jsonl").read_text().splitlines()}
    held_ids = {json.loads(line)["id"] for line in (version_dir / "heldout.jsonl").read_text().splitlines()}
    assert train_ids and held_ids and not train_ids & held_ids, "split by task, no leakage"
    assert metrics["counts"]["tasks"] == 48
    assert metrics["source"]["cancelled"] == 1
    candidate, base = metrics["candidate"]["alpha_flat"], metrics["base"]["alpha_flat"]
    assert candidate > base + 0.3, (candidate, base)
    assert metrics["alpha_humans_flat"] is not None
    assert any("val_loss" in h for h in metrics["history"])

    # the backend picks up the new version without a restart
    assert registry.active_version(str(PROJECT)) == 1
    setup = client.post("/setup", json=setup_body(EMOTION_XML, project=f"{PROJECT}.1712586036")).get_json()
    assert setup["model_version"].endswith(f".p{PROJECT}.v1")
    tasks = [ls_task(i, {"text": f"{w} {w}: the museum opens at 9am, I am {w}"}) for i, w in
             enumerate(KEYWORDS.values())]
    results = client.post("/predict", json=predict_body(tasks, EMOTION_XML, f"{PROJECT}.1")).get_json()["results"]
    assert all(r["model_version"] == setup["model_version"] for r in results)
    predicted = [r["result"][0]["value"]["choices"][0] for r in results]
    assert sum(p == label for p, label in zip(predicted, KEYWORDS, strict=True)) >= 3, predicted

    # a worse candidate is registered but not promoted
    import os

    os.environ["TRAIN_LEARNING_RATE"] = "0.0000001"
    os.environ["TRAIN_EPOCHS"] = "1"
    again = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}}).get_json()
    run_worker(queue)
    assert queue.fetch_job(again["job"]).return_value()["promoted"] is False
    assert registry.version_numbers(str(PROJECT)) == [1, 2]
    assert registry.active_version(str(PROJECT)) == 1
    second = json.loads((registry.version_dir(str(PROJECT), 2) / "metrics.json").read_text())
    assert second["incumbent_version"] == f"p{PROJECT}_v1" and second["promoted"] is False
    versions = client.get("/versions").get_json()
    assert [d["model_version"].rsplit(".", 1)[1] for d in versions["details"]] == ["v0", "v1", "v2"]
    assert [d["active"] for d in versions["details"]] == [False, True, False]


def test_label_studio_rejecting_the_token_fails_the_job_clearly(stack):
    client, registry, queue, state = stack
    state.token = "another-token"
    answer = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}}).get_json()
    run_worker(queue)
    job = queue.fetch_job(answer["job"])
    assert job.get_status() == JobStatus.FAILED
    assert "token was rejected" in job.latest_result().exc_string
    assert registry.version_numbers(str(PROJECT)) == []
    assert registry.active_version(str(PROJECT)) == 0
    # the running mark is cleared: the next trigger enqueues a fresh job
    assert client.post("/webhook", json={"action": "START_TRAINING",
                                         "project": {"id": PROJECT}}).get_json()["status"] == "enqueued"


def test_activate_a_version_by_hand(stack):
    client, registry, _, _ = stack
    for number in (1, 2):
        registry.version_dir(str(PROJECT), number).mkdir(parents=True)
    assert client.post("/versions/activate", json={"project": PROJECT, "version": 2}).get_json()[
        "model_version"].endswith(f".p{PROJECT}.v2")
    assert registry.active_version(str(PROJECT)) == 2
    by_name = client.post("/versions/activate", json={"project": PROJECT, "version": f"x.p{PROJECT}.v1"})
    assert by_name.status_code == 200 and registry.active_version(str(PROJECT)) == 1
    missing = client.post("/versions/activate", json={"project": PROJECT, "version": 9})
    assert missing.status_code == 404 and "v1, v2" in missing.get_json()["error"]
    bad = client.post("/versions/activate", json={"project": PROJECT, "version": "latest"})
    assert bad.status_code == 400
    assert client.post("/versions/activate", json={"project": PROJECT, "version": 0}).status_code == 200
    assert registry.active_version(str(PROJECT)) == 0
