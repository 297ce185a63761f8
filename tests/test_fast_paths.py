"""Each fast path gives the plain path's labels: length batching, micro-batching across requests, and the
per-task prediction cache (real Redis, db 15). The shared-prefix cache's equality test is in test_judge.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from backend.core.labeling import label_config
from backend.core.rubric import load_all, load_rubric
from backend.model.batcher import Batcher, BatcherBusy
from backend.model.model_loader import MAX_BATCH_TOKENS, MIN_BATCH_TOKENS, memory_token_budget
from backend.service import Service
from backend.state.prediction_cache import PredictionCache
from backend.state.registry import Registry
from support.ls_bodies import QA_DATA, ls_task, predict_body
from tests.test_judge import QA_TASKS

QA_XML = label_config(load_rubric("qa-quality"))
# lengths deliberately out of order, so sorting by length really reorders the batches
MIXED = [QA_TASKS[i] for i in (7, 0, 9, 2, 5, 1, 8, 3, 6, 4)] + QA_DATA


@contextmanager
def overridden(judge: Any, **overrides: Any) -> Iterator[None]:
    saved = judge.settings
    judge.settings = saved.with_overrides(**overrides)
    try:
        yield
    finally:
        judge.settings = saved


def assert_same_scores(left: list, right: list, rubric) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert a.labels == b.labels
        for name in rubric.dimension_names:
            for label, p in a.dimensions[name].probs.items():
                assert abs(p - b.dimensions[name].probs[label]) < 1e-4


@pytest.fixture(scope="module")
def plain(tiny_judge) -> list:
    """The plain path: no length sorting, no prefix cache, one task per batch."""
    with overridden(tiny_judge, length_batching=False, prefix_cache=False, predict_batch_size=1):
        return tiny_judge.score(load_rubric("qa-quality"), MIXED)


# --- length batching -----------------------------------------------------------------------------


def test_length_batching_gives_the_plain_labels_in_order(tiny_judge, plain):
    rubric = load_rubric("qa-quality")
    with overridden(tiny_judge, length_batching=True, predict_batch_size=4):
        lengths = [len(tiny_judge.prompt_ids(rubric, t)) for t in MIXED]
        batches = tiny_judge.plan_batches(lengths)
        fast = tiny_judge.score(rubric, MIXED)
    with overridden(tiny_judge, length_batching=False, predict_batch_size=4):
        unsorted = tiny_judge.score(rubric, MIXED)
        assert tiny_judge.plan_batches(lengths)[0] == [0, 1, 2, 3]
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(MIXED)))
    assert [lengths[i] for i in flat] == sorted(lengths), "batches must be formed shortest prompt first"
    assert flat != list(range(len(MIXED))), "the fixture should need reordering, or the test proves nothing"
    assert len({tuple(s.labels.values()) for s in plain}) > 1
    assert_same_scores(fast, plain, rubric)
    assert_same_scores(unsorted, plain, rubric)


def test_token_budget_bounds_every_batch(tiny_judge, plain):
    rubric = load_rubric("qa-quality")
    lengths = [len(tiny_judge.prompt_ids(rubric, t)) for t in MIXED]
    budget = 3 * max(lengths)
    with overridden(tiny_judge, predict_batch_size=8, predict_max_batch_tokens=budget):
        batches = tiny_judge.plan_batches(lengths)
        assert tiny_judge.batch_token_budget() == budget
        scores = tiny_judge.score(rubric, MIXED)
    assert all(len(b) * max(lengths[i] for i in b) <= budget for b in batches)
    assert max(len(b) for b in batches) > 1
    with overridden(tiny_judge, predict_max_batch_tokens=1):  # below one row: one task per batch
        assert all(len(b) == 1 for b in tiny_judge.plan_batches(lengths))
    assert_same_scores(scores, plain, rubric)


def test_memory_budget_is_clamped_and_grows_with_memory(tiny_judge):
    small = memory_token_budget(tiny_judge.model, tiny_judge.device, available=1)
    mid = memory_token_budget(tiny_judge.model, tiny_judge.device, available=200 * 2**20)
    huge = memory_token_budget(tiny_judge.model, tiny_judge.device, available=2**50)
    assert small == MIN_BATCH_TOKENS and huge == MAX_BATCH_TOKENS
    assert MIN_BATCH_TOKENS < mid < MAX_BATCH_TOKENS
    assert memory_token_budget(tiny_judge.model, tiny_judge.device) >= MIN_BATCH_TOKENS


# --- micro-batching ------------------------------------------------------------------------------


def wait_until(condition) -> None:
    event = threading.Event()
    while not condition():
        event.wait(0.01)


def test_concurrent_requests_are_merged_and_get_their_own_results(tiny_judge, plain):
    rubric = load_rubric("qa-quality")
    emotion = load_rubric("emotion-ekman")
    batcher = Batcher(tiny_judge, max_tasks=64, wait_s=0.005, max_queue=32)
    requests = [MIXED[i : i + 2] for i in range(0, len(MIXED), 2)]  # 7 requests of 1-2 tasks
    answers: dict[int, list] = {}
    emotion_answer: list = []

    def call(n: int) -> None:
        answers[n] = batcher.score(rubric, requests[n])

    with tiny_judge._lock:  # the model is busy: the first request waits in the judge, the rest queue up
        first = threading.Thread(target=call, args=(0,))
        first.start()
        wait_until(lambda: batcher.in_flight == 1)
        threads = [threading.Thread(target=call, args=(n,)) for n in range(1, len(requests))]
        threads.append(
            threading.Thread(target=lambda: emotion_answer.extend(batcher.score(emotion, [{"text": "I love it!"}])))
        )
        for t in threads:
            t.start()
        wait_until(lambda: batcher.queued == len(threads))
    for t in [first, *threads]:
        t.join()
    merged = [score for n in range(len(requests)) for score in answers[n]]
    assert_same_scores(merged, plain, rubric)
    assert batcher.calls == 3, "one call for the first request, one for the six merged, one for emotion"
    assert batcher.merged == len(requests) - 1
    assert emotion_answer == tiny_judge.score(emotion, [{"text": "I love it!"}])


def test_full_queue_is_refused_and_waiting_requests_still_finish(tiny_judge, plain):
    rubric = load_rubric("qa-quality")
    batcher = Batcher(tiny_judge, max_tasks=64, wait_s=0.0, max_queue=1)
    answers: dict[int, list] = {}

    def call(n: int) -> None:
        answers[n] = batcher.score(rubric, [MIXED[n]])

    with tiny_judge._lock:
        first = threading.Thread(target=call, args=(0,))
        first.start()
        wait_until(lambda: batcher.in_flight == 1)
        second = threading.Thread(target=call, args=(1,))
        second.start()
        wait_until(lambda: batcher.queued == 1)
        with pytest.raises(BatcherBusy, match="MICRO_BATCH_MAX_QUEUE=1"):
            batcher.score(rubric, [MIXED[2]])
    first.join()
    second.join()
    assert_same_scores([answers[0][0], answers[1][0]], plain[:2], rubric)


def test_busy_backend_answers_503_with_retry_after(settings, tiny_judge):
    from backend.web.app import create_app

    settings = settings.with_overrides(micro_batch_max_queue=1, micro_batch_wait_ms=0)
    service = Service(
        settings, tiny_judge, Registry(settings.model_dir, tiny_judge.base_name), load_all(settings.rubric_dir)
    )
    client = create_app(settings, service).test_client()
    rubric = service.rubrics["qa-quality"]
    batcher = service.scorer
    assert isinstance(batcher, Batcher)
    with tiny_judge._lock:
        threads = [threading.Thread(target=batcher.score, args=(rubric, [QA_DATA[0]]))]
        threads[0].start()
        wait_until(lambda: batcher.in_flight == 1)
        threads.append(threading.Thread(target=batcher.score, args=(rubric, [QA_DATA[1]])))
        threads[1].start()
        wait_until(lambda: batcher.queued == 1)
        response = client.post("/predict", json=predict_body([ls_task(1, QA_DATA[2])], QA_XML))
    for t in threads:
        t.join()
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "busy" in response.get_json()["error"] and "retry" in response.get_json()["error"]


def test_micro_batching_off_scores_with_the_judge(settings, tiny_judge):
    service = Service(
        settings.with_overrides(micro_batching=False),
        tiny_judge,
        Registry(settings.model_dir, tiny_judge.base_name),
        load_all(settings.rubric_dir),
    )
    assert service.scorer is tiny_judge


# --- prediction cache ----------------------------------------------------------------------------


class CountingJudge:
    """The real judge, counting the tasks it is asked to score."""

    def __init__(self, judge: Any) -> None:
        self.judge = judge
        self.calls = 0
        self.tasks = 0

    def score(self, rubric, tasks, adapter=None):
        self.calls += 1
        self.tasks += len(tasks)
        return self.judge.score(rubric, tasks, adapter)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.judge, name)


def cached_service(settings, tiny_judge, redis, base: str) -> tuple[Service, CountingJudge]:
    counting = CountingJudge(tiny_judge)
    cache = PredictionCache(redis, base, settings.prediction_cache_ttl, settings.max_input_tokens)
    service = Service(
        settings,
        counting,
        Registry(settings.model_dir, tiny_judge.base_name),  # type: ignore[arg-type]
        load_all(settings.rubric_dir),
        prediction_cache=cache,
    )
    return service, counting


def test_repeated_predict_is_served_from_redis(settings, tiny_judge, redis_client, unique_name):
    service, counting = cached_service(settings, tiny_judge, redis_client, unique_name)
    tasks = [ls_task(100 + i, d) for i, d in enumerate(QA_DATA)]
    try:
        first = service.predict(predict_body(tasks, QA_XML))
        assert counting.calls == 1 and counting.tasks == 3
        second = service.predict(predict_body(tasks, QA_XML))
        assert counting.calls == 1, "the second /predict of the same tasks must not reach the model"
        assert second["results"] == first["results"]
        # one new task among cached ones: only it is scored
        more = tasks + [ls_task(200, {**QA_DATA[0], "answer": "Something else entirely."})]
        third = service.predict(predict_body(more, QA_XML))
        assert counting.tasks == 4 and third["results"][:3] == first["results"]
        # another version (here: another project's v0) is another key: a miss
        service.predict(predict_body(tasks, QA_XML, project="13.1712586036"))
        assert counting.tasks == 7
        keys = list(redis_client.scan_iter(f"rubric-judge:{unique_name}:pred:*"))
        assert len(keys) == 7 and 0 < redis_client.ttl(keys[0]) <= settings.prediction_cache_ttl
    finally:
        for key in redis_client.scan_iter(f"rubric-judge:{unique_name}:*"):
            redis_client.delete(key)


def test_cache_key_names_version_rubric_and_inputs(redis_client, unique_name):
    cache = PredictionCache(redis_client, unique_name, 60, 2048)
    qa, summary = load_rubric("qa-quality"), load_rubric("summary-quality")
    inputs = dict(QA_DATA[0])
    key = cache.key("m.p1.v0", qa, inputs)
    assert key == cache.key("m.p1.v0", qa, dict(reversed(list(inputs.items()))))
    assert key != cache.key("m.p1.v1", qa, inputs)
    assert key != cache.key("m.p1.v0", qa, {**inputs, "answer": inputs["answer"] + "!"})
    assert key != PredictionCache(redis_client, unique_name, 60, 1024).key("m.p1.v0", qa, inputs)
    assert key != PredictionCache(redis_client, unique_name, 60, 2048, "bf16").key("m.p1.v0", qa, inputs)
    assert key != PredictionCache(redis_client, unique_name, 60, 2048, read="sequential").key("m.p1.v0", qa, inputs)
    summary_inputs = {name: "x" for name in summary.input_names}
    assert cache.key("m.p1.v0", summary, summary_inputs) != cache.key(
        "m.p1.v0", qa, {name: "x" for name in qa.input_names}
    )


def test_redis_down_still_predicts(settings, tiny_judge, caplog):
    from redis import Redis

    down = Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=0.2, socket_connect_timeout=0.2)
    service, counting = cached_service(settings, tiny_judge, down, "down")
    tasks = [ls_task(1, QA_DATA[0])]
    with caplog.at_level("WARNING", logger="backend.state.prediction_cache"):
        first = service.predict(predict_body(tasks, QA_XML))
        second = service.predict(predict_body(tasks, QA_XML))
    assert first["results"] == second["results"] and len(first["results"][0]["result"]) == 6
    assert counting.calls == 2
    warnings = [r for r in caplog.records if "prediction cache unavailable" in r.getMessage()]
    assert len(warnings) == 1, "an outage is logged once, not per request"


def test_fast_path_switches_come_from_the_environment():
    from backend.settings import Settings, SettingsError

    env = {
        "PREFIX_CACHE": "false",
        "LENGTH_BATCHING": "off",
        "MICRO_BATCHING": "no",
        "PREDICTION_CACHE": "0",
        "PREDICT_MAX_BATCH_TOKENS": "4096",
        "MICRO_BATCH_WAIT_MS": "2.5",
        "MICRO_BATCH_MAX_TASKS": "16",
        "MICRO_BATCH_MAX_QUEUE": "4",
        "PREDICTION_CACHE_TTL": "60",
        "SCORE_READ": "sequential",
    }
    s = Settings.from_env(env)
    assert s.score_read == "sequential"
    assert (s.prefix_cache, s.length_batching, s.micro_batching, s.prediction_cache) == (False,) * 4
    assert (s.predict_max_batch_tokens, s.micro_batch_wait_ms, s.micro_batch_max_tasks) == (4096, 2.5, 16)
    assert (s.micro_batch_max_queue, s.prediction_cache_ttl) == (4, 60)
    for var, value in (
        ("PREDICT_MAX_BATCH_TOKENS", "-1"),
        ("MICRO_BATCH_WAIT_MS", "-1"),
        ("MICRO_BATCH_MAX_QUEUE", "0"),
        ("PREDICTION_CACHE_TTL", "0"),
        ("LENGTH_BATCHING", "maybe"),
        ("SCORE_READ", "two-pass"),
        ("QUANTIZATION", "3bit"),
        ("WORKER_PAUSE_FOR_SERVING", "sometimes"),
    ):
        with pytest.raises(SettingsError, match=var):
            Settings.from_env({var: value})


def test_features_read_in_length_sorted_chunks_keep_the_order_and_the_numbers(tiny_judge, monkeypatch):
    """``extract_features`` reads tasks sorted by length (little padding) and answers in the records' order,
    with the numbers of reading each task alone."""
    import numpy as np

    from worker import pipeline
    from worker.source import Record

    rubric = load_rubric("summary-quality")
    sizes = [7, 1, 12, 3, 9, 2, 5, 11, 4]
    records = [
        Record(f"t{i}", {"dialogue": "A: hi there. B: hello. " * n, "summary": f"They talk {n} times."}, ())
        for i, n in enumerate(sizes)
    ]
    monkeypatch.setattr(pipeline, "FEATURE_CHUNK", 4)
    scores, features = pipeline.extract_features(tiny_judge, rubric, records, "test")
    for record, score, feature in zip(records, scores, features, strict=True):
        [alone], [alone_features] = tiny_judge.score_with_features(rubric, [record.inputs])
        assert score.labels == alone.labels
        assert np.allclose(feature.shared, alone_features.shared, atol=1e-4)
        for name in rubric.dimension_names:
            assert np.allclose(feature.dimensions[name], alone_features.dimensions[name], atol=1e-4)
