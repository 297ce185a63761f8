"""Tests for backend.core.rubric: the shipped rubrics, validation messages, scales and normalisation."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from backend.core.rubric import Dimension, RubricError, available_rubrics, load_all, load_rubric, parse_rubric

RUBRIC_DIR = Path(__file__).resolve().parent.parent / "rubric_configs"
SHIPPED = ("emotion-ekman", "qa-quality", "summary-quality")
PAPER_ORDER = ("conciseness", "interpretability", "completeness", "clarity", "accuracy", "relevance")


# --------------------------------------------------------------------------------------------------
# shipped rubrics


def test_available_rubrics_lists_exactly_the_shipped_files() -> None:
    assert available_rubrics(RUBRIC_DIR) == list(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_rubric_loads_by_name_and_by_path(name: str) -> None:
    by_name = load_rubric(name, RUBRIC_DIR)
    by_path = load_rubric(RUBRIC_DIR / f"{name}.yaml")
    assert by_name.name == name
    assert by_name == by_path
    assert by_name.path == RUBRIC_DIR / f"{name}.yaml"
    assert by_name.instruction
    assert by_name.paraphrases, "augmentation needs paraphrases"
    assert all(p != by_name.instruction for p in by_name.paraphrases)


def test_default_rubric_dir_is_the_shipped_folder() -> None:
    assert load_rubric("qa-quality").path == RUBRIC_DIR / "qa-quality.yaml"


def test_load_all_returns_every_shipped_rubric_by_name() -> None:
    rubrics = load_all(RUBRIC_DIR)
    assert set(rubrics) == set(SHIPPED)
    assert all(r.name == name for name, r in rubrics.items())


def test_qa_quality_matches_the_paper() -> None:
    r = load_rubric("qa-quality", RUBRIC_DIR)
    assert r.kind == "scores"
    assert r.dimension_names == PAPER_ORDER
    assert r.input_names == ("context", "question", "answer")
    assert r.target.name == "answer"
    assert [g.name for g in r.groups] == ["form", "content"]
    assert all(g.title for g in r.groups)
    groups = {d.name: d.group for d in r.dimensions}
    assert groups == {
        "conciseness": "form",
        "interpretability": "form",
        "clarity": "form",
        "completeness": "content",
        "accuracy": "content",
        "relevance": "content",
    }
    for dim in r.dimensions:
        assert dim.labels == ("-2", "-1", "0", "1", "2")
        assert dim.values == (-2, -1, 0, 1, 2)
        assert dim.is_scale and dim.level == "interval"
        assert set(dim.anchors) == set(dim.labels), f"{dim.name} lacks an anchor"
        assert all(text.strip() for text in dim.anchors.values())
        assert dim.question.endswith("?") or "?" in dim.question
    # anchors are keyed by the label string, not the YAML integer
    assert r.dimension("accuracy").anchors["-2"] == "factually wrong or fabricated"
    assert r.dimension("accuracy").value_of("-2") == -2
    assert r.system_prompt.startswith("You are a careful annotator")
    assert r.training["epochs"] == 5 and r.training["learning_rate"] == pytest.approx(5e-5)


def test_summary_quality() -> None:
    r = load_rubric("summary-quality", RUBRIC_DIR)
    assert r.kind == "scores"
    assert r.input_names == ("dialogue", "summary")
    assert r.target.name == "summary"
    assert r.dimension_names == ("coherence", "consistency", "fluency", "relevance")
    for dim in r.dimensions:
        assert dim.labels == ("1", "2", "3", "4", "5")
        assert dim.values == (1, 2, 3, 4, 5)
        assert set(dim.anchors) == set(dim.labels)


def test_emotion_ekman_is_a_seven_way_classification() -> None:
    r = load_rubric("emotion-ekman", RUBRIC_DIR)
    assert r.kind == "classification"
    assert r.input_names == ("text",)
    assert r.target.name == "text"
    assert len(r.dimensions) == 1
    dim = r.dimensions[0]
    assert dim.name == "emotion"
    assert dim.labels == ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
    assert dim.values is None and not dim.is_scale and dim.level == "nominal"
    assert set(dim.anchors) == set(dim.labels)
    assert dim.value_of("joy") == "joy"


def test_dimension_lookup_by_name() -> None:
    r = load_rubric("qa-quality", RUBRIC_DIR)
    assert r.dimension("clarity").title == "Clarity"
    with pytest.raises(KeyError, match="fluency"):
        r.dimension("fluency")


# --------------------------------------------------------------------------------------------------
# validation errors


def _scores() -> dict[str, Any]:
    return {
        "name": "custom",
        "description": "a test rubric",
        "kind": "scores",
        "inputs": [{"name": "context", "label": "Context"}, {"name": "answer", "label": "Answer", "target": True}],
        "scale": [-2, -1, 0, 1, 2],
        "groups": [{"name": "form", "title": "Form"}, {"name": "content", "title": "Content"}],
        "dimensions": [
            {"name": "clarity", "group": "form", "question": "Is it clear?", "anchors": {-2: "murky", 2: "crisp"}},
            {"name": "accuracy", "group": "content", "question": "Is it right?", "anchors": {0: "so-so"}},
        ],
        "prompt": {"instruction": "Rate the answer.", "system": "You rate answers."},
        "training": {"epochs": 2, "learning_rate": 1e-4},
    }


def _classification() -> dict[str, Any]:
    return {
        "name": "custom-cls",
        "kind": "classification",
        "inputs": [{"name": "text", "target": True}],
        "dimensions": [
            {
                "name": "emotion",
                "question": "Which emotion?",
                "labels": ["joy", {"value": "anger", "hint": "cross"}, "fear"],
            }
        ],
        "prompt": {"instruction": "Classify the text."},
    }


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "custom.yaml"
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def _edit(base, change):
    data = copy.deepcopy(base())
    change(data)
    return data


def _set(path: str, value: Any):
    """A change that sets ``data[a][b]...`` (ints index lists) to ``value``."""
    keys = [int(k) if k.isdigit() else k for k in path.split("/")]

    def change(data: dict[str, Any]) -> None:
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


def _delete(path: str):
    keys = [int(k) if k.isdigit() else k for k in path.split("/")]

    def change(data: dict[str, Any]) -> None:
        target = data
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return change


# (id, file content, offending key path, words describing the problem)
INVALID = [
    ("invalid-yaml", "name: [unclosed\nkind: scores\n", None, ["not valid YAML"]),
    ("not-a-mapping", "- name: custom\n- kind: scores\n", "(top level)", ["expected a mapping", "list"]),
    ("unknown-top-level-key", _edit(_scores, _set("colour", "red")), "(top level)", ["unknown key", "colour"]),
    ("missing-instruction", _edit(_scores, _delete("prompt/instruction")), "prompt.instruction", ["non-empty string"]),
    (
        "blank-instruction",
        _edit(_scores, _set("prompt/instruction", "   ")),
        "prompt.instruction",
        ["non-empty string"],
    ),
    ("missing-prompt", _edit(_scores, _delete("prompt")), "prompt", ["expected a mapping"]),
    ("bad-kind", _edit(_scores, _set("kind", "ranking")), "kind", ["'ranking'", "scores, classification"]),
    ("empty-dimensions", _edit(_scores, _set("dimensions", [])), "dimensions", ["non-empty list"]),
    ("missing-dimensions", _edit(_scores, _delete("dimensions")), "dimensions", ["non-empty list"]),
    (
        "duplicate-dimension",
        _edit(_scores, _set("dimensions/1/name", "clarity")),
        "dimensions[1].name",
        ["'clarity'", "already used", "another dimension"],
    ),
    (
        "dimension-named-like-input",
        _edit(_scores, _set("dimensions/1/name", "answer")),
        "dimensions[1].name",
        ["'answer'", "already used", "an input"],
    ),
    ("reserved-rationale", _edit(_scores, _set("dimensions/1/name", "rationale")), "dimensions", ["reserved"]),
    (
        "bad-dimension-name",
        _edit(_scores, _set("dimensions/0/name", "Clarity Score")),
        "dimensions[0].name",
        ["lowercase"],
    ),
    (
        "missing-question",
        _edit(_scores, _delete("dimensions/1/question")),
        "dimensions[1].question",
        ["non-empty string"],
    ),
    (
        "unknown-dimension-key",
        _edit(_scores, _set("dimensions/0/weight", 2)),
        "dimensions[0]",
        ["unknown key", "weight"],
    ),
    (
        "anchor-off-scale",
        _edit(_scores, _set("dimensions/1/anchors", {7: "superb"})),
        "dimensions[1].anchors.7",
        ["not on the scale"],
    ),
    (
        "anchor-not-integer",
        _edit(_scores, _set("dimensions/1/anchors", {"high": "superb"})),
        "dimensions[1].anchors",
        ["'high'", "not an integer"],
    ),
    (
        "anchor-not-text",
        _edit(_scores, _set("dimensions/1/anchors", {1: ["a", "b"]})),
        "dimensions[1].anchors.1",
        ["non-empty string"],
    ),
    ("scale-non-integer", _edit(_scores, _set("scale", [1, 2.5, 3])), "scale", ["2.5", "not an integer"]),
    ("scale-string-level", _edit(_scores, _set("scale", [1, "two", 3])), "scale", ["'two'", "not an integer"]),
    ("scale-unsorted", _edit(_scores, _set("scale", [3, 1, 2])), "scale", ["increasing order"]),
    ("scale-duplicate-level", _edit(_scores, _set("scale", [1, 2, 2, 3])), "scale", ["distinct"]),
    ("scale-single-level", _edit(_scores, _set("scale", [1])), "scale", ["at least two levels"]),
    ("scale-min-not-below-max", _edit(_scores, _set("scale", {"min": 5, "max": 5})), "scale", ["min < max"]),
    ("scale-min-max-not-integers", _edit(_scores, _set("scale", {"min": 0.5, "max": 5})), "scale", ["integers"]),
    (
        "scale-unknown-key",
        _edit(_scores, _set("scale", {"min": 1, "max": 5, "step": 1})),
        "scale",
        ["unknown key", "step"],
    ),
    ("scale-not-a-list", _edit(_scores, _set("scale", "1-5")), "scale", ["list of integers"]),
    (
        "dimension-scale-non-integer",
        _edit(_scores, _set("dimensions/0/scale", [0, 0.5, 1])),
        "dimensions[0].scale",
        ["0.5", "not an integer"],
    ),
    ("no-scale-at-all", _edit(_scores, _delete("scale")), "dimensions[0].scale", ["no scale"]),
    (
        "scores-with-labels",
        _edit(_scores, _set("dimensions/0/labels", ["good", "bad"])),
        "dimensions[0].labels",
        ["scale, not labels"],
    ),
    (
        "classification-with-scale",
        _edit(_classification, _set("scale", [1, 2, 3])),
        "scale",
        ["classification", "not a scale"],
    ),
    (
        "classification-dimension-with-scale",
        _edit(_classification, _set("dimensions/0/scale", [1, 2])),
        "dimensions[0].scale",
        ["classification", "not a scale"],
    ),
    (
        "classification-one-label",
        _edit(_classification, _set("dimensions/0/labels", ["joy"])),
        "dimensions[0].labels",
        ["at least two labels"],
    ),
    (
        "classification-no-labels",
        _edit(_classification, _delete("dimensions/0/labels")),
        "dimensions[0].labels",
        ["at least two labels"],
    ),
    (
        "classification-duplicate-label",
        _edit(_classification, _set("dimensions/0/labels", ["joy", "fear", "joy"])),
        "dimensions[0].labels[2]",
        ["'joy'", "appears twice"],
    ),
    (
        "classification-label-two-lines",
        _edit(_classification, _set("dimensions/0/labels", ["joy", "fe\nar"])),
        "dimensions[0].labels[1]",
        ["one line without surrounding spaces"],
    ),
    (
        "classification-anchors",
        _edit(_classification, _set("dimensions/0/anchors", {"joy": "happy"})),
        "dimensions[0].anchors",
        ["hint"],
    ),
    (
        "group-not-declared",
        _edit(_scores, _set("dimensions/1/group", "style")),
        "dimensions[1].group",
        ["'style'", "not one of the groups", "content, form"],
    ),
    ("duplicate-group", _edit(_scores, _set("groups/1/name", "form")), "groups[1].name", ["appears twice"]),
    ("training-unknown-key", _edit(_scores, _set("training/lora_rank", 8)), "training", ["unknown key", "lora_rank"]),
    (
        "training-non-number",
        _edit(_scores, _set("training/epochs", "three")),
        "training.epochs",
        ["expected a number", "'three'"],
    ),
    ("training-bool", _edit(_scores, _set("training/epochs", True)), "training.epochs", ["expected a number"]),
    ("training-not-mapping", _edit(_scores, _set("training", [1, 2])), "training", ["expected a mapping"]),
    ("two-targets", _edit(_scores, _set("inputs/0/target", True)), "inputs", ["only one input", "target"]),
    ("no-inputs", _edit(_scores, _set("inputs", [])), "inputs", ["non-empty list"]),
    ("duplicate-input", _edit(_scores, _set("inputs/0/name", "answer")), "inputs[1].name", ["appears twice"]),
    ("target-not-bool", _edit(_scores, _set("inputs/1/target", "yes")), "inputs[1].target", ["true or false"]),
    ("bad-rubric-name", _edit(_scores, _set("name", "My Rubric")), "name", ["lowercase"]),
    (
        "paraphrases-not-list",
        _edit(_scores, _set("prompt/paraphrases", "say it")),
        "prompt.paraphrases",
        ["list of strings"],
    ),
    (
        "empty-paraphrase",
        _edit(_scores, _set("prompt/paraphrases", ["fine", ""])),
        "prompt.paraphrases[1]",
        ["non-empty string"],
    ),
]


@pytest.mark.parametrize(("content", "key", "words"), [case[1:] for case in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_rubric_message_names_file_key_and_problem(
    tmp_path: Path, content: Any, key: str | None, words: list[str]
) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(RubricError) as info:
        load_rubric(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    if key is not None:
        assert f"{path}: {key}: " in message, message
    for word in words:
        assert word in message, message


def test_base_fixtures_are_valid(tmp_path: Path) -> None:
    """The invalid cases above differ from these valid rubrics only by the one edit."""
    scores = load_rubric(_write(tmp_path, _scores()))
    assert scores.dimension_names == ("clarity", "accuracy")
    (tmp_path / "custom.yaml").unlink()
    cls = load_rubric(_write(tmp_path, _classification()))
    assert cls.dimensions[0].labels == ("joy", "anger", "fear")
    assert dict(cls.dimensions[0].anchors) == {"anger": "cross"}


def test_missing_file_lists_the_known_rubrics(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(RubricError) as info:
        load_rubric(path, RUBRIC_DIR)
    message = str(info.value)
    assert str(path) in message
    assert "not found" in message
    assert "emotion-ekman, qa-quality, summary-quality" in message


def test_unknown_rubric_name_lists_the_known_rubrics() -> None:
    with pytest.raises(RubricError) as info:
        load_rubric("qa-qualty", RUBRIC_DIR)
    message = str(info.value)
    assert str(RUBRIC_DIR / "qa-qualty.yaml") in message
    assert "not found" in message
    for name in SHIPPED:
        assert name in message


def test_missing_file_in_empty_folder_says_none(tmp_path: Path) -> None:
    with pytest.raises(RubricError, match="none"):
        load_rubric("qa-quality", tmp_path)


def test_name_that_is_not_a_rubric_name_is_rejected() -> None:
    with pytest.raises(RubricError, match="not a rubric name"):
        load_rubric("../etc/passwd", RUBRIC_DIR)


def test_parse_rubric_uses_the_given_source_in_messages() -> None:
    with pytest.raises(RubricError, match=r"^inline: kind: "):
        parse_rubric(_edit(_scores, _set("kind", "x")), source="inline")


@pytest.mark.parametrize("level", [1.5, True], ids=["float", "bool"])
def test_non_integer_anchor_level_is_rejected(tmp_path: Path, level: object) -> None:
    data = _edit(_scores, _set("dimensions/1/anchors", {level: "half way"}))
    with pytest.raises(RubricError, match=r"dimensions\[1\]\.anchors"):
        load_rubric(_write(tmp_path, data))


def test_yaml_boolean_labels_are_not_silently_renamed(tmp_path: Path) -> None:
    text = (
        yaml.safe_dump(_classification(), sort_keys=False).replace("- joy\n", "- yes\n").replace("- fear\n", "- no\n")
    )
    path = _write(tmp_path, text)
    try:
        labels = load_rubric(path).dimensions[0].labels
    except RubricError:
        return
    assert "True" not in labels and "False" not in labels, labels


# --------------------------------------------------------------------------------------------------
# scales, overrides and normalisation


def _custom(tmp_path: Path) -> Any:
    data = _scores()
    data["dimensions"].append(
        {
            "name": "detail",
            "question": "How detailed?",
            "scale": {"min": 0, "max": 10},
            "anchors": {0: "none", 10: "exhaustive"},
        }
    )
    return load_rubric(_write(tmp_path, data))


def test_per_dimension_scale_override(tmp_path: Path) -> None:
    r = _custom(tmp_path)
    detail = r.dimension("detail")
    assert detail.values == tuple(range(11))
    assert detail.labels == tuple(str(v) for v in range(11))
    assert dict(detail.anchors) == {"0": "none", "10": "exhaustive"}
    assert detail.group is None
    # the others keep the top-level scale
    assert r.dimension("clarity").labels == ("-2", "-1", "0", "1", "2")
    assert dict(r.dimension("clarity").anchors) == {"-2": "murky", "2": "crisp"}
    assert detail.normalise(10) == "10"
    assert detail.normalise("7") == "7"
    assert detail.normalise(-1) is None
    assert detail.normalise(11) is None
    assert r.dimension("clarity").normalise(3) is None


def test_min_max_scale_form(tmp_path: Path) -> None:
    data = _edit(_scores, _set("scale", {"min": 1, "max": 4}))
    data["dimensions"][0]["anchors"] = {1: "bad", 4: "good"}
    data["dimensions"][1]["anchors"] = {}
    r = load_rubric(_write(tmp_path, data))
    for dim in r.dimensions:
        assert dim.values == (1, 2, 3, 4)
        assert dim.labels == ("1", "2", "3", "4")
    assert dict(r.dimensions[1].anchors) == {}


def test_string_inputs_and_defaults(tmp_path: Path) -> None:
    data = _scores()
    data["inputs"] = ["source_text", "answer"]
    del data["kind"]
    del data["groups"]
    for dim in data["dimensions"]:
        del dim["group"]
    r = load_rubric(_write(tmp_path, data))
    assert r.kind == "scores"
    assert r.input_names == ("source_text", "answer")
    assert r.inputs[0].label == "Source Text"
    # no input is marked: the last one is the target
    assert r.target.name == "answer"
    assert r.groups == ()


def test_undeclared_group_without_any_groups_is_kept(tmp_path: Path) -> None:
    """Documents current behaviour: with no ``groups`` list, a dimension's group name is not checked."""
    data = _scores()
    del data["groups"]
    r = load_rubric(_write(tmp_path, data))
    assert r.dimension("clarity").group == "form"


@pytest.mark.parametrize("raw", ["2", 2, 2.0, " 2 ", "2.0", "+2"])
def test_scale_normalise_accepts_integer_forms(raw: object) -> None:
    dim = load_rubric("qa-quality", RUBRIC_DIR).dimension("accuracy")
    assert dim.normalise(raw) == "2"


@pytest.mark.parametrize("raw", ["-2", -2, -2.0])
def test_scale_normalise_negative(raw: object) -> None:
    dim = load_rubric("qa-quality", RUBRIC_DIR).dimension("accuracy")
    assert dim.normalise(raw) == "-2"


@pytest.mark.parametrize("raw", [2.5, "2.5", "x", "", True, False, None, 3, -3, "3", "nan", "inf", [2], {"v": 2}])
def test_scale_normalise_rejects(raw: object) -> None:
    dim = load_rubric("qa-quality", RUBRIC_DIR).dimension("accuracy")
    assert dim.normalise(raw) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("joy", "joy"),
        ("Joy", "joy"),
        ("JOY", "joy"),
        (" Sadness ", "sadness"),
        ("neutral", "neutral"),
        ("love", None),
        ("", None),
        (None, None),
        (True, None),
        (1, None),
    ],
)
def test_classification_normalise_is_case_insensitive(raw: object, expected: str | None) -> None:
    dim = load_rubric("emotion-ekman", RUBRIC_DIR).dimensions[0]
    assert dim.normalise(raw) == expected


def test_classification_normalise_prefers_exact_case() -> None:
    dim = Dimension(name="tag", title="Tag", question="Which?", labels=("ok", "OK"))
    assert dim.normalise("OK") == "OK"
    assert dim.normalise("ok") == "ok"


def test_numeric_classification_labels_become_strings(tmp_path: Path) -> None:
    data = _edit(_classification, _set("dimensions/0/labels", [1, 2, "three"]))
    dim = load_rubric(_write(tmp_path, data)).dimensions[0]
    assert dim.labels == ("1", "2", "three")
    assert dim.normalise(2) == "2"
    assert not dim.is_scale


def test_training_keys_have_one_source():
    """backend.training_keys lists every user-settable training key: each is a TrainConfig field, each
    environment key a TRAIN_* setting, each flag a `rubric-judge train` option, and the rubric validator
    accepts exactly the rubric keys."""
    from dataclasses import fields

    from backend.settings import Settings
    from backend.training_keys import ENV_KEYS, FLAG_KEYS, KEYS, RUBRIC_KEYS
    from rubric_judge.cli import build_parser
    from worker.train import TrainConfig

    config_fields = {f.name for f in fields(TrainConfig)}
    assert {k.name for k in KEYS} <= config_fields
    settings_fields = {f.name for f in fields(Settings)}
    assert {f"train_{name}" for name in ENV_KEYS} <= settings_fields
    assert {f for f in settings_fields if f.startswith("train_")} - {f"train_{n}" for n in ENV_KEYS} == {
        "train_min_new_annotations",
        "train_retries",
        "train_retry_backoff",
    }
    train = build_parser().parse_args(["train", "--rubric", "qa-quality", "--data", "x", "--out", "y"])
    assert set(FLAG_KEYS) <= set(vars(train))
    assert Settings(train_epochs=2, train_method="lora").training_overrides() == {"epochs": 2, "method": "lora"}
    for key in RUBRIC_KEYS:
        assert parse_rubric(_edit(_scores, _set("training", {key: 1})), source="inline").training == {key: 1}
    with pytest.raises(RubricError, match="unknown key"):
        parse_rubric(_edit(_scores, _set("training", {"targets": 1})), source="inline")
