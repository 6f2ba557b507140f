"""The data-file cases (tests/cases/): files other tools write, and files one rlaif stage writes for the next.

Every reader of a user's file or another stage's file reads text the same way (records.read_text / iter_jsonl /
parse_yaml): a byte-order mark is not data, CRLF line ends are fine, and U+2028, U+2029 and U+0085 inside a string
are text, never line breaks. Every number read is finite. Several annotators of one prompt are normal data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlaif.cli import cli
from rlaif.loaders import load_prompts
from rlaif.records import DataError, JsonlWriter, iter_jsonl, read_jsonl, write_jsonl

CASES = Path(__file__).parent / "cases"
# Every character str.splitlines() breaks a line at (JSON escapes the ASCII ones; U+0085, U+2028 and U+2029 it may
# leave raw), and a byte-order mark inside a string.
BREAKS = "a\nb\rc\r\nd\x0be\x0cf\x1cg\x1dh\x1ei\x85j\u2028k\u2029l \ufeffm"
BOM = b"\xef\xbb\xbf"


def import_cli(path: Path, out: Path, *flags: str):
    return CliRunner().invoke(cli, ["rankings", "import", str(path), "--out", str(out), *flags])


def as_table(rows):
    return [(r.get("annotator"), r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows]


# --------------------------------------------------------------------------------------------------------------------
# unicode-line-separators


@pytest.mark.parametrize(("name", "text"), [("rankings_u2028.jsonl", "\u2028"), ("pairs_nel.jsonl", "\x85")])
def test_raw_line_separators_inside_strings_import(tmp_path, name, text):
    out = tmp_path / "human.jsonl"
    result = import_cli(CASES / "unicode-line-separators" / name, out)
    assert result.exit_code == 0, result.output
    rows = list(read_jsonl(out))
    assert len(rows) == 1 and text in rows[0]["chosen"][0]["content"] + rows[0]["rejected"][0]["content"]
    # Written escaped: a reader that splits on every Unicode line break still sees one row per line.
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1


def test_label_reads_candidates_with_u2028():
    from rlaif.label import load_pairs

    pairs = load_pairs(CASES / "unicode-line-separators" / "candidates_u2028.jsonl")
    assert len(pairs) == 1 and "\u2028" in pairs[0].first


def test_label_and_constitution_diff_read_preference_rows_given_as_text(tmp_path):
    from rlaif.label import load_pairs

    yo = [{"role": "user", "content": "Yo"}]
    rows = save(tmp_path / "pairs.jsonl", jsonl({"id": "p1", "prompt": SAY, "chosen": HI, "rejected": "No."},
                                                {"id": "p2", "prompt": yo, "rejected": "Go.",
                                                 "chosen": [{"role": "assistant", "content": "Hey"}]}))
    assert [(p.id, p.prompt, p.first, p.second) for p in load_pairs(rows)] == [
        ("p1", [{"role": "user", "content": SAY}], HI, "No."), ("p2", yo, "Hey", "Go.")]
    for name in ("pairs.csv", "pairs.tsv"):
        (tmp_path / name).write_text("prompt,chosen,rejected\nHi,Hello,Go away\n", encoding="utf-8")
        with pytest.raises(DataError, match=rf"{name}: expected JSONL: candidates.jsonl rows \(id, prompt, responses\)"
                                            r".* or preference rows \(id, prompt, chosen, rejected\); `rlaif rankings "
                                            r"import FILE --out pairs.jsonl`"):
            load_pairs(tmp_path / name)
    result = CliRunner().invoke(cli, ["constitution", "diff", "default", "default", "--candidates",
                                      str(tmp_path / "pairs.csv")])
    assert result.exit_code == 1 and "expected JSONL" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(("row", "shown"), [({"p_chosen": 0.3, "source": "ai"}, "0.3 from source 'ai'"),
                                             ({"p_chosen": 0.9, "source": "ai"}, "0.9 from source 'ai'"),
                                             ({"p_chosen": 0.8, "source": "human"}, "0.8 from source 'human'")])
def test_the_labeler_report_card_takes_only_peoples_choices(tmp_path, row, shown):
    from rlaif.evaluate import load_human_pairs

    hard = {"id": "h1", "prompt": "Hi", "chosen": "Hello", "rejected": "Go.", "p_chosen": 1.0, "source": "human"}
    path = save(tmp_path / "pairs.jsonl", jsonl(hard, hard | {"id": "h2"} | row))
    with pytest.raises(DataError, match=rf"pairs.jsonl:2: p_chosen: {shown} is not a person's choice"):
        load_human_pairs(path)
    assert [(p.first, p.second) for p in load_human_pairs(save(tmp_path / "hard.jsonl", jsonl(hard)))] == [
        ("Hello", "Go.")]


def test_a_pair_several_people_answered_is_one_pair_facing_their_majority(tmp_path):
    """Rows of one pair (either order) are one pair, its `first` people's majority (a tie counting half each way);
    people evenly split leave it out. Ties are people's answers: read, not refused."""
    from rlaif.evaluate import load_human_pairs
    from rlaif.records import Tally

    ana = {"id": "t1-ana", "prompt": "Hi", "chosen": "Hello", "rejected": "Go.", "p_chosen": 1.0, "source": "human"}
    ben = ana | {"id": "t1-ben", "chosen": "Go.", "rejected": "Hello"}  # the other way
    cy = ana | {"id": "t1-cy", "p_chosen": 0.5}  # a tie
    dee = {"id": "t2-dee", "prompt": "Bye", "chosen": "Farewell.", "rejected": "Later.", "p_chosen": 1.0,
           "source": "human"}
    eve = dee | {"id": "t2-eve", "chosen": "Later.", "rejected": "Farewell."}
    tally = Tally("pairs")
    pairs = load_human_pairs(save(tmp_path / "pairs.jsonl", jsonl(ana, ben, dee, eve, cy)), tally=tally)
    assert pairs == []  # t1: 1 + 0 + 0.5 of 3 is even; t2: one each way
    assert tally.counts() == {"read": 5, "used": 0, "left_out": 5, "left_out_answered_again": 3,
                              "left_out_people_tied": 2}
    pairs = load_human_pairs(save(tmp_path / "two.jsonl", jsonl(ana, dee, cy)))
    assert [(p.id, p.first, p.second) for p in pairs] == [("t1-ana", "Hello", "Go."), ("t2-dee", "Farewell.", "Later.")]


def test_preferences_written_by_label_read_back_by_reward_and_dpo(tmp_path):
    from rlaif.rankings import load_mix, load_preferences  # load_mix: the reader of `rlaif reward` and `rlaif dpo`

    row = {"id": "c-1-0-1", "prompt": [{"role": "user", "content": "Write a two-line greeting."}],
           "chosen": [{"role": "assistant", "content": "Hello there,\u2028have a nice day."}],
           "rejected": [{"role": "assistant", "content": "Hi."}], "p_chosen": 0.7, "source": "ai"}
    path = tmp_path / "preferences.jsonl"
    with JsonlWriter(path) as out:
        out.write(row)
    assert load_preferences(path)[0]["chosen"] == row["chosen"]
    assert load_mix([str(path)], "skip", False)[0][0]["chosen"] == row["chosen"]


# --------------------------------------------------------------------------------------------------------------------
# excel-bom-csv


@pytest.mark.parametrize(("name", "ids", "tags"), [
    ("prompts_excel.csv", ["rt-001", "hp-001"], [["red-team"], ["helpful"]]),
    ("prompts_excel_prompt_first.csv", ["hp-001"], [None]),
    ("prompts_notepad.jsonl", ["hp-001"], [["helpful"]]),
    ("prompts_notepad.txt", None, [None, None]),
])
def test_prompt_files_with_a_byte_order_mark_keep_their_ids(name, ids, tags):
    rows = load_prompts(CASES / "excel-bom-csv" / name)
    if ids is not None:
        assert [r["id"] for r in rows] == ids
    assert [r.get("tags") for r in rows] == tags
    assert rows[0]["prompt"][0]["content"].startswith("How")
    assert not any("\ufeff" in m["content"] or "\r" in m["content"] for r in rows for m in r["prompt"])


# --------------------------------------------------------------------------------------------------------------------
# non-finite-numbers


@pytest.mark.parametrize(("name", "message"), [
    ("rankings_nan.jsonl", "rankings_nan.jsonl:1: scores[0]: expected a finite number, got nan"),
    ("rankings_nan.csv", "rankings_nan.csv:2: score: expected a finite number, got nan"),
])
def test_nan_scores_are_refused_and_nothing_is_written(tmp_path, name, message):
    out = tmp_path / "out.jsonl"
    result = import_cli(CASES / "non-finite-numbers" / name, out)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_infinite_score_is_named_by_its_line(tmp_path):
    from rlaif.rankings import import_rankings

    lines = (CASES / "non-finite-numbers" / "rankings_nan.jsonl").read_text(encoding="utf-8").splitlines()
    path = tmp_path / "inf.jsonl"
    path.write_text(lines[0].replace("NaN", "5") + "\n" + lines[1] + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"inf.jsonl:2: scores\[0\]: expected a finite number, got inf"):
        import_rankings(path)


def test_nan_row_weight_is_refused_before_the_reward_model_loads():
    from rlaif.rankings import load_mix

    with pytest.raises(DataError, match=r"prefs_weight_nan.jsonl:1: weight: expected a finite number >= 0, got nan"):
        load_mix([str(CASES / "non-finite-numbers" / "prefs_weight_nan.jsonl")], "skip", False)


# --------------------------------------------------------------------------------------------------------------------
# multiple-annotators

EGG, OVAL = "Put it in boiling water for 9 minutes.", "Eggs are oval."


@pytest.mark.parametrize(("name", "table"), [
    ("two_annotators.csv", [("ann-1", EGG, OVAL), ("ann-2", OVAL, EGG)]),
    ("two_annotators_agree.csv", [("ann-1", EGG, OVAL), ("ann-2", EGG, OVAL)]),
    ("two_annotators_agree.jsonl", [("ann-1", EGG, OVAL), ("ann-2", EGG, OVAL)]),
    ("two_annotators_disagree.jsonl", [("ann-1", EGG, OVAL), ("ann-2", OVAL, EGG)]),
    ("two_annotators_rankings.jsonl", [("ann-1", EGG, OVAL), ("ann-1", EGG, "Microwave it."),
                                       ("ann-1", "Microwave it.", OVAL), ("ann-2", EGG, OVAL),
                                       ("ann-2", EGG, "Microwave it."), ("ann-2", OVAL, "Microwave it.")]),
])
def test_each_annotator_gives_its_own_pairs(tmp_path, name, table):
    out = tmp_path / "human.jsonl"
    result = import_cli(CASES / "multiple-annotators" / name, out)
    assert result.exit_code == 0, result.output
    rows = list(read_jsonl(out))
    assert as_table(rows) == table
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(r["chosen"][0]["content"] != r["rejected"][0]["content"] for r in rows)


def test_agreeing_annotators_mix_into_one_pair_of_weight_two(tmp_path):
    from rlaif.rankings import load_mix

    rows, _ = load_mix([str(CASES / "multiple-annotators" / "two_annotators_agree.csv")], "skip", False)
    assert len(rows) == 1 and rows[0]["weight"] == 2.0 and rows[0]["p_chosen"] == 1.0
    assert rows[0]["chosen"][0]["content"] == EGG and "annotator" not in rows[0]
    assert [e["annotator"] for e in rows[0]["provenance"]] == ["ann-1", "ann-2"]


# --------------------------------------------------------------------------------------------------------------------
# Every loader of a user's file: BOM + CRLF, and raw U+2028 / U+0085 inside strings


def save(path: Path, text: str) -> Path:
    """As Excel and Notepad save: a UTF-8 byte-order mark and CRLF line ends."""
    path.write_bytes(BOM + text.replace("\n", "\r\n").encode("utf-8"))
    return path


def jsonl(*rows: dict) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


SAY = "Say hi\u2028and bye\x85now."  # a prompt holding raw separators
HI = "Hi\u2028there\x85friend."  # a reply holding them
HH = {"chosen": f"\n\nHuman: {SAY}\n\nAssistant: {HI}", "rejected": f"\n\nHuman: {SAY}\n\nAssistant: No."}
PREF = {"id": "p1", "prompt": [{"role": "user", "content": SAY}], "chosen": [{"role": "assistant", "content": HI}],
        "rejected": [{"role": "assistant", "content": "No."}], "p_chosen": 0.8, "source": "ai"}


def test_every_prompt_and_pair_loader_reads_bom_crlf_and_raw_separators(tmp_path):
    from rlaif.evaluate import load_human_pairs
    from rlaif.label import load_pairs
    from rlaif.loaders import load_hh_preferences
    from rlaif.rankings import import_rankings, load_preferences
    from rlaif.sft import to_prompt_completion

    prompts = {
        "p.jsonl": jsonl({"id": "q1", "prompt": SAY}),
        "p.csv": f'id,prompt\nq1,"{SAY}"\n',
        "p.txt": f"{SAY}\n",
    }
    for name, text in prompts.items():
        rows = load_prompts(save(tmp_path / name, text))
        assert [r["prompt"][0]["content"] for r in rows] == [SAY], name
    rankings = {
        "r.jsonl": jsonl({"prompt": SAY, "responses": [HI, "No."], "ranks": [1, 2]}),
        "r.csv": f'prompt,response,rank\n"{SAY}","{HI}",1\n"{SAY}",No.,2\n',
        "pairs.jsonl": jsonl({"prompt": SAY, "chosen": HI, "rejected": "No."}),
        "hh.jsonl": jsonl(HH),
    }
    for name, text in rankings.items():
        rows = import_rankings(save(tmp_path / name, text))
        assert as_table(rows) == [(None, HI, "No.")] and rows[0]["prompt"][-1]["content"] == SAY, name
    assert as_table(load_preferences(save(tmp_path / "prefs.jsonl", jsonl(PREF)))) == [(None, HI, "No.")]
    assert as_table(load_hh_preferences(tmp_path / "hh.jsonl")) == [(None, HI, "No.")]
    assert [(p.first, p.second) for p in load_human_pairs(tmp_path / "hh.jsonl")] == [(HI, "No.")]
    candidates = save(tmp_path / "candidates.jsonl", jsonl({"id": "c1", "prompt": PREF["prompt"],
                                                            "responses": [HI, "No."]}))
    assert [(p.id, p.first) for p in load_pairs(candidates)] == [("c1-0-1", HI)]
    sft = save(tmp_path / "sft.jsonl", jsonl({"id": "s1", "messages": PREF["prompt"] + PREF["chosen"]}))
    assert [to_prompt_completion(row, sft, line)["completion"] for line, row in iter_jsonl(sft)] == [PREF["chosen"]]


def test_score_reads_candidates_with_bom_crlf_and_raw_separators(tmp_path):
    from rlaif.score import ScoreConfig, run

    class FixedScore:  # the scorer's interface, without a model
        def scores(self, prompts, responses):
            return [(7.0, None) for _ in responses]

    candidates = save(tmp_path / "candidates.jsonl", "\n" + jsonl({"id": "c1", "prompt": PREF["prompt"],
                                                                   "responses": [HI, "No."]}))
    counts = run(ScoreConfig(candidates=str(candidates), out=str(tmp_path / "run")), scorer=FixedScore())
    assert counts["rows"] == 1
    ((_, row),) = iter_jsonl(tmp_path / "run" / "score" / "scores.jsonl")
    assert row["responses"] == [HI, "No."] and row["scores"] == [7.0, 7.0]


def test_bad_line_numbers_count_physical_lines(tmp_path):
    from rlaif.label import load_pairs

    path = save(tmp_path / "candidates.jsonl", "\n" + jsonl({"id": "c1", "prompt": PREF["prompt"],
                                                             "responses": [HI, "No."]}) + "\n{\"id\": 3}\n")
    with pytest.raises(DataError, match=r"candidates.jsonl:4: prompt"):
        load_pairs(path)


def test_every_yaml_loader_reads_bom_crlf_and_raw_separators(tmp_path):
    from rlaif.cli import stage_config
    from rlaif.constitution import load_constitution
    from rlaif.recipe import load_recipe
    from rlaif.sample import SampleConfig

    save(tmp_path / "lib.yaml", "family: harmless\nprinciples:\n  - id: alpha\n"
                                f"    critique_request: Critique {SAY}\n"
                                f"    revision_request: \"Revise {SAY}\"\n"
                                "    comparison_question: |\n"
                                f"      Which is {SAY}\n")
    save(tmp_path / "c.yaml", f'name: test\nversion: "1"\ndescription: {SAY}\nprinciples:\n  include: [lib.yaml]\n')
    constitution = load_constitution(tmp_path / "c.yaml")
    alpha = constitution.principles[0]
    assert constitution.description == SAY and alpha.critique_request == f"Critique {SAY}"
    assert alpha.revision_request == f"Revise {SAY}" and alpha.comparison_question == f"Which is {SAY}\n"
    recipe = load_recipe(save(tmp_path / "recipe.yaml", f"name: {SAY}\nprompts: p.txt\ncritique:\n  rounds: 2\n"))
    assert recipe.name == SAY and recipe.critique == {"rounds": 2} and recipe.lines["critique"] == 3
    config = stage_config(SampleConfig, str(save(tmp_path / "sample.yaml", f'prompts: "{SAY}"\nn: 3\n')), {})
    assert config.prompts == SAY and config.n == 3


def test_non_finite_numbers_in_a_constitution_are_refused(tmp_path):
    from rlaif.constitution import ConstitutionError, load_constitution

    (tmp_path / "lib.yaml").write_text("family: harmless\nprinciples:\n  - id: alpha\n    weight: .nan\n"
                                       "    critique_request: C.\n    revision_request: R.\n"
                                       "    comparison_question: Q?\n", encoding="utf-8")
    (tmp_path / "c.yaml").write_text('name: t\nversion: "1"\ndescription: D.\nprinciples:\n  include: [lib.yaml]\n',
                                     encoding="utf-8")
    with pytest.raises(ConstitutionError, match=r"lib.yaml:4:13: principles\[0\].weight: expected a finite number, "
                                                r"got .nan"):
        load_constitution(tmp_path / "c.yaml")


def test_an_undecodable_byte_is_named_by_file_line_and_column(tmp_path):
    from rlaif.constitution import ConstitutionError, load_constitution
    from rlaif.recipe import load_recipe

    bad = "prompts: p.txt\nname: caf\xe9\n".encode("latin-1")
    for name, load in (("recipe.yaml", load_recipe), ("c.yaml", load_constitution), ("p.txt", load_prompts)):
        (tmp_path / name).write_bytes(bad)
        error = ConstitutionError if name == "c.yaml" else DataError
        with pytest.raises(error, match=rf"{name}:2: not UTF-8 text: byte 0xe9 at column 10"):
            load(tmp_path / name)


# --------------------------------------------------------------------------------------------------------------------
# A file one stage writes is read by the next


def test_rows_with_every_line_break_round_trip_through_writers_and_readers(tmp_path):
    from rlaif.label import load_pairs as label_pairs
    from rlaif.ppo.checkpoints import truncate_log
    from rlaif.rankings import ImportConfig, load_mix, load_preferences
    from rlaif.rankings import run as import_run
    from rlaif.records import Manifest, open_stage, parse_yaml, read_text, write_config
    from rlaif.sft import to_prompt_completion

    prompt = [{"role": "user", "content": BREAKS}]
    reply = BREAKS + " (chosen)"
    candidates = tmp_path / "sample" / "candidates.jsonl"  # rlaif sample -> rlaif label / rlaif score
    with JsonlWriter(candidates) as out:
        out.write({"id": "c1", "prompt": prompt, "responses": [reply, "No."]})
    assert [(p.prompt, p.first) for p in label_pairs(candidates)] == [(prompt, reply)]

    pref = {"id": "c1-0-1", "prompt": prompt, "chosen": [{"role": "assistant", "content": reply}],
            "rejected": [{"role": "assistant", "content": "No."}], "p_chosen": 0.9, "source": "ai",
            "principles": [BREAKS], "p_orders": {"chosen_first": 0.9}}
    labels = tmp_path / "label" / "preferences.jsonl"  # rlaif label -> rlaif reward / rlaif dpo
    with JsonlWriter(labels) as out:
        out.write(pref)
    sft = tmp_path / "critique" / "sft.jsonl"  # rlaif critique -> rlaif sft
    write_jsonl(sft, [{"id": "s1", "messages": prompt + pref["chosen"]}])
    assert [to_prompt_completion(row, sft, line)["prompt"] for line, row in iter_jsonl(sft)] == [prompt]
    assert load_preferences(labels) == [pref]
    assert load_mix([str(labels)], "skip", False)[0][0]["principles"] == [BREAKS]

    human = tmp_path / "human.jsonl"  # rlaif rankings import -> rlaif reward
    source = tmp_path / "team.jsonl"
    source.write_text(jsonl({"prompt": prompt, "chosen": reply, "rejected": "No.", "annotator": BREAKS}),
                      encoding="utf-8")
    import_run(ImportConfig(rankings=str(source), out=str(human)))
    (row,) = load_preferences(human)
    assert row["prompt"] == prompt and row["chosen"][0]["content"] == reply and row["annotator"] == BREAKS

    samples = tmp_path / "ppo" / "samples.jsonl"  # rlaif ppo's log, cut back to the last checkpoint on resume
    with JsonlWriter(samples) as out:
        for step in (1, 2):
            out.write({"id": f"step-{step}", "step": step, "response": BREAKS})
    truncate_log(samples, 1)
    assert [row["response"] for row in read_jsonl(samples)] == [BREAKS]

    for path in (candidates, labels, sft, human, samples):  # escaped: any line splitter sees one row per line
        assert len(path.read_text(encoding="utf-8").splitlines()) == 1, path

    config = {"prompts": BREAKS, "n": 2}  # a stage's config.yaml is read back on resume
    stage = tmp_path / "stage"
    open_stage(stage, "sample", config)
    assert parse_yaml(read_text(stage / "config.yaml"))[0] == config
    assert isinstance(open_stage(stage, "sample", config), Manifest)
    write_config(stage, config)
    assert len(read_text(stage / "config.yaml").splitlines()) == 2


def test_label_and_score_refuse_two_rows_of_one_id_by_line(tmp_path):
    """Stages write their rows by id, once each: a repeated id would stop a run halfway (or lose a row), so it is
    refused when the file is read, before any model."""
    from rlaif.label import load_pairs
    from rlaif.score import ScoreConfig, run

    row = {"id": "c1", "prompt": PREF["prompt"], "responses": ["Yes.", "No."]}
    candidates = save(tmp_path / "candidates.jsonl", jsonl(row) + jsonl({**row, "responses": ["A.", "B."]}))
    with pytest.raises(DataError, match=r"candidates.jsonl:2: id: duplicate id 'c1' \(first on line 1\)"):
        load_pairs(candidates)
    with pytest.raises(DataError, match=r"candidates.jsonl:2: id: duplicate id 'c1' \(first on line 1\)"):
        run(ScoreConfig(candidates=str(candidates), out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_a_stage_refuses_to_resume_or_report_on_an_input_file_that_changed(tmp_path):
    """The rows of a stage directory come from one version of its input: edited in between, a rerun would keep
    rows of removed prompts and report counts of the new file."""
    from rlaif.score import ScoreConfig, run

    class FixedScore:  # the scorer's interface, without a model
        def scores(self, prompts, responses):
            return [(7.0, None) for _ in responses]

    row = {"id": "c1", "prompt": PREF["prompt"], "responses": ["Yes.", "No."]}
    candidates = save(tmp_path / "candidates.jsonl", jsonl(row))
    config = ScoreConfig(candidates=str(candidates), out=str(tmp_path / "run"))
    run(config, scorer=FixedScore())
    assert run(config, scorer=FixedScore())["rows"] == 1  # unchanged: finished, nothing redone
    save(tmp_path / "candidates.jsonl", jsonl({**row, "id": "c2"}))
    with pytest.raises(DataError, match=r"candidates.jsonl: changed since this score run began .*another --out"):
        run(config, scorer=FixedScore())
