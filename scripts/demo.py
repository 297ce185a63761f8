"""One-command demo without Docker: Label Studio + Redis + the backend (embedded SmolLM2) + the worker.

    make demo            (or: .venv/bin/python scripts/demo.py)

Creates two qa-quality projects from the 30 sample tasks (``support/e2e/qa_tasks.json``) and connects the
backend to both:

* ``rubric-judge demo: day one`` -- nothing annotated. Its pre-annotations are retrieved: each carries the model
  version that answered (``...v0``) and no pre-filled choice, because nothing is proven yet.
* ``rubric-judge demo: N annotated`` -- the demo submits N prepared annotations (default 20, ``--annotated``) and
  presses *Start Training*: the worker trains a version, measures it against those annotations and promotes it
  or says why not. The demo prints that decision when the job ends (also in ``/status`` and the report).

It prints the URLs, the login and what to click, then stays up. Ctrl-C (or SIGTERM) stops everything it
started: Label Studio, the backend, the worker (which stops its running job's work-horse itself) and Redis if no
Redis answered before; a second Ctrl-C kills what is still running without waiting. A second run reuses the
projects it finds complete and recreates one it finds incomplete (an earlier run stopped half-way).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from support.e2e.scenario import base_environment, fixture_tasks, human_result, ls_environment  # noqa: E402

ADMIN, PASSWORD, TOKEN = "admin@example.com", "demo-password", "demo0123456789token"
DAY_ONE = "rubric-judge demo: day one"
#: How long the processes get to stop after SIGTERM before SIGKILL (the worker needs up to 10 s to stop a
#: work-horse that ignores SIGTERM: worker.horse.HORSE_STOP_GRACE_S).
STOP_GRACE_S = 20.0
#: Where scripts/ensure-redis.sh looks for Redis (and starts one if none answers).
REDIS_HOST, REDIS_PORT = os.environ.get("REDIS_HOST", "127.0.0.1"), os.environ.get("REDIS_PORT", "6379")
#: The line the demo prints once everything is up (tests/test_demo.py waits for it).
RUNNING = "rubric-judge demo is running"


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def redis_answers() -> bool:
    ping = subprocess.run(["redis-cli", "-h", REDIS_HOST, "-p", REDIS_PORT, "ping"], capture_output=True, text=True)
    return ping.returncode == 0 and ping.stdout.strip() == "PONG"


def say(message: str) -> None:
    sys.stderr.write(f"[demo] {message}\n")
    sys.stderr.flush()


def wait(url: str, what: str, timeout: float, procs: list[subprocess.Popen[bytes]], logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit(f"[demo] a process exited while waiting for {what}; see the logs in {logs}")
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise SystemExit(f"[demo] {what} did not answer within {timeout:.0f} s; see the logs in {logs}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ls-port", type=int, default=8080, help="Label Studio's port (default 8080)")
    parser.add_argument("--backend-port", type=int, default=9090, help="the backend's port (default 9090)")
    parser.add_argument(
        "--annotated",
        type=int,
        default=20,
        help="prepared annotations the second project gets before Start Training (default 20; 0: no second project)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO / ".cache" / "demo",
        help="Label Studio's database and the backend's MODEL_DIR (default .cache/demo); logs go to <data-dir>/logs",
    )
    args = parser.parse_args()
    if not 0 <= args.annotated <= len(fixture_tasks()):
        raise SystemExit(f"[demo] --annotated {args.annotated}: expected 0 to {len(fixture_tasks())}")
    for port in (args.ls_port, args.backend_port):
        if not port_free(port):
            raise SystemExit(f"[demo] port {port} is busy; pass --ls-port/--backend-port")
    logs = args.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    say("installing Label Studio 1.23.2 into its own venv if needed (the first time: about 3 minutes, 1 GB)")
    ls_venv = (
        subprocess.run(
            [str(REPO / "scripts" / "install-label-studio.sh")], check=True, text=True, stdout=subprocess.PIPE
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    procs: list[subprocess.Popen[bytes]] = []
    started_redis = not redis_answers()
    # from here on, whatever happens (Ctrl-C, SIGTERM, a process that dies, an error), stop what was started
    signal.signal(signal.SIGINT, signal.default_int_handler)  # KeyboardInterrupt, even where SIGINT was ignored
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        subprocess.run([str(REPO / "scripts" / "ensure-redis.sh")], check=True)
        return Demo(args, Path(ls_venv), procs, logs).run()
    except KeyboardInterrupt:
        return 0
    finally:
        stop(procs, started_redis)


def kill_groups(procs: list[subprocess.Popen[bytes]], sig: int) -> None:
    """``sig`` to the process group of each process not yet reaped (each runs in a session of its own)."""
    for proc in reversed(procs):
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)


def stop(procs: list[subprocess.Popen[bytes]], started_redis: bool) -> None:
    """SIGTERM to every process group the demo started, SIGKILL after STOP_GRACE_S (at once on a second Ctrl-C),
    SIGKILL to what is left in those groups; then Redis, if the demo started it."""
    say("stopping everything the demo started")

    def hurry(*_: object) -> None:
        say("killing what is still running")
        kill_groups(procs, signal.SIGKILL)

    handlers = {sig: signal.signal(sig, hurry) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        running = [proc for proc in procs if proc.poll() is None]
        kill_groups(running, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"pid {proc.pid} did not stop within {STOP_GRACE_S:g} s: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for proc in running:  # children that outlived their group's leader (stopped just now: no pid reuse)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if started_redis and redis_answers():
        say(f"stopping the Redis the demo started on {REDIS_HOST}:{REDIS_PORT}")
        subprocess.run(["redis-cli", "-h", REDIS_HOST, "-p", REDIS_PORT, "shutdown", "nosave"], capture_output=True)
    say("stopped")


class Demo:
    """The processes, the two projects and the watch loop."""

    def __init__(self, args: argparse.Namespace, ls_venv: Path, procs: list[subprocess.Popen[bytes]], logs: Path):
        self.args, self.ls_venv, self.procs, self.logs = args, ls_venv, procs, logs
        self.ls_url = f"http://127.0.0.1:{args.ls_port}"
        self.backend_url = f"http://127.0.0.1:{args.backend_port}"
        self.bin_dir = REPO / ".venv" / "bin"
        env = base_environment()
        self.ls_env = {
            **ls_environment(env, args.data_dir / "ls"),
            "LABEL_STUDIO_USERNAME": ADMIN,
            "LABEL_STUDIO_PASSWORD": PASSWORD,
            "LABEL_STUDIO_USER_TOKEN": TOKEN,
        }
        self.judge_env = {
            **env,
            "LABEL_STUDIO_URL": self.ls_url,
            "LABEL_STUDIO_API_KEY": TOKEN,
            "RUBRIC": "qa-quality",
            "MODEL_DIR": str(args.data_dir / "models"),
            "TRAIN_MIN_NEW_ANNOTATIONS": env.get("TRAIN_MIN_NEW_ANNOTATIONS", "10"),
        }
        self.ls = requests.Session()
        self.ls.headers["Authorization"] = f"Token {TOKEN}"
        self.xml = ""

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        self.procs.append(
            subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        )

    def run(self) -> int:
        """Start Label Studio, the backend and the worker, set up the projects, then watch until stopped."""
        say(f"starting Label Studio 1.23.2 on {self.ls_url} (its first start creates its database: about a minute)")
        ls_bin = str(self.ls_venv / "bin" / "label-studio")
        data = str(self.args.data_dir / "ls")
        argv = [ls_bin, "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(self.args.ls_port)]
        self.start("label-studio", [*argv, "--data-dir", data], self.ls_env)
        say(f"starting the backend on {self.backend_url} (SmolLM2-135M, embedded) and the worker")
        serve = [
            str(self.bin_dir / "rubric-judge"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.args.backend_port),
        ]
        self.start("backend", serve, self.judge_env)
        self.start("worker", [str(self.bin_dir / "rubric-judge"), "worker"], self.judge_env)
        wait(f"{self.ls_url}/health", "Label Studio", 600, self.procs, self.logs)
        wait(f"{self.backend_url}/health", "the backend", 600, self.procs, self.logs)
        self.xml = subprocess.run(
            [str(self.bin_dir / "rubric-judge"), "label-config", "qa-quality"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        day_one = self.day_one()
        annotated = self.annotated() if self.args.annotated else None
        self.banner(day_one, annotated)
        return self.watch(annotated)

    # --- Label Studio ---------------------------------------------------------------------------------------

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.ls.request(method, f"{self.ls_url}/api/{path}", timeout=kwargs.pop("timeout", 60), **kwargs)
        if not response.ok:
            raise SystemExit(f"[demo] Label Studio {method} /api/{path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    def tasks(self, pid: int) -> list[dict[str, Any]]:
        return list(self.api("GET", "tasks/", params={"project": pid, "page_size": 100})["tasks"])

    def project(self, title: str, complete: Callable[[int], bool], connect: bool = True) -> tuple[int, bool]:
        """The project called ``title``: (its id, True) if it exists and ``complete`` says so; else an incomplete
        one is deleted and a new one created with the sample tasks (and the backend connected, with ``connect``):
        (its id, False)."""
        listed = self.api("GET", "projects/", params={"page_size": 100})
        for found in listed.get("results", []) if isinstance(listed, dict) else listed:
            if found["title"] == title:
                if complete(found["id"]):
                    say(f"reusing project {found['id']} ({title})")
                    return int(found["id"]), True
                say(f"project {found['id']} ({title}) is incomplete (an earlier run stopped half-way): recreating it")
                self.api("DELETE", f"projects/{found['id']}/")
        pid = int(self.api("POST", "projects/", json={"title": title, "label_config": self.xml})["id"])
        self.api("POST", f"projects/{pid}/import", json=[{"data": t["data"]} for t in fixture_tasks()])
        if connect:
            self.connect(pid)
        return pid, False

    def connect(self, pid: int) -> None:
        """Connect Model: the backend, without authentication (Label Studio creates the /webhook row)."""
        body = {"url": self.backend_url, "project": pid, "title": "rubric-judge", "is_interactive": False}
        self.api("POST", "ml", json=body)

    def connected(self, pid: int) -> bool:
        return bool(self.api("GET", "ml", params={"project": pid}))

    def day_one(self) -> int:
        """The unannotated project, every task with the backend's prediction (its model version, no choice)."""
        n = len(fixture_tasks())

        def complete(pid: int) -> bool:
            tasks = self.tasks(pid)
            return len(tasks) == n and all(t.get("total_predictions") for t in tasks) and self.connected(pid)

        pid, reused = self.project(DAY_ONE, complete)
        if not reused:
            say(f"retrieving pre-annotations for the {n} day-one tasks (about a minute on a 2-core CPU)")
            ids = sorted(t["id"] for t in self.tasks(pid))
            for start in range(0, len(ids), 6):  # small batches stay far below Label Studio's 100 s timeout
                self.api(
                    "POST",
                    "dm/actions",
                    params={"id": "retrieve_tasks_predictions", "project": pid},
                    json={"selectedItems": {"all": False, "included": ids[start : start + 6]}},
                    timeout=120,
                )
            version = requests.post(
                f"{self.backend_url}/setup", json={"project": f"{pid}.0", "schema": self.xml}, timeout=10
            ).json()["model_version"]
            self.api("PATCH", f"projects/{pid}/", json={"model_version": version})
        return pid

    def annotated(self) -> int:
        """The project with ``--annotated`` prepared annotations (one annotator) and Start Training pressed."""
        n, fixture = self.args.annotated, fixture_tasks()

        def complete(pid: int) -> bool:
            tasks = self.tasks(pid)
            done = sum(1 for t in tasks if t.get("total_annotations"))
            return len(tasks) == len(fixture) and done == n and self.connected(pid)

        pid, reused = self.project(f"rubric-judge demo: {n} annotated", complete, connect=False)
        if reused:
            return pid
        # annotated before the backend is connected (as a team that connects it later): one training run on all
        # of them, not one started by the annotation webhook half-way through
        say(f"submitting {n} prepared annotations, connecting the backend, then Start Training")
        rng = random.Random(7)
        for task, sample in zip(self.tasks(pid)[:n], fixture, strict=False):
            body = {"result": human_result(sample["kind"], rng), "lead_time": 5.0}
            self.api("POST", f"tasks/{task['id']}/annotations/", json=body)
        self.connect(pid)
        (backend,) = self.api("GET", "ml", params={"project": pid})
        self.api("POST", f"ml/{backend['id']}/train", json={}, timeout=120)
        return pid

    # --- what the newcomer reads --------------------------------------------------------------------------

    def status(self, pid: int) -> dict[str, Any]:
        answer = requests.get(f"{self.backend_url}/status", params={"project": pid}, timeout=10)
        answer.raise_for_status()
        return dict(answer.json()["projects"][str(pid)])

    def banner(self, day_one: int, annotated: int | None) -> None:
        prefill = self.status(day_one)["prefill"]["summary"]
        second = (
            f"""
  {self.args.annotated} annotated   {self.ls_url}/projects/{annotated}/data
                 {self.args.annotated} tasks carry prepared annotations and Start Training was pressed: the worker
                 trains a version now (a minute or two on a 2-core CPU); the decision is printed below when
                 it ends, with the report at {self.backend_url}/reports/{annotated}
                 (training state: {self.backend_url}/status?project={annotated})"""
            if annotated is not None
            else ""
        )
        sys.stdout.write(f"""
{RUNNING} (logs in {self.logs})

  Label Studio   {self.ls_url}     login {ADMIN} / {PASSWORD}
  Backend        {self.backend_url}/health

  day one        {self.ls_url}/projects/{day_one}/data
                 Open a task: the prediction carries the judge's version but pre-fills no choice, because
                 nothing is proven yet: {prefill}.
                 Label tasks and Submit; after {self.judge_env["TRAIN_MIN_NEW_ANNOTATIONS"]} submissions the worker \
trains (or: Settings > Model > Start Training).{second}

Ctrl-C stops Label Studio, the backend, the worker (its running job too) and Redis if the demo started it.
""")
        sys.stdout.flush()

    def watch(self, annotated: int | None) -> int:
        """Until stopped: fail if a process exits; print the training decision of the annotated project once."""
        told = annotated is None
        while True:
            for proc in self.procs:
                if proc.poll() is not None:
                    say(f"a process exited (code {proc.returncode}); see {self.logs}")
                    return 1
            if not told:
                with contextlib.suppress(requests.RequestException, KeyError, ValueError):
                    told = self.tell_decision(annotated)
            time.sleep(2)

    def tell_decision(self, pid: int) -> bool:
        """Print the project's last training run, if one has ended: True once printed."""
        state = self.status(pid)
        last = state.get("last_run")
        if not last or state.get("running") or state.get("queued"):
            return False
        if last.get("status") == "skipped":
            say(f"training skipped: {last.get('reason')}")
            return True
        if last.get("status") != "done":
            say(f"training failed: {last.get('error') or last}; see {self.logs / 'worker.log'}")
            return True
        sys.stdout.write(f"""
Training done on project {pid}: {"PROMOTED" if last.get("promoted") else "not promoted"}.
  decision   {last.get("decision") or last.get("reason")}
  pre-fill   {state["prefill"]["summary"]}
  report     {self.backend_url}/reports/{pid}
Retrieve Predictions in {self.ls_url}/projects/{pid}/data to see the active version's pre-annotations.
""")
        sys.stdout.flush()
        return True


if __name__ == "__main__":
    if shutil.which("redis-cli") is None:
        raise SystemExit("[demo] redis-server/redis-cli are needed: apt-get install redis-server")
    sys.exit(main())
