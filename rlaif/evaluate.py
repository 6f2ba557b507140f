"""Evaluation: how good each round's policy is (`rlaif eval RUN`). How far the AI labeler can be trusted (`rlaif eval
labeler`, the labeler report card) is in rlaif.report_card.

    rlaif eval runs/quickstart                  # base, SFT and every round's policy on held-out prompts

In a run written by `rlaif run`, the base model, the SFT model and each round's PPO policy answer the held-out prompts
(one sampled reply each, at the temperature PPO sampled at). Per policy, for all prompts and separately for red-team
prompts (tagged `red-team`) and the rest (helpful), so that over-refusal shows:

- reward: the last round's reward model, normalised with its reward_stats.json;
- win rate over the base and the SFT model, judged by the reward model (the higher reward wins; ties count half)
  and by the AI labeler asking the questions of the `judge` constitution, principles no training stage used (both
  orders; a win is P(policy better) > 0.5, a tie counts half);
- KL to the base model: the mean over replies of sum_t log pi(y_t | x, y<t) - log pi_base(y_t | x, y<t), a Monte
  Carlo estimate of KL(pi || pi_base) on the policy's own samples (at the sampling temperature, as PPO measures it);
- reply length in tokens and the share of replies that open with a refusal ("I can't", "I'm sorry", ...);
- length-controlled win rates (`judge_lc_win_vs_base`, `rm_lc_win_vs_base`, and vs SFT): a judge that likes long
  replies hands a policy that learned to write longer a win rate it did not earn. Following length-controlled
  AlpacaEval (Dubois, Galambosi, Liang, Hashimoto 2024, "Length-Controlled AlpacaEval: A Simple Way to Debias
  Automatic Evaluators", arXiv:2404.04475), the outcome of each pair (1 a win, 1/2 a tie, 0 a loss) is fitted as
  sigmoid(theta + phi * tanh(d / std(d))), d the policy's reply length in tokens minus its opponent's, and the
  length-controlled win rate is sigmoid(theta), the win rate the fit predicts at equal length
  (rlaif.stats.length_controlled_win_rate). Ties and pairs without a judgement count as in the plain win rate.
  Where fewer than 10% of the pairs that differ in length have the policy as the shorter, the fit cannot tell length
  from quality and the figure is left out (nan, '-' in tables: rlaif.stats.length_control_identified).

Every figure also comes with its 95% interval over the prompts (rlaif.stats.bootstrap: Wilson for the win and
refusal rates, a seeded percentile bootstrap for the rest): eval.json keeps each figure's number under its key, as before, and adds entry["intervals"][key] =
{"value", "low", "high", "n"}, and summary["method"] says how the intervals were computed.

Replies go to RUN/eval/responses.jsonl and judgements to judgements.jsonl as each batch finishes; a killed evaluation
loses at most the batch in flight, and its rerun writes what an uninterrupted one would have (the prompts are sorted
by length once and cut into batches that stay fixed, a half-written batch is run whole again, and each reply
samples with its prompt's own seed, the same for every policy). The summary, with each round's labeler and
reward-model numbers, goes to RUN/eval/eval.json.

A policy's reply equal to its opponent's is a tie without asking the judge: it counts half in the judge's win rate,
as used but not judged (`identical_replies_tied`); a pair with an empty reply is left out of the judge's win rate.
Both are counted.

Nothing is read past a model's context. A held-out prompt that leaves no room for max_new_tokens in the context of
the base model, a policy or the reward model is left out of the evaluation (`too_long`, counted in eval.json's
`answering` and the closing line); a pair whose judging prompt does not fit in the labeler's context is left out of
the judge's win rate (`too_long`).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from rlaif import stats
from rlaif.models import check_numbers
from rlaif.records import (
    ConfigError,
    DataError,
    Tally,
    dumps_json,
    parse_yaml,
    read_jsonl,
    read_text,
    reply_problem,
    write_atomic,
)

# The labeler report card moved to rlaif.report_card; its public names are still importable from here.
from rlaif.report_card import (  # noqa: F401
    LabelerEvalConfig,
    baselines,
    calibration_bins,
    evaluate_labeler,
    expected_calibration_error,
    human_choice_shown_first,
    injection_report,
    label_rows,
    labeler_modes,
    load_human_pairs,
    mode_metrics,
    print_labeler_report,
    verdict,
)


@dataclass
class EvalConfig:
    run: str = ""  # a run directory written by `rlaif run` (runs/NAME)
    prompts: str | None = None  # held-out prompts; default: the eval_prompts PPO used, else its prompts
    out: str | None = None  # default RUN/eval
    judge: str = "judge"  # the constitution whose questions the AI judge asks: principles no training stage used
    labeler: str | None = None  # the judge's model; default: the run's labeler
    reward_model: str | None = None  # default: the last round's reward model
    # the trained policies to compare, one per round in order (a recipe passes those of its plan); default: each
    # round's finished PPO, DPO, GRPO or RLOO policy found in RUN
    policies: list[str] = field(default_factory=list)
    max_new_tokens: int | None = None  # reply length; default: PPO's
    temperature: float | None = None  # sampling temperature; default: PPO's (the KL is measured at it)
    seed: int = 0
    batch_size: int = 8  # replies per forward pass (with engine vllm: requests handed to vLLM at once)
    device: str | None = None
    engine: str = "rlaif"  # who samples the policies' replies: rlaif (here) or vllm (vLLM, each policy in a process of
    # its own, before any model is loaded here); the log-probabilities of the KL, the rewards and the judge are
    # computed here either way, by full forward passes

    VOLATILE = ("batch_size", "device")
    ADDED: ClassVar[dict] = {"engine": "rlaif"}  # each with the value that reproduces older evaluations

    def __post_init__(self):
        from rlaif.models import check_engine

        check_numbers(self, "eval", at_least_one=["max_new_tokens", "batch_size"], finite=["seed"])
        check_engine(self, "eval")
        if self.temperature is not None and not self.temperature > 0:
            raise DataError("eval settings", None, "temperature", "the KL to the base model is measured on sampled "
                            f"replies: expected a temperature > 0, got {self.temperature:g}")


REFUSAL = re.compile(r"^\W*(i\s*(?:can'?t|cannot|won'?t|will not|am not able|'m not able|am unable|'m unable|must "
                     r"decline)|i'?m sorry|i am sorry|sorry|as an ai|unfortunately,? i)", re.IGNORECASE)


def refuses(text: str) -> bool:
    """Whether a reply opens with a refusal: a rough count of refusals, to see over-refusal on helpful prompts."""
    return bool(REFUSAL.match(text))


def _config(directory: Path) -> dict:
    path = directory / "config.yaml"
    return parse_yaml(read_text(path))[0] or {} if path.is_file() else {}


def _complete(directory: Path) -> bool:
    from rlaif.records import Manifest

    return (directory / "manifest.json").is_file() and Manifest.load(directory).status == "complete"


def rounds_of(run: Path) -> list[int]:
    """The round numbers of a run directory, in order."""
    return sorted(int(d.name.split("-", 1)[1]) for d in run.glob("round-*") if d.name.split("-", 1)[1].isdigit())


def policy_dir(round_dir: Path) -> Path | None:
    """The policy a round trained (PPO's, or DPO's, GRPO's or RLOO's instead), if it finished."""
    return next((round_dir / name for name in ("ppo", "dpo", "grpo", "rloo") if _complete(round_dir / name)), None)


def discover(config: EvalConfig) -> dict:
    """What a run directory holds for evaluation: the policies (name -> model), the reward model, the prompts,
    the labeler and PPO's sampling settings."""
    run = Path(config.run)
    if not run.is_dir():
        raise ConfigError(f"{run}: no such run directory (write one with `rlaif run RECIPE`)")
    first = run / "round-1"
    sft = _config(first / "sft")
    if not _complete(first / "sft"):
        raise ConfigError(f"{run}: no finished SFT model in {first / 'sft'}; finish the run first (`rlaif run`)")
    policies = {"base": sft["model"], "sft": str(first / "sft")}
    if config.policies:
        policies.update({f"round-{k}": policy for k, policy in enumerate(config.policies, 1)})
    else:
        for k in rounds_of(run):
            trained = policy_dir(run / f"round-{k}")
            if trained is not None:
                policies[f"round-{k}"] = str(trained)
    trained_with = [_config(Path(p)) for name, p in policies.items() if name.startswith("round-")]
    ppo = trained_with[-1] if trained_with else {}
    last = len(config.policies) if config.policies else max(rounds_of(run), default=0)  # the rounds compared
    rewards = [run / f"round-{k}" / "reward" for k in range(1, last + 1) if _complete(run / f"round-{k}" / "reward")]
    reward_model = config.reward_model or (str(rewards[-1]) if rewards else None)
    if reward_model is None:
        raise ConfigError(f"{run}: no finished reward model; give one with --reward-model")
    # held-out prompts first: those PPO/GRPO evaluated on, those the run's own eval used (a DPO run has no others)
    prompts = config.prompts or ppo.get("eval_prompts") or _config(run / "eval").get("prompts") or ppo.get("prompts") \
        or _config(first / "sample").get("prompts")
    if not prompts:
        raise ConfigError(f"{run}: no prompts to evaluate on; give them with --prompts")
    return {"policies": policies, "reward_model": reward_model, "prompts": prompts,
            "labeler": config.labeler or _config(first / "label").get("labeler") or "smollm2-135m-instruct",
            "temperature": ppo.get("temperature", 0.7) if config.temperature is None else config.temperature,
            "max_new_tokens": ppo.get("max_new_tokens", 128) if config.max_new_tokens is None
            else config.max_new_tokens}


@torch.inference_mode()
def sequence_logprobs(model, prompt_ids: list[list[int]], responses: list[list[int]], temperature: float,
                      batch_size: int = 8) -> list[float]:
    """sum_t log pi(y_t | x, y<t) of each response under `model` (at `temperature`)."""
    from rlaif.ppo.losses import logprobs_from_logits
    from rlaif.ppo.rollout import pack, response_logits

    device = next(model.parameters()).device
    pad = model.config.pad_token_id or 0
    out: list[float] = []
    for start in range(0, len(responses), batch_size):
        batch = pack(prompt_ids[start : start + batch_size], responses[start : start + batch_size], pad).to(device)
        logprobs = logprobs_from_logits(response_logits(model, batch), batch.response, temperature)
        out += (logprobs * batch.mask).sum(1).tolist()
    return out


def vllm_replies(spec: str, conversations: list, generation) -> list:
    """One policy's replies (rlaif.generate.Generation, in order) sampled by vLLM (rlaif.engines.VLLMModel), each
    conversation with its own seed (`generation.seeds`): run in a child process of its own (rlaif.engines.spawned),
    which gives vLLM's GPU memory back when it ends."""
    from rlaif.engines import VLLMModel

    done = dict(VLLMModel(spec, seed=0).complete(conversations, generation))
    return [done[i] for i in range(len(conversations))]


def evaluate_policies(config: EvalConfig, progress: bool = False) -> dict:
    """Answer, score and judge; writes OUT/responses.jsonl, judgements.jsonl and eval.json; returns the summary."""
    from rlaif.constitution import load_constitution
    from rlaif.generate import GenerationConfig, derive_seed, encode_chat, generate, progress_bar
    from rlaif.label import Labeler, Pair, label_pairs, sample_label_principles
    from rlaif.loaders import load_prompts
    from rlaif.models import load_model
    from rlaif.records import JsonlWriter, open_stage
    from rlaif.reward import RewardModel

    # Paths resolved, so `rlaif eval RUN` reopens the evaluation `rlaif run` made (its paths are absolute).
    config = replace(config, run=str(Path(config.run).resolve()), out=config.out and str(Path(config.out).resolve()))
    found = discover(config)
    prompts = load_prompts(found["prompts"])
    judge = load_constitution(config.judge)  # checked before any model is loaded
    out = Path(config.out or Path(config.run) / "eval")
    # Defaults resolved, so `rlaif eval RUN` reopens the evaluation `rlaif run` made with the same settings.
    config = replace(config, out=str(out), prompts=found["prompts"],
                     labeler=found["labeler"], reward_model=found["reward_model"],
                     policies=[p for name, p in found["policies"].items() if name.startswith("round-")],
                     temperature=found["temperature"], max_new_tokens=found["max_new_tokens"])
    manifest = open_stage(out, "eval", asdict(config), volatile=EvalConfig.VOLATILE, added=EvalConfig.ADDED)
    manifest.add_input(found["prompts"])
    if manifest.status == "complete" and (out / "eval.json").is_file():  # finished with these settings: as it was
        return json.loads(read_text(out / "eval.json"))
    started = time.time()
    temperature, policies = found["temperature"], found["policies"]
    base = reward = None
    with JsonlWriter(out / "responses.jsonl") as writer:
        missing = any(f"{name}/{p['id']}" not in writer.done for name in policies for p in prompts)
        batches = _batches(prompts, [*policies.values(), found["reward_model"]], found["max_new_tokens"],
                           config.batch_size) if missing else []
        todos = {name: [batch for batch in batches if any(f"{name}/{p['id']}" not in writer.done for p in batch)]
                 for name in policies}
        sampled = {}  # engine vllm: {policy: {prompt id: Generation}}, all sampled before a model is loaded here
        if config.engine == "vllm":
            from rlaif.engines import spawned

            for name, todo in todos.items():
                chunk = [p for batch in todo for p in batch]
                if chunk:
                    sampled[name] = dict(zip([p["id"] for p in chunk], spawned(
                        vllm_replies, policies[name], [p["prompt"] for p in chunk], GenerationConfig(
                            max_new_tokens=found["max_new_tokens"], temperature=temperature,
                            batch_size=config.batch_size, seeds=[derive_seed(config.seed, p["id"]) for p in chunk]))))
        for name, spec in policies.items():
            todo = todos[name]
            if not todo:
                continue
            if base is None:
                base = load_model(policies["base"], device=config.device)
                reward = RewardModel.load(found["reward_model"], device=config.device)
            model, tokenizer = base if name == "base" else load_model(spec, device=config.device)
            with progress_bar(progress, len(todo), f"answering ({name}, batches)") as bar:
                # Each batch written as it finishes; one a kill left half written runs whole again and writes what
                # is missing. A reply's seed is its prompt's, the same for every policy.
                for chunk in todo:
                    conversations = [p["prompt"] for p in chunk]
                    if name in sampled:
                        replies = [sampled[name][p["id"]] for p in chunk]
                    else:
                        generation = GenerationConfig(max_new_tokens=found["max_new_tokens"], temperature=temperature,
                                                      batch_size=config.batch_size, logprobs=True,
                                                      seeds=[derive_seed(config.seed, p["id"]) for p in chunk])
                        replies = generate(model, tokenizer, conversations, generation)
                    for p, r in zip(chunk, replies):
                        if r.finish_reason == "too_long":  # this policy's tokenizer counts more than the base's
                            raise DataError(found["prompts"], None, None, f"prompt {p['id']}: {r.prompt_tokens} "
                                            f"tokens and max_new_tokens ({found['max_new_tokens']}) do not fit in "
                                            f"the context of the policy {name}; leave the prompt out")
                    prompt_ids = [encode_chat(base[1], c) for c in conversations]
                    tokens = [r.token_ids for r in replies]
                    base_logprobs = sequence_logprobs(base[0], prompt_ids, tokens, temperature, config.batch_size)
                    logprobs = [sum(r.logprobs) for r in replies] if name not in sampled else sequence_logprobs(
                        model, [encode_chat(tokenizer, c) for c in conversations], tokens, temperature,
                        config.batch_size)  # vLLM's kernels round otherwise: both sides of the KL computed here
                    rewards = reward.score(conversations, [r.text for r in replies], normalize=bool(reward.stats))
                    for p, r, lp, blp, rw in zip(chunk, replies, logprobs, base_logprobs, rewards.tolist()):
                        if f"{name}/{p['id']}" in writer.done:
                            continue
                        writer.write({"id": f"{name}/{p['id']}", "policy": name, "prompt_id": p["id"],
                                      "tags": p.get("tags", []), "prompt": p["prompt"], "response": r.text,
                                      "tokens": len(r.token_ids), "finished": r.finish_reason == "stop",
                                      "logprob": lp, "base_logprob": blp, "reward": rw})
                    bar(1)
            del model
    del base, reward
    responses = {(r["policy"], r["prompt_id"]): r for r in read_jsonl(out / "responses.jsonl")}
    # Every policy answers a prompt, or none does: one too long for a model's context.
    answering = Tally("prompts")
    answered = [p for p in prompts if all((name, p["id"]) in responses for name in policies)]
    answering.read, answering.used = len(prompts), len(answered)
    answering.leave_out("too_long", len(prompts) - len(answered))
    answering.require_some(found["prompts"], f"each prompt and max_new_tokens ({found['max_new_tokens']}) must fit "
                                             "in the context of the base model, every policy and the reward model")

    matches = [(name, opponent) for name in policies if name != "base"
               for opponent in ("base", "sft") if opponent != name]
    with JsonlWriter(out / "judgements.jsonl") as writer:
        todo = [(name, opponent, p) for name, opponent in matches for p in answered
                if f"{name}>{opponent}/{p['id']}" not in writer.done]
        for name, opponent, p in todo:  # a pair that says nothing is not put to the judge
            problem = reply_problem(responses[name, p["id"]]["response"], responses[opponent, p["id"]]["response"])
            if problem == "identical_replies":  # a reply is as good as itself: a tie, in the win rate unjudged
                writer.write({"id": f"{name}>{opponent}/{p['id']}", "not_judged": problem, "p": 0.5})
            elif problem:  # an empty reply: no judgement, left out of the win rate
                writer.write({"id": f"{name}>{opponent}/{p['id']}", "left_out": problem, "p": None})
        judgeable = [(name, opponent, p) for name, opponent in matches for p in answered if not reply_problem(
            responses[name, p["id"]]["response"], responses[opponent, p["id"]]["response"])]
        todo = [(name, opponent, p) for name, opponent, p in judgeable
                if f"{name}>{opponent}/{p['id']}" not in writer.done]
        if todo:
            model, tokenizer = load_model(found["labeler"], device=config.device)
            labeler = Labeler(model, tokenizer, judge, name=found["labeler"])
            k = judge.label.principles_per_comparison
            with progress_bar(progress, len(judgeable), "judging", completed=len(judgeable) - len(todo)) as bar:
                # By position, as the labeler packs each batch's prompts without padding (rlaif.prefix_tree).
                for start in range(0, len(judgeable), config.batch_size):
                    chunk = judgeable[start : start + config.batch_size]
                    pairs = [Pair(f"{name}>{opponent}/{p['id']}", p["prompt"], responses[name, p["id"]]["response"],
                                  responses[opponent, p["id"]]["response"]) for name, opponent, p in chunk]
                    if all(pair.id in writer.done for pair in pairs):
                        continue
                    principles = [sample_label_principles(judge, k, p["id"]) for _, _, p in chunk]
                    asked = []  # a pair whose judging prompt does not fit in the labeler's context is left out
                    for pair, drawn in zip(pairs, principles):
                        if labeler.fits(pair, drawn):
                            asked.append((pair, drawn))
                        elif pair.id not in writer.done:
                            writer.write({"id": pair.id, "left_out": "too_long", "p": None})
                            bar(1)
                    judged = label_pairs(labeler, [pair for pair, _ in asked], [drawn for _, drawn in asked],
                                         both_orders=True)
                    for (pair, _), judgements in zip(asked, judged):
                        if pair.id not in writer.done:
                            writer.write({"id": pair.id, "p": sum(j.p for j in judgements) / len(judgements),
                                          "principles": [j.principle for j in judgements]})
                            bar(1)
    # used: in the judge's win rate, judged by the model or, two identical replies, a tie without asking it
    judged, ties = Tally("pairs for the judge"), 0
    for row in read_jsonl(out / "judgements.jsonl"):
        judged.read += 1
        if row.get("not_judged") or row.get("left_out") == "identical_replies":  # (written as left out before)
            judged.used += 1
            ties += 1
        elif row.get("left_out"):
            judged.leave_out(row["left_out"])
        else:
            judged.used += 1
    judging = {**judged.counts(), "judged": judged.used - ties, "identical_replies_tied": ties}
    judgements = {r["id"]: r["p"] for r in read_jsonl(out / "judgements.jsonl")}

    summary = {"prompts": found["prompts"], "reward_model": found["reward_model"], "judge": config.judge,
               "labeler": found["labeler"], "temperature": temperature, "policies": policies,
               "results": summarize(answered, list(policies), responses, judgements),
               "answering": {**answering.counts(), "summary": answering.summary()},
               "judging": {**judging, "summary": judging_summary(judged, ties)},
               "training": training_metrics(Path(config.run), len(config.policies) or None),
               "method": stats.method(len(answered))}
    write_atomic(out / "eval.json", dumps_json(summary))
    manifest.counts.update(prompts=len(prompts), policies=len(policies), responses=len(responses),
                           judgements=len(judgements))
    manifest.counts.update(answering.counts("prompts_"))
    manifest.counts.update({f"judge_{key}": n for key, n in judging.items()})
    manifest.seconds += time.time() - started
    manifest.outputs = ["responses.jsonl", "judgements.jsonl", "eval.json"]
    manifest.status = "complete"
    manifest.save(out)
    return summary


def judging_summary(tally: Tally, ties: int) -> str:
    """The judge's closing line: the tally's, its `used` told apart as pairs the judge model judged and pairs of
    identical replies counted as ties without it: "read 10 pairs for the judge, judged 6, 4 identical-reply pairs
    counted as ties, left out 2 (empty_reply 2)"."""
    used = f", judged {tally.used - ties}"
    if ties:
        used += f", {ties} identical-reply pair{'' if ties == 1 else 's'} counted as {'a tie' if ties == 1 else 'ties'}"
    return tally.summary().replace(f", used {tally.used}", used, 1)


def _batches(prompts: list[dict], models: list[str], max_new_tokens: int, batch_size: int) -> list[list[dict]]:
    """The prompts that leave room for max_new_tokens in every model's context (counted with the first model's
    tokenizer, the base policy's), longest first and cut into batches: the same batches on every run, so a rerun
    computes a half-written batch's numbers as the killed run did."""
    from rlaif.generate import encode_chat
    from rlaif.models import context_length, load_tokenizer

    tokenizer = load_tokenizer(models[0])
    room = min((n for n in map(context_length, models) if n is not None), default=None)
    length = {p["id"]: len(encode_chat(tokenizer, p["prompt"])) for p in prompts}
    fitting = sorted((p for p in prompts if room is None or length[p["id"]] + max_new_tokens <= room),
                     key=lambda p: -length[p["id"]])
    return [fitting[i : i + batch_size] for i in range(0, len(fitting), batch_size)]


# The summary's numbers per policy, as (key, column title) for tables.
SUMMARY_COLUMNS = [("reward", "reward"), ("rm_win_vs_base", "RM win vs base"), ("rm_lc_win_vs_base", "RM LC win vs base"),
                   ("judge_win_vs_base", "judge win vs base"), ("judge_lc_win_vs_base", "judge LC win vs base"),
                   ("rm_win_vs_sft", "RM win vs SFT"), ("rm_lc_win_vs_sft", "RM LC win vs SFT"),
                   ("judge_win_vs_sft", "judge win vs SFT"), ("judge_lc_win_vs_sft", "judge LC win vs SFT"),
                   ("kl", "KL to base"), ("tokens", "length"), ("refusal_rate", "refusals")]


def _win(x: float, y: float) -> float:
    return 1.0 if x > y else 0.5 if x == y else 0.0


def summarize(prompts: list[dict], names: list[str], responses: dict, judgements: dict[str, float | None]) -> dict:
    """Per group (all, red-team, helpful) and policy: reward, win rates by the reward model and by the judge (plain
    and length-controlled), KL, length, refusals; and each of them with its 95% bootstrap interval over the prompts
    in entry["intervals"][key] ({"value", "low", "high", "n"}; None when no prompt measured it). A pair without a
    judgement (an empty reply, or too long for the judge) is left out of the judge's figures."""
    groups = {"all": prompts, "red-team": [p for p in prompts if "red-team" in p.get("tags", [])],
              "helpful": [p for p in prompts if "red-team" not in p.get("tags", [])]}
    results: dict = {}
    for group, members in groups.items():
        if not members:
            continue
        results[group] = {}
        for name in names:
            rows = [responses[name, p["id"]] for p in members]
            figures = {"reward": (stats.mean, [r["reward"] for r in rows]),
                       "kl": (stats.mean, [r["logprob"] - r["base_logprob"] for r in rows]),
                       "tokens": (stats.mean, [r["tokens"] for r in rows]),
                       "refusal_rate": (stats.share, [float(refuses(r["response"])) for r in rows])}
            for opponent in ("base", "sft"):
                if name == "base" or opponent == name:
                    continue
                theirs = [responses[opponent, p["id"]] for p in members]
                longer = [a["tokens"] - b["tokens"] for a, b in zip(rows, theirs)]  # the policy's extra tokens
                wins = [_win(a["reward"], b["reward"]) for a, b in zip(rows, theirs)]
                ps = [judgements[f"{name}>{opponent}/{p['id']}"] for p in members]
                judged = [i for i, p in enumerate(ps) if p is not None]  # an empty reply has no judgement
                ps, ds = [ps[i] for i in judged], [longer[i] for i in judged]
                figures.update({f"rm_win_vs_{opponent}": (stats.agreement, wins),
                                f"rm_lc_win_vs_{opponent}": (stats.length_controlled_win_rate, wins, longer),
                                f"judge_win_vs_{opponent}": (stats.agreement, ps),
                                f"judge_lc_win_vs_{opponent}": (stats.length_controlled_win_rate, ps, ds),
                                f"judge_p_vs_{opponent}": (stats.mean, ps)})
            # a length-controlled win rate needs pairs where the policy is the shorter too (stats docstring)
            intervals = {key: None if "_lc_" in key and not stats.length_control_identified(samples[1])
                         else _interval(statistic, *samples) for key, (statistic, *samples) in figures.items()}
            results[group][name] = {"prompts": len(rows),
                                    **{key: float("nan") if i is None else i["value"] for key, i in intervals.items()},
                                    "intervals": intervals}
    return results


RATES = {key for key, _ in SUMMARY_COLUMNS if "win" in key} | {"refusal_rate"}


def shown_figure(entry: dict, key: str, separator: str = " ") -> str:
    """One of a policy's figures for a table: '46.2% [39.1, 53.0]' for a rate, '0.123 [0.050, 0.200]' otherwise,
    the interval after `separator`; the bare number from an eval.json written without intervals; '-' when not
    measured."""
    interval = entry.get("intervals", {}).get(key)
    if interval is None:
        value = entry.get(key)
        return "-" if value is None or np.isnan(value) else f"{value:.3g}"
    estimate = stats.Estimate(**interval)
    text = estimate.percent() if key in RATES else estimate.number(1 if key == "tokens" else 3)
    return text.replace(" [", separator + "[", 1)


def _interval(statistic, *samples) -> dict | None:
    """The statistic with its bootstrap interval (rlaif.stats.bootstrap) as a dict; None with no pairs."""
    return stats.bootstrap(statistic, *samples).as_dict() if len(samples[0]) else None


def _mean(values: list) -> float:
    return sum(values) / len(values) if values else float("nan")


def training_metrics(run: Path, rounds_evaluated: int | None = None) -> dict:
    """Each round's labeler numbers (from its preference labels) and reward-model metrics, for the first
    `rounds_evaluated` rounds (default: every round in RUN)."""
    rounds: dict = {}
    for k in rounds_of(run)[:rounds_evaluated]:
        directory = run / f"round-{k}"
        entry: dict = {}
        labels = directory / "label" / "preferences.jsonl"
        if labels.is_file():
            entry["labeler"] = labeler_summary(list(read_jsonl(labels)))
        metrics = directory / "reward" / "metrics.json"
        if metrics.is_file():
            entry["reward"] = json.loads(read_text(metrics))
        rounds[f"round-{k}"] = entry
    return rounds


def labeler_summary(rows: list[dict]) -> dict:
    """Consistency, confidence and flags of AI labels, overall and per principle. Consistency is the share of the
    labels scored in both orders (`both_orders` of them) whose orders name the same winner; a label scored in one
    order says nothing about it (nan when no label has both). Per principle: over the labels it took part in (with
    k > 1 principles per pair, the ensemble's label). The overall figures also come with their 95% bootstrap
    intervals over the labels, in `intervals` (None when no label measured one)."""
    ai = [r for r in rows if r.get("source", "ai") == "ai"]
    if not ai:
        return {"pairs": 0}
    per_principle: dict[str, list[dict]] = {}
    for row in ai:
        for pid in row.get("principles", []):
            per_principle.setdefault(pid, []).append(row)

    def figures(members: list[dict]) -> dict:
        both = [r for r in members if len(r.get("p_orders", {})) == 2]
        return {"pairs": len(members), "both_orders": len(both),
                "consistency": _mean([bool(r.get("consistent")) for r in both]),
                "confidence": _mean([max(r["p_chosen"], 1 - r["p_chosen"]) for r in members])}

    both = [r for r in ai if len(r.get("p_orders", {})) == 2]
    intervals = {"consistency": _interval(stats.share, [float(bool(r.get("consistent"))) for r in both]),
                 "confidence": _interval(stats.mean, [max(r["p_chosen"], 1 - r["p_chosen"]) for r in ai]),
                 "low_confidence": _interval(stats.share, [float("low_confidence" in r.get("flags", [])) for r in ai])}
    return {**figures(ai), "low_confidence": _mean(["low_confidence" in r.get("flags", []) for r in ai]),
            "p_chosen": [r["p_chosen"] for r in ai], "intervals": intervals,
            "per_principle": {pid: figures(m) for pid, m in sorted(per_principle.items())}}
