"""Direct preference optimisation on the preference files, with TRL's DPOTrainer: PPO's alternative that needs no
reward model and no sampling during training (Rafailov et al. 2023).

    rlaif dpo --data runs/x/round-1/label/preferences.jsonl --data human.jsonl:2 --policy runs/x/round-1/sft --out runs/x/dpo

The files are mixed as the reward stage mixes them (rlaif.rankings.mix), so `FILE:WEIGHT` and a recipe's human and
AI weights mean the same in both: every label of a pair, from any file or annotator, joins one row whose `p_chosen`
is the labels' mean weighted by file weight times row weight, facing the winner that mean names. Each pair trains
once toward that winner; the weights decide the label, and DPO's loss does not weight pairs by them. Soft labels
enter through the loss: with `loss_type: robust` (rDPO, Chowdhury et al. 2024) the loss is unbiased under labels
that are wrong with probability `label_smoothing`, and `label_smoothing: auto` sets that to the mean of
1 - p_chosen over the pairs, the error rate the soft labels themselves claim. Only the losses in `SMOOTHED` read a
label smoothing: with any other (the default `sigmoid` among them) `auto` is recorded as 0, and a number is an
error. The frozen reference is the starting policy (with LoRA, the same weights with the adapter switched off).

What cannot train is left out and counted (manifest, metrics.json and the closing line), never dropped silently:
a label with repeated replies (counted as `labels_`: the rows read from the files), and of the mixed pairs: ties,
pairs no more confident than `min_p_chosen`, pairs whose every label has weight 0, a prompt that fills
`max_length` (TRL drops it without a word), and a pair whose replies are the same once TRL cuts them to
`max_length` (its loss has no gradient). Pairs cut short but
still different train and are counted as `truncated`. With nothing left, `run` stops before loading the model.

Full fine-tuning or LoRA, merged at the end, so OUT is a plain model directory; the weights being trained are
float32 (bf16 only as autocast on a GPU, where LoRA's frozen base is bf16). Checkpoints under OUT/checkpoints/ (safetensors) and a rerun resumes from
the latest.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlaif.models import check_numbers, lora_unused
from rlaif.records import ConfigError, PreferenceRow, Tally, dumps_json, number, open_stage, write_atomic

# TRL 1.16's DPO losses (DPOTrainer.dpo_loss), and those of them that read `label_smoothing`.
LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
          "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
SMOOTHED = ("robust", "exo_pair", "aot", "aot_unpaired")


@dataclass
class DPOConfig:
    data: list[str] = field(default_factory=list)  # preference files, each "FILE" or "FILE:WEIGHT" (default 1)
    out: str = "runs/dpo"  # the trained policy; checkpoints under OUT/checkpoints/
    policy: str = "smollm2-135m-instruct"  # the model to train and the frozen reference (usually a run's sft/)
    beta: float = 0.1  # strength of the implicit KL penalty to the reference
    loss_type: str = "sigmoid"  # TRL's DPO loss (LOSSES): sigmoid (DPO), robust (rDPO, uses label_smoothing), ipo, ...
    label_smoothing: float | str = "auto"  # label error rate, for the SMOOTHED losses only; auto: mean 1 - p_chosen
    min_p_chosen: float = 0.5  # pairs with p_chosen (facing the winner) at or below this are left out (0.5: ties)
    lora: bool = False  # train a LoRA adapter (merged at the end) instead of every weight
    lora_r: int = 16
    lora_alpha: int = 32
    learning_rate: float | None = None  # derived when unset: 5e-5 with LoRA, 5e-7 without
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8  # pairs per device per step
    grad_accum: int = 1
    max_length: int = 1024  # prompt + reply tokens, chat template included; longer pairs are cut, counted
    save_steps: int = 50
    seed: int = 0
    device: str | None = None  # cpu or cuda; default: a GPU if there is one

    VOLATILE = ("device",)

    def __post_init__(self):
        check_numbers(self, "dpo", positive=["beta", "learning_rate", "epochs", "batch_size", "grad_accum", "max_length",
                                             "save_steps", "lora_r", "lora_alpha"],
                      steps=["max_steps"], within={"min_p_chosen": (0.0, 1.0)})
        if self.loss_type not in LOSSES:
            raise ConfigError(f"loss_type: expected one of {', '.join(LOSSES)}, not {self.loss_type!r}")
        if self.label_smoothing != "auto":
            smoothing = number(self.label_smoothing, "dpo settings", None, "label_smoothing", 0.0, 0.5)
            if smoothing == 0.5:
                raise ConfigError("label_smoothing: expected auto or a rate in [0, 0.5), not 0.5")
            if smoothing and self.loss_type not in SMOOTHED:
                raise ConfigError(f"label_smoothing: the {self.loss_type} loss does not use it (only "
                                  f"{', '.join(SMOOTHED)} do); leave it at auto or 0, or choose one of those losses")
        lora_unused(self)


def load_pairs(specs: list[str], min_p_chosen: float, labels: Tally, pairs: Tally) -> list[PreferenceRow]:
    """The preference files "FILE[:WEIGHT]" mixed as the reward stage mixes them (rankings.load_mix: one row per
    distinct pair facing its winner, `p_chosen` the mean of its labels weighted by file weight times row weight,
    `weight` their sum), and the pairs of them DPO can train on. `labels` counts the rows read from the files (and
    those left out as they are read: records.reply_problem); `pairs` counts every mixed pair read and those left out:
    `zero_weight` (every label of it has weight 0), `tie` (the labels' mean is 0.5, to within 1e-9 of float
    rounding), `low_confidence` (p_chosen <= min_p_chosen). Their `used` is left to `fitting_pairs`."""
    from rlaif.rankings import load_mix

    rows, _ = load_mix(specs, tally=labels)
    kept = []
    for row in rows:
        pairs.read += 1
        p = row["p_chosen"]
        problem = ("zero_weight" if row["weight"] == 0 else "tie" if p - 0.5 < 1e-9 else
                   "low_confidence" if p <= min_p_chosen else None)
        if problem:
            pairs.leave_out(problem)
        else:
            kept.append(row)
    return kept


def unweighed_note(pairs: list[PreferenceRow]) -> dict[str, str]:
    """{"unmeasured": note} when AI labels (of weight > 0) are among the pairs, else {}. DPO trains on them as
    given: with no human pair in the mix, nothing measures them (reliability.UNMEASURED); with human pairs, DPO
    still neither calibrates nor weighs them by their agreement with people, which only the reward stage does."""
    from rlaif.reliability import THEN_DPO, UNMEASURED

    ai = sorted({p["file"] for row in pairs for p in row["provenance"] if p["source"] == "ai" and p["weight"] > 0})
    if not ai:
        return {}
    if any(p["source"] == "human" for row in pairs for p in row["provenance"]):
        return {"unmeasured": f"DPO trains on the AI labels of {', '.join(ai)} as given: it neither measures them "
                              "against the human pairs nor weighs them by their agreement with people. rlaif reward "
                              "does (--calibration, reliability weighting); train PPO or GRPO on its reward model "
                              "to use that"}
    return {"unmeasured": UNMEASURED.format(labelers=", ".join(ai), then=THEN_DPO)}


def fitting_pairs(rows: list[PreferenceRow], tokenizer, max_length: int, tally: Tally
                  ) -> tuple[list[PreferenceRow], int]:
    """The rows DPOTrainer can learn from, tokenized as TRL 1.16 does (chat template; the replies start after the
    common prefix with the prompt; each sequence cut to `max_length`, `keep_start`), and how many of them are cut
    short. Left out and counted in `tally`: `prompt_too_long` (no reply token within `max_length`: TRL drops the
    pair without a word) and `identical_after_truncation` (both replies cut to the same tokens: zero gradient)."""
    from rlaif.models import chat_ids, completion_start

    kept, truncated = [], 0
    for row in rows:
        prompt = chat_ids(tokenizer, row["prompt"], add_generation_prompt=True)
        chosen, rejected = (chat_ids(tokenizer, row["prompt"] + row[side]) for side in ("chosen", "rejected"))
        start = min(completion_start(prompt, chosen), completion_start(prompt, rejected))
        room = max_length - start
        if room <= 0:
            tally.leave_out("prompt_too_long")
        elif chosen[start:][:room] == rejected[start:][:room]:
            tally.leave_out("identical_after_truncation")
        else:
            truncated += max(len(chosen), len(rejected)) > max_length
            tally.used += 1
            kept.append(row)
    return kept, truncated


def run(config: DPOConfig, progress: bool = True, on_note=None) -> dict:
    """Train (or resume training); returns the metrics written to OUT/metrics.json, with the tallies of labels
    (`labels_` counts) and of pairs read, used and left out, `truncated`, `summary` (their line) and the
    `label_smoothing` the loss used. `on_note(text)` hears, before training, that the AI labels train unmeasured or
    unweighed (`unweighed_note`; also in the metrics as `unmeasured`).

    Raises DataError before loading the model (and before creating OUT) when no pair is left to train on."""
    import datasets
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    from rlaif.models import (
        load_model,
        load_tokenizer,
        lora_config,
        precision_args,
        train_and_save,
        trainer_device,
        training_dtype,
    )
    from rlaif.rankings import parse_weighted

    labels, tally = Tally("labels"), Tally("pairs")
    pairs = load_pairs(config.data, config.min_p_chosen, labels, tally)
    pairs, truncated = fitting_pairs(pairs, load_tokenizer(config.policy), config.max_length, tally)
    longer = f"raise --max-length ({config.max_length})"
    tally.require_some(", ".join(parse_weighted(spec)[0] for spec in config.data), {
        "zero_weight": "give a file a weight above 0 (--data FILE:WEIGHT, or a row's weight)",
        "low_confidence": f"lower --min-p-chosen ({config.min_p_chosen})",
        "prompt_too_long": longer, "identical_after_truncation": longer})
    unmeasured = unweighed_note(pairs)
    if unmeasured and on_note:
        on_note(unmeasured["unmeasured"])
    if config.loss_type not in SMOOTHED:
        smoothing = 0.0
    elif config.label_smoothing == "auto":
        smoothing = min(sum(1 - r["p_chosen"] for r in pairs) / len(pairs), 0.49)
    else:
        smoothing = float(config.label_smoothing)
    if config.loss_type == "exo_pair" and smoothing == 0:
        raise ConfigError("label_smoothing: the exo_pair loss needs a rate > 0, and every pair's label is certain "
                          "(p_chosen 1), so auto gives 0: set one (the EXO paper uses 1e-3)")
    device = trainer_device(config.device)

    out = Path(config.out)
    learning_rate = config.learning_rate or (5e-5 if config.lora else 5e-7)
    manifest = open_stage(out, "dpo", {**asdict(config), "learning_rate": learning_rate}, volatile=DPOConfig.VOLATILE)
    if manifest.status == "complete" and (out / "metrics.json").is_file():
        return {**json.loads((out / "metrics.json").read_text(encoding="utf-8")), **unmeasured}
    for spec in config.data:
        manifest.add_input(parse_weighted(spec)[0])
    set_seed(config.seed)  # before LoRA's adapters draw their initial weights
    model, tokenizer = load_model(config.policy, dtype=training_dtype(device, config.lora), device="cpu")
    datasets.disable_progress_bars()
    args = TRLDPOConfig(
        output_dir=str(out / "checkpoints"), beta=config.beta, loss_type=[config.loss_type],
        label_smoothing=smoothing, learning_rate=learning_rate, num_train_epochs=config.epochs,
        max_steps=config.max_steps, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, max_length=config.max_length, save_steps=config.save_steps,
        save_total_limit=2, logging_steps=1, report_to="none", seed=config.seed, disable_tqdm=not progress,
        **precision_args(device),
    )
    table = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in pairs]
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(table), processing_class=tokenizer,
                         peft_config=lora_config(config.lora_r, config.lora_alpha) if config.lora else None)
    started = time.time()
    _, result, checkpoint = train_and_save(trainer, tokenizer, out, config.lora)
    logs = [e for e in trainer.state.log_history if "loss" in e]
    summary = f"{labels.summary()}; {tally.summary()}" + (
        f"; {truncated} cut at max_length {config.max_length}" if truncated else "")
    metrics = {"steps": trainer.state.global_step, "pairs": tally.used, **labels.counts("labels_"), **tally.counts(),
               "truncated": truncated,
               "summary": summary, "label_smoothing": smoothing,
               "train_loss": result.training_loss, "first_loss": logs[0]["loss"] if logs else None,
               "last_loss": logs[-1]["loss"] if logs else None,
               "last_accuracy": logs[-1].get("rewards/accuracies") if logs else None,
               "last_margin": logs[-1].get("rewards/margins") if logs else None,
               "resumed_from": checkpoint, "seconds": time.time() - started, **unmeasured}
    write_atomic(out / "metrics.json", dumps_json(metrics))
    manifest.counts.update(labels.counts("labels_"), **tally.counts(), truncated=truncated,
                           steps=trainer.state.global_step)
    manifest.extra["label_smoothing"] = smoothing
    manifest.seconds += metrics["seconds"]
    manifest.outputs = ["model.safetensors", "metrics.json", "checkpoints/"]
    manifest.status = "complete"
    manifest.save(out)
    return metrics
