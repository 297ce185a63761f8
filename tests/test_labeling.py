"""Tests for backend.core.labeling, checked against label-studio-sdk's LabelInterface where it applies."""

from __future__ import annotations

import dataclasses
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from label_studio_sdk.label_interface import LabelInterface

from backend.core.labeling import (
    MAX_CONFIG_CHARS,
    RATIONALE,
    Binding,
    LabelConfigError,
    config_problems,
    label_config,
    match_rubric,
    parse_annotation_result,
    parse_label_config,
    prediction_result,
    task_inputs,
)
from backend.core.rubric import Rubric, load_rubric

RUBRIC_DIR = Path(__file__).resolve().parent.parent / "rubric_configs"
SHIPPED = ("emotion-ekman", "qa-quality", "summary-quality")
# a value that is not a label of any dimension of the rubric
WRONG_VALUE = {"emotion-ekman": "love", "qa-quality": "3", "summary-quality": "0"}

# The classification config from label-studio-protocol.md §11, written by hand (not by label_config).
DOC_EMOTION_CONFIG = """<View><Text name="text" value="$text"/>
  <Choices name="emotion" toName="text" choice="single-radio" showInline="true" required="true">
    <Choice value="anger"/><Choice value="disgust"/><Choice value="fear"/><Choice value="joy"/>
    <Choice value="neutral"/><Choice value="sadness"/><Choice value="surprise"/></Choices></View>"""

IMAGE_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="animal" toName="image"><Choice value="cat"/><Choice value="dog"/></Choices>
</View>"""

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<View><Text name="text" value="&lol9;"/></View>"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE View [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<View><Header value="&xxe;"/><Text name="text" value="$text"/></View>"""


def _choices(root: ET.Element, name: str) -> ET.Element:
    found = [e for e in root.iter("Choices") if e.get("name") == name]
    assert len(found) == 1, f"expected one <Choices name={name!r}>, found {len(found)}"
    return found[0]


# --------------------------------------------------------------------------------------------------
# rubric -> XML, validated by the SDK


@pytest.mark.parametrize("name", SHIPPED)
def test_label_config_parses_in_the_sdk(rubrics: dict[str, Rubric], name: str) -> None:
    rubric = rubrics[name]
    interface = LabelInterface(label_config(rubric))
    controls = {c.name for c in interface.controls}
    assert controls == set(rubric.dimension_names) | {RATIONALE}
    objects = {o.name for o in interface.objects}
    assert objects == set(rubric.input_names)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_label_of_every_dimension_validates(rubrics: dict[str, Rubric], name: str) -> None:
    rubric = rubrics[name]
    interface = LabelInterface(label_config(rubric))
    binding = Binding.default(rubric)
    depth = max(len(d.labels) for d in rubric.dimensions)
    seen: set[tuple[str, str]] = set()
    for index in range(depth):
        labels = {d.name: d.labels[index % len(d.labels)] for d in rubric.dimensions}
        seen.update(labels.items())
        result = prediction_result(rubric, labels, binding)
        assert [item["from_name"] for item in result] == list(rubric.dimension_names)
        assert all(item["to_name"] == rubric.target.name and item["type"] == "choices" for item in result)
        prediction = {"result": result, "score": 0.5, "model_version": "x"}
        assert interface.validate_prediction(prediction, return_errors=True) == []
    assert seen == {(d.name, label) for d in rubric.dimensions for label in d.labels}


@pytest.mark.parametrize("name", SHIPPED)
def test_prediction_with_rationale_validates(rubrics: dict[str, Rubric], name: str) -> None:
    rubric = rubrics[name]
    interface = LabelInterface(label_config(rubric))
    labels = {d.name: d.labels[-1] for d in rubric.dimensions}
    result = prediction_result(rubric, labels, Binding.default(rubric))
    result.append(
        {
            "from_name": RATIONALE,
            "to_name": rubric.target.name,
            "type": "textarea",
            "value": {"text": ["short and to the point"]},
        }
    )
    assert interface.validate_prediction({"result": result, "score": 0.9}, return_errors=True) == []


@pytest.mark.parametrize("name", SHIPPED)
def test_wrong_choice_value_is_rejected_by_the_sdk(rubrics: dict[str, Rubric], name: str) -> None:
    rubric = rubrics[name]
    interface = LabelInterface(label_config(rubric))
    labels = {d.name: d.labels[0] for d in rubric.dimensions}
    labels[rubric.dimensions[-1].name] = WRONG_VALUE[name]
    prediction = {"result": prediction_result(rubric, labels, Binding.default(rubric)), "score": 0.5}
    errors = interface.validate_prediction(prediction, return_errors=True)
    assert len(errors) == 1
    assert rubric.dimensions[-1].name in errors[0]


def test_prediction_result_skips_unscored_dimensions(qa: Rubric) -> None:
    result = prediction_result(qa, {"accuracy": "-1", "conciseness": "2"}, Binding.default(qa))
    assert [(r["from_name"], r["value"]["choices"]) for r in result] == [("conciseness", ["2"]), ("accuracy", ["-1"])]
    assert len({r["id"] for r in result}) == 2


@pytest.mark.parametrize("name", SHIPPED)
def test_xml_structure(rubrics: dict[str, Rubric], name: str) -> None:
    rubric = rubrics[name]
    root = ET.fromstring(label_config(rubric))
    headers = [e.get("value") for e in root.iter("Header")]
    for group in rubric.groups:
        assert group.title in headers
    for item in rubric.inputs:
        texts = [e for e in root.iter("Text") if e.get("name") == item.name]
        assert len(texts) == 1 and texts[0].get("value") == f"${item.name}"
        assert item.label in headers
    for dim in rubric.dimensions:
        assert dim.title in headers and dim.question in headers
        choices = _choices(root, dim.name)
        assert choices.get("toName") == rubric.target.name
        assert choices.get("perRegion") is None and choices.get("perItem") is None
        options = choices.findall("Choice")
        assert [c.get("value") for c in options] == list(dim.labels)
        for option in options:
            assert option.get("hint") == dim.anchors.get(option.get("value")), (dim.name, option.get("value"))
    areas = [e for e in root.iter("TextArea")]
    assert len(areas) == 1
    assert areas[0].get("name") == RATIONALE and areas[0].get("toName") == rubric.target.name


def test_groups_head_their_own_dimensions(qa: Rubric) -> None:
    """Each group title heads a View holding exactly that group's dimensions."""
    root = ET.fromstring(label_config(qa))
    for group in qa.groups:
        views = [v for v in root.iter("View") if any(h.get("value") == group.title for h in v.findall("Header"))]
        assert len(views) == 1
        inside = [c.get("name") for c in views[0].iter("Choices")]
        assert inside == [d.name for d in qa.dimensions if d.group == group.name]


@pytest.mark.parametrize("name", SHIPPED)
def test_no_rationale_when_switched_off(rubrics: dict[str, Rubric], name: str) -> None:
    rubric = rubrics[name]
    xml = label_config(rubric, rationale=False)
    assert "TextArea" not in xml
    assert RATIONALE not in {c.name for c in LabelInterface(xml).controls}
    assert config_problems(rubric, parse_label_config(xml)) == []


def test_choice_values_are_strings_with_negatives(qa: Rubric) -> None:
    xml = label_config(qa)
    assert '<Choice value="-2"' in xml
    assert xml.count('<Choice value="-2"') == len(qa.dimensions)
    assert "<Rating" not in xml and "<Number" not in xml


def test_anchor_text_is_escaped(tmp_path: Path) -> None:
    path = tmp_path / "esc.yaml"
    path.write_text(
        "name: esc\ninputs: [answer]\nscale: [0, 1]\n"
        "dimensions:\n  - name: tone\n    question: 'Is it \"polite\" & <calm>?'\n"
        "    anchors: {0: 'rude & \"loud\"', 1: '<polite>'}\n"
        "prompt: {instruction: Rate it.}\n",
        encoding="utf-8",
    )
    rubric = load_rubric(path)
    root = ET.fromstring(label_config(rubric))
    hints = [c.get("hint") for c in _choices(root, "tone").findall("Choice")]
    assert hints == ['rude & "loud"', "<polite>"]
    assert 'Is it "polite" & <calm>?' in [h.get("value") for h in root.iter("Header")]
    LabelInterface(label_config(rubric))


# --------------------------------------------------------------------------------------------------
# config_problems / match_rubric


@pytest.mark.parametrize("name", SHIPPED)
def test_own_config_has_no_problems(rubrics: dict[str, Rubric], name: str) -> None:
    assert config_problems(rubrics[name], parse_label_config(label_config(rubrics[name]))) == []


def test_missing_dimension_control_is_named(qa: Rubric) -> None:
    partial = dataclasses.replace(qa, dimensions=qa.dimensions[:-1])
    problems = config_problems(qa, parse_label_config(label_config(partial)))
    assert len(problems) == 1
    assert "relevance" in problems[0] and "Choices" in problems[0]


def test_missing_choice_values_are_named(qa: Rubric) -> None:
    xml = label_config(qa)
    trimmed = "\n".join(line for line in xml.splitlines() if '<Choice value="-2"' not in line)
    problems = config_problems(qa, parse_label_config(trimmed))
    assert len(problems) == len(qa.dimensions)
    for dim, problem in zip(qa.dimensions, problems, strict=True):
        assert repr(dim.name) in problem
        assert "-2" in problem and "lacks choice value" in problem
        assert "-1" not in problem


def test_wrong_tag_is_named(qa: Rubric) -> None:
    xml = label_config(qa)
    start = xml.index('<Choices name="conciseness"')
    end = xml.index("</Choices>", start) + len("</Choices>")
    xml = xml[:start] + '<Rating name="conciseness" toName="answer" maxRating="5"/>' + xml[end:]
    problems = config_problems(qa, parse_label_config(xml))
    assert len(problems) == 1
    assert "'conciseness'" in problems[0] and "<Rating>" in problems[0] and "<Choices>" in problems[0]


def test_missing_text_object_is_named(qa: Rubric) -> None:
    xml = label_config(qa)
    xml = xml.replace('<Text name="context" value="$context"/>', "")
    problems = config_problems(qa, parse_label_config(xml))
    assert problems == ["no <Text> object for input 'context'"]


def test_control_pointing_to_a_missing_object(qa: Rubric) -> None:
    xml = label_config(qa).replace('toName="answer"', 'toName="reply"')
    problems = config_problems(qa, parse_label_config(xml))
    assert len(problems) == len(qa.dimensions)
    assert all("'reply'" in p for p in problems)


def test_text_object_with_another_name_but_the_input_key_counts(qa: Rubric) -> None:
    xml = label_config(qa).replace('<Text name="context" value="$context"/>', '<Text name="ctx" value="$context"/>')
    assert config_problems(qa, parse_label_config(xml)) == []


@pytest.mark.parametrize("name", SHIPPED)
def test_match_rubric_finds_each_shipped_rubric(rubrics: dict[str, Rubric], name: str) -> None:
    parsed = parse_label_config(label_config(rubrics[name]))
    match = match_rubric(parsed, rubrics.values())
    assert match is not None and match.name == name


def test_match_rubric_on_the_hand_written_protocol_config(rubrics: dict[str, Rubric]) -> None:
    match = match_rubric(parse_label_config(DOC_EMOTION_CONFIG), rubrics.values())
    assert match is not None and match.name == "emotion-ekman"


def test_match_rubric_none_for_an_unrelated_config(rubrics: dict[str, Rubric]) -> None:
    assert match_rubric(parse_label_config(IMAGE_CONFIG), rubrics.values()) is None


def test_summary_config_does_not_match_qa_quality(rubrics: dict[str, Rubric], qa: Rubric) -> None:
    parsed = parse_label_config(label_config(rubrics["summary-quality"]))
    problems = config_problems(qa, parsed)
    assert problems
    assert any("relevance" in p and "-2" in p for p in problems)
    assert any("'conciseness'" in p for p in problems)
    assert match_rubric(parsed, [qa]) is None


def test_match_rubric_prefers_the_rubric_with_more_dimensions(qa: Rubric) -> None:
    subset = dataclasses.replace(qa, name="qa-mini", dimensions=qa.dimensions[:2])
    parsed = parse_label_config(label_config(qa))
    assert match_rubric(parsed, [subset, qa]).name == "qa-quality"
    assert match_rubric(parsed, [subset]).name == "qa-mini"


# --------------------------------------------------------------------------------------------------
# parse_label_config safety


@pytest.mark.parametrize(
    "xml",
    ["", "   \n", "<View><Text name='a' value='$a'/>", "not xml at all", "<View></Other>"],
    ids=["empty", "blank", "unclosed", "text", "mismatched"],
)
def test_invalid_config_raises(xml: str) -> None:
    with pytest.raises(LabelConfigError):
        parse_label_config(xml)


@pytest.mark.parametrize("xml", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion-laughs", "external-entity"])
def test_entity_tricks_are_refused_quickly(xml: str) -> None:
    start = time.perf_counter()
    with pytest.raises(LabelConfigError, match="forbidden"):
        parse_label_config(xml)
    assert time.perf_counter() - start < 0.5


def test_oversized_config_is_refused() -> None:
    xml = "<View>" + " " * MAX_CONFIG_CHARS + "</View>"
    with pytest.raises(LabelConfigError, match="longer"):
        parse_label_config(xml)


def test_non_string_config_raises() -> None:
    with pytest.raises(LabelConfigError):
        parse_label_config(None)  # type: ignore[arg-type]


def test_xml_declaration_is_accepted() -> None:
    parsed = parse_label_config('<?xml version="1.0" encoding="UTF-8"?>\n' + DOC_EMOTION_CONFIG)
    assert dict(parsed.objects) == {"text": "text"}
    assert parsed.controls["emotion"].values[:2] == ("anger", "disgust")


def test_parse_label_config_reads_objects_and_controls(qa: Rubric) -> None:
    parsed = parse_label_config(label_config(qa))
    assert dict(parsed.objects) == {"context": "context", "question": "question", "answer": "answer"}
    assert set(parsed.controls) == set(qa.dimension_names) | {RATIONALE}
    control = parsed.controls["accuracy"]
    assert (control.tag, control.to_name, control.values) == ("Choices", "answer", ("-2", "-1", "0", "1", "2"))
    assert parsed.controls[RATIONALE].tag == "TextArea"


def test_choice_alias_replaces_value() -> None:
    xml = DOC_EMOTION_CONFIG.replace('<Choice value="joy"/>', '<Choice value="Joy!" alias="joy"/>')
    parsed = parse_label_config(xml)
    assert "joy" in parsed.controls["emotion"].values and "Joy!" not in parsed.controls["emotion"].values


# --------------------------------------------------------------------------------------------------
# Binding / task_inputs

RESPONSE_CONFIG = """<View>
  <Text name="context" value="$context"/>
  <Text name="question" value="$question"/>
  <Text name="answer" value="$response"/>
  {controls}
</View>"""


def _response_config(qa: Rubric) -> str:
    controls = "\n".join(
        f'<Choices name="{d.name}" toName="answer">'
        + "".join(f'<Choice value="{label}"/>' for label in d.labels)
        + "</Choices>"
        for d in qa.dimensions
    )
    return RESPONSE_CONFIG.format(controls=controls)


def test_binding_follows_the_text_value(qa: Rubric) -> None:
    parsed = parse_label_config(_response_config(qa))
    assert config_problems(qa, parsed) == []
    binding = Binding.for_config(qa, parsed)
    assert dict(binding.data_keys) == {"context": "context", "question": "question", "answer": "response"}
    assert set(binding.to_names.values()) == {"answer"}
    data = {
        "context": "Paris is in France.",
        "question": "Where is Paris?",
        "response": "In France.",
        "answer": "WRONG FIELD",
    }
    inputs, missing = task_inputs(qa, data, binding)
    assert missing == []
    assert inputs == {"context": "Paris is in France.", "question": "Where is Paris?", "answer": "In France."}


def test_binding_missing_bound_field(qa: Rubric) -> None:
    binding = Binding.for_config(qa, parse_label_config(_response_config(qa)))
    inputs, missing = task_inputs(qa, {"context": "c", "question": "q", "answer": "a"}, binding)
    assert inputs is None
    assert missing == ["response"]


def test_binding_without_config_is_the_default(qa: Rubric) -> None:
    assert Binding.for_config(qa, None) == Binding.default(qa)
    assert dict(Binding.default(qa).data_keys) == {n: n for n in qa.input_names}


def test_binding_to_names_follow_the_controls(qa: Rubric) -> None:
    xml = label_config(qa).replace('<Text name="answer" value="$answer"/>', '<Text name="reply" value="$answer"/>')
    xml = xml.replace('toName="answer"', 'toName="reply"')
    parsed = parse_label_config(xml)
    assert config_problems(qa, parsed) == []
    binding = Binding.for_config(qa, parsed)
    assert set(binding.to_names.values()) == {"reply"}
    assert binding.data_keys["answer"] == "answer"
    result = prediction_result(qa, {"clarity": "1"}, binding)
    assert result[0]["to_name"] == "reply"
    errors = LabelInterface(xml).validate_prediction({"result": result}, return_errors=True)
    assert errors == []


@pytest.mark.parametrize("bad", [None, ["a"], {"text": "a"}, True], ids=["none", "list", "dict", "bool"])
def test_task_inputs_non_string_field_is_missing(qa: Rubric, bad: object) -> None:
    data = {"context": "c", "question": bad, "answer": "a"}
    assert task_inputs(qa, data, Binding.default(qa)) == (None, ["question"])


def test_task_inputs_absent_fields_are_all_listed(qa: Rubric) -> None:
    assert task_inputs(qa, {"question": "q"}, Binding.default(qa)) == (None, ["context", "answer"])


@pytest.mark.parametrize("data", [None, "text", ["context"]], ids=["none", "str", "list"])
def test_task_inputs_non_mapping_data(qa: Rubric, data: object) -> None:
    assert task_inputs(qa, data, Binding.default(qa)) == (None, list(qa.input_names))


def test_task_inputs_accepts_numbers_as_strings(qa: Rubric) -> None:
    inputs, missing = task_inputs(qa, {"context": 3.5, "question": 42, "answer": ""}, Binding.default(qa))
    assert missing == []
    assert inputs == {"context": "3.5", "question": "42", "answer": ""}


# --------------------------------------------------------------------------------------------------
# parse_annotation_result


def _item(from_name: str, choices: list[object], to_name: str = "answer", **extra: object) -> dict[str, object]:
    return {
        "id": f"Xy{len(from_name)}_k9",
        "from_name": from_name,
        "to_name": to_name,
        "type": "choices",
        "origin": "manual",
        "value": {"choices": choices},
        **extra,
    }


def test_parse_annotation_result_realistic(qa: Rubric) -> None:
    result = [
        _item("conciseness", ["-1"]),
        _item("accuracy", ["2"]),
        _item("clarity", ["0"]),
        {
            "id": "R4t_01",
            "from_name": RATIONALE,
            "to_name": "answer",
            "type": "textarea",
            "origin": "manual",
            "value": {"text": ["Accurate but a bit long."]},
        },
    ]
    labels = parse_annotation_result(qa, result)
    assert labels == {"conciseness": "-1", "accuracy": "2", "clarity": "0"}
    # unscored dimensions are absent, not None
    assert "relevance" not in labels and RATIONALE not in labels


def test_parse_annotation_result_drops_bad_values(qa: Rubric, caplog: pytest.LogCaptureFixture) -> None:
    result = [
        _item("conciseness", ["3"]),  # off the scale
        _item("accuracy", ["excellent"]),  # not a number
        _item("clarity", ["1", "2"]),  # two choices for a single-choice dimension
        _item("relevance", []),  # nothing chosen
        _item("faithfulness", ["1"]),  # not a dimension of this rubric
        {"from_name": "completeness", "value": "2"},  # malformed value
        "garbage",
        _item("interpretability", ["-2"]),
    ]
    with caplog.at_level("WARNING", logger="backend.core.labeling"):
        labels = parse_annotation_result(qa, result)
    assert labels == {"interpretability": "-2"}
    assert "conciseness" in caplog.text and "'3'" in caplog.text


@pytest.mark.parametrize("result", [None, {}, "x", []], ids=["none", "dict", "str", "empty"])
def test_parse_annotation_result_non_list(qa: Rubric, result: object) -> None:
    assert parse_annotation_result(qa, result) == {}


def test_parse_annotation_result_rating_and_number(rubrics: dict[str, Rubric]) -> None:
    summary = rubrics["summary-quality"]
    result = [
        {"from_name": "coherence", "to_name": "summary", "type": "rating", "value": {"rating": 4}},
        {"from_name": "fluency", "to_name": "summary", "type": "number", "value": {"number": 2.0}},
        {"from_name": "relevance", "to_name": "summary", "type": "rating", "value": {"rating": 0}},
    ]
    assert parse_annotation_result(summary, result) == {"coherence": "4", "fluency": "2"}


def test_parse_annotation_result_classification_is_case_insensitive(rubrics: dict[str, Rubric]) -> None:
    emotion = rubrics["emotion-ekman"]
    assert parse_annotation_result(emotion, [_item("emotion", ["Joy"], to_name="text")]) == {"emotion": "joy"}
    assert parse_annotation_result(emotion, [_item("emotion", ["love"], to_name="text")]) == {}


@pytest.mark.parametrize("name", SHIPPED)
def test_prediction_result_round_trips(rubrics: dict[str, Rubric], name: str) -> None:
    rubric = rubrics[name]
    labels = {d.name: d.labels[1] for d in rubric.dimensions}
    assert parse_annotation_result(rubric, prediction_result(rubric, labels, Binding.default(rubric))) == labels
