"""engine: openai (rlaif.engines) against a real OpenAI-compatible server, `transformers serve` on the tiny model, and
against a stand-in for a flaky one (a small FastAPI app) for what a real server will not do on demand: fail a few
times, ask to be called back later, answer too slowly, refuse a key, say a prompt is too long."""

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import running_server

from rlaif.cli import cli
from rlaif.engines import OpenAIEngine
from rlaif.generate import GenerationConfig
from rlaif.records import ConfigError, read_jsonl

PROMPTS = ["Hello?", "How do I bake bread?", "What is rain?", "Tell me about Python loops."]


def _free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def _free_port() -> int:
    with _free_socket() as sock:
        return sock.getsockname()[1]


def _prompts(tmp_path: Path, n: int = len(PROMPTS)) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS[:n]) + "\n")
    return path


def _invoke(args: list[str], env: dict | None = None):
    result = CliRunner().invoke(cli, [str(a) for a in args], env=env)
    assert "Traceback" not in result.output, result.output
    return result


# --------------------------------------------------------------------------------------------------------------------
# A real server: `transformers serve`


@pytest.fixture(scope="session")
def served(tiny_model_dir, tmp_path_factory):
    """`transformers serve` on a copy of the tiny model, in a subprocess, for the session: (base_url, model name).
    The copy's generation_config.json says do_sample: true, as instruct models' do: without it that server decodes
    greedily whatever the temperature (see rlaif.engines)."""
    directory = tmp_path_factory.mktemp("served") / "tiny"
    shutil.copytree(tiny_model_dir, directory)
    generation = json.loads((directory / "generation_config.json").read_text())
    (directory / "generation_config.json").write_text(json.dumps({**generation, "do_sample": True}))
    port, log_path = _free_port(), directory.parent / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1"}
    command = [str(Path(sys.executable).parent / "transformers"), "serve", str(directory), "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu"]
    with running_server(command, f"http://127.0.0.1:{port}/health", log_path, env):
        yield f"http://127.0.0.1:{port}/v1", str(directory)


def _schema(path: Path) -> list[list[str]]:
    return sorted(sorted(row) for row in read_jsonl(path))


def test_sample_on_a_real_server_writes_what_the_local_engine_writes(served, tiny_model_dir, tmp_path):
    url, name = served
    prompts, secret = _prompts(tmp_path, 3), "sk-test-do-not-save-7f3a"
    common = ["sample", "--prompts", prompts, "--n", "2", "--max-new-tokens", "8"]
    local = _invoke([*common, "-m", tiny_model_dir, "--device", "cpu", "--out", tmp_path / "local"])
    remote = _invoke([*common, "-m", name, "--engine", "openai", "--base-url", url, "--out", tmp_path / "remote"],
                     env={"OPENAI_API_KEY": secret})
    assert local.exit_code == 0 and remote.exit_code == 0, local.output + remote.output
    local_dir, remote_dir = tmp_path / "local" / "sample", tmp_path / "remote" / "sample"
    assert sorted(p.name for p in local_dir.iterdir()) == sorted(p.name for p in remote_dir.iterdir())
    assert _schema(local_dir / "candidates.jsonl") == _schema(remote_dir / "candidates.jsonl")
    rows = list(read_jsonl(remote_dir / "candidates.jsonl"))
    assert sorted(r["prompt"][-1]["content"] for r in rows) == sorted(PROMPTS[:3])
    for row in rows:  # each reply sampled with its own seed; a reply stops at EOS exactly when under 8 tokens
        assert len(set(row["responses"])) == 2 and row["policy"] == name
        assert all(1 <= t <= 8 for t in row["tokens"]) and row["finished"] == [t < 8 for t in row["tokens"]]
    engine = json.loads((remote_dir / "manifest.json").read_text())["extra"]["engine"]
    assert engine["requests"] == 6 and engine["retries"] == 0 and engine["servers"] == {url: 6}
    assert engine["completion_tokens"] == sum(sum(r["tokens"]) for r in rows)
    assert engine["prompt_tokens"] > 0 and engine["bytes_sent"] > 0 and engine["bytes_received"] > 0
    config = (remote_dir / "config.yaml").read_text()
    assert "engine: openai" in config and url in config and "api_key_env: OPENAI_API_KEY" in config
    assert not any(secret in p.read_text() for p in remote_dir.iterdir() if p.is_file())


def test_critique_on_a_real_server_writes_what_the_local_engine_writes(served, tiny_model_dir, tmp_path):
    url, name = served
    common = ["critique", "--prompts", _prompts(tmp_path, 2), "--rounds", "1", "--no-few-shot", "--max-new-tokens", "8"]
    local = _invoke([*common, "-m", tiny_model_dir, "--device", "cpu", "--out", tmp_path / "local"])
    remote = _invoke([*common, "-m", name, "--engine", "openai", "--base-url", url, "--concurrency", "3",
                      "--out", tmp_path / "remote"])
    assert local.exit_code == 0 and remote.exit_code == 0, local.output + remote.output
    local_dir, remote_dir = tmp_path / "local" / "critique", tmp_path / "remote" / "critique"
    assert sorted(p.name for p in local_dir.iterdir()) == sorted(p.name for p in remote_dir.iterdir())
    for output in ("revisions.jsonl", "sft.jsonl"):
        assert _schema(local_dir / output) == _schema(remote_dir / output)
    rows = list(read_jsonl(remote_dir / "revisions.jsonl"))
    assert len(rows) == 2 and all(len(r["rounds"]) == 1 for r in rows)
    turns = list(read_jsonl(remote_dir / "turns.jsonl"))
    engine = json.loads((remote_dir / "manifest.json").read_text())["extra"]["engine"]
    assert engine["requests"] == len(turns)  # a turn, or a flagged first attempt and its retry: one request each
    assert engine["completion_tokens"] == sum(t["tokens"] for t in turns if not t.get("retry_pending"))


def test_a_rerun_after_an_interruption_sends_only_the_unfinished_prompts(served, tmp_path):
    """Killed after two of four prompts were written, the rerun asks the server for the other two prompts' replies
    only, and, one request at a time (transformers serve seeds torch globally), writes what an uninterrupted run
    writes."""
    from rlaif.sample import SampleConfig, run

    url, name = served
    prompts = _prompts(tmp_path)
    engine = OpenAIEngine([url], name, concurrency=1)

    def interrupted(conversations, generation):
        for n, reply in enumerate(engine(conversations, generation), 1):
            yield reply
            if n == 4:  # two prompts' two replies
                raise KeyboardInterrupt

    settings = {"prompts": str(prompts), "model": name, "max_new_tokens": 8, "engine": "openai", "base_url": [url],
                "concurrency": 1}
    with pytest.raises(KeyboardInterrupt):
        run(SampleConfig(**settings, out=str(tmp_path / "resumed")), complete=interrupted)
    assert len(list(read_jsonl(tmp_path / "resumed" / "sample" / "candidates.jsonl"))) == 2
    deadline = time.monotonic() + 30
    while engine.busy[url] and time.monotonic() < deadline:  # the request in flight when it was killed
        time.sleep(0.05)
    assert engine.stats()["requests"] in (4, 5)  # and maybe the one in flight; the ones after it were never sent
    flags = ["sample", "--prompts", prompts, "-m", name, "--max-new-tokens", "8", "--engine", "openai",
             "--base-url", url, "--concurrency", "1"]
    assert _invoke([*flags, "--out", tmp_path / "resumed"]).exit_code == 0
    assert _invoke([*flags, "--out", tmp_path / "whole"]).exit_code == 0
    manifest = json.loads((tmp_path / "resumed" / "sample" / "manifest.json").read_text())
    assert manifest["counts"]["resumed"] == 2 and manifest["extra"]["engine"]["requests"] == 4
    resumed, whole = ({r["id"]: r for r in read_jsonl(tmp_path / out / "sample" / "candidates.jsonl")}
                      for out in ("resumed", "whole"))
    assert resumed == whole and len(whole) == 4


def test_a_real_server_that_serves_another_model_is_unreachable_or_wants_a_key_is_a_clear_error(served, tmp_path):
    url, name = served
    base = ["sample", "--prompts", _prompts(tmp_path, 1), "--engine", "openai", "--out", tmp_path / "run"]
    result = _invoke([*base, "--base-url", url, "-m", "smollm2-135m-instruct"])
    assert result.exit_code == 1
    assert f"error: model: {url} serves '{name}', not 'smollm2-135m-instruct'" in result.output
    port = _free_port()
    result = _invoke([*base, "--base-url", f"http://127.0.0.1:{port}", "-m", name])
    assert result.exit_code == 1 and f"error: base_url: cannot reach http://127.0.0.1:{port}/v1" in result.output
    result = _invoke([*base, "--base-url", url, "-m", name, "--api-key-env", "RLAIF_TEST_UNSET_KEY"],
                     env={"RLAIF_TEST_UNSET_KEY": None})
    assert result.exit_code == 1
    assert "error: api_key_env: the environment variable RLAIF_TEST_UNSET_KEY is not set" in result.output


# --------------------------------------------------------------------------------------------------------------------
# A stand-in for a flaky server


class StandIn:
    """A stand-in for an OpenAI-compatible server that misbehaves on cue, NOT a real server: a FastAPI app under
    uvicorn, in a thread. It serves `model`, answers a chat request "reply SEED" after 50 ms, and before that gives
    the answers queued in `script`, one per request: {"status", "body", "headers"} or {"sleep": seconds}. With
    `key`, a request without that Bearer key gets HTTP 401. `bodies` holds every chat request it received."""

    def __init__(self, model: str = "stand-in", key: str | None = None):
        import uvicorn
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse

        self.script: list[dict] = []
        self.bodies: list[dict] = []
        app = FastAPI()

        def refused(request: Request):
            if key and request.headers.get("authorization") != f"Bearer {key}":
                return JSONResponse({"error": {"message": "Invalid API key", "type": "auth", "code": 401}}, 401)
            return None

        @app.get("/v1/models")
        async def models(request: Request):
            return refused(request) or {"object": "list", "data": [{"id": model, "object": "model"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.bodies.append(body)
            if refused(request):
                return refused(request)
            step = self.script.pop(0) if self.script else {"sleep": 0.05}
            if "status" in step:
                return JSONResponse(step["body"], step["status"], headers=step.get("headers"))
            await asyncio.sleep(step["sleep"])
            return {"object": "chat.completion", "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": f" reply {body.get('seed')} "}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}

        sock = _free_socket()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="critical"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def stand_in():
    """A factory of StandIn servers, stopped after the test."""
    servers: list[StandIn] = []

    def start(**kwargs) -> StandIn:
        servers.append(StandIn(**kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def _ask(engine: OpenAIEngine, n: int = 1) -> list:
    generation = GenerationConfig(max_new_tokens=8, temperature=0.7, top_p=0.9, seeds=list(range(100, 100 + n)))
    replies = dict(engine([[{"role": "user", "content": f"prompt {i}"}] for i in range(n)], generation))
    return [replies[i] for i in range(n)]


def test_each_reply_is_one_request_of_standard_fields_with_its_own_seed(stand_in):
    server = stand_in()
    replies = _ask(OpenAIEngine([server.url], "stand-in"), 3)
    assert [r.text for r in replies] == ["reply 100", "reply 101", "reply 102"]
    assert all(r.finish_reason == "stop" and r.tokens == 3 and r.prompt_tokens == 5 for r in replies)
    assert {frozenset(body) for body in server.bodies} == {frozenset(("model", "messages", "max_tokens", "temperature",
                                                                       "top_p", "seed"))}
    assert sorted(body["seed"] for body in server.bodies) == [100, 101, 102]


def test_busy_servers_are_retried_after_their_retry_after_and_failing_ones_with_backoff(stand_in):
    server = stand_in()
    busy = {"status": 503, "body": {"error": {"message": "overloaded"}}, "headers": {"Retry-After": "1"}}
    server.script = [{**busy, "status": 429}, busy]
    engine = OpenAIEngine([server.url], "stand-in", backoff=0)  # no backoff: the waits are the server's Retry-After
    started = time.monotonic()
    [reply] = _ask(engine)
    assert reply.text == "reply 100" and time.monotonic() - started >= 2.0
    assert engine.stats()["retries"] == 2 and engine.stats()["requests"] == 1 and len(server.bodies) == 3

    server.script = [{"status": 500, "body": {"error": {"message": "boom"}}}] * 2
    engine = OpenAIEngine([server.url], "stand-in", backoff=0.3)  # waits 0, then 0.3 * 2 plus up to 0.3 of jitter
    started = time.monotonic()
    assert _ask(engine)[0].text == "reply 100" and 0.6 <= time.monotonic() - started < 3
    assert engine.stats()["retries"] == 2

    server.script = [{"status": 502, "body": {"error": {"message": "bad gateway, again"}}}] * 3
    with pytest.raises(ConfigError, match=f"base_url: {server.url} answered HTTP 502 after 2 retries: bad gateway"):
        _ask(OpenAIEngine([server.url], "stand-in", retries=2, backoff=0.01))


def test_a_reply_slower_than_request_timeout_is_asked_twice_then_a_clear_error(stand_in):
    server = stand_in()
    server.script = [{"sleep": 1.5}, {"sleep": 1.5}]
    engine = OpenAIEngine([server.url], "stand-in", timeout=0.4)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"request_timeout: .* sent no reply within 0.4 s, twice"):
        _ask(engine)
    assert time.monotonic() - started < 2.5 and len(server.bodies) == 2


def test_a_prompt_too_long_for_the_servers_context_is_left_out_and_counted(stand_in, tmp_path):
    """vLLM's answer to a prompt longer than its context: HTTP 400 saying so; the prompt is left out, as the local
    engine leaves out one it finds too long."""
    from rlaif.sample import SampleConfig, run

    server = stand_in()
    server.script = [{"status": 400, "body": {"error": {
        "message": "Input length (9000) exceeds model's maximum context length (8192).", "type": "BadRequestError",
        "param": None, "code": 400}}}]
    config = SampleConfig(prompts=str(_prompts(tmp_path, 2)), out=str(tmp_path / "run"), model="stand-in",
                          engine="openai", base_url=[server.url], concurrency=1)
    counts = run(config)
    assert counts["summary"] == "read 2 prompts, used 1, left out 1 (too_long 1)"
    [row] = read_jsonl(tmp_path / "run" / "sample" / "candidates.jsonl")
    assert row["prompt"][-1]["content"] == PROMPTS[1] and row["tokens"] == [3, 3]


def test_other_refusals_say_what_the_server_said(stand_in):
    server = stand_in()
    server.script = [{"status": 422, "body": {"detail": "Unexpected fields in the request: {'foo'}"}}]
    with pytest.raises(ConfigError, match=r"answered HTTP 422: Unexpected fields in the request: \{'foo'\}"):
        _ask(OpenAIEngine([server.url], "stand-in"))


def test_a_failing_request_ends_the_process_at_once_not_when_the_others_in_flight_are_back(stand_in, tmp_path):
    """One request refused while two others wait 30 s for their reply: the error comes at once, and the process
    exits then (the requests' threads are daemons; Python would wait for others)."""
    server = stand_in()
    server.script = [{"status": 422, "body": {"detail": "no"}}, {"sleep": 30}, {"sleep": 30}]
    script = tmp_path / "ask.py"
    script.write_text(
        "import sys\n"
        "from rlaif.engines import OpenAIEngine\n"
        "from rlaif.generate import GenerationConfig\n"
        "engine = OpenAIEngine([sys.argv[1]], 'stand-in', concurrency=3)\n"
        "prompts = [[{'role': 'user', 'content': f'prompt {i}'}] for i in range(3)]\n"
        "dict(engine(prompts, GenerationConfig(max_new_tokens=8, seeds=[1, 2, 3])))\n")
    started = time.monotonic()
    ended = subprocess.run([sys.executable, str(script), server.url], capture_output=True, text=True, timeout=60,
                           check=False)
    assert ended.returncode == 1 and "answered HTTP 422: no" in ended.stderr
    assert time.monotonic() - started < 20 and len(server.bodies) == 3


def test_a_refused_key_names_its_variable_never_its_value(stand_in, tmp_path):
    server = stand_in(key="sk-right")
    secret = "sk-wrong-4c1d"
    args = ["sample", "--prompts", _prompts(tmp_path, 1), "-m", "stand-in", "--engine", "openai", "--base-url",
            server.url, "--api-key-env", "RLAIF_TEST_KEY", "--out", tmp_path / "run"]
    result = _invoke(args, env={"RLAIF_TEST_KEY": secret})
    assert result.exit_code == 1 and secret not in result.output
    assert (f"error: api_key_env: {server.url} answered HTTP 401 (Invalid API key); the API key is read from the "
            "environment variable RLAIF_TEST_KEY, which was refused") in result.output
    assert not any(secret in p.read_text() for p in (tmp_path / "run" / "sample").iterdir() if p.is_file())
    result = _invoke([*args[:-4], "--out", tmp_path / "run"], env={"OPENAI_API_KEY": None})
    assert result.exit_code == 1 and "environment variable OPENAI_API_KEY, which is not set" in result.output
    assert _invoke(args, env={"RLAIF_TEST_KEY": "sk-right"}).exit_code == 0


def test_requests_are_shared_among_several_servers(stand_in):
    first, second = stand_in(), stand_in()
    engine = OpenAIEngine([first.url, second.url], "stand-in", concurrency=4)
    assert [r.text for r in _ask(engine, 8)] == [f"reply {100 + i}" for i in range(8)]
    assert len(first.bodies) >= 3 and len(second.bodies) >= 3 and len(first.bodies) + len(second.bodies) == 8
    assert engine.stats()["servers"] == {first.url: len(first.bodies), second.url: len(second.bodies)}


def test_engine_settings_are_checked_when_the_config_is_built(tmp_path):
    from rlaif.critique import CritiqueConfig
    from rlaif.sample import SampleConfig

    with pytest.raises(ConfigError, match="base_url: engine openai sends its requests to a server"):
        CritiqueConfig(engine="openai")
    with pytest.raises(ConfigError, match=r"base_url: used only with engine: openai"):
        SampleConfig(base_url=["http://127.0.0.1:8000/v1"])
    with pytest.raises(ConfigError, match=r"concurrency: used only with engine: openai"):
        CritiqueConfig(concurrency=2)
    with pytest.raises(ConfigError, match=r"kv_memory_gb: not used with engine: openai"):
        CritiqueConfig(engine="openai", base_url=["http://127.0.0.1:8000/v1"], kv_memory_gb=1)
    config = CritiqueConfig(engine="openai", base_url=["http://h:1/v1"], concurrency=2, request_timeout=5)
    assert config.engine == "openai" and config.base_url == ["http://h:1/v1"]


def test_a_recipe_can_send_critique_to_servers_but_not_sample(tmp_path):
    """A recipe's critique starts from the recipe's model, which a server can serve; its sample stage samples from
    the policy the run has just trained, which no server serves yet."""
    from rlaif.recipe import load_recipe, stage_config
    from rlaif.records import DataError

    _prompts(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("prompts: prompts.txt\ncritique:\n  engine: openai\n  base_url:\n    - http://a:8000/v1\n"
                      "    - http://b:8000/v1\n  concurrency: 16\n")
    critique = stage_config(load_recipe(recipe), "critique", {})
    assert (critique.engine, critique.base_url, critique.concurrency) == ("openai", ["http://a:8000/v1",
                                                                                     "http://b:8000/v1"], 16)
    recipe.write_text("prompts: prompts.txt\ncritique:\n  base_url: [http://127.0.0.1:8000/v1]\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml:3: critique: base_url: used only with engine: openai"):
        load_recipe(recipe)
    recipe.write_text("prompts: prompts.txt\nsample:\n  engine: openai\n  base_url: [http://a:8000/v1]\n")
    with pytest.raises(DataError, match=r"recipe.yaml:3: sample.engine: openai: a recipe samples from the policy"):
        load_recipe(recipe)


def test_a_critique_directory_from_before_engines_resumes_and_refuses_another_engine(tmp_path):
    """engine came after critique's first runs, which ran as engine rlaif (CritiqueConfig.ADDED); the settings of
    how requests are sent (base_url, concurrency, ...) are volatile: they never stop a resume."""
    from dataclasses import asdict

    from rlaif.critique import CritiqueConfig
    from rlaif.records import DataError, open_stage

    stage, new = tmp_path / "critique", ("engine", "base_url", "api_key_env", "concurrency", "request_timeout")
    before = {k: v for k, v in asdict(CritiqueConfig()).items() if k not in new}
    open_stage(stage, "critique", before, volatile=CritiqueConfig.VOLATILE, added=CritiqueConfig.ADDED)
    (stage / "turns.jsonl").write_text('{"id": "a/0"}\n')
    remote = asdict(CritiqueConfig(engine="openai", base_url=["http://h:1/v1"], concurrency=2))
    with pytest.raises(DataError, match="engine: this critique run was made before engine existed, which it ran as "
                                        "'rlaif', now 'openai'"):
        open_stage(stage, "critique", remote, volatile=CritiqueConfig.VOLATILE, added=CritiqueConfig.ADDED)
    open_stage(stage, "critique", asdict(CritiqueConfig(batch_size=4)), volatile=CritiqueConfig.VOLATILE,
               added=CritiqueConfig.ADDED)


def test_labels_from_a_server_that_sends_no_log_probabilities_are_a_clear_error(served, tmp_path):
    url, name = served
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"id": "p", "prompt": "Hi?", "chosen": "Hello there.", "rejected": "Go away."}) + "\n")
    result = _invoke(["label", "--candidates", pairs, "--out", tmp_path / "run", "-k", "1", "--no-cot",
                      "--engine", "openai", "--base-url", url, "--labeler", name])
    assert result.exit_code == 1, result.output
    assert f"error: engine: {url} sent no log-probabilities" in result.output
    assert not (tmp_path / "run" / "label" / "preferences.jsonl").exists() or \
        not (tmp_path / "run" / "label" / "preferences.jsonl").read_text()
