"""A new team's first dozen annotations against the real Label Studio: 12 qa-quality annotations, then *Start
Training*. The version is judged by its out-of-fold evidence over all 12 tasks (grouped by question) and
promoted only if that evidence holds up; either way the team can see what happened: promoted, and a task
imported afterwards is pre-annotated by it; or not, and ``/status``'s ``last_run`` and the report say why and
how many more annotations are needed.

Artifacts (server logs, the outcome) go to artifacts/e2e-first/.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import pytest
import requests

from support.e2e.scenario import BASIC, LabelStudio, fixture_tasks, human_result, running_stack
from tests.conftest import REPO

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO / "artifacts" / "e2e-first"
ANNOTATED = 12


def test_twelve_annotations_then_start_training(ls_venv: Path, label_studio: LabelStudio, tmp_path: Path) -> None:
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    fixture = fixture_tasks()
    stack = running_stack(ls_venv, tmp_path, ARTIFACTS, redis_db=13, label_studio=label_studio)
    with stack as servers:
        xml = servers.label_config()
        pid, tasks = servers.create_project("first annotations", xml, [t["data"] for t in fixture])
        ml_id = servers.connect_backend(pid)
        rng = random.Random(5)
        for index, task in enumerate(tasks[:ANNOTATED]):
            body = {"result": human_result(fixture[index]["kind"], rng), "lead_time": 3.0}
            made = servers.ls.post(f"{servers.ls_url}/api/tasks/{task['id']}/annotations/", json=body, timeout=30)
            assert made.status_code == 201, made.text
        train = servers.ls.post(f"{servers.ls_url}/api/ml/{ml_id}/train", json={}, timeout=120)
        assert train.ok, train.text
        worker = servers.worker("worker", burst=True)
        deadline = time.monotonic() + 600
        while worker.alive() and time.monotonic() < deadline:
            time.sleep(2)
        assert not worker.alive(), servers.stack.fail("the worker did not finish the training job in 600 s")
        servers.stack.retire(worker)
        last = servers.status(pid)["last_run"]
        report = requests.get(f"{servers.backend_url}/reports/{pid}.json", auth=BASIC, timeout=30).json()
        (ARTIFACTS / "outcome.json").write_text(json.dumps({"last_run": last, "report": report}, indent=1))
        assert last is not None and last["status"] == "done", last
        assert report["versions"][0]["decision"] == last["decision"]
        assert "task(s) in" in report["evidence"] and f"{ANNOTATED} task(s)" in report["evidence"], report["evidence"]
        v1 = last["version"]
        if last["promoted"]:
            # a task imported now gets a v1 pre-annotation
            assert servers.setup(pid, xml) == v1
            imported = servers.ls.post(
                f"{servers.ls_url}/api/projects/{pid}/import", json=[{"data": fixture[-1]["data"]}], timeout=60
            )
            assert imported.status_code == 201, imported.text
            new_id = max(t["id"] for t in servers.tasks(pid))
            servers.retrieve(pid, [new_id])
            stored = [p for p in servers.predictions(pid) if p["task"] == new_id]
            assert [p["model_version"] for p in stored] == [v1], stored
        else:
            # not promoted: the decision says why, in /status and the report, with what is missing
            decision = last["decision"]
            assert "keeping v0" in decision, decision
            reasons = [row["prefill"]["reason"] for row in report["dimensions"]]
            explained = "more annotated task" in decision or any("more annotated task" in r for r in reasons)
            assert explained or "lower bound" in decision, (decision, reasons)
            assert servers.setup(pid, xml).endswith(".v0")
