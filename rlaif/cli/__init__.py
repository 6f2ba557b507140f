"""The `rlaif` command line. Each command is a thin shell over one stage module; the help text is the manual.

Here: the `rlaif` group, the user errors it turns into a message and exit 1, `stage_config` (dataclass defaults <
recipe file < flags) and `main`. The commands, by what users do: project.py (init, constitution, generate),
data.py (critique, sample, label, score, rankings), human.py (rank serve), training.py (sft, reward, ppo, dpo,
grpo) and runs.py (run, eval, report, export).
"""

from __future__ import annotations

import re

import click
from rich.console import Console
from rich.markup import escape

# emoji=False: text from users and models ("weight.jsonl:one", "x:thumbs_up:.csv", a reply's ":smile:") prints as
# written; such text goes through `shown` (in markup) or `terminal_safe` (printed with markup=False).
out = Console(highlight=False, emoji=False)
err = Console(stderr=True, highlight=False, emoji=False)

# C0 (but newline and tab), DEL and C1 controls (U+009B is a one-character CSI), and the bidirectional overrides
# and isolates that make text show in another order than it reads ("Trojan Source", CVE-2021-42574)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: object) -> str:
    """Untrusted text (a model's reply, a user's file) made safe to print on a terminal: each control character
    other than newline and tab is shown as its escape, ESC as `\\x1b`, instead of being sent. A reply holding
    "\\x1b]0;title\\x07" or "\\x1b[2J" would otherwise set the window's title or clear the screen, and rich
    passes such sequences through (`escape` and markup=False handle only rich's own [markup])."""
    def visible(match: re.Match) -> str:
        code = ord(match.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _CONTROL.sub(visible, str(text).replace("\r\n", "\n"))


def shown(text: object) -> str:
    """Untrusted text for a rich markup string: terminal-safe, and its own [markup] escaped so it prints as written."""
    return escape(terminal_safe(text))


def _user_errors() -> tuple[type[Exception], ...]:
    from rlaif.constitution import ConstitutionError, TemplateError
    from rlaif.models import ModelError
    from rlaif.records import ConfigError, DataError

    return (ConstitutionError, TemplateError, ModelError, DataError, ConfigError)


class _Group(click.Group):
    """Turns the errors a user can fix into a clear message and exit status 1, never a traceback; and ends the
    process group a command joined under accelerate launch once it has succeeded (rlaif.launch.leave_process_group;
    `main` sees to a command that fails)."""

    def invoke(self, ctx: click.Context):
        try:
            result = super().invoke(ctx)
        except _user_errors() as e:
            fail("error", str(e), 1)
        from rlaif.launch import leave_process_group

        leave_process_group()
        return result


# Set by `rlaif run --num-processes` (rlaif.launch.launched) for the stages it starts under accelerate launch: a
# directory where each process that fails writes why.
LAUNCH_RESULT = "RLAIF_LAUNCH_RESULT"


def fail(kind: str, message: str, code: int) -> None:
    """Print `kind: message` and exit with `code`: 1 for a user error, 2 for a stop (a PPO guard). Under accelerate
    launch, each process that fails says so (RANK 0 plainly, the others as "[rank N] ..."), and its non-zero exit
    makes the launcher stop the others, which would wait for it. Under `rlaif run --num-processes`, the process
    writes {kind, message, exit} to LAUNCH_RESULT/rank-N.json instead, for the run to print once."""
    import json
    import os
    import sys

    rank = os.environ.get("RANK", "0")
    if os.environ.get(LAUNCH_RESULT):
        from rlaif.records import write_atomic

        write_atomic(os.path.join(os.environ[LAUNCH_RESULT], f"rank-{rank}.json"),
                     json.dumps({"kind": kind, "message": message, "exit": code}))
    else:
        err.print(f"{'' if rank == '0' else f'[rank {rank}] '}[bold red]{kind}:[/bold red] {shown(message)}",
                  soft_wrap=True)
    sys.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rlaif")
def cli() -> None:
    """rlaif: align a language model to a written constitution.

    \b
    Start here:
      rlaif run examples/quickstart/recipe.yaml   the whole loop, one round, then runs/quickstart/report.html
      rlaif init my-project                   your own constitution, principles, prompts and recipe
      rlaif constitution show default         list the principles the default constitution applies
      rlaif generate -p "How do I boil an egg?"   talk to the embedded model

    The embedded model is SmolLM2-135M-Instruct (runs on a laptop CPU). Any command that takes --model also
    accepts a local Hugging Face directory, a .gguf file or a hub id. Run `rlaif COMMAND --help` for each
    command's guide.
    """


# --------------------------------------------------------------------------------------------------------------------
# Stage configs: dataclass defaults < recipe file (--config) < flags given on the command line


def stage_config(cls, config_file: str | None, flags: dict):
    """Build a stage's dataclass config. Unknown recipe keys are errors naming the file, line and key; every value,
    from the file or a flag, is checked against its field (recipe.check_settings: a number must be finite, a
    FILE:WEIGHT's weight too) and by the stage's own checks; errors name the file and line, or the flag."""
    import dataclasses

    from rlaif.recipe import check_settings
    from rlaif.records import ConfigError, DataError, read_yaml

    values: dict = {}
    path, lines = None, {}
    if config_file:
        path = click.format_filename(config_file)
        recipe, lines = read_yaml(path)
        if recipe is not None and not isinstance(recipe, dict):
            raise DataError(path, 1, None, "expected a mapping of setting: value")
        fields = {f.name for f in dataclasses.fields(cls)}
        for key, value in (recipe or {}).items():
            if key not in fields:
                raise DataError(path, lines.get(key), str(key), f"unknown setting; expected one of: {', '.join(sorted(fields))}")
            values[key] = value
        values = check_settings(cls, values, lambda key: (path, lines.get(key) or lines.get(key.partition("[")[0]),
                                                          key))
    given = {k: v for k, v in flags.items() if v is not None}
    values.update(check_settings(cls, given, lambda key: ("command line", None, _flag(key.partition("[")[0]))))
    try:
        return cls(**values)
    except DataError as e:  # the stage's own range check: name the flag or the file's line that gave the value
        if e.field in given:
            raise DataError("command line", None, _flag(e.field), e.message) from None
        if e.field in values:
            raise DataError(path, lines.get(e.field), e.field, e.message) from None
        raise
    except ConfigError as e:  # a setting that cannot work with the others: the file's line that set it, if any
        in_file = [name for name in e.fields if name in values and name not in given]
        if path is None or not in_file or any(name in given for name in e.fields):
            raise
        raise ConfigError(f"{path}:{lines.get(in_file[0])}: {e}", e.fields) from None


def _flag(name: str) -> str:
    """The command-line spelling of a setting (`learning_rate` -> `--learning-rate`), for errors."""
    context = click.get_current_context(silent=True)
    for param in context.command.params if context else ():
        if param.name == name and param.opts:
            return max(param.opts, key=len)
    return name


recipe_option = click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                             help="A YAML file of these settings (by their long names, with _); flags override it.")


def main() -> None:
    """`rlaif`. A command that fails in a process group (under accelerate launch: a user error, a PPO stop, a bug,
    Ctrl-C) leaves with its exit status through os._exit, once its output is flushed: without a collective its peers
    may never join (destroying the group), and without the interpreter's shutdown, in which gloo's threads can abort
    the process (rlaif.launch.leave_process_group); the launcher then stops the others."""
    import warnings

    from rlaif.launch import in_process_group

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes, not the user's business
    try:
        cli()
    except BaseException as e:
        if not in_process_group():
            raise
        import os
        import sys
        import traceback

        if not isinstance(e, SystemExit):
            traceback.print_exc()
        code = e.code if isinstance(e, SystemExit) else 1  # click makes Ctrl-C SystemExit(1) ("Aborted!")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)


# Importing the command modules registers their commands on `cli` (they need the names above).
from rlaif.cli import data, human, project, runs, training  # noqa: F401
