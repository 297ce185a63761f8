"""Label Studio's API, as the backend and the worker read it: one label-studio-sdk ``LabelStudio`` client
(it takes a legacy token or a personal access token, and refreshes a PAT's access token itself), a project's
tasks page by page with their annotations and predictions, and error messages that say what to fix."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

PAGE_SIZE = 100


class LabelStudioError(RuntimeError):
    """Label Studio cannot be read; ``transient`` when retrying may help (unreachable, 5xx, 429)."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def label_studio_client(url: str, api_key: str) -> Any:
    """label-studio-sdk's ``LabelStudio`` client (legacy tokens and personal access tokens)."""
    if not api_key:
        raise LabelStudioError(
            "LABEL_STUDIO_API_KEY is not set: rubric-judge needs a Label Studio token "
            "to read projects (Account & Settings > Access Token)"
        )
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=url, api_key=api_key, timeout=120)


def field(item: Any, name: str, default: Any = None) -> Any:
    if isinstance(item, Mapping):
        return item.get(name, default)
    value = getattr(item, name, default)
    if value is default and getattr(item, "model_extra", None):
        value = item.model_extra.get(name, default)
    return value


def _plain(value: Any) -> Any:
    """SDK models (and lists of them) as plain dicts and lists."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if hasattr(value, "dict") and not isinstance(value, Mapping):
        return value.dict()
    return value


def _as_task(item: Any) -> dict[str, Any]:
    """An SDK task object (or a dict) as a plain dict with the fields pre-annotation reads."""
    names = (
        "id",
        "data",
        "annotations",
        "predictions",
        "total_annotations",
        "cancelled_annotations",
        "total_predictions",
        "is_labeled",
    )
    return {name: _plain(field(item, name)) for name in names}


def list_tasks(client: Any, project: int, page_size: int = PAGE_SIZE) -> Iterator[dict[str, Any]]:
    """Every task of ``project`` with its annotations and predictions, page by page."""
    page, seen = 1, 0
    while True:
        try:
            pager = client.tasks.list(project=project, page=page, page_size=page_size, fields="all")
        except Exception as exc:
            if getattr(exc, "status_code", None) == 404 and page > 1:  # past the last page
                return
            raise
        items = list(pager.items or [])
        for item in items:
            yield _as_task(item)
        seen += len(items)
        total = field(pager.response, "total")
        if not items or (isinstance(total, int) and seen >= total):
            return
        page += 1


def is_annotated(task: Mapping[str, Any]) -> bool:
    return bool(
        task.get("annotations")
        or task.get("total_annotations")
        or task.get("cancelled_annotations")
        or task.get("is_labeled")
    )


def task_predictions(client: Any, task: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The task's stored predictions as ``{"model_version", "score", "empty"}`` (asked separately when the task
    list left them out); ``empty``: no result and no score (a version that pre-fills no dimension)."""
    predictions = task.get("predictions")
    if not isinstance(predictions, list) or (not predictions and task.get("total_predictions")):
        if not task.get("total_predictions"):
            return []
        predictions = list(client.predictions.list(task=int(task["id"])))
    return [
        {
            "model_version": field(p, "model_version"),
            "score": field(p, "score"),
            "empty": field(p, "result") == [] and not field(p, "score"),
        }
        for p in predictions
    ]


def prediction_versions(client: Any, task: Mapping[str, Any]) -> set[str]:
    """Model versions of the task's existing predictions."""
    return {str(p["model_version"]) for p in task_predictions(client, task) if p["model_version"] is not None}


def describe_error(exc: Exception, url: str, project: int) -> str:
    status = getattr(exc, "status_code", None)
    hint = {
        401: "the token was rejected (LABEL_STUDIO_API_KEY)",
        403: "the token's user may not write here",
        404: f"project {project} does not exist at {url}",
    }.get(status or 0, "")
    detail = f"HTTP {status}: {str(getattr(exc, 'body', ''))[:200]}" if status else f"{type(exc).__name__}: {exc}"
    return detail + (f"; {hint}" if hint else "")
