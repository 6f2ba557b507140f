"""Human rankings become pairs; bad files fail with file, line and field and write nothing; sources mix."""

from __future__ import annotations

import json
import re

import pytest

from rlaif.rankings import ImportConfig, import_rankings, load_preferences, mix, pair_key, parse_weighted, run
from rlaif.records import DataError, Tally, read_jsonl

PROMPT = [{"role": "user", "content": "How do I fix a flat tyre?"}]


def write_lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def pairs_as_table(rows):
    return [(r["id"], r["chosen"][0]["content"], r["rejected"][0]["content"], r["p_chosen"]) for r in rows]


def test_three_responses_ranked_2_1_3(tmp_path):
    path = write_lines(tmp_path / "r.jsonl", [{"id": "q", "prompt": "How do I fix a flat tyre?",
                                               "responses": ["a", "b", "c"], "ranks": [2, 1, 3], "annotator": "ann-4"}])
    rows = import_rankings(path)
    # Written by hand: b (rank 1) beats a (2) and c (3); a (2) beats c (3).
    assert pairs_as_table(rows) == [("q-0-1", "b", "a", 1.0), ("q-0-2", "a", "c", 1.0), ("q-1-2", "b", "c", 1.0)]
    assert all(r["prompt"] == PROMPT and r["source"] == "human" and r["annotator"] == "ann-4" for r in rows)


def test_scores_and_ties(tmp_path):
    row = {"id": "q", "prompt": PROMPT, "responses": ["a", "b", "c"], "scores": [0.2, 0.9, 0.2]}
    path = write_lines(tmp_path / "s.jsonl", [row])
    assert pairs_as_table(import_rankings(path)) == [("q-0-1", "b", "a", 1.0), ("q-1-2", "b", "c", 1.0)]
    assert pairs_as_table(import_rankings(path, ties="half"))[1] == ("q-0-2", "a", "c", 0.5)
    with pytest.raises(DataError, match=r"s.jsonl:1: scores: tie: 0.2 appears more than once"):
        import_rankings(path, ties="error")


def test_pairs_and_hh_transcripts(tmp_path, hh_data):
    path = write_lines(tmp_path / "p.jsonl", [
        {"prompt": "Hi", "chosen": "Hello!", "rejected": [{"role": "assistant", "content": "Go away."}]},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: No."},
    ])
    rows = import_rankings(path)
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [("Hello!", "Go away."),
                                                                                       ("Hello!", "No.")]
    assert rows[1]["prompt"] == [{"role": "user", "content": "Hi"}]
    with pytest.raises(DataError, match=r"hh-harmless-dev.jsonl:87: chosen: is empty \(--skip-empty, or rankings: "
                                        r"\{skip_empty: true\} in a recipe, leaves such pairs out\)"):
        import_rankings(hh_data)
    tally = Tally("pairs")
    hh = import_rankings(hh_data, skip_empty=True, tally=tally)
    assert len(hh) == 997 and all(r["p_chosen"] == 1.0 for r in hh)
    assert tally.counts() == {"read": 1000, "used": 997, "left_out": 3, "left_out_empty_reply": 3}


def test_csv_long_and_pairs(tmp_path):
    long = tmp_path / "long.csv"
    long.write_text("id,prompt,response,rank,annotator\nq,Fix a tyre?,a,2,ann\nq,Fix a tyre?,b,1,ann\n"
                    "q,Fix a tyre?,c,3,ann\n", encoding="utf-8")
    assert pairs_as_table(import_rankings(long)) == [("q-0-1", "b", "a", 1.0), ("q-0-2", "a", "c", 1.0),
                                                     ("q-1-2", "b", "c", 1.0)]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("prompt,chosen,rejected\nHi,Hello,Go away\n", encoding="utf-8")
    assert pairs_as_table(import_rankings(pairs))[0][1:] == ("Hello", "Go away", 1.0)


@pytest.mark.parametrize(("row", "message"), [
    ({"prompt": "x", "responses": ["a", "b"]}, r":1: ranks: expected exactly one of 'ranks'"),
    ({"prompt": "x", "responses": ["a", "b"], "ranks": [1]}, r":1: ranks: has 1 entries for 2 responses"),
    ({"prompt": "x", "responses": ["a", ""], "ranks": [1, 2]},  # the hint names the flag and the recipe setting
     r":1: responses\[1\]: is empty \(--skip-empty, or rankings: \{skip_empty: true\} in a recipe, leaves such"),
    ({"prompt": "x", "responses": ["a", "b"], "ranks": [0, 1]},
     r":1: ranks\[0\]: expected a finite number >= 1, got 0"),
    ({"prompt": "x", "responses": ["a", "b"], "ranks": [1, "2"]}, r":1: ranks\[1\]: expected a number, not '2'"),
    ({"prompt": "x", "responses": ["a", "b"], "ranks": [1, True]}, r":1: ranks\[1\]: expected a number, not True"),
    ({"responses": ["a", "b"], "ranks": [1, 2]}, r":1: prompt: missing"),
    ({"prompt": "x", "chosen": "a"}, r":1: rejected: missing"),
    ({"prompt": "x", "text": "a"}, r":1: responses: missing"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, message):
    path = write_lines(tmp_path / "bad.jsonl", [row])
    with pytest.raises(DataError, match="bad.jsonl" + message):
        import_rankings(path)


def test_bad_files_write_nothing(tmp_path):
    good = {"prompt": "x", "responses": ["a", "b"], "ranks": [1, 2]}
    path = write_lines(tmp_path / "r.jsonl", [good, good | {"id": "x"}, {"prompt": "x", "responses": ["a", "b"],
                                                                         "ranks": [1, 2, 3]}])
    out = tmp_path / "human.jsonl"
    with pytest.raises(DataError, match=r"r.jsonl:3: ranks"):
        run(ImportConfig(rankings=str(path), out=str(out)))
    assert not out.exists()
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"prompt": "x", "responses": ["a", "b"], "ranks": [1, 2]}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin.jsonl:2: not UTF-8 text: byte 0xe9 at column 16"):
        import_rankings(latin)
    utf16 = tmp_path / "u16.jsonl"
    utf16.write_bytes(json.dumps(good).encode("utf-16"))
    assert len(import_rankings(utf16)) == 1
    dup = write_lines(tmp_path / "dup.jsonl", [good | {"id": "q"}, good | {"id": "q"}])
    with pytest.raises(DataError, match=r"dup.jsonl:2: id: duplicate id 'q' \(first on line 1\)"):
        import_rankings(dup)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "x",\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken.jsonl:1: not valid JSON"):
        import_rankings(broken)


def test_cli_import(tmp_path):
    from click.testing import CliRunner

    from rlaif.cli import cli

    path = write_lines(tmp_path / "r.jsonl", [{"id": "q", "prompt": "x", "responses": ["a", "b", "c"],
                                               "ranks": [1, 1, 2]}])
    result = CliRunner().invoke(cli, ["rankings", "import", str(path), "--out", str(tmp_path / "h.jsonl"),
                                      "--ties", "half"])
    assert result.exit_code == 0, result.output
    assert [r["p_chosen"] for r in read_jsonl(tmp_path / "h.jsonl")] == [0.5, 1.0, 1.0]
    assert "3 pairs" in result.output and "read 3 pairs, used 3" in result.output
    bad = write_lines(tmp_path / "bad.jsonl", [{"prompt": "x", "responses": ["a", "b"], "ranks": [1]}])
    result = CliRunner().invoke(cli, ["rankings", "import", str(bad), "--out", str(tmp_path / "b.jsonl")])
    assert result.exit_code == 1 and "bad.jsonl:1: ranks:" in result.output and "Traceback" not in result.output


def ai_row(chosen, rejected, p, **extra):
    return {"id": f"ai-{chosen}", "prompt": PROMPT, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "p_chosen": p, "source": "ai", **extra}


def human_row(chosen, rejected):
    return {"id": f"h-{chosen}", "prompt": PROMPT, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "p_chosen": 1.0, "source": "human"}


def test_mix_collapses_duplicates_with_provenance_and_agreement():
    ai = [ai_row("a", "b", 0.8), ai_row("c", "d", 0.7, p_orders={"chosen_first": 0.6, "chosen_second": 0.8}),
          ai_row("e", "f", 0.9)]
    human = [human_row("a", "b"), human_row("d", "c")]  # agrees on a/b; on c/d people pick d
    rows, agreement = mix([("ai.jsonl", ai, 1.0), ("human.jsonl", human, 2.0)])
    by_pair = {frozenset((r["chosen"][0]["content"], r["rejected"][0]["content"])): r for r in rows}
    assert len(rows) == 3
    ab = by_pair[frozenset("ab")]
    assert ab["chosen"][0]["content"] == "a" and ab["p_chosen"] == pytest.approx((0.8 * 1 + 1.0 * 2) / 3)
    assert ab["weight"] == 3.0 and ab["source"] == "human"
    assert [(e["file"], e["p_chosen"]) for e in ab["provenance"]] == [("ai.jsonl", 0.8), ("human.jsonl", 1.0)]
    cd = by_pair[frozenset("cd")]  # (0.7 * 1 + 0.0 * 2) / 3 for c: d wins, the row turns around
    assert cd["chosen"][0]["content"] == "d" and cd["p_chosen"] == pytest.approx(1 - 0.7 / 3)
    assert cd["p_orders"] == pytest.approx({"chosen_first": 0.2, "chosen_second": 0.4})
    assert agreement["pairs_labeled_by_both"] == 2 and agreement["agree"] == 1 and agreement["rate"] == 0.5
    assert agreement["disagreements"][0]["human_chosen"] == "d" and agreement["disagreements"][0]["human_p"] == 1.0
    assert agreement["disagreements"][0]["ai_p"] == pytest.approx(0.3)

    rows, _ = mix([("ai.jsonl", ai, 1.0), ("human.jsonl", human, 2.0)], human_overrides=True)
    cd = next(r for r in rows if pair_key(r) == pair_key(human[1]))
    assert cd["p_chosen"] == 1.0 and [e["source"] for e in cd["provenance"]] == ["human"]


def test_an_ai_tie_against_a_human_winner_agrees_half():
    ai = [ai_row("a", "b", 0.5), ai_row("c", "d", 0.9)]
    human = [human_row("a", "b"), human_row("c", "d")]
    _, agreement = mix([("ai.jsonl", ai, 1.0), ("human.jsonl", human, 1.0)])
    assert agreement["pairs_labeled_by_both"] == 2 and agreement["agree"] == 1.5 and agreement["rate"] == 0.75
    assert agreement["disagreements"] == []  # a tie names no winner: no conflict to override


def test_load_preferences_reads_rlaif_rows_and_imports_others(tmp_path):
    prefs = write_lines(tmp_path / "prefs.jsonl", [ai_row("a", "b", 0.8)])
    assert load_preferences(prefs)[0]["source"] == "ai"
    bad = write_lines(tmp_path / "badp.jsonl", [ai_row("a", "b", 1.3)])
    with pytest.raises(DataError, match=r"badp.jsonl:1: p_chosen: expected a finite number between 0 and 1, got 1.3"):
        load_preferences(bad)
    ranked = write_lines(tmp_path / "ranked.jsonl", [{"prompt": "x", "responses": ["a", "b"], "ranks": [2, 1]}])
    assert load_preferences(ranked)[0]["chosen"][0]["content"] == "b"
    assert parse_weighted("runs/x/human.jsonl:2.5") == ("runs/x/human.jsonl", 2.5)
    assert parse_weighted("C:/data/a.jsonl") == ("C:/data/a.jsonl", 1.0)


# --------------------------------------------------------------------------------------------------------------------
# Numbers that are not numbers


@pytest.mark.parametrize(("field", "value", "message"), [
    ("p_chosen", float("nan"), r"p_chosen: expected a finite number between 0 and 1, got nan"),
    ("weight", float("nan"), r"weight: expected a finite number >= 0, got nan"),
    ("weight", float("inf"), r"weight: expected a finite number >= 0, got inf"),
    ("weight", -1, r"weight: expected a finite number >= 0, got -1"),
    ("weight", "2", r"weight: expected a number, not '2'"),
    ("margin", float("-inf"), r"margin: expected a finite number, got -inf"),
    ("p_orders", {"chosen_first": float("nan")}, r"p_orders.chosen_first: expected a finite number between 0 and 1"),
    ("principle_p", {"helpful": 1.5}, r"principle_p.helpful: expected a finite number between 0 and 1, got 1.5"),
    ("p_orders", [0.5], r"p_orders: expected \{name: probability\}"),
])
def test_preference_numbers_must_be_finite(tmp_path, field, value, message):
    path = write_lines(tmp_path / "prefs.jsonl", [ai_row("a", "b", 0.8), ai_row("c", "d", 0.8, **{field: value})])
    with pytest.raises(DataError, match=r"prefs.jsonl:2: " + message):
        load_preferences(path)


@pytest.mark.parametrize(("row", "message"), [
    ({"scores": [float("nan"), 4]}, r"scores\[0\]: expected a finite number, got nan"),
    ({"scores": [3, float("-inf")]}, r"scores\[1\]: expected a finite number, got -inf"),
    ({"ranks": [1, float("nan")]}, r"ranks\[1\]: expected a finite number >= 1, got nan"),
])
def test_ranking_numbers_must_be_finite(tmp_path, row, message):
    # A NaN score used to lose when listed first and win when listed later: a missing label is no label.
    path = write_lines(tmp_path / "r.jsonl", [{"prompt": "x", "responses": ["a", "b"], **row}])
    with pytest.raises(DataError, match=r"r.jsonl:1: " + message):
        import_rankings(path)


@pytest.mark.parametrize(("cell", "message"), [
    ("nan", "expected a finite number, got nan"), ("inf", "expected a finite number, got inf"),
    ("-Infinity", "expected a finite number, got -inf"), ("n/a", "expected a number, not 'n/a'"),
    ("", "is empty: expected a number"),
])
def test_csv_scores_must_be_finite(tmp_path, cell, message):
    path = tmp_path / "r.csv"
    path.write_text(f"prompt,response,score\nx,a,3\nx,b,{cell}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"r.csv:3: score: " + message):
        import_rankings(path)
    path.write_text(f"prompt,response,rank\nx,a,1\nx,b,{cell or 0}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"r.csv:3: rank: "):
        import_rankings(path)


def test_file_weights_must_be_finite_and_not_negative():
    assert parse_weighted("a.jsonl:0") == ("a.jsonl", 0.0)
    assert parse_weighted("a.jsonl:1e1") == ("a.jsonl", 10.0)
    for tail, shown in (("nan", "nan"), ("inf", "inf"), ("-Infinity", "-inf"), ("-1", "-1")):
        with pytest.raises(DataError, match=rf"^a.jsonl: weight: expected a finite number >= 0, got {shown}$"):
            parse_weighted(f"a.jsonl:{tail}")
    rows = [ai_row("a", "b", 0.8)]
    with pytest.raises(DataError, match=r"ai.jsonl: weight: expected a finite number >= 0, got nan"):
        mix([("ai.jsonl", rows, float("nan"))])
    with pytest.raises(DataError, match=r"ai.jsonl: weight of 'ai-a': expected a finite number >= 0, got inf"):
        mix([("ai.jsonl", [ai_row("a", "b", 0.8, weight=float("inf"))], 1.0)])


# --------------------------------------------------------------------------------------------------------------------
# Pairs that say nothing; several annotators


def test_identical_replies_are_left_out_and_counted(tmp_path):
    path = write_lines(tmp_path / "r.jsonl", [
        {"id": "q", "prompt": "x", "responses": ["a", " a ", "b"], "ranks": [1, 2, 3]},  # "a" twice: not a pair
        {"id": "p", "prompt": "x", "chosen": "c", "rejected": "c"},
    ])
    tally = Tally("pairs")
    assert pairs_as_table(import_rankings(path, tally=tally)) == [("q-0-2", "a", "b", 1.0), ("q-1-2", " a ", "b", 1.0)]
    assert tally.summary() == "read 4 pairs, used 2, left out 2 (identical_replies 2)"
    same = write_lines(tmp_path / "same.jsonl", [{"prompt": "x", "chosen": "c", "rejected": "c "}])
    with pytest.raises(DataError, match=r"same.jsonl: nothing left to use: read 1 pair, used 0, left out 1 "
                                        r"\(identical_replies 1\)"):
        import_rankings(same)
    prefs = write_lines(tmp_path / "prefs.jsonl", [ai_row("a", "a", 0.6), ai_row("a", "b", 0.6)])
    tally = Tally("pairs")
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in load_preferences(prefs, tally=tally)] \
        == [("a", "b")]
    assert tally.counts() == {"read": 2, "used": 1, "left_out": 1, "left_out_identical_replies": 1}


def test_an_explicit_id_shared_by_annotators_gets_each_annotator(tmp_path):
    long = tmp_path / "long.csv"
    long.write_text("id,prompt,response,rank,annotator\nq,Fix a tyre?,a,1,ann-1\nq,Fix a tyre?,b,2,ann-1\n"
                    "q,Fix a tyre?,a,2,ann-2\nq,Fix a tyre?,b,1,ann-2\n", encoding="utf-8")
    assert pairs_as_table(import_rankings(long)) == [("q-0-1-ann-1", "a", "b", 1.0), ("q-0-1-ann-2", "b", "a", 1.0)]
    pairs = write_lines(tmp_path / "p.jsonl", [{"id": "p", "prompt": "x", "chosen": "a", "rejected": "b",
                                                "annotator": name} for name in ("ann-1", "ann-2")])
    assert [r["id"] for r in import_rankings(pairs)] == ["p-ann-1", "p-ann-2"]
    twice = write_lines(tmp_path / "twice.jsonl", [{"id": "p", "prompt": "x", "chosen": "a", "rejected": "b",
                                                    "annotator": "ann-1"}] * 2)
    with pytest.raises(DataError, match=r"twice.jsonl:2: id: duplicate id 'p' \(first on line 1\)"):
        import_rankings(twice)


def test_mix_flips_a_single_order_ai_label():
    # An AI label made with both_orders: false has one p_orders key; outweighed by people, it is turned around.
    ai = ai_row("one", "two", 0.7, p_orders={"chosen_first": 0.7})
    rows, _ = mix([("ai.jsonl", [ai], 1.0), ("human.jsonl", [human_row("two", "one")], 2.0)])
    assert len(rows) == 1 and rows[0]["chosen"][0]["content"] == "two"
    assert rows[0]["p_orders"] == pytest.approx({"chosen_second": 0.3})
    assert rows[0]["p_chosen"] == pytest.approx((0.3 * 1 + 1.0 * 2) / 3)


def test_an_imported_answers_ai_p_turns_with_its_row_and_its_why_and_note_stay(tmp_path):
    # ana chose "one" (the AI gave it 0.8, so ai_p 0.8 on her row); bob and cy chose "two": the mix faces "two"
    ana = {**human_row("one", "two"), "annotator": "ana", "why": "random", "ai_p": 0.8, "note": "shorter"}
    others = [{**human_row("two", "one"), "id": f"h-two-{who}", "annotator": who} for who in ("bob", "cy")]
    rows, _ = mix([("page.jsonl", [ana], 1.0), ("ls.jsonl", others, 1.0)])
    assert len(rows) == 1 and rows[0]["chosen"][0]["content"] == "two"
    assert rows[0]["ai_p"] == pytest.approx(0.2) and rows[0]["why"] == "random" and rows[0]["note"] == "shorter"
    # read back as labels (an earlier import), the fields are kept as they are
    path = write_lines(tmp_path / "human.jsonl", [ana])
    (row,) = load_preferences(path)
    assert (row["why"], row["ai_p"], row["note"]) == ("random", 0.8, "shorter")


# --------------------------------------------------------------------------------------------------------------------
# Labels stay labels; every weight is checked; ties are counted


def test_labels_are_kept_as_they_are_never_made_hard_human_labels(tmp_path):
    labels = [ai_row("a", "b", 0.5005, labeler="smollm2", principle_p={"helpful": 0.5005}),
              ai_row("c", "d", 0.3, weight=2.0), ai_row("e", "f", 0.9) | {"source": "critique"}]
    path = write_lines(tmp_path / "preferences.jsonl", labels)
    out = tmp_path / "h.jsonl"
    counts = run(ImportConfig(rankings=str(path), out=str(out), annotator="ann-1"))
    assert list(read_jsonl(out)) == labels  # p_chosen, source, labeler, weight: every field as the file gives it
    assert counts["summary"] == ("read 3 pairs, used 3; labels (p_chosen) kept as they are: source ai 2, "
                                 "source critique 1")
    # An import read back (a recipe's `human:` naming an earlier import): its 0.5 ties stay 0.5.
    ranked = write_lines(tmp_path / "r.jsonl", [{"id": "q", "prompt": "x", "responses": ["a", "b", "c"],
                                                 "ranks": [1, 1, 2]}])
    run(ImportConfig(rankings=str(ranked), out=str(tmp_path / "half.jsonl"), ties="half"))
    run(ImportConfig(rankings=str(tmp_path / "half.jsonl"), out=str(tmp_path / "again.jsonl"), annotator="ann-1"))
    again = list(read_jsonl(tmp_path / "again.jsonl"))
    assert [(r["id"], r["p_chosen"], r["annotator"]) for r in again] == [
        ("q-0-1", 0.5, "ann-1"), ("q-0-2", 1.0, "ann-1"), ("q-1-2", 1.0, "ann-1")]
    # A CSV of pairs with a p_chosen column is labels too.
    csv_labels = tmp_path / "labels.csv"
    csv_labels.write_text("prompt,chosen,rejected,p_chosen,source\nx,a,b,0.3,ai\n", encoding="utf-8")
    assert [(r["p_chosen"], r["source"]) for r in import_rankings(csv_labels)] == [(0.3, "ai")]


@pytest.mark.parametrize(("rows", "message"), [
    ([{"prompt": "x", "chosen": "a", "rejected": "b"}, ai_row("c", "d", 0.3)],
     r"m.jsonl:2: p_chosen: given, though line 1 has none: a file holds labels \(rows with p_chosen\) or rankings"),
    ([ai_row("a", "b", 0.7), ai_row("c", "d", 0.7), {"prompt": "x", "responses": ["a", "b"], "ranks": [1, 2]}],
     r"m.jsonl:3: p_chosen: missing, though line 1 has one"),
])
def test_a_file_mixing_labels_with_rankings_names_the_first_line_that_differs(tmp_path, rows, message):
    path = write_lines(tmp_path / "m.jsonl", rows)
    for read in (import_rankings, load_preferences):
        with pytest.raises(DataError, match=message):
            read(path)


@pytest.mark.parametrize(("weight", "message"), [
    (float("inf"), "expected a finite number >= 0, got inf"), (-3, "expected a finite number >= 0, got -3"),
    ("heavy", "expected a number, not 'heavy'"), (True, "expected a number, not True"),
])
def test_every_rows_weight_is_checked_whichever_kind_of_row(tmp_path, weight, message):
    pair = {"prompt": "x", "chosen": "a", "rejected": "b"}
    ranking = {"prompt": "x", "responses": ["c", "d"], "ranks": [1, 2]}
    for row in (pair, ranking, ai_row("c", "d", 0.7)):
        first = ai_row("a", "b", 0.7) if "p_chosen" in row else pair
        path = write_lines(tmp_path / "w.jsonl", [first, row | {"weight": weight}])
        with pytest.raises(DataError, match=r"w.jsonl:2: weight: " + message):
            load_preferences(path)
    path = tmp_path / "w.csv"
    path.write_text(f"prompt,chosen,rejected,weight\nx,a,b,1\nx,c,d,{weight}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"w.csv:3: weight: "):
        import_rankings(path)


def test_weights_go_to_every_pair_and_weight_zero_is_left_out_and_counted(tmp_path):
    path = write_lines(tmp_path / "w.jsonl", [
        {"id": "p", "prompt": "x", "chosen": "a", "rejected": "b"},
        {"id": "z", "prompt": "x", "chosen": "c", "rejected": "d", "weight": 0},
        {"id": "r", "prompt": "x", "responses": ["e", "f", "g"], "ranks": [1, 2, 3], "weight": 2.5},
    ])
    tally = Tally("pairs")
    rows = import_rankings(path, tally=tally)
    assert [(r["id"], r.get("weight")) for r in rows] == [("p", None), ("r-0-1", 2.5), ("r-0-2", 2.5), ("r-1-2", 2.5)]
    assert tally.summary() == "read 5 pairs, used 4, left out 1 (zero_weight 1)"
    # The reader of reward and DPO keeps it: the trainer leaves it out and counts it where file weights apply too.
    assert [r.get("weight") for r in load_preferences(path)][:2] == [None, 0.0]
    long = tmp_path / "long.csv"
    long.write_text("prompt,response,rank,weight\nx,a,1,2\nx,b,2,3\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"long.csv:3: weight: 3 differs from the 2 given earlier in this ranking "
                                        r"\(line 2\): one per ranking"):
        import_rankings(long)


def test_ties_are_read_and_counted_as_left_out(tmp_path):
    path = write_lines(tmp_path / "ties.jsonl", [{"id": "q", "prompt": "x", "responses": ["a", "b", "c"],
                                                  "ranks": [1, 1, 2]},
                                                 {"id": "t", "prompt": "y", "responses": ["a", "b"], "ranks": [3, 3]}])
    tally = Tally("pairs")
    assert [r["id"] for r in import_rankings(path, tally=tally)] == ["q-0-2", "q-1-2"]
    assert tally.summary() == "read 4 pairs, used 2, left out 2 (tie 2)"
    half = Tally("pairs")
    assert [r["p_chosen"] for r in import_rankings(path, ties="half", tally=half)] == [0.5, 1.0, 1.0, 0.5]
    assert half.summary() == "read 4 pairs, used 4"
    tied = write_lines(tmp_path / "tied.jsonl", [{"prompt": "y", "responses": ["a", "b"], "ranks": [3, 3]}])
    with pytest.raises(DataError, match=r"tied.jsonl: nothing left to use: read 1 pair, used 0, left out 1 \(tie 1\); "
                                        r"every pair is a tie; --ties half, or rankings: \{ties: half\} in a recipe"):
        import_rankings(tied)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty.jsonl: no rankings, pairs or labels in the file"):
        import_rankings(empty)


# --------------------------------------------------------------------------------------------------------------------
# One ranking, one group; CSV as spreadsheets export it


def test_a_prompt_ranked_twice_is_an_error_naming_both_places(tmp_path):
    blocks = tmp_path / "blocks.csv"
    blocks.write_text("prompt,response,rank,annotator\nx,a,1,ann\nx,b,2,ann\ny,c,1,ann\ny,d,2,ann\nx,e,1,ann\n"
                      "x,f,2,ann\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"blocks.csv:6: prompt: ranked twice by annotator ann \(lines 2-3 and 6-7\); "
                                        r"add an id column to tell the rankings apart"):
        import_rankings(blocks)
    with_ids = tmp_path / "ids.csv"  # with ids, each block is its own ranking, wherever its lines are
    with_ids.write_text("id,prompt,response,rank,annotator\n1,x,a,1,ann\n2,y,c,1,ann\n1,x,b,2,ann\n3,x,e,1,ann\n"
                        "2,y,d,2,ann\n3,x,f,2,ann\n", encoding="utf-8")
    assert pairs_as_table(import_rankings(with_ids)) == [("1-0-1", "a", "b", 1.0), ("2-0-1", "c", "d", 1.0),
                                                         ("3-0-1", "e", "f", 1.0)]
    twice = write_lines(tmp_path / "twice.jsonl", [
        {"prompt": "x", "responses": ["a", "b"], "ranks": [1, 2], "annotator": "ann"},
        {"prompt": "y", "responses": ["a", "b"], "ranks": [1, 2], "annotator": "ann"},
        {"prompt": "x", "responses": ["a", "b"], "ranks": [2, 1], "annotator": "ann"},
    ])
    with pytest.raises(DataError, match=r"twice.jsonl:3: the same prompt and replies as line 1, by annotator ann: a "
                                        r"repeated row, or a second ranking of them \(in any order\); give each ranking its own id"):
        import_rankings(twice)


@pytest.mark.parametrize(("name", "text"), [
    ("forms.csv", ("Timestamp,Prompt,Response,Rank,Annotator\n2024-05-01 10:00,Fix a tyre?,a,2,ann\n"
                  "2024-05-01 10:00,Fix a tyre?,b,1,ann\n2024-05-01 10:00,Fix a tyre?,c,3,ann\n")),
    ("spaces.csv", "prompt ,response, rank,annotator\nFix a tyre?,a,2,ann\nFix a tyre?,b,1,ann\nFix a tyre?,c,3,ann\n"),
    ("trailing.csv", ("prompt,response,rank,annotator\nFix a tyre?,a,2,ann\nFix a tyre?,b,1,ann\nFix a tyre?,c,3,ann\n"
                     ",,,\n,,,\n")),
    ("semicolons.csv", ("prompt;response;rank;annotator\nFix a tyre?;a;2;ann\nFix a tyre?;b;1;ann\n"
                        "Fix a tyre?;c;3;ann\n")),
    ("tabs.tsv", ("prompt\tresponse\trank\tannotator\nFix a tyre?\ta\t2\tann\nFix a tyre?\tb\t1\tann\n"
                 "Fix a tyre?\tc\t3\tann\n")),
])
def test_csv_as_spreadsheets_export_it(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    rows = import_rankings(path)
    assert [row[1:] for row in pairs_as_table(rows)] == [("b", "a", 1.0), ("a", "c", 1.0), ("b", "c", 1.0)]
    assert all(r["annotator"] == "ann" and r["prompt"] == [{"role": "user", "content": "Fix a tyre?"}] for r in rows)


@pytest.mark.parametrize(("text", "message"), [
    ("prompt,response,rank\nx,a,1\ny,b,1\ny,c,2\n", (r"r.csv:2: response: the only line of its ranking: a ranking "
                                                     r"needs two or more response lines")),
    ("prompt,response,rank\nx,a,1\nx,b,1\n", r"r.csv:3: rank: tie: 1 as on line 2 \(ties are off"),
    ("question,answer,rank\nx,a,1\n", (r"r.csv:1: expected columns prompt, response and rank \(or score\), or prompt, "
                                      r"chosen and rejected; found question, answer, rank")),
    ("prompt,response,rank\nx,Hello, there,1\n", (r"r.csv:2: 4 cells under 3 columns; a cell holding ',' must be in "
                                                 r"double quotes")),
    ("prompt,chosen,rejected\n,a,b\n", r"r.csv:2: prompt: is empty"),
])
def test_csv_errors_name_the_line_and_column(tmp_path, text, message):
    path = tmp_path / "r.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        import_rankings(path, ties="error")


def test_the_output_is_a_jsonl_file(tmp_path):
    from click.testing import CliRunner

    from rlaif.cli import cli
    from rlaif.records import ConfigError

    path = write_lines(tmp_path / "r.jsonl", [{"prompt": "x", "chosen": "a", "rejected": "b"}])
    with pytest.raises(ConfigError, match=r"out: .*out.csv would hold JSONL preference rows; name it .jsonl"):
        ImportConfig(rankings=str(path), out=str(tmp_path / "out.csv"))
    result = CliRunner().invoke(cli, ["rankings", "import", str(path), "--out", str(tmp_path / "out.csv")])
    assert result.exit_code == 1 and not (tmp_path / "out.csv").exists()
    result = CliRunner().invoke(cli, ["rankings", "import", str(path), "--out", str(tmp_path / "out.jsonl")])
    assert "✓ 1 pair → " in result.output and "(read 1 pair, used 1)" in result.output


# --------------------------------------------------------------------------------------------------------------------
# Trial findings: cells a spreadsheet left out, one ranking in two orders, a file given twice, --out on the source


def test_a_csv_row_missing_its_last_cells_names_the_empty_field(tmp_path):
    from click.testing import CliRunner

    from rlaif.cli import cli

    long = tmp_path / "c10.csv"  # spreadsheets drop a row's trailing empty cells: "Hi,a" under three columns
    long.write_text("prompt,response,rank\nHi,a\nHi,b,2\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"^.*c10.csv:2: rank: is empty: expected a number$"):
        import_rankings(long)
    result = CliRunner().invoke(cli, ["rankings", "import", str(long), "--out", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1 and "c10.csv:2: rank: is empty" in result.output and "Traceback" not in result.output
    short = tmp_path / "c11.csv"
    short.write_text("prompt,response,rank,annotator\nHi\nHi,b,2,ann\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"c11.csv:2: response: is empty"):
        import_rankings(short)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("prompt,chosen,rejected,weight\nHi,Hello\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs.csv:2: rejected: is empty"):
        import_rankings(pairs)
    pairs.write_text("prompt,chosen,rejected,weight\nHi,Hello,Go away\n", encoding="utf-8")  # no weight: weight 1
    assert [("weight" in r, r["chosen"][0]["content"]) for r in import_rankings(pairs)] == [(False, "Hello")]


def test_the_same_ranking_in_another_order_is_a_repeat(tmp_path):
    from rlaif.loaders import content_id

    ranking = {"prompt": "p", "responses": ["x", "y", "z"], "ranks": [1, 2, 3], "annotator": "ann"}
    again = {"prompt": "p", "responses": ["z", "y", "x"], "ranks": [3, 2, 1], "annotator": "ann"}
    path = write_lines(tmp_path / "r.jsonl", [ranking, again])
    with pytest.raises(DataError, match=r"r.jsonl:2: the same prompt and replies as line 1, by annotator ann: a "
                                        r"repeated row, or a second ranking of them \(in any order\)"):
        import_rankings(path)
    swapped = write_lines(tmp_path / "s.jsonl", [{"prompt": "p", "chosen": "x", "rejected": "y"},
                                                 {"prompt": "p", "chosen": "y", "rejected": "x"}])
    with pytest.raises(DataError, match=r"s.jsonl:2: the same prompt and replies as line 1"):
        import_rankings(swapped)
    # Another annotator, or an id of its own, makes it another ranking; ids of rows that are not repeats stay as
    # they were: the content id of the prompt, the replies in their order and the annotator.
    other = write_lines(tmp_path / "o.jsonl", [ranking, again | {"annotator": "bob"}, again | {"id": "second"}])
    rows = import_rankings(other)
    first = content_id([[{"role": "user", "content": "p"}], ["x", "y", "z"], "ann"], "h")
    assert [r["id"] for r in rows[:3]] == [f"{first}-0-1", f"{first}-0-2", f"{first}-1-2"]
    assert len(rows) == 9 and len({r["id"] for r in rows}) == 9
    assert {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows} == {("x", "y"), ("x", "z"),
                                                                                        ("y", "z")}


def test_a_file_listed_twice_for_reward_or_dpo_is_refused(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from rlaif.cli import cli
    from rlaif.rankings import load_mix
    from rlaif.records import ConfigError

    monkeypatch.chdir(tmp_path)
    write_lines(tmp_path / "o1.jsonl", [{"prompt": "p", "chosen": "x", "rejected": "y"}])
    write_lines(tmp_path / "o2.jsonl", [{"prompt": "p", "chosen": "x", "rejected": "z"}])
    with pytest.raises(ConfigError, match=r"^data: o1.jsonl and ./o1.jsonl:2 are the same file \(.*o1.jsonl\); list it "
                                          r"once, with one weight \(FILE:WEIGHT\)$"):
        load_mix(["o1.jsonl", "o2.jsonl", "./o1.jsonl:2"])
    with pytest.raises(ConfigError, match=r"^eval_data: o2.jsonl is listed twice; list it once"):
        load_mix(["o2.jsonl", "o2.jsonl"], setting="eval_data")
    rows, _ = load_mix(["o1.jsonl", "o2.jsonl:2"])
    assert sorted(r["weight"] for r in rows) == [1.0, 2.0]
    result = CliRunner().invoke(cli, ["reward", "--data", "o1.jsonl", "--data", "./o1.jsonl:2", "--out", "rm"])
    assert result.exit_code == 1 and "error: data: o1.jsonl and ./o1.jsonl:2 are the same file" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "rm").exists()
    # the reward stage's calibration files (read to measure its AI labelers) alike, and they take no weight
    result = CliRunner().invoke(cli, ["reward", "--data", "o1.jsonl", "--calibration", "o2.jsonl", "--calibration",
                                      "./o2.jsonl", "--out", "rm"])
    assert result.exit_code == 1 and "error: calibration: o2.jsonl and ./o2.jsonl are the same file" in result.output
    assert result.output.rstrip().endswith("list it once") and not (tmp_path / "rm").exists()
    result = CliRunner().invoke(cli, ["reward", "--data", "o1.jsonl", "--calibration", "o2.jsonl:2", "--out", "rm"])
    assert result.exit_code == 1 and "--calibration: o2.jsonl:2: a calibration file takes no weight" in result.output


def test_load_sources_reads_each_file_apart_for_the_reward_stage_to_weigh(tmp_path):
    from pathlib import Path

    from rlaif.rankings import load_sources, require_weight

    write_lines(tmp_path / "a.jsonl", [{"prompt": "p", "chosen": "x", "rejected": "y"}])
    write_lines(tmp_path / "b.jsonl", [{"prompt": "p", "chosen": "y", "rejected": "x", "p_chosen": 0.7,
                                         "source": "ai", "labeler": "m"}])
    tally = Tally("labels")
    sources = load_sources([str(tmp_path / "a.jsonl:2"), str(tmp_path / "b.jsonl")], tally=tally)
    assert [(Path(f).name, len(rows), w) for f, rows, w in sources] == [("a.jsonl", 1, 2.0), ("b.jsonl", 1, 1.0)]
    assert sources[1][1][0]["labeler"] == "m" and tally.read == 2
    rows = mix(sources)[0]
    assert len(rows) == 1 and rows[0]["p_chosen"] == pytest.approx((2 * 1.0 + 0.3) / 3)
    with pytest.raises(DataError, match=r"every pair has weight 0: nothing to train on; AI labels of m got weight 0$"):
        require_weight([{**rows[0], "weight": 0.0}], ["a.jsonl"], "AI labels of m got weight 0")


def test_out_must_not_be_a_directory_or_the_file_imported(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from rlaif.cli import cli
    from rlaif.records import ConfigError

    monkeypatch.chdir(tmp_path)
    source = write_lines(tmp_path / "X.jsonl", [{"prompt": "p", "responses": ["x", "y"], "ranks": [1, 2]}])
    before = source.read_bytes()
    (tmp_path / "d.jsonl").mkdir()
    (tmp_path / "notes.txt").write_text("")
    for out, message in (("d.jsonl", r"out: d.jsonl is a directory; give the .jsonl file to write in it"),
                         ("X.jsonl", r"out: X.jsonl is the file being imported; writing the pairs there would replace"),
                         ("./X.jsonl", r"out: ./X.jsonl is the file being imported"),
                         ("notes.txt/o.jsonl", r"out: notes.txt/o.jsonl cannot be written: notes.txt is a file")):
        with pytest.raises(ConfigError, match=message):
            ImportConfig(rankings="X.jsonl", out=out)
        result = CliRunner().invoke(cli, ["rankings", "import", "X.jsonl", "--out", out])
        assert result.exit_code == 1 and "error: out: " in result.output and "Traceback" not in result.output
    (tmp_path / "link.jsonl").symlink_to(source)
    with pytest.raises(ConfigError, match=r"out: link.jsonl is the file being imported"):
        ImportConfig(rankings="X.jsonl", out="link.jsonl")
    assert source.read_bytes() == before and list((tmp_path / "d.jsonl").iterdir()) == []


@pytest.mark.parametrize(("extra", "message"), [
    ({"labeler": 5}, "labeler: expected a name (a non-empty string), not 5"),
    ({"labeler": ["judge"]}, 'labeler: expected a name (a non-empty string), not ["judge"]'),
    ({"labeler": "  "}, 'labeler: expected a name'),
    ({"annotator": {"id": 1}}, 'annotator: expected a name (a non-empty string), not {"id": 1}'),
    ({"mode": "bogus"}, ('mode: expected one of compare, contrast, score, contrastive (how an AI label was made), '
                        'not "bogus"')),
    ({"mode": 7}, "mode: expected one of compare"),
])
def test_who_labelled_and_how_are_checked_by_line(tmp_path, extra, message):
    """The reliability check groups AI labels by labeler name and mode: a name that is not text, or a mode that no
    stage writes, would be a labeler no calibration file can match (or a crash), so it is an error at its line."""
    from rlaif.rankings import load_sources

    write_lines(tmp_path / "ai.jsonl", [ai_row("Hello.", "Go.", 0.8, labeler="judge"), ai_row("Hi.", "No.", 0.7,
                                                                                            **extra)])
    with pytest.raises(DataError, match=re.escape(f"ai.jsonl:2: {message}")):
        load_sources([str(tmp_path / "ai.jsonl")])
