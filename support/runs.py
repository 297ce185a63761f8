"""The quality benchmark's run records (``benchmarks/RESULTS.json``): reading them, and reusing a run's v0 row."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from backend.core.rubric import Rubric

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
RESULTS_JSON = REPO / "benchmarks" / "RESULTS.json"


def load_runs() -> dict[str, Any]:
    if RESULTS_JSON.is_file():
        return json.loads(RESULTS_JSON.read_text(encoding="utf-8"))
    return {}


def reused_v0(args: argparse.Namespace, rubric: Rubric, n_test: int) -> dict[str, Any]:
    """The v0 test row of run ``args.reuse_v0``, after checking it scored the same thing."""
    key = f"{args.dataset}/{args.reuse_v0}"
    run = load_runs().get(key)
    if run is None:
        raise SystemExit(f"--reuse-v0: no run {key} in {RESULTS_JSON}")
    sizes = run.get("sizes", {})
    same = (
        run.get("base_model") == args.base_model
        and run.get("rubric") == rubric.name
        and sizes.get("test", sizes.get("dev")) == n_test
        and not args.rubric_dir
    )
    if not same or "v0" not in run.get("systems", {}):
        raise SystemExit(f"--reuse-v0: run {key} scored another base model, rubric or split; score v0 again")
    log.info("v0 test row copied from run %s (v0 is deterministic)", key)
    return {**run["systems"]["v0"]["test"], "reused_from": args.reuse_v0}
