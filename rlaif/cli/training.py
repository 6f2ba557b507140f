"""The training stages: `rlaif sft`, `reward`, `ppo`, `dpo` and `grpo`; each writes a model directory."""

from __future__ import annotations

import os

import click
from rich.table import Table

from rlaif.cli import cli, err, fail, out, recipe_option, shown, stage_config

# --------------------------------------------------------------------------------------------------------------------
# rlaif sft


@cli.command()
@click.option("--data", help="sft.jsonl: rows of `messages` ending with the assistant's reply (rlaif critique writes it).")
@click.option("--out", help="Where the fine-tuned model goes; checkpoints under OUT/checkpoints/.  [default: runs/sft]")
@click.option("-m", "--model", help="The model to fine-tune.  [default: smollm2-135m-instruct]")
@click.option("--lora/--full", default=None, help="Train a LoRA adapter (merged at the end) or every weight.  [default: full]")
@click.option("--lora-r", type=int, help="LoRA rank.  [default: 16]")
@click.option("--learning-rate", type=float, help="[default: 2e-4 with LoRA, 2e-5 without]")
@click.option("--epochs", type=float, help="Passes over the data.  [default: 1]")
@click.option("--max-steps", type=int, help="Stop after N optimizer updates (overrides --epochs).")
@click.option("--batch-size", type=int, help="Examples per step.  [default: 8]")
@click.option("--grad-accum", type=int, help="Steps per optimizer update.  [default: 1]")
@click.option("--max-length", type=int, help="Tokens per example.  [default: 1024]")
@click.option("--save-steps", type=int, help="Checkpoint every N updates.  [default: 50]")
@click.option("--seed", type=int, help="[default: 0]")
@click.option("--device", help="cpu, cuda, ...  [default: a GPU if there is one]")
@recipe_option
def sft(config_file, **flags) -> None:
    """Fine-tune a model on SFT data (TRL SFTTrainer), loss on the assistant's reply only.

    OUT becomes a model directory (safetensors) that any command takes as --model. Kill it any time: the same
    command resumes from the latest checkpoint.

    \b
    Examples:
      rlaif sft --data runs/x/critique/sft.jsonl --out runs/x/sft
      rlaif sft --data runs/x/critique/sft.jsonl --out runs/x/sft-lora --lora --max-steps 200
    """
    from rlaif import sft as stage

    config = stage_config(stage.SFTConfig, config_file, flags)
    if not config.data:
        raise click.UsageError("--data is required (or `data:` in --config)")
    metrics = stage.run(config)
    out.print(f"[green]✓[/green] {metrics['steps']} steps on {metrics['examples']} examples, loss "
              f"{metrics['first_loss']:.3f} → {metrics['last_loss']:.3f}; model in {shown(config.out)}"
              f"{_data_summary(metrics)}", soft_wrap=True)


def _data_summary(metrics: dict) -> str:
    """What a training stage read, used and left out, for its closing line."""
    return f" ({shown(metrics['summary'])})" if "summary" in metrics else ""


# --------------------------------------------------------------------------------------------------------------------
# rlaif reward


@cli.command()
@click.option("--data", multiple=True, metavar="FILE[:WEIGHT]",
              help="A preference file and its weight (default 1); repeat to mix sources. Label or critique output, "
                   "imported rankings, or any file `rankings import` reads.")
@click.option("--out", help="Where the reward model and metrics.json go.  [default: runs/rm]")
@click.option("-m", "--model", help="Backbone: any causal LM spec.  [default: smollm2-135m-instruct]")
@click.option("--eval-data", multiple=True, metavar="FILE", help="Held-out pairs (else --eval-fraction of the pairs).")
@click.option("--eval-fraction", type=float, help="Share of pairs held out.  [default: 0.1]")
@click.option("--human-overrides", is_flag=True, default=None,
              help="Where people and the AI pick different winners, keep only the human label.")
@click.option("--calibration", multiple=True, metavar="FILE",
              help="AI labels of pairs people labelled (`rlaif eval labeler`'s labels.jsonl), to measure each labeler "
                   "against the human pairs in --data; read, never trained on. Repeatable.")
@click.option("--reliability", type=click.Choice(["weight", "warn", "off"]),
              help="weight: a labeler that does not beat the best baseline (shorter, longer reply, a coin), or that "
                   "too few pairs measure, gets weight 0; warn: keep its weight and warn; off: labels as given. "
                   "Measured labelers are calibrated (Platt slope) under weight and warn.  [default: weight]")
@click.option("--reliability-min-pairs", type=int,
              help="Pairs labelled by people and the labeler needed to measure it; with fewer, it gets weight 0 "
                   "(under --reliability warn: kept, uncalibrated).  [default: 20]")
@click.option("--lora/--full", default=None, help="Train a LoRA adapter and the head, or every weight.  [default: full]")
@click.option("--learning-rate", type=float, help="[default: 1e-4 with LoRA, 1e-5 without]")
@click.option("--epochs", type=float, help="Passes over the data.  [default: 1]")
@click.option("--max-steps", type=int, help="Stop after N optimizer updates (overrides --epochs).")
@click.option("--batch-size", type=int, help="Pairs per step.  [default: 8]")
@click.option("--grad-accum", type=int, help="Steps per optimizer update.  [default: 1]")
@click.option("--max-length", type=int, help="Tokens of prompt + response; longer pairs are left out.  [default: 1024]")
@click.option("--group-by-length/--no-group-by-length", default=None,
              help="Batch pairs of similar length (batches still shuffled): less padding, faster.  [default: on]")
@click.option("--margin", type=float, help="Required reward gap toward the winner.  [default: 0]")
@click.option("--center-rewards", type=float, help="Penalty on the mean squared reward (e.g. 0.01).  [default: off]")
@click.option("--seed", type=int, help="[default: 0]")
@click.option("--device", help="cpu, cuda, ...  [default: a GPU if there is one]")
@recipe_option
def reward(config_file, data, eval_data, calibration, **flags) -> None:
    """Train a reward model on AI labels, human rankings, or a weighted mix of both.

    Soft labels are used as they are: the loss is the Bradley-Terry cross-entropy against p = P(chosen is
    better), TRL's RewardTrainer loss at p = 1. The same pair from several files becomes one row (weighted mean
    label, provenance kept). metrics.json reports held-out accuracy, margin and calibration per source and overall,
    how far the reward follows response length, and where people and the AI disagree. Rerun to resume.

    Where people labelled some of the pairs an AI labeler labelled (human rows in --data, or --calibration files),
    each labeler is measured on them first, never on held-out pairs: its agreement with people and that of the
    best baseline (prefer the shorter reply, the longer, a coin), with 95% bootstrap intervals, and a Platt
    calibration slope. Its labels then train calibrated if it beats that baseline (an exact sign test on the pairs
    where they differ, p < 0.025) and agrees with people on more than half of the pairs where the better length
    rule is wrong; one that does not, or that fewer than --reliability-min-pairs pairs measure, gets weight 0 and a
    warning (--reliability warn keeps it). A labeler is a model in a label mode (compare, contrast, score), each
    measured on its own labels. metrics.json's `reliability` has the numbers.

    \b
    Examples:
      rlaif reward --data runs/x/label/preferences.jsonl --out runs/x/rm
      rlaif reward --data runs/x/label/preferences.jsonl:1 --data runs/x/human.jsonl:2 --out runs/x/rm --lora
      rlaif eval labeler --pairs human.jsonl --out runs/check --no-cot     # writes runs/check/labels.jsonl
      rlaif reward --data runs/x/label/preferences.jsonl --data human.jsonl \\
          --calibration runs/check/labels.jsonl --out runs/x/rm
    """
    from rlaif import reward as stage

    flags.update(data=list(data) or None, eval_data=list(eval_data) or None, calibration=list(calibration) or None)
    config = stage_config(stage.RewardConfig, config_file, flags)
    if not config.data:
        raise click.UsageError("--data is required (or `data:` in --config)")
    metrics = stage.run(config)
    train, held = metrics["train"], metrics["heldout"]
    out.print(f"[green]✓[/green] {train['steps']} steps on {train['pairs']} pairs, loss {train['first_loss']:.3f} → "
              f"{train['last_loss']:.3f}; model in {shown(config.out)}{_data_summary(metrics)}", soft_wrap=True)
    if held:
        from rlaif.stats import Estimate

        table = Table("held-out", "pairs", "accuracy [95% CI]", "margin", "ECE (floor)", title="reward model")
        for name, m in held.items():
            if name != "length":
                fmt = lambda v: "-" if v is None else f"{v:.3f}"
                accuracy = (Estimate(**m["accuracy_interval"]).percent() if m.get("accuracy_interval")
                            else fmt(m["accuracy"]))
                ece = fmt(m["ece"]) + (f" ({m['ece_floor']:.3f})" if m.get("ece_floor") is not None else "")
                table.add_row(shown(name), str(m["pairs"]), accuracy, fmt(m["mean_margin"]), ece)
        out.print(table)
        length = held["length"]
        if length["reward_length_correlation"] is not None:
            out.print(f"reward vs response length: r = {length['reward_length_correlation']:+.2f} "
                      f"(the longer response is the chosen one in {length['longer_wins_accuracy']:.0%} of pairs)")
        if length.get("shorter_wins"):
            out.print(f"baseline on the same pairs: prefer the shorter reply, "
                      f"{Estimate(**length['shorter_wins']).percent()}; a reward model below it has learnt less "
                      "than reply length tells")
    print_reliability(metrics.get("reliability", {}))
    agreement = metrics["agreement"]
    if agreement["pairs_labeled_by_both"]:
        out.print(f"people and the AI agree on {agreement['agree']:g}/{agreement['pairs_labeled_by_both']} pairs "
                  f"labeled by both; the others are listed in metrics.json")


def print_reliability(reliability: dict) -> None:
    """Each AI labeler measured against people: its agreement and the best baseline's with intervals, the sign test
    between them, its agreement where the better length rule is wrong, the Platt slope, and the decision with the
    weight given and used (the warnings were printed as the stage started). Fits 100 columns: every figure on two
    short lines, the labeler's name folded."""
    measured = {name: e for name, e in reliability.get("sources", {}).items() if e["decision"] != "no human labels"}
    if not measured:
        return
    from rlaif.reliability import COIN

    short = {"prefer the shorter reply": "shorter", "prefer the longer reply": "longer", COIN: "coin"}
    table = Table("labeler", "agrees", "best baseline", "sign test", "where length\nis wrong", "slope", "decision",
                  title=f"AI labelers against people (reliability: {reliability['mode']})",
                  caption="sign test: its p-value, and of the pairs where labeler and baseline differ, how many go the "
                          "labeler's way; decision: then weight given → used")
    table.columns[0].overflow = "fold"
    for column in table.columns[1:6]:
        column.no_wrap = True
    interval = lambda e: f"[{100 * e['low']:.1f}, {100 * e['high']:.1f}]"
    rate = lambda e: f"{e['value']:.1%} of {e['n']}\n{interval(e)}"
    for name, e in measured.items():
        if "agreement" in e:
            test, length, best = e["sign_test"], e["against_length"], e["baseline"]
            cells = [rate(e["agreement"]), f"{short.get(best['name'], best['name'])} {best['value']:.1%}\n{interval(best)}",
                     f"p = {test['p_value']:.2g}\n{test['for']} of {test['discordant']}",
                     "none" if length["vacuous"] else rate(length), f"{e['slope']:.3f}"]
        else:
            cells = [f"{e['pairs']} pair{'' if e['pairs'] == 1 else 's'}", "-", "-", "-", "-"]
        weights = ", ".join(f"{e['weight_given'][file]:g} → {used:g}" for file, used in e["weight_used"].items())
        table.add_row(shown(name), *cells, f"{e['decision']}\n{weights}")
    out.print(table)


# --------------------------------------------------------------------------------------------------------------------
# rlaif ppo / dpo / grpo


@cli.command()
@click.option("--policy", help="The model to train: usually a run's sft/ directory.  [default: smollm2-135m-instruct]")
@click.option("--reward-model", multiple=True, metavar="DIR[:WEIGHT]",
              help="A reward model from `rlaif reward`, and its weight; repeat to sum several.")
@click.option("--reward-fn", multiple=True, metavar="MODULE:FUNCTION[:WEIGHT]",
              help="A Python reward f(prompts, responses) -> one number per response; repeatable.")
@click.option("--reward-score", metavar="MODEL[:WEIGHT]", help="A labeler's direct 1-10 score as a reward.")
@click.option("-c", "--constitution", help="The rubric of --reward-score.  [default: default]")
@click.option("--prompts", help="Training prompts: JSONL, CSV, text or hh-rlhf transcripts.")
@click.option("--eval-prompts", help="Held-out prompts, scored before, during (--eval-every) and after training.")
@click.option("--eval-every", type=int, help="Score the held-out prompts every N steps too; 0: before and after only.")
@click.option("--monitor-judge", metavar="DIR", help="A second reward model, never trained against, that scores the "
              "eval replies at each eval: monitor/judge_score and monitor/reward_judge_gap, a warning when the gap "
              "widens as the reward climbs (reward hacking).")
@click.option("--out", help="Where the policy, logs and checkpoints go. Rerun to resume.  [default: runs/ppo]")
@click.option("--steps", type=int, help="PPO updates; raise it and rerun to train on.  [default: 100]")
@click.option("--batch-size", type=int, help="Prompts per rollout, per process.  [default: 8]")
@click.option("--minibatches", type=int, help="Optimizer steps per PPO epoch.  [default: 1]")
@click.option("--micro-batch-size", type=int, help="Rows per forward/backward (gradients accumulate).")
@click.option("--ppo-epochs", type=int, help="Passes over each rollout.  [default: 4]")
@click.option("--max-new-tokens", type=int, help="Response length limit.  [default: 64]")
@click.option("-t", "--temperature", type=float, help="Sampling temperature (> 0).  [default: 0.7]")
@click.option("--missing-eos-penalty", type=float, help="Subtracted from the reward of responses cut off.")
@click.option("--learning-rate", type=float, help="[default: 1e-4 with LoRA, 1e-5 without]")
@click.option("--kl-coef", type=float, help="Beta, the KL penalty's weight (initial, if adaptive).  [default: 0.05]")
@click.option("--kl-target", type=float, help="Adaptive beta's target KL per response, nats.  [default: 6]")
@click.option("--fixed-kl", is_flag=True, default=False, help="Keep beta fixed at --kl-coef (no target).")
@click.option("--kl-estimator", type=click.Choice(["k1", "k2", "k3"]), help="Per-token KL estimate.  [default: k1]")
@click.option("--lora/--full", default=None, help="Train LoRA adapters (reference = adapter off) or every weight.")
@click.option("--fsdp", is_flag=True, default=None, help="Shard policy, value model and reference across the processes "
              "of accelerate launch (PyTorch FSDP2): each GPU keeps 1/N of the weights, gradients and optimizer state.")
@click.option("--shared-value-head/--value-model", default=None,
              help="Value as a head on the policy's own trunk (one forward and backward per minibatch, not two; "
                   "starts at zero) or a separate value model (from the reward model).  [default: value model]")
@click.option("--save-steps", type=int, help="Checkpoint every N steps.  [default: 10]")
@click.option("--sample-every", type=int, help="Keep the responses of step 1 and every N steps in samples.jsonl; 0: "
              "none.  [default: 10]")
@click.option("--log-with", help="Also log to an accelerate tracker (tensorboard, wandb, ...).")
@click.option("--seed", type=int, help="[default: 0]")
@click.option("--device", help="cpu, cuda, ...  [default: a GPU if there is one]")
@click.option("--engine", type=click.Choice(["rlaif", "vllm"]),
              help="Where rollouts are sampled: rlaif (here) or vllm (vLLM on the same GPU, given the policy's weights "
                   "after every step; PPO's log-probabilities recomputed, the gap logged as rollout/logprob_gap).  "
                   "[default: rlaif]")
@recipe_option
def ppo(config_file, reward_model, reward_fn, fixed_kl, **flags) -> None:
    """Reinforcement learning with PPO against a reward, with a KL penalty to the starting policy.

    Each step samples one response per prompt, scores it (reward models, a labeler's direct score, Python
    functions, or a weighted sum), subtracts beta times the KL to the frozen reference on every token, and runs
    clipped PPO epochs on the policy and a value model (the first reward model's backbone, head zeroed). The bar shows
    reward, KL and beta; metrics.jsonl has every diagnostic per step (kl, non_score_reward, clipfrac, approx_kl,
    entropy, explained_variance, losses, length, samples/s) and reward-hacking monitors (monitor/*: the score's
    correlation with reply length and with KL, the share of replies cut off; with --monitor-judge, a second reward
    model's view), a crossed threshold in the row's `warnings` and printed the first time. Kill it at any time and
    rerun the same command: it resumes from the newest checkpoint. Guards stop the run, with a checkpoint, on NaN rewards or losses, a
    runaway KL or exploding probability ratios, and say what to try. Several devices: `accelerate launch -m rlaif ppo`.

    \b
    Examples:
      rlaif ppo --policy runs/x/sft --reward-model runs/x/rm --prompts prompts.jsonl --out runs/x/ppo
      rlaif ppo --policy runs/x/sft --reward-model runs/x/rm:1 --reward-score smollm2-135m-instruct:0.5 \\
                --prompts prompts.jsonl --lora --steps 200 --out runs/x/ppo
      accelerate launch --num_processes 2 -m rlaif ppo --config ppo.yaml
    """
    import dataclasses

    from rlaif.ppo import trainer as stage
    from rlaif.ppo.config import check_alone

    flags.update(reward_model=list(reward_model) or None, reward_fn=list(reward_fn) or None)
    config = stage_config(stage.PPOConfig, config_file, flags)
    if fixed_kl:
        config = dataclasses.replace(config, kl_target=None)  # checked again: kl_horizon then does nothing
    check_alone(config)
    if not config.prompts:
        raise click.UsageError("--prompts is required (or `prompts:` in --config)")
    try:
        metrics = stage.run(config)
    except stage.PPOStopped as e:
        fail("stopped", str(e), 2)
    if os.environ.get("RANK", "0") != "0":  # under accelerate launch, one process reports
        return
    if "step" in metrics:
        out.print(f"[green]✓[/green] step {metrics['step']}: reward {metrics['score']:+.3f}, KL {metrics['kl']:.2f}, "
                  f"beta {metrics['beta']:.4f}; policy in {shown(config.out)}{_data_summary(metrics)}",
                  soft_wrap=True)
        _monitor_warnings(metrics, config.out)
    else:
        out.print(f"[green]✓[/green] already trained for {config.steps} steps: {shown(config.out)}"
                  f"{_data_summary(metrics)}", soft_wrap=True)


@cli.command()
@click.option("--data", multiple=True, metavar="FILE[:WEIGHT]",
              help="A preference file and its weight (default 1); repeat to mix sources as `rlaif reward` does (the "
                   "labels of one pair become one, their weighted mean). Label output, imported rankings, hh-rlhf.")
@click.option("--policy", help="The model to train and the frozen reference: usually a run's sft/ directory.")
@click.option("--out", help="Where the policy and checkpoints go. Rerun to resume.  [default: runs/dpo]")
@click.option("--beta", type=float, help="Strength of the implicit KL penalty.  [default: 0.1]")
@click.option("--loss-type", help="TRL's DPO loss: sigmoid, robust (noisy labels), ipo, hinge, ...  [default: sigmoid]")
@click.option("--label-smoothing", help="Label error rate for the robust, exo_pair and aot losses (an error with the "
              "others), or auto: mean 1 - p_chosen with those, 0 with the others.  [default: auto]")
@click.option("--min-p-chosen", type=float, help="Leave out pairs no more confident than this.  [default: 0.5]")
@click.option("--lora/--full", default=None, help="Train LoRA adapters (merged at the end) or every weight.")
@click.option("--learning-rate", type=float, help="[default: 5e-5 with LoRA, 5e-7 without]")
@click.option("--epochs", type=float, help="[default: 1]")
@click.option("--max-steps", type=int, help="Overrides --epochs when > 0.")
@click.option("--batch-size", type=int, help="Pairs per device per step.  [default: 8]")
@click.option("--max-length", type=int, help="Prompt + reply tokens.  [default: 1024]")
@click.option("--seed", type=int, help="[default: 0]")
@click.option("--device", help="cpu, cuda, ...  [default: a GPU if there is one]")
@recipe_option
def dpo(config_file, data, label_smoothing, **flags) -> None:
    """Direct preference optimisation on preference files (TRL DPOTrainer): PPO without a reward model.

    The files are mixed as `rlaif reward` mixes them, and each pair trains once toward the winner of its
    weighted labels; ties and pairs no more confident than --min-p-chosen are left out. With --loss-type
    robust, soft labels set the assumed label error rate (--label-smoothing auto).
    In a recipe, `policy_trainer: dpo` trains on every round's labels and the human pairs instead of PPO.

    \b
    Example:
      rlaif dpo --data runs/x/round-1/label/preferences.jsonl --policy runs/x/round-1/sft --lora --out runs/x/dpo
    """
    from rlaif import dpo as stage

    if label_smoothing is not None and label_smoothing != "auto":
        try:
            label_smoothing = float(label_smoothing)
        except ValueError:
            raise click.BadParameter("expected auto or a number", param_hint="--label-smoothing") from None
    flags.update(data=list(data) or None, label_smoothing=label_smoothing)
    config = stage_config(stage.DPOConfig, config_file, flags)
    if not config.data:
        raise click.UsageError("--data is required (or `data:` in --config)")
    metrics = stage.run(config, on_note=lambda text: err.print(f"[yellow]note:[/yellow] {shown(text)}", soft_wrap=True))
    out.print(f"[green]✓[/green] {metrics['steps']} steps on {metrics['pairs']} pairs, last loss "
              f"{metrics['last_loss']}; policy in {shown(config.out)}{_data_summary(metrics)}", soft_wrap=True)


@cli.command()
@click.option("--algorithm", type=click.Choice(["grpo", "rloo"]), help="[default: grpo]")
@click.option("--policy", help="The model to train and the KL reference: usually a run's sft/ directory.")
@click.option("--reward-model", multiple=True, metavar="DIR[:WEIGHT]",
              help="A reward model from `rlaif reward`, and its weight; repeat to sum several.")
@click.option("--prompts", help="Training prompts: JSONL, CSV, text or hh-rlhf transcripts.")
@click.option("--out", help="Where the policy, metrics and checkpoints go. Rerun to resume.  [default: runs/grpo]")
@click.option("--steps", type=int, help="Optimizer steps.  [default: 100]")
@click.option("--prompts-per-step", type=int, help="Prompts per step, per device.  [default: 4]")
@click.option("--group-size", type=int, help="Replies sampled per prompt, at least 2.  [default: 4]")
@click.option("--max-new-tokens", type=int, help="Reply length limit.  [default: 128]")
@click.option("-t", "--temperature", type=float, help="[default: 0.7]")
@click.option("--beta", type=float, help="Weight of the KL penalty to the starting policy.  [default: 0.05]")
@click.option("--lora/--full", default=None, help="Train LoRA adapters (merged at the end) or every weight.")
@click.option("--learning-rate", type=float, help="[default: 5e-5 with LoRA, 1e-6 without]")
@click.option("--seed", type=int, help="[default: 0]")
@click.option("--device", help="cpu, cuda, ...  [default: a GPU if there is one]")
@click.option("--engine", type=click.Choice(["rlaif", "vllm"]),
              help="Where replies are sampled: rlaif (TRL's trainer, with the policy) or vllm (TRL's vLLM colocate "
                   "mode, on the same GPU).  [default: rlaif]")
@recipe_option
def grpo(config_file, reward_model, **flags) -> None:
    """GRPO or RLOO against reward models (TRL's trainers): PPO without a value model.

    Each step samples a group of replies per prompt; a reply's advantage is its reward against its group's
    mean (GRPO) or the mean of the other replies (RLOO), with a KL penalty to the starting policy. metrics.jsonl
    uses PPO's names, so `rlaif report` plots it alike, with PPO's reward-hacking monitors where TRL shows them (the
    reward's correlation with reply length, the share of replies cut off; warnings printed the first time).
    In a recipe: `policy_trainer: grpo` (or rloo).

    \b
    Example:
      rlaif grpo --policy runs/x/round-1/sft --reward-model runs/x/round-1/reward --prompts prompts.jsonl --lora
    """
    from rlaif import grpo as stage

    flags.update(reward_model=list(reward_model) or None)
    config = stage_config(stage.GRPOConfig, config_file, flags)
    if not config.prompts:
        raise click.UsageError("--prompts is required (or `prompts:` in --config)")
    last = stage.run(config)
    reward = f", reward {last['reward']:+.3f}" if "reward" in last else ""
    out.print(f"[green]✓[/green] {config.algorithm}{reward}; policy in {shown(config.out)}{_data_summary(last)}",
              soft_wrap=True)
    _monitor_warnings(last, config.out)


def _monitor_warnings(metrics: dict, directory: str) -> None:
    """One line naming the reward-hacking monitors that warned during the run (each was printed when first crossed;
    every step that crossed one lists it in metrics.jsonl's `warnings`)."""
    fired = metrics.get("monitor_warnings") or {}
    if fired:
        kinds = ", ".join(f"{kind} at {t['steps']} step(s) from step {t['first_step']}" for kind, t in fired.items())
        out.print(f"[yellow]monitors warned:[/yellow] {shown(kinds)}; see {shown(directory)}/metrics.jsonl",
                  soft_wrap=True)
