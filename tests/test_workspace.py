"""`rlaif init` makes a project that checks and plans, and `rlaif constitution diff` says what an edit changes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rlaif.cli import cli
from rlaif.constitution import load_constitution
from rlaif.pipeline import load_recipe, plan


def test_init_makes_an_editable_project_that_plans(tmp_path):
    project = tmp_path / "my-project"
    result = CliRunner().invoke(cli, ["init", str(project)])
    assert result.exit_code == 0, result.output
    recipe = load_recipe(project / "recipe.yaml")
    assert recipe.name == "my-project"
    constitution = load_constitution(recipe.constitution if "/" in recipe.constitution
                                     else project / recipe.constitution)
    assert constitution.name == "my-project"
    # Its principles come from the project's own copy of the library, so editing that copy changes them.
    assert {p.source.split(":")[0] for p in constitution.principles} == {
        str((project / "principles" / f).resolve()) for f in ("harmless.yaml", "helpful.yaml", "honest.yaml")}
    assert [p.id for p in constitution.principles] == [p.id for p in load_constitution("default").principles]
    steps = plan(recipe)
    assert steps[0].config.constitution == str(project / "constitution.yaml")
    assert [s.stage for s in steps][-1] == "eval" and all(s.state == "run" for s in steps)

    again = CliRunner().invoke(cli, ["init", str(project)])
    assert again.exit_code == 1 and "already exists" in again.output and "Traceback" not in again.output


@pytest.fixture
def candidates(tmp_path):
    rows = [{"id": f"c{i}", "prompt": [{"role": "user", "content": f"Question number {i}?"}],
             "responses": [f"A short answer {i}.", f"A different, longer answer about {i}."]} for i in range(6)]
    path = tmp_path / "candidates.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_constitution_diff_finds_the_edit_and_counts_flips(tmp_path, tiny, candidates):
    from rlaif.diff import DiffConfig, run

    same = run(DiffConfig(a="default", b="default", candidates=str(candidates), out=str(tmp_path / "same.json")),
               model=tiny)
    assert same["flips"] == 0 and same["mean_abs_change"] == 0.0
    assert same["changes"] == {"added": [], "removed": [], "edited": [], "label_settings": {},
                               "examples_changed": False, "templates_changed": False}

    edited = tmp_path / "edited.yaml"
    edited.write_text("""
name: edited
version: "1"
description: the default with one question rewritten and one principle dropped
principles:
  include: [harmless, helpful, honest]
  omit: [privacy]
  overrides:
    follow-the-request: {comparison_question: "Which reply is shorter?"}
label: {principles_per_comparison: 2}
""")
    report = run(DiffConfig(a="default", b=str(edited), candidates=str(candidates), out=str(tmp_path / "d.json")),
                 model=tiny)
    assert report["changes"]["edited"] == ["follow-the-request"] and report["changes"]["removed"] == ["privacy"]
    assert report["changes"]["label_settings"] == {"principles_per_comparison": [1, 2]}
    assert report["pairs"] == 6 and sum(e["pairs"] for e in report["principles"].values()) == 6 * 2
    assert all(e["mean_abs_change"] >= 0 for e in report["principles"].values())
    assert report["flips"] == len(report["flipped"]) == sum(e["flips"] for e in report["principles"].values()) / 2
    for row in report["flipped"]:
        assert (row["p_a"] > 0.5) != (row["p_b"] > 0.5) and len(row["principles_b"]) == 2
    assert json.loads((tmp_path / "d.json").read_text()) == report


def test_constitution_diff_cli_errors_are_clear(tmp_path, candidates):
    result = CliRunner().invoke(cli, ["constitution", "diff", "default", "no-such.yaml", "--candidates",
                                      str(candidates)])
    assert result.exit_code == 1 and "no-such.yaml" in result.output and "Traceback" not in result.output
