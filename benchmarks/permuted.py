"""Does noise pass the pre-fill gate? Labels unrelated to the text, trained with the CLI as a user runs it.

    python benchmarks/permuted.py [--tasks 60] [--seeds 3] [--data-dir ../shared/data]

Draws ``--tasks`` DialSummEval summaries from the training split (seeded, so many dialogues, as a team would
label them), writes them as a JSONL file without any group field (the groups are derived, as for a user), and
runs ``rubric-judge train`` on the real labels and, for each seed, on the same tasks with their annotation sets
permuted across tasks (the annotators still agree with each other, but their labels no longer depend on the
summary). For every run it records which dimensions the version would pre-fill (``PrefillPolicy`` under the
current settings, as ``/predict`` decides) with their intervals, and whether it would be promoted over v0.
The result goes to ``benchmarks/RESULTS.json`` under ``permuted/<tag>``; RESULTS.md is rewritten.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.core.prefill import PrefillPolicy  # noqa: E402
from backend.core.rubric import load_rubric  # noqa: E402
from backend.settings import Settings  # noqa: E402
from benchmarks.quality import DEFAULT_DATA, machine, record_run  # noqa: E402
from benchmarks.usercli import rated_summaries, start, train_cli, write_jsonl  # noqa: E402

log = logging.getLogger("benchmarks.permuted")


def _rows(data_dir: Path, n: int, seed: int) -> list[dict[str, Any]]:
    return random.Random(seed).sample(rated_summaries(data_dir, "train"), n)


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    write_jsonl(path, rows, ("id", "data", "annotations"))


def _train(data: Path, out: Path) -> dict[str, Any]:
    seconds, metrics = train_cli(data, out)
    rubric = load_rubric("summary-quality", Settings.from_env().rubric_dir)
    decisions = PrefillPolicy.from_settings(Settings.from_env()).decide(rubric.dimension_names, metrics["candidate"])
    return {
        "seconds": seconds,
        "evidence": metrics.get("evidence"),
        "alpha_dims": metrics.get("alpha_dims"),
        "promoted": metrics["promoted"],
        "decision": metrics["decision"],
        "prefill": {
            name: {
                "prefilled": d.prefilled,
                "evidence": metrics["candidate"]["dimensions"][name].get("evidence"),
                "reason": d.reason,
            }
            for name, d in decisions.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sample-seed", type=int, default=0, help="which training summaries are drawn")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--tag", default="default")
    args = parser.parse_args(argv)
    if not start(args.data_dir, log):
        return 0
    rows = _rows(Path(args.data_dir), args.tasks, args.sample_seed)
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="permuted-") as tmp:
        work = Path(tmp)
        _write(work / "real.jsonl", rows)
        runs["real"] = _train(work / "real.jsonl", work / "real")
        log.info("real labels: %s", {n: d["prefilled"] for n, d in runs["real"]["prefill"].items()})
        for seed in range(args.seeds):
            sets = [r["annotations"] for r in rows]
            random.Random(seed).shuffle(sets)
            _write(work / f"perm{seed}.jsonl", [r | {"annotations": a} for r, a in zip(rows, sets, strict=True)])
            runs[f"permuted-{seed}"] = _train(work / f"perm{seed}.jsonl", work / f"perm{seed}")
            log.info(
                "permuted %d: %s", seed, {n: d["prefilled"] for n, d in runs[f"permuted-{seed}"]["prefill"].items()}
            )
    permuted = [r for k, r in runs.items() if k.startswith("permuted")]
    run = {
        "dataset": "permuted",
        "tag": args.tag,
        "note": "labels unrelated to the text: annotation sets permuted across the drawn tasks",
        "base_model": Settings.from_env().base_model,
        "command": "python benchmarks/permuted.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "sizes": {"tasks": args.tasks},
        "phases": {f"train {k}": {"seconds": r["seconds"], "peak_rss_mb": 0} for k, r in runs.items()},
        "tasks": args.tasks,
        "groups": len({r["id"].rsplit("-", 1)[0] for r in rows}),
        "machine": machine(),
        "runs": runs,
        "permuted_prefilled": sum(d["prefilled"] for r in permuted for d in r["prefill"].values()),
        "permuted_decisions": sum(len(r["prefill"]) for r in permuted),
        "permuted_promoted": sum(bool(r["promoted"]) for r in permuted),
        "real_prefilled": sum(d["prefilled"] for d in runs["real"]["prefill"].values()),
    }
    record_run(run)
    sys.stdout.write(json.dumps({k: v for k, v in run.items() if k not in ("runs", "machine")}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
