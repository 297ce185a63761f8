from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.e2e.scenario import LabelStudio, install_label_studio, label_studio_server
from tests.conftest import REPO


@pytest.fixture(scope="session")
def ls_venv() -> Path:
    """Label Studio 1.23.2 in its own cached venv (``scripts/install-label-studio.sh``)."""
    try:
        return install_label_studio()
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def label_studio(ls_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    """One Label Studio for every e2e test of the session (each test makes projects of its own): its start
    (a fresh database, about a minute on 2 cores) is paid once. It keeps Label Studio's default ML_TIMEOUT_PREDICT
    (100 s), which the backends' default deadline (60 s) is derived from. Its log goes to
    artifacts/e2e-label-studio/."""
    workdir = tmp_path_factory.mktemp("label-studio")
    with label_studio_server(ls_venv, workdir, REPO / "artifacts" / "e2e-label-studio") as ls:
        yield ls
