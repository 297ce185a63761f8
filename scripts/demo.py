"""One-command demo without Docker: Label Studio + Redis + the backend (embedded SmolLM2) + the worker.

    make demo            (or: .venv/bin/python scripts/demo.py)

Creates a qa-quality project with sample tasks, connects the backend, fetches pre-annotations and prints the
URLs, the login and what to click. Ctrl-C (or SIGTERM) stops everything it started: Label Studio, the backend,
the worker (which stops its running job's work-horse itself) and Redis if no Redis answered before; a second
Ctrl-C kills what is still running without waiting.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
SAMPLE_TASKS = REPO / "tests" / "e2e" / "qa_tasks.json"
ADMIN, PASSWORD, TOKEN = "admin@example.com", "demo-password", "demo0123456789token"
#: How long the processes get to stop after SIGTERM before SIGKILL (the worker needs up to 10 s to stop a
#: work-horse that ignores SIGTERM: worker.horse.HORSE_STOP_GRACE_S).
STOP_GRACE_S = 20.0
#: Where scripts/ensure-redis.sh looks for Redis (and starts one if none answers).
REDIS_HOST, REDIS_PORT = os.environ.get("REDIS_HOST", "127.0.0.1"), os.environ.get("REDIS_PORT", "6379")


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def redis_answers() -> bool:
    ping = subprocess.run(["redis-cli", "-h", REDIS_HOST, "-p", REDIS_PORT, "ping"], capture_output=True, text=True)
    return ping.returncode == 0 and ping.stdout.strip() == "PONG"


def say(message: str) -> None:
    sys.stderr.write(f"[demo] {message}\n")
    sys.stderr.flush()


def wait(url: str, what: str, timeout: float, procs: list[subprocess.Popen[bytes]], auth: tuple | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit(f"[demo] a process exited while waiting for {what}; see the logs in {LOGS}")
        try:
            if requests.get(url, timeout=2, auth=auth).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise SystemExit(f"[demo] {what} did not answer within {timeout:.0f} s; see the logs in {LOGS}")


LOGS = REPO / "artifacts" / "demo"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ls-port", type=int, default=8080)
    parser.add_argument("--backend-port", type=int, default=9090)
    args = parser.parse_args()
    for port in (args.ls_port, args.backend_port):
        if not port_free(port):
            raise SystemExit(f"[demo] port {port} is busy; pass --ls-port/--backend-port")
    LOGS.mkdir(parents=True, exist_ok=True)
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
        return run_demo(args, ls_venv, procs)
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


def run_demo(args: argparse.Namespace, ls_venv: str, procs: list[subprocess.Popen[bytes]]) -> int:
    """Start Label Studio, the backend and the worker (into ``procs``), set up the demo project, then watch."""
    data = REPO / ".cache" / "demo"
    ls_url, backend_url = f"http://127.0.0.1:{args.ls_port}", f"http://127.0.0.1:{args.backend_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO")}
    ls_env = {
        **env,
        "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",
        "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data / "ls"),
        "LABEL_STUDIO_USERNAME": ADMIN,
        "LABEL_STUDIO_PASSWORD": PASSWORD,
        "LABEL_STUDIO_USER_TOKEN": TOKEN,
    }
    judge_env = {
        **env,
        "LABEL_STUDIO_URL": ls_url,
        "LABEL_STUDIO_API_KEY": TOKEN,
        "RUBRIC": "qa-quality",
        "MODEL_DIR": str(data / "models"),
        "TRAIN_MIN_NEW_ANNOTATIONS": env.get("TRAIN_MIN_NEW_ANNOTATIONS", "10"),
    }
    bin_dir = REPO / ".venv" / "bin"

    def start(name: str, argv: list[str], proc_env: dict[str, str]) -> None:
        log = (LOGS / f"{name}.log").open("wb")
        procs.append(
            subprocess.Popen(argv, env=proc_env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        )

    say(f"starting Label Studio 1.23.2 on {ls_url} (first start migrates its database: about a minute)")
    start(
        "label-studio",
        [
            f"{ls_venv}/bin/label-studio",
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "-p",
            str(args.ls_port),
            "--data-dir",
            str(data / "ls"),
        ],
        ls_env,
    )
    say(f"starting the backend on {backend_url} and the worker")
    start(
        "backend",
        [str(bin_dir / "rubric-judge"), "serve", "--host", "127.0.0.1", "--port", str(args.backend_port)],
        judge_env,
    )
    start("worker", [str(bin_dir / "rubric-judge"), "worker"], judge_env)
    wait(f"{ls_url}/health", "Label Studio", 600, procs)
    wait(f"{backend_url}/health", "the backend", 600, procs)

    ls = requests.Session()
    ls.headers["Authorization"] = f"Token {TOKEN}"
    projects = ls.get(f"{ls_url}/api/projects/", timeout=30).json()
    projects = projects.get("results", projects) if isinstance(projects, dict) else projects
    project = next((p for p in projects if p["title"] == "rubric-judge demo"), None)
    if project is None:
        xml = subprocess.run(
            [str(bin_dir / "rubric-judge"), "label-config", "qa-quality"], check=True, capture_output=True, text=True
        ).stdout
        project = ls.post(
            f"{ls_url}/api/projects/", json={"title": "rubric-judge demo", "label_config": xml}, timeout=30
        ).json()
        tasks = [{"data": t["data"]} for t in json.loads(SAMPLE_TASKS.read_text())]
        ls.post(f"{ls_url}/api/projects/{project['id']}/import", json=tasks, timeout=60).raise_for_status()
        ml = ls.post(
            f"{ls_url}/api/ml",
            json={
                "url": backend_url,
                "project": project["id"],
                "title": "rubric-judge",
                "is_interactive": False,
                "auth_method": "NONE",
            },
            timeout=60,
        )
        ml.raise_for_status()
        say("retrieving pre-annotations for the sample tasks (about 30 s on a 2-core CPU)")
        setup = requests.post(
            f"{backend_url}/setup", json={"project": f"{project['id']}.0", "schema": xml}, timeout=10
        ).json()
        ids = sorted(
            t["id"]
            for t in ls.get(
                f"{ls_url}/api/tasks/", params={"project": project["id"], "page_size": 100}, timeout=30
            ).json()["tasks"]
        )
        for start in range(0, len(ids), 6):  # small batches stay far below Label Studio's 100 s timeout
            ls.post(
                f"{ls_url}/api/dm/actions",
                params={"id": "retrieve_tasks_predictions", "project": project["id"]},
                json={"selectedItems": {"all": False, "included": ids[start : start + 6]}},
                timeout=120,
            ).raise_for_status()
        ls.patch(
            f"{ls_url}/api/projects/{project['id']}/", json={"model_version": setup["model_version"]}, timeout=30
        ).raise_for_status()
    pid = project["id"]
    sys.stdout.write(f"""
rubric-judge demo is running (logs in {LOGS})

  Label Studio   {ls_url}/projects/{pid}/data     login {ADMIN} / {PASSWORD}
  Backend        {backend_url}/health
  Report         {backend_url}/reports/{pid}   (after the first training run)

What to click:
  1. Open a task: the judge's scores for the six dimensions are pre-filled. Correct them and Submit.
  2. After {judge_env["TRAIN_MIN_NEW_ANNOTATIONS"]} submissions the worker retrains
     (or: Settings > Model > the backend's menu > Start Training).
  3. Watch {backend_url}/status?project={pid}; when it is done, open the report and
     Retrieve Predictions again: new predictions carry the new version.

Ctrl-C stops Label Studio, the backend, the worker (its running job too) and Redis if the demo started it.
""")
    sys.stdout.flush()
    while True:
        for proc in procs:
            if proc.poll() is not None:
                say(f"a process exited (code {proc.returncode}); see {LOGS}")
                return 1
        time.sleep(2)


if __name__ == "__main__":
    if shutil.which("redis-cli") is None:
        raise SystemExit("[demo] redis-server/redis-cli are needed: apt-get install redis-server")
    sys.exit(main())
