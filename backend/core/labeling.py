"""Rubric <-> Label Studio: labeling config XML, task inputs, prediction results, human results.

Pure module: no torch, Flask or Redis. XML from requests is parsed with ``defusedxml`` (no entity expansion).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring

from backend.core.rubric import Dimension, Rubric

log = logging.getLogger(__name__)

RATIONALE = "rationale"
MAX_CONFIG_CHARS = 1_000_000


class LabelConfigError(ValueError):
    """A labeling config cannot be parsed or does not fit a rubric."""


# --------------------------------------------------------------------------------------------------
# rubric -> XML


def label_config(rubric: Rubric, rationale: bool = True) -> str:
    """The Label Studio labeling config for ``rubric``.

    Inputs become ``<Text>`` objects; each dimension one ``<Choices>`` with string values (negative
    scales work) and the anchor descriptions as hints; groups become headed views.
    """
    target = rubric.target.name
    lines = ["<View>"]
    for item in rubric.inputs:
        lines.append(f"  <Header value={quoteattr(item.label)}/>")
        lines.append(f"  <Text name={quoteattr(item.name)} value={quoteattr('$' + item.name)}/>")

    sections: list[tuple[str | None, list[Dimension]]] = []
    for group in rubric.groups:
        dims = [d for d in rubric.dimensions if d.group == group.name]
        if dims:
            sections.append((group.title, dims))
    ungrouped = [d for d in rubric.dimensions if d.group is None or d.group not in {g.name for g in rubric.groups}]
    if ungrouped:
        sections.append((None if not sections else "Other", ungrouped))

    for title, dims in sections:
        lines.append('  <View style="margin-top:12px; padding:8px; border-top:1px solid #ddd">')
        if title:
            lines.append(f'    <Header value={quoteattr(title)} size="4"/>')
        for dim in dims:
            lines.extend("    " + line for line in _dimension_xml(dim, target, rubric.kind))
        lines.append("  </View>")
    if rationale:
        lines.append('  <Header value="Rationale (optional)" size="6"/>')
        lines.append(
            f'  <TextArea name="{RATIONALE}" toName={quoteattr(target)} rows="3" editable="true" '
            'maxSubmissions="1" placeholder="Why these scores? (optional)"/>'
        )
    lines.append("</View>")
    return "\n".join(lines) + "\n"


def _dimension_xml(dim: Dimension, target: str, kind: str) -> list[str]:
    required = "true" if kind == "classification" else "false"
    out = [
        "<View>",
        f'  <Header value={quoteattr(dim.title)} size="5"/>',
        f'  <Header value={quoteattr(dim.question)} size="6"/>',
        f'  <Choices name={quoteattr(dim.name)} toName={quoteattr(target)} choice="single-radio" '
        f'showInline="true" required="{required}">',
    ]
    for label in dim.labels:
        hint = dim.anchors.get(label)
        hint_attr = f" hint={quoteattr(hint)}" if hint else ""
        out.append(f"    <Choice value={quoteattr(label)}{hint_attr}/>")
    out.extend(["  </Choices>", "</View>"])
    return out


# --------------------------------------------------------------------------------------------------
# XML -> what we need


@dataclass(frozen=True)
class Control:
    name: str
    tag: str
    to_name: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParsedConfig:
    """The parts of a labeling config the backend uses."""

    objects: Mapping[str, str]  # object name -> data key (``$key``)
    controls: Mapping[str, Control] = field(default_factory=dict)


def parse_label_config(xml: str) -> ParsedConfig:
    """Parse a labeling config safely; raise ``LabelConfigError`` with the reason."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("the labeling config is empty")
    if len(xml) > MAX_CONFIG_CHARS:
        raise LabelConfigError(f"the labeling config is longer than {MAX_CONFIG_CHARS:,} characters")
    try:
        root = fromstring(xml, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise LabelConfigError(f"the labeling config uses forbidden XML ({type(exc).__name__})") from None
    except (ParseError, ValueError, SyntaxError) as exc:
        raise LabelConfigError(f"the labeling config is not valid XML: {exc}") from None
    objects: dict[str, str] = {}
    controls: dict[str, Control] = {}
    for element in root.iter():
        name = element.get("name")
        value = element.get("value")
        if name and element.tag in {"Text", "HyperText", "Paragraphs", "Markdown"} and value is not None:
            objects[name] = value[1:] if value.startswith("$") else value
        elif name and element.get("toName") is not None:
            values = tuple(
                c.get("alias") or c.get("value") or "" for c in element.iter() if c is not element and c.tag == "Choice"
            )
            controls[name] = Control(name=name, tag=element.tag, to_name=element.get("toName", ""), values=values)
    return ParsedConfig(objects=objects, controls=controls)


def config_problems(rubric: Rubric, parsed: ParsedConfig) -> list[str]:
    """Everything the config lacks for ``rubric`` (empty when it fits)."""
    problems: list[str] = []
    for dim in rubric.dimensions:
        control = parsed.controls.get(dim.name)
        if control is None:
            problems.append(f'no <Choices name="{dim.name}"> control for dimension {dim.name!r}')
            continue
        if control.tag != "Choices":
            problems.append(f"control {dim.name!r} is a <{control.tag}>, expected <Choices>")
            continue
        missing = [label for label in dim.labels if label not in control.values]
        if missing:
            problems.append(f"control {dim.name!r} lacks choice value(s) {', '.join(missing)}")
        if control.to_name not in parsed.objects:
            problems.append(f"control {dim.name!r} points to {control.to_name!r}, which is not a text object")
    data_keys = set(parsed.objects.values())
    for item in rubric.inputs:
        if item.name not in parsed.objects and item.name not in data_keys:
            problems.append(f"no <Text> object for input {item.name!r}")
    return problems


def match_rubric(parsed: ParsedConfig, rubrics: Iterable[Rubric]) -> Rubric | None:
    """The rubric the config fits, preferring the one with most dimensions; None if none fits."""
    fitting = [r for r in rubrics if not config_problems(r, parsed)]
    if not fitting:
        return None
    return max(fitting, key=lambda r: (len(r.dimensions), r.name))


@dataclass(frozen=True)
class Binding:
    """How one rubric maps onto one project's labeling config."""

    data_keys: Mapping[str, str]  # rubric input name -> task data key
    to_names: Mapping[str, str]  # dimension name -> object name

    @classmethod
    def default(cls, rubric: Rubric) -> Binding:
        return cls(
            data_keys={i.name: i.name for i in rubric.inputs},
            to_names={d.name: rubric.target.name for d in rubric.dimensions},
        )

    @classmethod
    def for_config(cls, rubric: Rubric, parsed: ParsedConfig | None) -> Binding:
        if parsed is None:
            return cls.default(rubric)
        data_keys = {i.name: parsed.objects.get(i.name, i.name) for i in rubric.inputs}
        to_names = {}
        for dim in rubric.dimensions:
            control = parsed.controls.get(dim.name)
            to_names[dim.name] = control.to_name if control else rubric.target.name
        return cls(data_keys=data_keys, to_names=to_names)


def task_inputs(rubric: Rubric, data: object, binding: Binding) -> tuple[dict[str, str] | None, list[str]]:
    """The rubric inputs of one task's ``data``; ``(None, missing)`` when a field is absent or not text."""
    if not isinstance(data, Mapping):
        return None, list(rubric.input_names)
    inputs: dict[str, str] = {}
    missing: list[str] = []
    for item in rubric.inputs:
        value = data.get(binding.data_keys[item.name])
        if isinstance(value, str):
            inputs[item.name] = value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            inputs[item.name] = str(value)
        else:
            missing.append(binding.data_keys[item.name])
    if missing:
        return None, missing
    return inputs, []


def prediction_result(rubric: Rubric, labels: Mapping[str, str], binding: Binding) -> list[dict[str, Any]]:
    """One ``choices`` result item per dimension, in rubric order."""
    return [
        {
            "id": f"rj-{dim.name}",
            "from_name": dim.name,
            "to_name": binding.to_names[dim.name],
            "type": "choices",
            "value": {"choices": [labels[dim.name]]},
        }
        for dim in rubric.dimensions
        if dim.name in labels
    ]


def parse_annotation_result(rubric: Rubric, result: object) -> dict[str, str]:
    """Rubric labels from one Label Studio annotation ``result`` list, by control name.

    Unscored dimensions are absent; values outside the rubric are dropped with a warning.
    """
    labels: dict[str, str] = {}
    if not isinstance(result, list):
        return labels
    names = set(rubric.dimension_names)
    for item in result:
        if not isinstance(item, Mapping) or item.get("from_name") not in names:
            continue
        dim = rubric.dimension(str(item["from_name"]))
        value = item.get("value")
        if not isinstance(value, Mapping):
            continue
        choices = value.get("choices")
        raw: object = None
        if isinstance(choices, list) and len(choices) == 1:
            raw = choices[0]
        elif "rating" in value:
            raw = value["rating"]
        elif "number" in value:
            raw = value["number"]
        label = dim.normalise(raw)
        if label is None:
            log.warning("ignoring value %r for dimension %s: not one of %s", raw, dim.name, list(dim.labels))
            continue
        labels[dim.name] = label
    return labels


def task_group(rubric: Rubric, inputs: Mapping[str, str], data: Mapping[str, Any] | None, group_by: str = "") -> str:
    """The group of a task: the value of the data field ``group_by`` (the GROUP_BY setting, else the rubric's
    ``group_by``) when the task has it; otherwise, when the rubric has inputs besides its target, a hash of
    those (tasks rating different answers to one question, or different summaries of one dialogue, form one
    group); otherwise "" (the task is its own group)."""
    field_name = group_by or rubric.group_by
    if field_name and isinstance(data, Mapping) and data.get(field_name) not in (None, ""):
        return f"{field_name}={data[field_name]}"
    context = {name: inputs.get(name, "") for name in rubric.input_names if name != rubric.target.name}
    if not context:
        return ""
    digest = hashlib.sha256(json.dumps(context, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
    return f"context:{digest[:16]}"
