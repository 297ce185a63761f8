"""Groups a rubric cannot see: tasks that are each a group of their own although their contexts overlap
(successive turns of one conversation) make the evidence optimistic; the training log, the report and
``/versions`` say so and name ``GROUP_BY`` (``worker.source.hidden_groups``)."""

from __future__ import annotations

import logging
import random

from backend.core.labeling import task_group
from backend.core.rubric import load_rubric
from tests.conftest import REPO
from worker.source import Annotation, Record, hidden_groups

SUMMARY = load_rubric("summary-quality", REPO / "rubric_configs")
EMOTION = load_rubric("emotion-ekman", REPO / "rubric_configs")
WORDS = "tea museum train river bakery garden ticket window letter bridge lamp harbour".split()


def _turns(conversation: int, n: int) -> list[str]:
    rng = random.Random(conversation)
    return [f"{'AB'[k % 2]}: shall we meet at the {rng.choice(WORDS)} at {rng.randint(1, 12)} ({k})?" for k in range(n)]


def _record(task: str, dialogue: str, response: str, score: int = 3) -> Record:
    inputs = {"dialogue": dialogue, "summary": response}
    labels = {d.name: str(score) for d in SUMMARY.dimensions}
    annotations = (Annotation("a", labels), Annotation("b", labels))
    return Record(task, inputs, annotations, group=task_group(SUMMARY, inputs, None))


def successive_turns(conversations: int = 8, turns: int = 7) -> list[Record]:
    """A dialogue-response project: each task's context is the conversation so far, the target its next turn,
    so each context is a prefix of the next task's and no two are identical (every task its own group)."""
    out = []
    for c in range(conversations):
        lines = _turns(c, turns)
        for k in range(1, turns):
            out.append(_record(f"{c}-{k}", "\n".join(lines[:k]), lines[k], 1 + (c + k) % 5))
    return out


def test_successive_turns_and_sliding_windows_are_hidden_groups_and_summaries_of_one_dialogue_are_not():
    records = successive_turns()
    assert len({r.split_key for r in records}) == len(records)
    warning = hidden_groups(SUMMARY, records)
    assert warning and "48 of 48 tasks are each a group of their own" in warning and "GROUP_BY" in warning
    windows = []  # the last three turns as context: no prefixes, but most lines shared with the neighbours
    for c in range(6):
        lines = _turns(c, 9)
        windows += [_record(f"{c}-{k}", "\n".join(lines[k - 3 : k]), lines[k]) for k in range(3, 9)]
    assert hidden_groups(SUMMARY, windows)
    # DialSummEval's shape: several summaries of each dialogue share one context, so they form one group
    summaries = [_record(f"{c}-{s}", "\n".join(_turns(c, 6)), f"summary {s}") for c in range(8) for s in range(4)]
    assert len({r.split_key for r in summaries}) == 8 and hidden_groups(SUMMARY, summaries) is None
    # tasks alone in their group whose contexts do not overlap, and a rubric with the target as its only input
    alone = [_record(str(c), "\n".join(_turns(c, 6)), "a summary") for c in range(20)]
    assert hidden_groups(SUMMARY, alone) is None
    texts = [Record(str(i), {"text": t}, ()) for i, t in enumerate(["so happy", "so happy today", "sad"] * 3)]
    assert hidden_groups(EMOTION, texts) is None


def test_the_training_log_the_report_and_versions_name_group_by(settings, tiny_judge, caplog):
    from backend.reports.data import run_report
    from tests.test_app import make_client
    from worker.pipeline import run_training

    _, registry = make_client(settings, tiny_judge)
    records = successive_turns(5, 5)
    with caplog.at_level(logging.WARNING, logger="worker.pipeline"):
        result = run_training(settings, SUMMARY, records, registry.version_dir("5", 1))
    hidden = result.metrics["evidence"]["hidden_groups"]
    assert "GROUP_BY" in hidden and any("GROUP_BY" in r.getMessage() for r in caplog.records)
    assert any(hidden in w for w in run_report(registry.version_dir("5", 1))["warnings"])
    client, _ = make_client(settings, tiny_judge)
    v1 = next(d for d in client.get("/versions?project=5").get_json()["details"] if d["number"] == 1)
    assert v1["evidence"]["hidden_groups"] == hidden
    grouped = [Record(r.task_id, r.inputs, r.annotations, group=r.task_id.split("-")[0]) for r in records]
    assert hidden_groups(SUMMARY, grouped) is None  # GROUP_BY set: the conversations are the groups
