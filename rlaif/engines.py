"""Where the stages that generate or score (`rlaif critique`, `sample`, `label`, `score`, `ppo`) run: the engines.

    complete = open_engine(config)  # a CritiqueConfig or SampleConfig whose engine is vllm or openai
    for index, reply in complete(conversations, GenerationConfig(max_new_tokens=64, seeds=seeds), prefix):
        ...                         # reply: an rlaif.generate.Generation, as each finishes, in no set order

A stage's `complete(conversations, generation, prefix=None)` takes chat conversations (lists of {"role", "content"}
messages), a GenerationConfig (max_new_tokens, temperature, top_p and `seeds`, one per conversation) and messages
every conversation starts with (critique's few-shot block), and yields (index into conversations, Generation) pairs
as replies finish, so that the stage writes each row once it is whole: a killed run loses the requests in flight,
and the rerun sends only the work not yet written. `engine` picks one of three:

- rlaif: batched generation in this process (rlaif.generate), each stage's own `_model_complete`.
- vllm: vLLM in this process, on a GPU where it is installed (`VLLMModel`), which is also the `model` the scoring
  stages (label in every mode, score, eval labeler) read log-probabilities from, and PPO's rollout sampler.
- openai: HTTP to any OpenAI-compatible server (`OpenAIEngine`): `vllm serve`, SGLang, llama.cpp's llama-server,
  TGI, `transformers serve`. The stage's `model` setting is the name sent to the server. The labeling stages read
  option probabilities from its top_logprobs (`OpenAIEngine.next_tokens`, rlaif.label_remote).

**What openai sends.** One POST BASE_URL/chat/completions per reply with the standard fields only: model, messages
(the prefix, then the conversation), max_tokens, temperature, top_p and the reply's own seed (`n` is left out:
llama-cpp-python and `transformers serve` ignore it). Anything else is refused by some server: `transformers serve`
answers HTTP 422 to a field outside OpenAI's (transformers 5.24, cli/serving/utils.py), OpenAI's API 400, while vLLM
ignores it (vllm 0.33, entrypoints/serve/engine/protocol.py: extra="allow"). So `transformers serve`'s own
`generation_config` field is not sent, and that server samples at temperature > 0 only when the model's
generation_config.json says `do_sample: true` (instruct models ship it; without it, replies are greedy whatever the
temperature). Its `seed` seeds torch globally, so its draws repeat only when requests go one at a time
(concurrency 1). The model must be one the server lists at GET BASE_URL/models, checked once at start:
`vllm serve ORG/NAME` serves ORG/NAME, `transformers serve PATH` exactly PATH as typed (any other name: HTTP 400).

**What comes back.** The reply's text, stripped as rlaif.generate strips it; finish_reason "length" where the server
says so, else "stop"; token counts from `usage` and no token ids (`Generation.tokens` is the server's
completion_tokens). A prompt too long for the server's context is an HTTP 400 saying so (vLLM "Input length (N)
exceeds model's maximum context length (M)", OpenAI "This model's maximum context length is ...", llama-server "the
request exceeds the available context size"; `TOO_LONG` reads these and others' wording): it comes back with
finish_reason "too_long", and the stage leaves the prompt out and counts it, as with the local engine. Servers
draw that line in other places: vLLM shortens max_tokens to the room left and refuses only a prompt longer than the
context (entrypoints/serve/utils/api_utils.py, get_max_tokens), and `transformers serve` checks nothing.

**Servers, retries, errors.** `concurrency` requests are in flight at once over all the servers, each sent to the
server with the fewest in flight (on a tie, the one sent fewer so far). A connection error and HTTP 408, 429, 500,
502, 503 and 504 are retried up to 5 times, after the server's Retry-After (429, 503) or an exponential backoff
(0.5 s * 2^(n-1) plus up to 0.5 s of jitter; the first retry at once) (urllib3.util.Retry, as TRL 1.16's
generation/vllm_client.py does); a reply that is not back within request_timeout seconds is asked once more. The API
key comes from the environment variable api_key_env names and goes out as a Bearer token; it is never printed, logged
or saved (config.yaml holds the variable's name). What cannot go on stops the stage with a ConfigError naming what to
change: a server that cannot be reached (its URL), a model it does not serve (with the ones it does), HTTP 401 or 403
(the variable the key is read from), no reply within request_timeout, any other error (the server's own message).

**What is counted** (`OpenAIEngine.stats`, added to the stage's manifest.json under extra.engine, summed over the
runs that finished): requests, retries, bytes_sent (request bodies, retries included), bytes_received (the bodies
of the replies read), prompt_tokens and completion_tokens (from `usage`), and the requests each server was sent.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import Counter
from collections.abc import Iterator
from multiprocessing.pool import ThreadPool
from typing import Any

from rlaif.generate import Generation, GenerationConfig, derive_seed
from rlaif.models import check_numbers, installed, unused_settings
from rlaif.records import ConfigError, DataError, Message

ENGINES = ("rlaif", "vllm", "openai")
API_KEY_ENV = "OPENAI_API_KEY"  # api_key_env's default; unset, no key is sent (a local server needs none)
RETRIED = (408, 429, 500, 502, 503, 504)
# How servers say a prompt does not fit their context (see the module docstring); TGI: "... must be <= 4096".
TOO_LONG = re.compile(r"context (length|size|window)|too long|longer than|must be <=", re.IGNORECASE)


def check_settings(config, stage: str, local: list[str], batches: bool = False) -> None:
    """A stage config's engine settings (engine, base_url, api_key_env, concurrency, request_timeout), checked when
    the config is built, as its other settings are; `local` names the settings only the rlaif engine reads, and
    `batches` says that the stage's batch_size counts the work it writes at once with every engine."""
    if config.engine not in ENGINES:
        raise DataError(f"{stage} settings", None, "engine", f"expected rlaif, vllm or openai, not {config.engine!r}")
    check_numbers(config, stage, at_least_one=["concurrency"], positive=["request_timeout"])
    if config.engine == "openai":
        if not config.base_url:
            raise ConfigError("base_url: engine openai sends its requests to a server: give its address, e.g. "
                              "--base-url http://127.0.0.1:8000/v1", ["base_url", "engine"])
        for url in config.base_url:
            if not re.match(r"https?://[^/\s]+", url):
                raise DataError(f"{stage} settings", None, "base_url", f"expected an http:// or https:// address, "
                                                                      f"not {url!r}")
        unused_settings(config, [*local, *([] if batches else ["batch_size"])], "not used with engine: openai (the server batches its "
                        "requests and places the model)", ("engine",))
        return
    if config.base_url:
        raise ConfigError("base_url: used only with engine: openai (--engine openai)", ["base_url", "engine"])
    unused_settings(config, ["api_key_env", "concurrency", "request_timeout"],
                    "used only with engine: openai (--engine openai)", ("engine",))
    if config.engine == "vllm":
        if not installed("vllm"):
            raise DataError(f"{stage} settings", None, "engine", "vllm is not installed here (pip install vllm, "
                            "on a machine with a GPU); or use engine: rlaif")
        unused_settings(config, local, "not used with engine: vllm, which places the model itself", ("engine",))


def open_engine(config, model: str | None = None):
    """The `complete` of a stage config whose engine is vllm or openai (rlaif is the stage's own), for `model`
    (default: the config's `model`). Raises ConfigError when it cannot start: vLLM not installed; a key variable
    named but unset, a server out of reach or not serving the model (OpenAIEngine)."""
    setting = "labeler" if model else "model"
    model = model or config.model
    if config.engine == "vllm":
        return VLLMModel(model, config.seed).complete
    key = os.environ.get(config.api_key_env, "")
    if not key and config.api_key_env != API_KEY_ENV:
        raise ConfigError(f"api_key_env: the environment variable {config.api_key_env} is not set: export the "
                          f"server's API key in it, or leave api_key_env out for a server that needs no key",
                          ["api_key_env"])
    return OpenAIEngine(config.base_url, model, api_key=key, api_key_env=config.api_key_env,
                        concurrency=config.concurrency, timeout=config.request_timeout, setting=setting)


def save_counts(manifest, complete) -> None:
    """Add what an HTTP engine counted (`OpenAIEngine.stats`) to a stage's manifest, under extra["engine"], to the
    counts of the runs before it; a `complete` that counts nothing (the local engines, a test's) adds nothing."""
    def summed(before: dict, now: dict) -> dict:
        return {**before, **{key: summed(before.get(key, {}), value) if isinstance(value, dict)
                             else before.get(key, 0) + value for key, value in now.items()}}

    if hasattr(complete, "stats"):
        manifest.extra["engine"] = summed(manifest.extra.get("engine", {}), complete.stats())


# --------------------------------------------------------------------------------------------------------------------
# openai: any OpenAI-compatible server, over HTTP


class OpenAIEngine:
    """A stage's `complete` over HTTP to one or more OpenAI-compatible servers (see the module docstring).

        complete = OpenAIEngine(["http://127.0.0.1:8000/v1"], "Qwen/Qwen2.5-7B-Instruct", concurrency=16)

    Checks each server once when made (GET /models: it answers, it serves `model`, it takes the key); a server
    address without a path gets /v1. `retries` and `backoff` (seconds) set urllib3's Retry."""

    def __init__(self, base_urls: list[str], model: str, api_key: str = "", api_key_env: str = API_KEY_ENV,
                 concurrency: int = 8, timeout: float = 600.0, retries: int = 5, backoff: float = 0.5,
                 setting: str = "model"):
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        stripped = [url.rstrip("/") for url in base_urls]
        self.urls = list(dict.fromkeys(url + "/v1" if url.count("/") == 2 else url for url in stripped))
        self.model, self.has_key, self.key_env, self.concurrency = model, bool(api_key), api_key_env, concurrency
        self.setting = setting  # the stage setting `model` comes from (labeler for the labeling stages)
        self.timeout, self.retries = (min(10.0, timeout), timeout), retries  # (connect, read) seconds
        # Retry-After is honoured on 429 and 503 (Retry.RETRY_AFTER_STATUS_CODES); read=1: a reply that does not
        # come in time, or a kept-alive connection the server closed meanwhile, is asked once more.
        retry = Retry(total=retries, connect=retries, read=1, status=retries, status_forcelist=RETRIED,
                      allowed_methods={"GET", "POST"}, backoff_factor=backoff, backoff_jitter=backoff, backoff_max=60,
                      raise_on_status=False)
        self.session = requests.Session()
        for scheme in ("http://", "https://"):
            self.session.mount(scheme, HTTPAdapter(max_retries=retry, pool_maxsize=concurrency))
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.lock = threading.Lock()
        self.counts = Counter(dict.fromkeys(("requests", "retries", "bytes_sent", "bytes_received", "prompt_tokens",
                                             "completion_tokens"), 0))
        self.sent = Counter(dict.fromkeys(self.urls, 0))  # requests per server
        self.busy = Counter(dict.fromkeys(self.urls, 0))  # requests in flight per server
        for url in self.urls:
            self._check(url)

    def __call__(self, conversations: list[list[Message]], generation: GenerationConfig,
                 prefix: list[Message] | None = None) -> Iterator[tuple[int, Generation]]:
        """(index, reply) for each conversation, as the replies come back."""
        seeds = generation.seeds or [None if generation.seed is None else derive_seed(generation.seed, i)
                                     for i in range(len(conversations))]
        yield from self._as_they_come(self._ask, [([*(prefix or []), *conversation], generation, seed) for
                                                  conversation, seed in zip(conversations, seeds, strict=True)])

    def _as_they_come(self, work, calls: list[tuple]) -> Iterator[tuple[int, Any]]:
        """(i, work(*calls[i])) for each call, in the order they finish, `concurrency` at a time; the first error is
        raised. The threads are daemons (multiprocessing's ThreadPool, not concurrent.futures, whose threads Python
        joins at exit): a stage stopped early (an error, Ctrl-C) ends at once, not when its requests in flight are
        back (each up to request_timeout per try); those not yet sent never are."""
        pool = ThreadPool(min(self.concurrency, max(len(calls), 1)))
        try:
            yield from pool.imap_unordered(lambda indexed: (indexed[0], work(*indexed[1])), enumerate(calls))
        finally:
            pool.terminate()

    def stats(self) -> dict:
        """What was counted so far: requests, retries, bytes_sent, bytes_received, prompt_tokens, completion_tokens,
        and `servers`, the requests each server was sent."""
        with self.lock:
            return {**self.counts, "servers": dict(self.sent)}

    def _ask(self, messages: list[Message], generation: GenerationConfig, seed: int | None) -> Generation:
        body = {"model": self.model, "messages": messages, "max_tokens": generation.max_new_tokens,
                "temperature": generation.temperature, "top_p": generation.top_p}
        if seed is not None:
            body["seed"] = seed
        url, choice, usage = self._send(body)
        if choice is None:
            return Generation(text="", token_ids=[], finish_reason="too_long")
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else 0
        if not isinstance(text, str | None):
            raise ConfigError(f"base_url: {url} answered with no chat completion ({str(choice)[:200]!r}); is it an "
                              "OpenAI-compatible server?", ["base_url"])
        return Generation(text=(text or "").strip(), token_ids=[],
                          finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
                          prompt_tokens=usage.get("prompt_tokens") or 0,
                          completion_tokens=usage.get("completion_tokens"))

    def next_tokens(self, conversations: list[list[Message]], prefix: list[Message] | None = None,
                    max_tokens: int = 3, top: int = 20
                    ) -> Iterator[tuple[int, list[tuple[str, float, list[tuple[str, float]]]] | None]]:
        """The most likely next tokens of each conversation's reply, greedily: (index, steps) as each comes back,
        where steps holds, for each of the first `max_tokens` tokens the server wrote at temperature 0, (its text,
        its log-probability, [(text, log-probability)] of the `top` likeliest tokens there, the written one added
        where the server left it out), read from the chat completion's logprobs.content[i] (OpenAI's shape; also
        the completions shape, tokens/token_logprobs/top_logprobs, that older llama-cpp-python sent); the
        log-probabilities are the model's, before sampling. steps is None for a conversation too long for the
        server's context. `top` is at most 20 (OpenAI's limit and vLLM's default max_logprobs). Raises ConfigError
        when the server sends no log-probabilities, or empty lists of them (`transformers serve` ignores the request;
        llama.cpp's llama-server, llama-cpp-python, vLLM, SGLang and OpenAI's API answer it)."""
        yield from self._as_they_come(self._steps, [([*(prefix or []), *conversation], max_tokens, top)
                                                    for conversation in conversations])

    def _steps(self, messages: list[Message], max_tokens: int, top: int):
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                "logprobs": True, "top_logprobs": top}
        url, choice, _ = self._send(body)
        if choice is None:
            return None
        steps = _logprob_steps(choice.get("logprobs"))
        message = choice.get("message")
        if not steps and isinstance(message, dict) and message.get("content"):
            raise ConfigError(f"engine: {url} sent no log-probabilities (logprobs.content[].top_logprobs) with its "
                              f"reply: it does not offer them (transformers serve does not); label with a server that "
                              "does (vllm serve, SGLang, llama.cpp's llama-server, llama-cpp-python) or with engine "
                              "rlaif", ["engine", "base_url"])
        if steps and not any(listed for _, _, listed in steps if len(listed) > 1):
            raise ConfigError(f"engine: {url} sent log-probabilities of the written tokens only, no top_logprobs "
                              "lists: it ignores top_logprobs (for vLLM, is --max-logprobs 0?); label with a server "
                              "that sends them, or with engine rlaif", ["engine", "base_url"])
        return steps or []

    def _send(self, body: dict) -> tuple[str, dict | None, dict]:
        """POST `body` to /chat/completions of the least busy server: (its url, the first choice, usage), the choice
        None when the server says the prompt is too long for its context. Errors as in the module docstring."""
        import requests

        payload = json.dumps(body).encode("utf-8")
        with self.lock:  # the server with the fewest requests in flight; on a tie, the one sent fewer so far
            url = min(self.urls, key=lambda u: (self.busy[u], self.sent[u]))
            self.busy[url] += 1
            self.sent[url] += 1
        try:
            response = self.session.post(f"{url}/chat/completions", data=payload, timeout=self.timeout,
                                         headers={"Content-Type": "application/json"})
            retries = len(response.raw.retries.history) if getattr(response.raw, "retries", None) else 0
            with self.lock:
                self.counts.update(requests=1, retries=retries, bytes_sent=len(payload) * (1 + retries),
                                   bytes_received=len(response.content))
        except requests.RequestException as e:
            raise self._unreachable(url, e) from None
        finally:
            with self.lock:
                self.busy[url] -= 1
        if response.status_code in (400, 413, 422) and TOO_LONG.search(_message(response)):
            return url, None, {}
        self._refuse(url, response)
        try:
            reply = response.json()
            choice, usage = reply["choices"][0], reply.get("usage") or {}
            if not isinstance(choice, dict) or not isinstance(usage, dict):
                raise TypeError
        except (ValueError, KeyError, IndexError, TypeError):
            raise ConfigError(f"base_url: {url} answered with no chat completion ({response.text[:200]!r}); is it "
                              "an OpenAI-compatible server?", ["base_url"]) from None
        with self.lock:
            self.counts.update(prompt_tokens=usage.get("prompt_tokens") or 0,
                               completion_tokens=usage.get("completion_tokens") or 0)
        return url, choice, usage

    def _check(self, url: str) -> None:
        """That the server answers, takes the key and serves the model: GET /models, once and without retries, so
        that a server not running is an error at once, not after minutes of retries."""
        import requests

        try:
            response = requests.get(f"{url}/models", headers=self.session.headers, timeout=self.timeout)
        except requests.RequestException as e:
            raise self._unreachable(url, e) from None
        self._refuse(url, response)
        try:
            served = [str(m["id"]) for m in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"base_url: {url}/models is not a list of models ({response.text[:200]!r}); is it an "
                              "OpenAI-compatible server?", ["base_url"]) from None
        if self.model not in served:
            raise ConfigError(f"{self.setting}: {url} serves {', '.join(map(repr, served)) or 'no model'}, not "
                              f"{self.model!r}; with engine openai, {self.setting} is the name sent to the server: "
                              "give one of those", [self.setting])

    def _refuse(self, url: str, response) -> None:
        """A ConfigError for an answer that is an error, once retries are spent."""
        if response.ok:
            return
        code, message = response.status_code, _message(response)
        if code in (401, 403):
            key = "was refused" if self.has_key else "is not set"
            raise ConfigError(f"api_key_env: {url} answered HTTP {code} ({message}); the API key is read from the "
                              f"environment variable {self.key_env}, which {key}", ["api_key_env"])
        retried = f" after {self.retries} retries" if code in RETRIED else ""
        hint = " (does base_url end with the API's path, usually /v1?)" if code == 404 else ""
        raise ConfigError(f"base_url: {url} answered HTTP {code}{retried}: {message}{hint}", ["base_url"])

    def _unreachable(self, url: str, error: Exception) -> ConfigError:
        from urllib3.exceptions import ReadTimeoutError

        reason = getattr(error.args[0], "reason", error.args[0]) if error.args else error
        if isinstance(reason, ReadTimeoutError):
            return ConfigError(f"request_timeout: {url} sent no reply within {self.timeout[1]:g} s, twice; raise "
                               "request_timeout, or lower concurrency (requests wait in the server's queue)",
                               ["request_timeout"])
        why = str(reason).partition("): ")[2] or str(reason)
        return ConfigError(f"base_url: cannot reach {url} ({why}); is the server running? (README: \"Inference "
                           "servers\")", ["base_url"])


def _logprob_steps(logprobs) -> list[tuple[str, float, list[tuple[str, float]]]]:
    """A chat choice's `logprobs` as [(written text, its log-probability, [(text, log-probability) listed])], the
    written token added to its list where missing; [] for anything else. OpenAI's shape: {"content": [{"token",
    "logprob", "top_logprobs": [{"token", "logprob"}]}]}; the completions shape: {"tokens", "token_logprobs",
    "top_logprobs": [{text: log-probability}]}."""
    def step(token, logprob, listed) -> tuple[str, float, list[tuple[str, float]]]:
        listed = [(str(t), float(lp)) for t, lp in listed]
        if token not in {t for t, _ in listed}:
            listed.append((token, logprob))
        return token, logprob, listed

    try:
        if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
            return [step(str(s["token"]), float(s["logprob"]),
                         [(t["token"], t["logprob"]) for t in s.get("top_logprobs") or []])
                    for s in logprobs["content"]]
        if isinstance(logprobs, dict) and isinstance(logprobs.get("tokens"), list):
            return [step(str(token), float(logprob), (listed or {}).items()) for token, logprob, listed
                    in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True)]
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    return []


def _message(response) -> str:
    """The error message in a server's answer: OpenAI's and vLLM's {"error": {"message"}}, FastAPI's {"detail"}
    (transformers serve), else the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return str(message or (body.get("detail") if isinstance(body, dict) else None) or body)[:500]


# --------------------------------------------------------------------------------------------------------------------
# vllm: vLLM in this process


def spawned(function, *args):
    """function(*args) in a fresh child process (spawned, so that it starts with no CUDA state), its result returned
    and its exception raised here (pickled whole: rlaif's errors keep their class and fields). vLLM takes its share
    of the GPU's memory when it starts and gives it back reliably only when its process ends: each use of vLLM that
    must free the GPU for what comes next runs this way (rlaif.launch.in_child, rlaif.evaluate)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from rlaif.launch import die_with_parent

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent,
                             initargs=(os.getpid(),)) as pool:  # a parent killed outright takes the child with it
        return pool.submit(function, *args).result()


class VLLMModel:
    """vLLM in this process, as a stage's `complete` and as the `model` of rlaif's scorers.

        model = VLLMModel("smollm2-135m-instruct", seed=0)  # vllm.LLM(resolved path, seed, prefix caching on)
        Labeler(model, model.tokenizer, constitution)       # rlaif.label; DirectScore and LikelihoodContrast alike

    The scorers read log-probabilities of given tokens through rlaif.prefix_tree.tree_logprobs, which hands them to
    `sequence_logprobs` here (vLLM's prompt_logprobs; vLLM computes those without its prefix cache, so scoring
    shares no prefix); rlaif.label.Labeler writes its chain-of-thought rationales with `complete`. Prompts go to
    vLLM as token ids built with rlaif's tokenizer (rlaif.generate.encode_chat), the ids the local engine and PPO's
    trainer use. `config.max_position_embeddings` is vLLM's max_model_len less one (it writes a token past every
    prompt), the context the scorers fit prompts in. `options` go to vllm.LLM (gpu_memory_utilization, logprobs_mode, ...). Raises ConfigError when vLLM is
    not installed."""

    def __init__(self, model: str, seed: int = 0, in_process: bool = False, **options):
        import types

        if in_process:  # the engine core in this process, so that push_weights reaches its model (as TRL sets it)
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

        try:
            from vllm import LLM
        except ImportError:
            raise ConfigError("engine: vllm is not installed here (pip install vllm, on a machine with a GPU); "
                              "or use engine: rlaif") from None
        from rlaif.models import load_tokenizer, resolve

        path = resolve(model)
        self.llm = LLM(model=path, seed=seed, enable_prefix_caching=True, **options)
        # rlaif's tokenizer (its chat template, or rlaif's fallback), so that every prompt is the token ids the
        # local engine and PPO's trainer build; vLLM is sent those ids, never text to template itself
        self.tokenizer = load_tokenizer(path)
        # the longest prompt vLLM scores or extends: it generates at least one token past the prompt
        self.config = types.SimpleNamespace(
            max_position_embeddings=self.llm.llm_engine.model_config.max_model_len - 1)
        if in_process and self._model() is None:
            import vllm

            raise ConfigError(f"engine: vLLM {vllm.__version__} keeps its model out of reach of this process "
                              "(llm.llm_engine.model_executor.driver_worker.model_runner.model), where PPO pushes the "
                              "policy's weights after every step; use the vLLM versions TRL supports, or engine rlaif")

    def _model(self):
        """The model inside the engine (what `push_weights` loads into), or None where vLLM hides it."""
        try:
            return self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError:
            return None

    def sequence_logprobs(self, sequences: list[list[int]], n_scored: list[int]) -> list[list[float]]:
        """For each token-id sequence, the log-probabilities of its last n_scored[i] tokens, each given the tokens
        before it, as rlaif.prefix_tree.tree_logprobs returns them: one vLLM call, prompt_logprobs=0 (vLLM always
        includes the prompt's own token at each position; entry 0 is None) and one generated token, unread."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
        outputs = self.llm.generate([{"prompt_token_ids": list(s)} for s in sequences], params, use_tqdm=False)
        return [[out.prompt_logprobs[i][s[i]].logprob for i in range(len(s) - n, len(s))]
                for out, s, n in zip(outputs, sequences, n_scored, strict=True)]

    def complete(self, conversations, generation: GenerationConfig, prefix=None):
        """A stage's `complete`: each request gets its own seed (`generation.seeds`), so the K copies of a prompt
        differ and a rerun samples them again alike. vLLM is called with `batch_size` requests at a time (it batches
        them itself), so a killed run loses at most one call's; a request too long for the model's context is not
        sent (finish_reason "too_long", as rlaif.generate gives it)."""
        from vllm import SamplingParams

        from rlaif.generate import encode_chat

        context = self.config.max_position_embeddings + 1
        conversations = [[*(prefix or []), *c] for c in conversations]
        seeds = generation.seeds or [None if generation.seed is None else derive_seed(generation.seed, i)
                                     for i in range(len(conversations))]
        for start in range(0, len(conversations), generation.batch_size):
            batch = range(start, min(start + generation.batch_size, len(conversations)))
            ids = {i: encode_chat(self.tokenizer, conversations[i]) for i in batch}
            sent = [i for i in batch if len(ids[i]) + generation.max_new_tokens <= context]
            for i in sorted(set(batch) - set(sent)):
                yield i, Generation(text="", token_ids=[], finish_reason="too_long", prompt_tokens=len(ids[i]))
            params = [SamplingParams(temperature=generation.temperature, top_p=generation.top_p,
                                     max_tokens=generation.max_new_tokens, seed=seeds[i],
                                     logprobs=0 if generation.logprobs else None) for i in sent]
            prompts = [{"prompt_token_ids": ids[i]} for i in sent]
            results = self.llm.generate(prompts, params, use_tqdm=False) if sent else []
            for i, r in zip(sent, results):
                out = r.outputs[0]
                logprobs = [step[t].logprob for step, t in zip(out.logprobs, out.token_ids)] if generation.logprobs \
                    else None  # the sampled token is always among a step's entries
                yield i, Generation(text=out.text.strip(), token_ids=list(out.token_ids),
                                    finish_reason="stop" if out.finish_reason == "stop" else "length",
                                    prompt_tokens=len(r.prompt_token_ids), logprobs=logprobs)

    def push_weights(self, policy) -> int:
        """Load a trained policy's weights into the engine, in place, and drop its prefix cache (computed with the
        old weights); returns the tensors pushed. As TRL 1.16's colocate mode does (trl/generation/
        vllm_generation.py, sync_weights): each (name, tensor) goes to the model's own `load_weights`, under its
        Hugging Face name; a PEFT policy has its adapters merged for the push and unmerged after, and only the base
        weights go (LoRA's own tensors have no place in the engine). Needs vLLM's engine in this process
        (VLLM_ENABLE_V1_MULTIPROCESSING=0 before the engine is made, as `VLLMModel(..., in_process=True)` sets)."""
        model = self._model()
        merged = hasattr(policy, "merge_adapter")
        if merged:
            policy.merge_adapter()
        try:
            weights = [(name.removeprefix("base_model.model.").replace(".base_layer", "")
                        .replace("modules_to_save.default.", ""), tensor.data)
                       for name, tensor in policy.named_parameters()
                       if not merged or ("lora_" not in name and "original_module" not in name)]
            model.load_weights(weights)
        finally:
            if merged:
                policy.unmerge_adapter()
        self.llm.reset_prefix_cache()
        return len(weights)
