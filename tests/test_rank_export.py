"""Choosing the pairs people rank, the task files (ours and Label Studio's), and the answers back as preference rows."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter

import pytest
from click.testing import CliRunner

from rlaif.cli import cli
from rlaif.rank_export import ExportConfig, run, select
from rlaif.rankings import import_rankings
from rlaif.records import ConfigError, DataError, Tally, read_jsonl


def pref(i, p, principle="harmless", consistent=True, principle_p=None, source="ai"):
    """An AI label as `rlaif label` writes it: pair q{i}, chosen "good {i}" over "bad {i}" with probability p."""
    return {"id": f"q{i}-0-1", "prompt": [{"role": "user", "content": f"Question {i}?"}],
            "chosen": [{"role": "assistant", "content": f"good {i}"}],
            "rejected": [{"role": "assistant", "content": f"bad {i}"}], "p_chosen": p, "source": source,
            "principles": list(principle_p or [principle]), "principle_p": principle_p or {principle: p},
            "consistent": consistent}


def write_lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def ids(tasks):
    return [t["id"] for t in tasks]


# --------------------------------------------------------------------------------------------------------------------
# Selection


def test_least_certain_first():
    rows = [("f", pref(i, p)) for i, p in enumerate([0.9, 0.55, 0.7, 0.51, 0.8])]
    tasks = select(rows, budget=3, random_share=0)
    assert ids(tasks) == ["q3-0-1", "q1-0-1", "q2-0-1"]  # p 0.51, 0.55, 0.7
    # only 0.51 is within UNCERTAIN_MARGIN (0.05) of 0.5: the others fill the budget, least certain first
    assert [(t["why"], t["ai_p"], t["principle"]) for t in tasks] == [("uncertain", 0.51, "harmless"),
                                                                      ("stratified", 0.55, "harmless"),
                                                                      ("stratified", 0.7, "harmless")]
    assert tasks[0]["responses"] == ["good 3", "bad 3"] and tasks[0]["source_file"] == "f"


def test_doubt_is_the_label_stages_own_flag_where_the_row_has_flags():
    """`rlaif label` flags low_confidence under its own min_margin (a recipe may set 0.1, or 0): a row with flags is
    doubted as the label stage said; one without (from elsewhere) by UNCERTAIN_MARGIN."""
    rows = [("f", {**pref(0, 0.58), "flags": ["low_confidence"]}),  # label.min_margin 0.1
            ("f", {**pref(1, 0.51), "flags": []}),  # label.min_margin 0
            ("f", pref(2, 0.52)), ("f", pref(3, 0.57))]
    tasks = select(rows, budget=4, random_share=0)
    assert [(t["id"], t["why"]) for t in tasks] == [("q2-0-1", "uncertain"), ("q0-0-1", "uncertain"),
                                                    ("q1-0-1", "stratified"), ("q3-0-1", "stratified")]


def test_inconsistent_and_disagreeing_pairs_come_before_uncertain_ones():
    rows = [("f", pref(0, 0.51)), ("f", pref(1, 0.9, consistent=False)),
            ("f", pref(2, 0.6, principle_p={"harmless": 0.9, "honest": 0.3})), ("f", pref(3, 0.95))]
    tasks = select(rows, budget=3, random_share=0)
    # Filed under the principle whose label is closest to 0.5: honest (|0.3 - 0.5| < |0.9 - 0.5|).
    assert [(t["id"], t["why"], t["principle"]) for t in tasks] == [
        ("q2-0-1", "principles_disagree", "honest"), ("q1-0-1", "inconsistent", "harmless"),
        ("q0-0-1", "uncertain", "harmless")]


def test_principles_take_turns_among_the_doubtful_pairs():
    # harmless has ten pairs closer to 0.5 than any of helpful's, all doubtful: unstratified, it would take the
    # whole budget
    rows = [("f", pref(i, 0.501 + i / 1000, "harmless")) for i in range(10)]
    rows += [("f", pref(10 + i, 0.52 + i / 1000, "helpful")) for i in range(10)]
    tasks = select(rows, budget=10, random_share=0)
    assert Counter((t["principle"], t["why"]) for t in tasks) == {("harmless", "uncertain"): 5,
                                                                  ("helpful", "uncertain"): 5}
    assert ids(tasks)[:4] == ["q0-0-1", "q10-0-1", "q1-0-1", "q11-0-1"]  # in turns, each the least certain left


def test_uncertainty_comes_before_coverage():
    # The review's case: 30 harassment pairs the AI doubts (p 0.50-0.52) and 33 directness pairs it is sure of
    # (0.95-0.99). Every exported pair is a doubtful one; none of the confident ones is called uncertain.
    rows = [("f", pref(i, 0.5 + 0.02 * i / 29, "harassment")) for i in range(30)]
    rows += [("f", pref(30 + i, 0.95 + 0.04 * i / 32, "directness")) for i in range(33)]
    tasks = select(rows, budget=20, random_share=0)
    assert ids(tasks) == [f"q{i}-0-1" for i in range(20)]  # the 20 closest to 0.5, least certain first
    assert {(t["principle"], t["why"]) for t in tasks} == {("harassment", "uncertain")}
    # A budget past the doubtful pairs: the confident ones come after them all, as `stratified`, least certain first
    tasks = select(rows, budget=40, random_share=0)
    assert [t["why"] for t in tasks] == ["uncertain"] * 30 + ["stratified"] * 10
    assert ids(tasks)[30:] == [f"q{i}-0-1" for i in range(30, 40)]
    assert all(t["ai_p"] >= 0.95 for t in tasks if t["why"] == "stratified")
    # Principles with no doubtful pair at all still take turns, but as `stratified`
    confident = [("f", pref(i, 0.9 + i / 100, "harmless")) for i in range(5)]
    confident += [("f", pref(5 + i, 0.7 + i / 100, "helpful")) for i in range(5)]
    tasks = select(confident, budget=4, random_share=0)
    assert [(t["id"], t["why"]) for t in tasks] == [("q5-0-1", "stratified"), ("q0-0-1", "stratified"),
                                                    ("q6-0-1", "stratified"), ("q1-0-1", "stratified")]


def test_flagged_pairs_come_first_whatever_their_principle():
    rows = [("f", pref(i, 0.5 + i / 1000, "harmless")) for i in range(6)]  # doubtful
    rows += [("f", pref(6 + i, 0.9, "helpful", consistent=False)) for i in range(3)]  # confident but inconsistent
    tasks = select(rows, budget=5, random_share=0)
    assert [(t["why"], t["principle"]) for t in tasks] == [("inconsistent", "helpful")] * 3 + [
        ("uncertain", "harmless")] * 2


def test_random_share_size_and_seed():
    rows = [("f", pref(i, 0.5 + i / 250)) for i in range(100)]
    tasks = select(rows, budget=20, random_share=0.25, seed=7)
    random_ids = {t["id"] for t in tasks if t["why"] == "random"}
    assert len(tasks) == 20 and len(random_ids) == 5
    spots = [i for i, t in enumerate(tasks) if t["why"] == "random"]
    assert spots[0] < 4 and spots[-1] > 15  # spread among the others: people who stop early answered some
    assert [t["id"] for t in tasks if t["why"] != "random"] == [f"q{i}-0-1" for i in range(20) if f"q{i}-0-1"
                                                                not in random_ids][:15]
    assert select(rows, budget=20, random_share=0.25, seed=7) == tasks  # reproducible
    other = {t["id"] for t in select(rows, budget=20, random_share=0.25, seed=8) if t["why"] == "random"}
    assert other != random_ids
    assert all(t["why"] != "random" for t in select(rows, budget=20, random_share=0, seed=7))


def test_overlap_counts():
    rows = [("f", pref(i, 0.5 + i / 100)) for i in range(40)]
    tasks = select(rows, budget=20, overlap=3, overlap_share=0.25)
    assert Counter(t["overlap"] for t in tasks) == {3: 5, 1: 15}
    assert Counter(t["overlap"] for t in select(rows, budget=20, overlap=3, overlap_share=0)) == {1: 20}


def test_human_rows_and_pairs_people_labelled_are_skipped(tmp_path):
    human = {"prompt": "Question 1?", "chosen": "bad 1", "rejected": "good 1", "p_chosen": 1.0, "source": "human"}
    path = write_lines(tmp_path / "p.jsonl", [pref(0, 0.6), pref(1, 0.51), human, pref(2, 0.7),
                                              {**pref(2, 0.55), "id": "again"}])
    tally = Tally("pairs")
    tasks = select([("p", row) for row in import_rankings(path, tally=tally)], budget=10, tally=tally)
    assert sorted(ids(tasks)) == ["q0-0-1", "q2-0-1"]  # q1: people labelled it; q2 once, its first label
    assert tally.counts() == {"read": 5, "used": 2, "left_out": 3, "left_out_human": 1,
                              "left_out_human_labelled": 1, "left_out_same_pair": 1}


def test_budget_over_available_exports_all_and_says_so(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [pref(i, 0.6) for i in range(6)])
    counts = run(ExportConfig(preferences=[str(path)], out=str(tmp_path / "t"), budget=50, random_share=0.5))
    assert (counts["tasks"], counts["available"], counts["random"]) == (6, 6, 3)
    assert len(list(read_jsonl(tmp_path / "t" / "tasks.jsonl"))) == 6
    result = CliRunner().invoke(cli, ["rankings", "export", str(path), "--budget", "50", "--out", str(tmp_path / "u")])
    assert result.exit_code == 0, result.output
    assert "the budget (50) is more than the 6 pairs available: all exported" in " ".join(result.output.split())


def test_the_same_id_in_two_files_gives_two_tasks(tmp_path):
    one = write_lines(tmp_path / "r1.jsonl", [pref(0, 0.6)])
    two = write_lines(tmp_path / "r2.jsonl", [{**pref(1, 0.6), "id": "q0-0-1"}])
    run(ExportConfig(preferences=[str(one), str(two)], out=str(tmp_path / "t"), random_share=0))
    tasks = list(read_jsonl(tmp_path / "t" / "tasks.jsonl"))
    assert sorted((t["id"], t["source_file"]) for t in tasks) == [("q0-0-1", str(one)), ("q0-0-1~2", str(two))]


@pytest.mark.parametrize(("settings", "error", "message"), [
    ({"budget": 0}, ConfigError, r"budget: expected a whole number of pairs >= 1, not 0"),
    ({"random_share": 1.5}, ConfigError, r"random_share: expected a share between 0 and 1"),
    ({"overlap_share": -0.1}, ConfigError, r"overlap_share: expected a share between 0 and 1"),
    ({"overlap": 0}, ConfigError, r"overlap: expected a whole number of annotators >= 1"),
    ({"rows": []}, DataError, r"p.jsonl: no rankings, pairs or labels in the file"),
    ({"rows": [{"prompt": "Q?", "chosen": "a", "rejected": "b", "p_chosen": 1.0, "source": "human"}]}, DataError,
     r"p.jsonl: nothing left to use: read 1 pair, used 0, left out 1 \(human 1\); export takes AI labels"),
])
def test_clear_errors(tmp_path, settings, error, message):
    path = write_lines(tmp_path / "p.jsonl", settings.pop("rows", [pref(0, 0.6)]))
    with pytest.raises(error, match=message):
        run(ExportConfig(preferences=[str(path)], out=str(tmp_path / "t"), **settings))
    assert not (tmp_path / "t").exists()


def test_a_directory_holding_answers_is_not_exported_over(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [pref(0, 0.6)])
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "rankings.jsonl").write_text("", encoding="utf-8")
    result = CliRunner().invoke(cli, ["rankings", "export", str(path), "--out", str(tmp_path / "t")])
    assert result.exit_code == 1 and "holds people's answers to the tasks there" in " ".join(result.output.split())
    assert not (tmp_path / "t" / "tasks.jsonl").exists()


def test_cli_export_prints_the_table(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [pref(0, 0.9, consistent=False), pref(1, 0.51, "helpful"),
                                              pref(2, 0.6, principle_p={"harmless": 0.7, "honest": 0.45})])
    result = CliRunner().invoke(cli, ["rankings", "export", str(path), "--budget", "3", "--random-share", "0",
                                      "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    lines = [line.split("│")[1:4] for line in result.output.splitlines() if line.count("│") == 4]
    assert [[cell.strip() for cell in line] for line in lines] == [
        ["inconsistent", "harmless", "1"], ["principles_disagree", "honest", "1"], ["uncertain", "helpful", "1"]]
    assert "3 tasks (0 random, 1 for 2 annotators)" in result.output
    assert {p.name for p in (tmp_path / "t").iterdir()} == {"tasks.jsonl", "label-studio.json", "label-studio.xml",
                                                            "guidelines.md", "README.txt"}
    readme = " ".join((tmp_path / "t" / "README.txt").read_text(encoding="utf-8").split())
    assert "rlaif rank serve" in readme and "better for the person asking" not in readme
    # better is helpful to a legitimate need and harmless and honest: on a red-team prompt, declining wins
    assert "helpful one for what the person legitimately needs, as long as it is also harmless and honest" in readme
    assert "the better reply declines or redirects safely" in readme


def test_guidelines_are_written_once_and_a_teams_copy_stays(tmp_path):
    from rlaif.rank_serve import DEFAULT_GUIDELINES

    path = write_lines(tmp_path / "p.jsonl", [pref(0, 0.6)])
    run(ExportConfig(preferences=[str(path)], out=str(tmp_path / "t")))
    guidelines = tmp_path / "t" / "guidelines.md"
    assert guidelines.read_text(encoding="utf-8") == DEFAULT_GUIDELINES
    assert "declines or steers to a safe alternative" in DEFAULT_GUIDELINES  # the harmless reading, not the asker's
    guidelines.write_text("Our own: prefer the shorter reply when both are right.\n", encoding="utf-8")
    run(ExportConfig(preferences=[str(path)], out=str(tmp_path / "t")))
    assert guidelines.read_text(encoding="utf-8") == "Our own: prefer the shorter reply when both are right.\n"


# --------------------------------------------------------------------------------------------------------------------
# Label Studio


def export(tmp_path, n=3, **settings):
    path = write_lines(tmp_path / "p.jsonl", [pref(i, 0.5 + (i + 1) / 100) for i in range(n)])
    run(ExportConfig(preferences=[str(path)], out=str(tmp_path / "t"), **{"random_share": 0, **settings}))
    tasks = list(read_jsonl(tmp_path / "t" / "tasks.jsonl"))
    return tasks, json.loads((tmp_path / "t" / "label-studio.json").read_text(encoding="utf-8"))


def test_label_studio_tasks_follow_the_documented_import_format(tmp_path):
    tasks, ls_tasks = export(tmp_path, n=12)
    # docs/source/guide/tasks.md, "Basic Label Studio JSON format": a list of tasks, each {"data": {...}}
    assert isinstance(ls_tasks, list) and all(set(t) == {"data"} for t in ls_tasks)
    for task, ls in zip(tasks, ls_tasks, strict=True):
        assert ls["data"]["rlaif_task"] == task["id"] and ls["data"]["prompt"] == task["prompt"]
        assert sorted([ls["data"]["a"], ls["data"]["b"]]) == sorted(task["responses"])
        assert ls["data"]["overlap"] == task["overlap"] and ls["data"]["rlaif_why"] == task["why"]
        assert "ai_p" not in ls["data"]  # the Data Manager shows data's columns: the AI's label would anchor
    shown_first = [ls["data"]["a"] == task["responses"][0] for task, ls in zip(tasks, ls_tasks)]
    assert 0 < sum(shown_first) < len(shown_first)  # the AI's pick is A on some tasks, B on others


def test_label_studio_config_uses_the_documented_tags(tmp_path):
    export(tmp_path)
    root = ET.fromstring((tmp_path / "t" / "label-studio.xml").read_text(encoding="utf-8"))
    assert root.tag == "View" and root.find(".//Pairwise") is None
    tags = {e.get("name"): e for e in root.iter() if e.get("name")}
    assert {name: e.tag for name, e in tags.items()} == {"prompt": "Paragraphs", "a": "Text", "b": "Text",
                                                         "preference": "Choices", "note": "TextArea"}
    assert {k: tags["prompt"].get(k) for k in ("value", "layout", "nameKey", "textKey")} == {
        "value": "$prompt", "layout": "dialogue", "nameKey": "role", "textKey": "content"}
    assert (tags["a"].get("value"), tags["b"].get("value")) == ("$a", "$b")
    choices = tags["preference"]
    assert (choices.get("choice"), choices.get("required")) == ("single-radio", "true")
    assert [c.get("alias") for c in choices.findall("Choice")] == ["A", "B", "tie"]
    assert "$rlaif_why" not in ET.tostring(root, encoding="unicode")  # the config never shows why a pair was chosen
    assert all(e.get("toName") in tags and tags[e.get("toName")].tag in ("Paragraphs", "Text")
               for e in root.iter() if e.get("toName"))


def ls_export(ls_tasks, answers):
    """Label Studio's JSON export of `ls_tasks` (docs/source/guide/export.md, "Label Studio JSON format of annotated
    tasks", field for field), `answers[i]` the annotations of task i as (user id, choice alias or None for a
    cancelled annotation, lead time)."""
    exported = []
    for i, (task, given) in enumerate(zip(ls_tasks, answers), start=1):
        exported.append({"id": i, "created_at": "2021-03-09T21:52:49.513742Z",
                         "updated_at": "2021-03-09T22:16:08.746926Z", "project": 83, "data": task["data"],
                         "annotations": [], "predictions": []})
        for j, (user, choice, lead_time) in enumerate(given):
            result = [] if choice is None else [
                {"from_name": "preference", "id": f"r{i}{j}", "to_name": "prompt", "type": "choices",
                 "value": {"choices": [choice]}},
                {"from_name": "note", "id": f"n{i}{j}", "to_name": "prompt", "type": "textarea",
                 "value": {"text": ["B rambles"]}}]
            exported[-1]["annotations"].append({
                "id": f"{1000 + 10 * i + j}", "result": result, "was_cancelled": choice is None,
                "ground_truth": False, "created_at": "2021-03-09T22:16:08.728353Z",
                "updated_at": "2021-03-09T22:16:08.728378Z", "lead_time": lead_time, "result_count": 0,
                "task": i, "completed_by": user})
    return exported


def test_label_studio_round_trip(tmp_path):
    tasks, ls_tasks = export(tmp_path)
    ai_pick = ["A" if ls["data"]["a"] == t["responses"][0] else "B" for t, ls in zip(tasks, ls_tasks)]
    other = {"A": "B", "B": "A"}
    path = tmp_path / "export.json"
    path.write_text(json.dumps(ls_export(ls_tasks, [
        [(10, ai_pick[0], 4.288), (11, other[ai_pick[0]], 12.5)],  # two people disagree on task 0
        [(10, "tie", 3.0)],
        [(11, None, 1.0)],  # skipped
    ]), indent=2), encoding="utf-8")
    tally = Tally("pairs")
    rows = import_rankings(path, tally=tally)
    t0, t1 = tasks[0]["responses"], tasks[1]["responses"]
    assert [(r["id"], r["chosen"][0]["content"], r["rejected"][0]["content"], r["p_chosen"], r["annotator"],
             r["seconds"]) for r in rows] == [(f"{tasks[0]['id']}-10", t0[0], t0[1], 1.0, "10", 4.288),
                                              (f"{tasks[0]['id']}-11", t0[1], t0[0], 1.0, "11", 12.5)]
    assert all(r["source"] == "human" and r["prompt"] == tasks[0]["prompt"] for r in rows)
    assert tally.counts() == {"read": 4, "used": 2, "left_out": 2, "left_out_skipped": 1, "left_out_tie": 1}
    half = import_rankings(path, ties="half")
    assert [(r["id"], r["p_chosen"], r["annotator"]) for r in half][2] == (tasks[1]["id"], 0.5, "10")
    assert sorted([half[2]["chosen"][0]["content"], half[2]["rejected"][0]["content"]]) == sorted(t1)
    with pytest.raises(DataError, match=r"export.json: \[1\].annotations\[0\].result: a tie \(ties are off"):
        import_rankings(path, ties="error")
    result = CliRunner().invoke(cli, ["rankings", "import", str(path), "--out", str(tmp_path / "human.jsonl")])
    assert result.exit_code == 0, result.output
    assert [r["annotator"] for r in read_jsonl(tmp_path / "human.jsonl")] == ["10", "11"]


def test_label_studio_rows_carry_why_the_pair_was_chosen_and_the_note(tmp_path):
    tasks, ls_tasks = export(tmp_path, random_share=0.34)  # one of the three drawn at random
    assert sorted(t["why"] for t in tasks) == ["random", "uncertain", "uncertain"]
    ai_pick = ["A" if ls["data"]["a"] == t["responses"][0] else "B" for t, ls in zip(tasks, ls_tasks)]
    other = {"A": "B", "B": "A"}
    exported = ls_export(ls_tasks, [[(10, ai_pick[0], 4.0), (11, other[ai_pick[0]], 6.0)], [(10, ai_pick[1], 3.0)],
                                    [(11, other[ai_pick[2]], 2.0)]])
    exported[2]["annotations"][0]["result"].pop()  # no note on this one
    # Saved elsewhere (a Downloads folder): `why` from the task's data, no `ai_p` without tasks.jsonl
    away = tmp_path / "downloads" / "export.json"
    away.parent.mkdir()
    away.write_text(json.dumps(exported), encoding="utf-8")
    rows = import_rankings(away)
    assert [(r["why"], r.get("note")) for r in rows] == [(tasks[0]["why"], "B rambles"), (tasks[0]["why"], "B rambles"),
                                                         (tasks[1]["why"], "B rambles"), (tasks[2]["why"], None)]
    assert not any("ai_p" in r for r in rows)
    # Saved in the tasks folder: `ai_p` too, the AI's P(this row's chosen is better)
    beside = tmp_path / "t" / "export.json"
    beside.write_text(json.dumps(exported), encoding="utf-8")
    rows = import_rankings(beside)
    assert [(r["annotator"], r["why"]) for r in rows] == [("10", tasks[0]["why"]), ("11", tasks[0]["why"]),
                                                          ("10", tasks[1]["why"]), ("11", tasks[2]["why"])]
    assert [r["ai_p"] for r in rows] == pytest.approx([tasks[0]["ai_p"], 1 - tasks[0]["ai_p"], tasks[1]["ai_p"],
                                                       1 - tasks[2]["ai_p"]])
    assert rows[1]["chosen"][0]["content"] == tasks[0]["responses"][1]  # 11 chose against the AI: ai_p < 0.5
    # A tasks.jsonl of another export (other replies under the same id) lends nothing but the data's `why`
    other_tasks = [{**t, "responses": ["x", "y"], "why": "stratified", "ai_p": 0.9} for t in tasks]
    write_lines(tmp_path / "t" / "tasks.jsonl", other_tasks)
    rows = import_rankings(beside)
    assert [r["why"] for r in rows] == [tasks[0]["why"], tasks[0]["why"], tasks[1]["why"], tasks[2]["why"]]
    assert not any("ai_p" in r for r in rows)


def test_an_annotators_latest_label_studio_answer_counts_whatever_the_lists_order(tmp_path):
    """Label Studio lists a task's annotations in no documented order: of one annotator's two answers to a task, the
    one with the later `updated_at` counts; a time that is not ISO 8601 is an error naming the annotation."""
    tasks, ls_tasks = export(tmp_path)
    ai_pick = "A" if ls_tasks[0]["data"]["a"] == tasks[0]["responses"][0] else "B"
    exported = ls_export(ls_tasks[:1], [[(10, ai_pick, 4.0), (10, {"A": "B", "B": "A"}[ai_pick], 9.0)]])
    newer, older = exported[0]["annotations"]
    newer["updated_at"], older["updated_at"] = "2021-03-10T08:00:00Z", "2021-03-10T07:59:59.5+00:00"
    path = tmp_path / "export.json"
    path.write_text(json.dumps(exported), encoding="utf-8")
    [row] = import_rankings(path)
    assert (row["chosen"][0]["content"], row["seconds"]) == (tasks[0]["responses"][0], 4.0)
    older["updated_at"] = "2021-03-10T08:00:01Z"
    path.write_text(json.dumps(exported), encoding="utf-8")
    [row] = import_rankings(path)
    assert (row["chosen"][0]["content"], row["seconds"]) == (tasks[0]["responses"][1], 9.0)
    newer["updated_at"] = "yesterday"
    path.write_text(json.dumps(exported), encoding="utf-8")
    with pytest.raises(DataError, match=r"export.json: \[0\].annotations\[0\].updated_at: expected an ISO 8601"):
        import_rankings(path)


@pytest.mark.parametrize(("make", "message"), [
    (lambda t: json.loads((t / "t" / "label-studio.json").read_text(encoding="utf-8")),
     (r"is the label-studio.json that `rlaif rankings export` wrote: the tasks to import into Label Studio, with no "
     r"answers")),
    # JSON-MIN: each task's data and its answer at the top level (Label Studio's "JSON-MIN" export)
    (lambda t: [{**ls["data"], "id": i, "preference": "A", "annotator": "ana@example.org", "lead_time": 3.0}
                for i, ls in enumerate(json.loads((t / "t" / "label-studio.json").read_text(encoding="utf-8")))],
     r"is Label Studio's JSON-MIN export .*export the project again as JSON \(not JSON-MIN\)"),
    (lambda t: ls_export(json.loads((t / "t" / "label-studio.json").read_text(encoding="utf-8")), [[], [], []]),
     r"no annotations in it: nobody has answered these tasks in Label Studio yet"),
])
def test_the_wrong_label_studio_file_says_what_it_is(tmp_path, make, message):
    export(tmp_path)
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(make(tmp_path)), encoding="utf-8")
    with pytest.raises(DataError, match=r"wrong.json: " + message):
        import_rankings(path)


def test_the_export_folder_and_its_tasks_file_are_not_answers(tmp_path):
    export(tmp_path)
    folder = tmp_path / "t"
    with pytest.raises(DataError, match=r"t: is a folder: its tasks have no answers from the rank page yet "
                                        r"\(rankings.jsonl\): rank them \(rlaif rank serve "):
        import_rankings(folder)
    tasks_named = r"tasks.jsonl:1: is the tasks file of `rlaif rankings export`: the pairs for people to rank, with no " \
                  r"answers. Rank them \(rlaif rank serve .*\) and import the answers: .*rankings.jsonl"
    with pytest.raises(DataError, match=tasks_named):
        import_rankings(folder / "tasks.jsonl")
    with pytest.raises(DataError, match=tasks_named):  # nor are they labels to export from
        run(ExportConfig(preferences=[str(folder / "tasks.jsonl")], out=str(tmp_path / "u")))
    write_lines(folder / "rankings.jsonl", [answer("a1", "t1", "alice", "first")])
    with pytest.raises(DataError, match=r"t: is a folder: give the rank page's answers in it, .*rankings.jsonl$"):
        import_rankings(folder)


def test_a_label_studio_file_without_our_fields_is_a_clear_error(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps([{"id": 1, "data": {"text": "Opossums are great"}, "annotations": []}]),
                    encoding="utf-8")
    with pytest.raises(DataError, match=r"other.json: \[0\].data: has no rlaif_task, prompt, a, b: not a task of "
                                        r"`rlaif rankings export`'s label-studio.json"):
        import_rankings(path)
    _, ls_tasks = export(tmp_path, n=1)
    exported = ls_export(ls_tasks, [[(10, "A", 2.0)]])
    exported[0]["annotations"][0]["result"][0]["value"]["choices"] = ["Positive"]
    path.write_text(json.dumps(exported), encoding="utf-8")
    with pytest.raises(DataError, match=r"\[0\].annotations\[0\].result: expected one choice \(A, B, tie\) from "
                                        r"'preference', found \[\[\"Positive\"\]\]"):
        import_rankings(path)


# --------------------------------------------------------------------------------------------------------------------
# The rank page's answers


def answer(answer_id, task, annotator, choice, seconds=5.0):
    prompt = [{"role": "user", "content": f"About {task}?"}]
    return {"event": "answer", "answer_id": answer_id, "task": task, "annotator": annotator, "choice": choice,
            "left": 1, "note": "", "seconds": seconds, "at": "2025-01-02T03:04:05Z", "prompt": prompt,
            "responses": [f"{task} first", f"{task} second"]}


def undo(answer_id, task, annotator):
    return {"event": "undo", "answer_id": answer_id, "task": task, "annotator": annotator,
            "at": "2025-01-02T03:05:00Z"}


def test_page_answers_fold_into_rows(tmp_path):
    path = write_lines(tmp_path / "rankings.jsonl", [
        answer("a1", "t1", "alice", "first", 12.3),
        answer("a2", "t1", "bob", "second"),
        answer("a3", "t2", "alice", "second"), undo("a3", "t2", "alice"),
        answer("a4", "t2", "alice", "first", 7.0),  # the re-answer after an undo
        answer("a1", "t1", "alice", "second"),  # a repeated answer_id is ignored
        answer("a5", "t3", "bob", "skip"),
        answer("a6", "t3", "alice", "tie"),
        answer("a7", "t4", "alice", "first"), answer("a8", "t4", "alice", "second", 9.5),  # the last one counts
        undo("a9", "t4", "alice"),  # names no answer before it: nothing to undo
        answer("a9", "t4", "carol", "first", 2.0),
        answer("b1", "t5", "bob", "first"), undo("b1", "t5", "bob"),  # undone, nothing left: no row
        answer("b2", "t6", "bob", "first", 3.0), answer("b3", "t6", "bob", "second"),
        undo("b3", "t6", "bob"),  # back to the answer before
    ])
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"event": "answer", "answer_id": "a10", "ta')  # the page killed mid-write
    tally = Tally("pairs")
    rows = import_rankings(path, tally=tally)
    assert [(r["id"], r["chosen"][0]["content"], r["annotator"], r["seconds"]) for r in rows] == [
        ("t1-alice", "t1 first", "alice", 12.3), ("t1-bob", "t1 second", "bob", 5.0),
        ("t2", "t2 first", "alice", 7.0), ("t4-alice", "t4 second", "alice", 9.5),
        ("t4-carol", "t4 first", "carol", 2.0), ("t6", "t6 first", "bob", 3.0)]
    assert rows[1]["rejected"][0]["content"] == "t1 first" and rows[0]["prompt"][0]["content"] == "About t1?"
    assert all(r["p_chosen"] == 1.0 and r["source"] == "human" for r in rows)
    assert tally.counts() == {"read": 8, "used": 6, "left_out": 2, "left_out_skipped": 1, "left_out_tie": 1}
    assert ("t3", 0.5, "t3 first") in [(r["id"], r["p_chosen"], r["chosen"][0]["content"])
                                       for r in import_rankings(path, ties="half")]


@pytest.mark.parametrize(("event", "message"), [
    ({"event": "vote", "answer_id": "x"}, r"rankings.jsonl:1: event: expected 'answer' or 'undo'"),
    ({**answer("a1", "t1", "alice", "first"), "choice": "left"}, r":1: choice: expected one of first, second, tie"),
    ({**answer("a1", "t1", "alice", "first"), "annotator": " "}, r": answer a1.annotator: is empty"),
    ({**answer("a1", "t1", "alice", "first"), "responses": ["one"]}, r": answer a1.responses: expected the task's two"),
    ({**answer("a1", "t1", "alice", "first"), "prompt": []}, r": answer a1.prompt: expected text or a list of"),
    ({**answer("a1", "t1", "alice", "first"), "seconds": -1}, r": answer a1.seconds: expected a finite number >= 0"),
])
def test_bad_answers_name_the_line_or_answer_and_field(tmp_path, event, message):
    with pytest.raises(DataError, match=message):
        import_rankings(write_lines(tmp_path / "rankings.jsonl", [event]))


def test_page_rows_carry_the_tasks_why_ai_p_and_note(tmp_path):
    tasks = [{"id": "t1", "prompt": [{"role": "user", "content": "About t1?"}], "responses": ["t1 first", "t1 second"],
              "overlap": 2, "why": "random", "principle": "harm", "ai_p": 0.8, "source_file": "p.jsonl"},
             {"id": "t2", "prompt": [{"role": "user", "content": "About t2?"}], "responses": ["t2 first", "t2 second"],
              "overlap": 1, "why": "uncertain", "principle": "harm", "ai_p": 0.52, "source_file": "p.jsonl"}]
    events = [answer("a1", "t1", "alice", "first"), {**answer("a2", "t1", "bob", "second"), "note": "A lectures"},
              {**answer("a3", "t2", "alice", "first"), "note": "  "}, answer("a4", "t3", "bob", "first")]
    path = write_lines(tmp_path / "rankings.jsonl", events)
    # no tasks.jsonl beside them (answers copied elsewhere): no `why`, no `ai_p`
    assert not any({"why", "ai_p"} & set(r) for r in import_rankings(path))
    write_lines(tmp_path / "tasks.jsonl", tasks)
    rows = {r["id"]: r for r in import_rankings(path)}
    assert (rows["t1-alice"]["why"], rows["t1-alice"]["ai_p"]) == ("random", 0.8)
    assert (rows["t1-bob"]["why"], rows["t1-bob"]["ai_p"]) == ("random", pytest.approx(0.2))  # bob chose t1 second
    assert rows["t1-bob"]["note"] == "A lectures" and "note" not in rows["t1-alice"] and "note" not in rows["t2"]
    assert (rows["t2"]["why"], rows["t2"]["ai_p"]) == ("uncertain", 0.52)
    assert not {"why", "ai_p"} & set(rows["t3"])  # a task the file no longer holds


def test_page_and_label_studio_answers_to_the_same_tasks_all_count_toward_agreement(tmp_path):
    from rlaif.agreement import agreement_report

    tasks, ls_tasks = export(tmp_path, n=12, random_share=0.25)
    folder = tmp_path / "t"
    # ana on the page, user 7 in Label Studio, each the only one per task in their file: bare task ids in both
    write_lines(folder / "rankings.jsonl", [
        {**answer(f"a{i}", task["id"], "ana", "first" if i < 9 else "second"), "prompt": task["prompt"],
         "responses": task["responses"]} for i, task in enumerate(tasks)])
    ai_pick = ["A" if ls["data"]["a"] == t["responses"][0] else "B" for t, ls in zip(tasks, ls_tasks)]
    (folder / "export.json").write_text(json.dumps(ls_export(ls_tasks, [[(7, pick, 3.0)] for pick in ai_pick])),
                                        encoding="utf-8")
    page, label_studio = import_rankings(folder / "rankings.jsonl"), import_rankings(folder / "export.json")
    assert [r["id"] for r in page] == [r["id"] for r in label_studio] == [t["id"] for t in tasks]
    assert [r["why"] for r in page] == [r["why"] for r in label_studio] == [t["why"] for t in tasks]
    assert Counter(t["why"] for t in tasks)["random"] == 3
    report = agreement_report(page + label_studio, resamples=200)
    assert report["left_out"]["inter_annotator"]["repeated_answers"] == 0
    inter = report["inter_annotator"]
    assert (inter["pairs"], inter["annotators"]) == (12, 2)
    assert inter["percent_agreement"]["value"] == pytest.approx(9 / 12)  # ana went against the AI on the last 3
    assert inter["kappa"]["value"] == pytest.approx(2 * 9 / 12 - 1)


def test_only_skips_is_nothing_to_import(tmp_path):
    path = write_lines(tmp_path / "rankings.jsonl", [answer("a1", "t1", "alice", "skip")])
    with pytest.raises(DataError, match=r"nothing left to use: read 1 pair, used 0, left out 1 \(skipped 1\)"):
        import_rankings(path)


def test_an_answer_given_in_under_a_second_is_kept_and_flagged(tmp_path):
    """Too quick to have read both replies (a slip, a held key on an old page): the row stays, flagged fast_answer,
    and the import's closing line says how many."""
    path = write_lines(tmp_path / "rankings.jsonl", [answer("a1", "t1", "ana", "first", seconds=0.3),
                                                     answer("a2", "t2", "ana", "second", seconds=4.0)])
    rows = {r["id"]: r for r in import_rankings(path)}
    assert rows["t1"]["flags"] == ["fast_answer"] and "flags" not in rows["t2"]
    result = CliRunner().invoke(cli, ["rankings", "import", str(path), "--out", str(tmp_path / "human.jsonl")])
    assert result.exit_code == 0, result.output
    assert "1 answer given in under a second, kept and flagged fast_answer" in " ".join(result.output.split())
    assert [r.get("flags") for r in read_jsonl(tmp_path / "human.jsonl")] == [["fast_answer"], None]
