"""Reward model: TRL's RewardTrainer taught soft labels, row weights and a margin, trained on a mix of sources.

    rlaif reward --data runs/x/label/preferences.jsonl:1.0 --data runs/x/human.jsonl:2.0 --out runs/x/rm
    rlaif reward --data runs/x/label/preferences.jsonl --calibration runs/eval/labels.jsonl --data runs/x/human.jsonl

The model is any causal LM with a scalar head on its last token (`AutoModelForSequenceClassification`,
`num_labels=1`). Its loss on a pair with label p = P(chosen is better) is the Bradley-Terry log-likelihood of that
label, `soft_bradley_terry_loss` below; at p = 1 it is exactly TRL's loss. The preference files are mixed first
(rlaif.rankings.mix: one row per distinct pair, weights summed, provenance kept; each AI labeler weighed by its
measured agreement with people before, see rlaif.reliability), a held-out split is set aside
(by pair, so no pair is in both), and each pair is tokenized here as the trainer reads it (chat template included).
What cannot train is left out and counted, never dropped silently: a pair longer than `max_length` (TRL's
RewardTrainer drops those without a word), a pair whose replies are empty or the same, and a training pair of
weight 0; rows read from the files are counted too (`labels_` counts: how many labels made the pairs, and a pair
whose replies are the same, left out as it is read). When no training pair is left, `run` stops with a DataError
before loading the model. The weights being trained, the head among them, are float32 (bf16 only as autocast on a
GPU, where LoRA's frozen base is bf16). Every generator is seeded with `seed` before the model is loaded, so two
runs with the same settings draw the same new head (and LoRA adapters) and write the same model file. OUT gets:

| file | what |
|---|---|
| `model.safetensors`, `config.json`, tokenizer | the reward model (a LoRA adapter is merged in) |
| `reward_stats.json` | mean and std of its rewards on training responses, for PPO's reward normalisation |
| `metrics.json` | held-out accuracy, mean margin and calibration per source and overall, reward-length correlation, the human/AI agreement table, each AI labeler's reliability, people's agreement with each other and each principle against people (`human_agreement`), training losses |
| `checkpoints/` | Trainer checkpoints (safetensors); a rerun resumes from the latest |

How each AI labeler is measured against people, calibrated and weighed before the mix (`calibration`, `reliability`,
`reliability_min_pairs`) is in rlaif.reliability. Beside it, metrics.json's `human_agreement` (rlaif.agreement),
before any calibration: how often the people in `data` agree with each other where two or more answered a pair
(percent agreement, Cohen's kappa or Krippendorff's alpha; every pair, held out or not), and how often each AI
labeler's principles (`principle_p`) pick people's majority, beside the length baselines, on the pairs the reliability
measure reads (training side, not chosen for the labeler's doubt: `human_agreement`). The calibration files' rows
count toward people's majority and the AI's labels, never toward people's agreement with each other.

Scoring API: `RewardModel.load(OUT).score(prompts, responses)` -> one reward per response (a tensor).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from rlaif import stats
from rlaif.models import chat_ids, check_numbers, lora_unused, unused_settings
from rlaif.rankings import load_mix, load_sources, mix, require_weight  # the readers of the files reward mixes
from rlaif.records import (
    ConfigError,
    DataError,
    Message,
    PreferenceRow,
    Tally,
    dumps_json,
    open_stage,
    read_text,
    reply_problem,
    split_weight,
    write_atomic,
)

# The reliability weighting (rlaif.reliability); COIN, labeler_of and measure_labeler are imported only so that they
# stay importable from here, where they were.
from rlaif.reliability import (  # noqa: F401
    COIN,
    _print_warnings,
    _zeroed,
    labeler_of,
    measure_labeler,
    reliability_line,
    weigh_sources,
)


@dataclass
class RewardConfig:
    data: list[str] = field(default_factory=list)  # preference files, each "FILE" or "FILE:WEIGHT" (default 1)
    out: str = "runs/rm"  # the reward model, metrics.json and reward_stats.json go here
    model: str = "smollm2-135m-instruct"  # backbone: any causal LM spec; a scalar head is added
    eval_data: list[str] = field(default_factory=list)  # held-out files; none: hold out eval_fraction of the pairs
    eval_fraction: float = 0.1  # share of distinct pairs held out (by a hash of the pair) when eval_data is empty
    human_overrides: bool = False  # where people and the AI pick different winners, drop the AI's label
    ties: str = "skip"  # tied human rankings in imported files: skip, half (a 0.5 label) or error
    lora: bool = False  # train a LoRA adapter and the head (merged at the end) instead of every weight
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    learning_rate: float | None = None  # derived when unset: 1e-4 with LoRA, 1e-5 without
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8  # pairs per device per step
    grad_accum: int = 1
    max_length: int = 1024  # tokens of prompt + response, chat template included; longer pairs are left out, counted
    margin: float = 0.0  # required reward gap (a row's own `margin` field wins); Touvron et al. 2023, eq. 2
    center_rewards: float | None = None  # coefficient of the mean squared reward penalty (Eisenstein et al. 2023: 0.01)
    stats_samples: int = 512  # training pairs scored for reward_stats.json
    save_steps: int = 50  # checkpoint every N optimizer updates
    group_by_length: bool = True  # batch pairs of similar token length (shuffled in groups): less padding, faster
    seed: int = 0
    device: str | None = None  # cpu or cuda; default: a GPU if there is one
    # Reliability (rlaif.reliability): each AI labeler measured against people on the training-side pairs both
    # labelled, then calibrated and weighed by what it earns.
    calibration: list[str] = field(default_factory=list)  # AI labels of human-labelled pairs (`rlaif eval labeler`'s
    #   labels.jsonl, `rlaif label --candidates human.jsonl`), and optionally people's rows: read to measure, never trained
    reliability: str = "weight"  # weight: a labeler that fails the rule (rlaif.reliability), or has too few pairs to
    #   measure, gets weight 0; warn: keep its weight (calibrated where measured) and warn; off: labels and weights
    #   as given, nothing measured
    reliability_min_pairs: int = 20  # fewer measured pairs than this: not measured (weight 0, or under warn kept
    #   uncalibrated), warned

    VOLATILE = ("device",)
    # Settings added after the first runs, each with the value that reproduces them (rlaif.records.added_default)
    ADDED: ClassVar[dict] = {"group_by_length": False, "calibration": [], "reliability": "off",
                             "reliability_min_pairs": 20}

    def __post_init__(self):
        check_numbers(self, "reward", positive=["learning_rate", "epochs", "batch_size", "grad_accum", "max_length",
                                                "stats_samples", "save_steps", "lora_r", "lora_alpha"],
                      nonnegative=["margin", "center_rewards"], steps=["max_steps"],
                      within={"eval_fraction": (0.0, 1.0), "lora_dropout": (0.0, 1.0)})
        if not self.eval_fraction < 1.0:
            raise ConfigError(f"eval_fraction: expected a share in [0, 1), not {self.eval_fraction}")
        if self.eval_data:
            unused_settings(self, ["eval_fraction"], "not used when eval_data gives the held-out pairs")
        lora_unused(self)
        if self.reliability not in RELIABILITY:
            raise DataError("reward settings", None, "reliability",
                            f"expected one of {', '.join(RELIABILITY)}, not {self.reliability!r}")
        check_numbers(self, "reward", at_least_one=["reliability_min_pairs"])
        if self.reliability == "off":
            if self.calibration:
                raise ConfigError("calibration: not used with reliability off (nothing is measured); set reliability "
                                  "to weight or warn, or leave the calibration files out", ["calibration", "reliability"])
            unused_settings(self, ["reliability_min_pairs"], "not used with reliability off (nothing is measured)",
                            ("reliability",))
        for spec in self.calibration:
            path = split_weight(spec, minimum=0.0)[0]
            if path != spec:
                raise DataError("reward settings", None, "calibration", f"{spec}: a calibration file takes no weight "
                                f"(its labels are read to measure the labeler, never trained on); give {path}")


RELIABILITY = ("weight", "warn", "off")


# --------------------------------------------------------------------------------------------------------------------
# The loss


def soft_bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, p: torch.Tensor,
                            margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Per-pair loss -[p log sigma(r_c - r_r - m) + (1 - p) log sigma(r_r - r_c - m)].

    chosen, rejected: (B,) rewards; p: (B,) probability that `chosen` is better; margin: (B,) or scalar >= 0.
    Returns (B,). The cross-entropy of the Bradley-Terry model P(c > r) = sigma(r_c - r_r) (Bradley & Terry 1952;
    Ouyang et al. 2022, eq. 1) against a soft target, as used for preference models trained on AI labels (Bai et
    al. 2022, Constitutional AI, sec. 4.1). With p = 1 it is TRL's RewardTrainer loss, margin included.
    """
    delta = chosen - rejected
    return -(p * F.logsigmoid(delta - margin) + (1 - p) * F.logsigmoid(-delta - margin))


# --------------------------------------------------------------------------------------------------------------------
# Training


@cache
def length_sampler_class():
    """`EpochSeededLengthSampler`, built lazily (transformers' trainer utilities import slowly), once."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeededLengthSampler(LengthGroupedSampler):
        """transformers' LengthGroupedSampler (random megabatches of 50 batches, sorted by `lengths` within, the
        longest batch first), drawing its order from its own generator seeded with seed + epoch at every pass: the
        same order in a run resumed from a checkpoint (which skips the batches it trained) and on every process.
        The stock sampler draws from torch's global generator, whose state at an epoch's start a resume does not
        restore."""

        def __init__(self, lengths: list[int], batch_size: int, seed: int):
            super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
            self.seed, self.epoch = seed, 0

        def set_epoch(self, epoch: int) -> None:  # called by the Trainer (through accelerate) before each epoch
            self.epoch = epoch

        def __iter__(self):
            self.generator.manual_seed(self.seed + self.epoch)
            return super().__iter__()

    return EpochSeededLengthSampler


def _trainer_classes():
    """TRL's trainer and collator, extended for soft labels (built lazily: importing TRL takes seconds)."""
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    EpochSeededLengthSampler = length_sampler_class()

    class SoftPreferenceCollator(DataCollatorForPreference):
        def torch_call(self, examples):
            batch = super().torch_call(examples)
            for name in ("p_chosen", "weight"):
                batch[name] = torch.tensor([e[name] for e in examples], dtype=torch.float)
            return batch

    class SoftRewardTrainer(RewardTrainer):
        """RewardTrainer whose loss is `soft_bradley_terry_loss` times each row's weight, and whose batches grouped by
        length come in the order `seed` + epoch draws (`EpochSeededLengthSampler`)."""

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy != "group_by_length":
                return super()._get_train_sampler(train_dataset)
            return EpochSeededLengthSampler(dataset["length"], self.args.train_batch_size *
                                            self.args.gradient_accumulation_steps, self.args.seed)

        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["chosen_ids", "rejected_ids", "margin", "p_chosen", "weight", "length"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            chosen, rejected = outputs.logits.squeeze(-1).float().chunk(2)
            p, weight = inputs["p_chosen"], inputs["weight"]
            loss = (weight * soft_bradley_terry_loss(chosen, rejected, p, inputs.get("margin", 0.0))).mean()
            if self.args.center_rewards_coefficient is not None:
                loss = loss + self.args.center_rewards_coefficient * torch.mean((chosen + rejected) ** 2)
            with torch.no_grad():
                gather = self.accelerator.gather_for_metrics
                decided = (p != 0.5).float()
                right = torch.where(chosen == rejected, 0.5, ((chosen > rejected) == (p > 0.5)).float()) * decided
                # One row per pair: gather_for_metrics then drops the pairs the last batch repeats to fill every
                # process (it cuts the gathered rows to the real ones; per-process means would be cut wrongly).
                right, decided, margin, mean = gather(torch.stack([right, decided, chosen - rejected,
                                                                   (chosen + rejected) / 2], 1)).unbind(1)
                self._metrics[mode]["accuracy"].append((right.sum() / decided.sum().clamp(min=1)).item())
                self._metrics[mode]["margin"].append(margin.mean().item())
                self._metrics[mode]["mean_reward"].append(mean.mean().item())
            return (loss, outputs) if return_outputs else loss

    return SoftRewardTrainer, SoftPreferenceCollator


def held_out_key(key: str, fraction: float) -> bool:
    """Whether the pair with this `rankings.pair_key` is held out by the `eval_fraction` split: a hash of the key
    falls under `fraction`."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 16**8 < fraction


def split(rows: list[PreferenceRow], fraction: float) -> tuple[list[PreferenceRow], list[PreferenceRow]]:
    """(train, held out): a pair is held out when a hash of its content falls under `fraction` (`held_out_key`); stable
    across runs and across sources, since a mixed row is one pair."""
    from rlaif.rankings import pair_key

    held = [r for r in rows if held_out_key(pair_key(r), fraction)]
    held_ids = {id(r) for r in held}
    return [r for r in rows if id(r) not in held_ids], held


def fitting_pairs(rows: list[PreferenceRow], tokenizer, max_length: int, tally: Tally, weighted: bool = True
                  ) -> tuple[list[tuple[PreferenceRow, list[int], list[int]]], int | None]:
    """The pairs a reward model can learn from (or be judged on), each with the token ids of prompt + chosen and of
    prompt + rejected as TRL's RewardTrainer builds them (chat template included), and the length of the shortest
    pair left out as too long (a pair is as long as its longer sequence), or None.

    Left out and counted in `tally`: a row of weight 0 (`zero_weight`, when `weighted`), an empty or repeated reply
    (records.reply_problem), and a pair longer than `max_length` (`too_long`: TRL would drop it silently)."""
    kept, shortest = [], None
    for row in rows:
        tally.read += 1
        if weighted and row.get("weight", 1.0) == 0:
            problem = "zero_weight"
        else:
            problem = reply_problem(row["chosen"][-1]["content"], row["rejected"][-1]["content"])
        if not problem:
            chosen, rejected = (chat_ids(tokenizer, row["prompt"] + row[side]) for side in ("chosen", "rejected"))
            length = max(len(chosen), len(rejected))
            if length > max_length:
                problem, shortest = "too_long", min(length, shortest or length)
        if problem:
            tally.leave_out(problem)
        else:
            tally.used += 1
            kept.append((row, chosen, rejected))
    return kept, shortest


def _nothing_to_train(specs: list[str], tally: Tally, max_length: int, shortest: int | None,
                      zeroed: str = "") -> DataError:
    from rlaif.rankings import parse_weighted

    where = ", ".join(parse_weighted(spec)[0] for spec in specs)
    if set(tally.left_out) == {"too_long"}:
        return DataError(where, None, None, f"all {tally.read} training pairs are longer than max_length {max_length} "
                                            f"tokens (shortest pair {shortest} tokens, chat template included); "
                                            "raise --max-length")
    if set(tally.left_out) == {"zero_weight"}:
        return DataError(where, None, None, "every pair has weight 0: nothing to train on" +
                         (f"; {zeroed}" if zeroed else ""))
    return DataError(where, None, None, f"nothing left to train on: {tally.summary()}" +
                     (f"; {zeroed}" if zeroed and "zero_weight" in tally.left_out else ""))


def run(config: RewardConfig, progress: bool = True) -> dict:
    """Train (or resume training) a reward model; returns the metrics written to OUT/metrics.json, with `counts`
    (training and held-out pairs read, used and left out, as in the manifest) and `summary`, their line.

    Raises DataError before loading the model (and before creating OUT) when no training pair is left."""
    import datasets
    from datasets import Dataset
    from transformers import set_seed
    from trl import RewardConfig as TRLRewardConfig

    from rlaif.models import (
        device_dtype,
        load_tokenizer,
        lora_config,
        precision_args,
        train_and_save,
        trainer_device,
        training_dtype,
    )
    from rlaif.rankings import pair_key, parse_weighted

    if not config.data:
        raise ConfigError("data: give at least one preference file (--data FILE[:WEIGHT])")
    labels, calibration_labels = Tally("labels"), Tally("calibration labels")
    sources = load_sources(config.data, config.ties, labels)
    if config.eval_data:
        held_out, _ = load_mix(config.eval_data, config.ties, config.human_overrides, labels, setting="eval_data")
        held_keys = {pair_key(r) for r in held_out}
        is_held_out = held_keys.__contains__
    else:
        is_held_out = partial(held_out_key, fraction=config.eval_fraction)
    calibration = [(path, rows) for path, rows, _ in load_sources(config.calibration, config.ties,
                                                                  calibration_labels, setting="calibration")]
    as_read = sources  # the labels as the files hold them, before calibration, for `human_agreement`
    sources, reliability = weigh_sources(sources, calibration, is_held_out, config.reliability,
                                         config.reliability_min_pairs)
    if progress:
        _print_warnings(reliability)
    rows, agreement = mix(sources, config.human_overrides)
    zeroed = _zeroed(reliability)
    require_weight(rows, [path for path, _, _ in sources], zeroed)
    if config.eval_data:
        train = [r for r in rows if pair_key(r) not in held_keys]
    else:
        train, held_out = split(rows, config.eval_fraction)
    if not train:
        raise DataError(config.data[0], None, None, "no training pairs left after holding out the evaluation pairs")
    tokenizer = load_tokenizer(config.model)
    train_tally, held_tally = Tally("training pairs"), Tally("held-out pairs")
    train_pairs, shortest = fitting_pairs(train, tokenizer, config.max_length, train_tally)
    held_pairs, _ = fitting_pairs(held_out, tokenizer, config.max_length, held_tally, weighted=False)
    if not train_tally.used:
        raise _nothing_to_train(config.data, train_tally, config.max_length, shortest, zeroed)
    device = trainer_device(config.device)

    out = Path(config.out)
    learning_rate = config.learning_rate or (1e-4 if config.lora else 1e-5)
    manifest = open_stage(out, "reward", {**asdict(config), "learning_rate": learning_rate},
                          volatile=RewardConfig.VOLATILE, added=RewardConfig.ADDED)
    if manifest.status == "complete" and (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    for spec in config.data + config.eval_data + config.calibration:
        manifest.add_input(parse_weighted(spec)[0])
    set_seed(config.seed)  # before the new score head (and LoRA's adapters) draw their initial weights
    model, tokenizer = load_backbone(config.model, "cpu", dtype=training_dtype(device, config.lora))
    datasets.disable_progress_bars()

    # Already tokenized, so TRL reads exactly the ids counted above (its max_length filter finds nothing to drop).
    mean_weight = sum(row["weight"] for row, _, _ in train_pairs) / len(train_pairs)
    table = [{"chosen_ids": chosen, "rejected_ids": rejected, "p_chosen": float(row["p_chosen"]),
              "weight": row["weight"] / mean_weight, "margin": float(row.get("margin", config.margin)),
              "length": max(len(chosen), len(rejected))}
             for row, chosen, rejected in train_pairs]
    args = TRLRewardConfig(
        output_dir=str(out / "checkpoints"), learning_rate=learning_rate, num_train_epochs=config.epochs,
        max_steps=config.max_steps, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, max_length=config.max_length,
        center_rewards_coefficient=config.center_rewards, save_steps=config.save_steps, save_total_limit=2,
        logging_steps=1, report_to="none", seed=config.seed, disable_tqdm=not progress, **precision_args(device),
        train_sampling_strategy="group_by_length" if config.group_by_length else "random", length_column_name="length",
    )
    peft_config = (lora_config(config.lora_r, config.lora_alpha, config.lora_dropout, task_type="SEQ_CLS")
                   if config.lora else None)
    trainer_cls, collator_cls = _trainer_classes()
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(table), processing_class=tokenizer,
                          data_collator=collator_cls(pad_token_id=tokenizer.pad_token_id), peft_config=peft_config)
    started = time.time()
    final, result, checkpoint = train_and_save(trainer, tokenizer, out, config.lora)
    # Scored in the dtype PPO and GRPO score with (RewardModel.load: bf16 on a bf16 GPU), on the training device.
    scorer = RewardModel(final.to(device, getattr(torch, device_dtype(device))).eval(), tokenizer)
    stats_rows = [row for row, _, _ in train_pairs[: config.stats_samples]]
    stats_rewards = scorer.score([r["prompt"] for r in stats_rows] * 2,
                                 [r["chosen"][-1]["content"] for r in stats_rows] +
                                 [r["rejected"][-1]["content"] for r in stats_rows])
    reward_stats = {"mean": stats_rewards.mean().item(),
                    "std": stats_rewards.std().item() if len(stats_rewards) > 1 else 1.0, "responses": len(stats_rewards)}
    write_atomic(out / "reward_stats.json", dumps_json(reward_stats))

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    counts = {**labels.counts("labels_"), **train_tally.counts(), **held_tally.counts("heldout_"),
              **(calibration_labels.counts("calibration_") if config.calibration else {}),
              "steps": trainer.state.global_step}
    summary = f"{labels.summary()}; {train_tally.summary()}" + (f"; {held_tally.summary()}" if held_tally.read else "")
    if reliability_line(reliability):
        summary += f"; {reliability_line(reliability)}"
    metrics = {"train": {"pairs": train_tally.used, "steps": trainer.state.global_step,
                         "loss": result.training_loss, "first_loss": losses[0] if losses else None,
                         "last_loss": losses[-1] if losses else None, "resumed_from": checkpoint},
               "heldout": evaluate_reward_model(scorer, [row for row, _, _ in held_pairs]) if held_pairs else None,
               "agreement": agreement, "reliability": reliability,
               "human_agreement": human_agreement(as_read, calibration, is_held_out),
               "reward_stats": reward_stats, "counts": counts,
               "summary": summary,
               "seconds": time.time() - started}
    write_atomic(out / "metrics.json", dumps_json(metrics))
    manifest.counts.update(counts)
    manifest.seconds += metrics["seconds"]
    manifest.outputs = ["model.safetensors", "reward_stats.json", "metrics.json", "checkpoints/"]
    manifest.status = "complete"
    manifest.save(out)
    return metrics


def human_agreement(sources: list[tuple[str, list[PreferenceRow], float]],
                    calibration: list[tuple[str, list[PreferenceRow]]], is_held_out) -> dict:
    """rlaif.agreement's report on the data files (`sources`, as read) and the calibration files (read only to
    measure: their people count toward people's majority, not toward people's agreement with each other).

    People's agreement with each other is measured on every human row, held-out pairs included: it involves no
    model, and pairs several people answered are few. Each AI labeler against people is measured on the
    training-side pairs only (`left_out.reward_stage.held_out_rows`), as the reliability measure is, and, as it is,
    not on pairs people answered because `rankings export` chose them for the labeler's doubt (a human row whose
    `why` is other than random: `left_out.reward_stage.chosen_for_doubt_rows`). An AI row that names no labeler is
    its file's (rlaif.reliability.labeler_of)."""
    from rlaif.agreement import agreement_report
    from rlaif.rankings import pair_key
    from rlaif.records import chosen_for_doubt

    def named(file: str, rows: list[PreferenceRow]) -> list[PreferenceRow]:
        return [{**row, "labeler": file} if row.get("source") == "ai" and not row.get("labeler") else row
                for row in rows]

    every = [row for file, rows, _ in sources for row in named(file, rows)]
    extra = [row for file, rows in calibration for row in named(file, rows)]
    held = [row for row in every + extra if is_held_out(pair_key(row))]
    doubt = [row for row in every + extra if chosen_for_doubt(row) and not is_held_out(pair_key(row))]
    doubted = {pair_key(row) for row in doubt}  # their pairs measure no labeler, by any row (a check's labels too)
    report = agreement_report(every, extra, measures_ai=lambda key: not is_held_out(key) and key not in doubted)
    report["left_out"]["reward_stage"] = {"held_out_rows": len(held), "chosen_for_doubt_rows": len(doubt)}
    if doubt:
        report["notes"].append(f"{len(doubt)} human rows answer pairs chosen for the labeler's doubt (rankings export): "
                               "they train, and count in people's agreement with each other, but do not measure the "
                               "AI labels, which would look worse on them than they are")
    return report


def load_backbone(spec: str, device: str, dtype: str = "auto"):
    """A causal LM spec (or a trained reward model) as a sequence classifier with one output, and its tokenizer.
    dtype "auto": bfloat16 on a GPU that supports it, for scoring; see models.training_dtype for training."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from rlaif.models import _not_found, device_dtype, load_tokenizer, resolve

    if dtype == "auto":
        dtype = device_dtype(device)
    tokenizer = load_tokenizer(spec)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialized": expected for a new head
    try:
        model = AutoModelForSequenceClassification.from_pretrained(resolve(spec), num_labels=1, use_safetensors=True,
                                                                   dtype=getattr(torch, dtype))
    except OSError as e:
        raise _not_found(spec, e) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


# --------------------------------------------------------------------------------------------------------------------
# Scoring and metrics


class RewardModel:
    """A trained reward model as a function: `score(prompts, responses) -> (N,) rewards`."""

    def __init__(self, model, tokenizer, stats: dict | None = None):
        self.model, self.tokenizer, self.stats = model, tokenizer, stats

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, dtype: str = "auto") -> RewardModel:
        from rlaif.models import default_device

        model, tokenizer = load_backbone(str(path), device or default_device(), dtype)
        stats_file = Path(path) / "reward_stats.json"
        stats = json.loads(read_text(stats_file)) if stats_file.is_file() else None
        return cls(model.eval(), tokenizer, stats)

    def tokenize(self, prompt: str | list[Message], response: str) -> list[int]:
        """The tokens the model reads: the chat template over prompt + response, as TRL's RewardTrainer builds them."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return chat_ids(self.tokenizer, messages + [{"role": "assistant", "content": response}])

    @torch.inference_mode()
    def score(self, prompts: list[str | list[Message]], responses: list[str], batch_size: int = 16,
              normalize: bool = False) -> torch.Tensor:
        """Rewards (N,) float32 on the CPU, batched by length. `normalize`: (r - mean) / std with reward_stats.json."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        ids = [self.tokenize(p, r) for p, r in zip(prompts, responses)]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        rewards = torch.empty(len(ids))
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            rewards[batch] = logits[:, 0].float().cpu()
        if normalize:
            if not self.stats:
                raise ConfigError("normalize: this reward model has no reward_stats.json")
            rewards = (rewards - self.stats["mean"]) / max(self.stats["std"], 1e-8)
        return rewards

    __call__ = score


def evaluate_reward_model(scorer: RewardModel, rows: list[PreferenceRow]) -> dict:
    """Held-out metrics, overall (the mixed label) and per source (each source's own label for the pairs it
    labeled): accuracy, mean margin, ECE; and how far the reward tracks response length."""
    prompts = [r["prompt"] for r in rows]
    chosen = scorer.score(prompts, [r["chosen"][-1]["content"] for r in rows])
    rejected = scorer.score(prompts, [r["rejected"][-1]["content"] for r in rows])
    delta = (chosen - rejected).tolist()
    labels: dict[str, list[tuple[int, float]]] = {"overall": [(i, r["p_chosen"]) for i, r in enumerate(rows)]}
    for i, row in enumerate(rows):
        by_source: dict[str, list[float]] = {}
        for entry in row.get("provenance", [{"source": row.get("source", "human"), "p_chosen": row["p_chosen"]}]):
            by_source.setdefault(entry["source"], []).append(entry["p_chosen"])
        for source, ps in by_source.items():
            labels.setdefault(source, []).append((i, sum(ps) / len(ps)))
    metrics = {name: pair_metrics([delta[i] for i, _ in pairs], [p for _, p in pairs])
               for name, pairs in labels.items()}
    lengths = [len(scorer.tokenize(r["prompt"], r[side][-1]["content"])) - len(scorer.tokenize(r["prompt"], ""))
               for side in ("chosen", "rejected") for r in rows]
    rewards = chosen.tolist() + rejected.tolist()
    decided = [(i, r) for i, r in enumerate(rows) if r["p_chosen"] != 0.5]
    metrics["length"] = {
        "reward_length_correlation": pearson(rewards, lengths),
        "longer_wins_accuracy": (sum((a > b) + 0.5 * (a == b) for a, b in
                                     ((lengths[i], lengths[len(rows) + i]) for i, _ in decided)) / len(decided)
                                 if decided else None),
        # the rule a reward model must beat (docs/reward-table.md): prefer the shorter reply, in tokens, a tie half
        "shorter_wins": stats.bootstrap(stats.agreement, [
            1.0 if a < b else 0.5 if a == b else 0.0
            for a, b in ((lengths[i], lengths[len(rows) + i]) for i, _ in decided)]).as_dict() if decided else None,
        "mean_tokens_chosen": sum(lengths[: len(rows)]) / len(rows),
        "mean_tokens_rejected": sum(lengths[len(rows) :]) / len(rows),
    }
    return metrics


def pair_metrics(delta: list[float], p: list[float]) -> dict:
    """Accuracy (the reward picks the label's winner; a tied reward counts half; 0.5 labels left out) with its 95%
    bootstrap interval over the pairs (rlaif.stats), mean margin toward the label's winner, and ECE of sigma(delta) as
    the probability of that winner, beside the ECE floor a calibrated model would show on as many pairs."""
    from rlaif.evaluate import calibration_bins, expected_calibration_error

    decided = [(d if q > 0.5 else -d) for d, q in zip(delta, p) if q != 0.5]
    if not decided:
        return {"pairs": len(delta), "accuracy": None, "mean_margin": None, "ece": None}
    probs = [1 / (1 + math.exp(-d)) for d in decided]
    return {"pairs": len(delta), "accuracy": sum((d > 0) + 0.5 * (d == 0) for d in decided) / len(decided),
            "accuracy_interval": stats.bootstrap(stats.agreement, probs).as_dict(),  # sigma(d) > 0.5: d > 0
            "mean_margin": sum(decided) / len(decided),
            "ece": expected_calibration_error(probs), "ece_floor": stats.ece_floor(probs),
            "calibration": calibration_bins(probs)}


def pearson(x: list[float], y: list[float]) -> float | None:
    n = len(x)
    if n < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None
