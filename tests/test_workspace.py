"""`rlaif init` makes a project that checks and plans, and `rlaif constitution diff` says what an edit changes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rlaif.cli import cli
from rlaif.constitution import load_constitution
from rlaif.pipeline import plan
from rlaif.recipe import load_recipe


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


def test_constitution_diff_finds_the_edit_and_counts_flips(tmp_path, roomy_model_dir, candidates):
    from rlaif.diff import DiffConfig, run
    from rlaif.models import load_model

    tiny = load_model(str(roomy_model_dir), device="cpu")  # room for the default constitution's few-shot block

    same = run(DiffConfig(a="default", b="default", candidates=str(candidates), out=str(tmp_path / "same.json")),
               model=tiny)
    assert same["flips"] == 0 and same["mean_abs_change"] == 0.0
    assert same["changes"] == {"added": [], "removed": [], "edited": [], "label_settings": {}, "critique_settings": {},
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
    assert report["pairs"] == 6 and sum(e["pairs"] for e in report["principles"].values()
                                        if e["change"] != "removed") == 6 * 2
    assert all(e["mean_abs_change"] >= 0 for e in report["principles"].values())
    assert report["flips"] == len(report["flipped"])
    assert all(e["flips"] == 0 for e in report["principles"].values() if e["change"] == "same")
    for row in report["flipped"]:
        assert (row["p_a"] > 0.5) != (row["p_b"] > 0.5) and len(row["principles_b"]) == 2
    assert json.loads((tmp_path / "d.json").read_text()) == report


def test_constitution_diff_cli_errors_are_clear(tmp_path, candidates):
    result = CliRunner().invoke(cli, ["constitution", "diff", "default", "no-such.yaml", "--candidates",
                                      str(candidates)])
    assert result.exit_code == 1 and "no-such.yaml" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("folder, constitution", [("MyProject", "myproject"), ("team.v2", "team-v2"),
                                                  ("my proj", "my-proj"), ("2024", "2024")])
def test_init_names_make_projects_whose_own_dry_run_passes(tmp_path, monkeypatch, folder, constitution):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["init", folder])
    assert result.exit_code == 0, result.output
    quoted = f"'{folder}/recipe.yaml'" if " " in folder else f"{folder}/recipe.yaml"
    assert result.output.splitlines()[-1] == f"✓ next: rlaif run {quoted}"  # pastes into a shell as it is
    assert load_constitution(tmp_path / folder / "constitution.yaml").name == constitution
    assert load_recipe(tmp_path / folder / "recipe.yaml").name == folder
    result = CliRunner().invoke(cli, ["run", f"{folder}/recipe.yaml", "--dry-run"])
    assert result.exit_code == 0 and result.output.endswith("7 of 7 steps to run\n"), result.output


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".", " pad", ""])
def test_init_refuses_a_run_name_that_is_not_a_plain_name(tmp_path, name):
    result = CliRunner().invoke(cli, ["init", str(tmp_path / "p"), "--name", name])
    assert result.exit_code == 1 and f"--name {name!r}: expected a plain name" in result.output, result.output
    assert not (tmp_path / "p").exists()


def test_init_refuses_a_name_no_constitution_name_comes_from(tmp_path):
    result = CliRunner().invoke(cli, ["init", str(tmp_path / "p"), "--name", "***"])
    assert result.exit_code == 1 and "--name '***': no constitution name can be made from it" in result.output
    assert "give --name with some of them" in result.output and not (tmp_path / "p").exists()
    result = CliRunner().invoke(cli, ["init", str(tmp_path / "é")])
    assert result.exit_code == 1 and "the folder's name 'é': no constitution name" in " ".join(result.output.split())
