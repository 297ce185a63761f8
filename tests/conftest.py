from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest

from backend.settings import Settings
from tests.tiny_model import build_tiny_model

REPO = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen3")


@pytest.fixture
def settings(tiny_model_dir: Path, tmp_path: Path) -> Settings:
    return Settings.from_env(
        {},
        base_model=str(tiny_model_dir),
        model_dir=tmp_path / "models",
        rubric_dir=REPO / "rubric_configs",
        redis_url=REDIS_URL,
        predict_batch_size=4,
        max_input_tokens=4096,
    )


@pytest.fixture(scope="session")
def tiny_judge(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from backend.judge import Judge

    s = Settings.from_env(
        {},
        base_model=str(tiny_model_dir),
        model_dir=tmp_path_factory.mktemp("models"),
        predict_batch_size=4,
        max_input_tokens=4096,
    )
    return Judge.from_settings(s)


@pytest.fixture
def redis_client():
    """A real Redis (db 15); skipped keys are namespaced per test by a unique base name."""
    from redis import Redis

    client = Redis.from_url(REDIS_URL)
    client.ping()
    yield client
    client.close()


@pytest.fixture
def unique_name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def rubrics():
    from backend.rubric import load_all

    return load_all(REPO / "rubric_configs")


@pytest.fixture(scope="module")
def qa(rubrics):
    return rubrics["qa-quality"]


#: Hypothesis examples run per route by tests/test_fuzz.py, printed in the terminal summary.
FUZZ_CASES: Counter[str] = Counter()
#: The HTTP statuses those cases got (to show the fuzzing reached the success paths too).
FUZZ_STATUS: Counter[int] = Counter()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FUZZ_CASES:
        cases = ", ".join(f"{route} {n}" for route, n in sorted(FUZZ_CASES.items()))
        terminalreporter.write_line(f"fuzz cases run: {sum(FUZZ_CASES.values())} ({cases})")
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(FUZZ_STATUS.items()))
        terminalreporter.write_line(f"fuzz responses by status: {statuses}")
