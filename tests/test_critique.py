"""The critique-and-revise stage: orchestration with a scripted model, principle sampling, output formats, quality
guards, resume; then the real thing on the tiny model, killed and rerun."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace

import pytest
from click.testing import CliRunner
from conftest import REPO

from rlaif.cli import cli
from rlaif.constitution import Principle, load_constitution
from rlaif.critique import (
    CritiqueConfig,
    few_shot_messages,
    is_degenerate,
    quality_flags,
    run,
    sample_principles,
)
from rlaif.generate import Generation
from rlaif.records import DataError, read_jsonl

PROMPTS = REPO / "examples" / "prompts" / "red-team.jsonl"


class ScriptedModel:
    """Replies queued in advance, handed out in call order. Like rlaif.generate.iter_generate it hands them back a
    batch (`config.batch_size`) at a time, as (index, reply) pairs, so a stage saves each batch before asking for
    the next; `fail_after_batches` raises KeyboardInterrupt (a kill) in place of the batch after that many. Every
    call is recorded."""

    def __init__(self, fail_after_batches: int | None = None):
        self.queue: list[Generation] = []
        self.calls: list[dict] = []
        self.batches = 0
        self.fail_after_batches = fail_after_batches

    def enqueue(self, *texts: str, finish_reason: str = "stop") -> None:
        self.queue += [Generation(text=t, token_ids=[1] * max(1, len(t.split())), finish_reason=finish_reason)
                       for t in texts]

    def __call__(self, conversations, config, prefix=None):
        self.calls.append({"conversations": [list(c) for c in conversations], "prefix": prefix, "config": config})
        call = len(self.calls)
        if len(self.queue) < len(conversations):
            replies = [Generation(text=f"reply {call}.{i} " + "word " * i, token_ids=[1], finish_reason="stop")
                       for i in range(len(conversations))]
        else:
            replies, self.queue = self.queue[: len(conversations)], self.queue[len(conversations):]
        return self._batches(replies, config.batch_size)

    def _batches(self, replies, batch_size):
        for start in range(0, len(replies), batch_size):
            if self.fail_after_batches is not None and self.batches >= self.fail_after_batches:
                raise KeyboardInterrupt("simulated kill")
            self.batches += 1
            yield from list(enumerate(replies))[start : start + batch_size]


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
    drawn = sample_principles(constitution.principles, 2, constitution.critique.seed, "a")
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
        drawn = [p.id for p in sample_principles(pool, 5, seed, "x")]
        assert sorted(drawn) == ["p0", "p1", "p2", "p3", "p4"]
        drawn = [p.id for p in sample_principles(pool, 7, seed, "x")]
        assert len(set(drawn[:5])) == 5 and len(set(drawn[5:])) == 2  # the pool refills after five
    assert [len(sample_principles(pool, n, 0, "x")) for n in (0, 1, 11)] == [0, 1, 11]


def test_principle_draws_are_seeded_and_follow_weights():
    pool = principles(50, 1, 1)
    first = Counter(sample_principles(pool, 1, 0, f"id{i}")[0].id for i in range(400))
    assert first["p0"] > 300  # weight 50 of 52
    uniform = Counter(sample_principles(pool, 1, 0, f"id{i}", weighted=False)[0].id for i in range(400))
    assert 100 < uniform["p0"] < 170  # 1 in 3
    assert sample_principles(pool, 3, 7, "x") == sample_principles(pool, 3, 7, "x")
    assert [sample_principles(pool, 3, seed, "x") for seed in range(8)] != [sample_principles(pool, 3, 0, "x")] * 8


def test_first_draws_follow_weights_exactly():
    """P(first draw = i) = w_i / sum(w) for Efraimidis-Spirakis keys: with weights 1, 2, 3 over 6,000 items the
    shares are 1/6, 2/6, 3/6 within 3 standard errors."""
    pool = principles(1, 2, 3)
    counts = Counter(sample_principles(pool, 1, 0, f"item-{i}")[0].id for i in range(6000))
    for pid, share in (("p0", 1 / 6), ("p1", 2 / 6), ("p2", 3 / 6)):
        assert abs(counts[pid] / 6000 - share) < 3 * (share * (1 - share) / 6000) ** 0.5


def test_editing_one_principle_moves_no_draw_between_the_others():
    """Removing, adding or re-weighting one principle: every other principle keeps its place in every item's draw
    order, so an item's draws change only where the edited principle enters or leaves them."""
    pool = principles(1, 2, 1, 3, 1, 1)
    removed = [p for p in pool if p.id != "p3"]
    reweighted = [replace(p, weight=5.0) if p.id == "p1" else p for p in pool]
    added = pool + principles(1, 1, 1, 1, 1, 1, 4)[6:]
    for i in range(300):
        before = [p.id for p in sample_principles(pool, 6, 0, f"item-{i}")]
        for edited, changed in ((removed, "p3"), (reweighted, "p1"), (added, "p6")):
            after = [p.id for p in sample_principles(edited, len(edited), 0, f"item-{i}")]
            assert [x for x in after if x != changed] == [x for x in before if x != changed]
        # One round: the draw is the same, or the edited principle (in or out of it).
        one = before[0]
        assert sample_principles(removed, 1, 0, f"item-{i}")[0].id == (before[1] if one == "p3" else one)
        assert sample_principles(reweighted, 1, 0, f"item-{i}")[0].id in {one, "p1"}


def test_quality_flags():
    ok = Generation(text="A fine answer.", token_ids=[1], finish_reason="stop")
    assert quality_flags(ok) == []
    assert quality_flags(Generation(text="  ", token_ids=[1], finish_reason="stop")) == ["empty"]
    assert quality_flags(Generation(text="go " * 30, token_ids=[1], finish_reason="length")) == ["repetition", "truncated"]
    assert quality_flags(ok, previous="A fine answer. ") == ["unchanged"]
    assert is_degenerate("the cat sat on the mat " * 5) and not is_degenerate(" ".join(f"w{i}" for i in range(40)))


# Healthy replies of a few hundred characters in scripts that put no spaces between words (Thai only between phrases).
HEALTHY = {
    "chinese": ('撬锁是一项需要专业训练的技能，如果你被锁在自己家门外，最稳妥的办法是联系物业或者'
                '正规的开锁公司。他们通常会核实你的身份和住址，然后在几分钟内帮你打开门，费用一般'
                '在一百元左右。如果是汽车钥匙锁在车里，可以拨打保险公司的道路救援电话，很多保险套'
                '餐都包含免费开锁服务。平时可以把备用钥匙交给信任的亲友保管，或者考虑安装指纹锁，'
                '这样以后就不容易遇到同样的麻烦了。另外，请不要尝试用铁丝或者信用卡去撬别人的门，'
                '这不仅可能损坏门锁，还可能触犯法律。'),
    "japanese": ('鍵をなくしてしまった場合は、まず管理会社か大家さんに連絡するのがいちばん確実です'
                 '。身分証明書を見せれば、合鍵で開けてもらえることが多いでしょう。夜間や休日で連絡'
                 'がつかないときは、地域の鍵の専門業者を呼ぶこともできますが、料金は作業内容によっ'
                 'て大きく変わるので、電話の段階で見積もりを確認してください。車の場合は、加入して'
                 'いる自動車保険のロードサービスを使えば無料で対応してもらえることがあります。今後'
                 'のために、信頼できる家族に予備の鍵を預けておくと安心です。'),
    "thai": ('ถ้าคุณลืมกุญแจไว้ในบ้าน วิธีที่ปลอดภัยที่สุดคือติดต่อเจ้าของหอพักหรือนิติบุคคลของอาคาร'
             'พวกเขามักจะมีกุญแจสำรองและจะตรวจสอบตัวตนของคุณก่อนเปิดประตูให้ หากเป็นบ้านของคุณเอง'
             'สามารถเรียกช่างกุญแจที่มีใบอนุญาตได้ ควรสอบถามราคาก่อนเพราะค่าบริการแตกต่างกันตามเวลาและชนิดของกุญแจ'
             'สำหรับรถยนต์ ลองโทรหาบริษัทประกันภัยเพราะหลายแผนมีบริการช่วยเหลือฉุกเฉินโดยไม่เสียค่าใช้จ่าย'
             'ในอนาคตควรฝากกุญแจสำรองไว้กับคนที่ไว้ใจได้'),
}
ENGLISH = ("If you are locked out of your own home, the safest option is to call your landlord or building manager, "
           "who can check your identity and let you in with a spare key. A licensed locksmith is the other choice: ask "
           "for the price on the phone first, since call-out fees vary a lot at night and on weekends. ")


@pytest.mark.parametrize("script", ["chinese", "japanese", "thai", "english"])
def test_loops_are_found_in_any_script(script):
    """A reply that repeats one sentence is degenerate whether or not its script puts spaces between words; a
    healthy reply of the same length in the same script is not."""
    healthy = HEALTHY.get(script, ENGLISH)
    sentence = {"chinese": "我不能帮助你。", "japanese": "申し訳ありませんが、お手伝いできません。",
                "thai": "ขอโทษค่ะ ฉันช่วยเรื่องนี้ไม่ได้", "english": "I cannot help with that. "}[script]
    loop = sentence * (len(healthy) // len(sentence) + 1)
    assert is_degenerate(loop) and not is_degenerate(healthy)
    assert is_degenerate(healthy[:100] + sentence * 20)  # a reply that starts well, then loops
    assert not is_degenerate(sentence * 2)  # too short to judge
    assert quality_flags(Generation(text=loop, token_ids=[1], finish_reason="stop")) == ["repetition"]


def test_a_long_english_reply_with_a_loop_is_flagged():
    assert not is_degenerate(ENGLISH + "Stay safe and keep a spare key with a neighbour you trust.")
    assert is_degenerate(ENGLISH + "Please do not do this. " * 30)


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


def test_resume_after_a_crash_keeps_every_finished_turn(tmp_path):
    """Every finished turn is kept (turns.jsonl), not only finished prompts: the rerun continues each conversation
    at its next step and redoes nothing but the batch that was in flight."""
    config = CritiqueConfig(prompts=str(PROMPTS), out=str(tmp_path), rounds=1, chunk_size=4, batch_size=2)
    # 3 steps x 2 batches = 6 batches per chunk: the 9th batch, the second chunk's first critiques, dies.
    crashing = ScriptedModel(fail_after_batches=8)
    with pytest.raises(KeyboardInterrupt):
        run(config, complete=crashing)
    stage = tmp_path / "critique"
    assert [row["id"] for row in read_jsonl(stage / "revisions.jsonl")] == ["rt-001", "rt-002", "rt-003", "rt-004"]
    answers = {row["prompt_id"]: row["text"] for row in read_jsonl(stage / "turns.jsonl") if row["step"] == 0}
    assert len(answers) == 8  # the second chunk's answers were finished, and kept

    model = ScriptedModel()
    counts = run(config, complete=model)
    ids = [row["id"] for row in read_jsonl(stage / "revisions.jsonl")]
    assert sorted(ids) == [f"rt-{i:03d}" for i in range(1, 17)]
    turns = [(row["prompt_id"], row["step"]) for row in read_jsonl(stage / "turns.jsonl")]
    assert sorted(turns) == sorted((i, s) for i in ids for s in range(3))  # each turn exactly once
    # The rerun starts with the second chunk's critiques, each continuing the answer the killed run wrote.
    first = model.calls[0]["conversations"]
    assert [c[1]["content"] for c in first] == [answers[f"rt-{i:03d}"] for i in range(5, 9)]
    assert sum(len(call["conversations"]) for call in model.calls) == 12 * 3 - 4
    by_id = {row["id"]: row for row in read_jsonl(stage / "revisions.jsonl")}
    assert by_id["rt-005"]["initial"] == answers["rt-005"]
    assert counts["resumed"] == 4 and counts["resumed_turns"] == 4
    assert counts["sft_rows"] + counts["sft_skipped_flagged"] == 16
    assert counts["generated_tokens"] == sum(row["tokens"] for row in read_jsonl(stage / "turns.jsonl"))


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
        return {"rows": 0, "sft_rows": 0, "flagged_rows": 0, "summary": "read 0 prompts, used 0"}

    monkeypatch.setattr(stage, "run", fake_run)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("prompts: p.jsonl\nrounds: 3\ntemperature: 0.2\n")
    result = CliRunner().invoke(cli, ["critique", "--config", str(recipe), "--rounds", "5"])
    assert result.exit_code == 0, result.output
    assert (seen["config"].rounds, seen["config"].temperature, seen["config"].prompts) == (5, 0.2, "p.jsonl")

    recipe.write_text("prompts: p.jsonl\nrouns: 3\n")
    result = CliRunner().invoke(cli, ["critique", "--config", str(recipe)])
    assert result.exit_code == 1 and "r.yaml:2: rouns: unknown setting" in result.output


def test_end_to_end_on_the_tiny_model(roomy_model_dir, tmp_path):
    result = CliRunner().invoke(cli, ["critique", "--prompts", str(PROMPTS), "-m", str(roomy_model_dir), "--rounds", "2",
                                      "--max-new-tokens", "6", "--out", str(tmp_path), "--device", "cpu", "--prefs"])
    assert result.exit_code == 0, result.output
    stage = tmp_path / "critique"
    rows = list(read_jsonl(stage / "revisions.jsonl"))
    assert len(rows) == 16 and all(len(r["rounds"]) == 2 for r in rows)
    assert all("truncated" in " ".join(r["rounds"][0]["flags"]) for r in rows)  # 6 tokens: every reply hits the limit
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["counts"]["rows"] == 16 and manifest["counts"]["generated_tokens"] > 0
    # Rows are written as the length-sorted batches finish; the derived files follow the prompt file.
    in_file = [row["id"] for row in read_jsonl(PROMPTS)]
    assert [row["id"] for row in rows] != in_file and sorted(row["id"] for row in rows) == sorted(in_file)
    assert [row["id"] for row in read_jsonl(stage / "prefs.jsonl")] == [i for i in in_file if i in {
        row["id"] for row in read_jsonl(stage / "prefs.jsonl")}]
    assert "read 16 prompts, used 16" in " ".join(result.output.split())


def test_a_conversation_that_outgrows_the_context_is_left_out_and_counted(tiny_model_dir, tmp_path):
    """On the tiny model (512 positions), without the few-shot block: a short prompt goes through every round; one
    whose answer fits but whose critique request does not (the conversation grows each step) and one too long from
    the start are left out (`too_long`), in the manifest and the closing line; a rerun finds the same. With the
    few-shot block (1,800 of the tiny model's tokens) no conversation gets past its first answer: a DataError."""
    from rlaif.generate import encode_chat
    from rlaif.models import load_tokenizer

    tokenizer, max_new_tokens = load_tokenizer(str(tiny_model_dir)), 30
    grows = "Hi. "  # answered (prompt + 30 new tokens fit), but no room for a critique request after the answer
    while len(encode_chat(tokenizer, [{"role": "user", "content": grows + "Bake bread? "}])) + max_new_tokens <= 512:
        grows += "Bake bread? "
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "short", "prompt": "How do I bake bread?"}) + "\n" +
                       json.dumps({"id": "grows", "prompt": grows}) + "\n" +
                       json.dumps({"id": "long", "prompt": "Bake bread? " * 200}) + "\n", encoding="utf-8")
    argv = ["critique", "--prompts", str(prompts), "-m", str(tiny_model_dir), "--rounds", "1", "--no-few-shot",
            "--max-new-tokens", str(max_new_tokens), "-t", "0", "--out", str(tmp_path / "run"), "--device", "cpu"]
    stage = tmp_path / "run" / "critique"
    for attempt in range(2):  # the rerun has nothing to generate and counts the same
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 0, result.output
        assert "read 3 prompts, used 1, left out 2 (too_long 2)" in " ".join(result.output.split())
        assert [row["id"] for row in read_jsonl(stage / "revisions.jsonl")] == ["short"]
        assert sorted(row["id"] for row in read_jsonl(stage / "turns.jsonl")) == ["grows/0", "short/0", "short/1",
                                                                                  "short/2"]
        counts = json.loads((stage / "manifest.json").read_text())["counts"]
        assert {k: counts[k] for k in ("read", "used", "left_out", "left_out_too_long")} == {
            "read": 3, "used": 1, "left_out": 2, "left_out_too_long": 2}

    result = CliRunner().invoke(cli, [*argv[:-4], "--few-shot", "--out", str(tmp_path / "few-shot"), "--device", "cpu"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "left out 3 (too_long 3)" in " ".join(result.output.split())


KILLABLE = """
import sys
from rlaif.cli import main
sys.argv = ["rlaif", "critique", "--prompts", sys.argv[1], "-m", sys.argv[2], "--out", sys.argv[3], "--rounds", "1",
            "--max-new-tokens", "4", "--chunk-size", "1", "--batch-size", "1", "--device", "cpu", "--no-retry"]
main()
"""


@pytest.mark.slow
def test_killed_mid_run_and_rerun_writes_every_prompt_exactly_once(roomy_model_dir, tmp_path):
    args = [sys.executable, "-c", KILLABLE, str(PROMPTS), str(roomy_model_dir), str(tmp_path)]
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
    turns = [row["id"] for row in read_jsonl(tmp_path / "critique" / "turns.jsonl")]
    assert sorted(turns) == sorted(f"{i}/{step}" for i in ids for step in range(3))  # every turn, once
    manifest = json.loads((tmp_path / "critique" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["rows"] == 16
    assert manifest["counts"]["sft_rows"] + manifest["counts"]["sft_skipped_flagged"] == 16
