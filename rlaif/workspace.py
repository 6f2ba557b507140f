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
    """Write the project; returns the files written. An existing non-empty directory is left untouched."""
    from rlaif.constitution import data_dir

    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ConfigError(f"{directory}: already exists and is not empty; choose a new directory")
    name = name or directory.resolve().name
    quickstart = data_dir("examples") / "quickstart"
    recipe = (quickstart / "recipe.yaml").read_text(encoding="utf-8")
    recipe = _sub(r"\A(#[^\n]*\n)+", f"# {name}: one round of the whole loop on the embedded model. Edit constitution.yaml and\n"
                  "# principles/, then: rlaif run recipe.yaml   (`--dry-run` shows the plan; paths are relative to this file)\n",
                  recipe)
    recipe = _sub(r"(?m)^name: .*$", f"name: {name}", recipe)
    recipe = _sub(r"(?m)^constitution: .*$", "constitution: constitution.yaml   # and its principles in principles/", recipe)
    constitution = (data_dir("constitution") / "default.yaml").read_text(encoding="utf-8")
    constitution = _sub(r"(?m)^name: .*$", f"name: {name}", constitution)
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


def _sub(pattern: str, replacement: str, text: str) -> str:
    new, count = re.subn(pattern, lambda _: replacement, text, count=1)
    if not count:
        raise AssertionError(f"the shipped template no longer matches {pattern!r}")
    return new
