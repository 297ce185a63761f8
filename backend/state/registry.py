"""The one owner of a project's state: its rubric (remembered, and chosen here for every path), its versions'
names (``<base>.p<project>.v<N>``, the adapter name ``p<project>_v<N>``), folders and staging, the base model's
evaluation (``v0.json``) and the active version (in Redis, mirrored on disk). Nothing else spells these.

Layout under ``MODEL_DIR/<base model name>/`` (so switching BASE_MODEL never mixes versions)::

    <project>/v<N>/            one version (a head or a LoRA adapter, metrics.json, data snapshot)
    <project>/v0.json          the base model's evaluation on the latest training run's evidence tasks
    <project>/ACTIVE           the active version number (written to a temp file, then renamed)
    <project>/RUBRIC           the rubric name the project was set up with

A version folder is complete when it exists: training writes ``.v<N>.tmp-*`` (``staging_folder``) and renames
it into place.
Redis holds the same pointers so that every gunicorn worker reads the current state on every request;
when Redis is unreachable the disk copy answers (and a warning is logged).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.core.labeling import ParsedConfig, match_rubric
from backend.core.rubric import Rubric
from backend.state.redis_conn import redis_key

log = logging.getLogger(__name__)

PROJECT_RE = re.compile(r"^[0-9]{1,12}$")
VERSION_DIR_RE = re.compile(r"^v([0-9]{1,6})$")
VERSION_NUMBER_RE = re.compile(r"^[0-9]{1,6}$")
PARTIAL_RE = re.compile(r"^\.v[0-9]{1,6}\.tmp-[A-Za-z0-9_]+$")
BASE_EVALUATION = "v0.json"


class RegistryError(ValueError):
    """A project id or version name is invalid."""


def parse_project(raw: object) -> str:
    """The project id from Label Studio's ``"<id>.<created_ts>"`` (or a bare id); ASCII digits only, so it is
    always a plain folder name under MODEL_DIR (never ``..``, a path, or a non-ASCII digit)."""
    if isinstance(raw, bool) or raw is None:
        raise RegistryError("missing project id")
    if not isinstance(raw, int | str):
        raise RegistryError(f'project id must be a number or a string like "12.1712586036", got {type(raw).__name__}')
    text = str(raw).split(".", 1)[0].strip()
    if not PROJECT_RE.fullmatch(text):
        raise RegistryError(f"project id {str(raw)[:40]!r} is not a number")
    return str(int(text))


def version_name(number: int) -> str:
    """A version's short name and folder name: ``v<N>`` (``v0``: the base model)."""
    return f"v{number}"


def parse_version(raw: object) -> int | None:
    """A version number from a number or a name (``2``, ``"2"``, ``"v2"``, ``"<base>.p3.v2"``); None when it is
    neither (ASCII digits only: int() would also take ``' 2'``, ``'٢'`` or 2.7)."""
    if isinstance(raw, str) and raw.rsplit(".", 1)[-1].startswith("v"):
        raw = raw.rsplit(".", 1)[-1][1:]
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and VERSION_NUMBER_RE.fullmatch(raw):
        return int(raw)
    return None


def staging_folder(destination: Path) -> Path:
    """A new, empty temporary folder beside ``destination`` (``.v<N>.tmp-*`` for a version folder), to be renamed
    into place once complete; a killed run's leftovers match ``PARTIAL_RE`` (``Registry.remove_partial``)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.tmp-"))


@dataclass(frozen=True)
class VersionInfo:
    project: str
    number: int
    model_version: str
    path: Path | None
    metrics: dict[str, Any] | None
    active: bool


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Registry:
    """Versions and active pointers for every project of one base model."""

    def __init__(self, model_dir: Path, base_name: str, redis: Any | None = None) -> None:
        self.model_dir = model_dir
        self.base_name = base_name
        self.redis = redis
        self._remembered: dict[str, str] = {}  # project -> rubric this process wrote (remember_rubric)

    # --- names and paths -------------------------------------------------------------------------

    def model_version(self, project: str, number: int) -> str:
        return f"{self.base_name}.p{project}.{version_name(number)}"

    @staticmethod
    def adapter_name(project: str, number: int) -> str:
        """The name a version is attached under in a ``Judge`` (``Judge.load_adapter``)."""
        return f"p{project}_v{number}"

    @property
    def root(self) -> Path:
        """``MODEL_DIR/<base model name>``: every project's versions for this base model."""
        return self.model_dir / self.base_name

    def project_dir(self, project: str) -> Path:
        project = parse_project(project)
        path = (self.root / project).resolve()
        if path.parent != self.root.resolve():
            raise RegistryError(f"project id {project!r} escapes MODEL_DIR")
        return path

    def version_dir(self, project: str, number: int) -> Path:
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise RegistryError(f"version {number!r} is not a positive integer")
        return self.project_dir(project) / version_name(number)

    def _key(self, project: str, what: str) -> str:
        return redis_key(self.base_name, what, project)

    # --- Redis with disk fallback ----------------------------------------------------------------

    def _redis_get(self, key: str) -> str | None:
        if self.redis is None:
            return None
        try:
            value = self.redis.get(key)
        except Exception as exc:  # any connection problem: fall back to disk
            log.warning("Redis unavailable (%s); reading %s from disk", type(exc).__name__, key)
            raise _RedisDown from None
        return value.decode() if isinstance(value, bytes) else value

    def _redis_set(self, key: str, value: str) -> bool:
        """Set ``key`` in Redis (nothing to do without one); False (logged) when Redis is unavailable."""
        if self.redis is None:
            return True
        try:
            self.redis.set(key, value)
        except Exception as exc:
            log.warning("Redis unavailable (%s); %s written to disk only", type(exc).__name__, key)
            return False
        return True

    def active_version(self, project: str) -> int:
        """The active adapter number of ``project`` (0 = base model).

        Redis is read first (every process sees the worker's promotion at once); a pointer to a version
        whose folder does not exist (another MODEL_DIR, a deleted folder) is ignored with a warning."""
        project = parse_project(project)
        try:
            value = self._redis_get(self._key(project, "active"))
            if value is not None:
                number = int(value)
                if number == 0 or self.version_dir(project, number).is_dir():
                    return number
                log.warning(
                    "project %s: Redis names v%d active but %s does not exist; using the disk pointer",
                    project,
                    number,
                    self.version_dir(project, number),
                )
        except (_RedisDown, ValueError):
            pass
        path = self.project_dir(project) / "ACTIVE"
        if path.is_file():
            number = int(path.read_text().strip() or 0)
            if number and self.version_dir(project, number).is_dir():
                self._redis_set(self._key(project, "active"), str(number))
                return number
        return 0

    def set_active(self, project: str, number: int) -> None:
        """Make ``number`` the active version (disk first, then Redis)."""
        project = parse_project(project)
        if number and not self.version_dir(project, number).is_dir():
            raise RegistryError(f"version v{number} of project {project} does not exist")
        _atomic_write(self.project_dir(project) / "ACTIVE", f"{number}\n")
        self._redis_set(self._key(project, "active"), str(number))
        log.info("project %s: active version is now %s", project, self.model_version(project, number))

    def remember_rubric(self, project: str, rubric: str) -> None:
        """Record the project's rubric on disk and in Redis. /setup calls this before every prediction: a
        value this process has already written is not written again."""
        project = parse_project(project)
        if self._remembered.get(project) == rubric:
            return
        path = self.project_dir(project) / "RUBRIC"
        if not path.is_file() or path.read_text().strip() != rubric:
            _atomic_write(path, f"{rubric}\n")
        if self._redis_set(self._key(project, "rubric"), rubric):
            self._remembered[project] = rubric  # after a Redis failure, the next /setup tries again

    def rubric_for(
        self,
        project: str,
        rubrics: Mapping[str, Rubric],
        parsed: ParsedConfig | None = None,
        default: str | None = None,
    ) -> Rubric | None:
        """The project's rubric, in one order for the backend and the worker: the rubric whose controls the
        labeling config (``parsed``) has, else the remembered one, else ``default`` (RUBRIC); None when none
        is known. A rubric named in the request (``extra_params.rubric``) is the caller's to check first."""
        rubric = match_rubric(parsed, rubrics.values()) if parsed is not None else None
        return rubric or self.remembered_rubric(project, rubrics, default)

    def remembered_rubric(
        self, project: str, rubrics: Mapping[str, Rubric], default: str | None = None, trained_on: str | None = None
    ) -> Rubric | None:
        """``trained_on`` (a version's own rubric), else the project's remembered rubric, else ``default``."""
        return rubrics.get(trained_on or self.project_rubric(project) or "") or rubrics.get(default or "")

    def project_rubric(self, project: str) -> str | None:
        project = parse_project(project)
        try:
            value = self._redis_get(self._key(project, "rubric"))
            if value:
                return value
        except _RedisDown:
            pass
        path = self.project_dir(project) / "RUBRIC"
        return path.read_text().strip() or None if path.is_file() else None

    # --- listing -------------------------------------------------------------------------------

    def version_numbers(self, project: str) -> list[int]:
        folder = self.project_dir(project)
        if not folder.is_dir():
            return []
        numbers = []
        for child in folder.iterdir():
            match = VERSION_DIR_RE.fullmatch(child.name)
            if match and child.is_dir():
                numbers.append(int(match.group(1)))
        return sorted(numbers)

    def remove_partial(self, project: str) -> list[str]:
        """Delete temporary version folders (``.v<N>.tmp-*``) a killed training run left behind. Call only while
        holding the project's running mark (no other job of the project is writing one)."""
        folder = self.project_dir(project)
        removed = []
        if folder.is_dir():
            for child in folder.iterdir():
                if child.is_dir() and PARTIAL_RE.fullmatch(child.name):
                    shutil.rmtree(child, ignore_errors=True)
                    removed.append(child.name)
        if removed:
            log.warning(
                "project %s: removed %d half-written version folder(s) of an interrupted run: %s",
                project,
                len(removed),
                ", ".join(sorted(removed)),
            )
        return removed

    def next_version(self, project: str) -> int:
        numbers = self.version_numbers(project)
        return (numbers[-1] if numbers else 0) + 1

    def projects(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted((p.name for p in self.root.iterdir() if p.is_dir() and PROJECT_RE.fullmatch(p.name)), key=int)

    def versions(self, project: str) -> list[VersionInfo]:
        """Every version of ``project``, ``v0`` (the base model) first."""
        project = parse_project(project)
        active = self.active_version(project)
        base_metrics = self._metrics(self.evaluation_path(project, 0))
        infos = [VersionInfo(project, 0, self.model_version(project, 0), None, base_metrics, active == 0)]
        for number in self.version_numbers(project):
            path = self.version_dir(project, number)
            infos.append(
                VersionInfo(
                    project,
                    number,
                    self.model_version(project, number),
                    path,
                    self._metrics(path / "metrics.json"),
                    active == number,
                )
            )
        return infos

    def evaluation_path(self, project: str, number: int) -> Path:
        """Where a version's held-out evaluation lives: ``v0.json`` (the base model, written by the latest
        training run) or ``v<N>/metrics.json`` (its ``candidate`` part)."""
        if number == 0:
            return self.project_dir(project) / BASE_EVALUATION
        return self.version_dir(project, number) / "metrics.json"

    def write_base_evaluation(self, project: str, metrics: Mapping[str, Any]) -> None:
        """Record the base model's evaluation (``v0.json``) from the latest training run."""
        path = self.evaluation_path(project, 0)
        path.write_text(json.dumps(metrics, ensure_ascii=False), encoding="utf-8")

    def evaluation(self, project: str, number: int) -> dict[str, Any] | None:
        """A version's held-out evaluation (``worker.evaluate`` metrics), or None before any."""
        metrics = self._metrics(self.evaluation_path(project, number))
        if metrics is None or number == 0:
            return metrics
        return metrics.get("candidate")

    @staticmethod
    def _metrics(path: Path) -> dict[str, Any] | None:
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("cannot read %s: %s", path, exc)
            return None


class _RedisDown(Exception):
    pass
