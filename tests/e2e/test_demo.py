"""``make demo`` as a newcomer runs it (``scripts/demo.py``; free ports, a data folder of the test's own and a
Redis database and queue of its own are the only differences): it comes up, says it is running, Label Studio
has both demo projects with their tasks and the backend connected, the day-one tasks carry a v0 prediction
with no pre-filled choice, the annotated project's training run ends with a decision the demo prints; then
Ctrl-C stops everything it started (the autouse fixture fails the test if any of its processes is left).

Artifacts (the demo's output and logs) go to artifacts/e2e-demo/.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from support.e2e.harness import free_port
from tests.conftest import REPO

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO / "artifacts" / "e2e-demo"
TOKEN = "demo0123456789token"  # scripts/demo.py's admin token
ANNOTATED = 20


class Output:
    """The demo's stdout and stderr, read as it goes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.proc = proc
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.proc.poll() is not None:
                raise AssertionError(f"the demo exited ({self.proc.returncode}) before {needle!r}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} within {timeout:.0f} s:\n{self.text()}")
            time.sleep(1)


def test_make_demo_comes_up_shows_the_loop_and_stops_on_ctrl_c(ls_venv: Path, tmp_path: Path) -> None:
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    ls_port, backend_port = free_port(), free_port()
    ls_url = f"http://127.0.0.1:{ls_port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO")},
        "REDIS_URL": "redis://127.0.0.1:6379/12",
        "QUEUE_NAME": f"rj-demo-{uuid.uuid4().hex[:8]}",
    }
    argv = [sys.executable, "scripts/demo.py", "--ls-port", str(ls_port), "--backend-port", str(backend_port)]
    argv += ["--data-dir", str(tmp_path / "demo"), "--annotated", str(ANNOTATED)]
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    out = Output(proc)
    try:
        out.wait_for("rubric-judge demo is running", 900)
        ls = requests.Session()
        ls.headers["Authorization"] = f"Token {TOKEN}"
        projects = {p["title"]: p["id"] for p in ls.get(f"{ls_url}/api/projects/", timeout=30).json()["results"]}
        day_one = projects["rubric-judge demo: day one"]
        annotated = projects[f"rubric-judge demo: {ANNOTATED} annotated"]
        for pid in (day_one, annotated):
            tasks = ls.get(f"{ls_url}/api/tasks/", params={"project": pid, "page_size": 100}, timeout=30).json()
            assert len(tasks["tasks"]) == 30, pid
            (backend,) = ls.get(f"{ls_url}/api/ml", params={"project": pid}, timeout=30).json()
            assert backend["url"] == f"http://127.0.0.1:{backend_port}", backend
        predictions = ls.get(f"{ls_url}/api/predictions/", params={"task__project": day_one}, timeout=30).json()
        predictions = predictions["results"] if isinstance(predictions, dict) else predictions
        assert len(predictions) == 30, predictions[:2]
        # day one: every prediction says which version answered, and pre-fills nothing unproven
        assert {p["model_version"] for p in predictions} == {f"smollm2-135m.p{day_one}.v0"}
        assert all(p["result"] == [] for p in predictions), predictions[:2]
        assert "pre-fills 0 of 6 dimension(s)" in out.text() and "more annotated task(s)" in out.text()
        tasks = ls.get(f"{ls_url}/api/tasks/", params={"project": annotated, "page_size": 100}, timeout=30).json()
        assert sum(1 for t in tasks["tasks"] if t["total_annotations"]) == ANNOTATED
        # the training run the demo started ends, and the demo says what was decided and where the report is
        out.wait_for(f"report     http://127.0.0.1:{backend_port}/reports/{annotated}", 900)
        report = requests.get(f"http://127.0.0.1:{backend_port}/reports/{annotated}.json", timeout=30)
        assert report.ok and report.json()["versions"][0]["decision"] in out.text(), report.text[:500]
        assert proc.poll() is None, "the demo must stay up"
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=90) == 0, out.text()
        out.thread.join(timeout=10)
        assert "[demo] stopped" in out.text(), out.text()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{ls_url}/health", timeout=5)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{backend_port}/health", timeout=5)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        (ARTIFACTS / "demo-output.txt").write_text(out.text())
        logs = tmp_path / "demo" / "logs"
        if logs.is_dir():
            shutil.copytree(logs, ARTIFACTS / "logs", dirs_exist_ok=True)
