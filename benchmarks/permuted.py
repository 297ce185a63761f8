"""Does noise pass the pre-fill gate? Labels unrelated to the text, trained with the CLI as a user runs it.

    python benchmarks/permuted.py [--tasks 60] [--dialogues 0] [--seeds 3] [--data-dir ../shared/data]

Draws ``--tasks`` DialSummEval summaries from the training split (seeded, so many dialogues, as a team would
label them; with ``--dialogues N``, N dialogues and ``tasks / N`` summaries of each, as a new project's first
dozen tasks in a handful of groups: ``--tasks 12 --dialogues 6 --seeds 20`` is issue 33's check), writes them
as a JSONL file without any group field (the groups are derived, as for a user), and
runs ``rubric-judge train`` on the real labels and, for each seed, on the same tasks with their annotation sets
permuted across tasks (the annotators still agree with each other, but their labels no longer depend on the
summary). For every run it records which dimensions the version would pre-fill (``PrefillPolicy`` under the
current settings, as ``/predict`` decides) with their intervals, which heads found no signal, and whether it
would be promoted over v0. Every run after the first reads the same tasks, so the feature store
(``MODEL_DIR/features``) serves their features and a run costs the CLI's start and the head's fit.
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


def _rows(data_dir: Path, n: int, seed: int, dialogues: int = 0) -> list[dict[str, Any]]:
    """``n`` training summaries drawn at random, or from ``dialogues`` dialogues drawn at random (``n //
    dialogues`` summaries of each)."""
    rng = random.Random(seed)
    rows = rated_summaries(data_dir, "train")
    if not dialogues:
        return rng.sample(rows, n)
    by_dialogue: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_dialogue.setdefault(row["id"].rsplit("-", 1)[0], []).append(row)
    chosen = rng.sample(sorted(by_dialogue), dialogues)
    return [row for d in chosen for row in rng.sample(by_dialogue[d], n // dialogues)]


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
        "no_signal": sorted(n for n, e in metrics["candidate"]["dimensions"].items() if e.get("head_constant")),
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
    parser.add_argument("--dialogues", type=int, default=0, help="draw the tasks from this many dialogues")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sample-seed", type=int, default=0, help="which training summaries are drawn")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--tag", default="default")
    args = parser.parse_args(argv)
    if not start(args.data_dir, log):
        return 0
    rows = _rows(Path(args.data_dir), args.tasks, args.sample_seed, args.dialogues)
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
        "sizes": {"tasks": len(rows)},
        "phases": {f"train {k}": {"seconds": r["seconds"], "peak_rss_mb": 0} for k, r in runs.items()},
        "tasks": len(rows),
        "groups": len({r["id"].rsplit("-", 1)[0] for r in rows}),
        "machine": machine(),
        "runs": runs,
        "permuted_prefilled": sum(d["prefilled"] for r in permuted for d in r["prefill"].values()),
        "permuted_decisions": sum(len(r["prefill"]) for r in permuted),
        "permuted_promoted": sum(bool(r["promoted"]) for r in permuted),
        "permuted_no_signal": sum(len(r["no_signal"]) for r in permuted),
        "permuted_versions": len(permuted),
        "real_prefilled": sum(d["prefilled"] for d in runs["real"]["prefill"].values()),
    }
    record_run(run)
    sys.stdout.write(json.dumps({k: v for k, v in run.items() if k not in ("runs", "machine")}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
