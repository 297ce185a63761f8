"""The feature store: each task is read once, its features served byte for byte, a changed input or model
misses it, a corrupt or foreign entry is recomputed, and the store stays under its bound."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from backend.core.rubric import load_rubric
from backend.model.feature_store import FeatureStore
from tests.conftest import REPO

SUMMARY = load_rubric("summary-quality", REPO / "rubric_configs")


def _tasks(n: int, tag: str = "") -> list[dict[str, str]]:
    return [
        {"dialogue": f"A: we meet at {h}pm{tag}.\nB: fine, see you at {h}.", "summary": f"They meet at {h}pm{tag}."}
        for h in range(1, n + 1)
    ]


@pytest.fixture
def judge_with_store(tiny_judge, tmp_path):
    """The session's tiny judge with a fresh store of its own (restored afterwards)."""
    previous = tiny_judge.feature_store
    tiny_judge.feature_store = FeatureStore(tmp_path / "features", tiny_judge.model_fingerprint(), 64 << 20)
    yield tiny_judge
    tiny_judge.feature_store = previous


def _same(a, b) -> bool:
    scores_a, feats_a = a
    scores_b, feats_b = b
    return scores_a == scores_b and all(
        np.array_equal(x.shared, y.shared)
        and x.shared.dtype == y.shared.dtype
        and all(np.array_equal(x.dimensions[d], y.dimensions[d]) for d in x.dimensions)
        and x.lexical is not None
        and np.array_equal(x.lexical, y.lexical)
        for x, y in zip(feats_a, feats_b, strict=True)
    )


def test_stored_features_and_scores_are_byte_identical_and_read_once(judge_with_store):
    judge = judge_with_store
    store = judge.feature_store
    tasks = _tasks(6)
    judge.feature_store = None
    plain = judge.score_with_features(SUMMARY, tasks)
    judge.feature_store = store
    cold = judge.score_with_features(SUMMARY, tasks)
    assert _same(plain, cold) and store.stats.written == 6 and store.stats.hits == 0
    warm = judge.score_with_features(SUMMARY, tasks)
    assert _same(cold, warm) and store.stats.hits == 6 and store.stats.written == 6
    mixed = judge.score_with_features(SUMMARY, tasks[:3] + _tasks(2, " sharp"))  # 3 stored, 2 new
    assert store.stats.hits == 9 and store.stats.written == 8
    assert _same((mixed[0][:3], mixed[1][:3]), (warm[0][:3], warm[1][:3]))


def test_a_head_version_predicts_the_same_from_the_store(judge_with_store, tmp_path):
    from backend.model.head import fit_head

    judge = judge_with_store
    store = judge.feature_store
    tasks = _tasks(12)
    _, features = judge.score_with_features(SUMMARY, tasks)
    targets = {d.name: [float(1 + i % 5) for i in range(12)] for d in SUMMARY.dimensions}
    head = fit_head(
        SUMMARY.dimensions,
        {d.name: np.stack([f.vector(d.name, "target") for f in features]) for d in SUMMARY.dimensions},
        targets,
        [str(i) for i in range(12)],
        meta={"features": "target", "read": judge.read_mode(SUMMARY)},  # as the pipeline records it
    )
    head.save(tmp_path)
    judge.load_adapter("store-test", tmp_path)
    from_store = judge.score(SUMMARY, tasks, "store-test")
    hits = store.stats.hits
    assert hits >= 12
    judge.feature_store = None
    without = judge.score(SUMMARY, tasks, "store-test")
    judge.feature_store = store
    assert from_store == without


def test_a_changed_input_or_another_base_model_misses_the_store(judge_with_store, tmp_path):
    judge = judge_with_store
    task = _tasks(1)[0]
    key = judge.feature_key(SUMMARY, task)
    assert judge.feature_key(SUMMARY, dict(task)) == key
    assert judge.feature_key(SUMMARY, {**task, "summary": task["summary"] + " "}) != key
    assert judge.feature_key(SUMMARY, {**task, "dialogue": "A: no."}) != key
    judge.score_with_features(SUMMARY, [task])
    assert judge.feature_store.get(key) is not None
    other = FeatureStore(tmp_path / "features", "another-model", 64 << 20)  # same root, another fingerprint
    assert other.get(key) is None
    # a model with other weights (same name, same config) gets another fingerprint
    import torch

    fingerprint = judge.model_fingerprint()
    first = next(judge.model.parameters())
    with torch.no_grad():
        first.data[0, 0] += 1.0
    try:
        assert judge.model_fingerprint() != fingerprint
    finally:
        with torch.no_grad():
            first.data[0, 0] -= 1.0
    assert judge.model_fingerprint() == fingerprint


def test_the_same_model_in_another_folder_shares_the_fingerprint(tiny_model_dir, tmp_path):
    """The store's fingerprint describes the weights and the computation, not where the files sit: the same
    model copied to another folder (another name, another MODEL_DIR) gets the same fingerprint; the copy with one
    weight of a middle layer changed gets another."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from backend.model.judge import Judge
    from backend.settings import Settings

    def fingerprint(folder, model_dir):
        settings = Settings.from_env({}, base_model=str(folder), model_dir=model_dir, feature_store_mb=0)
        return Judge.from_settings(settings).model_fingerprint()

    moved = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere" / "renamed-copy")
    original = fingerprint(tiny_model_dir, tmp_path / "models-a")
    assert fingerprint(moved, tmp_path / "models-b") == original
    weights = load_file(moved / "model.safetensors")
    middle = sorted(n for n in weights if ".layers." in n and n.endswith("mlp.down_proj.weight"))[-1]
    weights[middle] = weights[middle].clone()
    with torch.no_grad():
        weights[middle][0, 0] += 0.5
    save_file(weights, moved / "model.safetensors", metadata={"format": "pt"})
    assert fingerprint(moved, tmp_path / "models-b") != original


def _close(a, b) -> bool:
    """Recomputed in another batch: the same labels, features equal to float rounding (batch invariance)."""
    return [s.labels for s in a[0]] == [s.labels for s in b[0]] and all(
        np.allclose(x.shared, y.shared, atol=1e-4) for x, y in zip(a[1], b[1], strict=True)
    )


def test_a_corrupt_or_foreign_entry_is_recomputed_never_served(judge_with_store):
    judge = judge_with_store
    store = judge.feature_store
    tasks = _tasks(2)
    cold = judge.score_with_features(SUMMARY, tasks)
    keys = [judge.feature_key(SUMMARY, t) for t in tasks]
    store.path(keys[0]).write_bytes(b"not an npz")  # corrupt
    rejected = store.stats.rejected
    assert _close((cold[0][:1], cold[1][:1]), judge.score_with_features(SUMMARY, tasks[:1]))
    assert store.stats.rejected == rejected + 1
    store.path(keys[1]).write_bytes(store.path(keys[0]).read_bytes())  # the first task's entry under the second key
    again = judge.score_with_features(SUMMARY, tasks)
    assert store.stats.rejected == rejected + 2  # the foreign entry
    assert _close(cold, again)
    assert store.get(keys[1]) is not None  # recomputed and stored again


def test_the_store_stays_under_its_bound_and_evicts_the_least_recently_read(judge_with_store, tmp_path):
    judge = judge_with_store
    tasks = _tasks(10)
    scores, features = judge.score_with_features(SUMMARY, tasks)
    keys = [judge.feature_key(SUMMARY, t) for t in tasks]
    entry = judge.feature_store.path(keys[0]).stat().st_size
    small = FeatureStore(tmp_path / "small", "m", int(entry * 4.5))
    for i, (key, score, feature) in enumerate(zip(keys, scores, features, strict=True)):
        small.put(key, score, feature)
        if i == 1:
            import os
            import time

            old = time.time() - 3600
            for k in keys[:2]:
                os.utime(small.path(k), (old, old))
            small.get(keys[0])  # read again: the most recent now
        small.enforce_bound()
        assert small.size_bytes() <= small.max_bytes
    assert small.get(keys[-1]) is not None  # the latest stays
    assert small.get(keys[1]) is None  # least recently read: evicted
    assert small.stats.evicted >= 6


def test_a_promoted_head_refreshes_the_projects_predictions_through_the_prelabel_job(redis_client, unique_name):
    from rq import Queue

    from backend.settings import Settings
    from backend.state.triggers import Triggers
    from worker.jobs import _refresh_predictions

    triggers = Triggers(redis_client, f"base-{unique_name}", unique_name)
    with_key = Settings(label_studio_api_key="token")
    try:
        job_id = _refresh_predictions(with_key, triggers, "7", "head")
        assert job_id and job_id.startswith("prelabel-p7-")
        assert Queue(unique_name, connection=redis_client).job_ids == [job_id]
        assert triggers.last_prelabel("7")["status"] == "queued"
        assert _refresh_predictions(with_key, triggers, "7", "lora") is None  # a LoRA version reads every task
        assert _refresh_predictions(Settings(), triggers, "7", "head") is None  # no Label Studio credentials
    finally:
        Queue(unique_name, connection=redis_client).empty()
        for key in redis_client.scan_iter(f"rubric-judge:base-{unique_name}:*"):
            redis_client.delete(key)


def test_retraining_reads_only_the_new_tasks_and_fits_the_same_head(settings, tmp_path):
    """``run_training`` (the RQ job's and ``rubric-judge train``'s pipeline) uses the store under MODEL_DIR: a
    second version on the same tasks reads none through the model and writes the same head; one more task is
    the only one read."""
    from tests.test_head import _records
    from worker.pipeline import run_training

    records = _records(24)

    def train(rows, out):
        seen: list[dict] = []
        run_training(settings, SUMMARY, rows, tmp_path / out, progress=seen.append)
        last = [p for p in seen if str(p.get("stage", "")).startswith("features of the training")][-1]
        return last, (tmp_path / out / "head.npz").read_bytes()

    cold, cold_head = train(records, "v1")
    assert cold["read"] == 24 and cold["from_store"] == 0
    warm, warm_head = train(records, "v2")
    assert warm["read"] == 0 and warm["from_store"] == 24
    import io

    a, b = np.load(io.BytesIO(warm_head)), np.load(io.BytesIO(cold_head))
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    extra = _records(25)[24]
    new = dataclasses.replace(extra, task_id="new", inputs={k: f"{v} (new)" for k, v in extra.inputs.items()})
    more, _ = train([*records, new], "v3")
    assert more["read"] == 1 and more["from_store"] == 24


def test_tasks_read_alone_give_a_warm_head_byte_identical_to_a_cold_one(settings, tmp_path):
    """With ``PREDICT_BATCH_SIZE=1`` every task is read alone, so its features do not depend on which tasks it was
    read with: 24 tasks, then the same 24 plus one new in the same store, gives the head that a cold run on the 25
    in an empty store gives, array for array (in batches, the features differ by ~1e-7 with their partners)."""
    from tests.test_head import _records
    from worker.pipeline import run_training

    alone = dataclasses.replace(settings, predict_batch_size=1)
    records = _records(25)
    records[24] = dataclasses.replace(
        records[24], task_id="new", inputs={k: f"{v} (new)" for k, v in records[24].inputs.items()}
    )

    def head(config, rows, out):
        run_training(config, SUMMARY, rows, tmp_path / out)
        return np.load(tmp_path / out / "head.npz")

    head(alone, records[:24], "first")
    warm = head(alone, records, "warm")
    cold = head(dataclasses.replace(alone, model_dir=tmp_path / "empty"), records, "cold")
    assert sorted(warm.files) == sorted(cold.files)
    for name in warm.files:
        assert np.array_equal(warm[name], cold[name]), name


def test_the_base_model_scores_through_the_store_with_the_plain_answers(judge_with_store):
    """v0 (no adapter) reads a task once: the first call computes and stores, the second serves the stored
    answer, and both equal the plain path's labels and probabilities (to 1e-6: batch composition)."""
    judge = judge_with_store
    store = judge.feature_store
    tasks = _tasks(5, " v0")
    judge.feature_store = None
    plain = judge.score(SUMMARY, tasks)
    judge.feature_store = store
    first = judge.score(SUMMARY, tasks)
    assert store.stats.written == 5 and store.stats.hits == 0
    second = judge.score(SUMMARY, tasks)
    assert store.stats.hits == 5 and second == first
    for a, b in zip(plain, first, strict=True):
        assert a.labels == b.labels
        for name, dim in a.dimensions.items():
            assert all(abs(p - b.dimensions[name].probs[label]) < 1e-6 for label, p in dim.probs.items())
