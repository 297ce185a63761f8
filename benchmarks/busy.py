"""Retrieve Predictions on a busy machine: a real Label Studio 1.23.2, ``rubric-judge serve`` with its defaults
(PREDICT_DEADLINE_S: 60 s, 0.6 x Label Studio's 100 s) and one ``rubric-judge worker``, as the end-to-end tests
start them (``support/e2e/scenario.py``); a project of N distinct qa-quality tasks (made from
``support/e2e/qa_tasks.json``) and *Retrieve Predictions* on all of them, on an idle machine and while a CPU hog
(one ``while True: pass`` process per core at normal priority) runs beside the stack.

    python benchmarks/busy.py                     # 100 tasks, idle then busy
    python benchmarks/busy.py --tasks 100 --cases busy

Figures per case: the call's wall time, the backend's scoring time against its budget (the overshoot: how far
the per-chunk cost estimate let the last chunk run past the deadline), the backend's CPU share, tasks scored in
the response and deferred to the background job, when the last background prediction landed, how many tasks
have 0, 1, 2+ predictions and every model version stored. Recorded in ``benchmarks/SPEED.json`` under ``busy``;
SPEED.md is rewritten. ``tests/e2e/test_label_studio.py`` (step 3) asserts the same on 30 tasks.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.speed import SPEED_JSON, machine, store_section  # noqa: E402
from support.e2e.scenario import SETTLE_BOUND_S, busy_retrieve, install_label_studio  # noqa: E402

log = logging.getLogger("benchmarks.busy")
ARTIFACTS = REPO / "artifacts" / "busy"
#: earlier runs kept in SPEED.json and shown in SPEED.md
KEEP_EARLIER = 3


def commit() -> str:
    """The checked-out commit, and whether backend/ or worker/ had changes not committed (what the run served)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO).stdout.strip()

    dirty = git("status", "--porcelain", "backend", "worker")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes in backend/ or worker/" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--cases", default="idle,busy", help="comma-separated: idle, busy (beside the CPU hog)")
    parser.add_argument("--bound", type=float, default=SETTLE_BOUND_S, help="seconds every task may take")
    parser.add_argument("--note", default="", help="what this run measures (shown with its rows)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cases = [name.strip() for name in args.cases.split(",") if name.strip()]
    if not cases or any(c not in ("idle", "busy") for c in cases):
        parser.error(f"--cases {args.cases!r}: expected idle and/or busy")
    ls_venv = install_label_studio()
    with tempfile.TemporaryDirectory(prefix="busy-") as tmp:
        results = busy_retrieve(ls_venv, Path(tmp), ARTIFACTS, args.tasks, args.bound, [c == "busy" for c in cases])
    record: dict[str, Any] = {
        "command": "python benchmarks/busy.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit(),
        "note": args.note,
        "machine": machine(),
        "cases": {
            name: {k: v for k, v in figures.items() if not k.endswith("_by_task")}
            for name, figures in zip(cases, results, strict=True)
        },
    }
    stored = json.loads(SPEED_JSON.read_text(encoding="utf-8")) if SPEED_JSON.is_file() else {}
    if stored.get("busy"):  # the runs before this one stay, newest first (the product changes between them)
        previous = dict(stored["busy"])
        record["earlier"] = [{k: v for k, v in previous.items() if k != "earlier"}, *previous.get("earlier", [])][
            :KEEP_EARLIER
        ]
    store_section("busy", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
