"""Read each task once: the base model's features and scores of a task, stored on disk under ``MODEL_DIR``.

A feature head is a few kilobytes over features that do not depend on the version: the pooled states of the
target, its LM statistics and the label-position states of the *base* model. So the base model's answer for a
task (``TaskScore``) and its features (``TaskFeatures``) are stored once, keyed by exactly what the model reads
(the task's prompt tokens, its target span and the rubric's dimension and label tokens: ``Judge.feature_key``)
within a folder per base model (``Judge.model_fingerprint``: name, precision, quantization, configuration and a
digest of its weights). The backend, the worker and the offline commands share it: retraining reads only new
tasks, and a head version scores a stored task without running the model.

* Entries are written to a temporary file and renamed into place (readers never see half a file).
* An entry whose stored key or model does not match, or that cannot be read, is deleted and counts as a miss
  (recomputed, never served).
* The store is bounded (``FEATURE_STORE_MB``): when it grows past the bound, the entries read least recently
  (modification time, refreshed on every read) are evicted down to 90% of it.

Pure module: numpy only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.core.scores import DimensionScore, TaskFeatures, TaskScore

log = logging.getLogger(__name__)

#: bump when what ``Judge.score_with_features`` returns changes meaning: old entries stop matching
FORMAT = 1
#: writes between two checks of the store's size
CHECK_EVERY = 64


@dataclass
class StoreStats:
    hits: int = 0
    misses: int = 0
    rejected: int = 0  # corrupt or foreign entries, deleted and recomputed
    written: int = 0
    evicted: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class FeatureStore:
    """Stored ``(TaskScore, TaskFeatures)`` of the base model ``model_id`` under ``root``, at most ``max_bytes``."""

    def __init__(self, root: Path, model_id: str, max_bytes: int) -> None:
        self.root = Path(root)
        self.model_id = model_id
        self.folder = self.root / model_id
        self.max_bytes = max_bytes
        self.stats = StoreStats()
        self._lock = threading.Lock()
        self._writes_since_check = CHECK_EVERY  # check at the first write

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npz"

    # --- reading ---------------------------------------------------------------------------------

    def get(self, key: str) -> tuple[TaskScore, TaskFeatures] | None:
        path = self.path(key)
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
            meta = json.loads(bytes(arrays.pop("meta")).decode("utf-8"))
            if meta.get("key") != key or meta.get("model") != self.model_id or meta.get("format") != FORMAT:
                raise ValueError("entry of another task, model or format")
            features = TaskFeatures(
                shared=arrays["shared"], dimensions={name: arrays[f"dim.{name}"] for name in meta["dimensions"]}
            )
            score = TaskScore(
                {
                    name: DimensionScore(
                        label=v["label"], probs=v["probs"], expected=v["expected"], logprob=v.get("logprob")
                    )
                    for name, v in meta["score"].items()
                }
            )
        except FileNotFoundError:
            self.stats.misses += 1
            return None
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as exc:
            log.warning("feature store: entry %s unreadable (%s); recomputing it", path.name, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            self.stats.rejected += 1
            self.stats.misses += 1
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # least recently read is evicted first
        self.stats.hits += 1
        return score, features

    # --- writing ---------------------------------------------------------------------------------

    def put(self, key: str, score: TaskScore, features: TaskFeatures) -> None:
        path = self.path(key)
        meta = {
            "key": key,
            "model": self.model_id,
            "format": FORMAT,
            "dimensions": list(features.dimensions),
            "score": {
                name: {"label": d.label, "probs": dict(d.probs), "expected": d.expected, "logprob": d.logprob}
                for name, d in score.dimensions.items()
            },
        }
        arrays = {"shared": np.asarray(features.shared)}
        arrays.update({f"dim.{name}": np.asarray(v) for name, v in features.dimensions.items()})
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}.", suffix=".tmp")
            try:
                with os.fdopen(handle, "wb") as out:
                    np.savez(out, **arrays)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:  # a full or read-only disk costs speed, never an answer
            log.warning("feature store: cannot write %s (%s)", path, exc)
            return
        self.stats.written += 1
        with self._lock:
            self._writes_since_check += 1
            due = self._writes_since_check >= CHECK_EVERY
            if due:
                self._writes_since_check = 0
        if due:
            self.enforce_bound()

    def enforce_bound(self) -> int:
        """Evict the least recently read entries (of every model) until the store is under 90% of its bound
        when it is over it; returns how many were evicted."""
        entries = []
        total = 0
        for path in self.root.glob("*/*/*.npz"):
            try:
                info = path.stat()
            except OSError:
                continue
            entries.append((info.st_mtime, info.st_size, path))
            total += info.st_size
        if total <= self.max_bytes:
            return 0
        evicted = 0
        target = 0.9 * self.max_bytes
        for _, size, path in sorted(entries):
            if total <= target:
                break
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size
                evicted += 1
        self.stats.evicted += evicted
        log.info("feature store: evicted %d entries to stay under %d MB", evicted, self.max_bytes >> 20)
        return evicted

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*/*/*.npz"))
