"""PPO with its models sharded across processes (`fsdp: true`), for a policy whose training state does not fit on one
GPU: PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`; Zhao et al. 2023, "PyTorch FSDP: Experiences on Scaling
Fully Sharded Data Parallel", and the per-parameter sharding of torch's FSDP2 docs).

    accelerate launch --num_processes 8 -m rlaif ppo --config ppo.yaml     # ppo.yaml: fsdp: true, ...
    rlaif run recipe.yaml --num-processes 8 --set ppo.fsdp=true

Each decoder layer of the policy, the value model and the frozen reference is one unit, and the model itself the last:
every process keeps 1/N of each parameter, of its gradient and of AdamW's two moments, and a unit's full parameters
exist only while it runs (all-gathered before its forward and backward, freed after; gradients reduce-scattered).
With bf16 mixed precision the units compute in bf16 while the sharded master weights, their gradients' reduction and
the optimizer stay in float32 (`MixedPrecisionPolicy`).

What differs from PPO under DDP, and why:

- **Rollouts gather the policy whole.** Sampling runs as many forward passes as the longest reply of a process's
  batch needs, a number each process finds for itself; a unit that all-gathered on every pass would wait forever for
  a process that stopped. `gathered` all-gathers every unit once, samples with no collective, and frees them: the
  full weights (not the optimizer state or gradients) must fit on each GPU while sampling.
- **Every process runs the same passes.** The scoring passes over a rollout and the minibatch updates are the same
  number on every process already; the eval rollouts are made so (rlaif.ppo.trainer._evaluate).
- **Models load on the CPU** and each unit moves to its GPU as it is sharded, so that no GPU ever holds a whole
  float32 model; each process then needs the host memory of one copy of the policy, reference and value model.
- **Checkpoints are sharded**: each process writes its shard of the policy, the value model and their optimizers
  with torch.distributed.checkpoint (`.distcp` files) beside accelerate's RNG states; the frozen reference is not
  saved (it is reloaded from the starting policy). A run resumes with the number of processes it started with, as
  under DDP. The final policy and value model are gathered one at a time and written as safetensors.
- **Gradients are reduce-scattered after every micro-batch** (FSDP has no DDP-style no_sync here): the same
  gradients as under DDP, at some more communication with micro_batch_size.
- **bf16** (accelerate launch --mixed_precision bf16) computes in bf16 from float32 shards: the numbers differ from
  DDP's bf16 autocast by rounding. `rlaif run --num-processes` launches without mixed precision (float32).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rlaif.records import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used: a recipe's checks import this module
    import torch
    from torch import nn

SAVED = ("policy", "value")  # the trained models, in checkpoints (the frozen reference is rebuilt from the policy)


def check(config, processes: int | None = None) -> None:
    """ConfigError for what PPO under FSDP does not do: LoRA (an adapter's optimizer state is small already: train it
    under DDP), vLLM rollouts (in one process), and one process (nothing to shard; not checked when `processes` is
    None, before the run knows it)."""
    if not config.fsdp:
        return
    if config.lora:
        raise ConfigError("fsdp, lora: a LoRA adapter's weights and optimizer state are small and already fit; "
                          "train LoRA under DDP (fsdp: false), or the full policy under FSDP (lora: false)")
    if config.engine == "vllm":
        raise ConfigError("fsdp, engine: vLLM samples PPO's rollouts in one process; use engine rlaif under FSDP")
    if processes is not None and processes < 2:
        raise ConfigError("fsdp: shards the models across processes, and this run has one; start it under "
                          "accelerate launch --num_processes N (or rlaif run --num-processes N), or leave fsdp off")


def shard(model: nn.Module, accelerator) -> nn.Module:
    """Shard `model` in place across all processes, each module of a class the model names in `_no_split_modules`
    (its decoder layers; a value model's classifier's too) one unit, innermost first, then the model, resharded
    after each forward too (the frozen reference has no backward to free it). Its parameters become DTensors on
    the process's device (FSDP moves each unit there as it shards it: load the model on the CPU): build the
    optimizers after this."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    precision = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if accelerator.mixed_precision == "bf16" else MixedPrecisionPolicy()
    layers = {name for m in model.modules() for name in getattr(m, "_no_split_modules", None) or ()}
    for module in reversed(list(model.modules())):  # a unit inside another is sharded before it
        if module is not model and type(module).__name__ in layers:
            fully_shard(module, mesh=mesh, mp_policy=precision)
    return fully_shard(model, mesh=mesh, mp_policy=precision, reshard_after_forward=True)


@contextmanager
def gathered(model: nn.Module):
    """Inside the block, every unit of a sharded `model` holds its full parameters and its forward passes
    communicate nothing, so that each process may run as many as it needs (sampling). Freed after."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True)


def _state(trainer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {name: get_model_state_dict(getattr(trainer, name)) for name in SAVED}
    state["opt_policy"] = get_optimizer_state_dict(trainer.policy, trainer.opt_policy)
    state["opt_value"] = get_optimizer_state_dict(trainer.value, trainer.opt_value)
    return state


def save(trainer, directory: Path) -> None:
    """Every process writes its shards of the models and optimizers to DIRECTORY/fsdp (torch.distributed.checkpoint);
    the schedulers' state goes with the trainer's (rlaif.ppo.trainer.PPOTrainer.save)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_state(trainer), checkpoint_id=str(directory / "fsdp"))


def load(trainer, directory: Path) -> None:
    """The shards `save` wrote, read into the trainer's sharded models and optimizers."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = _state(trainer)
    dcp.load(state, checkpoint_id=str(directory / "fsdp"))
    for name in SAVED:
        set_model_state_dict(getattr(trainer, name), state[name])
    set_optimizer_state_dict(trainer.policy, trainer.opt_policy, state["opt_policy"])
    set_optimizer_state_dict(trainer.value, trainer.opt_value, state["opt_value"])


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full parameters and buffers on the CPU, on the main process (empty on the others); every process
    must call it (it all-gathers). A tied parameter (input and output embeddings) is kept once, under its first
    name, as save_pretrained stores it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    first: dict[int, str] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(parameter), name) != name:
            state.pop(name, None)
    return state
