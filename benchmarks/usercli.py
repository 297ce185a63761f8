"""What the benchmarks that run the product as a user runs it share: the DialSummEval files in ``../shared/data``
and ``rubric-judge train`` as a subprocess (``benchmarks/readonce.py``, ``benchmarks/permuted.py``, and the data
check of ``benchmarks/curve.py`` and ``benchmarks/readlimit.py``)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def start(data_dir: str | Path, log: logging.Logger) -> bool:
    """Log to stderr with times; True when ``data_dir`` holds DialSummEval, else say so (the caller exits 0)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if (Path(data_dir) / "dialsummeval").is_dir():
        return True
    log.warning("no DialSummEval data under %s: nothing to do", data_dir)
    return False


def rated_summaries(data_dir: Path, split: str) -> list[dict[str, Any]]:
    """The rated summaries of one split (``train``, ``dev``, ``test``: by dialogue), in the file's order."""
    folder = data_dir / "dialsummeval"
    dialogues = set(json.loads((folder / "split.json").read_text(encoding="utf-8"))[split])
    rows = [json.loads(line) for line in (folder / "ratings.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return [r for r in rows if r["id"].rsplit("-", 1)[0] in dialogues]


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str] | None = None) -> Path:
    """``rows`` as the JSONL file a user gives ``rubric-judge train`` (only ``fields`` when given)."""
    picked = [dict(r) if fields is None else {k: r[k] for k in fields} for r in rows]
    path.write_text("\n".join(json.dumps(r) for r in picked) + "\n", encoding="utf-8")
    return path


def train_cli(data: Path, out: Path, env: Mapping[str, str] | None = None) -> tuple[float, dict[str, Any]]:
    """``rubric-judge train --rubric summary-quality`` on ``data`` into ``out`` (environment: this process's plus
    ``env``): its wall time in seconds and its ``metrics.json``. A failed run stops the benchmark with its
    stderr."""
    started = time.monotonic()
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "rubric-judge"), "train", "--rubric", "summary-quality"]
        + ["--data", str(data), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if done.returncode:
        raise SystemExit(f"rubric-judge train failed on {data}:\n{done.stderr[-3000:]}")
    seconds = round(time.monotonic() - started, 1)
    return seconds, json.loads((out / "metrics.json").read_text(encoding="utf-8"))
