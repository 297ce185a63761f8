"""What the judge answers on fixed tasks, written so that two runs compare byte for byte (the proof that a
restructuring changed no behaviour).

    python scripts/judge_fingerprint.py OUT.json [--smollm2 MODEL_DIR_WITH_BASE]

Records, with the tiny random Qwen3 model of ``support/tiny_model.py`` (built fresh, seed 0) and optionally the
embedded SmolLM2 model (``MODEL_DIR`` holding its converted ``base/``): every label, probability, expected value
and log-probability (``repr`` of the floats), the sha256 of every feature vector's bytes, a feature head fitted on
those features and its answers, and the JSON of ``/setup``, ``/predict`` (without its timing) and ``/versions``
through the Flask app (no Redis).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from backend.core.labeling import label_config  # noqa: E402
from backend.core.rubric import load_all  # noqa: E402
from backend.model.head import fit_head  # noqa: E402
from backend.model.judge import Judge, apply_head  # noqa: E402
from backend.service import Service  # noqa: E402
from backend.settings import Settings  # noqa: E402
from backend.state.registry import Registry  # noqa: E402
from backend.web.app import create_app  # noqa: E402
from support.ls_bodies import QA_DATA, ls_task, predict_body, setup_body  # noqa: E402
from support.tiny_model import build_tiny_model  # noqa: E402

EMOTION = [
    {"text": "I cannot believe they cancelled the trip again, this is so unfair!"},
    {"text": "What a lovely surprise, thank you all so much."},
    {"text": "The report is due on Friday."},
]


def scores_json(scores: list[Any]) -> list[Any]:
    return [
        {
            name: [d.label, [[k, repr(v)] for k, v in d.probs.items()], repr(d.expected), repr(d.logprob)]
            for name, d in s.dimensions.items()
        }
        for s in scores
    ]


def features_json(features: list[Any]) -> list[Any]:
    def digest(a: Any) -> str:
        arr = np.ascontiguousarray(np.asarray(a))
        return f"{arr.dtype}{arr.shape}:{hashlib.sha256(arr.tobytes()).hexdigest()}"

    return [{"shared": digest(f.shared), **{k: digest(v) for k, v in f.dimensions.items()}} for f in features]


def judge_block(judge: Judge, rubrics: dict[str, Any], tasks: dict[str, list[dict[str, str]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, items in tasks.items():
        rubric = rubrics[name]
        plain = judge.score(rubric, items)
        scored, features = judge.score_with_features(rubric, items)
        x = {d.name: np.stack([f.vector(d.name) for f in features] * 4) for d in rubric.dimensions}
        targets: dict[str, list[Any]] = {}
        for i, d in enumerate(rubric.dimensions):
            if d.values is not None:
                targets[d.name] = [float(d.values[(j + i) % len(d.values)]) for j in range(len(items) * 4)]
            else:
                targets[d.name] = [d.labels[(j + i) % len(d.labels)] for j in range(len(items) * 4)]
        head = fit_head(rubric.dimensions, x, targets, [f"g{j}" for j in range(len(items) * 4)], quiet=True)
        out[name] = {
            "score": scores_json(plain),
            "score_with_features": scores_json(scored),
            "features": features_json(features),
            "head": scores_json(apply_head(rubric, head, features)),
        }
    return out


def app_block(judge: Judge, settings: Settings) -> dict[str, Any]:
    registry = Registry(settings.model_dir, judge.base_name, None)
    service = Service(settings, judge, registry, load_all(settings.rubric_dir))
    client = create_app(settings, service).test_client()
    xml = label_config(load_all(settings.rubric_dir)["qa-quality"])
    setup = client.post("/setup", json=setup_body(xml)).get_json()
    tasks = [ls_task(i + 1, d) for i, d in enumerate(QA_DATA)] + [ls_task(9, {"other": "x"})]
    predicted = client.post("/predict", json=predict_body(tasks, xml)).get_json()
    predicted.pop("timing", None)
    versions = client.get("/versions?project=12").get_json()
    return {"setup": setup, "predict": predicted, "versions": versions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--smollm2", type=Path, help="a MODEL_DIR whose base/ holds the converted SmolLM2")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rubrics = load_all(REPO / "rubric_configs")
    qa = [dict(d) for d in QA_DATA]
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_model(Path(tmp) / "tiny-qwen3")
        settings = Settings.from_env(
            {},
            base_model=str(tiny),
            model_dir=Path(tmp) / "models",
            rubric_dir=REPO / "rubric_configs",
            predict_batch_size=4,
            max_input_tokens=4096,
            feature_store_mb=0,
            prediction_cache=False,
        )
        judge = Judge.from_settings(settings)
        result["tiny"] = judge_block(judge, rubrics, {"qa-quality": qa, "emotion-ekman": EMOTION})
        result["tiny_app"] = app_block(judge, settings)
        if args.smollm2:
            small = Settings.from_env({}, model_dir=args.smollm2, feature_store_mb=0, prediction_cache=False)
            judge = Judge.from_settings(small)
            result["smollm2"] = judge_block(judge, rubrics, {"qa-quality": qa[:2], "emotion-ekman": EMOTION[:2]})
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
