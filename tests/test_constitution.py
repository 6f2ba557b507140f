"""Constitution loading and validation: the shipped files are valid; every malformed file gets every problem reported
with its file, line and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlaif.cli import cli
from rlaif.constitution import (
    DEFAULT_TEMPLATES,
    TEMPLATE_VARIABLES,
    ConstitutionError,
    TemplateError,
    check,
    load_constitution,
    render,
    shipped_names,
    template_variables,
)

LIB = """\
family: harmless
principles:
  - id: alpha
    critique_request: Critique alpha.
    revision_request: Revise alpha.
    comparison_question: Which is more alpha?
  - id: beta
    critique_request: Critique beta.
    revision_request: Revise beta.
    comparison_question: Which is more beta?
"""

HEAD = """\
name: test
version: "1"
description: A test constitution.
principles:
  include: [lib.yaml]
"""


def write(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return tmp_path / "c.yaml"


# Each case: files to write, then (file, line, field, words the message must contain) for one expected problem.
MALFORMED = {
    "yaml syntax": ({"c.yaml": HEAD + "critique: {rounds: 2\n", "lib.yaml": LIB}, ("c.yaml", 7, "", "YAML syntax error")),
    "duplicate key": ({"c.yaml": HEAD + "name: again\n", "lib.yaml": LIB}, ("c.yaml", 6, "name", "duplicate key 'name' (first on line 1)")),
    "yes/no as boolean": ({"c.yaml": HEAD.replace('"1"', "no"), "lib.yaml": LIB}, ("c.yaml", 2, "version", 'boolean false (YAML reads an unquoted no as a boolean; write "no" in quotes)')),
    "number as text": ({"c.yaml": HEAD.replace('"1"', "1.0"), "lib.yaml": LIB}, ("c.yaml", 2, "version", "expected text, got the number 1.0")),
    "unknown key": ({"c.yaml": HEAD + "descripton: typo\n", "lib.yaml": LIB}, ("c.yaml", 6, "descripton", "unknown key 'descripton' (did you mean 'description'?)")),
    "missing required": ({"c.yaml": HEAD.replace("description: A test constitution.\n", ""), "lib.yaml": LIB}, ("c.yaml", 1, "description", "missing required field")),
    "unknown pick id": ({"c.yaml": HEAD + "  pick: [alpha, gamma]\n", "lib.yaml": LIB}, ("c.yaml", 6, "principles.pick[1]", "unknown principle id 'gamma'")),
    "unknown omit id": ({"c.yaml": HEAD + "  omit:\n    - alpah\n", "lib.yaml": LIB}, ("c.yaml", 7, "principles.omit[0]", "unknown principle id 'alpah' (did you mean 'alpha'?)")),
    "unknown override id": ({"c.yaml": HEAD + "  overrides:\n    gamma: {weight: 2}\n", "lib.yaml": LIB}, ("c.yaml", 7, "principles.overrides.gamma", "unknown principle id 'gamma'")),
    "empty selection": ({"c.yaml": HEAD + "  omit: [alpha, beta]\n", "lib.yaml": LIB}, ("c.yaml", 5, "principles", "selection is empty")),
    "include cycle": ({"c.yaml": HEAD, "lib.yaml": "include: [lib2.yaml]\n" + LIB, "lib2.yaml": "family: honest\ninclude: [lib.yaml]\n"}, ("lib2.yaml", 2, "include[0]", "include cycle: c.yaml -> lib.yaml -> lib2.yaml -> lib.yaml")),
    "missing include": ({"c.yaml": HEAD.replace("[lib.yaml]", "[lib.yaml, extra.yaml]"), "lib.yaml": LIB}, ("c.yaml", 5, "principles.include[1]", "include file not found: 'extra.yaml'")),
    "missing library name": ({"c.yaml": HEAD.replace("[lib.yaml]", "[lib.yaml, harmles]"), "lib.yaml": LIB}, ("c.yaml", 5, "principles.include[1]", "include file not found: 'harmles'")),
    "undefined template variable": ({"c.yaml": HEAD + "templates:\n  label: |\n    {conversation}\n    {question}\n    {response_c}\n", "lib.yaml": LIB}, ("c.yaml", 10, "templates.label", "template variable {response_c} is not defined here")),
    "malformed template variable": ({"c.yaml": HEAD + "templates:\n  score: 'Rate {response[0]}'\n", "lib.yaml": LIB}, ("c.yaml", 7, "templates.score", "is not a plain {variable}")),
    "wrong type in principle": ({"c.yaml": HEAD, "lib.yaml": LIB + "    weight: heavy\n"}, ("lib.yaml", 11, "principles[1].weight", "expected a number, got text 'heavy'")),
    "missing principle field": ({"c.yaml": HEAD, "lib.yaml": LIB.replace("    comparison_question: Which is more beta?\n", "")}, ("lib.yaml", 7, "principles[1].comparison_question", "missing required field")),
    "misspelt principle field": ({"c.yaml": HEAD, "lib.yaml": LIB.replace("critique_request: Critique beta", "critique: Critique beta")}, ("lib.yaml", 8, "principles[1].critique", "unknown key 'critique' (did you mean 'critique_request'?)")),
    "duplicate principle id": ({"c.yaml": HEAD.replace("[lib.yaml]", "[lib.yaml, lib2.yaml]"), "lib.yaml": LIB, "lib2.yaml": LIB.replace("harmless", "helpful")}, ("lib2.yaml", 3, "principles[0].id", "duplicate principle id 'alpha' (first defined at lib.yaml:3)")),
    "clamp order": ({"c.yaml": HEAD + "label:\n  clamp: [0.6, 0.4]\n", "lib.yaml": LIB}, ("c.yaml", 7, "label.clamp", "low must be below high")),
    "clamp range": ({"c.yaml": HEAD + "label:\n  clamp: [0.2, 1.5]\n", "lib.yaml": LIB}, ("c.yaml", 7, "label.clamp[1]", "must be <= 1, got 1.5")),
    "rounds below one": ({"c.yaml": HEAD + "critique:\n  rounds: 0\n", "lib.yaml": LIB}, ("c.yaml", 7, "critique.rounds", "must be >= 1, got 0")),
    "bad enum": ({"c.yaml": HEAD + "critique:\n  sampling: random\n", "lib.yaml": LIB}, ("c.yaml", 7, "critique.sampling", "expected one of weighted, uniform")),
    "text where boolean": ({"c.yaml": HEAD + "label:\n  both_orders: 'yes'\n", "lib.yaml": LIB}, ("c.yaml", 7, "label.both_orders", "expected true or false, got text 'yes'")),
    "k not a number": ({"c.yaml": HEAD + "label:\n  principles_per_comparison: some\n", "lib.yaml": LIB}, ("c.yaml", 7, "label.principles_per_comparison", 'expected a whole number >= 1, or "all"')),
    "k too large": ({"c.yaml": HEAD + "label:\n  principles_per_comparison: 3\n", "lib.yaml": LIB}, ("c.yaml", 7, "label.principles_per_comparison", "asks for 3 principles per comparison but the constitution selects 2")),
    "example unknown principle": ({"c.yaml": HEAD + "examples:\n  label:\n    - principle: gamma\n      prompt: p\n      response_a: a\n      response_b: b\n      answer: A\n", "lib.yaml": LIB}, ("c.yaml", 8, "examples.label[0].principle", "unknown principle id 'gamma'")),
    "example bad answer": ({"c.yaml": HEAD + "examples:\n  label:\n    - principle: alpha\n      prompt: p\n      response_a: a\n      response_b: b\n      answer: C\n", "lib.yaml": LIB}, ("c.yaml", 12, "examples.label[0].answer", "expected one of A, B")),
    "empty file": ({"c.yaml": "", "lib.yaml": LIB}, ("c.yaml", None, "", "expected a constitution")),
    "not a mapping": ({"c.yaml": "- a\n- b\n", "lib.yaml": LIB}, ("c.yaml", 1, "", "expected a constitution")),
    "empty principle file": ({"c.yaml": HEAD, "lib.yaml": "family: harmless\n"}, ("lib.yaml", 1, "principles", "defines no principles")),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_constitution_names_file_line_and_field(tmp_path, monkeypatch, case):
    files, (file, line, field, words) = MALFORMED[case]
    path = write(tmp_path, files)
    monkeypatch.chdir(tmp_path)
    problems = check(path)
    assert problems, f"{case}: no problem reported"
    matching = [p for p in problems if p.file == file and p.line == line and p.field == field and words in p.message]
    assert matching, f"{case}: expected {file}:{line} {field!r} ~ {words!r}, got:\n" + "\n".join(map(str, problems))


def test_every_problem_is_reported_not_just_the_first(tmp_path, monkeypatch):
    text = HEAD.replace('"1"', "yes") + "  pick: [gamma]\nlabel:\n  clamp: [0.9, 0.1]\n  extra: 1\ncritique:\n  rounds: -2\n"
    monkeypatch.chdir(tmp_path)
    problems = check(write(tmp_path, {"c.yaml": text, "lib.yaml": LIB}))
    fields = {p.field for p in problems}
    assert {"version", "principles.pick[0]", "label.clamp", "label.extra", "critique.rounds"} <= fields
    assert [p.line for p in problems] == sorted(p.line for p in problems)  # reported in file order


def test_a_malformed_principle_is_reported_once_not_again_where_it_is_named(tmp_path, monkeypatch):
    lib = LIB.replace("    comparison_question: Which is more beta?", "    comparison_question: Which is more beta?\n"
                                                                       "    weight: -2")
    text = HEAD + "  pick: [alpha, beta]\n  overrides:\n    beta: {weight: 2}\nexamples:\n  label:\n" \
        "    - {principle: beta, prompt: Hi, response_a: A, response_b: B, answer: A}\n"
    monkeypatch.chdir(tmp_path)
    problems = check(write(tmp_path, {"c.yaml": text, "lib.yaml": lib}))
    assert [(p.file, p.field) for p in problems] == [("lib.yaml", "principles[1].weight")], problems


def test_yaml_keys_are_taken_as_written(tmp_path, monkeypatch):
    # `on:` is a boolean in YAML 1.1; as a key it must still be reported by its written name.
    monkeypatch.chdir(tmp_path)
    problems = check(write(tmp_path, {"c.yaml": HEAD + "on: x\n", "lib.yaml": LIB}))
    assert any(p.field == "on" and "unknown key 'on'" in p.message and p.line == 6 for p in problems)


def test_compose_pick_omit_inline_overrides(tmp_path):
    text = HEAD + textwrap.dedent("""\
          pick: [alpha, beta]
          omit: [beta]
          inline:
            - id: gamma
              critique_request: Critique gamma.
              revision_request: Revise gamma.
              comparison_question: Which is more gamma?
          overrides:
            alpha: {weight: 3, comparison_question: "Which is most alpha?"}
        critique: {rounds: 2, sampling: uniform, seed: 7}
        label: {principles_per_comparison: all, chain_of_thought: true, clamp: [0.3, 0.7]}
        """)
    c = load_constitution(write(tmp_path, {"c.yaml": text, "lib.yaml": LIB}))
    assert [p.id for p in c.principles] == ["alpha"]  # inline principles are picked like the others
    alpha = c.principle("alpha")
    assert alpha.weight == 3 and alpha.comparison_question == "Which is most alpha?"
    assert alpha.critique_request == "Critique alpha." and alpha.family == "harmless"
    assert c.principle("gamma").family == "custom"
    assert (c.critique.rounds, c.critique.sampling, c.critique.seed) == (2, "uniform", 7)
    assert c.label.principles_per_comparison == "all" and c.label.clamp == (0.3, 0.7) and c.label.chain_of_thought


def test_diamond_include_is_not_a_cycle(tmp_path):
    files = {
        "c.yaml": HEAD.replace("[lib.yaml]", "[a.yaml, b.yaml]"),
        "a.yaml": "family: helpful\ninclude: [lib.yaml]\n",
        "b.yaml": "family: honest\ninclude: [lib.yaml]\n",
        "lib.yaml": LIB,
    }
    c = load_constitution(write(tmp_path, files))
    assert [p.id for p in c.principles] == ["alpha", "beta"]


def test_shipped_constitutions_are_valid_and_complete():
    names = shipped_names()
    assert {"default", "harmless"} <= set(names)
    for name in names:
        c = load_constitution(name)
        assert c.principles and c.critique_examples and c.label_examples, name
    default = load_constitution("default")
    assert {p.family for p in default.principles} == {"harmless", "helpful", "honest"}
    assert {p.family for p in load_constitution("harmless").principles} == {"harmless"}
    assert len([p for p in default.principles if p.family == "harmless"]) >= 16
    assert set(shipped_names("principles")) >= {"harmless", "helpful", "honest"}


def test_default_templates_use_only_declared_variables():
    for name, text in DEFAULT_TEMPLATES.items():
        assert set(template_variables(text)) == TEMPLATE_VARIABLES[name], name


def test_render_fails_loudly_on_a_missing_variable():
    assert render("{a} and {{literal}}", a="x") == "x and {literal}"
    with pytest.raises(TemplateError, match="no value for template variable"):
        render("{a} {b}", a="x")


def test_unknown_name_lists_shipped_constitutions():
    with pytest.raises(ConstitutionError, match="shipped: .*default"):
        load_constitution("no-such-constitution")


def test_cli_check_exit_codes_and_messages(tmp_path, monkeypatch):
    runner = CliRunner()
    ok = runner.invoke(cli, ["constitution", "check", "default"])
    assert ok.exit_code == 0, ok.output
    assert "default" in ok.output and "principles" in ok.output

    monkeypatch.chdir(tmp_path)
    write(tmp_path, {"c.yaml": HEAD + "  pick: [gamma]\n", "lib.yaml": LIB})
    bad = runner.invoke(cli, ["constitution", "check", "c.yaml"])
    assert bad.exit_code == 1
    assert "c.yaml:6:" in bad.output and "unknown principle id 'gamma'" in bad.output
    assert "Traceback" not in bad.output and bad.exception is None or isinstance(bad.exception, SystemExit)

    missing = runner.invoke(cli, ["constitution", "show", "nope.yaml"])
    assert missing.exit_code == 1 and "no such file" in missing.output


def test_cli_show_lists_principles():
    result = CliRunner().invoke(cli, ["constitution", "show", "harmless"])
    assert result.exit_code == 0, result.output
    c = load_constitution("harmless")
    assert c.principles[0].id in result.output
