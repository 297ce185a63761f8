"""The report pages: Jinja2 templates in ``backend/reports/templates`` (autoescaped) filled with the report data
and the plots of ``backend.reports.plots``."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from jinja2 import ChainableUndefined, Environment, PackageLoader, select_autoescape

from backend.core.metrics import at_path, finite, shown_columns
from backend.reports.plots import (
    plot_agreement_matrix,
    plot_alpha_by_dimension,
    plot_confusion,
    plot_losses,
    plot_versions,
    rater_name,
)


def fmt_alpha(value: Any) -> str:
    number = finite(value)
    return "–" if number is None else f"{number:.3f}"


def fmt_int(value: Any) -> str:
    number = finite(value)
    return "–" if number is None else f"{int(number):,}"


def _cell(value: Any, kind: str) -> str:
    return fmt_int(value) if kind == "int" else fmt_alpha(value)


@functools.cache
def _templates() -> Any:
    # ChainableUndefined: a key absent from older metrics.json files renders as "–", never fails the page
    env = Environment(
        loader=PackageLoader("backend.reports", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=ChainableUndefined,
    )
    env.filters.update(alpha=fmt_alpha, integer=fmt_int, at=at_path, cell=_cell, rater=rater_name)
    return env


def render_html(report: Mapping[str, Any]) -> str:
    """The report page: self-contained HTML (no script, no network) with inline SVG plots."""
    rows = report.get("dimensions") or []
    matrix = report.get("agreement_matrix") or {}
    cells = ([("all dimensions (flattened)", matrix["flat"])] if matrix.get("flat") else []) + list(
        (matrix.get("dimensions") or {}).items()
    )
    plots = {
        "alpha": plot_alpha_by_dimension(rows, report.get("flat") or {}),
        "matrix": [plot_agreement_matrix(cell, name) for name, cell in cells],
        "confusion": [plot_confusion(row) for row in rows],
        "losses": plot_losses(report.get("history") or []),
        "versions": plot_versions(report.get("versions") or []),
    }
    return _templates().get_template("report.html").render(report=report, plots=plots, columns=shown_columns())


def render_queue(data: Mapping[str, Any]) -> str:
    """What to label next (``Service.label_queue``) as a page with links into Label Studio."""
    return _templates().get_template("queue.html").render(data=data)


def render_index(index: Mapping[str, Any]) -> str:
    """The projects index page."""
    return _templates().get_template("index.html").render(index=index)
