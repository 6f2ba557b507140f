"""Supervised fine-tuning on the critique stage's revisions, with TRL's SFTTrainer.

    rlaif sft --data runs/x/critique/sft.jsonl --out runs/x/sft [--lora]

Each `messages` row becomes a prompt (every turn but the last) and a completion (the final assistant turn), so the
loss falls on the assistant's reply only. Rows are tokenized here as TRL's SFTTrainer tokenizes them (chat template,
cut to `max_length`), so what is left out is counted, not dropped silently: a row whose reply is empty, or whose
prompt fills `max_length` so that no reply token is left to learn from. Rows cut short still train and are counted
as `truncated`. Full fine-tuning or LoRA (peft); the weights being trained are float32 (bf16 only as autocast on a
GPU, where LoRA's frozen base is bf16). A LoRA adapter is merged into the base weights at the end, so OUT is a plain model directory that every other
stage loads like any model. Checkpoints go to OUT/checkpoints/ (safetensors weights) and a rerun resumes from the
latest one.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rlaif.models import check_numbers, lora_unused
from rlaif.records import DataError, Tally, dumps_json, iter_jsonl, open_stage, write_atomic


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
    max_length: int = 1024  # tokens per example (chat template included); longer ones are cut, counted as truncated
    save_steps: int = 50  # checkpoint every N optimizer updates
    seed: int = 0
    device: str | None = None  # cpu or cuda; default: a GPU if there is one

    VOLATILE = ("device",)

    def __post_init__(self):
        check_numbers(self, "sft", positive=["learning_rate", "epochs", "batch_size", "grad_accum", "max_length",
                                             "save_steps", "lora_r", "lora_alpha"],
                      steps=["max_steps"], within={"lora_dropout": (0.0, 1.0)})
        lora_unused(self)


def to_prompt_completion(row: dict, path: Path, line: int) -> dict:
    """{"messages": [..., assistant]} -> {"prompt": [...], "completion": [assistant]} (TRL's conversational
    prompt-completion format, whose loss covers the completion only)."""
    messages = row.get("messages")
    if not isinstance(messages, list) or len(messages) < 2 or not all(isinstance(m, dict) and
                                                                      isinstance(m.get("content"), str)
                                                                      for m in messages):
        raise DataError(path, line, "messages", "expected a list of at least two {role, content} messages")
    if messages[-1].get("role") != "assistant":
        raise DataError(path, line, f"messages[{len(messages) - 1}].role", "the last message must be the assistant's")
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def training_examples(rows: list[dict], tokenizer, max_length: int, tally: Tally) -> tuple[list[dict], int]:
    """TRL's tokenized prompt-completion examples, {input_ids, completion_mask}, cut to `max_length` as SFTTrainer
    cuts them (TRL 1.16: chat template, completion after the common prefix with the prompt, `keep_start`). Left out
    and counted in `tally`: an empty reply (`empty_reply`), and a prompt that leaves no reply token within
    `max_length` (`prompt_too_long`, which SFTTrainer would drop without a word). Returns (examples, how many were
    cut short)."""
    from rlaif.models import chat_ids, completion_start

    examples, truncated = [], 0
    for row in rows:
        tally.read += 1
        if not row["completion"][-1]["content"].strip():
            tally.leave_out("empty_reply")
            continue
        ids = chat_ids(tokenizer, row["prompt"] + row["completion"])
        start = completion_start(chat_ids(tokenizer, row["prompt"], add_generation_prompt=True), ids)
        end = min(len(ids), max_length)
        if end <= start:
            tally.leave_out("prompt_too_long")
            continue
        truncated += len(ids) > max_length
        examples.append({"input_ids": ids[:end], "completion_mask": [0] * start + [1] * (end - start)})
        tally.used += 1
    return examples, truncated


def run(config: SFTConfig, progress: bool = True) -> dict:
    """Fine-tune (or resume fine-tuning); returns the training metrics written to OUT/metrics.json, with `summary`,
    the line of what was read, used and left out.

    Raises DataError before loading the model (and before creating OUT) when no row is left to train on."""
    import datasets
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    from rlaif.models import (
        load_model,
        load_tokenizer,
        lora_config,
        precision_args,
        train_and_save,
        trainer_device,
        training_dtype,
    )

    data = Path(config.data)
    if not data.is_file():
        raise DataError(data, None, None, "file not found")
    rows = [to_prompt_completion(row, data, line) for line, row in iter_jsonl(data)]
    if not rows:
        raise DataError(data, None, None, "no rows to train on")
    tally = Tally("examples")
    examples, truncated = training_examples(rows, load_tokenizer(config.model), config.max_length, tally)
    tally.require_some(data, f"every reply is empty or starts after max_length ({config.max_length} tokens)")
    device = trainer_device(config.device)

    out = Path(config.out)
    learning_rate = config.learning_rate or (2e-4 if config.lora else 2e-5)
    manifest = open_stage(out, "sft", {**asdict(config), "learning_rate": learning_rate}, volatile=SFTConfig.VOLATILE)
    if manifest.status == "complete" and (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text(encoding="utf-8"))  # trained already: nothing to do
    manifest.add_input(data)
    set_seed(config.seed)  # before LoRA's adapters draw their initial weights
    model, tokenizer = load_model(config.model, dtype=training_dtype(device, config.lora), device="cpu")
    datasets.disable_progress_bars()  # TRL's passes over the data take a blink; the training bar is the one to watch

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
        disable_tqdm=not progress,
        **precision_args(device),
    )
    peft_config = lora_config(config.lora_r, config.lora_alpha, config.lora_dropout) if config.lora else None
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                         processing_class=tokenizer, peft_config=peft_config)
    started = time.time()
    _, result, checkpoint = train_and_save(trainer, tokenizer, out, config.lora)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = tally.summary() + (f"; {truncated} cut at max_length {config.max_length}" if truncated else "")
    metrics = {"steps": trainer.state.global_step, "examples": tally.used, **tally.counts(), "truncated": truncated,
               "summary": summary, "train_loss": result.training_loss,
               "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
               "resumed_from": checkpoint, "seconds": time.time() - started}
    write_atomic(out / "metrics.json", dumps_json(metrics))
    manifest.counts.update(tally.counts(), truncated=truncated, steps=trainer.state.global_step)
    manifest.seconds += metrics["seconds"]
    manifest.outputs = ["model.safetensors", "metrics.json", "checkpoints/"]
    manifest.status = "complete"
    manifest.save(out)
    return metrics
