"""SL-CAI: answer prompts, then critique and revise each answer under principles drawn from a constitution.

For every prompt the model first answers on its own. Then, round after round, it is asked to critique its latest
answer under a sampled principle and to revise it, all in one growing conversation, so each round revises the last
revision (Bai et al. 2022, "Constitutional AI", section 3.1). The constitution's few-shot examples go before every
critique and revision; their keys and values are computed once and shared, and each conversation's keys and values
are kept from turn to turn, so a revision request costs only its own tokens (see rlaif.generate).

Work is batched by round: all of a chunk's prompts are answered in one batched pass, then all critiques of round 1,
then all revisions, and so on. Each finished prompt is appended to `revisions.jsonl`, so a killed run resumes at the
chunk it was in. `sft.jsonl` (the final revision as the assistant turn) and the optional `prefs.jsonl` (final
revision preferred over the first answer) are rebuilt from `revisions.jsonl` when the run finishes.

    rlaif critique --prompts examples/prompts/red-team.jsonl --out runs/x
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlaif.constitution import Constitution, Principle, load_constitution
from rlaif.generate import Generation, GenerationConfig, progress_bar
from rlaif.records import (
    JsonlWriter,
    Message,
    RevisionRow,
    load_prompts,
    open_stage,
    read_jsonl,
    write_jsonl,
)

# (conversations, config, shared prefix) -> one Generation per conversation. rlaif.generate.generate with a model
# bound in, or a scripted fake in tests.
Complete = Callable[[list[list[Message]], GenerationConfig, list[Message] | None], list[Generation]]


@dataclass
class CritiqueConfig:
    prompts: str = ""  # prompt file: JSONL, CSV, text or hh-rlhf transcripts (see docs/data-contract.md)
    out: str = "runs/critique"  # run directory; this stage writes into OUT/critique/
    constitution: str = "default"  # shipped name or path
    model: str = "smollm2-135m-instruct"  # model spec (see rlaif.models)
    rounds: int | None = None  # critique/revision rounds per prompt; None: the constitution's critique.rounds
    few_shot: bool = True  # put the constitution's critique examples before each critique and revision
    max_new_tokens: int = 200  # length limit of each answer, critique and revision
    temperature: float = 0.7  # sampling temperature; 0 for greedy
    top_p: float = 0.95
    seed: int = 0  # seeds generation; principle draws use the constitution's critique.seed
    retry_flagged: bool = True  # regenerate an empty, degenerate or unchanged reply once (sampling)
    sft_every_revision: bool = False  # also write each intermediate revision as its own SFT example
    sft_include_flagged: bool = False  # keep prompts whose final revision is flagged in sft.jsonl
    prefs: bool = False  # also write prefs.jsonl: final revision chosen over the first answer
    batch_size: int = 16  # conversations per forward pass
    chunk_size: int = 64  # prompts taken through every round before they are written (the unit of resume)
    device: str | None = None  # cpu, cuda, ...; default: a GPU if there is one
    kv_memory_gb: float = 2.0  # keys/values kept between turns, so a conversation's history is not recomputed; 0: off

    # Settings that change how the work runs but not what it produces; a run may resume with others.
    VOLATILE = ("batch_size", "chunk_size", "device", "kv_memory_gb")


# --------------------------------------------------------------------------------------------------------------------
# Pure pieces: principle draws, the few-shot block, quality flags


def sample_principles(principles: list[Principle], rounds: int, rng: random.Random, weighted: bool = True) -> list[Principle]:
    """One principle per round, drawn by weight (or evenly) without replacement; once every principle has been
    used the pool refills, so a principle repeats within a prompt only when there are more rounds than principles."""
    chosen: list[Principle] = []
    pool: list[Principle] = []
    for _ in range(rounds):
        if not pool:
            pool = list(principles)
        pick = rng.choices(pool, weights=[p.weight for p in pool] if weighted else None)[0]
        pool.remove(pick)
        chosen.append(pick)
    return chosen


def principle_rng(seed: int, prompt_id: str) -> random.Random:
    """A generator per prompt, so a prompt's principles do not depend on which other prompts share its run."""
    return random.Random(f"{seed}:{prompt_id}")


def few_shot_messages(constitution: Constitution) -> list[Message]:
    """The constitution's critique examples as finished conversations, each in the shape the model is asked for."""
    messages: list[Message] = []
    for example in constitution.critique_examples:
        principle = constitution.principle(example.principle)
        messages += [
            {"role": "user", "content": example.prompt},
            {"role": "assistant", "content": example.response},
            {"role": "user", "content": principle.critique_request},
            {"role": "assistant", "content": example.critique},
            {"role": "user", "content": principle.revision_request},
            {"role": "assistant", "content": example.revision},
        ]
    return messages


def is_degenerate(text: str, n: int = 3, min_words: int = 12, min_unique: float = 0.5) -> bool:
    """Whether a reply loops: under `min_unique` of its word n-grams are distinct (a healthy text is near 1)."""
    words = text.split()
    if len(words) < min_words:
        return False
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) < min_unique


def quality_flags(reply: Generation, previous: str | None = None) -> list[str]:
    """What is wrong with a reply: empty, repetition (degenerate loop), truncated (hit the token limit), unchanged
    (a revision identical to the answer it revises)."""
    flags = []
    if not reply.text.strip():
        flags.append("empty")
    elif is_degenerate(reply.text):
        flags.append("repetition")
    if reply.finish_reason == "length":
        flags.append("truncated")
    if previous is not None and reply.text.strip() == previous.strip():
        flags.append("unchanged")
    return flags


# --------------------------------------------------------------------------------------------------------------------
# The loop


@dataclass
class _Trace:
    """One prompt on its way through the rounds."""

    row: dict
    principles: list[Principle]
    messages: list[Message]
    initial: str = ""
    rounds: list[dict] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)

    @property
    def latest(self) -> str:
        return self.rounds[-1]["revision"] if self.rounds else self.initial

    def to_row(self) -> RevisionRow:
        row: RevisionRow = {"id": self.row["id"], "prompt": self.row["prompt"], "initial": self.initial,
                            "rounds": self.rounds, "final": self.latest, "flags": self.flags}
        if self.row.get("tags"):
            row["tags"] = self.row["tags"]  # type: ignore[typeddict-unknown-key]
        return row


class _Generator:
    """Runs one batched step over many traces, flags weak replies and retries them once."""

    def __init__(self, complete: Complete, config: CritiqueConfig):
        self.complete, self.config = complete, config
        self.generation = GenerationConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                           top_p=config.top_p, seed=config.seed, batch_size=config.batch_size)
        self.tokens = 0
        self.calls = 0

    def __call__(self, conversations: list[list[Message]], prefix: list[Message] | None,
                 previous: list[str] | None = None) -> list[tuple[Generation, list[str]]]:
        replies = self._run(conversations, prefix, 0)
        results = [(r, quality_flags(r, previous[i] if previous else None)) for i, r in enumerate(replies)]
        # A reply cut off at the token limit would be cut off again: flag it, do not retry it.
        retry = [i for i, (_, flags) in enumerate(results) if set(flags) - {"truncated"}]
        if self.config.retry_flagged and retry:
            again = self._run([conversations[i] for i in retry], prefix, 1)
            for i, reply in zip(retry, again):
                flags = quality_flags(reply, previous[i] if previous else None)
                if len(flags) < len(results[i][1]):
                    results[i] = (reply, flags)
                results[i][1].append("retried")
        return results

    def _run(self, conversations, prefix, attempt: int) -> list[Generation]:
        self.calls += 1
        config = self.generation
        if attempt:  # a greedy retry would repeat itself: sample, with its own seed
            config = GenerationConfig(**{**asdict(config), "temperature": max(config.temperature, 0.7),
                                         "seed": config.seed + 7919 * self.calls})
        elif config.seed is not None:
            config = GenerationConfig(**{**asdict(config), "seed": config.seed + self.calls})
        replies = self.complete(conversations, config, prefix)
        self.tokens += sum(len(r.token_ids) for r in replies)
        return replies


def critique_chunk(traces: list[_Trace], generate: _Generator, rounds: int, prefix: list[Message] | None) -> None:
    """Take a chunk of prompts through the first answer and every round, one batched call per step."""
    answers = generate([t.messages for t in traces], None)
    for trace, (reply, flags) in zip(traces, answers):
        trace.initial = reply.text
        trace.flags += [f"initial:{f}" for f in flags if f != "retried"]
        trace.messages.append({"role": "assistant", "content": reply.text})
    for r in range(rounds):
        for trace in traces:
            trace.messages.append({"role": "user", "content": trace.principles[r].critique_request})
        critiques = generate([t.messages for t in traces], prefix)
        for trace, (reply, _) in zip(traces, critiques):
            trace.messages.append({"role": "assistant", "content": reply.text})
            trace.messages.append({"role": "user", "content": trace.principles[r].revision_request})
        revisions = generate([t.messages for t in traces], prefix, previous=[t.latest for t in traces])
        for trace, (critique, critique_flags), (revision, revision_flags) in zip(traces, critiques, revisions):
            principle = trace.principles[r]
            flags = [f"critique:{f}" for f in critique_flags] + [f"revision:{f}" for f in revision_flags]
            trace.rounds.append({"principle": principle.id, "critique_request": principle.critique_request,
                                 "critique": critique.text, "revision_request": principle.revision_request,
                                 "revision": revision.text, "flags": flags})
            trace.messages.append({"role": "assistant", "content": revision.text})
            if r == rounds - 1:
                trace.flags += [f"final:{f}" for f in revision_flags if f != "retried"]


def run(config: CritiqueConfig, complete: Complete | None = None, progress: bool = False) -> dict:
    """Run (or resume) the critique stage. Returns the manifest's counts."""
    constitution = load_constitution(config.constitution)
    prompts = load_prompts(config.prompts)
    rounds = config.rounds or constitution.critique.rounds
    stage_dir = Path(config.out) / "critique"
    # The digest covers everything the constitution resolves to, included files too: editing it means a new run.
    resolved = {**asdict(config), "rounds": rounds, "constitution_digest": constitution.digest()}
    manifest = open_stage(stage_dir, "critique", resolved, volatile=CritiqueConfig.VOLATILE)
    manifest.status = "running"  # even when finished before: prompts added to the file since are new work
    manifest.add_input(config.prompts)
    manifest.add_input(constitution.path)
    if complete is None:
        complete = _model_complete(config)

    prefix = few_shot_messages(constitution) if config.few_shot else None
    weighted = constitution.critique.sampling == "weighted"
    generate = _Generator(complete, config)
    started = time.time()
    with JsonlWriter(stage_dir / "revisions.jsonl") as out, progress_bar(progress, len(prompts), "critique") as bar:
        todo = [p for p in prompts if p["id"] not in out.done]
        bar(len(prompts) - len(todo))
        manifest.counts.update(prompts=len(prompts), resumed=len(prompts) - len(todo))
        for start in range(0, len(todo), config.chunk_size):
            traces = [
                _Trace(row=p, messages=list(p["prompt"]), principles=sample_principles(
                    constitution.principles, rounds, principle_rng(constitution.critique.seed, p["id"]), weighted))
                for p in todo[start : start + config.chunk_size]
            ]
            critique_chunk(traces, generate, rounds, prefix)
            for trace in traces:
                out.write(trace.to_row())
            bar(len(traces))
            manifest.counts["generated_tokens"] = manifest.counts.get("generated_tokens", 0) + generate.tokens
            generate.tokens = 0
            manifest.save(stage_dir)

    elapsed = time.time() - started
    counts = _write_derived(stage_dir, config)
    manifest.counts.update(counts)
    manifest.seconds += elapsed
    manifest.outputs = ["revisions.jsonl", "sft.jsonl"] + (["prefs.jsonl"] if config.prefs else [])
    manifest.status = "complete"
    manifest.save(stage_dir)
    return manifest.counts


def _write_derived(stage_dir: Path, config: CritiqueConfig) -> dict[str, int]:
    """Rebuild sft.jsonl (and prefs.jsonl) from revisions.jsonl; count the flags."""
    sft, prefs, counts = [], [], Counter(rows=0, flagged_rows=0, sft_skipped_flagged=0)
    for row in read_jsonl(stage_dir / "revisions.jsonl"):
        counts["rows"] += 1
        counts["flagged_rows"] += bool(row["flags"])
        counts.update(f"flag:{flag}" for flag in row["flags"] + [f for r in row["rounds"] for f in r["flags"]])
        if any(f.startswith("final:") for f in row["flags"]) and not config.sft_include_flagged:
            counts["sft_skipped_flagged"] += 1
            continue
        targets = [(row["id"], row["final"])]
        if config.sft_every_revision:
            targets = [(f"{row['id']}-r{i + 1}", r["revision"]) for i, r in enumerate(row["rounds"])] or targets
        for sft_id, answer in targets:
            sft.append({"id": sft_id, "messages": row["prompt"] + [{"role": "assistant", "content": answer}]})
        if config.prefs and row["final"].strip() != row["initial"].strip():
            prefs.append({"id": row["id"], "prompt": row["prompt"],
                          "chosen": [{"role": "assistant", "content": row["final"]}],
                          "rejected": [{"role": "assistant", "content": row["initial"]}],
                          "p_chosen": 1.0, "source": "critique"})
    counts["sft_rows"] = write_jsonl(stage_dir / "sft.jsonl", sft)
    if config.prefs:
        counts["prefs_rows"] = write_jsonl(stage_dir / "prefs.jsonl", prefs)
    return dict(counts)


def _model_complete(config: CritiqueConfig) -> Complete:
    from rlaif.generate import KVMemory, generate
    from rlaif.models import load_model

    model, tokenizer = load_model(config.model, device=config.device)
    memory = KVMemory(max_bytes=int(config.kv_memory_gb * 2**30))

    def complete(conversations, generation, prefix):
        return generate(model, tokenizer, conversations, generation, prefix=prefix, memory=memory)

    return complete
