"""The GPU check: critique, labels and 5 PPO steps with engine vllm against engine rlaif, on one GPU.

    bash bench/gpu_check.sh                        # SmolLM2-135M-Instruct, the embedded model
    bash bench/gpu_check.sh --model /path/to/hf_dir --prompts 128

Each phase runs the rlaif CLI twice in fresh processes, once per engine, on the same work, so that each vLLM engine
has the GPU to itself and frees it when its process ends:

  critique   `rlaif critique --rounds 1 -t 0 --prefs` on --prompts prompts (examples/prompts, red-team and helpful
             in turn), batch 64 on both engines: generated tokens per second of the stage's own time (manifest
             `seconds`: loading the model or starting vLLM apart), and how many greedy turns are the same text;
  label      `rlaif label -k 1 --both-orders --no-cot` of the rlaif run's first answer against its final revision,
             for every prompt (not only those prefs.jsonl keeps: the check compares engines, not replies): the share
             of pairs with the same winner, and the largest and mean |p_chosen difference| over the pairs both
             labeled, oriented alike (the issue's target is within 1e-3 of the local engine's);
  ppo        `rlaif ppo --steps 5` from the model against a Python reward (`bench/gpu_check.py:reward`, shorter
             replies score higher, so the 5 steps have something to move), batch 64, 64 new tokens: samples per
             second, seconds generating per step, and with vllm `rollout/logprob_gap`, the mean |log p| gap per
             token between vLLM's sampling log-probabilities and the trainer's full pass, which PPO uses, and
             `rollout/sampler_weight`, the mean truncated importance weight that corrects for it.

Prints a table and writes bench/results/gpu_check.json (or --out). Takes 5 to 8 minutes on one H100-class GPU for
the 135M model, most of it starting the engines. Needs vLLM (`pip install vllm`, which brings its own torch).
`--device cpu` runs the script itself on the CPU, for its test (tests/test_vllm_glue.py), with a stand-in for vLLM:
its figures then measure nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("rlaif", "vllm")


def reward(prompts, responses):
    """A reward for the PPO phase: 1 for an empty reply down to 0 at 64 words (a length reward only, so that 5
    steps of PPO move it measurably; not a reward to train a real policy on)."""
    import torch

    return torch.tensor([max(0.0, 1.0 - len(r.split()) / 64) for r in responses])


def rlaif(args: list[str], log: Path) -> float:
    """Run `python -m rlaif ARGS` in a fresh process, its output to `log`; returns its wall seconds. Exits with the
    log's end when the command fails."""
    path = os.pathsep.join([str(ROOT), str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    with open(log, "wb") as out:
        done = subprocess.run([sys.executable, "-m", "rlaif", *map(str, args)], stdout=out, stderr=subprocess.STDOUT,
                              env=env, cwd=ROOT, check=False)
    if done.returncode:
        sys.exit(f"failed: rlaif {' '.join(map(str, args))}\n{log.read_text(errors='replace')[-3000:]}")
    return time.perf_counter() - started


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def prompts_file(n: int, path: Path) -> Path:
    """n prompts from examples/prompts, red-team and helpful in turn, as JSONL."""
    pools = [jsonl(ROOT / "examples" / "prompts" / name) for name in ("red-team.jsonl", "helpful.jsonl")]
    rows = [pools[i % 2][(i // 2) % len(pools[i % 2])] for i in range(n)]
    path.write_text("".join(json.dumps({**row, "id": f"p{i}"}) + "\n" for i, row in enumerate(rows)))
    return path


def critique(model: str, prompts: Path, out: Path, device: str, batch: int, new_tokens: int) -> dict:
    results = {}
    for engine in ENGINES:
        run = out / f"critique-{engine}"
        wall = rlaif(["critique", "--prompts", prompts, "-m", model, "--rounds", "1", "-t", "0", "--prefs",
                      "--max-new-tokens", 2 * new_tokens, "--chunk-size", batch, "--out", run, "--engine", engine,
                      "--batch-size", batch, *(["--device", device] if engine == "rlaif" else [])],
                     out / f"{engine}-critique.log")
        manifest = json.loads((run / "critique" / "manifest.json").read_text())
        turns = {t["id"]: t["text"] for t in jsonl(run / "critique" / "turns.jsonl")}
        tokens = manifest["counts"].get("generated_tokens", 0)
        results[engine] = {"tokens": tokens, "seconds": manifest["seconds"], "wall_seconds": wall,
                           "tokens_per_second": tokens / manifest["seconds"] if manifest["seconds"] else None,
                           "turns": turns}
    same = sum(results["vllm"]["turns"].get(key) == text for key, text in results["rlaif"]["turns"].items())
    for entry in results.values():
        entry["turns"] = len(entry.pop("turns"))
    results["identical_turns"] = same
    results["speedup"] = (results["vllm"]["tokens_per_second"] or 0) / (results["rlaif"]["tokens_per_second"] or 1)
    return results


def revision_pairs(critique_dir: Path, path: Path) -> Path:
    """Candidates (docs/data-contract.md) of each prompt's first answer and final revision in a critique run's
    revisions.jsonl, flagged or not."""
    rows = [{"id": r["id"], "prompt": r["prompt"], "responses": [r["initial"], r["final"]]}
            for r in jsonl(critique_dir / "revisions.jsonl")]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def label(model: str, pairs: Path, out: Path, device: str) -> dict:
    rows = {}
    for engine in ENGINES:
        run = out / f"label-{engine}"
        wall = rlaif(["label", "--candidates", pairs, "--labeler", model, "-k", "1", "--both-orders", "--no-cot",
                      "--out", run, "--engine", engine, *(["--device", device] if engine == "rlaif" else [])],
                     out / f"{engine}-label.log")
        rows[engine] = {r["id"]: r for r in jsonl(run / "label" / "preferences.jsonl")}
        rows[engine + "_wall"] = wall
    local, served = rows["rlaif"], rows["vllm"]
    both = sorted(set(local) & set(served))

    def p_first(row: dict) -> float:  # P(the pair's first reply wins), whichever reply the row calls chosen
        first = row["chosen"][0]["content"] == local[row["id"]]["chosen"][0]["content"]
        return row["p_chosen"] if first else 1.0 - row["p_chosen"]

    gaps = [abs(p_first(served[i]) - p_first(local[i])) for i in both]
    return {"pairs": len(both), "same_winner": sum((p_first(served[i]) > 0.5) == (p_first(local[i]) > 0.5)
                                                   for i in both) / max(len(both), 1),
            "max_gap": max(gaps, default=None), "mean_gap": sum(gaps) / len(gaps) if gaps else None,
            "wall_seconds": {"rlaif": rows["rlaif_wall"], "vllm": rows["vllm_wall"]}}


def ppo(model: str, prompts: Path, out: Path, device: str, batch: int, new_tokens: int) -> dict:
    results = {}
    for engine in ENGINES:
        run = out / f"ppo-{engine}"
        wall = rlaif(["ppo", "--prompts", prompts, "--policy", model, "--reward-fn", "gpu_check:reward", "--steps", "5",
                      "--batch-size", batch, "--max-new-tokens", new_tokens, "--save-steps", "5", "--out", run,
                      "--engine", engine, "--device", device], out / f"{engine}-ppo.log")
        metrics = jsonl(run / "metrics.jsonl")
        results[engine] = {
            "wall_seconds": wall, "samples_per_second": sum(m["samples_per_second"] for m in metrics) / len(metrics),
            "generate_seconds": sum(m.get("time/generate", 0) for m in metrics) / len(metrics),
            "score_first_last": [metrics[0]["score"], metrics[-1]["score"]],
            "logprob_gap": [m.get("rollout/logprob_gap") for m in metrics] if engine == "vllm" else None,
            "sampler_weight": [m.get("rollout/sampler_weight") for m in metrics] if engine == "vllm" else None}
    results["speedup"] = results["vllm"]["samples_per_second"] / results["rlaif"]["samples_per_second"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="any model spec (a local directory, a hub id)")
    parser.add_argument("--prompts", type=int, default=64, help="prompts for critique and PPO")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "gpu-check", help="run directories and logs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check.json")
    parser.add_argument("--batch-size", type=int, default=64, help="critique's and PPO's batch")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="PPO's reply length (critique's: twice it)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu_check.py needs a GPU (torch.cuda.is_available() is False)")
    try:
        import vllm
    except ImportError:
        sys.exit("bench/gpu_check.py needs vLLM: pip install vllm")
    args.work.mkdir(parents=True, exist_ok=True)
    prompts = prompts_file(args.prompts, args.work / "prompts.jsonl")
    started = time.perf_counter()
    result = {"model": args.model, "prompts": args.prompts,
              "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu (vLLM stand-in)",
              "vllm": vllm.__version__, "torch": torch.__version__, "python": platform.python_version()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sizes = (args.batch_size, args.max_new_tokens)
    critiqued, pairs = args.work / "critique-rlaif" / "critique", args.work / "pairs.jsonl"
    phases = (("critique", lambda: critique(args.model, prompts, args.work, args.device, *sizes)),
              ("label", lambda: label(args.model, revision_pairs(critiqued, pairs), args.work, args.device)),
              ("ppo", lambda: ppo(args.model, prompts, args.work, args.device, *sizes)))
    for name, phase in phases:  # each phase's results written as it ends, so that a later failure keeps them
        result[name] = phase()
        result["seconds"] = time.perf_counter() - started
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    c, lab, p = result["critique"], result["label"], result["ppo"]
    gaps = [g for g in p["vllm"]["logprob_gap"] if g is not None] or [float("nan")]
    weights = [w for w in p["vllm"]["sampler_weight"] if w is not None] or [float("nan")]
    critique_line = (f"critique  {c['rlaif']['tokens_per_second']:8.1f} tokens/s     "
                     f"{c['vllm']['tokens_per_second']:8.1f} tokens/s     {c['speedup']:.2f}x   "
                     f"({c['identical_turns']} of {c['rlaif']['turns']} greedy turns identical)")
    label_line = (f"label     {lab['pairs']} pairs both labeled: same winner {lab['same_winner']:.1%}, |p difference| "
                  f"max {lab['max_gap'] or 0:.2e}, mean {lab['mean_gap'] or 0:.2e}")
    ppo_line = (f"ppo       {p['rlaif']['samples_per_second']:8.2f} samples/s    {p['vllm']['samples_per_second']:8.2f} "
                f"samples/s    {p['speedup']:.2f}x   (rollout log-prob gap per token {min(gaps):.2e} to "
                f"{max(gaps):.2e}; mean importance weight {min(weights):.4f} to {max(weights):.4f})")
    lines = [f"GPU check: {args.model} on {result['gpu']}, vLLM {result['vllm']} ({result['seconds']:.0f} s)",
             "phase     rlaif                 vllm                  ratio", critique_line, label_line, ppo_line]
    print("\n".join(lines))
    args.out.write_text(json.dumps({**result, "table": lines}, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
