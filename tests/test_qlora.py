"""The QLoRA path on CPU: a 4-bit NF4 base (bitsandbytes), LoRA trained on top, adapter served by a 4-bit judge."""

from __future__ import annotations

import json

import pytest

from backend.core.rubric import load_rubric
from backend.model.judge import Judge
from backend.settings import Settings
from tests.fixtures.synthetic import jsonl_rows, synthetic_items
from worker.pipeline import run_training
from worker.source import read_file


@pytest.mark.slow
def test_qlora_trains_and_serves(tiny_model_dir, tmp_path):
    settings = Settings.from_env(
        {}, base_model=str(tiny_model_dir), model_dir=tmp_path / "m", quantization="4bit", max_input_tokens=4096
    )
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in jsonl_rows(synthetic_items(16))))
    rubric = load_rubric("emotion-ekman")
    result = run_training(
        settings, rubric, read_file(data, rubric), tmp_path / "run", overrides={"epochs": 1, "batch_size": 8}
    )
    assert (tmp_path / "run" / "adapter_config.json").is_file()
    assert result.metrics["quantization"] == "4bit"
    assert result.metrics["training"]["steps"] >= 1

    judge = Judge.from_settings(settings)
    assert judge.base_name.endswith("-4bit")
    assert "Linear4bit" in type(judge.model.model.layers[0].self_attn.q_proj).__name__
    judge.load_adapter("p1_v1", tmp_path / "run")
    scores = judge.score(rubric, [{"text": "wonderful wonderful: I am wonderful"}, {"text": "furious"}], "p1_v1")
    assert all(s.labels["emotion"] in rubric.dimensions[0].labels for s in scores)
