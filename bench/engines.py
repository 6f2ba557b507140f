"""Critique through the local engine vs over HTTP to `transformers serve` (engine: openai), same model, same work.

    python bench/engines.py                           # default: 12 prompts, 2 rounds, 64 new tokens, greedy, CPU
    python bench/engines.py --prompts 2 --max-new-tokens 16 --model /work/exp/tinymodel --out /tmp/engines.json
    python bench/engines.py --no-continuous-batching  # the sequential server only

The work is bench/critique.py's: the same prompts (red-team and helpful mixed), the default constitution, greedy
decoding and no retries, so every engine is asked for the same turns and, decoding greedily, should write the same
text (the table counts the turns identical to the local engine's). It runs three ways on the same model:

  rlaif          `rlaif critique` with engine rlaif: batched by round in this process (batch_size conversations per
                 forward pass), the few-shot block's keys and values computed once, each conversation's kept from
                 turn to turn (rlaif.generate);
  openai         `rlaif critique --engine openai` against a `transformers serve` this script starts on the same
                 model directory: one HTTP request per turn, `concurrency` in flight (rlaif.engines). That server
                 runs one request at a time (transformers 5.24: a single inference thread), re-encoding the few-shot
                 block and the whole conversation for every request, so concurrency only fills its queue;
  openai + CB    the same against `transformers serve --continuous-batching` (paged attention, requests batched as
                 they arrive, so `concurrency` bounds its batch; its cache may share the pages of a common prefix,
                 allow_block_sharing). In transformers 5.24 continuous batching takes temperature, top_p and
                 do_sample from the first request for every request, and no seed (cli/serving/utils.py,
                 CBGenerateManager): it serves this greedy work as sent, but not a critique that samples
                 (temperature 0.7, rlaif's default), whose requests it would all decode under the first's settings.
                 Its cache is sized by --cb-num-blocks and --cb-max-batch-tokens: unsized, on a CPU transformers
                 sizes it from the whole machine's memory (90% of it, less its own), 15 GB resident of 24 here
                 after its first request, which spent 15 s filling it.

Each engine's time is the stage's run alone: not loading the model (rlaif), nor starting the server and answering
one warm-up request (openai; continuous batching sets itself up on its first request), which the table shows apart.
Tokens are the stage's count of generated tokens (manifest counts.generated_tokens: the server's completion_tokens
for openai, EOS included as rlaif counts it); requests are the replies asked for (rlaif: the turns it generated;
openai: the engine's own count, manifest extra.engine.requests). Every server is stopped when the script ends, on an
error, Ctrl-C or SIGTERM too (and, on Linux, when this script is killed). Writes bench/results/engines.json (or
--out).

The default size (bench/critique.py's 16 prompts cut to 12, so that three runs fit) took 8 minutes on two CPU cores
(the stage's own time: rlaif 48 s, the sequential server 229 s, continuous batching 143 s; the rest is loading and
starting). `--device cuda` runs the same comparison on a GPU (the server in rlaif's dtype there, bfloat16); the
comparison with vLLM belongs to bench/gpu_check.sh.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlaif.critique import CritiqueConfig, _model_complete, run
from rlaif.launch import tied_to_this_process
from rlaif.loaders import load_prompts
from rlaif.models import device_dtype, resolve
from rlaif.records import read_jsonl, write_jsonl

SERVER_START_TIMEOUT = 300.0  # seconds for `transformers serve` to load the model and answer /health

# --------------------------------------------------------------------------------------------------------------------
# The server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def transformers_serve(model_dir: str, device: str, log_path: Path, cb_settings: dict | None = None):
    """`transformers serve MODEL_DIR` in a subprocess on a free port, with --continuous-batching and its --cb-* flags
    when `cb_settings` ({"num_blocks", "max_batch_tokens"}) are given, stopped when the block ends however it ends:
    yields (base_url, the command, seconds until it answered /health and one request, as warm-up)."""
    executable = Path(sys.executable).parent / "transformers"
    if not executable.is_file():
        sys.exit(f"bench/engines.py needs `transformers serve` ({executable} is not there): "
                 "pip install 'transformers[serving]'")
    port = _free_port()
    command = [str(executable), "serve", model_dir, "--host", "127.0.0.1", "--port", str(port), "--device", device,
               "--dtype", device_dtype(device), "--log-level", "warning"]
    if cb_settings is not None:
        command += ["--continuous-batching", "--cb-num-blocks", str(cb_settings["num_blocks"]),
                    "--cb-max-batch-tokens", str(cb_settings["max_batch_tokens"])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1", "TOKENIZERS_PARALLELISM": "false"}
    launch = tied_to_this_process(command)  # the server is sent SIGTERM when this script dies, even by SIGKILL
    started = time.perf_counter()
    with open(log_path, "wb") as log:  # the same process group as this script: a group kill stops both
        server = subprocess.Popen(launch, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.perf_counter() - started > SERVER_START_TIMEOUT:
                state = f"exit {server.returncode}" if server.returncode is not None else \
                    f"no answer at /health in {SERVER_START_TIMEOUT:g} s"
                raise RuntimeError(f"transformers serve did not start ({state}); its log ({log_path}) ends:\n"
                                   f"{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.25)
        # One greedy request before the clock starts: continuous batching sets itself up on the first request (and
        # takes its sampling settings from it, greedy as the bench's), which a server pays once in its life.
        warm_up = {"model": model_dir, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 1,
                   "temperature": 0}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(warm_up).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=SERVER_START_TIMEOUT) as answer:
            answer.read()
        yield f"http://127.0.0.1:{port}/v1", command, time.perf_counter() - started
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


# --------------------------------------------------------------------------------------------------------------------
# One engine's run of the critique stage


def critique(args, prompt_file: Path, out: Path, complete=None, **settings) -> dict:
    """`rlaif.critique.run` on the bench's work, timed: seconds, tokens, tokens/s, requests, and each prompt's texts
    (the answer, then each round's critique and revision) for comparing engines."""
    config = CritiqueConfig(prompts=str(prompt_file), out=str(out), rounds=args.rounds,
                            max_new_tokens=args.max_new_tokens, temperature=0, retry_flagged=False,
                            chunk_size=args.prompts, **settings)
    started = time.perf_counter()
    counts = run(config, complete=complete)
    seconds = time.perf_counter() - started
    stage = out / "critique"
    engine = json.loads((stage / "manifest.json").read_text()).get("extra", {}).get("engine", {})
    turns = sum(1 for _ in read_jsonl(stage / "turns.jsonl"))
    texts = {row["id"]: [row["initial"]] + [t for r in row["rounds"] for t in (r["critique"], r["revision"])]
             for row in read_jsonl(stage / "revisions.jsonl")}
    tokens = counts["generated_tokens"]
    result = {"seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds,
              "requests": engine.get("requests", turns), "turns": turns, "left_out": counts.get("left_out", 0)}
    if engine:
        result["engine_stats"] = engine
    return {**result, "texts": texts}


def identical(texts: dict, reference: dict) -> int:
    return sum(a == b for pid in texts for a, b in zip(texts[pid], reference.get(pid, [])))


def served_run(args, prompt_file: Path, folder: Path, model_dir: str, reference: dict,
               continuous_batching: bool) -> dict:
    """The critique stage with engine openai against a `transformers serve` started for it (and stopped after)."""
    name = "openai-cb" if continuous_batching else "openai"
    log_path = folder / f"{name}-serve.log"
    settings = {"concurrency": args.concurrency, "continuous_batching": continuous_batching}
    cb_settings = {"num_blocks": args.cb_num_blocks, "max_batch_tokens": args.cb_max_batch_tokens}
    if continuous_batching:
        settings.update({f"cb_{key}": value for key, value in cb_settings.items()})
    server = transformers_serve(model_dir, args.device, log_path, cb_settings if continuous_batching else None)
    with server as (url, command, startup):
        result = critique(args, prompt_file, folder / name, model=model_dir, engine="openai", base_url=[url],
                          concurrency=args.concurrency)
    log = log_path.read_text(errors="replace")
    result.update(startup_seconds=startup, server_command=" ".join(command[1:]), settings=settings,
                  identical_turns=identical(result["texts"], reference))
    if continuous_batching:  # the server falls back to one request at a time for a model that cannot batch so
        result["continuous_batching_used"] = "CB: True" in log and "CB: False" not in log
    return result


# --------------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="engine rlaif: conversations per forward pass")
    parser.add_argument("--concurrency", type=int, default=16, help="engine openai: requests in flight at once")
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="a model spec (rlaif.models.resolve), e.g. a model directory")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the same comparison on a GPU")
    parser.add_argument("--no-continuous-batching", dest="continuous_batching", action="store_false",
                        help="skip the run against `transformers serve --continuous-batching`")
    parser.add_argument("--cb-num-blocks", type=int, default=128,
                        help="continuous batching: KV cache blocks of 256 tokens (128: 32,768 tokens, 1.5 GB for "
                             "SmolLM2-135M in float32); unset, transformers 5.24 takes 90%% of the machine's memory")
    parser.add_argument("--cb-max-batch-tokens", type=int, default=2048,
                        help="continuous batching: tokens per forward pass at most")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "engines.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM unwinds as Ctrl-C does: the server is stopped

    # bench/critique.py's prompts: both kinds mixed, the first --prompts of them
    pool = [row for kind in ("red-team", "helpful") for row in load_prompts(ROOT / f"examples/prompts/{kind}.jsonl")]
    prompts = [pool[i] for i in sorted(range(len(pool)), key=lambda i: (i % 16, i))][: args.prompts]
    args.prompts = len(prompts)
    model_dir = str(Path(resolve(args.model)).resolve())  # what the server loads and names; the local engine too
    if not Path(model_dir).is_dir():
        sys.exit(f"bench/engines.py serves a model directory; {args.model} resolves to {model_dir}, not one")

    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="rlaif-bench-engines-") as tmp:
        folder = Path(tmp)
        prompt_file = folder / "prompts.jsonl"
        write_jsonl(prompt_file, prompts)

        config = CritiqueConfig(model=model_dir, device=args.device, batch_size=args.batch_size)
        started = time.perf_counter()
        complete = _model_complete(config)  # the stage's own binding of the model, loaded before the clock starts
        load_seconds = time.perf_counter() - started
        runs["rlaif"] = critique(args, prompt_file, folder / "rlaif", complete=complete, model=model_dir,
                                 device=args.device, batch_size=args.batch_size)
        runs["rlaif"].update(load_seconds=load_seconds, settings={"batch_size": args.batch_size,
                                                                  "kv_memory_gb": config.kv_memory_gb})
        del complete
        reference = runs["rlaif"]["texts"]

        runs["openai"] = served_run(args, prompt_file, folder, model_dir, reference, continuous_batching=False)
        if args.continuous_batching:
            try:
                runs["openai_cb"] = served_run(args, prompt_file, folder, model_dir, reference,
                                               continuous_batching=True)
            except Exception as e:  # noqa: BLE001 - a server that cannot batch is a finding, not the bench's end
                runs["openai_cb"] = {"failed": f"{type(e).__name__}: {e}"[:2000]}

    for r in runs.values():
        r.pop("texts", None)
    ours = runs["rlaif"]
    ratios = {name: {"tokens_per_second": r["tokens_per_second"] / ours["tokens_per_second"],
                     "seconds": r["seconds"] / ours["seconds"]}
              for name, r in runs.items() if name != "rlaif" and "seconds" in r}
    notes = [
        (f"Work: bench/critique.py's, {args.prompts} prompts, {args.rounds} rounds, {args.max_new_tokens} new tokens, "
         "greedy, no retries; the seconds are the critique stage's run alone (not loading the model, not starting "
         "the server and its warm-up request)."),
        (f"rlaif: the model in this process, batch_size {args.batch_size}, the few-shot block's keys and values "
         "computed once and each conversation's kept between turns."),
        (f"openai: one HTTP request per turn, {args.concurrency} in flight; `transformers serve` (transformers "
         "5.24) without --continuous-batching runs one request at a time and re-encodes the few-shot block and the "
         "whole conversation for each, so the ratio measures that server's sequential generate against rlaif's "
         "batched, cached one, not HTTP's cost."),
    ]
    if "openai_cb" in runs:
        notes.append("openai_cb: `transformers serve --continuous-batching`, requests batched as they arrive (up to "
                     f"{args.concurrency} in flight), cache of {args.cb_num_blocks} blocks of 256 tokens, at most "
                     f"{args.cb_max_batch_tokens} tokens a forward pass. transformers 5.24 takes temperature, top_p "
                     "and do_sample for every request from the first one and honours no per-request seed: valid for "
                     "this greedy work, not for a critique that samples.")
    result = {
        "config": {**vars(args), "out": str(args.out), "model_dir": model_dir},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": _version("transformers"),
                    "processor": platform.processor() or platform.machine()},
        **runs,
        "ratio_over_rlaif": ratios,
        "notes": notes,
    }

    labels = {"rlaif": f"rlaif (batch {args.batch_size})", "openai": "openai: serve",
              "openai_cb": "openai: serve --cb"}
    print(f"{args.prompts} prompts x {1 + 2 * args.rounds} turns, {args.max_new_tokens} new tokens, greedy, "
          f"{Path(model_dir).name}, {args.device}; openai: concurrency {args.concurrency}")
    print(f"{'':20} {'seconds':>8} {'tokens':>7} {'tokens/s':>9} {'requests':>8} {'same text':>9} "
          f"{'tok/s ratio':>11} {'startup s':>9}")
    for name, r in runs.items():
        if "failed" in r:
            print(f"{labels[name]:20} failed: {r['failed'].splitlines()[0]}")
            continue
        same = f"{r['identical_turns']}/{r['turns']}" if "identical_turns" in r else "-"
        ratio = ratios[name]["tokens_per_second"] if name in ratios else 1.0
        startup = r.get("startup_seconds", r.get("load_seconds"))
        print(f"{labels[name]:20} {r['seconds']:8.1f} {r['tokens']:7d} {r['tokens_per_second']:9.1f} "
              f"{r['requests']:8d} {same:>9} {ratio:10.2f}x {startup:9.1f}")
    if runs.get("openai_cb", {}).get("continuous_batching_used") is False:
        print("note: the --continuous-batching server ran the requests one at a time (the model cannot batch so)")
    print("openai/rlaif: " + ", ".join(f"{name} {r['tokens_per_second']:.2f}x the tokens/s, {r['seconds']:.2f}x the "
                                       "seconds" for name, r in ratios.items()))
    print("(startup s: rlaif's model load; the server's start and one warm-up request; neither is in seconds)")
    for note in notes:
        print(f"- {note}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM, after every server was stopped and the temporary folder removed
        print("interrupted", file=sys.stderr)
        sys.exit(130)
