"""Soak: N /predict requests over loopback HTTP against the real app (tiny model), memory before/after/peak.

    .venv/bin/python -m benchmarks.soak --requests 10000          # writes benchmarks/SOAK.md and SOAK.json

The loop is ``support/soak.py``; ``tests/test_soak.py`` runs it with a smaller count (marker ``soak``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from support.soak import GROWTH_BOUND_MIB, REPO, run_soak
from support.tiny_model import build_tiny_model


def write_report(result: dict[str, Any], out: Path) -> None:
    (out / "SOAK.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    rows = "\n".join(f"| {k} | {v} |" for k, v in result.items())
    (out / "SOAK.md").write_text(
        "# Soak: /predict over loopback HTTP\n\n"
        f"`.venv/bin/python -m benchmarks.soak --requests {result['requests']}` on "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}: the real app and the tiny test model, a threaded werkzeug "
        f"server in the measuring process, {result['threads']} client threads, 1-4 tasks per request. RSS from "
        "/proc/self/status (VmRSS, VmHWM = peak); *before* is taken after "
        f"{result['warmup_requests']} warm-up requests. Bound: growth <= {GROWTH_BOUND_MIB:.0f} MiB.\n\n"
        "| measure | value |\n|---|---|\n" + rows + "\n",
        encoding="utf-8",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--out", default=str(REPO / "benchmarks"))
    args = parser.parse_args()
    model_dir = build_tiny_model(Path(tempfile.gettempdir()) / "rubric-judge-soak-tiny-qwen3")
    result = run_soak(args.requests, model_dir, threads=args.threads)
    print(json.dumps(result, indent=1))
    write_report(result, Path(args.out))
    return 0 if result["within_bound"] and set(result["statuses"]) == {"200"} else 1


if __name__ == "__main__":
    raise SystemExit(main())
