"""One-command demo without Docker: Label Studio + Redis + the backend (embedded SmolLM2) + the worker.

    make demo            (or: .venv/bin/python scripts/demo.py)

Creates a qa-quality project with sample tasks, connects the backend, fetches pre-annotations and prints the
URLs, the login and what to click. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
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


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


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
    subprocess.run([str(REPO / "scripts" / "ensure-redis.sh")], check=True)
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
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str], proc_env: dict[str, str]) -> None:
        log = (LOGS / f"{name}.log").open("wb")
        procs.append(
            subprocess.Popen(argv, env=proc_env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        )

    def stop(*_: object) -> None:
        say("stopping everything the demo started")
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(os.getpgid(proc.pid), signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
        raise SystemExit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
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

Ctrl-C stops Label Studio, the backend and the worker.
""")
    sys.stdout.flush()
    while True:
        for proc in procs:
            if proc.poll() is not None:
                say(f"a process exited (code {proc.returncode}); see {LOGS}")
                stop()
        time.sleep(2)


if __name__ == "__main__":
    if shutil.which("redis-cli") is None:
        raise SystemExit("[demo] redis-server/redis-cli are needed: apt-get install redis-server")
    sys.exit(main())
