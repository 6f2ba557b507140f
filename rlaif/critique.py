"""SL-CAI: answer prompts, then critique and revise each answer under principles drawn from a constitution.

For every prompt the model first answers on its own. Then, round after round, it is asked to critique its latest
answer under a sampled principle and to revise it, all in one growing conversation, so each round revises the last
revision (Bai et al. 2022, "Constitutional AI", section 3.1). The constitution's few-shot examples go before every
critique and revision; their keys and values are computed once and shared, and each conversation's keys and values
are kept from turn to turn, so a revision request costs only its own tokens (see rlaif.generate).

Work is batched by round: all of a chunk's prompts are answered, then the flagged answers retried together, then
all critiques of round 1, then all revisions, and so on, so each conversation's keys and values are still in memory
at its next turn. Each step's conversations go to the model in one call, which sorts them by length before cutting
batches (little padding) and hands back each batch as it finishes. Every finished turn is appended to
`turns.jsonl` then (prompt id, step, text, flags, tokens; a flagged first attempt too, until its retry), and every
finished prompt to `revisions.jsonl`, once. A killed run loses at most the batch in flight: the rerun rebuilds each
conversation from its turns and continues it at its next step. Each request samples with a seed derived from
(seed, prompt id, step, attempt), so its draws do not depend on the batch it lands in (a rerun's batches hold only
the work left): the rerun writes what an uninterrupted run would have (see rlaif.generate on batch shapes).
`sft.jsonl` (the final revision as the assistant turn) and the optional `prefs.jsonl` (final revision preferred
over the first answer) are rebuilt from `revisions.jsonl` when the run finishes, in the prompt file's order.

A conversation grows with every turn; one with no room left in the model's context for the next reply (its tokens,
the few-shot block's and max_new_tokens) cannot go on: the prompt is left out and counted (`too_long`) in the
manifest and the closing line, as the rest of the stage's tally of prompts read, used and left out.

Where the replies come from is `engine`: rlaif (the model here, as above), vllm (vLLM in this process, on a GPU) or
openai (OpenAI-compatible servers over HTTP, `concurrency` requests in flight, each turn written as it comes back;
`model` is the name the server serves). See rlaif.engines.

    rlaif critique --prompts examples/prompts/red-team.jsonl --out runs/x
    rlaif critique --prompts examples/prompts/red-team.jsonl --engine openai --base-url http://127.0.0.1:8000/v1 \\
        -m Qwen/Qwen2.5-7B-Instruct --out runs/y
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from rlaif import engines
from rlaif.constitution import Constitution, Principle, load_constitution
from rlaif.generate import Generation, GenerationConfig, derive_seed, indexed, progress_bar
from rlaif.loaders import load_prompts
from rlaif.models import check_numbers, unused_settings
from rlaif.records import (
    DataError,
    JsonlWriter,
    Message,
    RevisionRow,
    Tally,
    iter_jsonl,
    open_stage,
    read_jsonl,
    write_jsonl,
)

# (conversations, config, shared prefix) -> one Generation per conversation: a list in input order (a scripted fake
# in tests), or (index, Generation) pairs as batches finish (rlaif.generate.iter_generate with a model bound in).
Complete = Callable[[list[list[Message]], GenerationConfig, list[Message] | None],
                    list[Generation] | Iterable[tuple[int, Generation]]]


@dataclass
class CritiqueConfig:
    prompts: str = ""  # prompt file: JSONL, CSV, text or hh-rlhf transcripts (see docs/data-contract.md)
    out: str = "runs/critique"  # run directory; this stage writes into OUT/critique/
    constitution: str = "default"  # shipped name or path
    model: str = "smollm2-135m-instruct"  # model spec (see rlaif.models)
    rounds: int | None = None  # critique/revision rounds per prompt (>= 1); None: the constitution's critique.rounds
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
    chunk_size: int = 64  # prompts taken through the rounds together, their keys and values kept from turn to turn
    device: str | None = None  # cpu, cuda, ...; default: a GPU if there is one
    kv_memory_gb: float = 2.0  # keys/values kept between turns, so a conversation's history is not recomputed; 0: off
    engine: str = "rlaif"  # rlaif (the model here), vllm (vLLM in this process, on a GPU), or openai (HTTP to
    #   OpenAI-compatible servers, rlaif.engines: `model` is then the name the server serves)
    base_url: list[str] = field(default_factory=list)  # openai: the servers' API addresses (http://HOST:PORT/v1);
    #   several share the requests, each request going to the least busy
    api_key_env: str = engines.API_KEY_ENV  # openai: the environment variable holding the API key (sent as a Bearer
    #   token, never printed or saved); OPENAI_API_KEY unset: no key is sent
    concurrency: int = 8  # openai: requests in flight at once, over all servers
    request_timeout: float = 600.0  # openai: seconds to wait for a reply (asked twice before the stage stops)

    # Settings that change how the work runs but not what it produces; a run may resume with others.
    VOLATILE = ("batch_size", "chunk_size", "device", "kv_memory_gb", "base_url", "api_key_env", "concurrency",
                "request_timeout")
    # Settings added after the first runs, each with the value that reproduces them (rlaif.records.added_default);
    # volatile ones need none, since they are never compared
    ADDED: ClassVar[dict] = {"engine": "rlaif"}

    def __post_init__(self):
        check_numbers(self, "critique", at_least_one=["rounds", "max_new_tokens", "batch_size", "chunk_size"],
                      nonnegative=["temperature", "kv_memory_gb"], finite=["top_p", "seed"])
        if not 0 < self.top_p <= 1:
            raise DataError("critique settings", None, "top_p", f"expected a share in (0, 1], got {self.top_p:g}")
        engines.check_settings(self, "critique", local=["device", "kv_memory_gb"])
        if self.temperature == 0 and not self.retry_flagged:  # a retry samples, with top_p and its own seed
            unused_settings(self, ["top_p", "seed"], "no effect with temperature 0 (greedy) and no retries",
                            ("temperature",))


# --------------------------------------------------------------------------------------------------------------------
# Pure pieces: principle draws, the few-shot block, quality flags


def draw_key(seed: int, item_id: str, principle: Principle, weighted: bool = True, cycle: int = 0) -> float:
    """A principle's key in one item's draw; the item draws its principles in decreasing key order.

    Weighted sampling without replacement by Efraimidis-Spirakis keys u ** (1 / w) (Efraimidis and Spirakis 2006,
    "Weighted random sampling with a reservoir"), as log(u) / w, which orders the same and does not underflow. u in
    (0, 1) is a hash of (seed, item id, principle id, cycle), so a principle's key depends on nothing else: adding,
    removing or re-weighting one principle leaves every other principle's key, and so their order, unchanged."""
    parts = [str(seed), item_id, principle.id] + ([str(cycle)] if cycle else [])
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    u = (int.from_bytes(digest[:8], "big") + 0.5) / 2**64
    return math.log(u) / (principle.weight if weighted else 1.0)


def sample_principles(principles: list[Principle], rounds: int, seed: int, item_id: str,
                      weighted: bool = True) -> list[Principle]:
    """One principle per round for one item (a prompt, a pair), drawn by weight (or evenly) without replacement;
    once every principle has been used the pool refills, so a principle repeats within an item only when there are
    more rounds than principles. The draws are those of `draw_key`: the same on every run, and stable under edits
    of the other principles (an item keeps its principles unless an added or re-weighted one outranks them)."""
    chosen: list[Principle] = []
    for cycle in range(-(-rounds // len(principles)) if principles else 0):
        chosen += sorted(principles, key=lambda p: (-draw_key(seed, item_id, p, weighted, cycle), p.id))
    return chosen[:rounds]


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


def is_degenerate(text: str, n: int = 10, min_chars: int = 48, min_unique: float = 0.5) -> bool:
    """Whether a reply loops: under `min_unique` of its character n-grams are distinct (a healthy text is near 1).

    Characters, not words, so that a loop is found in any script, with or without spaces between words (Chinese,
    Japanese and Thai do not separate words): runs of whitespace count as one space, and n = 10 characters spans
    about two English words or a few Chinese ones. Texts under `min_chars` characters are not judged. Measured on the
    4,121 turns of 48+ characters in the first 1,000 pairs of hh-rlhf harmless-base test: the lowest share of distinct
    10-grams is 59%; a sentence repeated 20 times has about 5%."""
    text = " ".join(text.split())
    if len(text) < max(min_chars, n):
        return False
    grams = [text[i : i + n] for i in range(len(text) - n + 1)]
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
    """One prompt on its way through the rounds. Step 0 is the first answer, step 2r + 1 round r's critique and
    step 2r + 2 its revision; until the last step, `messages` ends with the request the next step answers."""

    row: dict
    principles: list[Principle]
    messages: list[Message]
    initial: str = ""
    rounds: list[dict] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    step: int = 0  # steps finished
    critique: tuple[str, list[str]] = ("", [])  # this round's critique and its flags, until its revision
    first: dict | None = None  # the next step's flagged first attempt (its turns.jsonl row), until its retry
    too_long: bool = False  # the next step found no room in the model's context: the prompt is left out

    @property
    def steps(self) -> int:
        return 1 + 2 * len(self.principles)

    @property
    def latest(self) -> str:
        return self.rounds[-1]["revision"] if self.rounds else self.initial

    def add(self, text: str, flags: list[str]) -> None:
        """Record the reply of the next step (with its quality flags) and ask for the step after it. A rerun
        rebuilds a trace by adding the turns it had written, so this is the one place a turn changes a trace."""
        self.messages.append({"role": "assistant", "content": text})
        r, revising = divmod(self.step - 1, 2)
        if self.step == 0:
            self.initial = text
            self.flags += [f"initial:{f}" for f in flags if f != "retried"]
        elif not revising:
            self.critique = (text, flags)
        else:
            principle, (critique, critique_flags) = self.principles[r], self.critique
            self.rounds.append({"principle": principle.id, "critique_request": principle.critique_request,
                                "critique": critique, "revision_request": principle.revision_request,
                                "revision": text,
                                "flags": [f"critique:{f}" for f in critique_flags] + [f"revision:{f}" for f in flags]})
            if r == len(self.principles) - 1:
                self.flags += [f"final:{f}" for f in flags if f != "retried"]
        self.step += 1
        if self.step < self.steps:
            r, revising = divmod(self.step - 1, 2)
            principle = self.principles[r]
            self.messages.append({"role": "user",
                                  "content": principle.revision_request if revising else principle.critique_request})

    def to_row(self) -> RevisionRow:
        row: RevisionRow = {"id": self.row["id"], "prompt": self.row["prompt"], "initial": self.initial,
                            "rounds": self.rounds, "final": self.latest, "flags": self.flags}
        if self.row.get("tags"):
            row["tags"] = self.row["tags"]  # type: ignore[typeddict-unknown-key]
        return row


class _Generator:
    """Runs one attempt at the next step of a list of traces (all at the same step) and flags the replies. Each
    request samples with its own seed, derived from (seed, prompt id, step, attempt): a turn's draws do not depend
    on which prompts share its batch, or on where a killed run was resumed."""

    def __init__(self, complete: Complete, config: CritiqueConfig):
        self.complete, self.config = complete, config
        self.generation = GenerationConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                           top_p=config.top_p, batch_size=config.batch_size)

    def __call__(self, traces: list[_Trace], prefix: list[Message] | None,
                 attempt: int = 0) -> Iterator[tuple[_Trace, Generation, list[str]]]:
        """(trace, reply, flags) as each reply comes back (a batch at a time), in no set order."""
        if not traces:
            return
        seeds = [derive_seed(self.config.seed, t.row["id"], t.step, attempt) for t in traces]
        config = GenerationConfig(**{**asdict(self.generation), "seeds": seeds})
        if attempt:  # a greedy retry would repeat itself: sample
            config.temperature = max(config.temperature, 0.7)
        for i, reply in indexed(self.complete([t.messages for t in traces], config, prefix)):
            trace = traces[i]
            # A revision (an even step after the first) is flagged when it leaves the answer it revises unchanged.
            yield trace, reply, quality_flags(reply, trace.latest if trace.step and trace.step % 2 == 0 else None)

    def retries(self, flags: list[str]) -> bool:
        """Whether a first attempt so flagged gets a second. A reply cut off at the token limit would be cut off
        again: it is flagged, not retried."""
        return self.config.retry_flagged and bool(set(flags) - {"truncated"})


def run(config: CritiqueConfig, complete: Complete | None = None, progress: bool = False) -> dict:
    """Run (or resume) the critique stage. Returns the manifest's counts, with the tally of prompts read, used and
    left out (too long for the model's context), and `summary`, the tally's line. Raises DataError when every prompt
    is left out, ConfigError when an engine cannot start or a server fails (rlaif.engines)."""
    constitution = load_constitution(config.constitution)
    prompts = load_prompts(config.prompts)
    rounds = constitution.critique.rounds if config.rounds is None else config.rounds
    stage_dir = Path(config.out) / "critique"
    # The digest covers everything the constitution resolves to, included files too: editing it means a new run.
    resolved = {**asdict(config), "rounds": rounds, "constitution_digest": constitution.digest()}
    manifest = open_stage(stage_dir, "critique", resolved, volatile=CritiqueConfig.VOLATILE, added=CritiqueConfig.ADDED)
    manifest.status = "running"  # even when finished before: prompts added to the file since are new work
    manifest.add_input(config.prompts)
    manifest.add_input(constitution.path)
    if complete is None:
        complete = _model_complete(config) if config.engine == "rlaif" else engines.open_engine(config)

    prefix = few_shot_messages(constitution) if config.few_shot else None
    weighted = constitution.critique.sampling == "weighted"
    generate = _Generator(complete, config)
    tally = Tally("prompts")
    started = time.time()
    steps = 1 + 2 * rounds
    with JsonlWriter(stage_dir / "revisions.jsonl") as out, JsonlWriter(stage_dir / "turns.jsonl") as turns:
        written: dict[str, list[tuple[int, dict]]] = {p["id"]: [] for p in prompts if p["id"] not in out.done}
        for line, turn in iter_jsonl(turns.path):
            written.get(turn["prompt_id"], []).append((line, turn))
        finished = len(prompts) - len(written)
        restored = sum(not turn.get("retry_pending") for rows in written.values() for _, turn in rows)
        manifest.counts.update(prompts=len(prompts), resumed=finished, resumed_turns=restored)
        done = finished * steps + restored
        with progress_bar(progress, len(prompts) * steps, "critique (turns)", completed=done) as bar:

            def record(trace: _Trace, reply: Generation, turn: dict) -> None:
                """Write a turn as soon as it is made, and the trace once its last turn is; a request with no room
                in the model's context leaves the prompt out (a rerun finds that again at the same step)."""
                if reply.finish_reason == "too_long":
                    trace.too_long = True
                    tally.leave_out("too_long")
                    bar(steps - trace.step)
                    return
                turns.write(turn)
                _add(trace, turn)
                bar(0 if turn.get("retry_pending") else 1)
                if trace.step == steps:
                    out.write(trace.to_row())

            for start in range(0, len(prompts), config.chunk_size):
                # Chunks by position in the file, finished prompts included, so a rerun takes each prompt through
                # the rounds with the ones it had and writes the rows in the order the killed run would have.
                chunk = [_restore(p, written[p["id"]], constitution, rounds, weighted, turns.path)
                         for p in prompts[start : start + config.chunk_size] if p["id"] in written]
                for trace in chunk:  # every turn written, but killed before the trace was
                    if trace.step == steps:
                        out.write(trace.to_row())
                # Batched by round: every prompt of the chunk takes step s, then the flagged ones get their second
                # attempt, before any takes step s + 1.
                for step in range(steps):
                    live = [t for t in chunk if t.step == step and t.first is None and not t.too_long]
                    for trace, reply, flags in generate(live, prefix if step else None):
                        record(trace, reply, _turn(trace, reply.text, flags, reply.tokens,
                                                   generate.retries(flags)))
                    waiting = [t for t in chunk if t.step == step and t.first is not None]
                    for trace, reply, flags in generate(waiting, prefix if step else None, attempt=1):
                        first, tokens = trace.first, trace.first["tokens"] + reply.tokens
                        text, flags = (reply.text, flags) if len(flags) < len(first["flags"]) else \
                            (first["text"], first["flags"])
                        record(trace, reply, _turn(trace, text, flags + ["retried"], tokens))
        tally.read, tally.used = len(prompts), sum(p["id"] in out.done for p in prompts)
    written_turns = [turn for turn in read_jsonl(stage_dir / "turns.jsonl") if not turn.get("retry_pending")]
    manifest.counts.update(generated_tokens=sum(turn["tokens"] for turn in written_turns),
                           retried_turns=sum("retried" in turn["flags"] for turn in written_turns))

    elapsed = time.time() - started
    manifest.counts.update(_write_derived(stage_dir, config, [p["id"] for p in prompts]))
    manifest.counts.update(tally.counts())
    manifest.seconds += elapsed
    engines.save_counts(manifest, complete)
    manifest.save(stage_dir)
    tally.require_some(config.prompts, f"every conversation outgrew the model's context; lower max_new_tokens "
                                       f"({config.max_new_tokens}) or rounds ({rounds}), or turn few_shot off")
    manifest.outputs = ["revisions.jsonl", "turns.jsonl", "sft.jsonl"] + (["prefs.jsonl"] if config.prefs else [])
    manifest.status = "complete"
    manifest.save(stage_dir)
    return {**manifest.counts, "summary": tally.summary()}


def _turn(trace: _Trace, text: str, flags: list[str], tokens: int, retry_pending: bool = False) -> dict:
    """The row of turns.jsonl for a trace's next step; with `retry_pending`, for a flagged first attempt that waits
    for its retry (the step's own row comes after the retry)."""
    pid = trace.row["id"]
    turn = {"id": f"{pid}/{trace.step}", "prompt_id": pid, "step": trace.step, "text": text, "flags": flags,
            "tokens": tokens}
    return {**turn, "id": f"{pid}/{trace.step}/first", "retry_pending": True} if retry_pending else turn


def _restore(prompt: dict, written: list[tuple[int, dict]], constitution: Constitution, rounds: int, weighted: bool,
             path: Path) -> _Trace:
    """A prompt's trace, with the turns a killed run wrote for it (`written`: (line, row) of turns.jsonl) added, and
    a flagged first attempt still waiting for its retry put back in `first`."""
    trace = _Trace(row=prompt, messages=list(prompt["prompt"]), principles=sample_principles(
        constitution.principles, rounds, constitution.critique.seed, prompt["id"], weighted))
    for line, turn in written:
        if turn["step"] != trace.step:
            raise DataError(path, line, "step", f"expected step {trace.step} of {prompt['id']!r}, found "
                            f"{turn['step']!r}; this file was not written by this run")
        _add(trace, turn)
    return trace


def _add(trace: _Trace, turn: dict) -> None:
    """A row of turns.jsonl into its trace: the next step, or a first attempt waiting for its retry."""
    if turn.get("retry_pending"):
        trace.first = turn
    else:
        trace.add(turn["text"], turn["flags"])
        trace.first = None


def _write_derived(stage_dir: Path, config: CritiqueConfig, order: list[str]) -> dict[str, int]:
    """Rebuild sft.jsonl (and prefs.jsonl) from revisions.jsonl, in the order of the prompt ids `order` (rows of
    prompts no longer in the file last); count the flags."""
    sft, prefs, counts = [], [], Counter(rows=0, flagged_rows=0, sft_skipped_flagged=0)
    place = {pid: i for i, pid in enumerate(order)}
    rows = sorted(read_jsonl(stage_dir / "revisions.jsonl"), key=lambda row: place.get(row["id"], len(place)))
    for row in rows:
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
    from rlaif.generate import KVMemory, iter_generate
    from rlaif.models import load_model

    model, tokenizer = load_model(config.model, device=config.device)
    memory = KVMemory(max_bytes=int(config.kv_memory_gb * 2**30))

    def complete(conversations, generation, prefix):
        return iter_generate(model, tokenizer, conversations, generation, prefix=prefix, memory=memory)

    return complete
