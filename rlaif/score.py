"""Direct RLAIF: the labeler rates a response from 1 to 10 under the constitution, and that rating is the reward.

    rlaif score --candidates runs/x/sample/candidates.jsonl --out runs/x     # -> runs/x/score/scores.jsonl

Instead of comparing two responses, the labeler reads one and is asked for a score (Lee et al. 2023, "RLAIF vs.
RLHF", section 3.2). No text is generated: the next-token probabilities of the ten scores are read after the
prompt, and the reward is the expected score, E[s] = sum_s s * P(s), mapped from [1, 10] to [-1, 1]. "10" starts
like "1" in most tokenizers, so each score's probability is that of its own tokens and, for a score that is the
beginning of another (1 of 10), less that of the longer one: P(1) = P("1") - P("10"). A row of scores.jsonl keeps
every response of its candidates row, in order, so score i is response i's. An empty response says nothing to
score, and one whose scoring prompt does not fit in the labeler's context cannot be read: each keeps its place with
a null score and reward, and is counted as left out (`empty_reply`, `too_long`).

Rows go to scores.jsonl as each batch finishes (batches fixed by position in the file; the scorer packs a batch's
prompts without padding, see rlaif.prefix_tree, so sorting them by length would save nothing): a killed run loses
at most the batch in flight, and its rerun scores a half-written batch whole again, so it writes what an
uninterrupted one would have.

`DirectScore` is the same thing as a reward function, `reward(prompts, responses) -> tensor`, for PPO.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

from rlaif.constitution import Constitution, load_constitution, render
from rlaif.label_prompt import format_conversation, quote, tokenizer_specials
from rlaif.models import check_numbers
from rlaif.records import ConfigError, DataError, JsonlWriter, Message, Tally, iter_jsonl, open_stage

SCORES = tuple(range(1, 11))


@dataclass
class ScoreConfig:
    candidates: str = ""  # candidates.jsonl (`rlaif sample`): every response of every row is scored
    out: str = "runs/score"  # run directory; this stage writes OUT/score/scores.jsonl
    constitution: str = "default"  # shipped name or path; its principles' critique requests are the rubric
    labeler: str = "smollm2-135m-instruct"  # the scoring model (any model spec)
    batch_size: int = 8  # responses per forward pass (rows of candidates per batch, in the stage)
    device: str | None = None
    engine: str = "rlaif"  # rlaif (the labeler here) or vllm (vLLM in this process, on a GPU: rlaif.engines.VLLMModel)

    VOLATILE = ("batch_size", "device")
    ADDED: ClassVar[dict] = {"engine": "rlaif"}  # each with the value that reproduces older runs

    def __post_init__(self):
        from rlaif.models import check_engine, unused_settings

        check_numbers(self, "score", at_least_one=["batch_size"])
        check_engine(self, "score")  # no openai: a chat API scores no text its model did not write
        if self.engine == "vllm":
            unused_settings(self, ["device"], "not used with engine: vllm, which places the model itself", ("engine",))


def expected_score(logprobs: dict[int, float], prefixes: dict[int, list[int]]) -> tuple[float, dict[int, float]]:
    """E[score] and the distribution over scores, from each score's summed token log-probability. `prefixes[s]`
    names the scores whose tokens begin with score s's tokens (10 for 1): their mass is taken out of P(s)."""
    raw = {s: math.exp(lp) for s, lp in logprobs.items()}
    mass = {s: max(raw[s] - sum(raw[t] for t in prefixes.get(s, [])), 0.0) for s in raw}
    total = sum(mass.values())
    if total <= 0:
        return 5.5, {s: 0.1 for s in raw}
    dist = {s: m / total for s, m in mass.items()}
    return sum(s * p for s, p in dist.items()), dist


def to_reward(score: float) -> float:
    """[1, 10] -> [-1, 1]."""
    return (score - 5.5) / 4.5


class DirectScore:
    """The labeler as a reward function: `scorer(prompts, responses)` -> tensor of rewards in [-1, 1]."""

    def __init__(self, model, tokenizer, constitution: Constitution, batch_size: int = 8):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.template = constitution.templates["score"]
        self.rubric = "\n".join(f"- {p.critique_request}" for p in constitution.principles)
        self.special = tokenizer_specials(tokenizer)

    def _options(self, prompt: list[Message], response: str) -> tuple[dict[int, list[int]], list[tuple[list[int], int]]]:
        """The scoring prompt of `response` followed by each score: ({score: its tokens after the prompt}, [(token
        ids, how many of the last are the score's), one per score in SCORES order])."""
        content = render(self.template, principles=self.rubric, conversation=format_conversation(prompt, self.special),
                         response=quote(response, self.special))
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)
        stem = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        tails, options = {}, []
        for s in SCORES:
            ids = self.tokenizer(text + str(s), add_special_tokens=False)["input_ids"]
            common = next((i for i, (x, y) in enumerate(zip(ids, stem)) if x != y), min(len(ids), len(stem)))
            tails[s] = ids[common:]
            options.append((ids, len(ids) - common))
        return tails, options

    def fits(self, prompt: list[Message], response: str) -> bool:
        """Whether `response`'s scoring prompt, with every score after it, fits in the labeler's context."""
        context = getattr(self.model.config, "max_position_embeddings", None)
        return context is None or max(len(ids) for ids, _ in self._options(prompt, response)[1]) <= context

    def scores(self, prompts: list[list[Message]], responses: list[str]) -> list[tuple[float, dict[int, float]] | None]:
        """(expected score in [1, 10], distribution over scores) per response; None for one whose scoring prompt
        (the template, the conversation, the response and a score) does not fit in the labeler's context."""
        from rlaif.prefix_tree import tree_logprobs

        context = getattr(self.model.config, "max_position_embeddings", None)
        results = []
        for start in range(0, len(prompts), self.batch_size):
            sequences, n_scored, spans = [], [], []
            for prompt, response in zip(prompts[start : start + self.batch_size],
                                        responses[start : start + self.batch_size]):
                tails, options = self._options(prompt, response)
                if context is not None and max(len(ids) for ids, _ in options) > context:
                    spans.append(None)
                    continue
                for ids, n in options:
                    sequences.append(ids)
                    n_scored.append(n)
                spans.append(tails)
            logprobs = iter(tree_logprobs(self.model, sequences, n_scored))
            for tails in spans:
                if tails is None:
                    results.append(None)
                    continue
                lp = {s: sum(next(logprobs)) for s in SCORES}
                prefixes = {s: [t for t in SCORES if t != s and tails[t][: len(tails[s])] == tails[s]]
                            for s in SCORES}
                results.append(expected_score(lp, prefixes))
        return results

    def __call__(self, prompts: list[list[Message]], responses: list[str]):
        """Rewards (N,) in [-1, 1]. Raises ConfigError when a response's scoring prompt does not fit in the
        labeler's context (its score would be read past the positions the model knows)."""
        import torch

        rewards = []
        for result, response in zip(self.scores(prompts, responses), responses):
            if result is None:
                raise ConfigError(f"a response ({response[:40]!r}...) and its prompt do not fit in the scoring "
                                  f"labeler's context of {self.model.config.max_position_embeddings} tokens; lower "
                                  "max_new_tokens, shorten the prompts, or use a labeler with a longer context")
            rewards.append(to_reward(result[0]))
        return torch.tensor(rewards)


def run(config: ScoreConfig, scorer: DirectScore | None = None, progress: bool = False) -> dict:
    """Score every response of every candidates row; returns the manifest's counts (with the tally of responses
    read, scored and left out) and `summary`, the tally's line. Each row keeps all its responses; one that is empty
    (before the scorer is loaded) or too long for the labeler's context (when scored) gets a null score and reward
    and is counted as left out. A file with no response to score is a DataError before the scorer is loaded; one in
    which every response was too long, a DataError after scoring."""
    from rlaif.generate import progress_bar
    from rlaif.loaders import unique_id

    path = Path(config.candidates)
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    rows, tally, seen = [], Tally("responses"), {}
    for line, row in iter_jsonl(path):
        for name, kind in (("id", str), ("prompt", list), ("responses", list)):
            if not isinstance(row.get(name), kind):
                raise DataError(path, line, name, f"expected a {kind.__name__}")
        unique_id(seen, row["id"], path, line)
        if not all(isinstance(r, str) for r in row["responses"]):
            raise DataError(path, line, "responses", "expected a list of strings")
        empty = sum(not r.strip() for r in row["responses"])
        tally.read += len(row["responses"])
        tally.used += len(row["responses"]) - empty
        tally.leave_out("empty_reply", empty)
        rows.append(row)
    tally.require_some(path, "every response is empty")
    constitution = load_constitution(config.constitution)
    stage_dir = Path(config.out) / "score"
    manifest = open_stage(stage_dir, "score", {**asdict(config), "constitution_digest": constitution.digest()},
                          volatile=ScoreConfig.VOLATILE, added=ScoreConfig.ADDED)
    manifest.status = "running"
    manifest.add_input(path)
    if scorer is None:
        from rlaif.models import load_model

        if config.engine == "vllm":
            from rlaif.engines import VLLMModel

            model = VLLMModel(config.labeler)
            tokenizer = model.tokenizer
        else:
            model, tokenizer = load_model(config.labeler, device=config.device)
        scorer = DirectScore(model, tokenizer, constitution, config.batch_size)
    started = time.time()
    with JsonlWriter(stage_dir / "scores.jsonl") as out:
        done = sum(r["id"] in out.done for r in rows)
        with progress_bar(progress, len(rows), "scoring", completed=done) as bar:
            # Batches by position in the file, each written as it finishes; a batch a kill left half written is
            # scored whole again (the same batch, so the same numbers) and only its missing rows written.
            for start in range(0, len(rows), config.batch_size):
                group = rows[start : start + config.batch_size]
                todo = [r for r in group if r["id"] not in out.done]
                if not todo:
                    continue
                asked = [(r["prompt"], response) for r in group for response in r["responses"] if response.strip()]
                results = iter(scorer.scores([prompt for prompt, _ in asked], [response for _, response in asked]))
                for row in group:
                    scores = [next(results) if response.strip() else None for response in row["responses"]]
                    scores = [result[0] if result is not None else None for result in scores]
                    if row["id"] not in out.done:
                        out.write({"id": row["id"], "prompt": row["prompt"], "responses": row["responses"],
                                   "scores": scores, "rewards": [None if s is None else to_reward(s) for s in scores]})
                bar(len(todo))
    ids = {row["id"] for row in rows}
    too_long = sum(score is None and bool(response.strip()) for _, row in iter_jsonl(stage_dir / "scores.jsonl")
                   if row["id"] in ids for score, response in zip(row["scores"], row["responses"]))
    tally.used -= too_long
    tally.leave_out("too_long", too_long)
    manifest.counts.update(rows=len(rows), resumed=done, responses=tally.used)
    manifest.counts.update(tally.counts())
    manifest.seconds += time.time() - started
    manifest.save(stage_dir)
    tally.require_some(path, "every response is empty or too long for the labeler's context")
    manifest.outputs = ["scores.jsonl"]
    manifest.status = "complete"
    manifest.save(stage_dir)
    return {**manifest.counts, "summary": tally.summary()}
