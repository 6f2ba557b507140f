"""engine: vllm for the scoring stages (rlaif.engines.VLLMModel), against a STAND-IN for vLLM, not vLLM: a module with
vLLM's `LLM` and `SamplingParams` names that computes what vLLM's prompt_logprobs and greedy chat return, with the
tiny Hugging Face model in this process. vLLM needs a GPU; this checks rlaif's glue (which tokens are sent, which
log-probabilities are read back, where rationales come from) by asking for labels and scores both ways from the same
weights: they must match the local engine's. bench/gpu_check.sh runs the real vLLM."""

import sys
import types

import pytest
import torch

from rlaif.records import read_jsonl, write_jsonl


class Logprob:
    def __init__(self, logprob: float):
        self.logprob, self.rank, self.decoded_token = logprob, None, None


class SamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update({"temperature": 1.0, "prompt_logprobs": None, "seed": None, **kwargs})


def stand_in_vllm(calls: list) -> types.ModuleType:
    """The stand-in module; `calls` records (method, number of requests, params) per call."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    class LLM:
        def __init__(self, model: str, seed: int = 0, enable_prefix_caching: bool | None = None):
            calls.append(("init", model, enable_prefix_caching))
            self.model = AutoModelForCausalLM.from_pretrained(model, torch_dtype=torch.float32).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.llm_engine = types.SimpleNamespace(
                model_config=types.SimpleNamespace(max_model_len=self.model.config.max_position_embeddings))

        def get_tokenizer(self):
            return self.tokenizer

        def generate(self, prompts, params, use_tqdm=True):
            """prompt_logprobs as vLLM returns them: entry 0 None, entry i {prompt token i: its Logprob}."""
            calls.append(("generate", len(prompts), params))
            assert params.prompt_logprobs == 0 and params.max_tokens == 1
            outputs = []
            for prompt in prompts:
                ids = prompt["prompt_token_ids"]
                with torch.inference_mode():
                    logits = self.model(torch.tensor([ids])).logits[0].float()
                logprobs = torch.log_softmax(logits[:-1], dim=-1)
                entries = [None] + [{t: Logprob(logprobs[i, t].item())} for i, t in enumerate(ids[1:])]
                outputs.append(types.SimpleNamespace(prompt_token_ids=ids, prompt_logprobs=entries))
            return outputs

        def chat(self, conversations, params, use_tqdm=True):
            """Greedy replies only (what the labeler's rationales ask for)."""
            calls.append(("chat", len(conversations), params))
            outputs = []
            for conversation, p in zip(conversations, params):
                assert p.temperature == 0
                ids = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                                         return_dict=False)
                with torch.inference_mode():
                    out = self.model.generate(torch.tensor([ids]), max_new_tokens=p.max_tokens, do_sample=False,
                                              pad_token_id=self.tokenizer.eos_token_id)[0, len(ids):].tolist()
                text = self.tokenizer.decode(out, skip_special_tokens=True)
                done = out[-1] == self.tokenizer.eos_token_id
                outputs.append(types.SimpleNamespace(prompt_token_ids=ids, outputs=[types.SimpleNamespace(
                    text=text, token_ids=out, finish_reason="stop" if done else "length")]))
            return outputs

    return types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams, __name__="vllm")


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
    assert kinds == ({"generate", "chat"} if extra.get("chain_of_thought") else {"generate"})
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
    with pytest.raises(DataError, match="expected rlaif or vllm, not 'openai'"):
        ScoreConfig(candidates="c.jsonl", engine="openai")
