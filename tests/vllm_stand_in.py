"""A STAND-IN for vLLM, not vLLM: a module with vLLM's `LLM` and `SamplingParams` names that computes what vLLM's
prompt_logprobs and sampling return, with a Hugging Face model in this process, for tests of rlaif's glue on the CPU
(tests/test_vllm_glue.py). As a package for subprocesses: a `vllm/__init__.py` that does

    from vllm_stand_in import stand_in_vllm
    LLM, SamplingParams = ...stand_in_vllm([]).LLM, .SamplingParams
"""

import types

import torch


class Logprob:
    def __init__(self, logprob: float):
        self.logprob, self.rank, self.decoded_token = logprob, None, None


class SamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update({"temperature": 1.0, "prompt_logprobs": None, "seed": None, "logprobs": None, **kwargs})


def stand_in_vllm(calls: list) -> types.ModuleType:
    """The stand-in module; `calls` records (method, number of requests, params) per call."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    class LLM:
        def __init__(self, model: str, seed: int = 0, enable_prefix_caching: bool | None = None, **options):
            calls.append(("init", model, enable_prefix_caching, options))
            module.instances.append(self)
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            weights = self.model.state_dict()

            def load_weights(pairs):  # vLLM's model.load_weights: Hugging Face names, values copied in place
                pairs = list(pairs)
                calls.append(("load_weights", len(pairs), None))
                for name, tensor in pairs:
                    weights[name].copy_(tensor)

            runner = types.SimpleNamespace(model=types.SimpleNamespace(load_weights=load_weights))
            self.llm_engine = types.SimpleNamespace(
                model_config=types.SimpleNamespace(max_model_len=self.model.config.max_position_embeddings),
                model_executor=types.SimpleNamespace(driver_worker=types.SimpleNamespace(model_runner=runner)))

        def reset_prefix_cache(self):
            calls.append(("reset_prefix_cache", 0, None))

        def get_tokenizer(self):
            return self.tokenizer

        def generate(self, prompts, params, use_tqdm=True):
            """Token-id prompts only. With prompt_logprobs (0, and one token to generate): the prompt's
            log-probabilities as vLLM returns them, entry 0 None, entry i {prompt token i: its Logprob}. Otherwise
            (one SamplingParams per prompt): replies sampled token by token from full forward passes (greedy at
            temperature 0), each with its own seed, and with `logprobs` set each sampled token's log-probability
            after temperature (vLLM's processed_logprobs)."""
            calls.append(("generate" if not isinstance(params, list) else "sample", len(prompts), params))
            if not isinstance(params, list):
                assert params.prompt_logprobs == 0 and params.max_tokens == 1
                return [self._prompt_logprobs(prompt["prompt_token_ids"]) for prompt in prompts]
            return [self._sample(prompt["prompt_token_ids"], p) for prompt, p in zip(prompts, params, strict=True)]

        def _prompt_logprobs(self, ids):
            assert len(ids) < self.llm_engine.model_config.max_model_len  # vLLM writes a token past the prompt
            with torch.inference_mode():
                logits = self.model(torch.tensor([ids])).logits[0].float()
            logprobs = torch.log_softmax(logits[:-1], dim=-1)
            entries = [None] + [{t: Logprob(logprobs[i, t].item())} for i, t in enumerate(ids[1:])]
            return types.SimpleNamespace(prompt_token_ids=ids, prompt_logprobs=entries)

        def _sample(self, ids, p):
            generator = torch.Generator().manual_seed(p.seed or 0)
            out, logprobs = [], []
            for _ in range(p.max_tokens):
                with torch.inference_mode():
                    logits = self.model(torch.tensor([ids + out])).logits[0, -1].float()
                scaled = torch.log_softmax(logits / (p.temperature or 1.0), dim=-1)
                token = int(logits.argmax()) if p.temperature == 0 else \
                    int(torch.multinomial(scaled.exp(), 1, generator=generator))
                out.append(token)
                logprobs.append({token: Logprob(scaled[token].item())})
                if token == self.tokenizer.eos_token_id:
                    break
            done = out[-1] == self.tokenizer.eos_token_id
            return types.SimpleNamespace(prompt_token_ids=ids, outputs=[types.SimpleNamespace(
                text=self.tokenizer.decode(out, skip_special_tokens=True), token_ids=out,
                logprobs=logprobs if p.logprobs is not None else None, finish_reason="stop" if done else "length")])

    module = types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams, __name__="vllm", instances=[])
    return module
