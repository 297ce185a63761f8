from __future__ import annotations

import os
import uuid
from collections import Counter
from pathlib import Path

import pytest

from backend.settings import Settings
from support.processes import can_list, kill_all, wait_until_gone
from support.tiny_model import build_tiny_model

REPO = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/15"
#: Each test runs with this variable set to a value of its own, which every process it starts inherits (RQ's
#: work-horses too): its teardown fails if one is still running.
TEST_MARK = "RUBRIC_JUDGE_TEST_MARK"
#: How long a test's processes may take to end after its teardown (a stopped ``rubric-judge worker`` ends its
#: work-horse within worker.horse.HORSE_STOP_GRACE_S, 10 s).
LEFT_BEHIND_WAIT_S = 15.0


@pytest.fixture(autouse=True)
def leaves_no_process_behind():
    """After the test and its fixtures' teardown: no process it started is still running (Linux ``/proc``).
    Leftovers are SIGKILLed, so that they do not slow the next test, and named in the failure."""
    if not can_list():
        yield
        return
    mark, previous = uuid.uuid4().hex, os.environ.get(TEST_MARK)
    os.environ[TEST_MARK] = mark
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(TEST_MARK, None)
        else:
            os.environ[TEST_MARK] = previous
    left = wait_until_gone(TEST_MARK, mark, LEFT_BEHIND_WAIT_S)
    if left:
        kill_all(left)
        listed = "\n".join(f"  {pid}: {cmdline[:200]}" for pid, cmdline in left.items())
        pytest.fail(f"the test left {len(left)} process(es) running {LEFT_BEHIND_WAIT_S:g} s after it ended:\n{listed}")


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
        # the serving tests compare pre-filled choices (cache against no cache, batched against alone): an
        # untrained v0 pre-fills them here; the default (nothing unproven is pre-filled) has tests of its own
        # (tests/test_head.py: test_unevaluated_v0_prefills_nothing_unless_told_to)
        prefill_unevaluated=True,
    )


@pytest.fixture(scope="session")
def tiny_judge(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from backend.model.judge import Judge

    s = Settings.from_env(
        {},
        base_model=str(tiny_model_dir),
        model_dir=tmp_path_factory.mktemp("models"),
        predict_batch_size=4,
        max_input_tokens=4096,
    )
    judge = Judge.from_settings(s)
    # scored afresh by default, so that a test comparing two paths compares two computations; the store's
    # tests give it a store of their own (tests/test_feature_store.py: judge_with_store)
    judge.feature_store = None
    return judge


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
    from backend.core.rubric import load_all

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


def work_burst(queue) -> None:
    """Run ``queue``'s jobs in this process until it is empty (RQ's ``SimpleWorker``), leaving RQ's pubsub
    channel as ``rubric-judge worker`` does (``JudgeWorker.unsubscribe``): RQ's own wait there took 60 s in about
    1 run in 50 (redis-py 8.2's unbounded join)."""
    from rq import SimpleWorker

    from worker.horse import JudgeWorker

    class _Burst(SimpleWorker):
        unsubscribe = JudgeWorker.unsubscribe

    _Burst([queue], connection=queue.connection).work(burst=True)
