"""The report's plots: matplotlib figures as inline SVG text (no network, no script). matplotlib is heavy, so it
is imported inside the functions that draw."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from backend.state.registry import version_name


def rater_name(name: Any) -> str:
    """An annotator id as shown: Label Studio exports user ids, which read as labels on their own."""
    text = str(name)
    return f"annotator {text}" if text.isdigit() else text


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    return text[text.index("<svg") :]


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "svg.fonttype": "none", "axes.spines.top": False, "axes.spines.right": False})
    return plt.subplots(figsize=(width, height))


def plot_alpha_by_dimension(rows: Sequence[Mapping[str, Any]], flat: Mapping[str, Any]) -> str:
    fig, ax = _figure(7.5, 3.2)
    names = [r["name"] for r in rows] + ["all (flattened)"]
    judge = [r["judge"]["alpha"] for r in rows] + [flat.get("alpha")]
    ceiling = [r["ceiling"]["alpha"] for r in rows] + [flat.get("ceiling")]
    floor = [r["floor"]["alpha"] for r in rows] + [flat.get("floor")]
    cis = [r["judge"]["ci"] for r in rows] + [flat.get("ci")]
    xs = range(len(names))
    width = 0.26
    for offset, values, label, color in (
        (-width, floor, "base model (floor)", "#b0b0b0"),
        (0, judge, "judge vs humans", "#2f6db5"),
        (width, ceiling, "humans vs humans (ceiling)", "#e39b2d"),
    ):
        ax.bar([x + offset for x in xs], [v if v is not None else 0 for v in values], width, label=label, color=color)
    for x, ci, value in zip(xs, cis, judge, strict=True):
        if ci and value is not None and ci[0] is not None and ci[1] is not None:
            ax.errorbar(
                [x], [value], yerr=[[value - ci[0]], [ci[1] - value]], fmt="none", ecolor="black", capsize=3, lw=1
            )
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(list(xs), names, rotation=15, ha="right")
    ax.set_ylabel("Krippendorff's alpha")
    ax.legend(frameon=False, ncol=3, loc="upper center", bbox_to_anchor=(0.5, 1.18))
    return _svg(fig)


def plot_confusion(row: Mapping[str, Any]) -> str:
    confusion = row.get("confusion") or {}
    labels = [str(x) for x in confusion.get("labels") or []]
    matrix = confusion.get("matrix") or []
    fig, ax = _figure(2.2 + 0.28 * len(labels), 1.9 + 0.28 * len(labels))
    if not labels:
        ax.text(0.5, 0.5, "no data", ha="center", va="center")
        ax.axis("off")
        return _svg(fig)
    ax.imshow(matrix, cmap="Blues")
    peak = max((max(r) for r in matrix if r), default=0) or 1
    for i, line in enumerate(matrix):
        for j, value in enumerate(line):
            ax.text(
                j, i, str(value), ha="center", va="center", fontsize=8, color="white" if value > peak / 2 else "black"
            )
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(max(labels, key=len)) > 2 else 0)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("judge")
    ax.set_ylabel("human consensus")
    ax.set_title(row["name"])
    return _svg(fig)


def plot_agreement_matrix(cell: Mapping[str, Any], title: str) -> str:
    """A heatmap of pairwise α (annotators and the judge); a cell with fewer than ``min_shared`` shared tasks
    is grey and says so, every cell names its number of shared tasks."""
    raters = [rater_name(r) for r in cell.get("raters") or []]
    size = max(1, len(raters))
    fig, ax = _figure(1.6 + 0.75 * size, 1.3 + 0.6 * size)
    if not raters:
        ax.text(0.5, 0.5, "no raters", ha="center", va="center")
        ax.axis("off")
        return _svg(fig)
    values = np.array([[np.nan if v is None else v for v in row] for row in cell["alpha"]], dtype=float)
    reliable = cell["reliable"]
    shown = np.where(np.array(reliable), values, np.nan)
    ax.imshow(np.where(np.eye(size, dtype=bool), np.nan, shown), cmap="RdYlGn", vmin=-0.5, vmax=1.0)
    for i in range(size):
        for j in range(size):
            n = cell["shared"][i][j]
            if i == j:
                ax.add_patch(_patch(j, i, "#ffffff"))
                ax.text(j, i, f"n={n}", ha="center", va="center", fontsize=7, color="#666666")
            elif not reliable[i][j]:
                ax.add_patch(_patch(j, i, "#d9d9d9"))
                ax.text(j, i, f"n={n}\n< {cell['min_shared']}", ha="center", va="center", fontsize=7, color="#555555")
            else:
                text = "–" if np.isnan(values[i, j]) else f"{values[i, j]:.2f}"
                ax.text(j, i, f"{text}\nn={n}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(size), raters, rotation=30, ha="right")
    ax.set_yticks(range(size), raters)
    ax.set_title(title)
    return _svg(fig)


def _patch(x: int, y: int, color: str) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor=color, edgecolor="white")


def plot_losses(history: Sequence[Mapping[str, Any]]) -> str:
    fig, ax = _figure(6.5, 2.8)
    train = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    if train:
        ax.plot(*zip(*train, strict=True), label="training loss", color="#2f6db5", lw=1)
    if val:
        ax.plot(*zip(*val, strict=True), label="validation loss (held-out)", color="#c0392b", marker="o", lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per label token")
    if train or val:
        ax.legend(frameon=False)
    else:  # a feature head has no optimizer steps
        ax.text(
            0.5,
            0.5,
            "no training loss: this version is a feature head",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="#666666",
        )
    return _svg(fig)


def plot_versions(versions: Sequence[Mapping[str, Any]]) -> str:
    fig, ax = _figure(6.5, 2.8)
    xs = [v["number"] for v in versions]
    ax.plot(xs, [v["alpha_flat"] for v in versions], marker="o", color="#2f6db5", label="judge (candidate)")
    ax.plot(
        xs, [v["alpha_base_flat"] for v in versions], ls="--", marker="s", ms=3, color="#888888", label="base model"
    )
    ax.plot(xs, [v["alpha_humans_flat"] for v in versions], ls=":", marker="^", ms=3, color="#e39b2d", label="humans")
    for v in versions:
        if v["alpha_flat"] is not None:
            ax.annotate(
                "promoted" if v["promoted"] else "kept previous",
                (v["number"], v["alpha_flat"]),
                textcoords="offset points",
                xytext=(0, 7),
                ha="center",
                fontsize=7,
                color="#1e7b34" if v["promoted"] else "#a33",
            )
    ax.set_xticks(xs, [version_name(x) for x in xs])
    ax.set_ylabel("flattened alpha")
    ax.legend(frameon=False, fontsize=8)
    return _svg(fig)
