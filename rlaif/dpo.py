"""Direct preference optimisation on the preference files, with TRL's DPOTrainer: PPO's alternative that needs no
reward model and no sampling during training (Rafailov et al. 2023).

    rlaif dpo --data runs/x/round-1/label/preferences.jsonl --data human.jsonl --policy runs/x/round-1/sft --out runs/x/dpo

Each pair trains once toward its winner. Soft labels enter through the loss: with `loss_type: robust` (rDPO,
Chowdhury et al. 2024) the loss is unbiased under labels that are wrong with probability `label_smoothing`, and
`label_smoothing: auto` sets that to the mean of 1 - p_chosen over the pairs, the error rate the soft labels
themselves claim. Pairs no more confident than `min_p_chosen` are left out (ties always are). The frozen
reference is the starting policy (with LoRA, the same weights with the adapter switched off). Full fine-tuning
or LoRA, merged at the end, so OUT is a plain model directory; checkpoints under OUT/checkpoints/ (safetensors)
and a rerun resumes from the latest.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlaif.records import ConfigError, open_stage


@dataclass
class DPOConfig:
    data: list[str] = field(default_factory=list)  # preference files (rlaif label, rankings import, hh-rlhf pairs)
    out: str = "runs/dpo"  # the trained policy; checkpoints under OUT/checkpoints/
    policy: str = "smollm2-135m-instruct"  # the model to train and the frozen reference (usually a run's sft/)
    beta: float = 0.1  # strength of the implicit KL penalty to the reference
    loss_type: str = "sigmoid"  # TRL's DPO loss: sigmoid (DPO), robust (rDPO, uses label_smoothing), ipo, hinge, ...
    label_smoothing: float | str = "auto"  # assumed label error rate for robust/aot losses; auto: mean 1 - p_chosen
    min_p_chosen: float = 0.5  # pairs with p_chosen at or below this are left out (0.5: only ties)
    lora: bool = False  # train a LoRA adapter (merged at the end) instead of every weight
    lora_r: int = 16
    lora_alpha: int = 32
    learning_rate: float | None = None  # derived when unset: 5e-5 with LoRA, 5e-7 without
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8  # pairs per device per step
    grad_accum: int = 1
    max_length: int = 1024  # prompt + reply tokens; longer pairs are truncated
    save_steps: int = 50
    seed: int = 0
    device: str | None = None

    VOLATILE = ("device",)


def load_pairs(specs: list[str], min_p_chosen: float) -> tuple[list[dict], float]:
    """TRL's conversational preference rows from our preference files, and the mean 1 - p_chosen of those kept."""
    from rlaif.rankings import load_preferences, parse_weighted

    rows = []
    for spec in specs:
        path, weight = parse_weighted(spec)
        if weight != 1.0:
            raise ConfigError(f"{spec}: DPO trains on each pair once; weights are for the reward model's mix")
        rows += [r for r in load_preferences(path) if r["p_chosen"] > max(min_p_chosen, 0.5)]
    if not rows:
        raise ConfigError(f"no pairs with p_chosen above {max(min_p_chosen, 0.5)} in {', '.join(specs) or '(no files)'}")
    error = sum(1 - r["p_chosen"] for r in rows) / len(rows)
    return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows], error


def run(config: DPOConfig, progress: bool = True) -> dict:
    """Train (or resume training); returns the metrics written to OUT/metrics.json."""
    import datasets
    import torch
    from datasets import Dataset
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    from rlaif.models import default_device, load_model, lora_config, train_and_save
    from rlaif.rankings import parse_weighted

    rows, error = load_pairs(config.data, config.min_p_chosen)
    smoothing = min(error, 0.49) if config.label_smoothing == "auto" else float(config.label_smoothing)
    if not 0.0 <= smoothing < 0.5:
        raise ConfigError(f"label_smoothing: expected auto or a rate in [0, 0.5), not {config.label_smoothing}")
    out = Path(config.out)
    learning_rate = config.learning_rate or (5e-5 if config.lora else 5e-7)
    manifest = open_stage(out, "dpo", {**asdict(config), "learning_rate": learning_rate}, volatile=DPOConfig.VOLATILE)
    if manifest.status == "complete" and (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    for spec in config.data:
        manifest.add_input(parse_weighted(spec)[0])
    device = config.device or default_device()
    model, tokenizer = load_model(config.policy, device=device)
    model.train()
    datasets.disable_progress_bars()
    args = TRLDPOConfig(
        output_dir=str(out / "checkpoints"), beta=config.beta, loss_type=[config.loss_type],
        label_smoothing=smoothing, learning_rate=learning_rate, num_train_epochs=config.epochs,
        max_steps=config.max_steps, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, max_length=config.max_length, save_steps=config.save_steps,
        save_total_limit=2, logging_steps=1, report_to="none", seed=config.seed, use_cpu=device == "cpu",
        bf16=device.startswith("cuda") and torch.cuda.is_bf16_supported(), disable_tqdm=not progress,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=lora_config(config.lora_r, config.lora_alpha) if config.lora else None)
    started = time.time()
    _, result, checkpoint = train_and_save(trainer, tokenizer, out, config.lora)
    logs = [e for e in trainer.state.log_history if "loss" in e]
    metrics = {"steps": trainer.state.global_step, "pairs": len(rows), "label_smoothing": smoothing,
               "train_loss": result.training_loss, "first_loss": logs[0]["loss"] if logs else None,
               "last_loss": logs[-1]["loss"] if logs else None,
               "last_accuracy": logs[-1].get("rewards/accuracies") if logs else None,
               "last_margin": logs[-1].get("rewards/margins") if logs else None,
               "resumed_from": checkpoint, "seconds": time.time() - started}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    manifest.counts.update(pairs=len(rows), steps=trainer.state.global_step)
    manifest.seconds += metrics["seconds"]
    manifest.outputs = ["model.safetensors", "metrics.json", "checkpoints/"]
    manifest.status = "complete"
    manifest.save(out)
    return metrics
