"""The README's figures are the benchmarks' figures, and its defaults are the code's.

Convention: a paragraph of README.md (lines between blank lines: a sentence group, a list item, a table) that
quotes a benchmark figure names where it comes from: run `TAG` (``benchmarks/RESULTS.json``, key ``*/TAG``) or
section `NAME` (``benchmarks/SPEED.json``). ``FIGURES`` holds, for every quoted figure, a pattern that finds it
(whitespace collapsed, one group per number), the source its paragraph must name and the number's path in that
source. The number must equal the JSON's value to the digits written (``0.592`` for 0.59169, ``−0.59`` for
-0.5947). Every other decimal number in the README's prose must be listed in ``NOT_FIGURES``, so a new figure
cannot be quoted without a row here, and a figure that moves in the JSON fails this test until the README moves.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields
from functools import cache
from typing import Any

import pytest

from backend.core.prefill import PrefillPolicy
from backend.settings import Settings
from support.curves import curve_key
from tests.conftest import REPO
from tests.test_docs import shown

README = REPO / "README.md"
BENCH = REPO / "benchmarks"

#: a source label as the README writes it -> (JSON file under benchmarks/, path to the source's record)
SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "run `d5-grouped`": ("RESULTS.json", ("dialsummeval/d5-grouped",)),
    "run `d6-gates`": ("RESULTS.json", ("dialsummeval/d6-gates",)),
    "run `g4-default`": ("RESULTS.json", ("goemotions/g4-default",)),
    "run `g3-default`": ("RESULTS.json", ("goemotions/g3-default",)),
    "run `d7-lexical`": ("RESULTS.json", ("dialsummeval/d7-lexical",)),
    "run `c5-test-3a`": ("RESULTS.json", ("curve/c5-test-3a", "curves")),
    "run `c5-test-3a-before`": ("RESULTS.json", ("curve/c5-test-3a-before", "curves")),
    "run `c5-test-1a`": ("RESULTS.json", ("curve/c5-test-1a", "curves")),
    "run `d8-read-one-pass`": ("RESULTS.json", ("dialsummeval/d8-read-one-pass",)),
    "run `d8-read-sequential`": ("RESULTS.json", ("dialsummeval/d8-read-sequential",)),
    "section `readlimit`": ("SPEED.json", ("readlimit",)),
    "run `d8-read-one-pass-bf16`": ("RESULTS.json", ("dialsummeval/d8-read-one-pass-bf16",)),
    "run `r1-dialsummeval`": ("RESULTS.json", ("reads/r1-dialsummeval", "results")),
    "section `contention`": ("SPEED.json", ("contention",)),
    "section `readonce`": ("SPEED.json", ("readonce", "sizes")),
}

D5_TEST = "systems/{}/test/alpha_dims"
CURVE_SIZES = ("10", "20", "40", "80", "160", "980")
CONTENTION = (
    "no training",
    "training, defaults: WORKER_NICE=10, WORKER_PAUSE_FOR_SERVING=auto",
    "training, WORKER_NICE=10, WORKER_PAUSE_FOR_SERVING=never (before the pause)",
)


def curve_row(title: str, run: str, order: str, stat: str) -> tuple[str, str, tuple[str, ...]]:
    """A ``FIGURES`` row for one line of a learning-curve table: ``| title | x | x | ... |``, one number per
    size of ``CURVE_SIZES``, each ``order/<size>/stat`` of run ``run``'s curves."""
    return (
        rf"\| {re.escape(title)}" + r" \| (\S+)" * len(CURVE_SIZES) + r" \|",
        f"run `{run}`",
        tuple(f"{order}/{n}/{stat}" for n in CURVE_SIZES),
    )


#: (pattern with one group per quoted number, source label, one path per group, relative to the source)
FIGURES: list[tuple[str, str, tuple[str, ...]]] = [
    # day one: why v0 pre-fills nothing
    (
        r"on DialSummEval dev its α per dimension is (\S+), the majority label's (\S+) \(run `d8-read-one-pass`",
        "run `d8-read-one-pass`",
        ("systems/v0/dev/alpha_dims", "systems/majority/dev/alpha_dims"),
    ),
    # the learning curve table
    curve_row("test α per dimension", "c5-test-3a", "random", "alpha_dims"),
    curve_row("dimensions pre-filled, of 4", "c5-test-3a", "random", "prefilled"),
    (
        r"annotators of this data agree with each other at α (\S+) to (\S+) per dimension",
        "run `d5-grouped`",
        ("humans_test/fluency/interval", "humans_test/consistency/interval"),
    ),
    (
        r"the same curve stood at (\S+) at 40 tasks and (\S+) at 80",
        "run `c5-test-3a-before`",
        ("random/40/alpha_dims", "random/80/alpha_dims"),
    ),
    (
        r"order `diverse`\) reached (\S+) at 40 tasks and (\S+) at 80, against (\S+) and (\S+) in random order",
        "run `c5-test-3a`",
        ("diverse/40/alpha_dims", "diverse/80/alpha_dims", "random/40/alpha_dims", "random/80/alpha_dims"),
    ),
    # the one-annotator curve table
    curve_row("test α per dimension, random order", "c5-test-1a", "random", "alpha_dims"),
    curve_row("test α per dimension, the queue's order", "c5-test-1a", "diverse", "alpha_dims"),
    curve_row("dimensions pre-filled of 4, random order", "c5-test-1a", "random", "prefilled"),
    # today's default on the full training split
    (
        r"test α per dimension (\S+) \(dev (\S+), against",
        "run `d7-lexical`",
        ("systems/adapter/test/alpha_dims", "systems/adapter/dev/alpha_dims"),
    ),
    (r"against (\S+) without them in run `d6-gates`", "run `d6-gates`", ("systems/adapter/dev/alpha_dims",)),
    (
        r"Δα coherence \+(\S+), consistency \+(\S+), fluency \+(\S+), relevance \+(\S+)\)",
        "run `d7-lexical`",
        tuple(
            f"systems/adapter/test/dimensions/{d}/delta_alpha"
            for d in ("coherence", "consistency", "fluency", "relevance")
        ),
    ),
    (r"in (\S+) s with the features in the store", "run `d7-lexical`", ("wall_seconds",)),
    # the one-pass read
    (
        r"the head is the same, test α per dimension (\S+), and reading the 980 training summaries' features took\s+"
        r"(\S+) s",
        "run `d8-read-one-pass`",
        ("systems/adapter/test/alpha_dims", "training/feature_seconds"),
    ),
    (r"against (\S+) s with the sequential read", "run `d8-read-sequential`", ("training/feature_seconds",)),
    (
        r"`MODEL_PRECISION=bf16` read them in (\S+) s, and its head reached test α per dimension (\S+)",
        "run `d8-read-one-pass-bf16`",
        ("training/feature_seconds", "systems/adapter/test/alpha_dims"),
    ),
    (r"v0's `/predict` at\s+(\S+) times the speed", "section `readlimit`", ("predict_over_plain",)),
    # classification
    (
        r"reached dev macro-F1 (\S+) at its learning rate, 5e-4 \(run `g4-default`, (\S+) s of training",
        "run `g4-default`",
        ("systems/adapter/test/macro_f1", "training/seconds"),
    ),
    (
        r"and (\S+) at 2e-4 \(run `g3-default`, (\S+) s",
        "run `g3-default`",
        ("systems/adapter/test/macro_f1", "training/seconds"),
    ),
    # the default run on the full training split
    (
        r"on test its α per dimension is (\S+) \(flattened (\S+)\), against (\S+) for TF-IDF \+ ridge, (\S+) for "
        r"the majority label and (\S+) for `v0`",
        "run `d5-grouped`",
        (
            D5_TEST.format("adapter"),
            "systems/adapter/test/alpha_flat",
            D5_TEST.format("tfidf_ridge"),
            D5_TEST.format("majority"),
            D5_TEST.format("v0"),
        ),
    ),
    (
        r"The whole benchmark run took (\S+) s on 2 CPU cores, (\S+) s of it reading",
        "run `d5-grouped`",
        ("wall_seconds", "training/feature_seconds"),
    ),
    (
        r"training split \((\S+) tasks in (\S+) dialogues, run `d5-grouped`\)",
        "run `d5-grouped`",
        ("decisions/evidence/tasks", "decisions/evidence/groups"),
    ),
    # speed
    (
        r"took (\S+) s for 1,010 tasks, against (\S+) s for the 1,000 read cold",
        "section `readonce`",
        ("1000/warm_all_but_10/seconds", "1000/cold/seconds"),
    ),
    (
        r"a 10-task `/predict` took (\S+) s \((\S+) s with no job at all\) instead of (\S+) s without the pause, "
        r"and a 30-task request (\S+) s \((\S+) s\) instead of (\S+) s",
        "section `contention`",
        (
            f"{CONTENTION[1]}/predict_10_tasks_p50_s",
            f"{CONTENTION[0]}/predict_10_tasks_p50_s",
            f"{CONTENTION[2]}/predict_10_tasks_p50_s",
            f"{CONTENTION[1]}/predict_30_tasks_s",
            f"{CONTENTION[0]}/predict_30_tasks_s",
            f"{CONTENTION[2]}/predict_30_tasks_s",
        ),
    ),
]

#: decimal numbers in the README's prose that are not benchmark figures (versions, a paper id, a default)
NOT_FIGURES = (
    "Python 3.11",
    "arXiv:2604.00586",
    "Qwen3-1.7B",
    "default 0.2 of the groups",
    "about 0.64",  # a published BERT-base figure (the anchor), not ours
    "172.16/12, 192.168/16",  # private address ranges
)

DECIMAL = re.compile(r"(?<![\d.])[−-]?\d[\d,]*\.\d+(?![.\d])")


@cache
def paragraphs() -> tuple[str, ...]:
    """README.md's prose, one string per block between blank lines (whitespace collapsed), code blocks left out."""
    text = re.sub(r"^```.*?^```", "", README.read_text(encoding="utf-8"), flags=re.S | re.M)
    return tuple(" ".join(block.split()) for block in re.split(r"\n\s*\n", text) if block.strip())


@cache
def load(name: str) -> Any:
    return json.loads((BENCH / name).read_text(encoding="utf-8"))


def lookup(source: str, path: str) -> Any:
    file, base = SOURCES[source]
    value = load(file)
    for key in [*base, *path.split("/")]:
        assert isinstance(value, dict) and key in value, f"{file}: no {key!r} on the way to {base} {path}"
        value = value[key]
    return value


def number(written: str) -> tuple[float, int]:
    """The value and the decimal places of a figure as written (``−0.59``, ``1,694``)."""
    text = written.replace("−", "-").replace(",", "")
    assert re.fullmatch(r"-?\d+(\.\d+)?", text), f"not a number: {written!r}"
    return float(text), len(text.partition(".")[2])


@pytest.mark.parametrize("pattern, source, paths", FIGURES, ids=[f"{s}: {p[0]}" for _, s, p in FIGURES])
def test_each_quoted_figure_names_its_run_and_equals_the_json(pattern, source, paths):
    found = [(block, m) for block in paragraphs() for m in re.finditer(pattern, block)]
    assert found, f"README.md no longer quotes {pattern!r}: update the README or remove the row from FIGURES"
    for block, match in found:
        assert source in block, f"the paragraph quoting {match.group(0)!r} does not name its source {source}"
        assert len(match.groups()) == len(paths)
        for written, path in zip(match.groups(), paths, strict=True):
            value, places = number(written)
            expected = lookup(source, path)
            assert isinstance(expected, int | float), (source, path, expected)
            assert abs(value - expected) <= 0.5 * 10**-places + 1e-9, (
                f"README.md says {written} where {SOURCES[source][0]} ({source}, {path}) has {expected}"
            )


def test_every_decimal_figure_in_the_readme_is_checked():
    unchecked = []
    for block in paragraphs():
        covered = [
            m.span(i)
            for pattern, _, _ in FIGURES
            for m in re.finditer(pattern, block)
            for i in range(1, 1 + len(m.groups()))
        ]
        prose = block
        for allowed in NOT_FIGURES:
            prose = prose.replace(allowed, " " * len(allowed))
        prose = re.sub(r"`[^`]*`", lambda m: " " * len(m.group(0)), prose)  # inline code is not a figure
        for m in DECIMAL.finditer(prose):
            if not any(start <= m.start() and m.end() <= end for start, end in covered):
                unchecked.append((m.group(0), block[max(0, m.start() - 60) : m.end() + 20]))
    assert unchecked == [], f"figures in README.md with no row in FIGURES (tests/test_readme.py): {unchecked}"


def test_every_run_and_section_the_readme_names_exists():
    text = " ".join(paragraphs())
    runs = set(re.findall(r"\brun `([^`]+)`", text))
    known = {key.partition("/")[2] for key in load("RESULTS.json")}
    assert runs - known == set(), f"README.md names runs that benchmarks/RESULTS.json does not have: {runs - known}"
    sections = set(re.findall(r"\bsection `([^`]+)`", text))
    assert sections - set(load("SPEED.json")) == set(), "README.md names sections that SPEED.json does not have"
    assert {f"run `{r}`" for r in runs} | {f"section `{s}`" for s in sections} <= set(SOURCES), (
        "a source the README names has no entry in SOURCES, so its figures are not checked"
    )


@pytest.mark.parametrize("tag", ["c5-test-3a", "c5-test-3a-before", "c5-test-1a"])
def test_the_curve_runs_quoted_are_the_curves_in_curve_json(tag):
    """The README links CURVE.json for the curve figures: it must hold what the runs it quotes recorded, under
    the curve's key and the variant's name (the base model, then the levers set against the default)."""
    run = load("RESULTS.json")[f"curve/{tag}"]
    variant = " ".join([run["base_model"], *run.get("levers", [])])
    curves = load("CURVE.json")[curve_key(run["split"], run["annotators"])][variant]
    for order, points in run["curves"].items():
        assert curves[order] == points, f"CURVE.json's {order} curve is not run {tag}'s"


def test_defaults_the_readme_quotes_are_the_defaults():
    """``NAME` (value)`` and ``NAME=value`, the default`` in the README name Settings' defaults."""
    defaults = {f.name.upper(): shown(getattr(Settings(), f.name)) for f in fields(Settings)}
    text = " ".join(paragraphs())
    quoted = re.findall(r"`([A-Z][A-Z0-9_]+)` \(([\w.]+)\)", text)
    quoted += re.findall(r"`([A-Z][A-Z0-9_]+)=([\w.]+)`, the default", text)
    assert quoted, "the pattern no longer finds the defaults the README quotes"
    wrong = [(name, value, defaults[name]) for name, value in quoted if name in defaults and value != defaults[name]]
    assert wrong == [], f"README.md quotes defaults that are not Settings' (name, README, code): {wrong}"


def test_the_day_one_reason_the_readme_quotes_is_the_code_s():
    reason = PrefillPolicy.from_settings(Settings()).unevaluated_decision().reason
    assert f'"{reason}"' in " ".join(paragraphs()), f"README.md should quote v0's reason on day one: {reason}"
