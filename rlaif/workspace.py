"""`rlaif init DIR`: a project to edit and run, made from the quickstart.

    DIR/recipe.yaml          the quickstart recipe, pointing at the files below
    DIR/constitution.yaml    the default constitution, drawing its principles from ./principles/
    DIR/principles/*.yaml    the principle library, copied: edit principles here, or add files and include them
    DIR/prompts.jsonl        red-team and helpful prompts for critique, sampling and PPO
    DIR/eval.jsonl           held-out prompts, tagged red-team or helpful, for PPO's held-out reward and eval
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from rlaif.records import ConfigError

LIBRARY = ("harmless", "helpful", "honest")


def init(directory: str | Path, name: str | None = None) -> list[Path]:
    """Write the project; returns the files written. `name` (default: the directory's name) names the run
    (runs/NAME) and must be a plain name; the constitution's name is made from it (`constitution_name`). An
    existing non-empty directory is left untouched. Raises ConfigError before writing anything."""
    from rlaif.constitution import data_dir

    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ConfigError(f"{directory}: already exists and is not empty; choose a new directory")
    if name is not None and (name.strip() in ("", ".", "..") or "/" in name or "\\" in name or name != name.strip()):
        raise ConfigError(f"--name {name!r}: expected a plain name (no '/' or '\\', not '.' or '..', no spaces at "
                          "either end): the run goes to runs/NAME")
    given, name = name, name or directory.resolve().name
    title = constitution_name(name, "--name" if given else "the folder's name")
    quickstart = data_dir("examples") / "quickstart"
    recipe = (quickstart / "recipe.yaml").read_text(encoding="utf-8")
    recipe = _sub(r"\A(#[^\n]*\n)+", f"# {name}: one round of the whole loop on the embedded model. Edit constitution.yaml and\n"
                  "# principles/, then: rlaif run recipe.yaml   (`--dry-run` shows the plan; input paths are relative "
                  "to this file,\n# the run's out (default runs/NAME) to the directory you run it from)\n",
                  recipe)
    recipe = _sub(r"(?m)^name: .*$", f"name: {_scalar(name)}", recipe)
    recipe = _sub(r"(?m)^constitution: .*$", "constitution: constitution.yaml   # and its principles in principles/", recipe)
    constitution = (data_dir("constitution") / "default.yaml").read_text(encoding="utf-8")
    constitution = _sub(r"(?m)^name: .*$", f"name: {_scalar(title)}", constitution)
    constitution = _sub(r"(?m)^  include: .*$",
                        "  include: [" + ", ".join(f"./principles/{f}.yaml" for f in LIBRARY) + "]", constitution)

    (directory / "principles").mkdir(parents=True, exist_ok=True)
    written = [directory / "recipe.yaml", directory / "constitution.yaml"]
    written[0].write_text(recipe, encoding="utf-8")
    written[1].write_text(constitution, encoding="utf-8")
    for family in LIBRARY:
        written.append(Path(shutil.copyfile(data_dir("principles") / f"{family}.yaml",
                                            directory / "principles" / f"{family}.yaml")))
    for prompts in ("prompts.jsonl", "eval.jsonl"):
        written.append(Path(shutil.copyfile(quickstart / prompts, directory / prompts)))
    return written


def constitution_name(name: str, source: str = "the name") -> str:
    """A valid constitution name made from a project's name: lowercase, every run of other characters than a-z, 0-9,
    '_' and '-' turned into '-' ("My Project" -> "my-project", "team.v2" -> "team-v2"). A ConfigError when nothing
    is left (a name of punctuation alone, or of letters outside a-z); `source` says where `name` came from."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_")
    if not slug:
        fix = "give --name with some of them" if source == "--name" else "give --name"
        raise ConfigError(f"{source} {name!r}: no constitution name can be made from it (lowercase letters a-z, "
                          f"digits, '-' and '_', starting with a letter or digit); {fix}")
    return slug


def _scalar(text: str) -> str:
    """`text` as a YAML scalar that reads back as that text (quoted where YAML would read a number, a boolean or
    markup: "2024", "yes", "a: b")."""
    import json

    import yaml

    try:
        plain = yaml.safe_load(text) == text
    except yaml.YAMLError:
        plain = False
    return text if plain else json.dumps(text, ensure_ascii=False)


def _sub(pattern: str, replacement: str, text: str) -> str:
    new, count = re.subn(pattern, lambda _: replacement, text, count=1)
    if not count:
        raise AssertionError(f"the shipped template no longer matches {pattern!r}")
    return new
