"""How `rlaif run` runs a step's stage: in its own process (`run_stage`), in a child process of its own for a stage on
vLLM (`in_child`), or under `accelerate launch` with several processes for a training stage (`launched`,
`num_processes`). rlaif.pipeline decides which. Also the care of the processes rlaif starts or runs in: stopping
a launcher with its workers (`stop_launcher`), children that die with their parent (`tied_to_this_process`,
`die_with_parent`), and leaving a process group (`leave_process_group`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rlaif.records import ConfigError

if TYPE_CHECKING:
    from rlaif.pipeline import Step

STAGE_RUNS = {"critique": ("rlaif.critique", "run"), "sft": ("rlaif.sft", "run"), "rankings": ("rlaif.rankings", "run"),
              "human": ("rlaif.human_route", "export"), "answers": ("rlaif.rankings", "run"),
              "sample": ("rlaif.sample", "run"), "label": ("rlaif.label", "run"), "reward": ("rlaif.reward", "run"),
              "ppo": ("rlaif.ppo.trainer", "run"), "dpo": ("rlaif.dpo", "run"), "grpo": ("rlaif.grpo", "run"),
              "eval": ("rlaif.evaluate", "evaluate_policies"), "labeler-check": ("rlaif.report_card", "evaluate_labeler")}


LAUNCHED = ("sft", "reward", "ppo", "dpo", "grpo")  # the stages `num_processes` spreads over processes


def launched(step: Step) -> dict:
    """Run a training stage as `accelerate launch --num_processes N -m rlaif STAGE --config FILE` (FILE: the step's
    settings), as examples/gpu/README.md shows it by hand, its output shown as it comes; returns the counts of its
    manifest.json, with `summary`. The stage directory's lock passes to the launched processes for the run.

    A process that fails on a user error or a PPO guard writes why to a file (rlaif.cli.fail) and exits non-zero,
    which makes the launcher stop the others; the lowest rank's reason is raised here as it was there (a user error
    as ConfigError, a stop as PPOStopped), and the launcher's own traceback about the failed process, which would
    only repeat it, is not shown. Raises ConfigError when accelerate is not there or the launch fails otherwise (its
    output, traceback included, above)."""
    import os
    import signal
    import socket
    import subprocess
    import tempfile
    import threading

    import yaml

    from rlaif.cli import LAUNCH_RESULT
    from rlaif.records import Manifest, lock_stage, release_stage

    accelerate = accelerate_path()
    if not accelerate.is_file():
        raise ConfigError(f"num_processes: {step.processes} processes need accelerate's launcher, not found at "
                          f"{accelerate} (pip install accelerate)", ["num_processes"])
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(step.config).items()}
    with socket.socket() as probe:  # a free port for the processes to meet on, so that two runs can share a machine
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # the precision a stage picks for itself, as in the run's own process (TRL's from the device; PPO's float32)
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", str(step.processes), "--num_machines",
               "1", "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no", "-m",
               "rlaif", step.stage, "--config"]
    release_stage(step.directory)
    with tempfile.TemporaryDirectory(prefix="rlaif-launch-") as scratch:
        config, results = Path(scratch) / f"{step.stage}.yaml", Path(scratch) / "results"
        config.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
        results.mkdir()
        # Tied to this process (a run killed outright, SIGKILL, takes the launcher with it, which stops its workers),
        # and in a session of its own: a terminal's Ctrl-C comes to this process alone, which stops the launcher
        # once (stop_launcher), not twice in a row, which would cut its workers' shutdown short.
        launcher = subprocess.Popen(tied_to_this_process([*command, str(config)]), stderr=subprocess.PIPE,
                                    env={**os.environ, LAUNCH_RESULT: str(results)}, start_new_session=True)
        main_thread = threading.current_thread() is threading.main_thread()
        held: list[bytes] = []  # the output from the first traceback or launcher warning on, kept until the end
        forward = threading.Thread(target=_forward_stderr, args=(launcher.stderr, held), daemon=True)
        forward.start()
        # told to stop (SIGTERM: a scheduler, `kill`) while the stage runs: as Ctrl-C, so that the workers stop too
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if main_thread else None
        try:
            code = launcher.wait()
        except KeyboardInterrupt:
            stop_launcher(launcher)
            raise
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
            forward.join(timeout=10)
        failures = sorted(results.glob("rank-*.json"), key=lambda f: int(f.stem.partition("-")[2]))
        failure = json.loads(failures[0].read_text(encoding="utf-8")) if failures else None
    if not failure and held:  # the output of a failure that is not a user's: shown whole
        _write_stderr(b"".join(held))
    lock_stage(step.directory)
    if failure and failure["exit"] == 2:
        from rlaif.ppo.trainer import PPOStopped

        raise PPOStopped(failure["message"])
    if failure:
        raise ConfigError(failure["message"], [])
    if code:
        raise ConfigError(f"num_processes: {step.stage} under accelerate launch with {step.processes} processes "
                          f"failed (exit {code}); its output is above", ["num_processes"])
    counts = Manifest.load(step.directory).counts
    used = f"; read {counts['read']}, used {counts['used']}" if "read" in counts and "used" in counts else ""
    return {**counts, "summary": f"{step.processes} processes{used}"}


def accelerate_path() -> Path:
    """accelerate's launcher in this Python's environment (it may not be on PATH)."""
    import sys

    return Path(sys.executable).with_name("accelerate")


def stop_launcher(launcher, patience: float = 60) -> None:
    """Stop `accelerate launch` (a subprocess.Popen) and its workers: SIGINT (what Ctrl-C sends), then SIGTERM,
    each given `patience` seconds, on which torch's launcher stops its workers and waits for them; SIGKILL last.
    Never SIGKILL first: the workers run in sessions of their own (torch.distributed.elastic), and a launcher killed
    outright leaves them running, waiting in a collective and holding the stage's lock."""
    import signal
    import subprocess

    for sent in (signal.SIGINT, signal.SIGTERM):
        if launcher.poll() is not None:
            return
        launcher.send_signal(sent)
        try:
            launcher.wait(timeout=patience)
            return
        except subprocess.TimeoutExpired:
            pass
    launcher.kill()
    launcher.wait()


def tied_to_this_process(command: list[str]) -> list[str]:
    """`command`, started so that it gets SIGTERM when this process dies, even by SIGKILL (`die_with_parent`, which
    exec keeps): a server or launcher nobody would stop otherwise. A fresh interpreter sets it and execs the command
    (subprocess's preexec_fn is unsafe in a process with threads). Start it from the main thread, or from a thread
    that outlives it: the signal comes when the thread that started it ends. Elsewhere than Linux, `command` as it
    is."""
    import os
    import sys

    if sys.platform != "linux":
        return command
    start = ("import os, sys; from rlaif.launch import die_with_parent; die_with_parent(int(sys.argv[1])); "
             "os.execvp(sys.argv[2], sys.argv[2:])")
    return [sys.executable, "-c", start, str(os.getpid()), *command]


def die_with_parent(parent: int) -> None:
    """In a child process (a ProcessPoolExecutor's initializer, or before an exec): get SIGTERM when the parent, pid
    `parent`, dies, and exit now if it already has. Linux's PR_SET_PDEATHSIG, which fires when the parent's thread
    that started this process ends (the main thread: when the parent does); a no-op elsewhere."""
    import ctypes
    import os
    import signal
    import sys

    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)


def leave_process_group() -> None:
    """Destroy the torch.distributed process group, if this process joined one, once its work is done. A process
    that exits without it can abort in the interpreter's shutdown (gloo's worker threads still hold tensors:
    "terminate called without an active exception", SIGABRT), failing a launch whose work had all succeeded
    (pytorch/pytorch#179291; PyTorch's "Shutdown" docs ask for it at the end of every trainer process). Only on
    success: a failing process leaves at once (rlaif.cli.main), without a collective its peers might not join. A
    script of your own under accelerate launch calls it last."""
    if in_process_group():
        import torch.distributed as dist

        dist.destroy_process_group()


def in_process_group() -> bool:
    """Whether this process is in a torch.distributed process group (False without importing torch when nothing
    has)."""
    import sys

    if "torch" not in sys.modules:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


# What starts the output of a failing launch: a process's traceback, or the launcher's report of it
_FAILING = (b"Traceback (most recent call last)", b"torch.distributed.elastic", b"torch/distributed/elastic")


def _forward_stderr(stream, held: list[bytes]) -> None:
    """Copy a launch's error output to ours as it comes (progress bars included), until something in it says a
    process failed: from there it is kept in `held`, for `launched` to show or, when a process said why, drop."""
    import os

    while chunk := os.read(stream.fileno(), 65536):
        if not held and not any(mark in chunk for mark in _FAILING):
            _write_stderr(chunk)
        else:
            held.append(chunk)


def _write_stderr(data: bytes) -> None:
    import sys

    if hasattr(sys.stderr, "buffer"):
        sys.stderr.buffer.write(data)
    else:  # a text stream standing in for stderr (a test runner's)
        sys.stderr.write(data.decode("utf-8", "replace"))
    sys.stderr.flush()


def run_stage(stage: str, config, progress: bool) -> dict:
    from importlib import import_module

    module, function = STAGE_RUNS[stage]
    run = getattr(import_module(module), function)
    return run(config) if stage in ("rankings", "answers") else run(config, progress=progress)


def in_child(step: Step, progress: bool) -> dict:
    """Run a stage in a fresh child process (spawned, so that it starts with no CUDA state) and return its result;
    its errors are raised here. vLLM takes its share of the GPU's memory when it starts (by default 0.92 of it for
    generation and scoring, vllm_gpu_memory_utilization for PPO) and gives it back only when its process ends, so
    a stage on vLLM must neither find the memory of the stages before it held by this process nor keep its own for
    the stages after. The stage directory's lock passes to the child for the stage's run (the run's own lock stays
    here)."""
    from rlaif.engines import spawned
    from rlaif.records import lock_stage, release_stage

    release_stage(step.directory)
    try:
        return spawned(run_stage, step.stage, step.config, progress)
    finally:
        lock_stage(step.directory)
