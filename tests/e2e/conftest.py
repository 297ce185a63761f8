from __future__ import annotations

from pathlib import Path

import pytest

from support.e2e.scenario import install_label_studio


@pytest.fixture(scope="session")
def ls_venv() -> Path:
    """Label Studio 1.23.2 in its own cached venv (``scripts/install-label-studio.sh``)."""
    try:
        return install_label_studio()
    except RuntimeError as exc:
        pytest.fail(str(exc))
