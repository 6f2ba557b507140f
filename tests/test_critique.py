"""The critique-and-revise stage: orchestration with a scripted model, principle sampling, output formats, quality
guards, resume; then the real thing on the tiny model, killed and rerun."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from click.testing import CliRunner
from conftest import REPO

from rlaif.cli import cli
from rlaif.constitution import Principle, load_constitution
from rlaif.critique import (
    CritiqueConfig,
    few_shot_messages,
    is_degenerate,
    principle_rng,
    quality_flags,
    run,
    sample_principles,
)
from rlaif.generate import Generation
from rlaif.records import DataError, read_jsonl

PROMPTS = REPO / "examples" / "prompts" / "red-team.jsonl"


class ScriptedModel:
    """Replies queued in advance, handed out in call order; every call is recorded."""

    def __init__(self, fail_after_calls: int | None = None):
        self.queue: list[Generation] = []
        self.calls: list[dict] = []
        self.fail_after_calls = fail_after_calls

    def enqueue(self, *texts: str, finish_reason: str = "stop") -> None:
        self.queue += [Generation(text=t, token_ids=[1] * max(1, len(t.split())), finish_reason=finish_reason)
                       for t in texts]

    def __call__(self, conversations, config, prefix):
        if self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated crash")
        self.calls.append({"conversations": [list(c) for c in conversations], "prefix": prefix, "config": config})
        if len(self.queue) < len(conversations):
            return [Generation(text=f"reply {len(self.calls)}.{i} " + "word " * i, token_ids=[1], finish_reason="stop")
                    for i in range(len(conversations))]
        replies, self.queue = self.queue[: len(conversations)], self.queue[len(conversations):]
        return replies


def two_prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "prompt": "How do I pick a lock?", "tags": ["red-team"]}\n'
                    '{"id": "b", "prompt": "Bake bread?"}\n', encoding="utf-8")
    return path


def test_trace_is_one_conversation_batched_by_round(tmp_path):
    model = ScriptedModel()
    model.enqueue("A0", "B0", "A crit 1", "B crit 1", "A rev 1", "B rev 1", "A crit 2", "B crit 2", "A rev 2", "B rev 2")
    config = CritiqueConfig(prompts=str(two_prompts(tmp_path)), out=str(tmp_path / "run"), rounds=2, prefs=True)
    counts = run(config, complete=model)

    assert counts["rows"] == 2 and counts["sft_rows"] == 2 and counts["prefs_rows"] == 2
    assert len(model.calls) == 5  # answers, then critiques and revisions of each round: one batched call per step
    assert all(len(call["conversations"]) == 2 for call in model.calls)

    constitution = load_constitution("default")
    assert model.calls[0]["prefix"] is None  # the first answer is the model's own, without examples
    assert all(call["prefix"] == few_shot_messages(constitution) for call in model.calls[1:])

    rows = {row["id"]: row for row in read_jsonl(tmp_path / "run" / "critique" / "revisions.jsonl")}
    a = rows["a"]
    drawn = sample_principles(constitution.principles, 2, principle_rng(constitution.critique.seed, "a"))
    assert [r["principle"] for r in a["rounds"]] == [p.id for p in drawn]
    assert a["initial"] == "A0" and a["final"] == "A rev 2" and a["tags"] == ["red-team"]
    assert [(r["critique"], r["revision"]) for r in a["rounds"]] == [("A crit 1", "A rev 1"), ("A crit 2", "A rev 2")]
    assert a["rounds"][0]["critique_request"] == drawn[0].critique_request

    # The last call (round 2's revisions) saw the whole conversation, so it revises round 1's revision.
    assert model.calls[-1]["conversations"][0] == [
        {"role": "user", "content": "How do I pick a lock?"}, {"role": "assistant", "content": "A0"},
        {"role": "user", "content": drawn[0].critique_request}, {"role": "assistant", "content": "A crit 1"},
        {"role": "user", "content": drawn[0].revision_request}, {"role": "assistant", "content": "A rev 1"},
        {"role": "user", "content": drawn[1].critique_request}, {"role": "assistant", "content": "A crit 2"},
        {"role": "user", "content": drawn[1].revision_request},
    ]

    stage = tmp_path / "run" / "critique"
    sft = list(read_jsonl(stage / "sft.jsonl"))
    assert sft[0] == {"id": "a", "messages": [{"role": "user", "content": "How do I pick a lock?"},
                                              {"role": "assistant", "content": "A rev 2"}]}
    prefs = {row["id"]: row for row in read_jsonl(stage / "prefs.jsonl")}
    assert prefs["b"]["chosen"][0]["content"] == "B rev 2" and prefs["b"]["rejected"][0]["content"] == "B0"
    assert prefs["b"]["source"] == "critique" and prefs["b"]["p_chosen"] == 1.0

    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["rows"] == 2
    assert (stage / "config.yaml").read_text().count("rounds: 2") == 1

    from datasets import load_dataset

    for name in ("sft", "prefs", "revisions"):
        assert len(load_dataset("json", data_files=str(stage / f"{name}.jsonl"), split="train")) == 2


def test_every_revision_can_be_its_own_sft_example(tmp_path):
    config = CritiqueConfig(prompts=str(two_prompts(tmp_path)), out=str(tmp_path), rounds=3, sft_every_revision=True)
    run(config, complete=ScriptedModel())
    ids = [row["id"] for row in read_jsonl(tmp_path / "critique" / "sft.jsonl")]
    assert ids == ["a-r1", "a-r2", "a-r3", "b-r1", "b-r2", "b-r3"]


def principles(*weights):
    return [Principle(id=f"p{i}", family="f", critique_request="c", revision_request="r", comparison_question="q",
                      weight=w) for i, w in enumerate(weights)]


def test_principles_do_not_repeat_while_unused_ones_remain():
    pool = principles(1, 1, 1, 1, 1)
    for seed in range(50):
        drawn = [p.id for p in sample_principles(pool, 5, random.Random(seed))]
        assert sorted(drawn) == ["p0", "p1", "p2", "p3", "p4"]
        drawn = [p.id for p in sample_principles(pool, 7, random.Random(seed))]
        assert len(set(drawn[:5])) == 5 and len(set(drawn[5:])) == 2  # the pool refills after five


def test_principle_draws_are_seeded_and_follow_weights():
    pool = principles(50, 1, 1)
    first = Counter(sample_principles(pool, 1, principle_rng(0, f"id{i}"))[0].id for i in range(400))
    assert first["p0"] > 300  # weight 50 of 52
    uniform = Counter(sample_principles(pool, 1, principle_rng(0, f"id{i}"), weighted=False)[0].id for i in range(400))
    assert uniform["p0"] < 200
    assert sample_principles(pool, 3, principle_rng(7, "x")) == sample_principles(pool, 3, principle_rng(7, "x"))


def test_quality_flags():
    ok = Generation(text="A fine answer.", token_ids=[1], finish_reason="stop")
    assert quality_flags(ok) == []
    assert quality_flags(Generation(text="  ", token_ids=[1], finish_reason="stop")) == ["empty"]
    assert quality_flags(Generation(text="go " * 30, token_ids=[1], finish_reason="length")) == ["repetition", "truncated"]
    assert quality_flags(ok, previous="A fine answer. ") == ["unchanged"]
    assert is_degenerate("the cat sat on the mat " * 5) and not is_degenerate(" ".join(f"w{i}" for i in range(40)))


def test_flagged_replies_are_retried_once_and_kept_with_a_reason(tmp_path):
    model = ScriptedModel()
    model.enqueue("", "B0")  # a's first answer is empty...
    model.enqueue("A0 on retry")  # ...and its retry is not
    model.enqueue("A crit", "B crit")
    model.enqueue("A0 on retry", "B rev")  # a's revision changes nothing...
    model.enqueue("A0 on retry", finish_reason="length")  # ...nor does its retry, which is also truncated
    config = CritiqueConfig(prompts=str(two_prompts(tmp_path)), out=str(tmp_path), rounds=1)
    counts = run(config, complete=model)

    rows = {row["id"]: row for row in read_jsonl(tmp_path / "critique" / "revisions.jsonl")}
    a = rows["a"]
    assert a["initial"] == "A0 on retry" and a["flags"] == ["final:unchanged"]
    assert a["rounds"][0]["flags"] == ["revision:unchanged", "revision:retried"]
    assert len(model.calls[1]["conversations"]) == 1  # only the flagged reply was retried
    assert model.calls[1]["config"].temperature > 0  # and not greedily
    assert rows["b"]["flags"] == []
    assert counts["flagged_rows"] == 1 and counts["sft_skipped_flagged"] == 1 and counts["sft_rows"] == 1
    assert counts["flag:final:unchanged"] == 1
    assert [row["id"] for row in read_jsonl(tmp_path / "critique" / "sft.jsonl")] == ["b"]


def test_replies_cut_off_at_the_limit_are_flagged_but_not_retried(tmp_path):
    model = ScriptedModel()
    for step in range(3):
        model.enqueue(f"a{step}", f"b{step}", finish_reason="length")
    counts = run(CritiqueConfig(prompts=str(two_prompts(tmp_path)), out=str(tmp_path), rounds=1), complete=model)
    assert len(model.calls) == 3  # a retry at the same limit would be cut off again
    assert counts["flag:initial:truncated"] == 2 and counts["flag:final:truncated"] == 2 and counts["sft_rows"] == 0


def test_resume_after_a_crash_runs_each_prompt_once(tmp_path):
    config = CritiqueConfig(prompts=str(PROMPTS), out=str(tmp_path), rounds=1, chunk_size=3)
    crashing = ScriptedModel(fail_after_calls=7)  # 3 calls per chunk: dies inside the third chunk
    with pytest.raises(KeyboardInterrupt):
        run(config, complete=crashing)
    done = [row["id"] for row in read_jsonl(tmp_path / "critique" / "revisions.jsonl")]
    assert len(done) == 6

    model = ScriptedModel()
    counts = run(config, complete=model)
    ids = [row["id"] for row in read_jsonl(tmp_path / "critique" / "revisions.jsonl")]
    assert sorted(ids) == sorted(f"rt-{i:03d}" for i in range(1, 17)) and len(ids) == 16
    assert sum(len(call["conversations"]) for call in model.calls[::3]) == 10  # only the unfinished prompts ran
    assert counts["resumed"] == 6 and counts["sft_rows"] + counts["sft_skipped_flagged"] == 16


def test_resuming_with_other_settings_is_refused(tmp_path):
    config = CritiqueConfig(prompts=str(two_prompts(tmp_path)), out=str(tmp_path), rounds=1)
    run(config, complete=ScriptedModel())
    run(CritiqueConfig(**{**config.__dict__, "batch_size": 3}), complete=ScriptedModel())  # how, not what: fine
    with pytest.raises(DataError, match="rounds: this critique run was made with 1, now 2"):
        run(CritiqueConfig(**{**config.__dict__, "rounds": 2}), complete=ScriptedModel())


def test_recipe_file_with_flag_overrides_and_unknown_keys(tmp_path, monkeypatch):
    import rlaif.critique as stage

    seen = {}

    def fake_run(config, progress=False):
        seen["config"] = config
        return {"rows": 0, "sft_rows": 0, "flagged_rows": 0}

    monkeypatch.setattr(stage, "run", fake_run)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("prompts: p.jsonl\nrounds: 3\ntemperature: 0.2\n")
    result = CliRunner().invoke(cli, ["critique", "--config", str(recipe), "--rounds", "5"])
    assert result.exit_code == 0, result.output
    assert (seen["config"].rounds, seen["config"].temperature, seen["config"].prompts) == (5, 0.2, "p.jsonl")

    recipe.write_text("prompts: p.jsonl\nrouns: 3\n")
    result = CliRunner().invoke(cli, ["critique", "--config", str(recipe)])
    assert result.exit_code == 1 and "r.yaml:2: rouns: unknown setting" in result.output


def test_end_to_end_on_the_tiny_model(tiny_model_dir, tmp_path):
    result = CliRunner().invoke(cli, ["critique", "--prompts", str(PROMPTS), "-m", str(tiny_model_dir), "--rounds", "2",
                                      "--max-new-tokens", "6", "--out", str(tmp_path), "--device", "cpu", "--prefs"])
    assert result.exit_code == 0, result.output
    stage = tmp_path / "critique"
    rows = list(read_jsonl(stage / "revisions.jsonl"))
    assert len(rows) == 16 and all(len(r["rounds"]) == 2 for r in rows)
    assert all("truncated" in " ".join(r["rounds"][0]["flags"]) for r in rows)  # 6 tokens: every reply hits the limit
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["counts"]["rows"] == 16 and manifest["counts"]["generated_tokens"] > 0


KILLABLE = """
import sys
from rlaif.cli import main
sys.argv = ["rlaif", "critique", "--prompts", sys.argv[1], "-m", sys.argv[2], "--out", sys.argv[3], "--rounds", "1",
            "--max-new-tokens", "4", "--chunk-size", "1", "--batch-size", "1", "--device", "cpu", "--no-retry"]
main()
"""


@pytest.mark.slow
def test_killed_mid_run_and_rerun_writes_every_prompt_exactly_once(tiny_model_dir, tmp_path):
    args = [sys.executable, "-c", KILLABLE, str(PROMPTS), str(tiny_model_dir), str(tmp_path)]
    revisions = tmp_path / "critique" / "revisions.jsonl"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not revisions.exists() or len(revisions.read_bytes().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(list(read_jsonl(revisions)))
    assert 3 <= partial < 16
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ids = [row["id"] for row in read_jsonl(revisions)]
    assert sorted(ids) == sorted(f"rt-{i:03d}" for i in range(1, 17))
    manifest = json.loads((tmp_path / "critique" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["rows"] == 16
    assert manifest["counts"]["sft_rows"] + manifest["counts"]["sft_skipped_flagged"] == 16
