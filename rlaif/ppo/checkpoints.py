"""A PPO run's files: its checkpoints (every `save_steps`, the newest `save_total_limit` kept), the logs a resumed run
cuts back to its checkpoint, and the trained policy and value model saved at the end (rlaif.ppo.trainer.run)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from rlaif.ppo import fsdp
from rlaif.ppo.rollout import ValueHead
from rlaif.records import dumps_json, read_jsonl, write_atomic, write_jsonl

if TYPE_CHECKING:
    from rlaif.ppo.trainer import PPOTrainer


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = [p for p in (out / "checkpoints").glob("step-*") if (p / "trainer_state.json").is_file()
             and not p.name.endswith(".tmp")]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def truncate_log(path: Path, last_step: int) -> None:
    """Drop rows written after `last_step` (work a crash threw away, which the resumed run redoes)."""
    if path.is_file():
        rows = [row for row in read_jsonl(path) if row["step"] <= last_step]
        write_jsonl(path, rows)


def finished_metrics(out: Path, steps: int) -> dict | None:
    """The last metrics row of a run that completed at least `steps` steps; None if there is work to do."""
    from rlaif.records import Manifest

    if not (out / "manifest.json").is_file():
        return None
    manifest = Manifest.load(out)
    if manifest.status != "complete" or manifest.counts.get("steps", 0) < steps:
        return None
    rows = list(read_jsonl(out / "metrics.jsonl")) if (out / "metrics.jsonl").is_file() else []
    return rows[-1] if rows else {}


def save_state(trainer: PPOTrainer, directory: Path) -> None:
    """accelerate's save_state (models as safetensors, optimizers, schedulers, RNG states; under FSDP the RNG states
    only, the shards being fsdp.save's) plus the trainer's own state, into a temporary directory renamed into place:
    a checkpoint is complete or absent."""
    accelerator = trainer.accelerator
    tmp = directory.with_name(directory.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    # Tied input and output embeddings are stored once; accelerate warns about the dropped alias every time.
    quiet = logging.getLogger("accelerate.utils.other")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
    finally:
        quiet.setLevel(level)
    if trainer.config.fsdp:
        fsdp.save(trainer, tmp)
    accelerator.wait_for_everyone()  # every process has written its RNG state into tmp before it is renamed
    if accelerator.is_main_process:
        state = {"step": trainer.step, "kl_controller": trainer.kl_ctl.state_dict()}
        if trainer.config.fsdp:
            state["schedulers"] = [trainer.sched_policy.state_dict(), trainer.sched_value.state_dict()]
        write_atomic(tmp / "trainer_state.json", dumps_json(state))
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    accelerator.wait_for_everyone()


def load_checkpoint(trainer: PPOTrainer, directory: Path) -> None:
    """The trainer as `save_state` left it in `directory`; an engine (vLLM) is given the resumed policy's weights."""
    trainer.accelerator.load_state(str(directory))
    state = json.loads((directory / "trainer_state.json").read_text(encoding="utf-8"))
    trainer.step = state["step"]
    if trainer.config.fsdp:
        fsdp.load(trainer, directory)
        trainer.sched_policy.load_state_dict(state["schedulers"][0])
        trainer.sched_value.load_state_dict(state["schedulers"][1])
    if trainer.engine is not None:  # resumed: vLLM loaded the starting policy
        trainer.engine.push_weights(trainer.accelerator.unwrap_model(trainer.policy))
    trainer.kl_ctl.load_state_dict(state["kl_controller"])


def save_checkpoint(trainer: PPOTrainer, out: Path, keep: int) -> None:
    """A checkpoint of the trainer's step, keeping the newest `keep` (all when 0)."""
    save_state(trainer, out / "checkpoints" / f"step-{trainer.step}")
    if trainer.accelerator.is_main_process:
        for old in checkpoints(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)


def save_final(trainer: PPOTrainer, out: Path) -> None:
    """The trained policy to OUT (LoRA merged in) with its tokenizer, and the value model to OUT/value. Under FSDP
    every process takes part in gathering each model whole, one at a time, and the main process writes it."""
    accelerator = trainer.accelerator
    accelerator.wait_for_everyone()
    policy, value = accelerator.unwrap_model(trainer.policy), accelerator.unwrap_model(trainer.value)
    main, sharded = accelerator.is_main_process, trainer.config.fsdp
    if main and trainer.config.lora:
        policy = policy.merge_and_unload()
    full = fsdp.full_state(policy) if sharded else None
    if main:
        policy.save_pretrained(out, safe_serialization=True, **({"state_dict": full} if sharded else {}))
        trainer.tokenizer.save_pretrained(out)
    del full
    full = fsdp.full_state(value) if sharded else None
    if not main:
        return
    if isinstance(value, ValueHead):
        from safetensors.torch import save_file

        (out / "value").mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in (full if sharded else value.state_dict()).items()},
                  out / "value" / "value_head.safetensors")
    else:
        if sharded:
            value.classifier.save_pretrained(out / "value", safe_serialization=True, state_dict={
                k.removeprefix("classifier."): v for k, v in full.items()})
        else:
            value.save_pretrained(out / "value")  # LoRA merged in, like the policy's
        trainer.tokenizer.save_pretrained(out / "value")  # it reads the policy's tokens: value_model: OUT/value loads
    if trainer.config.lora:
        trainer.policy = None  # merged: the adapter-wrapped models are gone
        if not isinstance(value, ValueHead):
            trainer.value = None
