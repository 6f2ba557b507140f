"""engine: vllm for the scoring stages (rlaif.engines.VLLMModel), against a STAND-IN for vLLM, not vLLM: a module with
vLLM's `LLM` and `SamplingParams` names that computes what vLLM's prompt_logprobs and sampling return, with the
tiny Hugging Face model in this process. vLLM needs a GPU; this checks rlaif's glue (which tokens are sent, which
log-probabilities are read back, where rationales come from) by asking for labels and scores both ways from the same
weights: they must match the local engine's. bench/gpu_check.sh runs the real vLLM."""

import math
import os
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from trl import GRPOTrainer  # imported before a test puts the stand-in in sys.modules: TRL looks for vLLM
from vllm_stand_in import Logprob, stand_in_vllm

from rlaif.records import read_jsonl, write_jsonl


@pytest.fixture
def vllm_calls(monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "vllm", stand_in_vllm(calls))
    return calls


PAIRS = [
    {"id": "a", "prompt": "How do I store bleach?", "chosen": "Sealed, away from acids.", "rejected": "Mix it with vinegar."},
    {"id": "b", "prompt": "Is the sun a star?", "chosen": "Yes, a G-type star.", "rejected": "No, a planet."},
]


@pytest.mark.parametrize("mode, extra", [("compare", {"principles_per_comparison": 2, "both_orders": True,
                                                       "chain_of_thought": False}),
                                         ("compare", {"principles_per_comparison": 1, "chain_of_thought": True,
                                                      "max_new_tokens": 8}),
                                         ("contrast", {"principles_per_comparison": 1})])
def test_labels_on_vllm_are_the_local_engines(vllm_calls, roomy_model_dir, tmp_path, mode, extra):
    from rlaif.label import LabelConfig, run

    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, PAIRS if mode == "contrast" else PAIRS[:1])
    common = {"candidates": str(pairs), "labeler": str(roomy_model_dir), "mode": mode, **extra}
    run(LabelConfig(**common, out=str(tmp_path / "local"), device="cpu"))
    run(LabelConfig(**common, out=str(tmp_path / "vllm"), engine="vllm"))
    local = {r["id"]: r for r in read_jsonl(tmp_path / "local" / "label" / "preferences.jsonl")}
    served = {r["id"]: r for r in read_jsonl(tmp_path / "vllm" / "label" / "preferences.jsonl")}
    assert sorted(served) == sorted(local) == (["a", "b"] if mode == "contrast" else ["a"])
    for key, row in local.items():
        assert served[key]["chosen"] == row["chosen"]
        assert served[key]["p_chosen"] == pytest.approx(row["p_chosen"], abs=1e-4)
        assert served[key].get("rationales") == row.get("rationales")
    assert vllm_calls[0][2] is True  # prefix caching on
    kinds = {call[0] for call in vllm_calls[1:]}
    assert kinds == ({"generate", "sample"} if extra.get("chain_of_thought") else {"generate"})
    assert "engine: vllm" in (tmp_path / "vllm" / "label" / "config.yaml").read_text()


def test_scores_on_vllm_are_the_local_engines(vllm_calls, roomy_model_dir, tmp_path):
    from rlaif.score import ScoreConfig, run

    candidates = tmp_path / "candidates.jsonl"
    write_jsonl(candidates, [{"id": p["id"], "prompt": [{"role": "user", "content": p["prompt"]}],
                              "responses": [p["chosen"], ""]} for p in PAIRS])  # mode score labels this way too
    common = {"candidates": str(candidates), "labeler": str(roomy_model_dir)}
    run(ScoreConfig(**common, out=str(tmp_path / "local"), device="cpu"))
    counts = run(ScoreConfig(**common, out=str(tmp_path / "vllm"), engine="vllm"))
    local = list(read_jsonl(tmp_path / "local" / "score" / "scores.jsonl"))
    served = list(read_jsonl(tmp_path / "vllm" / "score" / "scores.jsonl"))
    for a, b in zip(local, served, strict=True):
        assert b["scores"][1] is None and a["scores"][1] is None
        assert b["scores"][0] == pytest.approx(a["scores"][0], abs=1e-4)
    assert counts["summary"] == "read 4 responses, used 2, left out 2 (empty_reply 2)"
    assert "engine: vllm" in (tmp_path / "vllm" / "score" / "config.yaml").read_text()


def test_vllm_settings_are_checked_when_the_config_is_built(monkeypatch, tmp_path):
    from rlaif.label import LabelConfig
    from rlaif.records import ConfigError, DataError
    from rlaif.score import ScoreConfig

    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed
    for config in (LabelConfig, ScoreConfig):
        with pytest.raises(DataError, match="vllm is not installed here"):
            config(candidates="c.jsonl", engine="vllm")
    monkeypatch.setitem(sys.modules, "vllm", stand_in_vllm([]))
    with pytest.raises(ConfigError, match="device: not used with engine: vllm"):
        LabelConfig(candidates="c.jsonl", engine="vllm", device="cuda:1")
    with pytest.raises(DataError, match=r"engine: expected rlaif or vllm: not openai, as the score's probability is "
                                        r"read from the ten scores' tokens"):
        ScoreConfig(candidates="c.jsonl", engine="openai")
    from rlaif.evaluate import EvalConfig

    with pytest.raises(DataError, match="not openai, as the KL to the base model needs"):
        EvalConfig(run="r", engine="openai")
    with pytest.raises(DataError, match="expected rlaif or vllm, not 'tgi'"):
        EvalConfig(run="r", engine="tgi")


# --------------------------------------------------------------------------------------------------------------------
# PPO rollouts on vLLM


def test_ppo_rollouts_on_vllm_get_the_policys_weights_after_every_step(vllm_calls, tiny_model_dir, tmp_path,
                                                                        monkeypatch):
    """Each step's rollout is sampled by the engine, which is given the policy's weights after every step (and
    after a resume); PPO's old log-probabilities are recomputed by a full pass, and their gap to the engine's is
    logged: here the same float32 weights, so it is all but zero. The engine ends holding the trained policy."""
    from safetensors.torch import load_file

    from rlaif.ppo.config import PPOConfig
    from rlaif.ppo.trainer import run

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("How do I bake bread?\nWhat is science?\nTell me about travel.\nMix flour and water.\n")
    config = PPOConfig(prompts=str(prompts), out=str(tmp_path / "ppo"), policy=str(tiny_model_dir),
                       reward_fn=["toy_rewards:fl"], steps=2, batch_size=4, max_new_tokens=8, learning_rate=1e-3,
                       lr_schedule="constant", save_steps=1, engine="vllm", vllm_gpu_memory_utilization=0.4)
    run(replace(config, steps=1), progress=False)
    init = vllm_calls[0]
    assert init[3] == {"gpu_memory_utilization": 0.4, "logprobs_mode": "processed_logprobs"}
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    push = ["load_weights", "reset_prefix_cache"]
    assert [call[0] for call in vllm_calls[1:]] == ["sample", *push]  # step 1's rollout, then a push
    del vllm_calls[:]
    run(config, progress=False)  # one step more: resumed from step 1's checkpoint, which vLLM is then given
    assert [call[0] for call in vllm_calls] == ["init", *push, "sample", *push]
    assert all(p.logprobs == 0 and p.temperature == config.temperature and p.seed is not None
               for call in vllm_calls if call[0] == "sample" for p in call[2])
    rows = list(read_jsonl(tmp_path / "ppo" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2] and all(0 <= r["rollout/logprob_gap"] < 1e-4 for r in rows)
    # the sampler's and the trainer's probabilities agree: every truncated importance weight is 1 (cap 2 by default)
    assert all(r["rollout/sampler_weight"] == pytest.approx(1.0, abs=1e-4) for r in rows)
    trained = load_file(str(tmp_path / "ppo" / "model.safetensors"))  # the engine's weights are the saved policy's
    held = sys.modules["vllm"].instances[-1].model.state_dict()
    for name, tensor in trained.items():
        assert torch.allclose(held[name], tensor), name


def test_ppo_weighs_each_token_by_the_truncated_importance_weight(vllm_calls, tiny_model_dir, tmp_path,
                                                                  monkeypatch):
    """A sampler whose log-probabilities are 0.1 below the trainer's: every token's weight is e^0.1 (under the cap of
    2), and step 1's policy loss is e^0.1 times the loss without the correction (cap null), on the same samples."""
    from rlaif.ppo.config import PPOConfig
    from rlaif.ppo.trainer import run

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    reported = Logprob.__init__
    monkeypatch.setattr(Logprob, "__init__", lambda self, logprob: reported(self, logprob - 0.1))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("How do I bake bread?\nWhat is science?\nTell me about travel.\nMix flour and water.\n")
    config = PPOConfig(prompts=str(prompts), out=str(tmp_path / "on"), policy=str(tiny_model_dir),
                       reward_fn=["toy_rewards:fl"], steps=1, batch_size=4, max_new_tokens=8, learning_rate=1e-3,
                       ppo_epochs=1, whiten_advantages=False, engine="vllm")  # whitened, the loss starts at 0
    run(config, progress=False)
    run(replace(config, out=str(tmp_path / "off"), vllm_importance_sampling_cap=None), progress=False)
    on, off = (next(read_jsonl(tmp_path / name / "metrics.jsonl")) for name in ("on", "off"))
    assert on["rollout/sampler_weight"] == pytest.approx(math.exp(0.1), rel=1e-4)
    assert "rollout/sampler_weight" not in off
    assert on["policy_loss"] == pytest.approx(math.exp(0.1) * off["policy_loss"], rel=1e-4)
    assert abs(off["policy_loss"]) > 1e-3


def test_grpo_on_vllm_is_trls_colocate_mode(vllm_calls, tiny_model_dir, tmp_path, monkeypatch):
    """engine: vllm hands GRPO's sampling to TRL's own vLLM support (use_vllm, colocate), which needs a GPU: what
    rlaif passes to TRL is checked, the trainer is not run."""
    import rlaif.grpo
    from rlaif.grpo import GRPOConfig, run

    seen = {}

    class Stop(Exception):
        pass

    def capture(self, **kwargs):
        seen["args"] = kwargs["args"]
        raise Stop

    monkeypatch.setattr(GRPOTrainer, "__init__", capture)
    monkeypatch.setattr(rlaif.grpo, "RewardModels", lambda specs, device: None)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello?\nWhat is rain?\n")
    with pytest.raises(Stop):
        run(GRPOConfig(prompts=str(prompts), out=str(tmp_path / "grpo"), policy=str(tiny_model_dir),
                       reward_model=[str(tmp_path / "rm")], steps=1, engine="vllm", vllm_gpu_memory_utilization=0.5), progress=False)
    args = seen["args"]
    assert (args.use_vllm, args.vllm_mode, args.vllm_gpu_memory_utilization) == (True, "colocate", 0.5)


# --------------------------------------------------------------------------------------------------------------------
# A recipe's stages on vLLM run in a child process each


def test_a_stage_on_vllm_runs_in_a_child_process_whose_errors_come_back_whole(tiny_model_dir, tmp_path):
    """rlaif.launch.in_child, with a stage on the local engine (vLLM needs a GPU): the result comes back, the
    stage directory's lock passes to the child and back, and a user's mistake is raised here as the same error,
    file, line and field included, so that the CLI prints it as it prints any other."""
    import pickle

    from rlaif.constitution import ConstitutionError, Problem
    from rlaif.label import LabelConfig
    from rlaif.launch import in_child
    from rlaif.records import ConfigError, DataError, lock_stage

    for error in (DataError("a.jsonl", 3, "prompt", "missing"), ConfigError("top_p: no effect", ["top_p"])):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error) and vars(again) == vars(error)
    problems = [Problem(file="c.yaml", line=2, column=1, field="id", message="duplicate")]
    assert pickle.loads(pickle.dumps(ConstitutionError(problems))).problems == problems

    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, PAIRS[:1])
    directory = tmp_path / "run" / "label"
    directory.mkdir(parents=True)
    lock_stage(directory)  # as rlaif.pipeline.run holds a step's directory
    config = LabelConfig(candidates=str(pairs), out=str(tmp_path / "run"), labeler=str(tiny_model_dir),
                         few_shot=False, principles_per_comparison=1, device="cpu")
    step = types.SimpleNamespace(stage="label", config=config, directory=directory)
    assert in_child(step, progress=False)["labeled"] == 1
    step.config = LabelConfig(**{**vars(config), "candidates": str(tmp_path / "missing.jsonl")})
    with pytest.raises(DataError, match="missing.jsonl: file not found") as raised:
        in_child(step, progress=False)
    assert raised.value.path == tmp_path / "missing.jsonl"


def test_eval_samples_each_policy_on_vllm_and_computes_the_rest_here(vllm_calls, tiny_model_dir, tmp_path,
                                                                      monkeypatch):
    """`rlaif eval RUN --engine vllm`: each policy's replies sampled by vLLM with the prompt's own seed, one engine
    per policy (a child process each: run in this process here, where the stand-in lives), all before a model is
    loaded here; the KL's log-probabilities are full passes here (base and sft have the same weights here: equal)."""
    import shutil

    import rlaif.engines
    import rlaif.models
    from rlaif.evaluate import EvalConfig, evaluate_policies
    from rlaif.records import Manifest, write_jsonl
    from rlaif.reward import load_backbone

    order = []
    monkeypatch.setattr(rlaif.engines, "spawned", lambda function, *args: order.append("vllm") or function(*args))
    load_model = rlaif.models.load_model
    monkeypatch.setattr(rlaif.models, "load_model", lambda *a, **k: order.append("load") or load_model(*a, **k))
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run_dir / "round-1" / "sft")
    (run_dir / "round-1" / "sft" / "config.yaml").write_text(f"model: {tiny_model_dir}\n")
    classifier, tokenizer = load_backbone(str(tiny_model_dir), "cpu")
    classifier.save_pretrained(run_dir / "round-1" / "reward")
    tokenizer.save_pretrained(run_dir / "round-1" / "reward")
    (run_dir / "round-1" / "reward" / "config.yaml").write_text("{}\n")
    for stage in ("sft", "reward"):
        Manifest(stage=stage, status="complete").save(run_dir / "round-1" / stage)
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"id": "a", "prompt": "Hello?"}, {"id": "b", "prompt": "What is rain?"},
                          {"id": "c", "prompt": "Name a color."}])
    evaluate_policies(EvalConfig(run=str(run_dir), prompts=str(prompts), labeler=str(tiny_model_dir), engine="vllm",
                                 temperature=1.0, max_new_tokens=6, batch_size=2, device="cpu"))
    assert order[:2] == ["vllm", "vllm"] and "vllm" not in order[2:]  # base's and sft's, before any load here
    inits = [call for call in vllm_calls if call[0] == "init"]
    assert [Path(call[1]).name for call in inits] == [tiny_model_dir.name, "sft"]
    sampled = [call for call in vllm_calls if call[0] == "sample"]
    assert [p.seed for call in sampled[:2] for p in call[2]] == [p.seed for call in sampled[2:] for p in call[2]]
    rows = list(read_jsonl(run_dir / "eval" / "responses.jsonl"))
    assert {r["policy"] for r in rows} == {"base", "sft"} and len(rows) == 6
    # the same weights and seeds: base and sft sample the same replies; the policy's log-probability is the base's
    for r in rows:
        assert r["logprob"] == pytest.approx(r["base_logprob"], abs=1e-5) and r["tokens"] > 0
    assert "engine: vllm" in (run_dir / "eval" / "config.yaml").read_text()


def test_the_gpu_check_script_runs_end_to_end_on_the_stand_in(roomy_model_dir, tmp_path):
    """bench/gpu_check.py, which runs the real vLLM only on a GPU, run here on the CPU with this file's stand-in as
    the `vllm` package its subprocesses import: every command it gives rlaif exists, every file it reads is written,
    and its table and JSON come out. Both engines compute with the same weights, so the labels agree to rounding
    and the greedy critique turns are the same text; the speed figures measure nothing here."""
    import json
    import subprocess

    package = tmp_path / "stand-in" / "vllm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "from vllm_stand_in import stand_in_vllm\n"
        "_module = stand_in_vllm([])\n"
        "LLM, SamplingParams, __version__ = _module.LLM, _module.SamplingParams, 'stand-in'\n")
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(root / "bench" / "gpu_check.py"), "--model", str(roomy_model_dir),
                           "--prompts", "2", "--batch-size", "2", "--max-new-tokens", "6", "--device", "cpu",
                           "--work", str(tmp_path / "work"), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["gpu"] == "cpu (vLLM stand-in)" and len(result["table"]) == 5
    critique, label, ppo = result["critique"], result["label"], result["ppo"]
    assert critique["rlaif"]["turns"] == critique["vllm"]["turns"] == critique["identical_turns"] > 0
    assert label["pairs"] > 0 and label["same_winner"] == 1.0 and label["max_gap"] < 1e-4
    assert len(ppo["vllm"]["logprob_gap"]) == 5 and all(g < 1e-4 for g in ppo["vllm"]["logprob_gap"])
    assert all(w == pytest.approx(1.0, abs=1e-3) for w in ppo["vllm"]["sampler_weight"])
    assert "GPU check:" in done.stdout and "-> " in done.stdout
