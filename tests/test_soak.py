"""Soak (marker ``soak``): /predict over loopback HTTP, RSS before/after; the full 10,000 is benchmarks/soak.py."""

from __future__ import annotations

import pytest

from support.soak import GROWTH_BOUND_MIB, run_soak


@pytest.mark.soak
def test_predict_soak_memory_is_bounded(tiny_model_dir):
    result = run_soak(500, tiny_model_dir, threads=4, warmup=50)
    print(f"soak: {result}")
    assert result["statuses"] == {"200": 500}
    assert result["rss_growth_mib"] <= GROWTH_BOUND_MIB, result
