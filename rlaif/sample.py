"""Sample K responses per prompt from a policy: the candidates the AI labeler compares.

    rlaif sample --model runs/x/sft --prompts prompts.jsonl --n 2 --out runs/x

Each prompt is repeated K times and sampled at the given temperature, response k of prompt `id` with its own seed,
derive_seed(seed, id, k), so the random draws behind it do not depend on the batch it shares or on where a run was
resumed (the probabilities they are drawn against can differ in their last digits from one batch shape to another:
see rlaif.generate). On a GPU with vLLM installed, `engine: vllm` samples with vLLM instead (the same seed per
request), and `engine: openai` sends the requests to OpenAI-compatible servers (rlaif.engines; `model` is then the
name the server serves). Temperature 0 (greedy) is for n = 1 only: it would give the K responses to a prompt one text.

The prompts not yet written go to the model together, sorted by length and cut into batches of `batch_size`
sequences (little padding), and each prompt's row goes to OUT/sample/candidates.jsonl as soon as its K responses
are done, so rows are in the order they finish. A killed run loses at most the batch in flight, and the rerun writes
each id exactly once. A prompt that leaves no room for max_new_tokens in the model's context is not sampled: it is
left out and counted (`too_long`), in the manifest and the closing line.

**Contrastive pairs (RLCD).** With `contrastive`, each prompt gets one principle of the constitution (drawn as
rlaif.label.sample_label_principles draws one for a pair, keyed by the prompt id) and two replies: one sampled under
the principle's follows system prompt, one under its violates prompt (Constitution.contrast_prompts), with seeds
derive_seed(seed, id, 0) and derive_seed(seed, id, 1). They go to OUT/sample/preferences.jsonl as an AI preference
row labelled by construction (Yang et al. 2023, "RLCD: Reinforcement Learning from Contrastive Distillation",
arXiv:2307.12950): chosen the follows reply, p_chosen the constitution's `label.contrastive_p` (1.0 by default, as
in RLCD), `labeler: rlcd`, `mode: contrastive`, the principle in `principles`; `rlaif reward` and `rlaif dpo` read
it as they read `rlaif label`'s. A pair with an empty reply, or two replies equal after stripping, says nothing: it
is left out and counted (records.reply_problem), and sampled again by a rerun, which draws the same text.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from rlaif import engines
from rlaif.constitution import load_constitution
from rlaif.generate import Generation, GenerationConfig, derive_seed, indexed, progress_bar
from rlaif.label import sample_label_principles
from rlaif.label_prompt import with_system
from rlaif.loaders import load_prompts
from rlaif.models import check_numbers, unused_settings
from rlaif.records import (
    CandidateRow,
    ConfigError,
    DataError,
    JsonlWriter,
    PreferenceRow,
    PromptRow,
    Tally,
    open_stage,
    read_jsonl,
    reply_problem,
)


@dataclass
class SampleConfig:
    prompts: str = ""  # prompt file: JSONL, CSV, text or hh-rlhf transcripts (see docs/data-contract.md)
    out: str = "runs/sample"  # run directory; this stage writes OUT/sample/candidates.jsonl
    model: str = "smollm2-135m-instruct"  # the policy (any model spec: a run's sft/ or ppo/ directory too)
    n: int = 2  # responses per prompt (K); every pair of them can be labeled
    max_new_tokens: int = 200
    temperature: float = 0.9  # diverse enough that the K responses differ
    top_p: float = 0.95
    seed: int = 0
    batch_size: int = 16  # sequences per forward pass; a prompt's row is written once its n responses are done
    device: str | None = None  # cpu, cuda, ...; default: a GPU if there is one
    engine: str = "rlaif"  # rlaif (batched generation here), vllm (on a GPU, where vLLM is installed), or openai
    #   (HTTP to OpenAI-compatible servers, rlaif.engines: `model` is then the name the server serves)
    base_url: list[str] = field(default_factory=list)  # openai: the servers' API addresses (http://HOST:PORT/v1);
    #   several share the requests, each request going to the least busy
    api_key_env: str = engines.API_KEY_ENV  # openai: the environment variable holding the API key (sent as a Bearer
    #   token, never printed or saved); OPENAI_API_KEY unset: no key is sent
    concurrency: int = 8  # openai: requests in flight at once, over all servers
    request_timeout: float = 600.0  # openai: seconds to wait for a reply (asked twice before the stage stops)
    contrastive: bool = False  # RLCD: per prompt, one reply under a principle's follows and one under its violates
    constitution: str = "default"  # contrastive: the principles and their system prompts (shipped name or path)

    # How the work runs, not what it makes (chunk_size: saved by earlier versions; it never changed a row)
    VOLATILE = ("batch_size", "chunk_size", "device", "base_url", "api_key_env", "concurrency", "request_timeout")
    # Settings added after the first runs, each with the value that reproduces them (rlaif.records.added_default);
    # volatile ones need none, since they are never compared
    ADDED: ClassVar[dict] = {"contrastive": False, "constitution": "default"}

    def __post_init__(self):
        check_numbers(self, "sample", at_least_one=["n", "max_new_tokens", "batch_size"], nonnegative=["temperature"],
                      finite=["top_p", "seed"])
        if not 0 < self.top_p <= 1:
            raise DataError("sample settings", None, "top_p", f"expected a share in (0, 1], got {self.top_p:g}")
        engines.check_settings(self, "sample", local=["device"])
        if self.contrastive:
            unused_settings(self, ["n"], "contrastive sampling writes one pair per prompt: one reply under each of "
                            "a principle's two system prompts", ("contrastive",))
        else:
            unused_settings(self, ["constitution"], "used only with contrastive sampling (contrastive: true, "
                            "--contrastive)")
        if self.temperature == 0:
            if self.n > 1 and not self.contrastive:
                raise ConfigError(f"n: temperature 0 (greedy) gives the {self.n} responses to a prompt the same "
                                  "text, and a pair of equal responses is never labeled; use a temperature > 0, "
                                  "or n: 1", ["n", "temperature"])
            unused_settings(self, ["top_p", "seed"], "no effect with temperature 0 (greedy)", ("temperature",))


def run(config: SampleConfig, complete=None, progress: bool = False) -> dict:
    """Sample (or resume sampling) candidates, or with `contrastive` RLCD pairs; returns the manifest's counts, with
    the tally of prompts read, used and left out (too long for the model's context; in contrastive sampling also a
    pair with an empty reply or two equal ones, records.reply_problem), and `summary`, the tally's line.
    `complete(conversations, generation)` replaces the model (tests use a scripted one): it returns the replies in
    order, or (index, reply) pairs as batches finish. Raises DataError when every prompt is left out, ConfigError
    when an engine cannot start or a server fails (rlaif.engines)."""
    prompts = load_prompts(config.prompts)
    constitution = load_constitution(config.constitution) if config.contrastive else None
    stage_dir = Path(config.out) / "sample"
    resolved = asdict(config)
    if constitution is not None:
        resolved["constitution_digest"] = constitution.digest()
    manifest = open_stage(stage_dir, "sample", resolved, volatile=SampleConfig.VOLATILE, added=SampleConfig.ADDED)
    manifest.status = "running"
    manifest.add_input(config.prompts)
    if complete is None:
        complete = _model_complete(config) if config.engine == "rlaif" else engines.open_engine(config)
    started = time.time()
    output = "preferences.jsonl" if config.contrastive else "candidates.jsonl"
    path = stage_dir / output
    tally = Tally("prompts")
    per_prompt = 2 if config.contrastive else config.n  # contrastive: the follows reply, then the violates reply
    with JsonlWriter(path) as out:
        todo = [p for p in prompts if p["id"] not in out.done]
        manifest.counts.update(prompts=len(prompts), resumed=len(prompts) - len(todo))
        if constitution is not None:
            drawn = {p["id"]: sample_label_principles(constitution, 1, p["id"])[0] for p in todo}
            conversations = [with_system(p["prompt"], system) for p in todo
                             for system in constitution.contrast_prompts(drawn[p["id"]])]
        else:
            conversations = [p["prompt"] for p in todo for _ in range(config.n)]
        with progress_bar(progress, len(prompts), "sampling", completed=len(prompts) - len(todo)) as bar:
            generation = GenerationConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                          top_p=config.top_p, batch_size=config.batch_size,
                                          seeds=[derive_seed(config.seed, p["id"], k)
                                                 for p in todo for k in range(per_prompt)])
            replies: dict[int, dict] = {}  # prompt index in todo -> {k: reply}, until its replies are all in
            for index, reply in indexed(complete(conversations, generation)):
                mine = replies.setdefault(index // per_prompt, {})
                mine[index % per_prompt] = reply
                if len(mine) < per_prompt:
                    continue
                prompt, mine = todo[index // per_prompt], [mine[k] for k in range(per_prompt)]
                del replies[index // per_prompt]
                problem = "too_long" if any(r.finish_reason == "too_long" for r in mine) else None
                if constitution is not None:
                    problem = problem or reply_problem(mine[0].text, mine[1].text)
                if problem:
                    tally.leave_out(problem)
                elif constitution is not None:
                    out.write(contrastive_row(prompt, drawn[prompt["id"]].id, *mine,
                                              constitution.label.contrastive_p, config.model))
                else:
                    out.write({"id": prompt["id"], "prompt": prompt["prompt"], "responses": [r.text for r in mine],
                               "policy": config.model, "tokens": [r.tokens for r in mine],
                               "finished": [r.finish_reason == "stop" for r in mine]})
                bar(1)
        tally.read, tally.used = len(prompts), sum(p["id"] in out.done for p in prompts)
    rows: list[CandidateRow | PreferenceRow] = list(read_jsonl(path))
    if config.contrastive:
        manifest.counts.update(pairs=len(rows), responses=2 * len(rows),
                               generated_tokens=sum(sum(r["tokens"].values()) for r in rows),
                               finished_with_eos=sum(sum(r["finished"].values()) for r in rows))
    else:
        manifest.counts.update(responses=sum(len(r["responses"]) for r in rows),
                               generated_tokens=sum(sum(r.get("tokens", [])) for r in rows),
                               finished_with_eos=sum(sum(r.get("finished", [])) for r in rows))
    manifest.counts.update(tally.counts())
    manifest.seconds += time.time() - started
    engines.save_counts(manifest, complete)
    manifest.save(stage_dir)
    tally.require_some(config.prompts, {
        "too_long": f"each prompt and max_new_tokens ({config.max_new_tokens}) must fit in the model's context",
        "empty_reply": "every pair had an empty reply: allow more max_new_tokens, or sample from another policy",
        "identical_replies": "the two system prompts gave the same reply every time: sample at a higher "
                             "temperature, or give the principles sharper follows and violates texts",
    })
    manifest.outputs = [output]
    manifest.status = "complete"
    manifest.save(stage_dir)
    return {**manifest.counts, "summary": tally.summary()}


def contrastive_row(prompt: PromptRow, principle: str, follows: Generation, violates: Generation, p_chosen: float,
                    policy: str) -> PreferenceRow:
    """An RLCD pair as a preference row (Yang et al. 2023, "RLCD", arXiv:2307.12950): the reply sampled under the
    principle's follows prompt is chosen, the one under its violates prompt rejected, labelled by construction with
    p_chosen = the constitution's label.contrastive_p (RLCD takes 1). The conversation is the prompt's own: the
    system prompts that steered the two replies are not part of it, so reward and DPO learn the difference without
    them. `tokens` and `finished` say, per side, the tokens generated and whether the reply ended with EOS."""
    return {"id": prompt["id"], "prompt": prompt["prompt"],
            "chosen": [{"role": "assistant", "content": follows.text}],
            "rejected": [{"role": "assistant", "content": violates.text}],
            "p_chosen": float(p_chosen), "source": "ai", "labeler": "rlcd", "mode": "contrastive",  # type: ignore[typeddict-unknown-key]
            "principles": [principle], "policy": policy,
            "tokens": {"chosen": follows.tokens, "rejected": violates.tokens},
            "finished": {"chosen": follows.finish_reason == "stop", "rejected": violates.finish_reason == "stop"}}


def _model_complete(config: SampleConfig):
    from rlaif.generate import iter_generate
    from rlaif.models import load_model

    model, tokenizer = load_model(config.model, device=config.device)
    return lambda conversations, generation: iter_generate(model, tokenizer, conversations, generation)
