"""Where human labels come from: a Label Studio project (through label-studio-sdk) or a JSONL/CSV file.

Everything becomes a list of ``Record``: one task's inputs and every annotator's labels.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.core.labeling import Binding, parse_annotation_result, task_group, task_inputs
from backend.core.rubric import Rubric
from backend.label_studio import LabelStudioError, label_studio_client

log = logging.getLogger(__name__)


class SourceError(LabelStudioError):
    """Annotations cannot be read; the message says why and what to check.

    ``transient`` is true when trying again later may succeed (Label Studio unreachable, timing out, or
    answering 5xx/429); a rejected token, a forbidden or missing project is not transient."""


@dataclass(frozen=True)
class Annotation:
    annotator: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class Record:
    """One task: its rubric inputs and every annotator's labels (unscored dimensions absent)."""

    task_id: str
    inputs: Mapping[str, str]
    annotations: tuple[Annotation, ...]
    #: what makes tasks not independent (``task_group``): they share the held-out side, a fold and every
    #: bootstrap draw; "" = the task stands alone
    group: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def split_key(self) -> str:
        return self.group or self.task_id


@dataclass
class SourceStats:
    tasks: int = 0
    annotations: int = 0
    cancelled: int = 0
    empty: int = 0
    missing_inputs: int = 0
    annotators: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, int]:
        return {
            "tasks": self.tasks,
            "annotations": self.annotations,
            "cancelled": self.cancelled,
            "empty": self.empty,
            "missing_inputs": self.missing_inputs,
            "annotators": len(self.annotators),
        }


# --------------------------------------------------------------------------------------------------
# Label Studio


def _annotator_id(annotation: Mapping[str, Any]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        who = who.get("id") or who.get("email")
    return str(who if who is not None else annotation.get("id", "unknown"))


def records_from_export(
    export: Iterable[Mapping[str, Any]], rubric: Rubric, binding: Binding, group_by: str = ""
) -> tuple[list[Record], SourceStats]:
    """Records from a Label Studio JSON export: cancelled and empty annotations are skipped,
    every annotator's labels kept (an annotator's latest annotation of a task wins); groups by ``task_group``."""
    stats = SourceStats()
    records: list[Record] = []
    for task in export:
        if not isinstance(task, Mapping):
            continue
        inputs, missing = task_inputs(rubric, task.get("data"), binding)
        if inputs is None:
            stats.missing_inputs += 1
            log.warning("task %s lacks input field(s) %s; skipped", task.get("id"), ", ".join(missing))
            continue
        by_annotator: dict[str, Annotation] = {}
        for annotation in task.get("annotations") or []:
            if not isinstance(annotation, Mapping):
                continue
            if annotation.get("was_cancelled"):
                stats.cancelled += 1
                continue
            labels = parse_annotation_result(rubric, annotation.get("result"))
            if not labels:
                stats.empty += 1
                continue
            who = _annotator_id(annotation)
            by_annotator[who] = Annotation(who, labels)
        if not by_annotator:
            continue
        stats.tasks += 1
        stats.annotations += len(by_annotator)
        stats.annotators.update(by_annotator)
        group = task_group(rubric, inputs, task.get("data"), group_by)
        records.append(Record(str(task.get("id")), inputs, tuple(by_annotator.values()), group=group))
    return records, stats


def fetch_project(url: str, api_key: str, project: str) -> tuple[str, list[dict[str, Any]]]:
    """``(label_config, export)`` of a Label Studio project: every finished task with its annotations."""
    client = label_studio_client(url, api_key)
    try:
        details = client.projects.get(id=int(project))
        chunks = client.projects.exports.download_sync(int(project), export_type="JSON", download_all_tasks=False)
        raw = b"".join(chunks)
    except Exception as exc:  # the SDK raises ApiError, httpx errors, ...
        status = getattr(exc, "status_code", None)
        hint = {
            401: "the token was rejected (legacy tokens need LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true on the "
            "server; or use a personal access token)",
            403: "the token's user may not read this project",
            404: f"project {project} does not exist at {url}",
        }.get(status or 0, "")
        detail = f"HTTP {status}: {str(getattr(exc, 'body', ''))[:200]}" if status else f"{type(exc).__name__}: {exc}"
        import httpx

        transient = isinstance(exc, httpx.TransportError) if status is None else (status >= 500 or status == 429)
        raise SourceError(
            f"cannot read project {project} from Label Studio at {url} ({detail[:300]})"
            + (f"; {hint}" if hint else ""),
            transient=transient,
        ) from None
    try:
        export = json.loads(raw)
    except ValueError as exc:
        raise SourceError(f"Label Studio's export of project {project} is not JSON: {exc}") from None
    if not isinstance(export, list):
        raise SourceError(f"Label Studio's export of project {project} is not a list of tasks")
    return str(getattr(details, "label_config", "") or ""), export


# --------------------------------------------------------------------------------------------------
# files


def _record_from_row(
    row: Mapping[str, Any], index: int, rubric: Rubric, path: Path, group_by: str = ""
) -> Record | None:
    data = row.get("data")
    if not isinstance(data, Mapping):
        raise SourceError(f"{path}: line {index + 1}: expected an object with 'data'")
    missing = [name for name in rubric.input_names if not isinstance(data.get(name), str)]
    if missing:
        raise SourceError(
            f"{path}: line {index + 1}: data lacks input field(s) {', '.join(missing)} of rubric {rubric.name!r}"
        )
    inputs = {name: data[name] for name in rubric.input_names}
    annotations: list[Annotation] = []
    if "annotations" in row:
        for n, item in enumerate(row.get("annotations") or []):
            scores = item.get("scores") if isinstance(item, Mapping) else None
            if not isinstance(scores, Mapping):
                raise SourceError(f"{path}: line {index + 1}: annotations[{n}] has no 'scores' object")
            labels = _labels_from_mapping(rubric, scores)
            if labels:
                annotations.append(Annotation(str(item.get("annotator", n)), labels))
    elif "label" in row:
        labels = _labels_from_mapping(rubric, {rubric.dimensions[0].name: row["label"]})
        if labels:
            annotations.append(Annotation("gold", labels))
    else:
        raise SourceError(f"{path}: line {index + 1}: expected 'annotations' or 'label'")
    task_id = str(row.get("id", index))
    group = str(row.get("group") or "") or task_group(rubric, inputs, data, group_by)
    return Record(
        task_id,
        inputs,
        tuple(annotations),
        group=group,
        meta={k: v for k, v in row.items() if k not in ("data", "annotations", "label")},
    )


def _labels_from_mapping(rubric: Rubric, scores: Mapping[str, Any]) -> dict[str, str]:
    labels = {}
    for dim in rubric.dimensions:
        raw = scores.get(dim.name)
        if raw in (None, ""):
            continue
        label = dim.normalise(raw)
        if label is None:
            raise SourceError(f"value {raw!r} for {dim.name!r} is not one of {list(dim.labels)}")
        labels[dim.name] = label
    return labels


def read_file(path: Path, rubric: Rubric, group_by: str = "") -> list[Record]:
    """Records from JSONL (``{"id", "data", "annotations": [{"annotator", "scores"}], "group"?}`` or
    ``{"id", "data", "label"}``) or CSV (one column per input and per dimension, one row per rating). A row's
    ``group`` wins; otherwise ``task_group`` groups the tasks."""
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    if path.suffix.lower() == ".csv":
        return _read_csv(path, rubric, group_by)
    records = []
    with path.open(encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise SourceError(f"{path}: line {index + 1}: not JSON ({exc})") from None
            try:
                record = _record_from_row(row, index, rubric, path, group_by)
            except SourceError as exc:
                if str(path) in str(exc):
                    raise
                raise SourceError(f"{path}: line {index + 1}: {exc}") from None
            if record is not None:
                records.append(record)
    return records


def _read_csv(path: Path, rubric: Rubric, group_by: str = "") -> list[Record]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = {c.strip().lower(): c for c in reader.fieldnames or []}
        missing = [n for n in rubric.input_names if n not in columns]
        if missing:
            raise SourceError(f"{path}: CSV lacks column(s) {', '.join(missing)}; have {', '.join(columns)}")
        dims = [d for d in rubric.dimensions if d.name in columns]
        if not dims:
            raise SourceError(f"{path}: CSV has no column for any dimension of {rubric.name!r}")
        grouped: dict[tuple[str, ...], list[Annotation]] = {}
        for index, row in enumerate(reader):
            key = tuple(row[columns[n]] for n in rubric.input_names)
            try:
                labels = _labels_from_mapping(rubric, {d.name: row[columns[d.name]] for d in dims})
            except SourceError as exc:
                raise SourceError(f"{path}: row {index + 2}: {exc}") from None
            annotator = row.get(columns.get("annotator", ""), "") or f"r{len(grouped.get(key, []))}"
            grouped.setdefault(key, []).append(Annotation(annotator, labels))
    return [
        Record(str(n), inputs, tuple(anns), group=task_group(rubric, inputs, None, group_by))
        for n, (key, anns) in enumerate(grouped.items())
        for inputs in [dict(zip(rubric.input_names, key, strict=True))]
    ]


# --------------------------------------------------------------------------------------------------
# groups the rubric cannot see

#: the hidden-groups warning needs at least this share of the tasks alone in their group ...
HIDDEN_ALONE_SHARE = 0.8
#: ... and at least this share of those overlapping another task's context
HIDDEN_OVERLAP_SHARE = 0.2
#: a context overlaps another when it is a prefix of it, or when this share of its text is in lines or
#: sentences the other has too
HIDDEN_TEXT_SHARE = 0.5
HIDDEN_COMMON = 50
_PIECES = re.compile(r"\n+|(?<=[.!?])\s+")


def _context(rubric: Rubric, record: Record) -> str:
    return "\n".join(record.inputs.get(i.name, "") for i in rubric.inputs if i.name != rubric.target.name).strip()


def _prefix_overlaps(contexts: Sequence[str]) -> set[int]:
    """The tasks whose context is a prefix of another's (or equal to it), or has one as its prefix. In sorted
    order a string that is a prefix of any other is a prefix of the next one."""
    order = sorted((c, i) for i, c in enumerate(contexts) if c)
    out: set[int] = set()
    for (shorter, i), (longer, j) in zip(order, order[1:], strict=False):
        if longer.startswith(shorter):
            out.update((i, j))
    return out


def _shared_text_overlaps(contexts: Sequence[str], known: set[int]) -> set[int]:
    """The tasks (besides ``known``) that share at least ``HIDDEN_TEXT_SHARE`` of their context's characters, in
    whole lines or sentences, with one other task. A piece found in more than ``HIDDEN_COMMON`` tasks (a fixed
    header) is ignored, which also bounds the work by that many per piece."""
    pieces = [{p.strip() for p in _PIECES.split(c) if len(p.strip()) >= 8} for c in contexts]
    holders: dict[str, list[int]] = {}
    for i, found in enumerate(pieces):
        for piece in found:
            holders.setdefault(piece, []).append(i)
    out = set()
    for i, found in enumerate(pieces):
        if i in known or not found:
            continue
        shared: Counter[int] = Counter()
        for piece in found:
            if 1 < len(holders[piece]) <= HIDDEN_COMMON:
                shared.update({j: len(piece) for j in holders[piece] if j != i})
        if shared and shared.most_common(1)[0][1] >= HIDDEN_TEXT_SHARE * sum(len(p) for p in found):
            out.add(i)
    return out


def hidden_groups(rubric: Rubric, records: Sequence[Record]) -> str | None:
    """A warning when the tasks look independent to the rubric but are not: (nearly) every task is its own
    group, yet their non-target inputs overlap heavily (one a prefix of another, as successive turns of one
    conversation, or sharing most of their lines). Folds and bootstraps then treat related tasks as independent
    and the evidence may be optimistic; ``GROUP_BY`` names the field that groups them. None when all is well."""
    if len(records) < 4 or all(i.name == rubric.target.name for i in rubric.inputs):
        return None
    sizes = Counter(r.split_key for r in records)
    alone = [i for i, r in enumerate(records) if sizes[r.split_key] == 1]
    if len(alone) < HIDDEN_ALONE_SHARE * len(records):
        return None
    contexts = [_context(rubric, records[i]) for i in alone]
    prefixes = _prefix_overlaps(contexts)
    overlapping = prefixes | _shared_text_overlaps(contexts, prefixes)
    if len(overlapping) < max(2, HIDDEN_OVERLAP_SHARE * len(alone)):
        return None
    names = ", ".join(i.name for i in rubric.inputs if i.name != rubric.target.name)
    return (
        f"{len(alone)} of {len(records)} tasks are each a group of their own, yet {len(overlapping)} of them "
        f"overlap another task's {names} (one a prefix of the other, or sharing most of its text): they are "
        "probably related (successive turns of one conversation?), and the evidence, which treats them as "
        "independent, may be optimistic. Set GROUP_BY to the task data field that names what they share (or "
        "give the rubric a group_by), then train again."
    )
