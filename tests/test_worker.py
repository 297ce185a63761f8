"""The retraining journey against a real Redis and a real RQ worker; Label Studio's API is replayed.

webhook START_TRAINING -> RQ job -> export fetched through label-studio-sdk -> LoRA on the tiny model ->
held-out alpha -> new version registered -> promoted only if not worse -> /setup and /predict use it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from rq import Queue, Retry
from rq.job import Job, JobStatus

from backend.core.labeling import label_config
from backend.core.rubric import load_all, load_rubric
from backend.model.model_loader import short_model_name
from backend.service import Service
from backend.state.registry import Registry
from backend.state.triggers import RUNNING_TTL_S, Triggers
from backend.web.app import create_app
from support.ls_bodies import ls_task, predict_body, setup_body
from support.processes import alive, processes_with
from tests.conftest import REDIS_URL, REPO, work_burst
from tests.fixtures.ls_replay import ReplayState, replay_server
from tests.fixtures.synthetic import KEYWORDS, ls_export, synthetic_items
from worker.horse import HORSE_STOP_GRACE_S

EMOTION_XML = label_config(load_rubric("emotion-ekman"))
PROJECT = 7


@pytest.fixture
def stack(tiny_model_dir, tmp_path, monkeypatch, redis_client, tiny_judge):
    """Backend app + replayed Label Studio + queue, all configured through the environment like production."""
    queue_name = f"rj-test-{uuid.uuid4().hex[:8]}"
    state = ReplayState(
        token="test-token-123",
        projects={PROJECT: {"label_config": EMOTION_XML, "export": ls_export(synthetic_items(48))}},
    )
    with replay_server(state) as url:
        env = {
            "BASE_MODEL": str(tiny_model_dir),
            "MODEL_DIR": str(tmp_path / "models"),
            "REDIS_URL": REDIS_URL,
            "QUEUE_NAME": queue_name,
            "LABEL_STUDIO_URL": url,
            "LABEL_STUDIO_API_KEY": "test-token-123",
            "MAX_INPUT_TOKENS": "4096",
            "TRAIN_EPOCHS": "12",
            "TRAIN_LEARNING_RATE": "0.003",
            "TRAIN_BATCH_SIZE": "8",
            "RUBRIC": "emotion-ekman",
        }
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
    work_burst(queue)


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
    tasks = [
        ls_task(i, {"text": f"{w} {w}: the museum opens at 9am, I am {w}"}) for i, w in enumerate(KEYWORDS.values())
    ]
    results = client.post("/predict", json=predict_body(tasks, EMOTION_XML, f"{PROJECT}.1")).get_json()["results"]
    assert all(r["model_version"] == setup["model_version"] for r in results)
    predicted = [r["result"][0]["value"]["choices"][0] for r in results]
    assert sum(p == label for p, label in zip(predicted, KEYWORDS, strict=True)) >= 3, predicted

    # Start Training again on the same annotations: nothing new, so no training and no version
    same = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}}).get_json()
    run_worker(queue)
    skipped = queue.fetch_job(same["job"]).return_value()
    assert skipped["status"] == "skipped" and skipped["reason"] == "nothing new since v1", skipped
    assert registry.version_numbers(str(PROJECT)) == [1]
    last_run = client.get(f"/status?project={PROJECT}").get_json()["projects"][str(PROJECT)]["last_run"]
    assert last_run["status"] == "skipped" and last_run["job"] == same["job"]

    # with force it retrains; a worse candidate is registered but not promoted
    import os

    os.environ["TRAIN_LEARNING_RATE"] = "0.0000001"
    os.environ["TRAIN_EPOCHS"] = "1"
    again = client.post(
        "/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}, "force": True}
    ).get_json()
    run_worker(queue)
    assert queue.fetch_job(again["job"]).return_value()["promoted"] is False
    assert registry.version_numbers(str(PROJECT)) == [1, 2]
    assert registry.active_version(str(PROJECT)) == 1
    second = json.loads((registry.version_dir(str(PROJECT), 2) / "metrics.json").read_text())
    assert second["incumbent_version"] == f"p{PROJECT}_v1" and second["promoted"] is False
    versions = client.get("/versions").get_json()
    assert [d["model_version"].rsplit(".", 1)[1] for d in versions["details"]] == ["v0", "v1", "v2"]
    assert [d["active"] for d in versions["details"]] == [False, True, False]

    # an annotation deleted in Label Studio: the data changed, so Start Training trains again
    state.projects[PROJECT]["export"] = ls_export(synthetic_items(47))
    changed = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}}).get_json()
    run_worker(queue)
    assert queue.fetch_job(changed["job"]).return_value()["status"] == "done"
    assert registry.version_numbers(str(PROJECT)) == [1, 2, 3]


def test_label_studio_rejecting_the_token_fails_the_job_clearly(stack):
    client, registry, queue, state = stack
    state.token = "another-token"
    answer = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}}).get_json()
    run_worker(queue)
    job = queue.fetch_job(answer["job"])
    assert job.get_status() == JobStatus.FAILED
    assert "token was rejected" in job.latest_result().exc_string
    assert not job.number_of_retries, "an invalid token is not retried"
    assert sum(r.startswith("GET /api/projects/7") for r in state.requests) == 1
    assert registry.version_numbers(str(PROJECT)) == []
    assert registry.active_version(str(PROJECT)) == 0
    # the running mark is cleared: the next trigger enqueues a fresh job
    assert (
        client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}}).get_json()["status"]
        == "enqueued"
    )


def test_activate_a_version_by_hand(stack):
    client, registry, _, _ = stack
    for number in (1, 2):
        registry.version_dir(str(PROJECT), number).mkdir(parents=True)
    assert (
        client.post("/versions/activate", json={"project": PROJECT, "version": 2})
        .get_json()["model_version"]
        .endswith(f".p{PROJECT}.v2")
    )
    assert registry.active_version(str(PROJECT)) == 2
    by_name = client.post("/versions/activate", json={"project": PROJECT, "version": f"x.p{PROJECT}.v1"})
    assert by_name.status_code == 200 and registry.active_version(str(PROJECT)) == 1
    missing = client.post("/versions/activate", json={"project": PROJECT, "version": 9})
    assert missing.status_code == 404 and "v1, v2" in missing.get_json()["error"]
    bad = client.post("/versions/activate", json={"project": PROJECT, "version": "latest"})
    assert bad.status_code == 400
    assert client.post("/versions/activate", json={"project": PROJECT, "version": 0}).status_code == 200
    assert registry.active_version(str(PROJECT)) == 0


# --------------------------------------------------------------------------------------------------
# faults: Label Studio down, worker killed


def snapshot(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (a version folder)."""
    return {
        p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def with_active_v1(stack, tiny_model_dir):
    """The stack with a real adapter as project 7's active v1, and its file checksums."""
    from tests.test_webhook import write_adapter

    _, registry, _, _ = stack
    write_adapter(tiny_model_dir, registry.version_dir(str(PROJECT), 1))
    registry.set_active(str(PROJECT), 1)
    return snapshot(registry.version_dir(str(PROJECT), 1))


def assert_v1_intact(registry: Registry, before: dict[str, str]) -> None:
    assert registry.version_numbers(str(PROJECT)) == [1]
    assert registry.active_version(str(PROJECT)) == 1
    assert snapshot(registry.version_dir(str(PROJECT), 1)) == before


def start_training(client) -> str:
    answer = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}}).get_json()
    assert answer["status"] == "enqueued", answer
    return answer["job"]


@pytest.mark.parametrize("failure", ["http-500", "unreachable"])
def test_label_studio_outage_is_retried_then_fails_clearly(stack, with_active_v1, monkeypatch, failure):
    client, registry, queue, state = stack
    monkeypatch.setenv("TRAIN_RETRIES", "2")
    monkeypatch.setenv("TRAIN_RETRY_BACKOFF", "0")
    monkeypatch.setenv("TRAIN_EPOCHS", "1")
    url = os.environ["LABEL_STUDIO_URL"]
    if failure == "http-500":
        state.fail_with = 500
    else:
        monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    job_id = start_training(client)
    run_worker(queue)
    job = queue.fetch_job(job_id)
    assert job.get_status() == JobStatus.FAILED
    error = job.latest_result().exc_string
    assert "cannot read project 7 from Label Studio" in error and "gave up after 2 retries" in error, error
    assert ("HTTP 500" if failure == "http-500" else "ConnectError") in error
    assert job.number_of_retries == 2
    if failure == "http-500":
        assert sum(r.startswith("GET /api/projects/7") for r in state.requests) >= 3
    assert_v1_intact(registry, with_active_v1)
    triggers = Triggers(queue.connection, registry.base_name, queue.name)
    assert triggers.state(str(PROJECT))["running"] is None and triggers.state(str(PROJECT))["queued"] is None
    # Label Studio is back: the next trigger trains
    state.fail_with = None
    monkeypatch.setenv("LABEL_STUDIO_URL", url)
    again = start_training(client)
    run_worker(queue)
    assert queue.fetch_job(again).get_status() == JobStatus.FINISHED
    assert registry.version_numbers(str(PROJECT)) == [1, 2]
    assert snapshot(registry.version_dir(str(PROJECT), 1)) == with_active_v1


def test_a_retry_waits_with_backoff_and_absorbs_new_triggers(stack, monkeypatch):
    client, registry, queue, state = stack
    monkeypatch.setenv("TRAIN_RETRIES", "3")
    monkeypatch.setenv("TRAIN_RETRY_BACKOFF", "60")
    state.fail_with = 503
    job_id = start_training(client)
    started = time.time()
    run_worker(queue)  # no scheduler in this burst worker: the retry stays scheduled
    job = queue.fetch_job(job_id)
    assert job.get_status() == JobStatus.SCHEDULED and job.number_of_retries == 1
    assert job.meta["stage"] == "waiting to retry" and "HTTP 503" in job.meta["error"]
    when = queue.scheduled_job_registry.get_scheduled_time(job_id).timestamp()
    assert 55 <= when - started <= 120, when - started
    triggers = Triggers(queue.connection, registry.base_name, queue.name)
    assert triggers.state(str(PROJECT))["queued"] == job_id and triggers.state(str(PROJECT))["running"] is None
    repeat = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}}).get_json()
    assert repeat == {"status": "absorbed", "project": str(PROJECT), "action": "START_TRAINING", "job": job_id}
    queue.scheduled_job_registry.remove(job_id)


def _worker_process(tmp_path: Path, pause_at: str) -> subprocess.Popen:
    """``rubric-judge worker`` as its own process group, pausing at ``pause_at`` (FAULT_PAUSE_AT)."""
    env = {
        **os.environ,
        "FAULT_PAUSE_AT": pause_at,
        "FAULT_PAUSE_SECONDS": "600",
        "TRAIN_EPOCHS": "1",
        "LOG_LEVEL": "INFO",
    }
    with (tmp_path / f"worker-{pause_at}.log").open("w") as log:  # the child keeps its own copy of the handle
        return subprocess.Popen(
            [sys.executable, "-m", "rubric_judge", "worker", "--name", f"crash-{uuid.uuid4().hex[:6]}"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(worker: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a worker started by a test if it still runs: ``sig`` to its group, SIGKILL after 30 s."""
    if worker.poll() is not None:
        return
    os.killpg(worker.pid, sig)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pause_at", "kill"), [("training", "horse"), ("adapter-written", "horse"), ("adapter-written", "worker")]
)
def test_worker_killed_mid_training_or_mid_write(stack, with_active_v1, monkeypatch, tmp_path, pause_at, kill):
    """SIGKILL the training process (the work-horse: what the OOM killer hits) or the whole worker while it
    trains or while the new adapter is being written: the active version is untouched, no half-written version
    is listed, the job is failed, and the next trigger trains again."""
    client, registry, queue, state = stack
    job_id = start_training(client)
    worker = _worker_process(tmp_path, pause_at)
    horse = None
    try:
        job = queue.fetch_job(job_id)

        def paused():
            job.refresh()
            return job.meta.get("pid") if job.meta.get("stage") == f"paused at {pause_at}" else None

        horse = _wait_for(paused, 300, f"the job to pause at {pause_at}")
        partial = list(registry.project_dir(str(PROJECT)).glob(".v2.tmp-*"))
        assert len(partial) == 1  # the half-written version 2
        if pause_at == "adapter-written":
            assert (partial[0] / "adapter_config.json").is_file() and not (partial[0] / "metrics.json").exists()
        if kill == "horse":
            os.kill(horse, signal.SIGKILL)
            _wait_for(lambda: job.get_status(refresh=True) == JobStatus.FAILED, 60, "RQ to fail the job")
            assert "Work-horse terminated unexpectedly" in job.latest_result().exc_string
        else:
            os.killpg(worker.pid, signal.SIGKILL)  # the worker's group: not the horse's, which RQ forks apart
            worker.wait(timeout=30)
            # PR_SET_PDEATHSIG (worker.horse): the work-horse dies with its worker
            _wait_for(lambda: not alive(horse), 10, f"work-horse {horse} to die with its worker")
            assert processes_with("QUEUE_NAME", queue.name) == {}
        assert_v1_intact(registry, with_active_v1)
        assert [v["number"] for v in client.get("/versions").get_json()["details"]] == [0, 1]
        assert (
            client.post("/setup", json=setup_body(EMOTION_XML, project=f"{PROJECT}.1"))
            .get_json()["model_version"]
            .endswith(f".p{PROJECT}.v1")
        )
    finally:
        # SIGTERM, not SIGKILL: an idle worker leaves its blocking pop on the queue cleanly (a SIGKILL there can
        # race with the next enqueue: Redis may hand the job to the dead connection), and a busy one stops its
        # work-horse first; the autouse fixture checks that nothing is left
        _stop(worker)
    triggers = Triggers(queue.connection, registry.base_name, queue.name)
    if kill == "worker":
        # nothing is left to report the death: the job still reads "started" until RQ's abandoned-job cleanup,
        # and the running mark, no longer refreshed by the job's heartbeat, expires on its own
        assert 0 < queue.connection.ttl(triggers.key("running", str(PROJECT))) <= RUNNING_TTL_S
        queue.connection.delete(triggers.key("running", str(PROJECT)))  # as after RUNNING_TTL_S
    monkeypatch.setenv("TRAIN_EPOCHS", "1")
    again = start_training(client)  # not absorbed by the dead job's marks
    run_worker(queue)
    done = queue.fetch_job(again)
    assert done.get_status() == JobStatus.FINISHED, done.latest_result().exc_string if done.latest_result() else ""
    assert registry.version_numbers(str(PROJECT)) == [1, 2]
    assert not list(registry.project_dir(str(PROJECT)).glob(".v*.tmp-*")), "the killed run's leftovers are removed"
    assert snapshot(registry.version_dir(str(PROJECT), 1)) == with_active_v1


# --------------------------------------------------------------------------------------------------
# stopping the worker: SIGTERM/SIGINT stop its running work-horse at once; a SIGKILLed worker takes it along


def _plain_worker(queue: Queue, log_path: Path, grace: float | None = None) -> subprocess.Popen:
    """``rubric-judge worker`` on ``queue`` in a session of its own (as a service runs); with ``grace``, the same
    worker with HORSE_STOP_GRACE_S set to it."""
    env = {**os.environ, "QUEUE_NAME": queue.name, "REDIS_URL": REDIS_URL, "LOG_LEVEL": "INFO"}
    argv = [sys.executable, "-m", "rubric_judge", "worker"]
    if grace is not None:
        argv = [
            sys.executable,
            "-c",
            f"import worker.horse; worker.horse.HORSE_STOP_GRACE_S = {grace!r}; "
            "from rubric_judge.cli import main; raise SystemExit(main(['worker']))",
        ]
    with log_path.open("w") as log:
        return subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture
def fresh_queue(redis_client):
    """A queue of this test's own; its jobs are deleted afterwards."""
    queue = Queue(f"rj-test-{uuid.uuid4().hex[:8]}", connection=redis_client)
    yield queue
    registries = (queue.failed_job_registry, queue.started_job_registry, queue.finished_job_registry)
    ids = {*queue.job_ids, *(job_id for r in registries for job_id in r.get_job_ids(cleanup=False))}
    for job in Job.fetch_many(sorted(ids), connection=redis_client):
        if job is not None:
            job.delete()
    redis_client.delete(*(r.key for r in registries))
    queue.delete(delete_jobs=True)


def _sleeping_job(queue: Queue, *, ignore_sigterm: bool = False, retries: int = 0):
    """``tests.fixtures.jobs.sleeping_job``: 600 s, as long as a training run for these tests."""
    return queue.enqueue(
        "tests.fixtures.jobs.sleeping_job",
        600,
        ignore_sigterm,
        job_timeout=3600,
        retry=Retry(max=retries) if retries else None,
    )


def _horse_of(job, stage: str = "sleeping", timeout: float = 120) -> int:
    """The pid of the work-horse running ``job``, once the job reports ``stage`` with its pid."""

    def reached():
        job.refresh()
        return job.meta.get("pid") if job.meta.get("stage") == stage else None

    return _wait_for(reached, timeout, f"job {job.id} to reach {stage!r}")


def _signal_and_time(worker: subprocess.Popen, sig: int, to_group: bool) -> float:
    """Send ``sig`` to the worker (or its process group, as Ctrl-C in a terminal does); seconds until it exits."""
    started = time.monotonic()
    (os.killpg if to_group else os.kill)(worker.pid, sig)
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker did not exit within 60 s of {signal.Signals(sig).name}") from None
    return time.monotonic() - started


@pytest.mark.parametrize(
    ("sig", "to_group", "retries"),
    [(signal.SIGTERM, False, 0), (signal.SIGINT, True, 0), (signal.SIGTERM, True, 1)],
    ids=["SIGTERM", "SIGINT-to-group", "SIGTERM-job-with-retries"],
)
def test_a_stopped_worker_stops_its_running_job_at_once(fresh_queue, tmp_path, sig, to_group, retries):
    """SIGTERM (``kill``, ``docker stop``, a supervisor) or SIGINT (Ctrl-C, sent to the terminal's process
    group) stops the work-horse at once, not after the job: RQ fails the job as it fails any whose horse died (a
    job with retries left is queued again, as RQ's abandoned-job cleanup does), the worker exits, and no process
    with the queue's name is left (RQ's scheduler included)."""
    queue = fresh_queue
    job = _sleeping_job(queue, retries=retries)
    worker = _plain_worker(queue, tmp_path / "worker.log")
    try:
        horse = _horse_of(job)
        assert {worker.pid, horse} <= set(processes_with("QUEUE_NAME", queue.name))
        seconds = _signal_and_time(worker, sig, to_group)
    finally:
        _stop(worker)
    log = (tmp_path / "worker.log").read_text()
    assert worker.returncode == 0, log
    assert seconds < HORSE_STOP_GRACE_S and "SIGKILL" not in log, (seconds, log)  # SIGTERM ended the horse
    assert not alive(horse) and processes_with("QUEUE_NAME", queue.name) == {}
    assert job.id not in queue.started_job_registry
    if retries:
        job.refresh()
        assert job.get_status() == JobStatus.QUEUED and job.retries_left == 0
        assert queue.job_ids == [job.id]
    else:
        assert job.get_status(refresh=True) == JobStatus.FAILED and job.id in queue.failed_job_registry
        error = job.latest_result().exc_string
        assert f"the worker got {signal.Signals(sig).name}" in error and "signal 15" in error, error


def test_a_work_horse_that_ignores_sigterm_is_killed_after_the_grace_period(fresh_queue, tmp_path):
    queue = fresh_queue
    job = _sleeping_job(queue, ignore_sigterm=True)
    worker = _plain_worker(queue, tmp_path / "worker.log", grace=1.0)
    try:
        horse = _horse_of(job)
        seconds = _signal_and_time(worker, signal.SIGTERM, to_group=False)
    finally:
        _stop(worker)
    log = (tmp_path / "worker.log").read_text()
    assert worker.returncode == 0, log
    assert 1.0 <= seconds < 1.0 + 10, (seconds, log)
    assert f"work-horse {horse} still running after 1 s: SIGKILL" in log, log
    assert not alive(horse) and processes_with("QUEUE_NAME", queue.name) == {}
    assert job.get_status(refresh=True) == JobStatus.FAILED
    assert "signal 9" in job.latest_result().exc_string


def test_a_worker_killed_outright_takes_its_forks_along(fresh_queue, tmp_path):
    """SIGKILL to the worker alone (the OOM killer): PR_SET_PDEATHSIG ends its work-horse and RQ's scheduler;
    the job stays 'started' until RQ's abandoned-job cleanup, which fails it (retries it if it has retries)."""
    queue = fresh_queue
    job = _sleeping_job(queue)
    worker = _plain_worker(queue, tmp_path / "worker.log")
    try:
        horse = _horse_of(job)
        forks = set(processes_with("QUEUE_NAME", queue.name)) - {worker.pid}
        assert horse in forks and len(forks) == 2, forks  # the horse and the scheduler
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        _stop(worker)
    _wait_for(lambda: processes_with("QUEUE_NAME", queue.name) == {}, 10, "the worker's forks to die with it")
    assert job.get_status(refresh=True) == JobStatus.STARTED and job.id in queue.started_job_registry
    # what a later worker's maintenance does once the dead worker's heartbeat has expired
    queue.started_job_registry.cleanup(timestamp=time.time() + 3600)
    assert job.get_status(refresh=True) == JobStatus.FAILED
    assert "AbandonedJobError" in job.latest_result().exc_string


def test_the_demo_stops_everything_it_started(fresh_queue, tmp_path):
    """``make demo``'s stop (Ctrl-C, SIGTERM, or a process that died): every process group it started gets
    SIGTERM; the worker stops its running work-horse (in a group of its own) itself."""
    spec = importlib.util.spec_from_file_location("demo", REPO / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    queue = fresh_queue
    job = _sleeping_job(queue)
    worker = _plain_worker(queue, tmp_path / "worker.log")
    other = subprocess.Popen(
        ["sleep", "300"], env={**os.environ, "QUEUE_NAME": queue.name}, start_new_session=True
    )  # as Label Studio and the backend are started
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        horse = _horse_of(job)
        started = time.monotonic()
        demo.stop([other, worker], started_redis=False)
        seconds = time.monotonic() - started
    finally:
        _stop(worker)
        _stop(other)
    assert seconds < HORSE_STOP_GRACE_S, seconds
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert worker.returncode == 0 and other.returncode == -signal.SIGTERM
    assert not alive(horse) and processes_with("QUEUE_NAME", queue.name) == {}
    assert job.get_status(refresh=True) == JobStatus.FAILED


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pause_at", "sig", "to_group"),
    [("training", signal.SIGTERM, False), ("adapter-written", signal.SIGINT, True)],
    ids=["SIGTERM-mid-training", "SIGINT-mid-write"],
)
def test_stopping_the_worker_mid_training(stack, with_active_v1, tmp_path, pause_at, sig, to_group):
    """A training job whose worker is stopped: the work-horse ends at once, the job is failed, no version is
    listed and ACTIVE is untouched (the half-built ``.v2.tmp-*`` folder is left for the next job to remove), and
    the next trigger enqueues a fresh job (the failed job's running mark is stale)."""
    client, registry, queue, _ = stack
    job_id = start_training(client)
    worker = _worker_process(tmp_path, pause_at)
    try:
        horse = _horse_of(queue.fetch_job(job_id), f"paused at {pause_at}", timeout=300)
        assert {worker.pid, horse} <= set(processes_with("QUEUE_NAME", queue.name))
        seconds = _signal_and_time(worker, sig, to_group)
    finally:
        _stop(worker)
    log = (tmp_path / f"worker-{pause_at}.log").read_text()
    assert worker.returncode == 0 and seconds < HORSE_STOP_GRACE_S, (seconds, log[-3000:])
    assert not alive(horse) and processes_with("QUEUE_NAME", queue.name) == {}
    job = queue.fetch_job(job_id)
    assert job.get_status() == JobStatus.FAILED and job_id not in queue.started_job_registry
    assert f"the worker got {signal.Signals(sig).name}" in job.latest_result().exc_string
    assert_v1_intact(registry, with_active_v1)
    assert len(list(registry.project_dir(str(PROJECT)).glob(".v2.tmp-*"))) == 1
    assert [v["number"] for v in client.get("/versions").get_json()["details"]] == [0, 1]
    again = start_training(client)
    assert again != job_id
    queue.remove(again)


def test_the_worker_yields_the_cpu_to_serving():
    """WORKER_NICE lowers the worker process's priority (inherited by its jobs); WORKER_THREADS, when set, is
    its jobs' torch thread budget."""
    from backend.settings import Settings, SettingsError

    code = (
        "import os; from backend.settings import Settings; from worker.cli import lower_priority; "
        "before = os.nice(0); lower_priority(Settings.from_env({'WORKER_NICE': '7'})); "
        "print(os.nice(0) - before)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "7"
    assert Settings.from_env({"WORKER_THREADS": "3"}).for_worker().torch_threads == 3
    assert Settings.from_env({"TORCH_THREADS": "2"}).for_worker().torch_threads == 2  # 0: TORCH_THREADS
    with pytest.raises(SettingsError, match="WORKER_NICE"):
        Settings.from_env({"WORKER_NICE": "25"})


def test_the_worker_leaves_its_pubsub_channel_without_waiting_a_minute(fresh_queue, redis_client):
    """The exit race that kept a stopped worker alive 60 s (1 run in ~50): RQ unsubscribes, the pubsub thread
    handles the reply and waits up to RQ's 60 s for a new subscription, and redis-py's ``stop()`` joins it
    with no timeout. Here the thread is put in that wait on purpose; ``JudgeWorker.unsubscribe`` still returns
    within about its 1 s join."""
    from worker.horse import JudgeWorker

    worker = JudgeWorker([fresh_queue], connection=redis_client)
    worker.subscribe()
    thread = worker.pubsub_thread
    _wait_for(lambda: worker.pubsub.subscribed or None, 10, "the worker's subscription")
    worker.pubsub.unsubscribe()  # what RQ does first: the thread reads the reply, then waits for a subscription
    _wait_for(lambda: (not worker.pubsub.subscribed) or None, 10, "the unsubscribe reply to be read")
    time.sleep(0.2)
    started = time.monotonic()
    worker.unsubscribe()
    assert time.monotonic() - started < 5
    assert thread.daemon  # left waiting: it ends at its own timeout, or with the process
