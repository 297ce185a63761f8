"""The read itself: v0 ``/predict`` against one plain forward pass over the same prompts, in one run.

    python benchmarks/readlimit.py [--tasks 16] [--repeat 2] [--variants] [--data-dir ../shared/data]

On ``--tasks`` qa-quality tasks of realistic length (``benchmarks.speed.qa_tasks``), with the serving settings
(fp32 unless MODEL_PRECISION says otherwise, prediction cache off, no Redis):

* **plain forward**: the limit. Each task's prompt (the judge's own tokens) through the model once, one task
  at a time, logits of the last position only: what reading a task costs at the least.
* **judge**: ``Judge.score`` on all tasks, with each read (SCORE_READ): ``one-pass`` (the default: every
  dimension in the forward call that reads the prompt) and ``sequential`` (the prompt forward plus one step per
  dimension and label trie).
* **/predict**: the Flask app's ``/predict`` (test client) at v0 with the default deadline, as Label Studio
  calls it.
* a breakdown of the judge's forward passes for each read (prompt forward, dimension steps, label tries:
  seconds, and the number of forward calls of each kind, per batch and per task) and, with
  ``--variants``, the judge with a few settings changed one at a time, so that what costs the gap can be named.

With ``--feature-read N``, also the feature read of training on the first N summaries of DialSummEval's dev split
(``worker.pipeline.extract_features``, feature store off, each read once, no warm-up): the sequential read in
chunks taken in order (the read before issue 32), the one-pass read in chunks taken in order, and the one-pass read
in length-sorted chunks (today's ``extract_features``), side by side in one run.

Each figure is the best of ``--repeat`` runs after a warm-up. Recorded in ``benchmarks/SPEED.json`` under
``readlimit``; SPEED.md is rewritten.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.settings import Settings  # noqa: E402
from benchmarks.quality import DEFAULT_DATA, machine  # noqa: E402
from benchmarks.speed import qa_tasks, store_section  # noqa: E402
from benchmarks.usercli import start  # noqa: E402

log = logging.getLogger("benchmarks.readlimit")


def _best(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def _plain_forward(judge: Any, prompts: list[list[int]]) -> None:
    import torch

    with torch.inference_mode():
        for ids in prompts:
            judge.model(input_ids=torch.tensor([ids]), use_cache=False, logits_to_keep=1)


def _breakdown(judge: Any, rubric: Any, tasks: list[dict[str, str]]) -> dict[str, Any]:
    """Seconds in each kind of forward pass of one ``Judge.score`` call, and how many forward calls of each
    kind it made, per batch and per task (measurement only: the judge's ``_forward`` wrapped by a timer and a
    counter)."""
    kinds: dict[str, float] = {"prompt": 0.0, "dimension steps": 0.0, "label tries": 0.0}
    calls = dict.fromkeys(kinds, 0)
    plain = judge._forward
    state = {"first": True, "batches": 0}

    def timed(ids: Any, mask: Any, positions: Any, cache: Any, keep: int = 1) -> Any:
        started = time.perf_counter()
        out = plain(ids, mask, positions, cache, keep)
        kind = "prompt" if state["first"] else ("label tries" if keep == 0 else "dimension steps")
        state["first"] = False
        kinds[kind] += time.perf_counter() - started
        calls[kind] += 1
        return out

    def counted(original: Callable[..., Any]) -> Callable[..., Any]:
        def batch(*args: Any, **kwargs: Any) -> Any:
            state["first"] = True
            state["batches"] += 1
            return original(*args, **kwargs)

        return batch

    judge._forward = timed
    judge._score_batch, judge._score_packed = counted(judge._score_batch), counted(judge._score_packed)
    try:
        started = time.perf_counter()
        judge.score(rubric, tasks)
        total = time.perf_counter() - started
    finally:
        del judge._forward, judge._score_batch, judge._score_packed
    out: dict[str, Any] = {k: round(v, 3) for k, v in kinds.items()}
    out["other"] = round(total - sum(kinds.values()), 3)
    out["total"] = round(total, 3)
    batches, forward = state["batches"], sum(calls.values())
    out["forward_calls"] = {
        **calls,
        "total": forward,
        "batches": batches,
        "per_batch": round(forward / batches, 2) if batches else None,
        "per_task": round(forward / len(tasks), 3),
    }
    return out


def _feature_read(judge_for: Callable[[str], Any], data_dir: Path, n: int) -> dict[str, Any]:
    """Seconds to read the features of N DialSummEval dev summaries three ways (see the module's docstring)."""
    from backend.core.rubric import load_rubric
    from benchmarks.quality import load_dialsummeval
    from worker import pipeline

    rubric = load_rubric("summary-quality")
    records = load_dialsummeval(data_dir, rubric)["dev"][:n]
    out: dict[str, Any] = {"tasks": len(records), "rubric": rubric.name}

    def in_order(judge: Any) -> None:
        size = pipeline.FEATURE_CHUNK
        for first in range(0, len(records), size):
            judge.score_with_features(rubric, [r.inputs for r in records[first : first + size]])

    for label, read, how in (
        ("sequential, chunks in order", "sequential", in_order),
        ("one-pass, chunks in order", "one-pass", in_order),
        ("one-pass, length-sorted chunks", "one-pass", lambda j: pipeline.extract_features(j, rubric, records, "dev")),
    ):
        judge = judge_for(read)
        started = time.perf_counter()
        how(judge)
        out[label] = round(time.perf_counter() - started, 1)
        log.info("feature read of %d summaries, %s: %.1f s", len(records), label, out[label])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--variants", action="store_true", help="also the judge with a few settings changed")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--feature-read", type=int, default=0, help="also the DialSummEval feature read of N tasks")
    parser.add_argument("--bf16", action="store_true", help="also the judge with MODEL_PRECISION=bf16 (a lever)")
    args = parser.parse_args(argv)
    if not start(args.data_dir, log):
        return 0
    import torch

    from backend.core.labeling import label_config
    from backend.core.rubric import load_all
    from backend.model.judge import Judge
    from backend.model.model_loader import load_base_model
    from backend.service import Service
    from backend.state.registry import Registry
    from backend.web.app import create_app

    settings = Settings.from_env(prediction_cache=False, redis_url="")
    rubric = load_all(settings.rubric_dir)["qa-quality"]
    tasks = qa_tasks(Path(args.data_dir), args.tasks)
    model, tokenizer, name = load_base_model(settings)
    judge = Judge(model, tokenizer, name, settings)
    prompts = [judge.prompt_ids(rubric, t) for t in tasks]
    n = len(tasks)
    record: dict[str, Any] = {
        "tasks": n,
        "prompt_tokens_mean": round(sum(map(len, prompts)) / n),
        "torch_threads": torch.get_num_threads(),
        "precision": str(next(model.parameters()).dtype).removeprefix("torch."),
        "batch_token_budget": judge.batch_token_budget(),
        "batches": [len(b) for b in judge.plan_batches([len(p) for p in prompts])],
    }
    plain = _best(lambda: _plain_forward(judge, prompts), args.repeat)
    record["plain_forward_tasks_per_s"] = round(n / plain, 3)
    record["read"] = settings.score_read
    scored = _best(lambda: judge.score(rubric, tasks), args.repeat)
    record["judge_tasks_per_s"] = round(n / scored, 3)
    other_read = "sequential" if settings.score_read == "one-pass" else "one-pass"
    other = Judge(model, tokenizer, name, settings.with_overrides(score_read=other_read))
    other_s = _best(lambda: other.score(rubric, tasks), args.repeat)
    record["other_read"] = {
        "read": other_read,
        "tasks_per_s": round(n / other_s, 3),
        "over_plain": round(plain / other_s, 3),
    }

    service = Service(settings, judge, Registry(settings.model_dir, name))
    client = create_app(settings, service).test_client()
    body = {
        "tasks": [{"id": i, "data": t} for i, t in enumerate(tasks)],
        "project": "990002.1",
        "label_config": label_config(rubric),
    }

    rates: list[float] = []

    def predict() -> None:
        started = time.perf_counter()
        response = client.post("/predict", json=body)
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
        # tasks answered per second (a deadline may leave some for later: they do not count)
        rates.append(response.get_json()["timing"]["scored"] / (time.perf_counter() - started))

    _best(predict, args.repeat)
    record["predict_tasks_per_s"] = round(max(rates[1:]), 3)
    record["judge_over_plain"] = round(plain / scored, 3)
    record["predict_over_plain"] = round(record["predict_tasks_per_s"] / record["plain_forward_tasks_per_s"], 3)
    log.info("plain, judge, /predict: %s", record)
    record["breakdown_s"] = _breakdown(judge, rubric, tasks)
    record["other_read"]["breakdown_s"] = _breakdown(other, rubric, tasks)
    log.info("breakdown: %s; %s: %s", record["breakdown_s"], other_read, record["other_read"]["breakdown_s"])
    variants: dict[str, Any] = {}
    for label, overrides in (
        ("PREDICT_BATCH_SIZE=1", {"predict_batch_size": 1}),
        ("PREDICT_BATCH_SIZE=4", {"predict_batch_size": 4}),
        ("PREDICT_BATCH_SIZE=16", {"predict_batch_size": 16}),
        ("PREFIX_CACHE=0", {"prefix_cache": False}),
    )[: None if args.variants else 0]:
        other = Judge(model, tokenizer, name, settings.with_overrides(**overrides))
        seconds = _best(lambda other=other: other.score(rubric, tasks), args.repeat)
        variants[label] = {"tasks_per_s": round(n / seconds, 3), "over_plain": round(plain / seconds, 3)}
        log.info("%s: %s", label, variants[label])
    if args.bf16:  # the same judge on bf16 weights, against the same fp32 plain forward
        half = settings.with_overrides(model_precision="bf16")
        model16, _, _ = load_base_model(half)
        other16 = Judge(model16, tokenizer, name, half)
        seconds = _best(lambda: other16.score(rubric, tasks), args.repeat)
        row = {"tasks_per_s": round(n / seconds, 3), "over_plain": round(plain / seconds, 3)}
        variants["MODEL_PRECISION=bf16"] = row
        log.info("MODEL_PRECISION=bf16: %s", variants["MODEL_PRECISION=bf16"])
    record["variants"] = variants
    if args.feature_read:
        plain_settings = settings.with_overrides(feature_store_mb=0)
        record["feature_read_s"] = _feature_read(
            lambda read: Judge(model, tokenizer, name, plain_settings.with_overrides(score_read=read)),
            Path(args.data_dir),
            args.feature_read,
        )
    record["machine"] = machine()
    record["command"] = "python benchmarks/readlimit.py " + " ".join(sys.argv[1:] if argv is None else argv)
    record["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    log.info("%s", record)
    store_section("readlimit", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
