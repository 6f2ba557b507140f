"""PPO throughput and memory: rlaif's trainer vs TRL 0.19.1's PPOTrainer (the last TRL with PPO), same work.

    python bench/ppo.py                 # default: 3 PPO steps each, batch 8, 48-token responses, 4 epochs
    python bench/ppo.py --steps 2

Both train the embedded SmolLM2-135M-Instruct in fp32 on CPU with the same reward model (the same backbone with a
seeded scalar head; the value model starts from it), prompts (examples/prompts), batch size, response length,
PPO epochs, minibatches, learning rate, temperature and fixed KL coefficient. TRL runs in its own virtualenv
(bench/.venv-trl019, made once from bench/trl019/requirements.txt); each trainer runs in a fresh process so its
peak RSS is its own. Samples/s counts every step, the first included, over the whole `train` call.

rlaif runs twice. Full fine-tuning is the same work as TRL's run (four models: policy, reference, value, reward;
every weight of policy and value trained): `speedup` and `memory_ratio` compare these. With `--lora` (rlaif's
LoRA mode, r = 16 on every linear layer of policy and value, its default learning rate 1e-4) there is less to
compute and hold: the reference is the policy with its adapter off, and no weight gradient or optimizer state
exists for the frozen base weights; `speedup_lora` and `memory_ratio_lora` compare that run with TRL's. With
`--shared-value-head` (both with full fine-tuning and with LoRA) the value is a scalar head on the policy's own
trunk, as in Ziegler et al. 2019 and TRL before PPOv2: one forward and backward pass per minibatch instead of two,
and no value model to hold; `speedup_shared`, `speedup_lora_shared` and their memory ratios. These are less work
per sample, not the same work: the value no longer starts from the reward model, and its loss trains the trunk.

Also measured: this machine's fp32 matmul peak, and the FLOP/s of rlaif's training phase (the PPO epochs) against
it, counting 2 FLOPs per multiply-add of every linear layer for each token (x3 for forward and backward) plus the
attention products. Prints a table; writes bench/results/ppo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPTS = [ROOT / "examples" / "prompts" / "helpful.jsonl", ROOT / "examples" / "prompts" / "red-team.jsonl"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """fp32 FLOP/s of the best of `repeats` n x n matmuls with torch's default threads."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


def reward_model_dir(policy_dir: str, cache: Path) -> Path:
    """The policy's backbone with a seeded scalar head, saved once: the reward model, and the value model's start."""
    target = cache / "ppo-bench-rm"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    tmp = Path(tempfile.mkdtemp(dir=cache))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return target


def training_flops(result: dict, policy_dir: str) -> float:
    """FLOPs of rlaif's PPO epochs over all steps: per token, 2 x (linear weights) per forward (the LM head only
    on response positions), 4 x layers x context x hidden for attention; x3 for forward + backward; policy and
    value model; every epoch."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(policy_dir)
    head_dim = c.hidden_size // c.num_attention_heads
    per_layer = c.hidden_size * (c.num_attention_heads * head_dim * 2 + c.num_key_value_heads * head_dim * 2) + \
        3 * c.hidden_size * c.intermediate_size
    total = 0.0
    for step in result["steps"]:
        tokens, responses, context = step["tokens"], step["response_tokens"], step["mean_context"]
        backbone = 2 * c.num_hidden_layers * (per_layer * tokens + 2 * context * c.hidden_size * tokens)
        head = 2 * c.hidden_size * c.vocab_size * responses
        total += 3 * result["ppo_epochs"] * (2 * backbone + head)  # policy + value, each forward and backward
    return total


def run_ours(args) -> None:
    """Child process: rlaif PPO, its per-step metrics and peak RSS to args.run_ours (JSON)."""
    from rlaif.ppo.config import PPOConfig
    from rlaif.ppo.trainer import run

    scratch = tempfile.TemporaryDirectory()  # its models (hundreds of MB) gone when this process ends
    prompts = Path(scratch.name) / "prompts.jsonl"
    prompts.write_text("".join(p.read_text() for p in PROMPTS))
    rows = []

    def record(step, metrics):
        rows.append(metrics)

    out = Path(scratch.name) / "ppo"
    config = PPOConfig(prompts=str(prompts), out=str(out), policy=args.policy, reward_model=[args.reward_model],
                       normalize_reward=False, steps=args.steps, batch_size=args.batch_size,
                       minibatches=args.minibatches, ppo_epochs=args.ppo_epochs, max_new_tokens=args.response_length,
                       temperature=0.7, learning_rate=None if args.lora else args.learning_rate, kl_coef=0.05,
                       kl_target=None, save_steps=10**9, sample_every=0, seed=args.seed, device="cpu", lora=args.lora,
                       shared_value_head=args.shared_value_head)
    started = time.perf_counter()
    run(config, progress=False, on_step=record)
    seconds = time.perf_counter() - started
    steps = [{k: v for k, v in r.items() if isinstance(v, (int, float))} for r in rows]
    Path(args.run_ours).write_text(json.dumps({
        "seconds_total": seconds,  # includes loading models and the final save
        "seconds": sum(r["seconds"] for r in rows),
        "samples": args.steps * args.batch_size,
        "samples_per_second": args.steps * args.batch_size / sum(r["seconds"] for r in rows),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "ppo_epochs": args.ppo_epochs,
        "steps": steps,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--response-length", type=int, default=48)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--minibatches", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=3e-6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policy", help=argparse.SUPPRESS)
    parser.add_argument("--reward-model", help=argparse.SUPPRESS)
    parser.add_argument("--run-ours", help=argparse.SUPPRESS)
    parser.add_argument("--lora", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shared-value-head", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.update(OFFLINE)
    if args.run_ours:
        return run_ours(args)

    from bench.trl019.setup_venv import ensure_venv
    from rlaif.models import cache_dir, resolve

    policy = resolve("smollm2-135m-instruct")
    reward = reward_model_dir(policy, cache_dir())
    trl_python = ensure_venv(ROOT)
    scratch = tempfile.TemporaryDirectory()
    work = Path(scratch.name)
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(p.read_text() for p in PROMPTS))
    common = ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--response-length",
              str(args.response_length), "--ppo-epochs", str(args.ppo_epochs), "--minibatches", str(args.minibatches),
              "--seed", str(args.seed), "--learning-rate", str(args.learning_rate)]
    env = {**os.environ, **OFFLINE}
    runs = {}
    modes = {"rlaif": [], "rlaif_lora": ["--lora"], "rlaif_shared": ["--shared-value-head"],
             "rlaif_lora_shared": ["--lora", "--shared-value-head"]}
    for mode, flags in modes.items():
        print(f"rlaif PPO {' '.join(flags) or '(full fine-tuning)'}: {args.steps} steps of {args.batch_size} ...",
              flush=True)
        subprocess.run([sys.executable, __file__, "--policy", policy, "--reward-model", str(reward), "--run-ours",
                        str(work / f"{mode}.json"), *common, *flags], check=True, env=env)
        runs[mode] = json.loads((work / f"{mode}.json").read_text())
    ours = runs["rlaif"]
    print(f"TRL 0.19.1 PPOTrainer: {args.steps} steps of {args.batch_size} ...", flush=True)
    subprocess.run([str(trl_python), str(ROOT / "bench" / "trl019" / "run_trl_ppo.py"), "--policy", policy,
                    "--reward-model", str(reward), "--prompts", str(prompts), "--temperature", "0.7", "--kl-coef",
                    "0.05", "--out", str(work / "trl.json"), *common], check=True, env=env)
    peer = json.loads((work / "trl.json").read_text())

    import torch

    peak = matmul_peak()
    train_seconds = sum(s["time/train"] for s in ours["steps"])
    flops = training_flops(ours, policy)
    last_peer = peer["steps"][-1]
    keys = ("seconds", "samples", "samples_per_second", "peak_rss_bytes")
    result = {
        "config": {k: v for k, v in vars(args).items() if k not in ("policy", "reward_model", "run_ours")},
        "model": "smollm2-135m-instruct (fp32)",
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "processor": platform.processor() or platform.machine()},
        **{mode: {k: run[k] for k in keys} for mode, run in runs.items()},
        "trl_0_19_1": {k: peer[k] for k in keys},
    }
    for mode, run in runs.items():  # speedup, memory_ratio (the same work); speedup_lora, memory_ratio_lora, ...
        suffix = mode.removeprefix("rlaif")
        result[f"speedup{suffix}"] = run["samples_per_second"] / peer["samples_per_second"]
        result[f"memory_ratio{suffix}"] = run["peak_rss_bytes"] / peer["peak_rss_bytes"]
    result["after_last_step"] = {
        **{mode: {"score": run["steps"][-1]["score"], "kl": run["steps"][-1]["kl"]} for mode, run in runs.items()},
        "trl_0_19_1": {"score": last_peer.get("objective/scores"), "kl": last_peer.get("objective/kl")},
    }
    result.update({
        "rlaif_phases_seconds": {phase: sum(s[f"time/{phase}"] for s in ours["steps"])
                                 for phase in ("generate", "score", "train")},
        "matmul_peak_flops": peak,
        "rlaif_training_flops": flops,
        "rlaif_training_flops_per_second": flops / train_seconds,
        "rlaif_training_fraction_of_peak": flops / train_seconds / peak,
        **{f"{mode}_phases_seconds": {phase: sum(s[f"time/{phase}"] for s in run["steps"])
                                      for phase in ("generate", "score", "train")}
           for mode, run in runs.items() if mode != "rlaif"},
        **{f"{mode}_steps": run["steps"] for mode, run in runs.items()},
        "trl_steps": peer["steps"],
    })
    gb = 1024**3
    print(f"\n{args.steps} PPO steps x {args.batch_size} samples, {args.response_length}-token responses, "
          f"{args.ppo_epochs} epochs, {args.minibatches} minibatch(es), SmolLM2-135M fp32, {os.cpu_count()} CPUs")
    print(f"{'':36} {'samples/s':>10} {'seconds':>9} {'peak RSS':>9} {'vs TRL':>7} {'memory':>7} {'reward':>8} "
          f"{'KL':>7}")
    names = {"rlaif": "rlaif (same work)", "rlaif_lora": "rlaif --lora",
             "rlaif_shared": "rlaif --shared-value-head", "rlaif_lora_shared": "rlaif --lora --shared-value-head",
             "trl_0_19_1": "TRL 0.19.1 PPOTrainer"}
    for key, name in names.items():
        r, last = result[key], result["after_last_step"][key]
        score = "-" if last["score"] is None else f"{last['score']:+.3f}"
        kl = "-" if last["kl"] is None else f"{last['kl']:.3f}"
        suffix = key.removeprefix("rlaif")
        ratios = f"{result[f'speedup{suffix}']:6.2f}x {result[f'memory_ratio{suffix}']:7.2f}" if key in runs else \
            f"{'':7} {'':7}"
        print(f"{name:36} {r['samples_per_second']:10.3f} {r['seconds']:9.1f} {r['peak_rss_bytes'] / gb:8.2f}G "
              f"{ratios} {score:>8} {kl:>7}")
    phases = result["rlaif_phases_seconds"]
    print(f"same work (full fine-tuning): speedup {result['speedup']:.2f}x samples/s, memory ratio "
          f"{result['memory_ratio']:.2f} (rlaif / TRL)")
    print(f"rlaif time: generate {phases['generate']:.1f} s, reference/value/reward {phases['score']:.1f} s, "
          f"PPO epochs {phases['train']:.1f} s at {result['rlaif_training_flops_per_second'] / 1e9:.1f} GFLOP/s, "
          f"{result['rlaif_training_fraction_of_peak']:.0%} of the {peak / 1e9:.0f} GFLOP/s matmul peak")
    out = ROOT / "bench" / "results" / "ppo.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
