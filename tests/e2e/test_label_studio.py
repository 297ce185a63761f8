"""The whole loop with a real Label Studio 1.23.2 (own cached venv), the backend on the embedded SmolLM2 judge,
a real Redis and real RQ workers (``support/e2e/scenario.py``). Label Studio is the e2e session's
(``tests/e2e/conftest.py``); everything else is started here on free loopback ports and stopped by PID. The two
*Retrieve Predictions* that must fit Label Studio's timeout (steps 3 and 8) run beside a CPU hog on every core.

Artifacts (screenshots, server logs) go to artifacts/e2e/.
"""

from __future__ import annotations

import base64
import json
import random
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import requests
from label_studio_sdk.label_interface import LabelInterface

from support.e2e.harness import Proc
from support.e2e.scenario import (
    ADMIN,
    BASIC,
    DIMENSIONS,
    FIXTURE,
    PASSWORD,
    WEBHOOK_SECRET,
    LabelStudio,
    human_result,
    running_stack,
)
from tests.conftest import REPO
from tests.e2e.browser import Browser, chromium

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO / "artifacts" / "e2e"
ON_SCREEN = ["conciseness", "interpretability", "clarity", "completeness", "accuracy", "relevance"]  # by group
RUN_BUDGET_S = 1500


CHECKED_JS = (
    "Array.from(document.querySelectorAll('.ant-radio-wrapper-checked'))"
    ".map(e => e.innerText.split('[')[0].trim()).filter(Boolean)"
)


def on_screen(prediction: dict) -> list[str]:
    """The pre-filled labels in the order the labeling config shows the dimensions (a dimension the version
    has not proven is left out of the prediction, so it shows no choice)."""
    chosen = {r["from_name"]: r["value"]["choices"][0] for r in prediction["result"]}
    return [chosen[name] for name in ON_SCREEN if name in chosen]


def brief(figures: Mapping[str, Any]) -> dict[str, Any]:
    """A measured Retrieve Predictions (``Servers.settle``) without its per-task lists, for summary.json."""
    return {k: v for k, v in figures.items() if not k.endswith("_by_task")}


def login_cookies(ls_url: str) -> dict[str, str]:
    session = requests.Session()
    assert session.get(f"{ls_url}/user/login/", timeout=30).ok
    session.post(
        f"{ls_url}/user/login/",
        data={"email": ADMIN, "password": PASSWORD, "csrfmiddlewaretoken": session.cookies.get("csrftoken", "")},
        headers={"Referer": f"{ls_url}/user/login/"},
        timeout=30,
    )
    assert "sessionid" in session.cookies, "logging in to Label Studio failed"
    return {c.name: c.value for c in session.cookies}


def shoot_task(ls_url: str, pid: int, task_id: int, out: Path, prefilled: int = 6) -> list[str]:
    """Open a task in the labeling UI, wait until the judge's ``prefilled`` choices are selected (or, with none,
    until the choices are drawn), screenshot it; returns the labels shown as selected."""
    if chromium() is None:
        pytest.fail("chromium is needed for the screenshots: apt-get install chromium")
    browser = Browser(1280, 1500)
    ready = (
        f"({CHECKED_JS}).length >= {prefilled}"
        if prefilled
        else f"document.querySelectorAll('.ant-radio-wrapper').length >= {5 * len(ON_SCREEN)}"
    )
    try:
        browser.set_cookies(ls_url, login_cookies(ls_url))
        browser.open(f"{ls_url}/projects/{pid}/data?task={task_id}", ready, timeout=90)
        time.sleep(1)
        browser.screenshot(out)
        return list(browser.evaluate(CHECKED_JS) or [])
    finally:
        browser.close()


def test_full_loop_with_label_studio(ls_venv: Path, label_studio: LabelStudio, tmp_path: Path) -> None:
    started = time.monotonic()
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    settings = {
        "TRAIN_MIN_NEW_ANNOTATIONS": "30",
        "TRAIN_EPOCHS": "3",
        "TRAIN_LEARNING_RATE": "0.001",
        "TRAIN_HELDOUT_FRACTION": "0.3",
        "TRAIN_MAX_LENGTH": "1024",
        "PREDICT_BATCH_SIZE": "8",
    }
    with running_stack(ls_venv, tmp_path, ARTIFACTS, label_studio=label_studio, **settings) as servers:
        stack, ls, ls_url, backend_url = servers.stack, servers.ls, servers.ls_url, servers.backend_url
        judge_env, bin_dir = servers.judge_env, servers.bin_dir

        # 1. project from our labeling config, ~30 tasks
        xml = servers.label_config()
        fixture = json.loads(FIXTURE.read_text())
        pid, tasks = servers.create_project("rubric-judge e2e", xml, [t["data"] for t in fixture])

        # 2. connect the backend; Label Studio creates the /webhook row; we add the secret header to it
        ml_id = servers.connect_backend(pid)

        # 3. Retrieve Predictions on a busy machine (a process spinning on every core beside the stack): the call
        #    returns within Label Studio's 100 s; a task the deadline (PREDICT_DEADLINE_S, 60 s) left unscored
        #    gets its prediction from the background job the worker runs; every task ends with exactly one
        #    v0 prediction within SETTLE_BOUND_S
        v0 = servers.setup(pid, xml)
        assert v0 == f"smollm2-135m.p{pid}.v0"
        deferred_worker = servers.worker("worker-deferred")
        servers.wait_for_worker(deferred_worker)
        hog = servers.hog()
        busy_30 = servers.retrieve_measured(pid, [t["id"] for t in tasks], select_all=True)
        hog.stop()  # the call is what must fit Label Studio's timeout on a busy machine; the rest may run freely
        busy_30 = servers.settle(pid, [t["id"] for t in tasks], busy_30)
        servers.stop_worker(deferred_worker)  # before the annotations: the training job is step 5's
        assert busy_30["retrieve_s"] < servers.ls_timeout_s, brief(busy_30)
        assert busy_30["within_bound"], brief(busy_30)
        assert busy_30["versions_by_task"] == {t["id"]: [v0] for t in tasks}, busy_30["versions_by_task"]
        assert busy_30["predictions_in_response"] == busy_30["scored_inline"], brief(busy_30)
        assert busy_30["predictions_in_background"] == busy_30["deferred"], brief(busy_30)
        assert busy_30["tasks_with_predictions"] == {"0": 0, "1": len(tasks), "2+": 0}, brief(busy_30)
        if busy_30["deferred"]:  # the background job finished and wrote exactly the deferred tasks
            job = busy_30["background_job"]
            assert job is not None and job["status"] == "finished", brief(busy_30)
            assert job["meta"].get("written") == busy_30["deferred"], brief(busy_30)
        interface = LabelInterface(xml)
        # day one: v0 has no evidence, so each prediction names the version and pre-fills no choice (score 0);
        # the labeling page opens with every choice empty
        for task in tasks:
            assert busy_30["results_by_task"][task["id"]] == [[]], busy_30["results_by_task"][task["id"]]
        ls.patch(f"{ls_url}/api/projects/{pid}/", json={"model_version": v0}, timeout=30)
        first = ls.get(f"{ls_url}/api/predictions/", params={"task": tasks[0]["id"]}, timeout=30).json()[0]
        assert first["model_version"] == v0 and first["score"] == 0 and first["result"] == [], first
        shown = shoot_task(ls_url, pid, tasks[0]["id"], ARTIFACTS / "label-studio-task-v0.png", prefilled=0)
        assert shown == [], f"the labeling page shows {shown} pre-selected on day one"
        day_one = servers.status(pid)["prefill"]
        assert day_one["prefilled"] == [] and "more annotated task(s)" in day_one["summary"], day_one

        # 4. human annotations from two users until the threshold fires; then Start Training
        second = ls.post(
            f"{ls_url}/api/users/",
            json={
                "email": "second@example.com",
                "username": "second",
                "first_name": "Second",
                "last_name": "Annotator",
            },
            timeout=30,
        )
        assert second.status_code == 201, second.text
        second_id = second.json()["id"]
        rng = random.Random(11)
        answers = []
        for index, task in enumerate(tasks):
            kind = fixture[index]["kind"]
            body = {"result": human_result(kind, rng), "lead_time": 3.0}
            answers.append(ls.post(f"{ls_url}/api/tasks/{task['id']}/annotations/", json=body, timeout=30))
            if index < 12:  # overlap: twelve tasks get a second annotator
                body = {"result": human_result(kind, rng), "completed_by": second_id, "lead_time": 4.0}
                answers.append(ls.post(f"{ls_url}/api/tasks/{task['id']}/annotations/", json=body, timeout=30))
        assert all(a.status_code == 201 for a in answers), [a.text for a in answers if a.status_code != 201][:2]
        assert len(answers) == 42
        status = stack.wait_for(
            "the 30th annotation to enqueue a training job",
            lambda: (
                requests.get(f"{backend_url}/status", params={"project": pid}, auth=BASIC, timeout=5)
                .json()["projects"][str(pid)]
                .get("queued")
            ),
            60,
        )
        train = ls.post(f"{ls_url}/api/ml/{ml_id}/train", json={}, timeout=120)
        assert train.ok, train.text
        state = requests.get(f"{backend_url}/status", params={"project": pid}, auth=BASIC, timeout=5).json()
        assert state["projects"][str(pid)]["queued"] == status, "Start Training must join the queued job"

        # 5. the worker trains (with a personal access token: a JWT refresh token the SDK exchanges itself);
        #    the new version is served and reported
        enabled = ls.post(
            f"{ls_url}/api/jwt/settings",
            timeout=30,
            json={"api_tokens_enabled": True, "legacy_api_tokens_enabled": True},
        )
        assert enabled.ok, enabled.text
        created = ls.post(f"{ls_url}/api/token/", timeout=30)
        assert created.status_code == 201, created.text
        pat = created.json()["token"]
        refreshed = requests.post(f"{ls_url}/api/token/refresh/", json={"refresh": pat}, timeout=30)
        assert refreshed.ok and refreshed.json().get("access"), refreshed.text
        pat_env = {**judge_env, "LABEL_STUDIO_API_KEY": pat}
        worker = stack.add(
            Proc(
                "worker", [str(bin_dir / "rubric-judge"), "worker", "--burst"], ARTIFACTS / "worker.log", pat_env, REPO
            )
        )
        t0 = time.monotonic()
        deadline = time.monotonic() + RUN_BUDGET_S
        while worker.alive() and time.monotonic() < deadline:
            time.sleep(3)
        train_seconds = time.monotonic() - t0
        if worker.alive():
            raise stack.fail(f"the worker did not finish training within {RUN_BUDGET_S} s")
        assert worker.popen is not None and worker.popen.returncode == 0, stack.fail("the worker failed")
        stack.retire(worker)  # a burst worker ends when the queue is empty
        report = requests.get(f"{backend_url}/reports/{pid}.json", auth=BASIC, timeout=30)
        assert report.ok, stack.fail(f"no report: {report.text}")
        report = report.json()
        run = report["versions"][0]
        assert run["alpha_flat"] is not None and report["flat"]["ceiling"] is not None
        assert report["counts"]["annotators"] == 2 and report["counts"]["annotations"] == 42
        (ARTIFACTS / "report.json").write_text(json.dumps(report, indent=1))
        # who agrees with whom: both annotators and the judge, per dimension and flattened
        matrix = report["agreement_matrix"]
        assert matrix["flat"]["raters"] == sorted(matrix["flat"]["raters"][:-1]) + ["judge"]
        assert len(matrix["flat"]["raters"]) == 3 and set(matrix["dimensions"]) == set(DIMENSIONS)
        worst = report["disagreements"]["summed"]
        assert report["disagreements"]["tasks"] == report["counts"]["evidence_tasks"]  # out-of-fold: all 30
        assert all(e["link"] == f"{ls_url}/projects/{pid}/data?task={e['task_id']}" for e in worst)
        assert [e["distance"] for e in worst] == sorted((e["distance"] for e in worst), reverse=True)
        v1 = f"smollm2-135m.p{pid}.v1"
        served = requests.post(
            f"{backend_url}/setup", auth=BASIC, timeout=10, json={"project": f"{pid}.0", "schema": xml}
        ).json()["model_version"]
        # the promotion gate decides; its decision must be what /setup serves
        assert served == (v1 if run["promoted"] else v0), (served, run["decision"])
        if not run["promoted"]:
            # an admin overrides the gate (or rolls back) by hand; the backend serves it without a restart
            activated = requests.post(
                f"{backend_url}/versions/activate", auth=BASIC, timeout=10, json={"project": pid, "version": 1}
            )
            assert activated.ok and activated.json()["model_version"] == v1, activated.text
        setup = requests.post(
            f"{backend_url}/setup", auth=BASIC, timeout=10, json={"project": f"{pid}.0", "schema": xml}
        ).json()
        assert setup["model_version"] == v1
        servers.retrieve(pid, None)
        fresh = ls.get(f"{ls_url}/api/predictions/", params={"task": tasks[-1]["id"]}, timeout=30).json()
        assert v1 in {p["model_version"] for p in fresh}, fresh
        ls.patch(f"{ls_url}/api/projects/{pid}/", json={"model_version": v1}, timeout=30)

        # 6. a task imported now gets a v1 pre-annotation, shown pre-filled; and the report page
        ls.post(f"{ls_url}/api/projects/{pid}/import", json=[{"data": fixture[1]["data"]}], timeout=60)
        new_task = max(
            t["id"]
            for t in ls.get(f"{ls_url}/api/tasks/", params={"project": pid, "page_size": 100}, timeout=30).json()[
                "tasks"
            ]
        )
        servers.retrieve(pid, [new_task])
        latest = ls.get(f"{ls_url}/api/predictions/", params={"task": new_task}, timeout=30).json()
        assert [p["model_version"] for p in latest] == [v1], latest
        # v1 pre-fills exactly the dimensions on which it beat the majority label on held-out tasks
        details = requests.get(f"{backend_url}/versions", params={"project": pid}, auth=BASIC, timeout=10).json()[
            "details"
        ]
        gate = next(d for d in details if d["number"] == 1)["prefill"]
        prefilled = {name for name, decision in gate.items() if decision["prefilled"]}
        assert {r["from_name"] for r in latest[0]["result"]} == prefilled, (gate, latest[0]["result"])
        assert {row["name"] for row in report["dimensions"] if row["prefill"]["prefilled"]} == prefilled
        shown = shoot_task(ls_url, pid, new_task, ARTIFACTS / "label-studio-task-v1.png", len(prefilled))
        assert shown == on_screen(latest[0]), (shown, latest[0]["result"])
        browser = Browser(1280, 1500)
        try:
            basic = base64.b64encode(f"{BASIC[0]}:{BASIC[1]}".encode()).decode()
            browser.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {basic}"})
            assert browser.open(f"{backend_url}/reports/{pid}", "document.querySelectorAll('svg').length >= 4")
            browser.screenshot(ARTIFACTS / "report.png", full_page=True)
            browser.screenshot_of("#agreement-matrix", ARTIFACTS / "report-agreement-matrix.png")
            browser.screenshot_of("#disagreements", ARTIFACTS / "report-disagreements.png")
            assert browser.evaluate("document.querySelectorAll('#agreement-matrix svg').length") == 1 + len(DIMENSIONS)
        finally:
            browser.close()

        # 7. asynchronous pre-annotation through the API: three new tasks get one v1 prediction each; the
        #    annotated tasks and the task already predicted by v1 are skipped; a second run writes nothing
        ls.post(
            f"{ls_url}/api/projects/{pid}/import", json=[{"data": fixture[i]["data"]} for i in (2, 3, 4)], timeout=60
        ).raise_for_status()
        listed = ls.get(f"{ls_url}/api/tasks/", params={"project": pid, "page_size": 100}, timeout=30).json()["tasks"]
        fresh_ids = sorted(t["id"] for t in listed if t["id"] > new_task)
        assert len(fresh_ids) == 3, listed
        annotated_before = len(ls.get(f"{ls_url}/api/predictions/", params={"task": tasks[0]["id"]}, timeout=30).json())
        t0 = time.monotonic()
        runs = []
        for _ in range(2):
            proc = subprocess.run(
                [str(bin_dir / "rubric-judge"), "prelabel", "--project", str(pid), "--batch-size", "2"],
                capture_output=True,
                text=True,
                env=pat_env,
                timeout=600,
            )
            assert proc.returncode == 0, stack.fail(f"prelabel failed:\n{proc.stderr[-3000:]}")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        prelabel_seconds = time.monotonic() - t0
        assert runs[0]["model_version"] == v1 and runs[0]["written"] == 3, runs
        assert runs[0]["skipped_annotated"] == len(tasks) and runs[0]["skipped_predicted"] == 1, runs
        assert runs[1]["written"] == 0 and runs[1]["skipped_predicted"] == 4, runs
        for task_id in fresh_ids:
            stored = ls.get(f"{ls_url}/api/predictions/", params={"task": task_id}, timeout=30).json()
            assert [p["model_version"] for p in stored] == [v1], stored
            assert interface.validate_prediction({"result": stored[0]["result"]}, return_errors=True) == []
        assert (
            len(ls.get(f"{ls_url}/api/predictions/", params={"task": tasks[0]["id"]}, timeout=30).json())
            == annotated_before
        )
        # what to label next: the unannotated tasks by their stored v1 prediction's score, lowest first (the
        # stored predictions carry the scores the Data Manager's prediction-score column sorts by)
        unlabeled = [new_task, *fresh_ids]
        stored_scores = {}
        for task_id in unlabeled:
            stored = ls.get(f"{ls_url}/api/predictions/", params={"task": task_id}, timeout=30).json()
            score = next(p["score"] for p in stored if p["model_version"] == v1)
            assert isinstance(score, float) and 0 < score <= 1, stored
            stored_scores[task_id] = score
        proc = subprocess.run(
            [str(bin_dir / "rubric-judge"), "queue", "--project", str(pid), "--json"],
            capture_output=True,
            text=True,
            env=pat_env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        queue = json.loads(proc.stdout)
        expected_order = sorted(unlabeled, key=lambda t: (stored_scores[t], str(t)))
        assert [e["task_id"] for e in queue["queue"]] == expected_order, (queue, stored_scores)
        assert [e["score"] for e in queue["queue"]] == [stored_scores[t] for t in expected_order]
        assert queue["model_version"] == v1 and queue["unannotated"] == len(unlabeled)
        routed = requests.get(f"{backend_url}/reports/{pid}/queue", params={"limit": 2}, auth=BASIC, timeout=300)
        assert routed.ok and [e["task_id"] for e in routed.json()["queue"]] == expected_order[:2], routed.text

        # 8. serving first on a busy machine: while a LoRA training job runs on this machine and a CPU hog spins
        #    on every core, Retrieve Predictions on 18 tasks imported then returns within Label Studio's timeout
        #    (the job pauses meanwhile); each task ends with exactly one v1 prediction, from the response or
        #    from the background job of a second worker, within SETTLE_BOUND_S
        forced = requests.post(
            f"{backend_url}/webhook",
            headers={"X-Webhook-Secret": WEBHOOK_SECRET},
            timeout=10,
            json={"action": "START_TRAINING", "project": {"id": pid}, "force": True},
        )
        assert forced.ok, forced.text
        lora = stack.add(
            Proc(
                "worker-lora",
                [str(bin_dir / "rubric-judge"), "worker", "--burst"],
                ARTIFACTS / "worker-lora.log",
                {**pat_env, "TRAIN_METHOD": "lora"},
                REPO,
            )
        )

        def training_step() -> int:
            state = requests.get(f"{backend_url}/status", params={"project": pid}, auth=BASIC, timeout=5).json()[
                "projects"
            ][str(pid)]
            return int(((state.get("job") or {}).get("meta") or {}).get("step") or 0) if state.get("running") else 0

        stack.wait_for("the forced LoRA job's first optimizer step", training_step, 600, 2)
        late = [
            {"data": {**fixture[i]["data"], "answer": fixture[i]["data"]["answer"] + f" (Note {i}.)"}}
            for i in range(5, 23)
        ]  # unseen inputs: nothing comes from the prediction cache
        ls.post(f"{ls_url}/api/projects/{pid}/import", json=late, timeout=60).raise_for_status()
        listed = ls.get(f"{ls_url}/api/tasks/", params={"project": pid, "page_size": 200}, timeout=30).json()["tasks"]
        late_ids = sorted(t["id"] for t in listed if t["id"] > max(fresh_ids))
        assert len(late_ids) == 18, listed
        deferred_worker = servers.worker("worker-deferred-8", pat_env)  # the LoRA worker is busy training
        servers.wait_for_worker(deferred_worker)
        hog = servers.hog()
        busy_18 = servers.retrieve_measured(pid, late_ids)
        hog.stop()
        still_training = training_step()
        paused = "pausing training" in lora.log.read_text(errors="replace")
        servers.stop_worker(lora)  # it has shown that it pauses for /predict; the deferred tasks need no competition
        busy_18 = servers.settle(pid, late_ids, busy_18)
        servers.stop_worker(deferred_worker)
        assert busy_18["versions_by_task"] == {t: [v1] for t in late_ids}, (busy_18, stack.logs())
        assert busy_18["retrieve_s"] < servers.ls_timeout_s, brief(busy_18)
        assert busy_18["within_bound"], brief(busy_18)
        assert busy_18["predictions_in_response"] == busy_18["scored_inline"], brief(busy_18)
        assert busy_18["predictions_in_background"] == busy_18["deferred"], brief(busy_18)
        assert still_training, "the LoRA job must still be training when Retrieve Predictions returns"
        assert paused, lora.tail()

        summary = {
            "seconds_total": round(time.monotonic() - started, 1),
            "retrieve_18_tasks_beside_lora_training_and_hog": brief(busy_18),
            "label_next": [(e["task_id"], e["score"]) for e in queue["queue"]],
            "prelabel_two_runs_s": round(prelabel_seconds, 1),
            "retrieve_30_tasks_beside_hog": brief(busy_30),
            "train_job_s": round(train_seconds, 1),
            "alpha_flat": run["alpha_flat"],
            "alpha_base_flat": run["alpha_base_flat"],
            "ceiling": report["flat"]["ceiling"],
            "promoted": run["promoted"],
            "decision": run["decision"],
            "v0": v0,
            "v1": v1,
            "method_v1": run.get("method"),
            "alpha_dims_v1": run.get("alpha_dims"),
            "prefill_v1": gate,
            "prefilled_v1": shown,
        }
        (ARTIFACTS / "summary.json").write_text(json.dumps(summary, indent=1))
