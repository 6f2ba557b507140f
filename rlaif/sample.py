"""Sample K responses per prompt from a policy: the candidates the AI labeler compares.

    rlaif sample --model runs/x/sft --prompts prompts.jsonl --n 2 --out runs/x

Each prompt is repeated K times and sampled at the given temperature, response k of prompt `id` with its own seed,
derive_seed(seed, id, k): its text depends on nothing else, not on the batch it shares or on where a run was
resumed. On a GPU with vLLM installed, `engine: vllm` samples with vLLM instead (the same seed per request).
Temperature 0 (greedy) is for n = 1 only: it would give the K responses to a prompt one text.
Prompts go through in file order, `batch_size` sequences at a time, and each batch's rows go to
OUT/sample/candidates.jsonl as soon as it finishes: a killed run loses at most the batch in flight, and the rerun
writes the same file an uninterrupted run would have (each id exactly once).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rlaif.generate import GenerationConfig, derive_seed, progress_bar
from rlaif.loaders import load_prompts
from rlaif.models import check_numbers, unused_settings
from rlaif.records import CandidateRow, ConfigError, DataError, JsonlWriter, open_stage, read_jsonl


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
    batch_size: int = 16  # sequences per forward pass (batch_size // n prompts, at least one), written per batch
    device: str | None = None  # cpu, cuda, ...; default: a GPU if there is one
    engine: str = "rlaif"  # rlaif (batched generation here), or vllm (on a GPU, where vLLM is installed)

    VOLATILE = ("batch_size", "device")

    def __post_init__(self):
        check_numbers(self, "sample", at_least_one=["n", "max_new_tokens", "batch_size"], nonnegative=["temperature"],
                      finite=["top_p", "seed"])
        if not 0 < self.top_p <= 1:
            raise DataError("sample settings", None, "top_p", f"expected a share in (0, 1], got {self.top_p:g}")
        if self.engine not in ("rlaif", "vllm"):
            raise DataError("sample settings", None, "engine", f"expected rlaif or vllm, not {self.engine!r}")
        if self.engine == "vllm":
            if not _installed("vllm"):
                raise DataError("sample settings", None, "engine", "vllm is not installed here (pip install vllm, "
                                "on a machine with a GPU); or use engine: rlaif")
            unused_settings(self, ["device"], "not used with engine: vllm, which places the model itself")
        if self.temperature == 0:
            if self.n > 1:
                raise ConfigError(f"n: temperature 0 (greedy) gives the {self.n} responses to a prompt the same "
                                  "text, and a pair of equal responses is never labeled; use a temperature > 0, "
                                  "or n: 1")
            unused_settings(self, ["top_p", "seed"], "no effect with temperature 0 (greedy)")


def _installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (vLLM takes seconds)."""
    import importlib.util
    import sys

    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def run(config: SampleConfig, complete=None, progress: bool = False) -> dict:
    """Sample (or resume sampling) candidates; returns the manifest's counts. `complete(conversations, generation)`
    replaces the model (tests use a scripted one)."""
    prompts = load_prompts(config.prompts)
    stage_dir = Path(config.out) / "sample"
    manifest = open_stage(stage_dir, "sample", asdict(config), volatile=SampleConfig.VOLATILE)
    manifest.status = "running"
    manifest.add_input(config.prompts)
    if complete is None:
        complete = _vllm_complete(config) if config.engine == "vllm" else _model_complete(config)
    started = time.time()
    path = stage_dir / "candidates.jsonl"
    per_batch = max(1, config.batch_size // config.n)
    with JsonlWriter(path) as out:
        done = sum(p["id"] in out.done for p in prompts)
        manifest.counts.update(prompts=len(prompts), resumed=done)
        with progress_bar(progress, len(prompts), "sampling", completed=done) as bar:
            for start in range(0, len(prompts), per_batch):
                batch = prompts[start : start + per_batch]
                todo = [p for p in batch if p["id"] not in out.done]
                if not todo:
                    continue
                # The whole batch, even when a kill left part of it written: the rerun computes what the
                # uninterrupted run computed, and writes what is missing.
                generation = GenerationConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                              top_p=config.top_p, batch_size=config.batch_size,
                                              seeds=[derive_seed(config.seed, p["id"], k)
                                                     for p in batch for k in range(config.n)])
                replies = complete([p["prompt"] for p in batch for _ in range(config.n)], generation)
                for i, prompt in enumerate(batch):
                    if prompt["id"] in out.done:
                        continue
                    mine = replies[i * config.n : (i + 1) * config.n]
                    row: CandidateRow = {"id": prompt["id"], "prompt": prompt["prompt"],
                                         "responses": [r.text for r in mine], "policy": config.model,
                                         "tokens": [len(r.token_ids) for r in mine],
                                         "finished": [r.finish_reason == "stop" for r in mine]}
                    out.write(row)
                bar(len(todo))
    rows = list(read_jsonl(path))
    manifest.counts.update(responses=sum(len(r["responses"]) for r in rows),
                           generated_tokens=sum(sum(r.get("tokens", [])) for r in rows),
                           finished_with_eos=sum(sum(r.get("finished", [])) for r in rows))
    manifest.seconds += time.time() - started
    manifest.outputs = ["candidates.jsonl"]
    manifest.status = "complete"
    manifest.save(stage_dir)
    return manifest.counts


def _model_complete(config: SampleConfig):
    from rlaif.generate import generate
    from rlaif.models import load_model

    model, tokenizer = load_model(config.model, device=config.device)
    return lambda conversations, generation: generate(model, tokenizer, conversations, generation)


def _vllm_complete(config: SampleConfig):
    """The same `complete` on vLLM: each request gets its own seed (`generation.seeds`), so the K copies of a prompt
    differ and a rerun samples them again alike."""
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
                                 max_tokens=generation.max_new_tokens, seed=seed) for seed in generation.seeds]
        results = llm.chat(conversations, params, use_tqdm=False)
        return [Generation(text=r.outputs[0].text.strip(), token_ids=list(r.outputs[0].token_ids),
                           finish_reason="stop" if r.outputs[0].finish_reason == "stop" else "length",
                           prompt_tokens=len(r.prompt_token_ids)) for r in results]

    return complete
