"""The judging side's cases (tests/cases/*): loops in text without spaces, label templates that hide a reply, and
pairs that say nothing (an empty reply, two identical replies) kept away from the labeler, the scorer and the judge.
No model is loaded: scripted models and stand-in labelers only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlaif.cli import cli
from rlaif.constitution import check, load_constitution
from rlaif.critique import CritiqueConfig
from rlaif.critique import run as critique
from rlaif.evaluate import EvalConfig, evaluate_policies, load_human_pairs
from rlaif.generate import Generation
from rlaif.label import LabelConfig
from rlaif.label import run as label
from rlaif.records import DataError, Manifest, Tally, read_jsonl, write_jsonl
from rlaif.score import ScoreConfig
from rlaif.score import run as score

CASES = Path(__file__).parent / "cases"
PROMPT = [{"role": "user", "content": "How do I store bleach?"}]


# --------------------------------------------------------------------------------------------------------------------
# repetition-without-spaces


def test_a_chinese_loop_is_flagged_retried_and_kept_out_of_sft_like_an_english_one(tmp_path):
    replies = {"zh-1": ["我不能帮你撬锁。", "这个回答可以更有帮助。", "我不能帮助你。" * 40],
               "en-1": ["I can't help with that.", "The answer could be kinder.", "I cannot help with that. " * 20]}

    def complete(conversations, config, prefix):  # answer, critique, revision; the revisions loop, retries too
        out = []
        for conversation in conversations:
            pid = "zh-1" if any("邻居" in m["content"] for m in conversation) else "en-1"
            step = min(sum(m["role"] == "assistant" for m in conversation), 2)
            out.append(Generation(text=replies[pid][step], token_ids=[1] * 10, finish_reason="stop"))
        return out

    counts = critique(CritiqueConfig(prompts=str(CASES / "repetition-without-spaces" / "prompts.jsonl"),
                                     out=str(tmp_path), rounds=1, few_shot=False), complete=complete)
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "critique" / "revisions.jsonl")}
    for pid in ("zh-1", "en-1"):
        assert rows[pid]["rounds"][0]["flags"] == ["revision:repetition", "revision:retried"]
        assert rows[pid]["flags"] == ["final:repetition"]
    assert list(read_jsonl(tmp_path / "critique" / "sft.jsonl")) == []
    assert counts["flagged_rows"] == 2 and counts["sft_skipped_flagged"] == 2


# --------------------------------------------------------------------------------------------------------------------
# template-missing-variable

BAD_TEMPLATE = CASES / "template-missing-variable" / "bad_template.yaml"
REFUSED = [("templates.label: must use {response_b} (the labeler would never see reply (B)); required: {conversation} "
            "{question} {response_a} {response_b}"),
           ("templates.score: must use {response} (the scorer would never see the reply it scores); required: "
            "{conversation} {principles} {response}")]


def test_a_template_that_hides_a_reply_is_refused_with_file_line_and_field(monkeypatch):
    monkeypatch.chdir(BAD_TEMPLATE.parent)
    assert [str(p) for p in check(BAD_TEMPLATE.name)] == [f"bad_template.yaml:8:3: {REFUSED[0]}",
                                                          f"bad_template.yaml:21:3: {REFUSED[1]}"]
    result = CliRunner().invoke(cli, ["constitution", "check", BAD_TEMPLATE.name])
    assert result.exit_code == 1 and f"bad_template.yaml:8:3: {REFUSED[0]}" in " ".join(result.output.split())


@pytest.mark.parametrize("template, missing", [
    ("label", "{response_a}"), ("label", "{question}"), ("label", "{conversation}"), ("label_cot", "{response_b}"),
    ("score", "{principles}"), ("score", "{conversation}")])
def test_every_template_must_use_every_variable_its_task_needs(tmp_path, template, missing):
    from rlaif.constitution import DEFAULT_TEMPLATES

    text = DEFAULT_TEMPLATES[template].replace(missing, "")
    body = "\n".join("    " + line for line in text.split("\n"))
    path = tmp_path / "c.yaml"
    path.write_text(f'name: c\nversion: "1"\ndescription: d\nprinciples:\n  include: [harmless]\ntemplates:\n'
                    f"  {template}: |\n{body}\n", encoding="utf-8")
    [problem] = check(path)
    assert (problem.line, problem.column, problem.field) == (7, 3, f"templates.{template}")
    assert problem.message.startswith(f"must use {missing} ")


@pytest.mark.parametrize("command", [
    ["label", "--candidates", "{candidates}", "--labeler", "{missing}"],
    ["score", "--candidates", "{candidates}", "--labeler", "{missing}"],
    ["critique", "--prompts", "{prompts}", "--model", "{missing}"],
    ["eval", "labeler", "--pairs", "{pairs}", "--labeler", "{missing}"],
    ["run", "{recipe}"],
    ["run", "{recipe}", "--dry-run"]])
def test_stages_refuse_the_template_before_loading_a_model(tmp_path, command):
    candidates = tmp_path / "candidates.jsonl"
    write_jsonl(candidates, [{"id": "q", "prompt": PROMPT, "responses": ["Keep it sealed.", "Mix it with acid."]}])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"name: t\nout: {tmp_path / 'runs'}\nconstitution: {BAD_TEMPLATE}\nmodel: {tmp_path / 'none'}\n"
                      f"labeler: {tmp_path / 'none'}\nprompts: {CASES / 'repetition-without-spaces' / 'prompts.jsonl'}\n")
    values = {"candidates": candidates, "missing": tmp_path / "no-such-model", "recipe": recipe,
              "prompts": CASES / "repetition-without-spaces" / "prompts.jsonl",
              "pairs": CASES / "hh-empty-reply-late-failure" / "hh_with_empty.jsonl"}
    args = [a.format(**values) for a in command]
    args += ["--constitution", str(BAD_TEMPLATE)] if command[0] != "run" else []
    args += ["--out", str(tmp_path / "out")] if command[0] != "run" else []
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "templates.label: must use {response_b}" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------------------------------------------
# hh-empty-reply-late-failure (the labeler's report card) and pairs that say nothing


def test_eval_labeler_never_gets_an_empty_reply_and_counts_it():
    tally = Tally("pairs")
    pairs = load_human_pairs(CASES / "hh-empty-reply-late-failure" / "hh_with_empty.jsonl", 100, tally)
    assert len(pairs) == 3 and all(p.first.strip() and p.second.strip() for p in pairs)
    assert tally.counts() == {"read": 4, "used": 3, "left_out": 1, "left_out_empty_reply": 1}
    assert load_human_pairs(CASES / "hh-empty-reply-late-failure" / "hh_with_empty.jsonl", 2) == pairs[:2]


def test_eval_labeler_report_counts_the_pair_it_left_out(roomy_model_dir, tmp_path):
    result = CliRunner().invoke(cli, ["eval", "labeler", "--pairs", str(CASES / "hh-empty-reply-late-failure" /
                                      "hh_with_empty.jsonl"), "--labeler", str(roomy_model_dir), "--ensemble", "1",
                                      "--no-cot", "--injection-pairs", "0", "--out", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "labeler_report.json").read_text())
    assert report["pairs"] == 3 and report["counts"]["left_out_empty_reply"] == 1
    assert all(m["pairs"] == 3 for m in report["modes"].values())
    assert "read 4 pairs, used 3, left out 1 (empty_reply 1)" in " ".join(result.output.split())


def test_eval_labeler_with_nothing_to_judge_stops_before_loading_a_model(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, [{"id": "a", "prompt": PROMPT, "chosen": "Same.", "rejected": " Same. "},
                       {"id": "b", "prompt": PROMPT, "chosen": "", "rejected": "Mix it."}])
    result = CliRunner().invoke(cli, ["eval", "labeler", "--pairs", str(path), "--labeler", str(tmp_path / "none"),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "read 2 pairs, used 0, left out 2 (empty_reply 1, identical_replies 1)" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


class StandIn:
    """A labeler that prefers whichever reply is longer, and records what it was asked."""

    name = "stand-in"

    def __init__(self):
        self.seen: list[tuple[str, str]] = []

    def fits(self, pair, principles):  # no context to run out of
        return True

    def judge(self, items):
        self.seen += [(pair.first, pair.second) for pair, _, _ in items]
        return [0.8 if len(pair.first) > len(pair.second) else 0.2 for pair, _, _ in items], [""] * len(items)


def test_label_never_judges_a_reply_against_itself_or_an_empty_one(tmp_path):
    candidates = tmp_path / "candidates.jsonl"
    write_jsonl(candidates, [{"id": "q", "prompt": PROMPT, "responses": ["Keep it sealed.", " Keep it sealed. ", "",
                                                                        "Mix it with vinegar, it cleans better."]}])
    labeler = StandIn()
    counts = label(LabelConfig(candidates=str(candidates), out=str(tmp_path)), labeler=labeler)
    assert [r["id"] for r in read_jsonl(tmp_path / "label" / "preferences.jsonl")] == ["q-0-3", "q-1-3"]
    assert all(a.strip() and b.strip() and a.strip() != b.strip() for a, b in labeler.seen)
    manifest = Manifest.load(tmp_path / "label").counts
    assert {k: manifest[k] for k in ("read", "used", "left_out_empty_reply", "left_out_identical_replies")} == {
        "read": 6, "used": 2, "left_out_empty_reply": 3, "left_out_identical_replies": 1}
    assert counts["summary"] == "read 6 pairs, used 2, left out 4 (empty_reply 3, identical_replies 1)"


def test_label_with_nothing_to_judge_stops_before_loading_a_model(tmp_path):
    candidates = tmp_path / "candidates.jsonl"
    write_jsonl(candidates, [{"id": "q", "prompt": PROMPT, "responses": ["Same.", "Same.", "  "]}])
    with pytest.raises(DataError, match=r"read 3 pairs, used 0, left out 3 \(empty_reply 2, identical_replies 1\)"):
        label(LabelConfig(candidates=str(candidates), out=str(tmp_path / "run"), labeler=str(tmp_path / "none")))
    assert not (tmp_path / "run").exists()


def test_score_leaves_empty_replies_out_and_counts_them(tmp_path):
    class Scorer:
        def __init__(self):
            self.asked: list[str] = []

        def scores(self, prompts, responses):
            self.asked += responses
            return [(7.0, {}) for _ in responses]

    candidates = tmp_path / "candidates.jsonl"
    write_jsonl(candidates, [{"id": "a", "prompt": PROMPT, "responses": ["Keep it sealed.", " "]},
                             {"id": "b", "prompt": PROMPT, "responses": ["", ""]}])
    scorer = Scorer()
    counts = score(ScoreConfig(candidates=str(candidates), out=str(tmp_path)), scorer=scorer)
    assert scorer.asked == ["Keep it sealed."]
    assert [(r["id"], r["responses"], r["scores"]) for r in read_jsonl(tmp_path / "score" / "scores.jsonl")] == [
        ("a", ["Keep it sealed.", " "], [7.0, None]), ("b", ["", ""], [None, None])]  # in place, null: not scored
    assert counts["summary"] == "read 4 responses, used 1, left out 3 (empty_reply 3)"
    assert Manifest.load(tmp_path / "score").counts["left_out_empty_reply"] == 3
    write_jsonl(candidates, [{"id": "b", "prompt": PROMPT, "responses": ["", ""]}])
    with pytest.raises(DataError, match="read 2 responses, used 0"):
        score(ScoreConfig(candidates=str(candidates), out=str(tmp_path / "again"), labeler=str(tmp_path / "none")))
    assert not (tmp_path / "again").exists()


def test_constitution_diff_relabels_only_pairs_that_say_something(tmp_path):
    from rlaif.diff import DiffConfig
    from rlaif.diff import run as diff

    candidates = tmp_path / "candidates.jsonl"
    write_jsonl(candidates, [{"id": "q", "prompt": PROMPT, "responses": ["Same.", "Same.", ""]}])
    with pytest.raises(DataError, match=r"used 0, left out 3 \(empty_reply 2, identical_replies 1\)"):
        diff(DiffConfig(a="default", b="harmless", candidates=str(candidates), out=str(tmp_path / "d.json"),
                        labeler=str(tmp_path / "none")))
    assert not (tmp_path / "d.json").exists()


def test_policy_judging_never_asks_about_empty_or_identical_replies(tmp_path):
    """A reply equal to its opponent's is a tie without the judge; an empty one is left out of the judge's win
    rate. When no pair needs the judge, no labeler is loaded (the labeler named here does not exist)."""
    run = tmp_path / "run"
    for stage, config in (("sft", {"model": "base-model"}), ("reward", {})):
        directory = run / "round-1" / stage
        directory.mkdir(parents=True)
        (directory / "config.yaml").write_text(json.dumps(config))
        Manifest(stage=stage, status="complete").save(directory)
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"id": "same", "prompt": "Hi?"}, {"id": "empty", "prompt": "Bye?"}])
    replies = {("base", "same"): "Hello!", ("sft", "same"): " Hello! ", ("base", "empty"): "Goodbye.",
               ("sft", "empty"): ""}
    write_jsonl(run / "eval" / "responses.jsonl", [
        {"id": f"{policy}/{pid}", "policy": policy, "prompt_id": pid, "tags": [], "prompt": PROMPT, "response": text,
         "tokens": 2, "finished": True, "logprob": -1.0, "base_logprob": -1.0, "reward": 0.0}
        for (policy, pid), text in replies.items()])
    summary = evaluate_policies(EvalConfig(run=str(run), prompts=str(prompts), labeler=str(tmp_path / "none"),
                                           temperature=0.7, max_new_tokens=8))
    rows = {r["id"]: r for r in read_jsonl(run / "eval" / "judgements.jsonl")}
    assert rows == {"sft>base/same": {"id": "sft>base/same", "not_judged": "identical_replies", "p": 0.5},
                    "sft>base/empty": {"id": "sft>base/empty", "left_out": "empty_reply", "p": None}}
    assert summary["results"]["all"]["sft"]["judge_win_vs_base"] == 0.5  # the tie; the empty pair is not counted
    # The tie is in the win rate, so it is used (without the judge), not left out.
    assert summary["judging"] == {"read": 2, "used": 1, "left_out": 1, "left_out_empty_reply": 1, "judged": 0,
                                  "identical_replies_tied": 1, "summary": "read 2 pairs for the judge, judged 0, 1 "
                                  "identical-reply pair counted as a tie, left out 1 (empty_reply 1)"}
    counts = Manifest.load(run / "eval").counts
    assert counts["judge_left_out_empty_reply"] == 1 and counts["judge_identical_replies_tied"] == 1
    assert "judge_left_out_identical_replies" not in counts and counts["judge_judged"] == 0
    # judgements.jsonl written before called the tie left out: a rerun reads it as the tie it is
    write_jsonl(run / "eval" / "judgements.jsonl", [{"id": "sft>base/same", "left_out": "identical_replies", "p": 0.5},
                                                    rows["sft>base/empty"]])
    again = evaluate_policies(EvalConfig(run=str(run), prompts=str(prompts), labeler=str(tmp_path / "none"),
                                         temperature=0.7, max_new_tokens=8))
    assert again["judging"] == summary["judging"]


def test_judging_summary_tells_judged_pairs_from_ties():
    from rlaif.evaluate import judging_summary

    tally = Tally("pairs for the judge", read=10, used=10)
    assert judging_summary(tally, 4) == "read 10 pairs for the judge, judged 6, 4 identical-reply pairs counted as ties"
    tally = Tally("pairs for the judge", read=3, used=2, left_out={"too_long": 1})
    assert judging_summary(tally, 0) == "read 3 pairs for the judge, judged 2, left out 1 (too_long 1)"


def test_the_shipped_constitutions_use_every_template_variable():
    from rlaif.constitution import shipped_names

    assert all(check(name) == [] for name in shipped_names())
    assert load_constitution("default").templates["label"].count("{response_b}") == 1


# --------------------------------------------------------------------------------------------------------------------
# Metrics that mean what they say


def test_a_tied_reward_is_half_right():
    from rlaif.reward import pair_metrics

    metrics = pair_metrics([0.0, 1.0, -1.0], [1.0, 0.9, 0.8])
    assert metrics["accuracy"] == pytest.approx(0.5)  # a tie, a win, a loss
    assert pair_metrics([0.0], [0.2])["accuracy"] == 0.5 and pair_metrics([0.0], [0.5])["accuracy"] is None


def test_labels_scored_in_one_order_say_nothing_about_consistency():
    import math

    from rlaif.evaluate import labeler_summary

    one = {"source": "ai", "p_chosen": 0.8, "principles": ["privacy"], "p_orders": {"chosen_first": 0.8},
           "consistent": True, "flags": []}
    both = {**one, "p_orders": {"chosen_first": 0.9, "chosen_second": 0.3}, "consistent": False}
    summary = labeler_summary([one, one])
    assert summary["both_orders"] == 0 and math.isnan(summary["consistency"])
    summary = labeler_summary([one, both])
    assert (summary["pairs"], summary["both_orders"], summary["consistency"]) == (2, 1, 0.0)
    assert summary["per_principle"]["privacy"]["both_orders"] == 1
