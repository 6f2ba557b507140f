"""Hand a round's RL step to verl or OpenRLHF, and bring the trained policy back for `rlaif eval`.

    rlaif export verl runs/gpu                    # the last round with a reward model -> runs/gpu/export-verl-round-K
    rlaif export openrlhf runs/gpu --round 2      # -> runs/gpu/export-openrlhf-round-2
    bash runs/gpu/export-verl-round-1/run_verl.sh # on the Ray cluster; README.txt there says how to come back

For a policy too large for rlaif's own PPO (it keeps policy, value, reference and reward models on every GPU), rlaif
runs a round up to its reward model and a Ray-based engine runs the RL step. What the export reads from RUN, for
round K (`--round`, default the last round with a finished reward model):

| what | from |
|---|---|
| reward model | RUN/round-K/reward (finished) |
| starting policy | `--policy`, else RUN/round-1/sft (round 1) or round K-1's finished PPO, DPO, GRPO or RLOO policy |
| training prompts | `--prompts`, else those round K's ppo (grpo, rloo) or sample stage was given (their config.yaml) |
| held-out prompts (verl) | `--eval-prompts`, else PPO's eval_prompts, else those RUN/eval used, when not the training ones |
| PPO settings | the newest round-J/ppo/config.yaml with J <= K (the stage writes it when it starts), else the defaults |

What it writes into OUT (paths in the launch script are relative to it, so OUT can be copied to the cluster whole):

| file | what |
|---|---|
| `reward-model/`, `start-policy/` | the two models: weights hard-linked (copied across file systems), config and tokenizer copied |
| `train.parquet`, `val.parquet` (verl) | one row per prompt: data_source, prompt (chat list), ability, reward_model, extra_info |
| `prompts.jsonl` (OpenRLHF) | one object per prompt: the chat list under `input`, with its `id` and `tags` |
| `run_verl.sh` / `run_openrlhf.sh` | the engine's PPO launch, the round's PPO settings mapped where an equivalent exists |
| `eval.yaml`, `README.txt` | `rlaif eval RUN --config OUT/eval.yaml` compares the trained policy; how to get it there |
| `manifest.json` | the round, the sources, the prompt counts and the notes below |

A prompt that leaves no room for max_new_tokens in the policy's context is left out and counted, as rlaif's PPO does.

**The reward model** is already what both engines load: rlaif trains an `AutoModelForSequenceClassification` with
num_labels=1 (rlaif.reward), a causal LM body plus a `score` head without bias that is read at the last token.
- verl, the FSDP reward worker (`reward_model.use_reward_loop=False`, the launch script's choice) loads it as
  `AutoModelForTokenClassification` and reads the logit at the last attended token
  (verl/workers/fsdp_workers.py, RewardModelWorker._build_model and _forward_micro_batch, verl commit b178a3c); that
  class's `score` has a bias the checkpoint lacks, which transformers initialises to 0. With
  `reward_model.model.input_tokenizer` set it decodes each reply, drops the EOS text and renders prompt + reply with
  the reward model's chat template (`_switch_chat_template`): the tokens rlaif's RewardModel.score reads. The reward
  loop (`use_reward_loop=True`, vLLM's /classify) renders the same text (verl/experimental/reward_loop/reward_loop.py).
- OpenRLHF builds `AutoModel` + `nn.Linear(hidden, 1, bias=False)` under `value_head_prefix` (default "score" since
  Dec 2024; config.json's `value_head_prefix` wins, and the export writes "score" there for older versions), and
  reads it at the last attended token of prompt + reply as the policy generated them (openrlhf/models/model.py,
  _get_reward_model). That token is the policy's EOS; rlaif's reward model was trained to read the reward after the
  chat template closes the reply. For templates that close a reply with more than the EOS (ChatML writes
  `<|im_end|>\\n`), OpenRLHF reads the reward one or more tokens earlier than rlaif does: `template_tail` finds this,
  and the export says so.

**Normalisation.** rlaif's PPO optimises (r - mean) / std with the mean and std of reward_stats.json
(`normalize_reward`, on by default). OpenRLHF does exactly this with `--reward.normalize_enable`, reading `mean` and
`std` from the reward model's config.json (openrlhf/models/model.py; the critic reads them too): the export writes
them there. It holds under DeepSpeed ZeRO-3 only (`--ds.zero_stage 3`, the launch script's): under another stage
transformers 5 builds the model on the meta device, and the non-persistent `mean` and `std` buffers OpenRLHF fills
in `__init__` come back uninitialised (seen with transformers 5.15, OpenRLHF's pin, and 5.24, on a copy of its
loader; OpenRLHF logs them at startup, "mean: ..., std ..."). verl does not normalise a model's reward (the reward
worker's scores go to the trainer as they are; verl/workers/reward_manager/naive.py), so the export scales the KL
coefficient instead: r - (beta * std) * KL = std * ((r - mean) / std - beta * KL) + mean, the objective of rlaif's
PPO up to a positive factor and a constant, with the same optimum; the advantages both engines whiten for GAE do not
see the factor.

**transformers 4.** rlaif writes checkpoints with transformers 5, which keeps the RoPE settings only under
`rope_parameters` and names fast tokenizers `TokenizersBackend`. An engine on transformers 4 ignores the first (a
Qwen2.5 would run with rope_theta 10,000 instead of 1,000,000) and cannot load the second (both seen with 4.57). The
exported config.json also carries `rope_theta` (and `rope_scaling`), and tokenizer_config.json names
`PreTrainedTokenizerFast`: 4.57 and 5 then load the same model, and score the same.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from rlaif.records import ConfigError, Manifest, Tally, dumps_json, parse_yaml, read_text, write_atomic

ENGINES = ("verl", "openrlhf")


# --------------------------------------------------------------------------------------------------------------------
# What a round hands over


@dataclass
class Handoff:
    run: Path
    round: int
    reward_model: Path
    policy: Path
    prompts: str
    eval_prompts: str | None
    ppo: dict  # the round's PPO settings (PPOConfig's fields)
    ppo_source: str  # where they came from
    earlier_policies: list[str] | None  # the policies of rounds 1..K-1, for eval.yaml; None when one is unknown
    reward_stats: dict | None = None  # the reward model's reward_stats.json


def _config(directory: Path) -> dict:
    path = directory / "config.yaml"
    return (parse_yaml(read_text(path), path)[0] or {}) if path.is_file() else {}


def _finished(directory: Path) -> bool:
    return (directory / "manifest.json").is_file() and Manifest.load(directory).status == "complete"


def find_round(run: str | Path, round_: int | None = None, prompts: str | None = None,
               eval_prompts: str | None = None, policy: str | None = None) -> Handoff:
    """What round `round_` of a run directory hands over (a round directory names its round itself). A ConfigError
    saying what is missing and what gives it: no such run or round, no finished reward model, no starting policy."""
    from rlaif.evaluate import policy_dir, rounds_of
    from rlaif.ppo.config import PPOConfig

    run = Path(run).expanduser().resolve()
    if (named := re.fullmatch(r"round-(\d+)", run.name)) and run.is_dir():
        if round_ is not None and round_ != int(named.group(1)):
            raise ConfigError(f"round: {run} is round {named.group(1)}, not --round {round_}")
        run, round_ = run.parent, int(named.group(1))
    if not run.is_dir():
        raise ConfigError(f"{run}: no such run directory (write one with `rlaif run RECIPE`)")
    rounds = rounds_of(run)
    with_reward = [k for k in rounds if _finished(run / f"round-{k}" / "reward")]
    if round_ is None:
        if not with_reward:
            raise ConfigError(f"{run}: no round has a finished reward model (round-K/reward); run the recipe until "
                              "a round's reward stage has finished, then export that round")
        round_ = with_reward[-1]
    elif round_ not in rounds:
        raise ConfigError(f"round: {run} has no round {round_} (its rounds: "
                          f"{', '.join(map(str, rounds)) or 'none'})")
    elif round_ not in with_reward:
        ready = f"rounds with one: {', '.join(map(str, with_reward))}" if with_reward else "no round has one yet"
        raise ConfigError(f"round: {run / f'round-{round_}' / 'reward'} is not a finished reward model ({ready}); "
                          "finish that round's reward stage first")
    here = run / f"round-{round_}"

    # The policy the round starts from, and those before it (rlaif eval compares one policy per round, in order)
    earlier: list[str] | None = []
    for k in range(1, round_ - 1):
        trained = policy_dir(run / f"round-{k}")
        earlier = None if earlier is None or trained is None else [*earlier, str(trained)]
    if policy is not None:
        start = Path(policy).expanduser().resolve()
        if not (start / "config.json").is_file():
            raise ConfigError(f"policy: {start} is not a model directory (no config.json)")
    elif round_ == 1:
        start = run / "round-1" / "sft"
        if not _finished(start):
            raise ConfigError(f"{start}: no finished SFT model to start round 1 from; finish the run's sft stage, or "
                              "give the policy with --policy")
    else:
        found = policy_dir(run / f"round-{round_ - 1}")
        if found is None:
            raise ConfigError(f"{run / f'round-{round_ - 1}'}: no finished policy (ppo, dpo, grpo or rloo) to start "
                              f"round {round_} from; give the policy round {round_ - 1} trained with --policy "
                              "(a Hugging Face directory, safetensors)")
        start = found
    if round_ > 1 and earlier is not None:
        earlier.append(str(start))

    settings, source = asdict(PPOConfig()), "rlaif's PPO defaults (no round has a ppo/config.yaml)"
    for k in range(round_, 0, -1):
        saved = run / f"round-{k}" / "ppo"
        if (saved / "config.yaml").is_file():
            settings.update({key: value for key, value in _config(saved).items() if key in settings})
            source = str(saved / "config.yaml")
            break
    if prompts is None:
        prompts = next((_config(here / stage).get("prompts") for stage in ("ppo", "grpo", "rloo", "sample")
                        if _config(here / stage).get("prompts")), None)
    if not prompts:
        raise ConfigError(f"prompts: {here} names no training prompts (no ppo or sample config.yaml); give them "
                          "with --prompts")
    if eval_prompts is None:
        round_ppo = _config(here / "ppo")
        eval_prompts = round_ppo.get("eval_prompts") or _config(run / "eval").get("prompts")
        if eval_prompts and Path(eval_prompts).resolve() == Path(prompts).resolve():
            eval_prompts = None  # a run without held-out prompts evaluates on the training ones
    stats_file = run / f"round-{round_}" / "reward" / "reward_stats.json"
    stats = json.loads(read_text(stats_file)) if stats_file.is_file() else None
    return Handoff(run, round_, here / "reward", start, str(prompts), eval_prompts and str(eval_prompts), settings,
                   source, earlier, stats)


# --------------------------------------------------------------------------------------------------------------------
# Models: linked and copied, readable by transformers 4 and 5


MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json",
               "vocab.json", "merges.txt", "tokenizer.model", "model.safetensors.index.json", "reward_stats.json")


def transformers4_config(config: dict) -> dict:
    """config.json that transformers 4 reads as transformers 5 does: the RoPE settings 5 keeps only in
    `rope_parameters` also as `rope_theta` (and `rope_scaling`, for a RoPE other than the default), which 4 reads."""
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict) or "rope_theta" not in rope or "rope_theta" in config:
        return config  # written by transformers 4, or one RoPE per layer type (left as it is)
    config = {**config, "rope_theta": rope["rope_theta"]}
    if rope.get("rope_type", "default") != "default" and "rope_scaling" not in config:
        config["rope_scaling"] = {key: value for key, value in rope.items() if key != "rope_theta"}
    return config


def export_model(source: Path, target: Path, config_updates: dict | None = None) -> str:
    """Put a model directory where an engine loads it: safetensors weights hard-linked (copied where OUT is on
    another file system), config and tokenizer files copied, config.json readable by transformers 4
    (`transformers4_config`) with `config_updates` on top, a `TokenizersBackend` tokenizer named
    `PreTrainedTokenizerFast` (transformers 4 has no class of that name; both load tokenizer.json with it).
    Replaces `target`; returns "linked" or "copied"."""
    weights = sorted(source.glob("*.safetensors"))
    if not weights:
        raise ConfigError(f"{source}: no safetensors weights; the engines get safetensors only")
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    how = "linked"
    for path in weights:
        try:
            os.link(path, staging / path.name)
        except OSError:
            shutil.copy2(path, staging / path.name)
            how = "copied"
    for name in MODEL_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, staging / name)
    config = transformers4_config(json.loads(read_text(source / "config.json")))
    write_atomic(staging / "config.json", dumps_json({**config, **(config_updates or {})}))
    if (staging / "tokenizer_config.json").is_file():
        tokenizer = json.loads(read_text(staging / "tokenizer_config.json"))
        if tokenizer.get("tokenizer_class") == "TokenizersBackend":
            write_atomic(staging / "tokenizer_config.json",
                         dumps_json({**tokenizer, "tokenizer_class": "PreTrainedTokenizerFast"}))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return how


REPLY = "rlaif-export-reply"


def template_tail(tokenizer) -> str:
    """What the chat template writes after an assistant reply: '<|im_end|>\\n' for ChatML, '<|eot_id|>' for Llama 3."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": REPLY}],
                                         tokenize=False)
    return text[text.rindex(REPLY) + len(REPLY):]


# --------------------------------------------------------------------------------------------------------------------
# The export


def export(engine: str, handoff: Handoff, out: str | Path | None = None) -> dict:
    """Write the engine's files for a round into OUT (default RUN/export-ENGINE-round-K); returns the manifest's
    summary. Files of OUT the export does not write (the engine's checkpoints, the trained policy) stay."""
    from rlaif.loaders import load_prompts
    from rlaif.models import chat_ids, context_length, fitting_prompts, load_tokenizer

    if engine not in ENGINES:
        raise ConfigError(f"engine: expected one of {', '.join(ENGINES)}, not {engine!r}")
    h, s = handoff, handoff.ppo
    out = Path(out or h.run / f"export-{engine}-round-{h.round}").expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)

    # Prompts: those rlaif's PPO would train on (each prompt and max_new_tokens in the policy's context)
    context = context_length(str(h.policy))
    room = None if context is None else context - s["max_new_tokens"]
    advice = f"each prompt and max_new_tokens ({s['max_new_tokens']}) must fit in the policy's context of " \
             f"{context} tokens"
    tokenizer = load_tokenizer(str(h.policy))
    tally, eval_tally = Tally("prompts"), Tally("eval prompts")
    train = fitting_prompts(load_prompts(h.prompts), tokenizer, room, tally)
    tally.require_some(h.prompts, advice)
    held_out = []
    if h.eval_prompts and engine == "verl":  # OpenRLHF evaluates only with a remote reward (--eval.dataset)
        held_out = fitting_prompts(load_prompts(h.eval_prompts), tokenizer, room, eval_tally)
        eval_tally.require_some(h.eval_prompts, advice)
    longest = max(len(chat_ids(tokenizer, p["prompt"], add_generation_prompt=True)) for p in train + held_out)

    normalize = bool(s["normalize_reward"])
    if normalize and not h.reward_stats:
        raise ConfigError(f"normalize_reward: {h.reward_model} has no reward_stats.json to normalise with")
    notes = []
    if engine == "openrlhf":
        updates = {"value_head_prefix": "score"}
        if normalize:
            updates.update(mean=h.reward_stats["mean"], std=max(h.reward_stats["std"], 1e-8))
        tail = template_tail(load_tokenizer(str(h.reward_model)))
        if tail != tokenizer.eos_token:
            notes.append(f"OpenRLHF reads the reward at the policy's last generated token, its EOS "
                         f"{tokenizer.eos_token!r}; the reward model learned to read it where the chat template has "
                         f"closed the reply with {tail!r}, which the policy does not generate: expect its rewards "
                         "under OpenRLHF to differ from rlaif's (verl renders the chat template as rlaif does)")
    else:
        updates = {}
    linked = {"reward model": export_model(h.reward_model, out / "reward-model", updates),
              "start policy": export_model(h.policy, out / "start-policy")}

    if engine == "verl":
        _write_parquet(out / "train.parquet", train, "train")
        if held_out:
            _write_parquet(out / "val.parquet", held_out, "val")
        else:
            (out / "val.parquet").unlink(missing_ok=True)  # an earlier export's, which the script no longer reads
        script = verl_script(h, len(train), longest, bool(held_out), notes)
        outputs = ["train.parquet", *(["val.parquet"] if held_out else []), "run_verl.sh"]
    else:
        write_atomic(out / "prompts.jsonl", "".join(json.dumps({"input": p["prompt"], "id": p["id"],
                                                                "tags": p.get("tags", [])}, ensure_ascii=False) + "\n"
                                                    for p in train))
        script = openrlhf_script(h, len(train), longest, normalize, notes)
        outputs = ["prompts.jsonl", "run_openrlhf.sh"]
    script_name = outputs[-1]
    write_atomic(out / script_name, script)
    (out / script_name).chmod(0o755)
    eval_out = h.run / f"eval-{engine}-round-{h.round}"
    if h.earlier_policies is not None:
        policies = [*h.earlier_policies, str(out / "trained-policy")]
        write_atomic(out / "eval.yaml", "# rlaif eval RUN --config eval.yaml: every round's policy, this round's "
                     f"trained by {engine}\n" + dumps_json({"policies": policies, "out": str(eval_out)}) + "\n")
        outputs.append("eval.yaml")
    write_atomic(out / "README.txt", readme(engine, h, out, eval_out, tally, eval_tally, linked, notes))

    manifest = Manifest(stage=f"export-{engine}", status="complete")
    for path in {h.prompts, *([h.eval_prompts] if held_out else [])}:
        manifest.add_input(path)
    manifest.outputs = ["reward-model/", "start-policy/", *outputs, "README.txt"]
    manifest.counts.update({**tally.counts("prompts_"), **(eval_tally.counts("eval_prompts_") if held_out else {})})
    manifest.extra = {"run": str(h.run), "round": h.round, "reward_model": str(h.reward_model),
                      "policy": str(h.policy), "ppo_settings": h.ppo_source, "models": linked, "notes": notes}
    manifest.save(out)
    return {"out": str(out), "round": h.round, "prompts": tally.summary(),
            "eval_prompts": eval_tally.summary() if held_out else None, "models": linked, "notes": notes,
            "script": str(out / script_name)}


def _write_parquet(path: Path, prompts: list[dict], split: str) -> None:
    """verl's RL dataset (docs/preparation/prepare_data.rst): a chat list under `prompt`, rendered by RLHFDataset
    with the policy's chat template; data_source groups the validation metrics (red-team prompts apart, as `rlaif
    eval` reports them); reward_model.ground_truth is what a reward function would get, unused by a model."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"data_source": "rlaif/red-team" if "red-team" in p.get("tags", []) else "rlaif/helpful",
             "prompt": [{"role": m["role"], "content": m["content"]} for m in p["prompt"]],
             "ability": "alignment", "reward_model": {"style": "model", "ground_truth": ""},
             "extra_info": {"split": split, "index": i, "id": p["id"]}} for i, p in enumerate(prompts)]
    staging = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows), staging)
    os.replace(staging, path)


# --------------------------------------------------------------------------------------------------------------------
# Launch scripts: the round's PPO settings where the engine has the same setting


def _number(value: float) -> str:
    return f"{value:.6g}"


def _policy_lr(s: dict) -> float:
    return s["learning_rate"] if s["learning_rate"] is not None else (1e-4 if s["lora"] else 1e-5)


VERL_KL = {"k1": "kl", "k2": "mse", "k3": "low_var_kl"}  # verl/trainer/ppo/core_algos.py kl_penalty_forward


def _unmapped(s: dict) -> list[str]:
    """Settings of the round's PPO no engine setting matches; said in the script's header."""
    lines = []
    if s["kl_target"]:
        lines.append(f"kl_target {s['kl_target']:g} (adaptive beta, KL summed over a reply; both engines' adaptive "
                     "controllers aim at the mean KL per token instead): beta is fixed here")
    if s["missing_eos_penalty"]:
        lines.append(f"missing_eos_penalty {s['missing_eos_penalty']:g}")
    if not s["whiten_advantages"]:
        lines.append("whiten_advantages false (both engines whiten GAE advantages)")
    if s["lr_schedule"] == "linear":
        lines.append("lr_schedule linear (the engines' own schedules apply)")
    if s["reward_fn"] or s["reward_score"]:
        lines.append("reward_fn / reward_score (only the reward model is exported)")
    lines.append(f"vf_coef {s['vf_coef']:g} (the engines' critics have optimizers of their own)")
    return lines


def _header(engine: str, h: Handoff, notes: list[str]) -> str:
    name = "verl" if engine == "verl" else "OpenRLHF"
    lines = [f"# PPO for round {h.round} of {h.run}, with {name}: written by `rlaif export {engine}`.",
             "# Run it where the engine and Ray are installed; extra overrides after the script's name go last and win.",
             "# README.txt beside it says how to bring the trained policy back to `rlaif eval`.",
             f"# PPO settings from {h.ppo_source}. Not carried over:"]
    lines += [f"#   {line}" for line in _unmapped(h.ppo)]
    lines += [f"# Note: {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _block(comment: str, *lines: str) -> str:
    """A commented group of a launch script's arguments (bash allows comments between an array's elements)."""
    return f"  # {comment}\n" + "".join(f"  {line}\n" for line in lines)


def _script(engine: str, h: Handoff, notes: list[str], preamble: str, command: str, blocks: list[str]) -> str:
    return (f"#!/usr/bin/env bash\n{_header(engine, h, notes)}{preamble}set -euo pipefail\n"
            'HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"\n' + blocks[0] +
            f"\nargs=(\n{''.join(blocks[1:])})\n{command} \"${{args[@]}}\" \"$@\"\n")


def verl_script(h: Handoff, prompts: int, longest: int, has_val: bool, notes: list[str]) -> str:
    """`python3 -m verl.trainer.main_ppo` with Hydra overrides, each key checked against verl's
    trainer/config/_generated_ppo_trainer.yaml and examples/ppo_trainer/run_qwen2.5-3b_rm_legacy.sh (commit b178a3c)."""
    s = h.ppo
    std = h.reward_stats["std"] if s["normalize_reward"] else 1.0

    def lora(model: str) -> list[str]:
        return [f"{model}.lora_rank={s['lora_r']} {model}.lora_alpha={s['lora_alpha']}"] if s["lora"] else []

    val = "$HERE/val.parquet" if has_val else "$HERE/train.parquet"
    keep = s["save_total_limit"]
    beta = (f"beta = kl_coef {s['kl_coef']:g} x the reward's std {std:.6g}: verl does not normalise a model's reward, "
            "and r - beta*std*KL is std times rlaif's (r - mean)/std - beta*KL plus a constant (the same optimum)"
            if s["normalize_reward"] else f"beta = kl_coef {s['kl_coef']:g} (normalize_reward was off)")
    layout = ("NGPUS=${NGPUS:-8} NNODES=${NNODES:-1} ROLLOUT_TP=${ROLLOUT_TP:-1} MICRO=${MICRO:-4}\n"
              f"TRAIN_BATCH=${{TRAIN_BATCH:-{s['batch_size']}}} "
              f"MINI_BATCH=${{MINI_BATCH:-{s['batch_size'] // s['minibatches']}}}"
              "  # rlaif's batch_size and batch_size / minibatches: per process there, so scale them to the GPUs\n")
    blocks = [
        layout,
        _block("data: max_prompt_length is the longest prompt's tokens with the policy's chat template, "
               "max_response_length max_new_tokens, train_batch_size batch_size (prompts per rollout)"
               + ("" if has_val else "; no held-out prompts: validation would reuse train.parquet, and is off"),
               'data.train_files="$HERE/train.parquet"', f'data.val_files="{val}"',
               "data.prompt_key=prompt data.return_raw_chat=True",
               f"data.max_prompt_length={longest} data.filter_overlong_prompts=True data.truncation=error",
               f"data.max_response_length={s['max_new_tokens']}",
               "data.train_batch_size=$TRAIN_BATCH"),
        _block("policy: learning_rate, lora, batch_size / minibatches, ppo_epochs, clip_range, entropy_coef, "
               "max_grad_norm; the KL is a penalty in the reward, as in rlaif, not a loss",
               'actor_rollout_ref.model.path="$HERE/start-policy"',
               *lora("actor_rollout_ref.model"),
               f"actor_rollout_ref.actor.optim.lr={_number(_policy_lr(s))}",
               "actor_rollout_ref.actor.ppo_mini_batch_size=$MINI_BATCH",
               "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=$MICRO",
               f"actor_rollout_ref.actor.ppo_epochs={s['ppo_epochs']}",
               f"actor_rollout_ref.actor.clip_ratio={_number(s['clip_range'])}",
               f"actor_rollout_ref.actor.entropy_coeff={_number(s['entropy_coef'])}",
               f"actor_rollout_ref.actor.grad_clip={_number(s['max_grad_norm'])}",
               "actor_rollout_ref.actor.use_kl_loss=False"),
        _block("rollout: temperature, top_p (log-probabilities are those of the tempered policy, as in rlaif)",
               "actor_rollout_ref.rollout.name=vllm",
               f"actor_rollout_ref.rollout.temperature={_number(s['temperature'])}",
               f"actor_rollout_ref.rollout.top_p={_number(s['top_p'])}",
               "actor_rollout_ref.rollout.tensor_model_parallel_size=$ROLLOUT_TP",
               "actor_rollout_ref.rollout.gpu_memory_utilization=0.5",
               "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=$MICRO",
               "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=$MICRO"),
        _block("critic: value_learning_rate, clip_range_value; it starts from the reward model, as rlaif's value model "
               "(whose head starts at 0: verl keeps the reward model's)",
               'critic.model.path="$HERE/reward-model"',
               *lora("critic.model"),
               f"critic.optim.lr={_number(s['value_learning_rate'] or _policy_lr(s))}",
               "critic.ppo_micro_batch_size_per_gpu=$MICRO",
               f"critic.cliprange_value={_number(s['clip_range_value'])}",
               f"critic.grad_clip={_number(s['max_grad_norm'])}"),
        _block("reward model: each reply decoded and rendered with the reward model's chat template (input_tokenizer), "
               "scored at its last token by the FSDP reward worker: as rlaif scores it. The vLLM reward loop renders the "
               "same text: reward_model.use_reward_loop=True reward_model.rollout.name=vllm "
               "reward_model.rollout.tensor_model_parallel_size=1",
               "reward_model.enable=True", 'reward_model.model.path="$HERE/reward-model"',
               'reward_model.model.input_tokenizer="$HERE/start-policy"',
               "reward_model.use_reward_loop=False", "reward_model.micro_batch_size_per_gpu=$MICRO"),
        _block(f"KL and advantages: per-token reward -beta * KL with kl_estimator {s['kl_estimator']}; gamma, lam. {beta}",
               "algorithm.adv_estimator=gae algorithm.use_kl_in_reward=True",
               f"algorithm.kl_penalty={VERL_KL[s['kl_estimator']]}",
               f"algorithm.kl_ctrl.type=fixed algorithm.kl_ctrl.kl_coef={_number(s['kl_coef'] * std)}",
               f"algorithm.gamma={_number(s['gamma'])} algorithm.lam={_number(s['lam'])}"),
        _block("trainer: steps (total_epochs: enough for them at any batch size), save_steps, save_total_limit, "
               "eval_every (0: before and after training); a rerun resumes from the newest checkpoint",
               f"trainer.total_training_steps={s['steps']} trainer.total_epochs={s['steps']}",
               f"trainer.save_freq={s['save_steps']}", 'trainer.default_local_dir="$HERE/checkpoints"',
               *([f"trainer.max_actor_ckpt_to_keep={keep} trainer.max_critic_ckpt_to_keep={keep}"] if keep else []),
               (f"trainer.val_before_train=True trainer.test_freq={s['eval_every'] or s['steps']}" if has_val
                else "trainer.val_before_train=False trainer.test_freq=-1"),
               "trainer.critic_warmup=0 trainer.logger='[\"console\"]'",
               f"trainer.project_name=rlaif trainer.experiment_name={shlex.quote(f'{h.run.name}-round-{h.round}')}",
               "trainer.n_gpus_per_node=$NGPUS trainer.nnodes=$NNODES"),
    ]
    return _script("verl", h, notes, "", "python3 -m verl.trainer.main_ppo", blocks)


# Flags used here and their names before OpenRLHF v0.10.2 (commit ed62d0e2 made them dotted; its parent's
# openrlhf/cli/train_ppo_ray.py has the old ones)
OPENRLHF_OLD = {"--actor.model_name_or_path": "--pretrain", "--reward.model_name_or_path": "--reward_pretrain",
                "--data.prompt_dataset": "--prompt_data", "--data.input_key": "--input_key",
                "--data.apply_chat_template": "--apply_chat_template", "--reward.normalize_enable": "--normalize_reward",
                "--ckpt.output_dir": "--save_path", "--data.max_len": "--max_len",
                "--rollout.max_new_tokens": "--max_new_tokens", "--rollout.batch_size": "--rollout_batch_size",
                "--train.batch_size": "--train_batch_size", "--train.max_epochs": "--max_epochs",
                "--train.num_episodes": "--num_episodes", "--rollout.temperature": "--temperature",
                "--ckpt.path": "--ckpt_path", "--ckpt.save_steps": "--save_steps", "--ckpt.max_num": "--max_ckpt_num",
                "--rollout.top_p": "--top_p", "--actor.adam.lr": "--actor_learning_rate",
                "--critic.adam.lr": "--critic_learning_rate", "--actor.eps_clip": "--eps_clip",
                "--critic.value_clip": "--value_clip", "--actor.entropy_coef": "--entropy_loss_coef",
                "--actor.max_norm": "--max_norm", "--algo.kl.init_coef": "--init_kl_coef",
                "--algo.kl.estimator": "--kl_estimator", "--algo.advantage.gamma": "--gamma",
                "--algo.advantage.lambd": "--lambd", "--ds.lora.rank": "--lora_rank", "--ds.lora.alpha": "--lora_alpha",
                "--train.seed": "--seed"}


def openrlhf_script(h: Handoff, prompts: int, longest: int, normalize: bool, notes: list[str]) -> str:
    """`python3 -m openrlhf.cli.train_ppo_ray` with the dotted flags of OpenRLHF >= 0.10.2, each checked against
    openrlhf/cli/train_ppo_ray.py (0.11.0) and the README's PPO example."""
    s = h.ppo
    gpus = ("NGPUS=${NGPUS:-8} NNODES=${NNODES:-1} VLLM_TP=${VLLM_TP:-1}\n"
            "VLLM_ENGINES=${VLLM_ENGINES:-$((NGPUS * NNODES / VLLM_TP))}  # with --train.colocate_all: every GPU\n"
            f"ROLLOUT_BATCH=${{ROLLOUT_BATCH:-{s['batch_size']}}} "
            f"TRAIN_BATCH=${{TRAIN_BATCH:-{s['batch_size'] // s['minibatches']}}}"
            "  # rlaif's batch_size and batch_size / minibatches: per process there, so scale them to the GPUs\n"
            f"# rlaif's {s['steps']} PPO steps, each a rollout of ROLLOUT_BATCH of the {prompts} prompts: in episodes "
            "(passes over them)\n"
            f"PER_EPISODE=$(( {prompts} / ROLLOUT_BATCH > 0 ? {prompts} / ROLLOUT_BATCH : 1 ))\n"
            f"EPISODES=$(( ({s['steps']} + PER_EPISODE - 1) / PER_EPISODE ))\n")
    blocks = [
        gpus,
        _block("models: the critic starts from the reward model (OpenRLHF's default), as rlaif's value model; the "
               "trained policy goes to trained-policy/, checkpoints every save_steps (save_total_limit kept) to "
               "checkpoints/ (--ckpt.load_enable resumes from them)",
               '--actor.model_name_or_path "$HERE/start-policy" --reward.model_name_or_path "$HERE/reward-model"',
               *([f"--ds.lora.rank {s['lora_r']} --ds.lora.alpha {s['lora_alpha']}"] if s["lora"] else []),
               '--ckpt.output_dir "$HERE/trained-policy" --ckpt.path "$HERE/checkpoints"',
               f"--ckpt.save_steps {s['save_steps']} --ckpt.max_num {max(s['save_total_limit'], 1)}"),
        _block(f"data: each chat list rendered with the policy's chat template; the longest prompt has {longest} "
               f"tokens, max_new_tokens {s['max_new_tokens']}",
               '--data.prompt_dataset "$HERE/prompts.jsonl" --data.input_key input --data.apply_chat_template',
               f"--data.max_len {longest + s['max_new_tokens']} --rollout.max_new_tokens {s['max_new_tokens']}"),
        _block("reward: (r - mean) / std, mean and std from reward_stats.json written into reward-model/config.json, "
               "as rlaif's normalize_reward. Keep --ds.zero_stage 3: under another stage transformers 5 leaves those "
               "two buffers uninitialised (the log's 'mean: ..., std ...' line at startup shows them)",
               "--reward.normalize_enable") if normalize else "  # reward: not normalised (normalize_reward was off)\n",
        _block("PPO: batch_size prompts per rollout, batch_size / minibatches per update, ppo_epochs, steps; "
               "temperature, top_p, learning rates, clip ranges, entropy_coef, max_grad_norm, seed",
               "--rollout.batch_size $ROLLOUT_BATCH --train.batch_size $TRAIN_BATCH",
               f"--train.max_epochs {s['ppo_epochs']} --train.num_episodes $EPISODES",
               f"--rollout.temperature {_number(s['temperature'])} --rollout.top_p {_number(s['top_p'])}",
               f"--actor.adam.lr {_number(_policy_lr(s))}",
               f"--critic.adam.lr {_number(s['value_learning_rate'] or _policy_lr(s))}",
               f"--actor.eps_clip {_number(s['clip_range'])} --critic.value_clip {_number(s['clip_range_value'])}",
               f"--actor.entropy_coef {_number(s['entropy_coef'])} --actor.max_norm {_number(s['max_grad_norm'])}",
               f"--train.seed {s['seed']}"),
        _block("KL and advantages: per-token reward -beta * KL in the reward (not --algo.kl.use_loss), the same "
               "estimators k1/k2/k3; gamma, lam",
               f"--algo.kl.init_coef {_number(s['kl_coef'])} --algo.kl.estimator {s['kl_estimator']}",
               "--algo.advantage.estimator gae",
               f"--algo.advantage.gamma {_number(s['gamma'])} --algo.advantage.lambd {_number(s['lam'])}"),
        _block("GPUs: every model on every GPU, taking turns (OpenRLHF's README example)",
               "--actor.num_nodes $NNODES --actor.num_gpus_per_node $NGPUS",
               "--ref.num_nodes $NNODES --ref.num_gpus_per_node $NGPUS",
               "--critic.num_nodes $NNODES --critic.num_gpus_per_node $NGPUS",
               "--reward.num_nodes $NNODES --reward.num_gpus_per_node $NGPUS",
               "--vllm.num_engines $VLLM_ENGINES --vllm.tensor_parallel_size $VLLM_TP --vllm.gpu_memory_utilization 0.5",
               "--train.colocate_all --ds.zero_stage 3 --ds.param_dtype bf16 --actor.gradient_checkpointing_enable",
               "--logger.logging_steps 1"),
    ]
    used = "".join(blocks[1:])
    old = "".join(f"#   {new} -> {old}\n" for new, old in OPENRLHF_OLD.items() if new in used)
    preamble = ("# OpenRLHF before 0.10.2 names these flags without dots:\n" + old +
                "# On a Ray cluster: ray job submit --address=http://HEAD:8265 -- bash run_openrlhf.sh\n")
    return _script("openrlhf", h, notes, preamble, "python3 -m openrlhf.cli.train_ppo_ray", blocks)


# --------------------------------------------------------------------------------------------------------------------
# README.txt: what was exported and how to come back


def readme(engine: str, h: Handoff, out: Path, eval_out: Path, tally: Tally, eval_tally: Tally, linked: dict,
           notes: list[str]) -> str:
    script = "run_verl.sh" if engine == "verl" else "run_openrlhf.sh"
    name = "verl" if engine == "verl" else "OpenRLHF"
    if engine == "verl":
        data = (f"train.parquet       {tally.summary()} ({h.prompts})\n"
                + (f"val.parquet         {eval_tally.summary()} ({h.eval_prompts})\n" if eval_tally.read else ""))
        back = (f"1. verl writes FSDP shards to checkpoints/global_step_N/actor (every save_freq steps and at the end).\n"
                "   Merge the last into a Hugging Face directory (safetensors):\n"
                f"     python3 -m verl.model_merger merge --backend fsdp \\\n"
                f"       --local_dir {out}/checkpoints/global_step_{h.ppo['steps']}/actor \\\n"
                f"       --target_dir {out}/trained-policy\n")
    else:
        data = f"prompts.jsonl       {tally.summary()} ({h.prompts})\n"
        back = ("1. OpenRLHF saves the trained policy (a Hugging Face directory, safetensors) to trained-policy/ at the\n"
                "   end (--ckpt.output_dir).\n")
    if h.earlier_policies is not None:
        back += (f"2. Compare it with the base, SFT and earlier policies on held-out prompts:\n"
                 f"     rlaif eval {h.run} --config {out}/eval.yaml\n"
                 f"   eval.yaml lists one policy per round (this round's: trained-policy/) and writes to {eval_out}.\n")
    else:
        back += (f"2. A round before {h.round} has no policy rlaif knows of, so there is no eval.yaml: give\n"
                 f"   `policies:` (one per round, {out}/trained-policy last) in a file for `rlaif eval {h.run} --config`.\n")
    if not h.ppo["normalize_reward"]:
        normalize = "Rewards are not normalised (normalize_reward was off)."
    else:
        normalize = (f"Rewards are normalised as rlaif's PPO normalises them ((r - {h.reward_stats['mean']:.6g}) / "
                     f"{h.reward_stats['std']:.6g}, reward_stats.json)")
        normalize += (": with --reward.normalize_enable, from mean/std in reward-model/config.json.\nKeep "
                      "--ds.zero_stage 3: under another stage transformers 5 leaves OpenRLHF's mean and std buffers\n"
                      "uninitialised; its log shows them at startup ('mean: ..., std ...')." if engine == "openrlhf"
                      else ": verl cannot, so the KL coefficient is scaled by the std instead (see run_verl.sh).")
    return (f"Round {h.round} of {h.run}, exported for {name} by `rlaif export {engine}`.\n\n"
            f"reward-model/       {h.reward_model} (weights {linked['reward model']})\n"
            f"start-policy/       {h.policy} (weights {linked['start policy']})\n{data}"
            f"{script:20}PPO with the round's settings ({h.ppo_source})\n\n"
            f"Run it where {name} and Ray are installed (GPU layout: NGPUS, NNODES and the other variables at its "
            "top):\n"
            f"  bash {out}/{script}\n\n{normalize}\n"
            + "".join(f"Note: {note}\n" for note in notes)
            + f"\nBringing the policy back:\n{back}")
