"""Supervised fine-tuning on the critique stage's revisions, with TRL's SFTTrainer.

    rlaif sft --data runs/x/critique/sft.jsonl --out runs/x/sft [--lora]

Each `messages` row becomes a prompt (every turn but the last) and a completion (the final assistant turn), so the
loss falls on the assistant's reply only. Full fine-tuning or LoRA (peft); a LoRA adapter is merged into the base
weights at the end, so OUT is a plain model directory that every other stage loads like any model. Checkpoints go
to OUT/checkpoints/ (safetensors weights) and a rerun resumes from the latest one.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rlaif.records import DataError, open_stage, read_jsonl


@dataclass
class SFTConfig:
    data: str = ""  # sft.jsonl: rows with `messages` ending in an assistant turn
    out: str = "runs/sft"  # the fine-tuned model is written here; checkpoints under OUT/checkpoints/
    model: str = "smollm2-135m-instruct"  # the model to fine-tune (any model spec)
    lora: bool = False  # train a LoRA adapter (merged at the end) instead of every weight
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    learning_rate: float | None = None  # derived when unset: 2e-4 with LoRA, 2e-5 without
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8  # examples per device per step
    grad_accum: int = 1  # steps accumulated per optimizer update
    max_length: int = 1024  # tokens per example; longer ones are truncated
    save_steps: int = 50  # checkpoint every N optimizer updates
    seed: int = 0
    device: str | None = None  # cpu, cuda, ...; default: a GPU if there is one

    VOLATILE = ("device",)


def to_prompt_completion(row: dict, path: Path, line: int) -> dict:
    """{"messages": [..., assistant]} -> {"prompt": [...], "completion": [assistant]} (TRL's conversational
    prompt-completion format, whose loss covers the completion only)."""
    messages = row.get("messages")
    if not isinstance(messages, list) or len(messages) < 2 or not all(isinstance(m, dict) for m in messages):
        raise DataError(path, line, "messages", "expected a list of at least two {role, content} messages")
    if messages[-1].get("role") != "assistant":
        raise DataError(path, line, f"messages[{len(messages) - 1}].role", "the last message must be the assistant's")
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def run(config: SFTConfig, progress: bool = True) -> dict:
    """Fine-tune (or resume fine-tuning); returns the training metrics written to OUT/metrics.json."""
    import datasets
    import torch
    from datasets import Dataset
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    from rlaif.models import default_device, load_model, lora_config, train_and_save

    data = Path(config.data)
    if not data.is_file():
        raise DataError(data, None, None, "file not found")
    rows = [to_prompt_completion(row, data, i) for i, row in enumerate(read_jsonl(data), start=1)]
    if not rows:
        raise DataError(data, None, None, "no rows to train on")

    out = Path(config.out)
    learning_rate = config.learning_rate or (2e-4 if config.lora else 2e-5)
    manifest = open_stage(out, "sft", {**asdict(config), "learning_rate": learning_rate}, volatile=SFTConfig.VOLATILE)
    if manifest.status == "complete" and (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text(encoding="utf-8"))  # trained already: nothing to do
    manifest.add_input(data)
    device = config.device or default_device()
    model, tokenizer = load_model(config.model, device=device)
    model.train()
    datasets.disable_progress_bars()  # TRL's tokenizing passes take a blink here; the training bar is the one to watch

    args = TRLSFTConfig(
        output_dir=str(out / "checkpoints"),
        learning_rate=learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        max_length=config.max_length,
        completion_only_loss=True,
        save_steps=config.save_steps,
        save_total_limit=2,
        logging_steps=1,
        report_to="none",
        seed=config.seed,
        use_cpu=device == "cpu",
        bf16=device.startswith("cuda") and torch.cuda.is_bf16_supported(),
        disable_tqdm=not progress,
    )
    peft_config = lora_config(config.lora_r, config.lora_alpha, config.lora_dropout) if config.lora else None
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft_config)
    started = time.time()
    _, result, checkpoint = train_and_save(trainer, tokenizer, out, config.lora)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    metrics = {"steps": trainer.state.global_step, "examples": len(rows), "train_loss": result.training_loss,
               "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
               "resumed_from": checkpoint, "seconds": time.time() - started}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    manifest.counts.update(examples=len(rows), steps=trainer.state.global_step)
    manifest.seconds += metrics["seconds"]
    manifest.outputs = ["model.safetensors", "metrics.json", "checkpoints/"]
    manifest.status = "complete"
    manifest.save(out)
    return metrics
