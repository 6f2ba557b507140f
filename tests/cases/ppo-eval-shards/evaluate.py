"""PPO's held-out evaluation of the first 1, 3 and 5 prompts, with eval batches of 2, written to OUT/eval-N.jsonl.

    python evaluate.py MODEL PROMPTS OUT                            # one process
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        evaluate.py MODEL PROMPTS OUT                               # two: shards of 1 and 0, 1 and 1, 3 and 2 prompts

The policy is moved off the reference (seeded noise, the same in every process) so that the KL is not 0. Needs
tests/ on PYTHONPATH (toy_rewards).
"""

import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from rlaif.launch import leave_process_group
from rlaif.loaders import load_prompts
from rlaif.ppo.config import PPOConfig
from rlaif.ppo.trainer import PPOTrainer, _evaluate
from rlaif.records import JsonlWriter


def main(model: str, prompts: str, out: str) -> None:
    accelerator = Accelerator(cpu=True)
    config = PPOConfig(policy=model, reward_fn=["toy_rewards:vowels"], batch_size=2, max_new_tokens=6, device="cpu")
    trainer = PPOTrainer(config, accelerator)
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in accelerator.unwrap_model(trainer.policy).parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=noise))
    rows = load_prompts(prompts)
    for n in (1, 3, 5):
        log = JsonlWriter(Path(out) / f"eval-{n}.jsonl") if accelerator.is_main_process else None
        _evaluate(trainer, rows[:n], log)
        if log is not None:
            log.close()
    accelerator.wait_for_everyone()
    leave_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
