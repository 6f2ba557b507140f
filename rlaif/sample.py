"""Sample K responses per prompt from a policy: the candidates the AI labeler compares.

    rlaif sample --model runs/x/sft --prompts prompts.jsonl --n 2 --out runs/x

Each prompt is repeated K times in one batched `generate` call per chunk, sampled at the given temperature with a
seed derived from the chunk, so a run is reproducible. On a GPU with vLLM installed, `engine: vllm` samples with
vLLM instead (one seed per request, derived the same way). Rows go to OUT/sample/candidates.jsonl as each chunk
finishes; a killed run resumes with the prompts not yet written, each written exactly once.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rlaif.generate import GenerationConfig, progress_bar
from rlaif.records import CandidateRow, ConfigError, JsonlWriter, load_prompts, open_stage


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
    batch_size: int = 16  # sequences per forward pass
    chunk_size: int = 64  # prompts sampled together and written together (the unit of resume)
    device: str | None = None  # cpu, cuda, ...; default: a GPU if there is one
    engine: str = "rlaif"  # rlaif (batched generation here), or vllm (on a GPU, where vLLM is installed)

    VOLATILE = ("batch_size", "device")


def run(config: SampleConfig, complete=None, progress: bool = False) -> dict:
    """Sample (or resume sampling) candidates; returns the manifest's counts. `complete(conversations, generation)`
    replaces the model (tests use a scripted one)."""
    if config.engine not in ("rlaif", "vllm"):
        raise ConfigError(f"engine: expected rlaif or vllm, not {config.engine!r}")
    if config.n < 1:
        raise ConfigError(f"n: expected at least 1 response per prompt, got {config.n}")
    prompts = load_prompts(config.prompts)
    stage_dir = Path(config.out) / "sample"
    manifest = open_stage(stage_dir, "sample", asdict(config), volatile=SampleConfig.VOLATILE)
    manifest.status = "running"
    manifest.add_input(config.prompts)
    if complete is None:
        complete = _vllm_complete(config) if config.engine == "vllm" else _model_complete(config)
    started, tokens, stopped = time.time(), 0, 0
    with JsonlWriter(stage_dir / "candidates.jsonl") as out, progress_bar(progress, len(prompts), "sampling") as bar:
        todo = [p for p in prompts if p["id"] not in out.done]
        bar(len(prompts) - len(todo))
        manifest.counts.update(prompts=len(prompts), resumed=len(prompts) - len(todo))
        for start in range(0, len(todo), config.chunk_size):
            chunk = todo[start : start + config.chunk_size]
            # The seed follows the chunk's first prompt, not its position, so a resumed run samples the same text.
            generation = GenerationConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                          top_p=config.top_p, batch_size=config.batch_size,
                                          seed=config.seed + _stable_hash(chunk[0]["id"]))
            replies = complete([p["prompt"] for p in chunk for _ in range(config.n)], generation)
            for i, prompt in enumerate(chunk):
                mine = replies[i * config.n : (i + 1) * config.n]
                row: CandidateRow = {"id": prompt["id"], "prompt": prompt["prompt"],
                                     "responses": [r.text for r in mine], "policy": config.model}
                out.write(row)
                tokens += sum(len(r.token_ids) for r in mine)
                stopped += sum(r.finish_reason == "stop" for r in mine)
            bar(len(chunk))
    manifest.counts.update(responses=len(todo) * config.n, generated_tokens=tokens, finished_with_eos=stopped)
    manifest.seconds += time.time() - started
    manifest.outputs = ["candidates.jsonl"]
    manifest.status = "complete"
    manifest.save(stage_dir)
    return manifest.counts


def _stable_hash(text: str) -> int:
    """A small integer from a string, the same in every process (Python's hash() is salted per process)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big")


def _model_complete(config: SampleConfig):
    from rlaif.generate import generate
    from rlaif.models import load_model

    model, tokenizer = load_model(config.model, device=config.device)
    return lambda conversations, generation: generate(model, tokenizer, conversations, generation)


def _vllm_complete(config: SampleConfig):
    """The same `complete` on vLLM: each request gets its own seed, so the K copies of a prompt differ."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        raise ConfigError("engine: vllm is not installed here (pip install vllm, on a machine with a GPU); "
                          "or use engine: rlaif") from None
    from rlaif.generate import Generation
    from rlaif.models import resolve

    llm = LLM(model=resolve(config.model), seed=config.seed)

    def complete(conversations, generation: GenerationConfig):
        params = [SamplingParams(temperature=generation.temperature, top_p=generation.top_p,
                                 max_tokens=generation.max_new_tokens, seed=generation.seed + i)
                  for i in range(len(conversations))]
        results = llm.chat(conversations, params, use_tqdm=False)
        return [Generation(text=r.outputs[0].text.strip(), token_ids=list(r.outputs[0].token_ids),
                           finish_reason="stop" if r.outputs[0].finish_reason == "stop" else "length",
                           prompt_tokens=len(r.prompt_token_ids)) for r in results]

    return complete
