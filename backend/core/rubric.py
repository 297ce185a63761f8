"""Rubrics: the single source of truth for inputs, dimensions, scales, labels and prompt wording.

A rubric is a YAML file (see ``docs/rubrics.md``). ``load_rubric`` parses and validates it; every problem
raises ``RubricError`` with the file, the key and what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from backend.settings import _default_rubric_dir
from backend.training_keys import RUBRIC_KEYS

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
RUBRIC_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
KINDS = ("scores", "classification")


class RubricError(ValueError):
    """A rubric file is missing, unreadable or invalid."""


@dataclass(frozen=True)
class InputField:
    """A task data field the judge reads."""

    name: str
    label: str
    target: bool = False


@dataclass(frozen=True)
class Group:
    """A heading in the rubric's hierarchy (e.g. content vs form)."""

    name: str
    title: str


@dataclass(frozen=True)
class Dimension:
    """One thing the judge scores: an integer scale or a set of class labels.

    ``labels`` are the strings used everywhere (Label Studio choice values, prompt, targets);
    for scales they are ``str(int)`` of ``values``.
    """

    name: str
    title: str
    question: str
    labels: tuple[str, ...]
    values: tuple[int, ...] | None = None
    group: str | None = None
    anchors: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_scale(self) -> bool:
        return self.values is not None

    @property
    def level(self) -> str:
        """Krippendorff level of measurement used by default for this dimension."""
        return "interval" if self.is_scale else "nominal"

    def value_of(self, label: str) -> int | str:
        """The numeric value of a scale label, or the label itself for classification."""
        if self.values is None:
            return label
        return self.values[self.labels.index(label)]

    def normalise(self, raw: object) -> str | None:
        """Map a raw human value (``"2"``, ``2``, ``2.0``, ``"joy"``) to one of ``labels``, or None."""
        if raw is None or isinstance(raw, bool):
            return None
        if self.values is not None:
            try:
                number = float(raw)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return None
            if not number.is_integer() or int(number) not in self.values:
                return None
            return str(int(number))
        text = str(raw).strip()
        if text in self.labels:
            return text
        lowered = {label.lower(): label for label in self.labels}
        return lowered.get(text.lower())


@dataclass(frozen=True)
class Rubric:
    """A parsed, validated rubric."""

    name: str
    description: str
    kind: str
    inputs: tuple[InputField, ...]
    dimensions: tuple[Dimension, ...]
    groups: tuple[Group, ...]
    instruction: str
    paraphrases: tuple[str, ...] = ()
    system_prompt: str = ""
    training: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None
    #: the task data field whose value groups related tasks ("" = derived from the non-target inputs)
    group_by: str = ""

    @property
    def target(self) -> InputField:
        """The input the controls attach to (``toName``)."""
        for item in self.inputs:
            if item.target:
                return item
        return self.inputs[-1]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(item.name for item in self.inputs)

    @property
    def dimension_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dimensions)

    def dimension(self, name: str) -> Dimension:
        for d in self.dimensions:
            if d.name == name:
                return d
        raise KeyError(f"rubric {self.name!r} has no dimension {name!r}")


def rubric_path(name_or_path: str | Path, rubric_dir: Path) -> Path:
    """Resolve a rubric name (``qa-quality``) or a path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        return candidate
    name = str(name_or_path)
    if not RUBRIC_NAME_RE.match(name):
        raise RubricError(f"{name!r} is not a rubric name (lowercase letters, digits, '-', '_', '.')")
    return rubric_dir / f"{name}.yaml"


def available_rubrics(rubric_dir: Path) -> list[str]:
    """Names of the rubric files in ``rubric_dir``."""
    return sorted(p.stem for p in rubric_dir.glob("*.yaml"))


def load_rubric(name_or_path: str | Path, rubric_dir: Path | None = None) -> Rubric:
    """Load and validate a rubric by name (from ``rubric_dir``) or by path."""
    rubric_dir = rubric_dir or _default_rubric_dir()
    path = rubric_path(name_or_path, rubric_dir)
    if not path.is_file():
        known = ", ".join(available_rubrics(rubric_dir)) or "none"
        raise RubricError(f"{path}: rubric file not found (rubrics in {rubric_dir}: {known})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RubricError(f"{path}: not valid YAML: {exc}") from None
    rubric = parse_rubric(raw, source=str(path), path=path)
    by_name = path == rubric_dir / f"{name_or_path}.yaml"
    if by_name and rubric.name != path.stem:
        raise RubricError(
            f"{path}: name: {rubric.name!r} differs from the file name {path.stem!r}; rename one so they match"
        )
    return rubric


def load_all(rubric_dir: Path) -> dict[str, Rubric]:
    """Every rubric in ``rubric_dir`` by name."""
    return {name: load_rubric(name, rubric_dir) for name in available_rubrics(rubric_dir)}


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> RubricError:
        return RubricError(f"{self.source}: {key}: {problem}")

    def mapping(self, value: object, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {type(value).__name__}")
        return value

    def text(self, value: object, key: str, *, required: bool = True) -> str:
        if value is None and not required:
            return ""
        if not isinstance(value, str) or (required and not value.strip()):
            raise self.fail(key, "expected a non-empty string")
        return value.strip()

    def name(self, value: object, key: str) -> str:
        text = self.text(value, key)
        if not NAME_RE.match(text):
            raise self.fail(key, f"{text!r} must start with a lowercase letter and use only a-z, 0-9 and '_'")
        return text

    def unknown_keys(self, data: Mapping[str, Any], allowed: set[str], key: str) -> None:
        extra = sorted(set(data) - allowed)
        if extra:
            raise self.fail(key, f"unknown key(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}")


def parse_rubric(raw: object, source: str = "<rubric>", path: Path | None = None) -> Rubric:
    """Validate a rubric already parsed from YAML."""
    c = _Checker(source)
    data = c.mapping(raw, "(top level)")
    c.unknown_keys(
        data,
        {"name", "description", "kind", "inputs", "scale", "groups", "dimensions", "prompt", "training", "group_by"},
        "(top level)",
    )
    name = c.text(data.get("name"), "name")
    if not RUBRIC_NAME_RE.match(name):
        raise c.fail("name", f"{name!r}: use lowercase letters, digits, '-', '_' or '.'")
    kind = data.get("kind", "scores")
    if kind not in KINDS:
        raise c.fail("kind", f"{kind!r}: expected one of {', '.join(KINDS)}")

    inputs = _parse_inputs(c, data.get("inputs"))
    groups = _parse_groups(c, data.get("groups"))
    default_scale = _parse_scale(c, data["scale"], "scale") if "scale" in data else None
    if kind == "classification" and default_scale is not None:
        raise c.fail("scale", "a classification rubric has labels per dimension, not a scale")

    raw_dims = data.get("dimensions")
    if not isinstance(raw_dims, list) or not raw_dims:
        raise c.fail("dimensions", "expected a non-empty list")
    dimensions: list[Dimension] = []
    seen: set[str] = set(inputs_names := [i.name for i in inputs])
    group_names = {g.name for g in groups}
    for index, item in enumerate(raw_dims):
        dim = _parse_dimension(c, item, f"dimensions[{index}]", kind, default_scale, group_names)
        if dim.name in seen:
            what = "an input" if dim.name in inputs_names else "another dimension"
            raise c.fail(f"dimensions[{index}].name", f"{dim.name!r} is already used by {what}")
        seen.add(dim.name)
        dimensions.append(dim)
    if "rationale" in seen:
        raise c.fail("dimensions", "'rationale' is reserved for the optional rationale text area")

    prompt = c.mapping(data.get("prompt"), "prompt")
    c.unknown_keys(prompt, {"instruction", "paraphrases", "system"}, "prompt")
    instruction = c.text(prompt.get("instruction"), "prompt.instruction")
    paraphrases_raw = prompt.get("paraphrases", []) or []
    if not isinstance(paraphrases_raw, list):
        raise c.fail("prompt.paraphrases", "expected a list of strings")
    paraphrases = tuple(c.text(p, f"prompt.paraphrases[{i}]") for i, p in enumerate(paraphrases_raw))
    system_prompt = c.text(prompt.get("system"), "prompt.system", required=False)

    training = data.get("training")
    training = c.mapping({} if training is None else training, "training")
    c.unknown_keys(training, set(RUBRIC_KEYS), "training")
    for key, value in training.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise c.fail(f"training.{key}", f"expected a number, got {value!r}")

    return Rubric(
        name=name,
        description=c.text(data.get("description"), "description", required=False),
        kind=kind,
        inputs=tuple(inputs),
        dimensions=tuple(dimensions),
        groups=tuple(groups),
        instruction=instruction,
        paraphrases=paraphrases,
        system_prompt=system_prompt,
        training=dict(training),
        path=path,
        group_by=c.text(data.get("group_by"), "group_by", required=False),
    )


def _named_entries(
    c: _Checker, raw: list[Any], section: str, allowed: set[str]
) -> list[tuple[str, dict[str, Any], str]]:
    """``(key, mapping, name)`` for each entry of a list of named mappings (a bare string is a name);
    names are validated and must be unique."""
    out: list[tuple[str, dict[str, Any], str]] = []
    for index, item in enumerate(raw):
        key = f"{section}[{index}]"
        item = c.mapping({"name": item} if isinstance(item, str) else item, key)
        c.unknown_keys(item, allowed, key)
        name = c.name(item.get("name"), f"{key}.name")
        if name in {n for _, _, n in out}:
            raise c.fail(f"{key}.name", f"{name!r} appears twice")
        out.append((key, item, name))
    return out


def _parse_inputs(c: _Checker, raw: object) -> list[InputField]:
    if not isinstance(raw, list) or not raw:
        raise c.fail("inputs", "expected a non-empty list of {name, label, target}")
    inputs: list[InputField] = []
    for key, item, name in _named_entries(c, raw, "inputs", {"name", "label", "target"}):
        label = c.text(item.get("label", name.replace("_", " ").title()), f"{key}.label")
        target = item.get("target", False)
        if not isinstance(target, bool):
            raise c.fail(f"{key}.target", "expected true or false")
        inputs.append(InputField(name=name, label=label, target=target))
    if sum(i.target for i in inputs) > 1:
        raise c.fail("inputs", "only one input may have target: true")
    return inputs


def _parse_groups(c: _Checker, raw: object) -> list[Group]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise c.fail("groups", "expected a list of {name, title}")
    return [
        Group(name=name, title=c.text(item.get("title", name.title()), f"{key}.title"))
        for key, item, name in _named_entries(c, raw, "groups", {"name", "title"})
    ]


def _parse_scale(c: _Checker, raw: object, key: str) -> tuple[int, ...]:
    if isinstance(raw, dict):
        c.unknown_keys(raw, {"min", "max"}, key)
        low, high = raw.get("min"), raw.get("max")
        if not isinstance(low, int) or not isinstance(high, int) or isinstance(low, bool) or low >= high:
            raise c.fail(key, "expected integers min < max")
        values = list(range(low, high + 1))
    elif isinstance(raw, list):
        values = raw
    else:
        raise c.fail(key, "expected a list of integers or {min, max}")
    if len(values) < 2:
        raise c.fail(key, "a scale needs at least two levels")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise c.fail(key, f"{value!r} is not an integer")
    if len(set(values)) != len(values):
        raise c.fail(key, "levels must be distinct")
    if list(values) != sorted(values):
        raise c.fail(key, "levels must be in increasing order")
    return tuple(values)


def _parse_dimension(
    c: _Checker,
    raw: object,
    key: str,
    kind: str,
    default_scale: tuple[int, ...] | None,
    group_names: set[str],
) -> Dimension:
    item = c.mapping(raw, key)
    c.unknown_keys(item, {"name", "title", "question", "group", "scale", "anchors", "labels"}, key)
    name = c.name(item.get("name"), f"{key}.name")
    title = c.text(item.get("title", name.replace("_", " ").title()), f"{key}.title")
    question = c.text(item.get("question"), f"{key}.question")
    group = item.get("group")
    if group is not None:
        group = c.name(group, f"{key}.group")
        if group_names and group not in group_names:
            raise c.fail(f"{key}.group", f"{group!r} is not one of the groups: {', '.join(sorted(group_names))}")

    anchors: dict[str, str] = {}
    if kind == "classification":
        if "scale" in item:
            raise c.fail(f"{key}.scale", "classification dimensions take labels, not a scale")
        raw_labels = item.get("labels")
        if not isinstance(raw_labels, list) or len(raw_labels) < 2:
            raise c.fail(f"{key}.labels", "expected a list of at least two labels")
        labels: list[str] = []
        for index, entry in enumerate(raw_labels):
            entry_key = f"{key}.labels[{index}]"
            hint = ""
            if isinstance(entry, dict):
                c.unknown_keys(entry, {"value", "hint"}, entry_key)
                hint = c.text(entry.get("hint"), f"{entry_key}.hint", required=False)
                entry = entry.get("value")
            if isinstance(entry, bool):
                raise c.fail(entry_key, f'YAML read this label as the boolean {entry}; quote it, e.g. "{entry}"')
            label = c.text(entry if not isinstance(entry, int | float) else str(entry), f"{entry_key}")
            if "\n" in label or label != label.strip():
                raise c.fail(entry_key, f"{label!r} must be one line without surrounding spaces")
            if label in labels:
                raise c.fail(entry_key, f"label {label!r} appears twice")
            labels.append(label)
            if hint:
                anchors[label] = hint
        if "anchors" in item:
            raise c.fail(f"{key}.anchors", "use {value, hint} entries in labels for classification")
        return Dimension(name=name, title=title, question=question, labels=tuple(labels), group=group, anchors=anchors)

    if "labels" in item:
        raise c.fail(f"{key}.labels", "a scores rubric takes a scale, not labels (or use kind: classification)")
    values = _parse_scale(c, item["scale"], f"{key}.scale") if "scale" in item else default_scale
    if values is None:
        raise c.fail(f"{key}.scale", "no scale here and no top-level scale to inherit")
    raw_anchors = item.get("anchors") or {}
    raw_anchors = c.mapping(raw_anchors, f"{key}.anchors")
    for level, text in raw_anchors.items():
        number = _integer_level(level)
        if number is None:
            raise c.fail(f"{key}.anchors", f"{level!r} is not an integer level")
        if number not in values:
            raise c.fail(f"{key}.anchors.{level}", f"{number} is not on the scale {list(values)}")
        anchors[str(number)] = c.text(text, f"{key}.anchors.{level}")
    return Dimension(
        name=name,
        title=title,
        question=question,
        labels=tuple(str(v) for v in values),
        values=values,
        group=group,
        anchors=anchors,
    )


def _integer_level(level: object) -> int | None:
    """An anchor key as an integer level: ints and integer strings ("-2"), never bools or 1.5."""
    if isinstance(level, bool):
        return None
    if isinstance(level, int):
        return level
    if isinstance(level, str) and re.fullmatch(r"\s*-?[0-9]+\s*", level):
        return int(level)
    return None
