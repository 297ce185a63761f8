"""The whole loop with a real Label Studio 1.23.2 (own cached venv), the backend on the embedded SmolLM2 judge,
a real Redis and a real RQ worker. Everything is started here on free loopback ports and stopped by PID.

Artifacts (screenshots, server logs) go to artifacts/e2e/.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from label_studio_sdk.label_interface import LabelInterface

from tests.conftest import REPO
from tests.e2e.browser import Browser, chromium
from tests.e2e.harness import Proc, Stack, free_port
from tests.fixtures.processes import can_list, kill_all, wait_until_gone

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO / "artifacts" / "e2e"
ADMIN, PASSWORD, TOKEN = "admin@example.com", "e2e-secret-123", "e2e0123456789token"
BASIC = ("labelstudio", "basic-pass-42")
WEBHOOK_SECRET = "hook-secret-42"
DIMENSIONS = ["conciseness", "interpretability", "completeness", "clarity", "accuracy", "relevance"]
ON_SCREEN = ["conciseness", "interpretability", "clarity", "completeness", "accuracy", "relevance"]  # by group
SCORES = {  # how our two simulated annotators judge each kind of answer in the fixture (plus some noise)
    "good": [2, 2, 2, 2, 2, 2],
    "bad": [-2, -2, -2, -2, -2, -2],
    "verbose": [0, 0, 0, 0, 0, 0],
}
RUN_BUDGET_S = 1500


def human_result(kind: str, rng: random.Random) -> list[dict]:
    values = [min(2, max(-2, v + rng.choice([0, 0, 0, 0, -1, 1]))) for v in SCORES[kind]]
    return [
        {"from_name": d, "to_name": "answer", "type": "choices", "value": {"choices": [str(v)]}}
        for d, v in zip(DIMENSIONS, values, strict=True)
    ]


CHECKED_JS = (
    "Array.from(document.querySelectorAll('.ant-radio-wrapper-checked'))"
    ".map(e => e.innerText.split('[')[0].trim()).filter(Boolean)"
)


def on_screen(prediction: dict) -> list[str]:
    """The pre-filled labels in the order the labeling config shows the dimensions (a dimension the version
    has not proven is left out of the prediction, so it shows no choice)."""
    chosen = {r["from_name"]: r["value"]["choices"][0] for r in prediction["result"]}
    return [chosen[name] for name in ON_SCREEN if name in chosen]


def retrieve(ls: requests.Session, ls_url: str, pid: int, task_ids: list[int] | None) -> None:
    """The Data Manager's *Retrieve Predictions* on every task (None) or on ``task_ids``; Label Studio calls
    /predict synchronously and cuts it off after the backend's 100 s timeout."""
    selected = {"all": True, "excluded": []} if task_ids is None else {"all": False, "included": task_ids}
    action = ls.post(
        f"{ls_url}/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": pid},
        json={"selectedItems": selected},
        timeout=120,
    )
    assert action.ok, action.text


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


@pytest.fixture(scope="module")
def ls_venv() -> Path:
    result = subprocess.run(
        [str(REPO / "scripts" / "install-label-studio.sh")], capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, f"installing Label Studio failed:\n{result.stderr[-3000:]}"
    return Path(result.stdout.strip().splitlines()[-1])


def test_full_loop_with_label_studio(ls_venv: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    ls_port, backend_port = free_port(), free_port()
    ls_url, backend_url = f"http://127.0.0.1:{ls_port}", f"http://127.0.0.1:{backend_port}"
    queue_name = f"rj-e2e-{uuid.uuid4().hex[:8]}"
    model_dir = tmp_path / "models"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO", "DJANGO"))}
    ls_env = {
        **base_env,
        "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",
        "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "LABEL_STUDIO_BASE_DATA_DIR": str(tmp_path / "ls-data"),
        "LABEL_STUDIO_USERNAME": ADMIN,
        "LABEL_STUDIO_PASSWORD": PASSWORD,
        "LABEL_STUDIO_USER_TOKEN": TOKEN,
        "fflag_feat_utc_210_prediction_validation_15082025": "true",
    }
    judge_env = {
        **base_env,
        "MODEL_DIR": str(model_dir),
        "REDIS_URL": "redis://127.0.0.1:6379/14",
        "QUEUE_NAME": queue_name,
        "LABEL_STUDIO_URL": ls_url,
        "LABEL_STUDIO_API_KEY": TOKEN,
        "BASIC_AUTH_USER": BASIC[0],
        "BASIC_AUTH_PASS": BASIC[1],
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "TRAIN_MIN_NEW_ANNOTATIONS": "30",
        "TRAIN_EPOCHS": "3",
        "TRAIN_LEARNING_RATE": "0.001",
        "TRAIN_HELDOUT_FRACTION": "0.3",
        "TRAIN_MAX_LENGTH": "1024",
        "PREDICT_BATCH_SIZE": "8",
        "RUBRIC": "qa-quality",
        "LOG_LEVEL": "INFO",
    }
    # reuse the converted embedded model between runs (conversion takes ~20 s)
    cache = REPO / ".cache" / "test-models" / "base"
    if cache.is_dir():
        shutil.copytree(cache, model_dir / "base")
    bin_dir = Path(sys.executable).parent
    import redis

    redis.Redis.from_url(judge_env["REDIS_URL"]).flushdb()  # database 14 belongs to this test
    stack = Stack()
    try:
        stack.add(
            Proc(
                "label-studio",
                [
                    str(ls_venv / "bin" / "label-studio"),
                    "start",
                    "--no-browser",
                    "--internal-host",
                    "127.0.0.1",
                    "-p",
                    str(ls_port),
                    "--data-dir",
                    str(tmp_path / "ls-data"),
                ],
                ARTIFACTS / "label-studio.log",
                ls_env,
                tmp_path,
            )
        )
        stack.add(
            Proc(
                "backend",
                [
                    str(bin_dir / "rubric-judge"),
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(backend_port),
                    "--threads",
                    "8",
                ],
                ARTIFACTS / "backend.log",
                judge_env,
                REPO,
            )
        )
        stack.wait_for("Label Studio /health", lambda: requests.get(f"{ls_url}/health", timeout=2).ok, 420, 2)
        stack.wait_for(
            "backend /health", lambda: requests.get(f"{backend_url}/health", auth=BASIC, timeout=2).ok, 300, 1
        )
        ls = requests.Session()
        ls.headers["Authorization"] = f"Token {TOKEN}"

        # 1. project from our labeling config, ~30 tasks
        xml = subprocess.run(
            [str(bin_dir / "rubric-judge"), "label-config", "qa-quality"],
            capture_output=True,
            text=True,
            check=True,
            env=judge_env,
        ).stdout
        project = ls.post(
            f"{ls_url}/api/projects/", json={"title": "rubric-judge e2e", "label_config": xml}, timeout=30
        )
        assert project.status_code == 201, project.text
        pid = project.json()["id"]
        fixture = json.loads((Path(__file__).parent / "qa_tasks.json").read_text())
        imported = ls.post(
            f"{ls_url}/api/projects/{pid}/import", json=[{"data": t["data"]} for t in fixture], timeout=60
        )
        assert imported.status_code == 201, imported.text
        tasks = ls.get(f"{ls_url}/api/tasks/", params={"project": pid, "page_size": 100}, timeout=30).json()
        tasks = sorted(tasks["tasks"] if isinstance(tasks, dict) else tasks, key=lambda t: t["id"])
        assert len(tasks) == len(fixture)

        # 2. connect the backend; Label Studio creates the /webhook row; we add the secret header to it
        ml = ls.post(
            f"{ls_url}/api/ml",
            json={
                "url": backend_url,
                "project": pid,
                "title": "rubric-judge",
                "is_interactive": False,
                "auth_method": "BASIC_AUTH",
                "basic_auth_user": BASIC[0],
                "basic_auth_pass": BASIC[1],
                "timeout": 100,
            },
            timeout=60,
        )
        assert ml.status_code == 201, ml.text
        ml_id = ml.json()["id"]
        hooks = ls.get(f"{ls_url}/api/webhooks/", params={"project": pid}, timeout=30).json()
        hook = next((h for h in hooks if h["url"].rstrip("/") == f"{backend_url}/webhook"), None)
        assert hook is not None, f"Label Studio created no /webhook row: {hooks}"
        patched = ls.patch(
            f"{ls_url}/api/webhooks/{hook['id']}/", json={"headers": {"X-Webhook-Secret": WEBHOOK_SECRET}}, timeout=30
        )
        assert patched.ok, patched.text

        # 3. Retrieve Predictions: every task gets one valid choice per dimension and our model_version
        setup = requests.post(
            f"{backend_url}/setup", auth=BASIC, timeout=10, json={"project": f"{pid}.0", "schema": xml}
        ).json()
        v0 = setup["model_version"]
        assert v0 == f"smollm2-135m.p{pid}.v0"
        t0 = time.monotonic()
        retrieve(ls, ls_url, pid, None)
        predict_seconds = time.monotonic() - t0
        interface = LabelInterface(xml)
        for task in tasks:
            predictions = ls.get(f"{ls_url}/api/predictions/", params={"task": task["id"]}, timeout=30).json()
            assert len(predictions) == 1, (task["id"], predictions)
            prediction = predictions[0]
            assert prediction["model_version"] == v0
            assert sorted(r["from_name"] for r in prediction["result"]) == sorted(DIMENSIONS)
            assert interface.validate_prediction({"result": prediction["result"]}, return_errors=True) == []
        ls.patch(f"{ls_url}/api/projects/{pid}/", json={"model_version": v0}, timeout=30)
        first = ls.get(f"{ls_url}/api/predictions/", params={"task": tasks[0]["id"]}, timeout=30).json()[0]
        shown = shoot_task(ls_url, pid, tasks[0]["id"], ARTIFACTS / "label-studio-task-v0.png")
        assert shown == on_screen(first), f"the labeling page shows {shown}, the judge predicted {first['result']}"

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
        assert report["disagreements"]["tasks"] == report["counts"]["heldout_tasks"]
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
        retrieve(ls, ls_url, pid, None)
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
        retrieve(ls, ls_url, pid, [new_task])
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

        # 8. serving first: while a LoRA training job runs on this machine, 18 tasks imported then get v1
        #    pre-annotations from Retrieve Predictions within Label Studio's 100 s (the job pauses meanwhile)
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
        t0 = time.monotonic()
        retrieve(ls, ls_url, pid, late_ids)
        beside_training_seconds = time.monotonic() - t0
        still_training = training_step()
        for task_id in late_ids:
            stored = ls.get(f"{ls_url}/api/predictions/", params={"task": task_id}, timeout=30).json()
            assert [p["model_version"] for p in stored] == [v1], (task_id, stored, stack.logs())
        assert beside_training_seconds < 100, beside_training_seconds
        assert still_training, "the LoRA job must still be training when Retrieve Predictions returns"
        assert "pausing training" in lora.log.read_text(errors="replace"), lora.tail()
        lora.stop()

        summary = {
            "seconds_total": round(time.monotonic() - started, 1),
            "retrieve_18_tasks_beside_lora_training_s": round(beside_training_seconds, 1),
            "label_next": [(e["task_id"], e["score"]) for e in queue["queue"]],
            "prelabel_two_runs_s": round(prelabel_seconds, 1),
            "predict_30_tasks_s": round(predict_seconds, 1),
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
    finally:
        stack.stop()
        # every process of this test's queue: the backend, the workers and their RQ work-horses (stopped by
        # the worker itself; in a process group of their own, SIGTERM to the worker's group does not reach them)
        left = wait_until_gone("QUEUE_NAME", queue_name, 20) if can_list() else {}
        kill_all(left)
    assert not left, f"still running after the stack stopped: {left}"
